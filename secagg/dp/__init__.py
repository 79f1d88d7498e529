"""Differential privacy for secagg.

* :mod:`secagg.dp.distributed` -- site-level distributed DP under secure aggregation (numpy only).
* ``secagg.dp.opacus_site`` -- record-level DP-SGD with Opacus (imports torch lazily; not imported
  here, so ``import secagg.dp`` never pulls in torch).
"""

from __future__ import annotations

from secagg.dp.distributed import (
    DEFAULT_BETA,
    DistributedDPConfig,
    DistributedDPEncoder,
    DistributedDPParams,
    account_round,
    derive_params,
    distributed_dp_epsilon,
    sample_discrete_gaussian,
    sample_skellam,
    site_level_statement,
    wraparound_probability_bound,
)

__all__ = [
    "DEFAULT_BETA",
    "DistributedDPConfig",
    "DistributedDPEncoder",
    "DistributedDPParams",
    "account_round",
    "derive_params",
    "distributed_dp_epsilon",
    "sample_discrete_gaussian",
    "sample_skellam",
    "site_level_statement",
    "wraparound_probability_bound",
]
