"""``secagg demo``: hospitals training a model together under secure aggregation and DP.

* :mod:`secagg.demo.federated` -- the main job: FedAvg with Opacus at each site, distributed DP
  under secure aggregation, privacy reports, an HTML report and single-site baselines.
* :mod:`secagg.demo.masking` -- one bare masking round over random vectors (``--masking-only``).

Importing this package does not import torch; the training code lives in :mod:`secagg.dp`.
"""

from __future__ import annotations

from secagg.demo.masking import run_masking_demo

__all__ = ["run_masking_demo"]
