"""A small chain of real rounds (completed, with dropouts, aborted) shared by the audit tests."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import pytest

from secagg.accounting import (
    PRIVACY_REPORT_SCHEMA_VERSION,
    DistributedDPStatement,
    PrivacyReport,
    SiteRecordLevelDP,
)
from secagg.audit import RecordChain, run_recorded_round
from secagg.crypto import IdentityKey
from secagg.errors import RoundAborted
from secagg.protocol import RoundConfig, Stage

CREATED_AT = "2026-11-03T10:15:00+00:00"


def privacy_report(round_id: int, eps_cum: float) -> PrivacyReport:
    return PrivacyReport(
        schema_version=PRIVACY_REPORT_SCHEMA_VERSION,
        round_id=round_id,
        protection_mode="mask",
        participants=("1", "3", "4", "5"),
        dropouts=("2",),
        site_level=DistributedDPStatement(
            mechanism="ddgauss",
            l2_clip=1.0,
            noise_stddev_total=1.2,
            min_clients=3,
            bits=32,
            wraparound_probability=1e-9,
            epsilon_round=0.5,
            epsilon_cumulative=eps_cum,
            delta=1e-5,
        ),
        record_level=(SiteRecordLevelDP("1", "rdp", 1.0, 0.2, 5, 1e-5, 0.25, math.inf),),
        created_at=CREATED_AT,
    )


@dataclass
class Chain:
    aggregator: IdentityKey
    identities: dict[int, IdentityKey]
    chain: RecordChain

    @property
    def lines(self) -> list[str]:
        return [r.to_json() for r in self.chain]


def make_chain(rounds: int = 3, n: int = 5) -> Chain:
    aggregator = IdentityKey.generate()
    identities = {p: IdentityKey.generate() for p in range(1, n + 1)}
    chain = RecordChain()
    rng = np.random.default_rng(1)
    for round_id in range(rounds):
        config = RoundConfig(
            round_id=round_id,
            roster={p: k.public_key for p, k in identities.items()},
            threshold=4,
            vector_length=6,
            context_digest=b"model-digest-%d" % round_id,
        )
        inputs = {
            p: rng.integers(0, 2**32, 6, dtype=np.uint64).astype(np.uint32) for p in identities
        }
        drop: dict[Stage, set[int]] = {Stage.MASKED_INPUT: {2}}
        if round_id == 1:  # this round aborts: too few masked inputs
            drop = {Stage.MASKED_INPUT: {1, 2, 3}}
        with contextlib.suppress(RoundAborted):
            run_recorded_round(
                config,
                identities,
                inputs,
                chain,
                aggregator_key=aggregator,
                dropouts=drop,
                privacy_report=None
                if round_id == 1
                else privacy_report(round_id, 0.5 * (round_id + 1)),
                created_at=CREATED_AT,
            )
    return Chain(aggregator, identities, chain)


@pytest.fixture(scope="module")
def chain3() -> Chain:
    return make_chain()
