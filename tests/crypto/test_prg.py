"""Tests for AES-256-CTR mask expansion."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from secagg.crypto.prg import SEED_BYTES, expand_mask, fill_mask, random_seed, uniform_floats
from secagg.errors import ConfigError

SEED = bytes(range(32))

# NIST SP 800-38A, F.5.5 CTR-AES256.Encrypt.
NIST_KEY = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
NIST_COUNTER = int("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff", 16)
NIST_PLAINTEXT = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
)
NIST_CIPHERTEXT = bytes.fromhex(
    "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5"
    "2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6"
)


def reference_keystream(seed: bytes, n_words: int) -> np.ndarray:
    """One-shot AES-256-CTR of zeros from block 0: the definition the PRG must match."""
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(enc.update(bytes(4 * n_words)), dtype="<u4").astype(np.uint32)


def test_block_function_matches_nist_sp800_38a_f55_aes256_ctr() -> None:
    # Block index = counter block value, so word offset 4 * counter starts at the NIST counter.
    keystream = expand_mask(NIST_KEY, 16, start_word=4 * NIST_COUNTER).astype("<u4").tobytes()
    ciphertext = bytes(k ^ p for k, p in zip(keystream, NIST_PLAINTEXT, strict=True))
    assert ciphertext == NIST_CIPHERTEXT


def test_expand_mask_is_pinned_for_a_fixed_seed() -> None:
    assert expand_mask(SEED, 8).tolist() == [
        3053490418,
        3500099882,
        1788539817,
        2155294429,
        2926992880,
        3852450122,
        832304806,
        1026998856,
    ]
    assert expand_mask(SEED, 3, start_word=1_000_001).tolist() == [
        954702969,
        2598969455,
        3317889595,
    ]


def test_expand_mask_matches_one_shot_aes256_ctr_across_chunk_boundaries() -> None:
    n = (1 << 18) + 5  # > 1 MiB of keystream, with a ragged tail
    assert np.array_equal(expand_mask(SEED, n), reference_keystream(SEED, n))


@given(
    st.integers(min_value=0, max_value=300_000),
    st.integers(min_value=0, max_value=2_000),
)
def test_fill_mask_slice_equals_expand_mask_slice(start: int, length: int) -> None:
    out = np.full(length, 0xDEADBEEF, dtype=np.uint32)
    fill_mask(SEED, out, start)
    full = expand_mask(SEED, start + length)
    assert np.array_equal(out, full[start:])
    assert np.array_equal(expand_mask(SEED, length, start), full[start:])


def test_fill_mask_straddling_the_chunk_boundary_matches_reference() -> None:
    start = (1 << 18) - 3
    out = np.empty(11, dtype=np.uint32)
    fill_mask(SEED, out, start)
    assert np.array_equal(out, reference_keystream(SEED, start + 11)[start:])


def test_fill_mask_fills_multidimensional_arrays_in_c_order() -> None:
    out = np.empty((3, 5), dtype=np.uint32)
    fill_mask(SEED, out, 2)
    assert np.array_equal(out.reshape(-1), expand_mask(SEED, 15, 2))


def test_fill_mask_of_empty_array_is_a_no_op() -> None:
    fill_mask(SEED, np.empty(0, dtype=np.uint32), 7)
    assert expand_mask(SEED, 0).shape == (0,)


def test_different_seeds_give_different_masks() -> None:
    assert not np.array_equal(expand_mask(SEED, 64), expand_mask(bytes(32), 64))


@pytest.mark.parametrize(
    "out",
    [
        np.empty(4, dtype=np.int32),
        np.empty(4, dtype=np.uint64),
        np.empty(4, dtype=">u4" if np.little_endian else "<u4"),
        np.empty((4, 4), dtype=np.uint32)[:, ::2],
        [0, 0, 0],
    ],
)
def test_fill_mask_rejects_wrong_dtype_or_layout(out: np.ndarray) -> None:
    with pytest.raises(ConfigError):
        fill_mask(SEED, out)


def test_fill_mask_rejects_read_only_output() -> None:
    out = np.empty(4, dtype=np.uint32)
    out.setflags(write=False)
    with pytest.raises(ConfigError):
        fill_mask(SEED, out)


@pytest.mark.parametrize("seed", [b"", bytes(16), bytes(31), bytes(33), "s" * 32])
def test_seed_of_wrong_length_is_rejected(seed: bytes) -> None:
    with pytest.raises(ConfigError):
        expand_mask(seed, 4)
    with pytest.raises(ConfigError):
        uniform_floats(seed, 4)


def test_negative_start_or_length_is_rejected() -> None:
    with pytest.raises(ConfigError):
        expand_mask(SEED, 4, start_word=-1)
    with pytest.raises(ConfigError):
        expand_mask(SEED, -1)
    with pytest.raises(ConfigError):
        uniform_floats(SEED, -1)


def test_range_past_the_128_bit_counter_is_rejected() -> None:
    last = 4 * (1 << 128) - 2
    assert expand_mask(SEED, 2, start_word=last).shape == (2,)
    with pytest.raises(ConfigError):
        expand_mask(SEED, 3, start_word=last)


def test_random_seed_is_32_fresh_bytes() -> None:
    assert len(random_seed()) == SEED_BYTES
    assert random_seed() != random_seed()


def test_uniform_floats_are_in_unit_interval_and_pinned() -> None:
    values = uniform_floats(SEED, 100_000)
    assert values.dtype == np.float64
    assert values.min() >= 0.0 and values.max() < 1.0
    assert abs(values.mean() - 0.5) < 0.01
    assert uniform_floats(SEED, 3).tolist() == [
        0.35331073351467057,
        0.6776412676660714,
        0.8189251406733727,
    ]


def test_uniform_floats_are_multiples_of_2_to_minus_53() -> None:
    scaled = uniform_floats(SEED, 1000) * 2.0**53
    assert np.array_equal(scaled, np.floor(scaled))


@given(st.integers(min_value=0, max_value=1000), st.integers(min_value=0, max_value=100))
def test_uniform_floats_slice_equals_prefix_slice(start: int, n: int) -> None:
    assert np.array_equal(uniform_floats(SEED, n, start), uniform_floats(SEED, start + n)[start:])


def test_uniform_floats_are_not_the_mask_words() -> None:
    words = expand_mask(SEED, 2000).view(np.uint64)
    floats = ((words >> np.uint64(11)).astype(np.float64)) * 2.0**-53
    assert not np.array_equal(floats, uniform_floats(SEED, 1000))
