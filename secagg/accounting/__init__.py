"""Privacy accounting: pure RDP maths, a stateful RDP accountant, and the per-round privacy report.

Nothing here imports torch, numpy or scipy, so auditors and the aggregator can recompute every
epsilon from the parameters in a report with the standard library alone.
"""

from __future__ import annotations

from secagg.accounting.accountant import MECHANISMS, AccountantStep, RdpAccountant
from secagg.accounting.rdp import (
    DDG_ORDERS,
    DEFAULT_ORDERS,
    compute_rdp_dgaussian,
    compute_rdp_distributed_discrete_gaussian,
    compute_rdp_gaussian,
    compute_rdp_sampled_gaussian,
    compute_rdp_skellam,
    compute_rdp_subsampled,
    ddgauss_epsilon,
    ddgauss_tau,
    rdp_to_epsilon,
    rounded_l1_norm_bound,
    rounded_l2_norm_bound,
    skellam_epsilon,
    skellam_rdp,
)
from secagg.accounting.report import (
    PRIVACY_REPORT_SCHEMA_VERSION,
    DistributedDPStatement,
    PrivacyReport,
    SiteRecordLevelDP,
    render_table,
)

__all__ = [
    "DDG_ORDERS",
    "DEFAULT_ORDERS",
    "MECHANISMS",
    "PRIVACY_REPORT_SCHEMA_VERSION",
    "AccountantStep",
    "DistributedDPStatement",
    "PrivacyReport",
    "RdpAccountant",
    "SiteRecordLevelDP",
    "compute_rdp_dgaussian",
    "compute_rdp_distributed_discrete_gaussian",
    "compute_rdp_gaussian",
    "compute_rdp_sampled_gaussian",
    "compute_rdp_skellam",
    "compute_rdp_subsampled",
    "ddgauss_epsilon",
    "ddgauss_tau",
    "rdp_to_epsilon",
    "render_table",
    "rounded_l1_norm_bound",
    "rounded_l2_norm_bound",
    "skellam_epsilon",
    "skellam_rdp",
]
