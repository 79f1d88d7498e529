"""Tests for HKDF-SHA256 key derivation."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from secagg.crypto import kdf
from secagg.crypto.kdf import (
    PURPOSE_GRAPH,
    PURPOSE_NOISE,
    PURPOSE_PAIRWISE_MASK,
    PURPOSE_ROUNDING,
    PURPOSE_SHARE_AEAD,
    PURPOSE_SHARE_INBOX,
    PURPOSES,
    derive_key,
)
from secagg.crypto.transcript import PROTOCOL_VERSION, lp_encode
from secagg.errors import ConfigError

SECRET = bytes(range(32))


def test_purpose_inventory_is_pinned() -> None:
    assert {p: p for p in PURPOSES} == {
        PURPOSE_PAIRWISE_MASK: "pairwise-mask",
        PURPOSE_SHARE_AEAD: "share-aead",
        PURPOSE_SHARE_INBOX: "share-inbox",
        PURPOSE_GRAPH: "neighbour-graph",
        PURPOSE_ROUNDING: "stochastic-rounding",
        PURPOSE_NOISE: "dp-noise",
    }


def test_derive_key_is_hkdf_sha256_with_version_salt_and_transcript_info() -> None:
    expected = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=PROTOCOL_VERSION.encode(),
        info=lp_encode(PROTOCOL_VERSION, PURPOSE_PAIRWISE_MASK, 7, b"sess", 1, 2),
    ).derive(bytes(32))
    got = derive_key(
        bytes(32), purpose=PURPOSE_PAIRWISE_MASK, round_id=7, session_id=b"sess", parties=(1, 2)
    )
    assert got == expected
    assert got.hex() == "09b9a3817331cca4fbd32bbec581341d73d7442a17c735f1bec4656928f038e3"


def test_unknown_purpose_is_rejected() -> None:
    with pytest.raises(ConfigError):
        derive_key(SECRET, purpose="masks", round_id=0, session_id=b"s")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"round_id": -1},
        {"round_id": 2**64},
        {"session_id": "s"},
        {"parties": (1, -2)},
        {"parties": [1, 2]},
        {"length": 0},
        {"length": 255 * 32 + 1},
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"purpose": PURPOSE_GRAPH, "round_id": 0, "session_id": b"s"}
    args.update(kwargs)
    with pytest.raises(ConfigError):
        derive_key(SECRET, **args)  # type: ignore[arg-type]


def test_short_secret_is_rejected() -> None:
    with pytest.raises(ConfigError):
        derive_key(bytes(15), purpose=PURPOSE_GRAPH, round_id=0, session_id=b"s")


def test_length_is_honoured() -> None:
    assert (
        len(derive_key(SECRET, purpose=PURPOSE_NOISE, round_id=0, session_id=b"", length=77)) == 77
    )


contexts = st.tuples(
    st.sampled_from(sorted(kdf.PURPOSES)),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.binary(max_size=16),
    st.lists(st.integers(min_value=0, max_value=2**32), max_size=3).map(tuple),
)


@given(contexts, contexts)
def test_outputs_differ_when_any_context_field_differs(
    a: tuple[str, int, bytes, tuple[int, ...]], b: tuple[str, int, bytes, tuple[int, ...]]
) -> None:
    def derive(c: tuple[str, int, bytes, tuple[int, ...]]) -> bytes:
        return derive_key(SECRET, purpose=c[0], round_id=c[1], session_id=c[2], parties=c[3])

    assert (derive(a) == derive(b)) == (a == b)


def test_party_order_matters() -> None:
    def derive(parties: tuple[int, ...]) -> bytes:
        return derive_key(
            SECRET, purpose=PURPOSE_PAIRWISE_MASK, round_id=1, session_id=b"s", parties=parties
        )

    assert derive((1, 2)) != derive((2, 1))
    assert derive((1, 2)) != derive((12,))
