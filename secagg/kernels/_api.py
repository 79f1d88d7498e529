"""Checked entry points of the element-wise kernels; numba is loaded on the first call."""

from __future__ import annotations

import functools
from types import ModuleType

import numpy as np
import numpy.typing as npt

from secagg.errors import ConfigError, MalformedMessage
from secagg.kernels.reference import check_bits, checked_packed_buffer, packed_size

__all__ = [
    "accumulate",
    "add_mod",
    "combine_rows",
    "jit",
    "pack_bits",
    "packed_size",
    "stochastic_round",
    "sub_mod",
    "unpack_bits",
]

_U32 = npt.NDArray[np.uint32]


@functools.cache
def jit() -> ModuleType:
    """The compiled kernels (imports numba the first time)."""
    from secagg.kernels import _jit

    return _jit


def _vector(name: str, a: object, dtype: type[np.generic], *, writeable: bool = False) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != np.dtype(dtype) or a.ndim != 1:
        raise ConfigError(f"{name} must be a 1-D {np.dtype(dtype).name} numpy array")
    if writeable and not a.flags.writeable:
        raise ConfigError(f"{name} must be writeable")


def _same_length(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ConfigError(f"length mismatch: {a.shape} vs {b.shape}")


def _word_mask(word_mask: int) -> int:
    if isinstance(word_mask, bool) or not isinstance(word_mask, (int, np.integer)):
        raise ConfigError("word_mask must be an int")
    mask = int(word_mask)
    if mask < 1 or mask > 0xFFFFFFFF or mask & (mask + 1):
        raise ConfigError("word_mask must be 2^b - 1 for some b in [1, 32]")
    return mask


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
    _vector("values", values, np.float64)
    _vector("uniforms", uniforms, np.float64)
    _same_length(values, uniforms)
    out = np.empty(values.size, dtype=np.uint32)
    jit().stochastic_round_into(
        values, uniforms, float(clip), float(scale), _word_mask(word_mask), out
    )
    return out


def add_mod(target: _U32, values: _U32, word_mask: int) -> None:
    """In place: ``target = (target + values) & word_mask`` (addition in Z_(2^b))."""
    _vector("target", target, np.uint32, writeable=True)
    _vector("values", values, np.uint32)
    _same_length(target, values)
    jit().add_mod(target, values, _word_mask(word_mask))


def sub_mod(target: _U32, values: _U32, word_mask: int) -> None:
    """In place: ``target = (target - values) & word_mask`` (subtraction in Z_(2^b))."""
    _vector("target", target, np.uint32, writeable=True)
    _vector("values", values, np.uint32)
    _same_length(target, values)
    jit().sub_mod(target, values, _word_mask(word_mask))


def accumulate(acc: _U32, vector: _U32) -> None:
    """The server's accumulate step: ``acc += vector`` mod 2^32 (reduced to 2^b at the end)."""
    _vector("acc", acc, np.uint32, writeable=True)
    _vector("vector", vector, np.uint32)
    _same_length(acc, vector)
    jit().accumulate(acc, vector)


def combine_rows(target: _U32, rows: _U32, n_add: int) -> None:
    """In place, mod 2^32: ``target += sum(rows[:n_add]) - sum(rows[n_add:])`` (rows: 2-D)."""
    _vector("target", target, np.uint32, writeable=True)
    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint32 or rows.ndim != 2:
        raise ConfigError("rows must be a 2-D uint32 numpy array")
    if rows.shape[1] != target.size:
        raise ConfigError(f"rows have {rows.shape[1]} columns, target has {target.size} words")
    jit().combine_rows(target, rows, int(n_add))


def pack_bits(values: _U32, bits: int) -> npt.NDArray[np.uint8]:
    """Pack b-bit values into bytes: value i fills bits ``[i*b, (i+1)*b)`` of the little-endian
    bit stream (least significant bit first); the last byte is padded with zero bits.

    The result has :func:`packed_size` ``(len(values), bits)`` bytes (4 per value at b = 32).

    Raises:
        ConfigError: ``bits`` not in [1, 32]; ``values`` not a 1-D uint32 array; a value >= 2^b.
    """
    check_bits(bits)
    _vector("values", values, np.uint32)
    if bits in (8, 16, 32):
        if bits < 32 and values.size and int(values.max()) >> bits:
            raise ConfigError(f"a value does not fit in {bits} bits")
        return values.astype(f"<u{bits // 8}").view(np.uint8)
    out = np.zeros(packed_size(values.size, bits), dtype=np.uint8)
    seen = int(jit().pack_bits_into(values, bits, out))
    if seen >> bits:
        raise ConfigError(f"a value does not fit in {bits} bits")
    return out


def unpack_bits(buf: npt.NDArray[np.uint8] | bytes, bits: int, length: int) -> _U32:
    """Inverse of :func:`pack_bits`; returns a new uint32 array of ``length`` values.

    Raises:
        ConfigError: ``bits`` not in [1, 32] or a negative ``length``.
        MalformedMessage: the buffer is not exactly ``packed_size(length, bits)`` bytes, or its
            padding bits are not zero (every vector has exactly one encoding).
    """
    raw = checked_packed_buffer(buf, bits, length)
    if bits in (8, 16, 32):
        return np.ascontiguousarray(raw).view(f"<u{bits // 8}").astype(np.uint32)
    out = np.empty(length, dtype=np.uint32)
    if int(jit().unpack_bits_into(raw, bits, out)):
        raise MalformedMessage("the padding bits of a packed vector are not zero")
    return out
