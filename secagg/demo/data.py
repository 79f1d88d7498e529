"""The demo's data: scikit-learn's Wisconsin breast-cancer set, split into non-IID hospitals.

No download: ``sklearn.datasets.load_breast_cancer()`` ships with scikit-learn (569 records,
30 features, 212 malignant / 357 benign).

**Standardisation without leakage.** Fitting a scaler on all records would let the test set and
every hospital's data shape the features each hospital sees. Per-hospital statistics would give
each site a different coordinate system (a large tumour at a site of large tumours would look
"average"), which breaks a shared model. The demo instead uses a **public, fixed transform**: the
per-feature minimum and maximum *published in the dataset's documentation* (the "Summary
Statistics" table of the UCI description, reproduced in ``load_breast_cancer().DESCR``) map each
feature to ``[-1, 1]``. The constants are written below, not computed from any array; a test
checks that they equal the published table. (They are dataset-wide extremes published by the
dataset's authors -- public metadata every site can know in advance, the same kind of fixed
normalisation a consortium would agree on from a data dictionary.)

**Non-IID split.** A held-out, stratified test set (25 %) plays the role of an external
validation cohort. The rest is split across hospitals with label skew drawn from a Dirichlet
distribution (each hospital gets its own malignant fraction) *and* unequal sizes (a Dirichlet over
hospital sizes, with a floor), the typical pattern of referral centres and small clinics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "WDBC_PUBLISHED_RANGES",
    "DemoData",
    "SiteData",
    "load_demo_data",
    "public_transform",
]

#: (min, max) of the 30 features, in ``feature_names`` order, as published in the dataset's
#: description (UCI wdbc.names / ``load_breast_cancer().DESCR``, "Summary Statistics").
WDBC_PUBLISHED_RANGES: tuple[tuple[float, float], ...] = (
    (6.981, 28.11),
    (9.71, 39.28),
    (43.79, 188.5),
    (143.5, 2501.0),
    (0.053, 0.163),
    (0.019, 0.345),
    (0.0, 0.427),
    (0.0, 0.201),
    (0.106, 0.304),
    (0.05, 0.097),
    (0.112, 2.873),
    (0.36, 4.885),
    (0.757, 21.98),
    (6.802, 542.2),
    (0.002, 0.031),
    (0.002, 0.135),
    (0.0, 0.396),
    (0.0, 0.053),
    (0.008, 0.079),
    (0.001, 0.03),
    (7.93, 36.04),
    (12.02, 49.54),
    (50.41, 251.2),
    (185.2, 4254.0),
    (0.071, 0.223),
    (0.027, 1.058),
    (0.0, 1.252),
    (0.0, 0.291),
    (0.156, 0.664),
    (0.055, 0.208),
)


def public_transform(features: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Map each feature to ``[-1, 1]`` with the published ranges (no statistics are fitted)."""
    x = np.asarray(features, dtype=np.float64)
    lo = np.array([r[0] for r in WDBC_PUBLISHED_RANGES])
    hi = np.array([r[1] for r in WDBC_PUBLISHED_RANGES])
    if x.ndim != 2 or x.shape[1] != lo.size:
        raise ValueError(f"expected an (n, {lo.size}) feature matrix, got shape {x.shape}")
    scaled: npt.NDArray[np.float64] = 2.0 * (x - lo) / (hi - lo) - 1.0
    return scaled


@dataclass(frozen=True, eq=False)
class SiteData:
    """One hospital's records (already transformed) and labels (0 = malignant, 1 = benign)."""

    name: str
    features: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64]

    @property
    def size(self) -> int:
        return int(self.labels.size)

    @property
    def malignant_fraction(self) -> float:
        return float(np.mean(self.labels == 0)) if self.size else 0.0


@dataclass(frozen=True, eq=False)
class DemoData:
    sites: tuple[SiteData, ...]
    test_features: npt.NDArray[np.float64]
    test_labels: npt.NDArray[np.int64]


def load_demo_data(
    n_sites: int = 5,
    *,
    test_fraction: float = 0.25,
    label_alpha: float = 0.2,
    size_alpha: float = 1.0,
    min_site_size: int = 20,
    split: str = "label",
    feature_noise: float = 0.5,
    seed: int = 0,
) -> DemoData:
    """Split the breast-cancer data into ``n_sites`` label-skewed hospitals and a test set.

    Each class's training records are dealt to the hospitals in proportions
    ``p_k ~ Dirichlet(label_alpha)`` weighted by hospital sizes ``s ~ Dirichlet(size_alpha)``;
    hospitals are then topped up to ``min_site_size`` records from the largest one.
    """
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    if n_sites < 2:
        raise ValueError("the demo needs at least 2 hospitals")
    raw = load_breast_cancer()
    x = public_transform(raw.data)
    y = raw.target.astype(np.int64)
    idx = np.arange(y.size)
    train_idx, test_idx = train_test_split(
        idx, test_size=test_fraction, stratify=y, random_state=seed
    )
    rng = np.random.default_rng(seed)
    sizes = rng.dirichlet(np.full(n_sites, size_alpha))
    assignment: list[list[int]] = [[] for _ in range(n_sites)]
    if split == "feature":
        key = x[train_idx, 0] + rng.normal(0, feature_noise, train_idx.size)
        order = train_idx[np.argsort(key)]
        for k, part in enumerate(np.array_split(order, n_sites)):
            assignment[k].extend(int(i) for i in part)
    for label in (0, 1) if split == "label" else ():
        members = rng.permutation(train_idx[y[train_idx] == label])
        share = rng.dirichlet(np.full(n_sites, label_alpha)) * sizes
        share /= share.sum()
        cuts = np.round(np.cumsum(share)[:-1] * members.size).astype(int)
        for k, part in enumerate(np.split(members, cuts)):
            assignment[k].extend(int(i) for i in part)
    for k in range(n_sites):
        while len(assignment[k]) < min_site_size:
            donor = max(range(n_sites), key=lambda j: len(assignment[j]))
            assignment[k].append(assignment[donor].pop(int(rng.integers(len(assignment[donor])))))
    sites = tuple(
        SiteData(
            name=f"hospital-{k + 1}",
            features=x[np.sort(np.array(a, dtype=np.int64))],
            labels=y[np.sort(np.array(a, dtype=np.int64))],
        )
        for k, a in enumerate(assignment)
    )
    return DemoData(sites=sites, test_features=x[test_idx], test_labels=y[test_idx])
