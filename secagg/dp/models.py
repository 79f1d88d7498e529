"""Small torch models for the demo and tests, with a numpy-only surface.

The rest of secagg never imports torch: weights travel as flat ``float64`` numpy vectors, so the
aggregator, the encoders and the secure sum see plain arrays. Only :mod:`secagg.dp` imports torch.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

__all__ = [
    "accuracy_and_f1",
    "configure_torch",
    "flat_weights",
    "load_flat_weights",
    "mlp",
    "predict",
]


def configure_torch(threads: int = 1) -> None:
    """One intra-op thread per site: faster than two on these small models (FACTS.md)."""
    torch.set_num_threads(threads)


def mlp(in_features: int = 30, hidden: int = 64, classes: int = 2, *, seed: int = 0) -> nn.Module:
    """The demo's 30-64-2 multilayer perceptron, initialised deterministically from ``seed``.

    Every site and the aggregator build it from the same seed, so round 0 starts from one model.
    """
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )
    finally:
        torch.random.set_rng_state(gen_state)
    return model


def _base(model: nn.Module) -> nn.Module:
    # Opacus wraps the model in a GradSampleModule whose parameters are the wrapped module's.
    inner = getattr(model, "_module", None)
    return inner if isinstance(inner, nn.Module) else model


def flat_weights(model: nn.Module) -> npt.NDArray[np.float64]:
    """All parameters, concatenated in ``model.parameters()`` order, as one float64 vector."""
    with torch.no_grad():
        return (
            torch.cat([p.detach().reshape(-1) for p in _base(model).parameters()])
            .to(torch.float64)
            .numpy()
        )


def load_flat_weights(model: nn.Module, weights: npt.ArrayLike) -> None:
    """Overwrite the parameters in place from a vector produced by :func:`flat_weights`."""
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    params = list(_base(model).parameters())
    total = sum(p.numel() for p in params)
    if w.ndim != 1 or w.numel() != total:
        raise ValueError(f"expected a vector of {total} weights, got shape {tuple(w.shape)}")
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(w[offset : offset + n].reshape(p.shape).to(p.dtype))
            offset += n


def predict(model: nn.Module, features: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Class predictions (argmax of the logits) for a float feature matrix."""
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    base = _base(model)
    was_training = base.training
    base.eval()
    try:
        with torch.no_grad():
            out: npt.NDArray[np.int64] = base(x).argmax(dim=1).numpy().astype(np.int64)
    finally:
        base.train(was_training)
    return out


def accuracy_and_f1(
    labels: npt.ArrayLike, predictions: npt.ArrayLike, *, positive: int = 0
) -> tuple[float, float]:
    """Accuracy and the F1 score of the ``positive`` class (default 0: malignant in WDBC)."""
    y = np.asarray(labels)
    p = np.asarray(predictions)
    accuracy = float(np.mean(y == p)) if y.size else 0.0
    tp = int(np.sum((p == positive) & (y == positive)))
    fp = int(np.sum((p == positive) & (y != positive)))
    fn = int(np.sum((p != positive) & (y == positive)))
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return accuracy, f1
