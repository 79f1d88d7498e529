"""Tests for X25519 key agreement."""

from __future__ import annotations

import copy
import pickle

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from secagg.crypto.kx import KeyAgreementKey, check_public_key, exchange
from secagg.crypto.rng import DeterministicRandom
from secagg.errors import ConfigError, CryptoError

# RFC 7748 section 6.1.
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

LOW_ORDER_POINTS = [
    bytes(32),  # 0
    (1).to_bytes(32, "little"),  # 1
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),  # order 8
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),  # order 8
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  # p - 1
]


def test_public_keys_match_rfc7748_section_6_1() -> None:
    assert KeyAgreementKey.from_private_bytes(ALICE_PRIVATE).public_bytes == ALICE_PUBLIC
    assert KeyAgreementKey.from_private_bytes(BOB_PRIVATE).public_bytes == BOB_PUBLIC


def test_shared_secret_matches_rfc7748_section_6_1() -> None:
    assert KeyAgreementKey.from_private_bytes(ALICE_PRIVATE).exchange(BOB_PUBLIC) == SHARED
    assert KeyAgreementKey.from_private_bytes(BOB_PRIVATE).exchange(ALICE_PUBLIC) == SHARED
    assert exchange(ALICE_PRIVATE, BOB_PUBLIC) == SHARED


def test_exchange_agrees_with_openssl_x25519() -> None:
    ours = KeyAgreementKey.generate()
    theirs = X25519PrivateKey.generate()
    their_public = theirs.public_key().public_bytes_raw()
    expected = theirs.exchange(X25519PublicKey.from_public_bytes(ours.public_bytes))
    assert ours.exchange(their_public) == expected


def test_module_exchange_recomputes_the_secret_from_exported_private_bytes() -> None:
    a, b = KeyAgreementKey.generate(), KeyAgreementKey.generate()
    assert exchange(a.private_bytes(), b.public_bytes) == b.exchange(a.public_bytes)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_exchange_with_low_order_point_fails(point: bytes) -> None:
    with pytest.raises(CryptoError):
        KeyAgreementKey.generate().exchange(point)
    with pytest.raises(CryptoError):
        exchange(ALICE_PRIVATE, point)


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33), "x" * 32])
def test_exchange_with_wrong_length_peer_key_fails(bad: bytes) -> None:
    with pytest.raises(CryptoError):
        KeyAgreementKey.generate().exchange(bad)


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33)])
def test_private_key_of_wrong_length_is_rejected(bad: bytes) -> None:
    with pytest.raises(ConfigError):
        KeyAgreementKey.from_private_bytes(bad)
    with pytest.raises(ConfigError):
        exchange(bad, BOB_PUBLIC)


def test_repr_hides_the_secret() -> None:
    key = KeyAgreementKey.from_private_bytes(ALICE_PRIVATE)
    text = repr(key) + str(key)
    assert ALICE_PRIVATE.hex()[:8] not in text


def test_pickling_a_secret_key_fails() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(KeyAgreementKey.generate())


def test_copying_a_secret_key_fails() -> None:
    with pytest.raises(TypeError):
        copy.deepcopy(KeyAgreementKey.generate())


# --- low-order points -----------------------------------------------------------------------------

_P = 2**255 - 19
_ORDER_8 = (
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
)


@pytest.mark.parametrize("u", [0, 1, *_ORDER_8, _P - 1, _P, _P + 1])
@pytest.mark.parametrize("top_bit", [False, True])
def test_low_order_points_are_refused_at_the_door(u: int, top_bit: bool) -> None:
    point = bytearray(u.to_bytes(32, "little"))
    if top_bit:
        point[31] |= 0x80
    with pytest.raises(CryptoError, match="low-order"):
        check_public_key(bytes(point))
    # ... and they are exactly the points libsodium refuses in a key agreement.
    with pytest.raises(CryptoError):
        KeyAgreementKey.generate().exchange(bytes(point))


def test_ordinary_public_keys_pass_the_check() -> None:
    for _ in range(200):
        check_public_key(KeyAgreementKey.generate().public_bytes)


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33), "x" * 32])
def test_malformed_public_keys_are_refused(bad: object) -> None:
    with pytest.raises(CryptoError):
        check_public_key(bad)  # type: ignore[arg-type]


def test_key_generation_replays_from_a_deterministic_source() -> None:
    a = KeyAgreementKey.generate(DeterministicRandom.from_int(1)).public_bytes
    b = KeyAgreementKey.generate(DeterministicRandom.from_int(1)).public_bytes
    assert a == b != KeyAgreementKey.generate(DeterministicRandom.from_int(2)).public_bytes
