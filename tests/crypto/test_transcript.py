"""Tests for the canonical transcript encoding."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.crypto.transcript import PROTOCOL_VERSION, lp_encode, transcript_digest
from secagg.errors import ConfigError

parts = st.one_of(
    st.binary(max_size=20), st.text(max_size=20), st.integers(min_value=0, max_value=2**64 - 1)
)


def test_protocol_version_is_pinned() -> None:
    assert PROTOCOL_VERSION == "secagg/v1"


def test_lp_encode_layout_is_tag_length_content() -> None:
    assert lp_encode(b"ab") == b"b" + (2).to_bytes(8, "big") + b"ab"
    assert lp_encode("é") == b"s" + (2).to_bytes(8, "big") + "é".encode()
    assert lp_encode(258) == b"i" + (8).to_bytes(8, "big") + (258).to_bytes(8, "big")
    assert lp_encode() == b""


def test_lp_encode_distinguishes_split_points_and_types() -> None:
    assert lp_encode(b"ab", b"c") != lp_encode(b"a", b"bc")
    assert lp_encode("1") != lp_encode(1)
    assert lp_encode(b"x") != lp_encode("x")
    assert lp_encode(b"", b"") != lp_encode(b"")


@pytest.mark.parametrize("bad", [-1, 2**64, True, 1.0, None, [1]])
def test_lp_encode_rejects_out_of_range_or_unsupported_parts(bad: object) -> None:
    with pytest.raises(ConfigError):
        lp_encode(bad)  # type: ignore[arg-type]


def test_transcript_digest_is_blake2b_256_of_encoding() -> None:
    expected = hashlib.blake2b(lp_encode("a", b"b", 1), digest_size=32).digest()
    assert transcript_digest("a", b"b", 1) == expected
    assert transcript_digest("a", b"b", 1).hex() == (
        "30fa626c046c3d7da19519e785a1af4c7748503a3b54b253b576fd85253f8170"
    )


@given(st.lists(parts, max_size=6), st.lists(parts, max_size=6))
def test_lp_encode_is_injective(a: list[bytes | str | int], b: list[bytes | str | int]) -> None:
    def typed(xs: list[bytes | str | int]) -> list[tuple[str, bytes | str | int]]:
        return [(type(x).__name__, x) for x in xs]

    if typed(a) != typed(b):
        assert lp_encode(*a) != lp_encode(*b)
    else:
        assert lp_encode(*a) == lp_encode(*b)
