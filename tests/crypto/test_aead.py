"""Tests for XChaCha20-Poly1305 sealing."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.crypto.aead import NONCE_BYTES, OVERHEAD_BYTES, open_sealed, seal
from secagg.errors import ConfigError, DecryptionError

KEY = bytes(range(32))


@given(st.binary(max_size=512), st.binary(max_size=64))
def test_open_of_seal_returns_the_plaintext(plaintext: bytes, associated_data: bytes) -> None:
    box = seal(KEY, plaintext, associated_data)
    assert len(box) == len(plaintext) + OVERHEAD_BYTES
    assert open_sealed(KEY, box, associated_data) == plaintext


def test_seal_uses_a_fresh_nonce_each_time() -> None:
    boxes = {seal(KEY, b"same", b"ad") for _ in range(32)}
    assert len(boxes) == 32
    assert len({b[:NONCE_BYTES] for b in boxes}) == 32


def test_open_with_wrong_associated_data_fails() -> None:
    box = seal(KEY, b"secret share", b"round=1")
    with pytest.raises(DecryptionError):
        open_sealed(KEY, box, b"round=2")


def test_open_with_wrong_key_fails() -> None:
    box = seal(KEY, b"secret share", b"ad")
    with pytest.raises(DecryptionError):
        open_sealed(os.urandom(32), box, b"ad")


@given(st.data())
def test_open_of_box_with_flipped_bit_fails(data: st.DataObject) -> None:
    box = bytearray(seal(KEY, b"secret share", b"ad"))
    index = data.draw(st.integers(min_value=0, max_value=len(box) - 1))
    box[index] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
    with pytest.raises(DecryptionError):
        open_sealed(KEY, bytes(box), b"ad")


@pytest.mark.parametrize("length", [0, 1, NONCE_BYTES, OVERHEAD_BYTES - 1])
def test_open_of_short_input_fails_with_the_generic_error(length: int) -> None:
    with pytest.raises(DecryptionError, match=r"^decryption failed$"):
        open_sealed(KEY, bytes(length), b"ad")


def test_open_of_truncated_box_fails() -> None:
    box = seal(KEY, b"secret share", b"ad")
    with pytest.raises(DecryptionError, match=r"^decryption failed$"):
        open_sealed(KEY, box[:-1], b"ad")


def test_open_of_non_bytes_fails_with_the_generic_error() -> None:
    with pytest.raises(DecryptionError, match=r"^decryption failed$"):
        open_sealed(KEY, "x" * 64, b"ad")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [b"", bytes(16), bytes(31), bytes(33)])
def test_key_of_wrong_length_is_rejected(bad: bytes) -> None:
    with pytest.raises(ConfigError):
        seal(bad, b"m", b"ad")
    with pytest.raises(ConfigError):
        open_sealed(bad, bytes(64), b"ad")
