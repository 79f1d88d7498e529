"""Tests for Ed25519 identity keys."""

from __future__ import annotations

import copy
import pickle

import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.crypto.signing import IdentityKey, IdentityPublicKey
from secagg.crypto.transcript import PROTOCOL_VERSION, lp_encode
from secagg.errors import ConfigError, InvalidSignature

# RFC 8032 section 7.1, TEST 1 (empty message).
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def test_raw_ed25519_layer_matches_rfc8032_test_1() -> None:
    raw = nacl.signing.SigningKey(RFC8032_SECRET)
    assert bytes(raw.verify_key) == RFC8032_PUBLIC
    assert raw.sign(b"").signature == RFC8032_SIGNATURE


def test_identity_key_derives_rfc8032_public_key() -> None:
    key = IdentityKey.from_private_bytes(RFC8032_SECRET)
    assert key.public_key.to_bytes() == RFC8032_PUBLIC


def test_sign_is_raw_ed25519_over_the_context_transcript() -> None:
    key = IdentityKey.from_private_bytes(RFC8032_SECRET)
    signature = key.sign(b"ctx", b"msg")
    payload = lp_encode(PROTOCOL_VERSION, "sig", b"ctx", b"msg")
    assert nacl.signing.SigningKey(RFC8032_SECRET).sign(payload).signature == signature
    nacl.signing.VerifyKey(RFC8032_PUBLIC).verify(payload, signature)


def test_fixed_key_fixed_message_signature_is_pinned() -> None:
    key = IdentityKey.from_private_bytes(bytes(range(32)))
    assert key.sign(b"ctx", b"msg").hex() == (
        "1230807a13e73be2a57012aa98b841f1d302d3d491fee908b384c7377dbb0157"
        "3efa67df486679b3d12b2130e87c8c37b377da5859d2184a95d9290ae91c370e"
    )


def test_signature_verifies_under_same_context() -> None:
    key = IdentityKey.generate()
    key.public_key.verify(key.sign(b"ctx", b"msg"), b"ctx", b"msg")


def test_signature_under_another_context_fails() -> None:
    key = IdentityKey.generate()
    signature = key.sign(b"consistency", b"msg")
    with pytest.raises(InvalidSignature):
        key.public_key.verify(signature, b"audit", b"msg")


def test_signature_on_another_message_fails() -> None:
    key = IdentityKey.generate()
    with pytest.raises(InvalidSignature):
        key.public_key.verify(key.sign(b"ctx", b"msg"), b"ctx", b"msh")


def test_raw_signature_of_bare_message_fails() -> None:
    raw = nacl.signing.SigningKey(RFC8032_SECRET)
    key = IdentityPublicKey.from_bytes(RFC8032_PUBLIC)
    with pytest.raises(InvalidSignature):
        key.verify(raw.sign(b"msg").signature, b"", b"msg")


def test_signature_from_another_key_fails() -> None:
    signature = IdentityKey.generate().sign(b"ctx", b"msg")
    with pytest.raises(InvalidSignature):
        IdentityKey.generate().public_key.verify(signature, b"ctx", b"msg")


@pytest.mark.parametrize("length", [0, 63, 65])
def test_signature_of_wrong_length_fails(length: int) -> None:
    key = IdentityKey.generate()
    with pytest.raises(InvalidSignature):
        key.public_key.verify(bytes(length), b"ctx", b"msg")


def test_signature_that_is_not_bytes_fails() -> None:
    key = IdentityKey.generate()
    with pytest.raises(InvalidSignature):
        key.public_key.verify("x" * 64, b"ctx", b"msg")  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=63), st.integers(min_value=0, max_value=7))
def test_flipped_signature_bit_fails(byte: int, bit: int) -> None:
    key = IdentityKey.from_private_bytes(bytes(range(32)))
    signature = bytearray(key.sign(b"ctx", b"msg"))
    signature[byte] ^= 1 << bit
    with pytest.raises(InvalidSignature):
        key.public_key.verify(bytes(signature), b"ctx", b"msg")


def test_verify_with_low_order_public_key_fails() -> None:
    # The identity point (y = 1) has order 1: libsodium refuses it as a public key.
    identity_point = (1).to_bytes(32, "little")
    key = IdentityPublicKey.from_bytes(identity_point)
    with pytest.raises(InvalidSignature):
        key.verify(identity_point + bytes(32), b"ctx", b"msg")


def test_verify_with_public_key_off_the_curve_fails() -> None:
    key = IdentityPublicKey.from_bytes(b"\xff" * 32)
    with pytest.raises(InvalidSignature):
        key.verify(bytes(64), b"ctx", b"msg")


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33), "a" * 32])
def test_public_key_of_wrong_length_is_rejected(bad: bytes) -> None:
    with pytest.raises(ConfigError):
        IdentityPublicKey.from_bytes(bad)


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(64)])
def test_private_key_of_wrong_length_is_rejected(bad: bytes) -> None:
    with pytest.raises(ConfigError):
        IdentityKey.from_private_bytes(bad)


def test_private_bytes_round_trip() -> None:
    key = IdentityKey.generate()
    again = IdentityKey.from_private_bytes(key.private_bytes())
    assert again.public_key == key.public_key


def test_public_keys_compare_and_hash_by_bytes() -> None:
    a = IdentityPublicKey.from_bytes(RFC8032_PUBLIC)
    b = IdentityPublicKey.from_bytes(bytes(RFC8032_PUBLIC))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != IdentityKey.generate().public_key
    assert a != RFC8032_PUBLIC


def test_fingerprint_is_hex_of_first_8_bytes_of_blake2b() -> None:
    import hashlib

    key = IdentityPublicKey.from_bytes(RFC8032_PUBLIC)
    assert key.fingerprint() == hashlib.blake2b(RFC8032_PUBLIC).digest()[:8].hex()
    assert len(key.fingerprint()) == 16


def test_repr_hides_the_secret() -> None:
    key = IdentityKey.from_private_bytes(RFC8032_SECRET)
    text = repr(key) + str(key)
    assert RFC8032_SECRET.hex() not in text
    assert RFC8032_SECRET.hex()[:8] not in text
    assert key.public_key.fingerprint() in text


def test_pickling_a_secret_key_fails() -> None:
    key = IdentityKey.generate()
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError):
            pickle.dumps(key, protocol=protocol)


def test_copying_a_secret_key_fails() -> None:
    key = IdentityKey.generate()
    with pytest.raises(TypeError):
        copy.copy(key)
    with pytest.raises(TypeError):
        copy.deepcopy(key)


def test_public_key_pickles() -> None:
    key = IdentityKey.generate().public_key
    assert pickle.loads(pickle.dumps(key)) == key
