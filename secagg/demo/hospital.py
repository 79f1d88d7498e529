"""A simulated hospital: DP-SGD on its own records, then a distributed-DP encoding of its update.

Importing this module imports torch (through :mod:`secagg.dp.opacus_site`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from secagg.demo.data import SiteData
from secagg.demo.runner import RoundTask, SiteContribution
from secagg.dp import models
from secagg.dp.distributed import (
    DistributedDPConfig,
    DistributedDPEncoder,
    DistributedDPParams,
    derive_params,
)
from secagg.dp.opacus_site import OpacusSite, RecordLevelDPConfig

__all__ = ["WEIGHT_COORDINATE_SCALE", "DemoHospital", "cached_params", "weighted_vector"]

#: The FedAvg weight travels as one extra coordinate ``weight * WEIGHT_COORDINATE_SCALE`` of the
#: vector that is clipped, noised and summed, so the aggregator learns only the total weight.
WEIGHT_COORDINATE_SCALE = 1.0


def weighted_vector(update: np.ndarray, weight: float, l2_clip: float) -> np.ndarray:
    """``weight * [clip(update), c]`` with L2 norm <= ``l2_clip`` (the site-level sensitivity).

    The update is clipped to ``sqrt(l2_clip^2 - c^2)`` so that the whole vector, weight
    coordinate included, stays within the clip the distributed-DP accounting assumes.
    """
    if not 0 <= weight <= 1:
        raise ValueError("the FedAvg weight must lie in [0, 1]")
    c = WEIGHT_COORDINATE_SCALE
    if l2_clip <= c:
        raise ValueError(f"l2_clip must exceed the weight coordinate's scale {c}")
    u = np.asarray(update, dtype=np.float64).reshape(-1)
    bound = float(np.sqrt(l2_clip**2 - c**2))
    norm = float(np.linalg.norm(u))
    if norm > bound:
        u = u * (bound / norm)
    return np.concatenate([weight * u, [weight * c]])


@lru_cache(maxsize=8)
def cached_params(config: DistributedDPConfig) -> DistributedDPParams:
    """Derived distributed-DP parameters (every site and the aggregator compute the same)."""
    return derive_params(config)


class DemoHospital:
    """One hospital: an :class:`OpacusSite` plus the site-side distributed-DP encoder."""

    def __init__(
        self,
        data: SiteData,
        record_dp: RecordLevelDPConfig,
        *,
        model_seed: int = 0,
        noise_seed: int | None = None,
        weight_cap: int = 100,
    ) -> None:
        self.data = data
        # FedAvg weight: records, capped at a public ``weight_cap`` and scaled to [0, 1] so that
        # one site's contribution (and so the sensitivity) stays bounded by the clip.
        self.weight = min(data.size, weight_cap) / weight_cap
        self.site = OpacusSite(
            data.name,
            data.features,
            data.labels,
            models.mlp(in_features=data.features.shape[1], seed=model_seed),
            record_dp,
            seed=noise_seed,
        )
        self._noise_rng = (
            None if noise_seed is None else np.random.default_rng([noise_seed, 0x5EC466])
        )

    @property
    def name(self) -> str:
        return self.data.name

    def local_round(self, task: RoundTask) -> SiteContribution:
        # Raises BudgetExceeded before any training when the round would exceed the budget.
        update = self.site.train_round(task.global_weights)
        params = cached_params(task.dp_config)
        encoder = DistributedDPEncoder(
            params, rotation_seed=task.rotation_seed, rng=self._noise_rng
        )
        vector = weighted_vector(update.delta_weights, self.weight, task.dp_config.l2_clip)
        noisy = encoder.encode(vector)
        encoded = np.mod(noisy, params.modulus).astype(np.uint32)
        return SiteContribution(site=self.name, encoded=encoded, statement=update.statement)
