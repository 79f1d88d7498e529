"""Every compiled kernel equals its plain-numpy reference, on arbitrary inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import secagg.kernels as kernels
from secagg.crypto.prg import SEED_BYTES, MaskStream, expand_mask, fill_mask
from secagg.errors import ConfigError, MalformedMessage
from secagg.kernels import reference

seeds = st.binary(min_size=SEED_BYTES, max_size=SEED_BYTES)
bit_widths = st.integers(min_value=1, max_value=32)


def u32_vectors(min_size: int = 0, max_size: int = 300) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.uint32, st.integers(min_size, max_size))


@st.composite
def values_of_width(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    bits = draw(bit_widths)
    values = draw(hnp.arrays(np.uint32, st.integers(0, 200), elements=st.integers(0, 2**bits - 1)))
    return values, bits


@given(
    length=st.integers(0, 3000),
    add=st.lists(seeds, max_size=10),
    subtract=st.lists(seeds, max_size=10),
    start_word=st.integers(0, 2**40),
    chunk_words=st.integers(1, 700),
)
def test_add_masks_equals_reference(
    length: int, add: list[bytes], subtract: list[bytes], start_word: int, chunk_words: int
) -> None:
    base = np.arange(length, dtype=np.uint32) * np.uint32(2654435761)
    fast, slow = base.copy(), base.copy()
    kernels.add_masks(fast, add, subtract, start_word=start_word, chunk_words=chunk_words)
    reference.add_masks(slow, add, subtract, start_word=start_word)
    assert np.array_equal(fast, slow)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_add_masks_on_several_threads_equals_reference(threads: int) -> None:
    previous = kernels.get_num_threads()
    kernels.set_num_threads(threads)
    try:
        rng = np.random.default_rng(threads)
        seeds_ = [rng.bytes(SEED_BYTES) for _ in range(40)]
        base = rng.integers(0, 2**32, size=300_007, dtype=np.uint64).astype(np.uint32)
        fast, slow = base.copy(), base.copy()
        kernels.add_masks(fast, seeds_[:17], seeds_[17:], start_word=5)
        reference.add_masks(slow, seeds_[:17], seeds_[17:], start_word=5)
        assert np.array_equal(fast, slow)
    finally:
        kernels.set_num_threads(previous)


def test_masks_added_then_subtracted_cancel() -> None:
    rng = np.random.default_rng(1)
    seeds_ = [rng.bytes(SEED_BYTES) for _ in range(5)]
    x = rng.integers(0, 2**32, size=70_000, dtype=np.uint64).astype(np.uint32)
    y = x.copy()
    kernels.add_masks(y, seeds_, [])
    assert not np.array_equal(x, y)
    kernels.add_masks(y, [], seeds_)
    assert np.array_equal(x, y)


def test_add_masks_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        kernels.add_masks(np.zeros(4, dtype=np.int64), [bytes(32)], [])  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        kernels.add_masks(np.zeros(4, dtype=np.uint32), [bytes(31)], [])
    with pytest.raises(ConfigError):
        kernels.add_masks(np.zeros(4, dtype=np.uint32), [bytes(32)], [], start_word=-1)
    read_only = np.zeros(4, dtype=np.uint32)
    read_only.flags.writeable = False
    with pytest.raises(ConfigError):
        kernels.add_masks(read_only, [bytes(32)], [])


@given(
    seed=seeds,
    start=st.integers(0, 2**40),
    pieces=st.lists(st.integers(0, 600), max_size=8),
)
def test_mask_stream_continues_like_one_fill(seed: bytes, start: int, pieces: list[int]) -> None:
    stream = MaskStream(seed, start)
    parts = []
    for size in pieces:
        out = np.empty(size, dtype=np.uint32)
        stream.fill(out)
        parts.append(out)
    got = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint32)
    assert np.array_equal(got, expand_mask(seed, sum(pieces), start_word=start))
    assert stream.position == start + sum(pieces)


def test_mask_stream_crosses_the_internal_chunk_boundary() -> None:
    seed = bytes(range(32))
    stream = MaskStream(seed, 3)
    out = np.empty((1 << 18) + 5, dtype=np.uint32)  # > 1 MiB
    stream.fill(out)
    expected = np.empty_like(out)
    fill_mask(seed, expected, 3)
    assert np.array_equal(out, expected)


def test_mask_stream_refuses_pickling_and_bad_seeds() -> None:
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(MaskStream(bytes(32)))
    with pytest.raises(ConfigError):
        MaskStream(b"short")


@given(
    data=hnp.arrays(
        np.float64,
        st.integers(0, 300),
        elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    ),
    clip=st.floats(1e-3, 1e3),
    scale=st.floats(1e-2, 1e5),
    bits=st.integers(2, 32),
    rng_seed=st.integers(0, 2**32 - 1),
)
def test_stochastic_round_equals_reference(
    data: np.ndarray, clip: float, scale: float, bits: int, rng_seed: int
) -> None:
    uniforms = np.random.default_rng(rng_seed).random(data.size)
    mask = (1 << bits) - 1
    fast = kernels.stochastic_round(data, uniforms, clip, scale, mask)
    slow = reference.stochastic_round(data, uniforms, clip, scale, mask)
    assert fast.dtype == np.uint32
    assert np.array_equal(fast, slow)


@given(data=st.data(), bits=bit_widths)
def test_add_and_sub_mod_equal_reference(data: st.DataObject, bits: int) -> None:
    n = data.draw(st.integers(0, 300))
    a = data.draw(hnp.arrays(np.uint32, n))
    b = data.draw(hnp.arrays(np.uint32, n))
    mask = (1 << bits) - 1
    for fast_fn, slow_fn in (
        (kernels.add_mod, reference.add_mod),
        (kernels.sub_mod, reference.sub_mod),
    ):
        fast, slow = a.copy(), a.copy()
        fast_fn(fast, b, mask)
        slow_fn(slow, b, mask)
        assert np.array_equal(fast, slow)


@given(data=st.data())
def test_accumulate_equals_reference(data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 300))
    acc = data.draw(hnp.arrays(np.uint32, n))
    vec = data.draw(hnp.arrays(np.uint32, n))
    fast, slow = acc.copy(), acc.copy()
    kernels.accumulate(fast, vec)
    reference.accumulate(slow, vec)
    assert np.array_equal(fast, slow)


@given(data=st.data())
def test_combine_rows_equals_reference(data: st.DataObject) -> None:
    width = data.draw(st.integers(0, 100))
    n_rows = data.draw(st.integers(0, 10))
    rows = data.draw(hnp.arrays(np.uint32, (n_rows, width)))
    target = data.draw(hnp.arrays(np.uint32, width))
    n_add = data.draw(st.integers(0, n_rows))
    fast, slow = target.copy(), target.copy()
    kernels.combine_rows(fast, rows, n_add)
    reference.combine_rows(slow, rows, n_add)
    assert np.array_equal(fast, slow)


@given(case=values_of_width())
def test_pack_bits_equals_reference_and_round_trips(case: tuple[np.ndarray, int]) -> None:
    values, bits = case
    packed = kernels.pack_bits(values, bits)
    assert packed.dtype == np.uint8
    assert packed.size == kernels.packed_size(values.size, bits)
    assert np.array_equal(packed, reference.pack_bits(values, bits))
    assert np.array_equal(kernels.unpack_bits(packed, bits, values.size), values)
    assert np.array_equal(reference.unpack_bits(packed, bits, values.size), values)
    assert np.array_equal(kernels.unpack_bits(packed.tobytes(), bits, values.size), values)


def test_pack_bits_at_32_bits_is_four_little_endian_bytes_per_value() -> None:
    values = np.array([1, 0x01020304], dtype=np.uint32)
    assert kernels.pack_bits(values, 32).tobytes() == bytes([1, 0, 0, 0, 4, 3, 2, 1])


def test_pack_bits_at_3_bits_fills_the_bit_stream_lsb_first() -> None:
    values = np.array([0b101, 0b011, 0b111], dtype=np.uint32)  # stream 101 110 111 -> bytes
    assert kernels.pack_bits(values, 3).tolist() == [0b11011101, 0b1]


@pytest.mark.parametrize("bits", [3, 8, 16, 31])
def test_pack_bits_refuses_a_value_that_does_not_fit(bits: int) -> None:
    values = np.array([0, 1 << bits], dtype=np.uint32)
    with pytest.raises(ConfigError):
        kernels.pack_bits(values, bits)
    with pytest.raises(ConfigError):
        reference.pack_bits(values, bits)


@pytest.mark.parametrize("bits", [0, 33, True])
def test_pack_bits_refuses_a_bad_width(bits: int) -> None:
    with pytest.raises(ConfigError):
        kernels.pack_bits(np.zeros(3, dtype=np.uint32), bits)


@pytest.mark.parametrize("bits", [3, 8, 32])
def test_unpack_bits_refuses_a_buffer_of_the_wrong_size(bits: int) -> None:
    packed = kernels.pack_bits(np.ones(10, dtype=np.uint32), bits)
    for bad in (packed[:-1], np.concatenate([packed, np.zeros(1, dtype=np.uint8)])):
        with pytest.raises(MalformedMessage):
            kernels.unpack_bits(bad, bits, 10)
        with pytest.raises(MalformedMessage):
            reference.unpack_bits(bad, bits, 10)


def test_unpack_bits_refuses_nonzero_padding() -> None:
    packed = kernels.pack_bits(np.ones(3, dtype=np.uint32), 3)  # 9 bits -> 7 padding bits
    packed[-1] |= 0x80
    with pytest.raises(MalformedMessage):
        kernels.unpack_bits(packed, 3, 3)
    with pytest.raises(MalformedMessage):
        reference.unpack_bits(packed, 3, 3)


def test_import_secagg_does_not_import_numba() -> None:
    import subprocess
    import sys

    code = "import secagg, secagg.protocol, secagg.kernels, sys; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@given(
    data=hnp.arrays(np.float64, st.integers(0, 200), elements=st.floats(-10, 10, allow_nan=False)),
    bits=st.integers(8, 32),
    rng_seed=st.integers(0, 2**32 - 1),
)
def test_fixed_point_encode_equals_quantise_reduced(
    data: np.ndarray, bits: int, rng_seed: int
) -> None:
    from secagg.encoding import FixedPointEncoding

    enc = FixedPointEncoding.for_clients(clip=1.0, max_clients=3, bits=bits)
    uniforms = np.random.default_rng(rng_seed).random(data.size)
    expected = (enc.quantise(data, uniforms).astype(np.uint32) & enc.word_mask).astype(np.uint32)
    assert np.array_equal(enc.encode(data, uniforms), expected)
