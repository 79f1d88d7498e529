"""Plain-numpy reference kernels (the definition of what the compiled kernels must compute).

Every public kernel of :mod:`secagg.kernels` has a twin here with the same signature; the tests in
``tests/kernels`` check that the two agree on arbitrary inputs. These are written for clarity, not
speed (``pack_bits`` expands every value into ``bits`` bytes, for instance).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from secagg.crypto.prg import fill_mask
from secagg.errors import ConfigError, MalformedMessage

__all__ = [
    "CHUNK_WORDS",
    "accumulate",
    "add_masks",
    "add_mod",
    "combine_rows",
    "pack_bits",
    "packed_size",
    "stochastic_round",
    "sub_mod",
    "unpack_bits",
]

CHUNK_WORDS = 1 << 14  # 64 KiB of uint32: mask chunk and accumulator slice both stay in L2

_U32 = npt.NDArray[np.uint32]


def add_masks(
    vector: _U32,
    add_seeds: Sequence[bytes],
    subtract_seeds: Sequence[bytes],
    *,
    start_word: int = 0,
    chunk_words: int = CHUNK_WORDS,
) -> None:
    """In place, mod 2^32: vector += sum(PRG(s) for add_seeds) - sum(PRG(s) for subtract_seeds).

    Word i of ``vector`` receives word ``start_word + i`` of each mask stream. Masks are expanded
    one cache-sized chunk at a time into one scratch buffer, so no full-length temporary exists.
    """
    m = len(vector)
    if m == 0 or not (add_seeds or subtract_seeds):
        return
    scratch = np.empty(min(chunk_words, m), dtype=np.uint32)
    for lo in range(0, m, chunk_words):
        hi = min(lo + chunk_words, m)
        view = vector[lo:hi]
        mask = scratch[: hi - lo]
        for seed in add_seeds:
            fill_mask(seed, mask, start_word + lo)
            np.add(view, mask, out=view)
        for seed in subtract_seeds:
            fill_mask(seed, mask, start_word + lo)
            np.subtract(view, mask, out=view)


def stochastic_round(
    values: npt.NDArray[np.float64],
    uniforms: npt.NDArray[np.float64],
    clip: float,
    scale: float,
    word_mask: int,
) -> _U32:
    """Clip to [-clip, clip], scale, round stochastically, reduce mod 2^b (two's complement).

    ``q = floor(v) + (u < v - floor(v))`` with ``v = clip(x) * scale``; returns ``q & word_mask``
    as uint32. Inputs must be finite (the caller checks).
    """
    v = np.clip(values, -clip, clip) * scale
    low = np.floor(v)
    q = (low + (uniforms < (v - low))).astype(np.int64)
    return (q.astype(np.uint32) & np.uint32(word_mask)).astype(np.uint32, copy=False)


def add_mod(target: _U32, values: _U32, word_mask: int) -> None:
    """In place: ``target = (target + values) & word_mask`` (addition in Z_(2^b))."""
    np.add(target, values, out=target)
    np.bitwise_and(target, np.uint32(word_mask), out=target)


def sub_mod(target: _U32, values: _U32, word_mask: int) -> None:
    """In place: ``target = (target - values) & word_mask`` (subtraction in Z_(2^b))."""
    np.subtract(target, values, out=target)
    np.bitwise_and(target, np.uint32(word_mask), out=target)


def accumulate(acc: _U32, vector: _U32) -> None:
    """The server's accumulate step: ``acc += vector`` mod 2^32 (reduced to 2^b at the end)."""
    np.add(acc, vector, out=acc)


def combine_rows(target: _U32, rows: _U32, n_add: int) -> None:
    """In place, mod 2^32: ``target += sum(rows[:n_add]) - sum(rows[n_add:])`` (rows: 2-D)."""
    for r in range(rows.shape[0]):
        if r < n_add:
            np.add(target, rows[r], out=target)
        else:
            np.subtract(target, rows[r], out=target)


def packed_size(length: int, bits: int) -> int:
    """Bytes taken by ``length`` values of ``bits`` bits each: ``ceil(length * bits / 8)``."""
    return (length * bits + 7) // 8


def check_bits(bits: int) -> None:
    """Raise ConfigError unless ``bits`` is an int in [1, 32] (shared by both kernel flavours)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 32:
        raise ConfigError(f"bits must be an int in [1, 32], got {bits!r}")


def checked_packed_buffer(
    buf: npt.NDArray[np.uint8] | bytes, bits: int, length: int
) -> npt.NDArray[np.uint8]:
    """The packed bytes of ``length`` b-bit values as a uint8 array, after every size check."""
    check_bits(bits)
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ConfigError(f"length must be an int >= 0, got {length!r}")
    raw = np.frombuffer(buf, dtype=np.uint8) if isinstance(buf, bytes) else np.asarray(buf)
    if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size != packed_size(length, bits):
        raise MalformedMessage(
            f"a packed vector of {length} {bits}-bit values is {packed_size(length, bits)} bytes"
        )
    return raw


def pack_bits(values: _U32, bits: int) -> npt.NDArray[np.uint8]:
    """Pack b-bit values into bytes: value i fills bits ``[i*b, (i+1)*b)`` of the little-endian
    bit stream (least significant bit first); the last byte is padded with zero bits.

    Raises:
        ConfigError: ``bits`` not in [1, 32]; a value >= 2^bits.
    """
    check_bits(bits)
    v = np.asarray(values, dtype=np.uint32).ravel()
    if v.size and int(v.max()) >> bits:
        raise ConfigError(f"a value does not fit in {bits} bits")
    shifts = np.arange(bits, dtype=np.uint32)
    stream = ((v[:, None] >> shifts) & np.uint32(1)).astype(np.uint8).ravel()
    return np.packbits(stream, bitorder="little")


def unpack_bits(buf: npt.NDArray[np.uint8] | bytes, bits: int, length: int) -> _U32:
    """Inverse of :func:`pack_bits`.

    Raises:
        ConfigError: ``bits`` not in [1, 32] or a negative ``length``.
        MalformedMessage: the buffer is not exactly ``packed_size(length, bits)`` bytes, or its
            padding bits are not zero (every vector has exactly one encoding).
    """
    raw = checked_packed_buffer(buf, bits, length)
    stream = np.unpackbits(raw, bitorder="little")
    if stream[length * bits :].any():
        raise MalformedMessage("the padding bits of a packed vector are not zero")
    digits = stream[: length * bits].reshape(length, bits).astype(np.uint32)
    weights = np.uint32(1) << np.arange(bits, dtype=np.uint32)
    values: npt.NDArray[np.uint32] = (
        (digits * weights).sum(axis=1, dtype=np.uint64).astype(np.uint32)
    )
    return values
