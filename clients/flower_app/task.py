"""Model and data: numpy logistic regression on scikit-learn's breast-cancer data (no download)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from sklearn.datasets import load_breast_cancer

from secagg.demo.data import public_transform

Arrays = list[npt.NDArray[np.float64]]
Split = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]
N_FEATURES = 30


def load_data(
    partition: int, partitions: int, seed: int = 0
) -> tuple[
    tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
    tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
]:
    """(train, test) of one site: a label-skewed (non-IID) slice; the test split is shared."""
    x, y = load_breast_cancer(return_X_y=True)
    x = public_transform(x)  # published feature ranges: no statistics leave any site
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    test, train = order[:114], order[114:]
    # Label skew: sort the training records by label with some noise, then cut into slices.
    keys = y[train] + rng.normal(0, 0.6, train.size)
    train = train[np.argsort(keys)]
    mine = np.array_split(train, partitions)[partition]
    return (x[mine], y[mine].astype(np.float64)), (x[test], y[test].astype(np.float64))


def initial_parameters() -> Arrays:
    return [np.zeros(N_FEATURES), np.zeros(1)]


def _predict(params: Arrays, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    w, b = params
    return 1.0 / (1.0 + np.exp(-(x @ w + b[0])))


def train(
    params: Arrays,
    data: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
    epochs: int = 20,
    lr: float = 0.5,
    l2: float = 1e-3,
) -> Arrays:
    """Full-batch gradient descent on the logistic loss."""
    x, y = data
    w, b = params[0].copy(), params[1].copy()
    for _ in range(epochs):
        p = _predict([w, b], x)
        w -= lr * (x.T @ (p - y) / len(y) + l2 * w)
        b -= lr * np.array([np.mean(p - y)])
    return [w, b]


def evaluate(
    params: Arrays, data: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]
) -> tuple[float, float]:
    """(log loss, accuracy)."""
    x, y = data
    p = np.clip(_predict(params, x), 1e-9, 1 - 1e-9)
    loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return loss, float(np.mean((p > 0.5) == (y > 0.5)))
