"""Tests for t-of-n Shamir sharing over GF(2**31 - 1)."""

from __future__ import annotations

import os
import struct
from itertools import combinations
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.crypto import shamir
from secagg.crypto.rng import SYSTEM_RANDOM, DeterministicRandom
from secagg.crypto.shamir import (
    FIELD_PRIME,
    SHARE_BYTES,
    reconstruct,
    reconstruct_many,
    split,
    split_many,
)
from secagg.errors import ConfigError, ShamirError

SECRET = bytes(range(32))


def test_constants_are_pinned() -> None:
    assert FIELD_PRIME == 2**31 - 1
    assert SHARE_BYTES == 36


def test_every_share_is_36_bytes_of_field_elements() -> None:
    shares = split(os.urandom(32), threshold=3, xs=[1, 2, 3, 4, 5])
    assert sorted(shares) == [1, 2, 3, 4, 5]
    for share in shares.values():
        assert len(share) == SHARE_BYTES
        assert all(limb < FIELD_PRIME for limb in struct.unpack("<9I", share))


def test_every_threshold_subset_reconstructs() -> None:
    secret = os.urandom(32)
    shares = split(secret, threshold=3, xs=[3, 8, 1, 9, 20])
    for subset in combinations(shares, 3):
        assert reconstruct({x: shares[x] for x in subset}, threshold=3) == secret


def test_threshold_one_shares_are_the_secret_limbs() -> None:
    shares = split(SECRET, threshold=1, xs=[7, 9])
    assert shares[7] == shares[9]
    assert reconstruct({9: shares[9]}, threshold=1) == SECRET


def test_extreme_secrets_round_trip() -> None:
    for secret in (bytes(32), b"\xff" * 32):
        shares = split(secret, threshold=2, xs=[1, FIELD_PRIME - 1])
        assert reconstruct(shares, threshold=2) == secret


@given(st.data())
def test_round_trip_for_any_subset_of_at_least_threshold(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=1, max_value=60))
    t = data.draw(st.integers(min_value=1, max_value=n))
    xs = data.draw(
        st.lists(
            st.integers(min_value=1, max_value=FIELD_PRIME - 1), min_size=n, max_size=n, unique=True
        )
    )
    secret = data.draw(st.binary(min_size=32, max_size=32))
    shares = split(secret, threshold=t, xs=xs)
    subset = data.draw(st.lists(st.sampled_from(xs), min_size=t, unique=True))
    chosen = {x: shares[x] for x in subset}
    assert reconstruct(chosen, threshold=t) == secret
    assert reconstruct(chosen, threshold=t, verify_extra=True) == secret


@given(st.data())
def test_fewer_than_threshold_shares_raise(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=2, max_value=30))
    t = data.draw(st.integers(min_value=2, max_value=n))
    shares = split(SECRET, threshold=t, xs=range(1, n + 1))
    subset = data.draw(st.lists(st.sampled_from(range(1, n + 1)), max_size=t - 1, unique=True))
    with pytest.raises(ShamirError):
        reconstruct({x: shares[x] for x in subset}, threshold=t)


def test_split_many_and_reconstruct_many_round_trip_with_mixed_id_sets() -> None:
    secrets = [os.urandom(32) for _ in range(20)]
    share_sets = split_many(secrets, threshold=4, xs=range(1, 11))
    partial = [
        {x: s[x] for x in list(s)[i % 5 : i % 5 + 4 + i % 3]} for i, s in enumerate(share_sets)
    ]
    assert reconstruct_many(partial, threshold=4) == secrets
    assert reconstruct_many([], threshold=4) == []
    assert split_many([], threshold=1, xs=[1]) == []


def test_split_polynomials_are_independent_per_secret() -> None:
    a, b = split_many([SECRET, SECRET], threshold=2, xs=[1, 2])
    assert a != b


def test_reconstruction_uses_the_smallest_ids() -> None:
    shares = split(SECRET, threshold=2, xs=[1, 2, 3])
    shares[3] = bytes(SHARE_BYTES)  # corrupt an id that is not among the two smallest
    assert reconstruct(shares, threshold=2) == SECRET


def test_extra_share_off_the_polynomial_fails_when_verified() -> None:
    shares = split(SECRET, threshold=2, xs=[1, 2, 3])
    limbs = list(struct.unpack("<9I", shares[3]))
    limbs[0] = (limbs[0] + 1) % FIELD_PRIME
    shares[3] = struct.pack("<9I", *limbs)
    with pytest.raises(ShamirError):
        reconstruct(shares, threshold=2, verify_extra=True)


def test_inconsistent_shares_are_detected_by_limb_range() -> None:
    # Mixing shares of two secrets almost surely gives a limb >= 2**30 (probability ~ 1 - 2**-9).
    failures = 0
    for _ in range(20):
        a, b = split_many([os.urandom(32), os.urandom(32)], threshold=2, xs=[1, 2])
        try:
            reconstruct({1: a[1], 2: b[2]}, threshold=2)
        except ShamirError:
            failures += 1
    assert failures >= 19


@pytest.mark.parametrize("length", [0, 35, 37, 72])
def test_share_of_wrong_length_raises(length: int) -> None:
    shares = split(SECRET, threshold=2, xs=[1, 2, 3])
    shares[3] = bytes(length)
    with pytest.raises(ShamirError):
        reconstruct(shares, threshold=2)


def test_share_that_is_not_bytes_raises() -> None:
    shares: dict[int, object] = dict(split(SECRET, threshold=2, xs=[1, 2]))
    shares[2] = "x" * SHARE_BYTES
    with pytest.raises(ShamirError):
        reconstruct(shares, threshold=2)  # type: ignore[arg-type]


def test_limb_not_in_the_field_raises() -> None:
    shares = split(SECRET, threshold=2, xs=[1, 2])
    shares[2] = struct.pack("<9I", FIELD_PRIME, *([0] * 8))
    with pytest.raises(ShamirError):
        reconstruct(shares, threshold=2)


@pytest.mark.parametrize("bad_id", [0, -1, FIELD_PRIME, 2.5, "3"])
def test_share_id_out_of_range_raises(bad_id: object) -> None:
    shares: dict[Any, bytes] = dict(split(SECRET, threshold=2, xs=[1, 2]))
    shares[bad_id] = shares[2]
    with pytest.raises(ShamirError):
        reconstruct(shares, threshold=2)


@pytest.mark.parametrize(
    ("threshold", "xs"),
    [
        (0, [1, 2]),
        (3, [1, 2]),
        (2, [1, 1, 2]),
        (1, [0, 1]),
        (1, [FIELD_PRIME]),
        (1, [True]),
        (1, [1.0]),
        (1, []),
    ],
)
def test_split_rejects_bad_threshold_or_ids(threshold: int, xs: list[int]) -> None:
    with pytest.raises(ConfigError):
        split(SECRET, threshold=threshold, xs=xs)


@pytest.mark.parametrize("secret", [b"", bytes(31), bytes(33), "s" * 32])
def test_split_rejects_secret_not_32_bytes(secret: bytes) -> None:
    with pytest.raises(ConfigError):
        split(secret, threshold=1, xs=[1])


def test_reconstruct_rejects_threshold_below_one() -> None:
    with pytest.raises(ConfigError):
        reconstruct({1: bytes(SHARE_BYTES)}, threshold=0)


def test_random_coefficients_are_field_elements() -> None:
    values = shamir._random_field_elements(100_000, SYSTEM_RANDOM)
    assert int(values.max()) < FIELD_PRIME
    assert values.size == 100_000


def test_lagrange_weights_at_zero_sum_to_one() -> None:
    # sum_j L_j(0) = 1 for the constant polynomial 1.
    weights = shamir._lagrange_at_zero((2, 5, 11, 40))
    assert int(weights.sum()) % FIELD_PRIME == 1


def test_split_with_a_deterministic_source_replays_exactly() -> None:
    secret = bytes(range(32))
    first = split_many([secret], threshold=3, xs=[1, 2, 3, 4], rng=DeterministicRandom.from_int(7))
    again = split_many([secret], threshold=3, xs=[1, 2, 3, 4], rng=DeterministicRandom.from_int(7))
    other = split_many([secret], threshold=3, xs=[1, 2, 3, 4], rng=DeterministicRandom.from_int(8))
    assert first == again
    assert first != other
    assert reconstruct(first[0], threshold=3) == secret
