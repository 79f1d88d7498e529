"""``secagg demo``: a round of secure aggregation among simulated hospitals, with dropouts."""

from __future__ import annotations

import time

import numpy as np

from secagg.protocol import Stage
from secagg.simulate import default_threshold, simulate

__all__ = ["run_masking_demo"]


def run_masking_demo(
    *, n_clients: int = 10, length: int = 100_000, degree: int | None = None, seed: int = 0
) -> None:
    """Sum simulated updates of ``n_clients`` hospitals, two of which drop at different stages."""
    rng = np.random.default_rng(seed)
    updates = rng.normal(0.0, 0.1, size=(n_clients, length))
    dropouts = {Stage.MASKED_INPUT: {2}, Stage.UNMASK: {n_clients}} if n_clients >= 4 else {}
    threshold = default_threshold(n_clients, degree)
    graph = "full graph (SecAgg)" if degree is None else f"SecAgg+ degree {degree}"
    print(f"secagg demo: {n_clients} hospitals, {length:,} parameters, {graph}, t={threshold}")
    for stage, parties in dropouts.items():
        print(f"  hospital(s) {sorted(parties)} will drop at stage {stage.value}")
    start = time.perf_counter()
    out = simulate(list(updates), clip=1.0, degree=degree, threshold=threshold, dropouts=dropouts)
    elapsed = time.perf_counter() - start
    print(f"round completed in {elapsed:.2f} s")
    for stage in (
        Stage.ADVERTISE_KEYS,
        Stage.SHARE_KEYS,
        Stage.MASKED_INPUT,
        Stage.CONSISTENCY_CHECK,
        Stage.UNMASK,
    ):
        print(
            f"  {stage.value:<18} participants {len(out.round.participants[stage]):>3}"
            f"  dropped {list(out.round.dropouts[stage])}"
        )
    expected = np.clip(updates[[p - 1 for p in out.survivors]], -1, 1).sum(axis=0)
    error = float(np.max(np.abs(out.aggregate - expected)))
    print(
        f"sum of {len(out.survivors)} survivors' updates recovered; "
        f"max abs error {error:.2e} (bound {len(out.survivors) * out.encoding.resolution:.2e})"
    )
