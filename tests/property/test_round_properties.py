"""Property tests: for any dropout schedule the round sums the survivors exactly, or aborts at the
stage where too few parties remain."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.crypto import DeterministicRandom
from secagg.encoding import FixedPointEncoding
from secagg.errors import OverflowRiskError, RoundAborted
from secagg.protocol import ACTIVE_STAGES, AdversaryClass, ServerSession, SitePolicy, Stage
from secagg.simulate import run_round, simulate

from ..protocol.harness import make_round

NEVER = len(ACTIVE_STAGES)  # "drops at stage index 5" means the party never drops
# These properties are about the mechanics at *any* threshold, so the simulated sites accept any
# (a relaxed policy, by name); tests/protocol/test_site_policy.py covers which ones are safe.
CURIOUS = SitePolicy(roster=None, adversary=AdversaryClass.CURIOUS_SERVER, corrupt_fraction=0)


def _play(r, schedule, seed):
    """The round of ``r``, replayable from ``seed`` (every random draw of every client)."""
    return run_round(
        r.config,
        r.identities,
        r.inputs,
        dropouts=schedule,
        policy=r.clients[1].policy,
        rng=DeterministicRandom.from_int(seed),
    )


@st.composite
def full_graph_rounds(draw):
    n = draw(st.integers(2, 9))
    t = draw(st.integers(2, n))
    m = draw(st.integers(1, 40))
    bits = draw(st.sampled_from([8, 16, 24, 32]))
    drop_stage = draw(st.lists(st.integers(0, NEVER), min_size=n, max_size=n))
    return n, t, m, bits, drop_stage


def _schedule(drop_stage):
    schedule: dict[Stage, set[int]] = {}
    for party, index in enumerate(drop_stage, start=1):
        if index < NEVER:
            schedule.setdefault(ACTIVE_STAGES[index], set()).add(party)
    return schedule


@given(full_graph_rounds(), st.integers(0, 2**32 - 1))
def test_full_graph_round_sums_survivors_exactly_or_aborts_at_the_first_short_stage(case, seed):
    n, t, m, bits, drop_stage = case
    r = make_round(n, threshold=t, vector_length=m, bits=bits, seed=seed)
    remaining = [sum(1 for d in drop_stage if d > i) for i in range(NEVER)]
    short = [i for i, count in enumerate(remaining) if count < t]
    schedule = _schedule(drop_stage)
    if short:
        with pytest.raises(RoundAborted) as info:
            _play(r, schedule, seed)
        assert info.value.stage == ACTIVE_STAGES[short[0]].value
        return
    result = _play(r, schedule, seed)
    # Parties that dropped before sending their masked input are out; later dropouts stay in.
    expected_survivors = tuple(p for p, d in enumerate(drop_stage, start=1) if d > 2)
    assert result.survivors == expected_survivors
    np.testing.assert_array_equal(result.total, r.expected_sum(expected_survivors))


@st.composite
def sparse_rounds(draw):
    n = draw(st.integers(5, 24))
    k = draw(st.sampled_from([d for d in (2, 4, 6, 8) if d < n - 1]))
    t = draw(st.integers(2, k + 1))
    m = draw(st.integers(1, 24))
    drop_stage = draw(
        st.lists(st.sampled_from([*range(NEVER)] + [NEVER] * 8), min_size=n, max_size=n)
    )
    return n, k, t, m, drop_stage


@given(sparse_rounds(), st.integers(0, 2**32 - 1))
def test_secagg_plus_round_sums_survivors_exactly_or_aborts_with_a_named_stage(case, seed):
    n, k, t, m, drop_stage = case
    r = make_round(n, threshold=t, vector_length=m, degree=k, seed=seed)
    schedule = _schedule(drop_stage)
    try:
        result = _play(r, schedule, seed)
    except RoundAborted as exc:
        assert exc.stage in {s.value for s in ACTIVE_STAGES}
        assert any(d < NEVER for d in drop_stage), "a round without dropouts must complete"
        return
    # Every survivor sent its masked input; nobody who dropped before that is in the sum.
    assert all(drop_stage[p - 1] > 2 for p in result.survivors)
    np.testing.assert_array_equal(result.total, r.expected_sum(result.survivors))


@given(
    st.integers(2, 30),
    st.integers(1, 50),
    st.floats(0.01, 100.0),
    st.sampled_from([16, 24, 32]),
    st.integers(0, 2**32 - 1),
)
def test_decoded_sum_is_within_the_quantisation_bound(n, m, clip, bits, seed):
    rng = np.random.default_rng(seed)
    inputs = rng.uniform(-1.5 * clip, 1.5 * clip, size=(n, m))
    try:
        out = simulate(
            list(inputs), clip=clip, bits=bits, threshold=max(2, n // 2 + 1), policy=CURIOUS
        )
    except OverflowRiskError:
        assert bits == 16 and n > 1000  # never: 16 bits always fit 30 clients at some scale
        raise
    expected = np.clip(inputs, -clip, clip).sum(axis=0)
    bound = n * out.encoding.resolution
    assert np.max(np.abs(out.aggregate - expected)) <= bound


@given(st.integers(1, 10_000), st.floats(1e-3, 1e3), st.sampled_from([8, 16, 32]))
def test_encoding_never_admits_a_configuration_that_can_overflow(n, clip, bits):
    try:
        enc = FixedPointEncoding.for_clients(clip=clip, max_clients=n, bits=bits)
    except OverflowRiskError:
        assert n * 2 >= 2 ** (bits - 1) - 1
        return
    assert n * enc.max_abs_quantised < 2 ** (bits - 1)


@given(st.integers(2, 12), st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_weighted_round_gives_the_weighted_average_of_the_survivors(n, m, seed):
    rng = np.random.default_rng(seed)
    inputs = rng.uniform(-1, 1, size=(n, m))
    weights = rng.uniform(0, 1, size=n)
    drop = {n} if n > 3 else set()
    out = simulate(
        list(inputs),
        weights=list(weights),
        threshold=2,
        dropouts={Stage.MASKED_INPUT: drop},
        policy=CURIOUS,
    )
    alive = [p - 1 for p in out.survivors]
    expected_weight = weights[alive].sum()
    # The weight coordinate is encoded like any other: off by at most n / scale.
    assert abs(out.total_weight - expected_weight) <= n * out.encoding.resolution
    expected = (weights[alive, None] * inputs[alive]).sum(axis=0)
    assert np.max(np.abs(out.aggregate - expected)) <= n * out.encoding.resolution


def test_a_round_replays_bit_for_bit_from_its_randomness_source():
    r = make_round(5, threshold=3, vector_length=8, seed=1)

    def keys(seed: int) -> tuple[bytes, ...]:
        server = ServerSession(r.config)
        run_round(
            r.config,
            r.identities,
            r.inputs,
            dropouts={Stage.MASKED_INPUT: {2}},
            server=server,
            policy=r.clients[1].policy,
            rng=DeterministicRandom.from_int(seed),
        )
        return tuple(
            a.mask_public_key + a.seed_commitment for a in server.transcript().advertisements
        )

    assert keys(42) == keys(42) != keys(43)
