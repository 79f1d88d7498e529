"""The Numba kernels. Imported lazily by :mod:`secagg.kernels` on the first call of a kernel.

This is the only module of secagg that imports numba. Every function is compiled on first use and
cached on disk (``cache=True``), and releases the GIL (``nogil=True``) so the mask loops can run
in several threads. These are raw loops with no argument checks: call them through the checked
wrappers in :mod:`secagg.kernels`.

Integer typing note: numba widens uint32 arithmetic to 64 bits; storing back into a uint32 array
truncates, which is exactly reduction mod 2^32. Mixed signed/unsigned 64-bit operands would be
promoted to float64, so every shift/mask below is kept in one signedness explicitly.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "accumulate",
    "add_mod",
    "combine_rows",
    "pack_bits_into",
    "stochastic_round_into",
    "sub_mod",
    "unpack_bits_into",
]

_jit = numba.njit(cache=True, nogil=True, boundscheck=False)


@_jit
def stochastic_round_into(values, uniforms, clip, scale, word_mask, out):  # type: ignore[no-untyped-def]
    mask = np.int64(word_mask)
    for i in range(values.size):
        x = min(max(values[i], -clip), clip)
        v = x * scale
        low = np.floor(v)
        q = np.int64(low)
        if uniforms[i] < v - low:
            q += 1
        out[i] = np.uint32(q & mask)


@_jit
def add_mod(target, values, word_mask):  # type: ignore[no-untyped-def]
    mask = np.uint32(word_mask)
    for i in range(target.size):
        target[i] = np.uint32(target[i] + values[i]) & mask


@_jit
def sub_mod(target, values, word_mask):  # type: ignore[no-untyped-def]
    mask = np.uint32(word_mask)
    for i in range(target.size):
        target[i] = np.uint32(target[i] - values[i]) & mask


@_jit
def accumulate(acc, vector):  # type: ignore[no-untyped-def]
    for i in range(acc.size):
        acc[i] += vector[i]


@_jit
def combine_rows(target, rows, n_add):  # type: ignore[no-untyped-def]
    n_rows, width = rows.shape
    for r in range(n_rows):
        if r < n_add:
            for j in range(width):
                target[j] += rows[r, j]
        else:
            for j in range(width):
                target[j] -= rows[r, j]


@_jit
def pack_bits_into(values, bits, out):  # type: ignore[no-untyped-def]
    """Pack into ``out`` (zeroed, packed size); return the OR of all values (range check)."""
    acc = np.uint64(0)
    seen = np.uint32(0)
    n_acc = 0
    pos = 0
    low_byte = np.uint64(0xFF)
    eight = np.uint64(8)
    for i in range(values.size):
        value = values[i]
        seen |= value
        acc |= np.uint64(value) << np.uint64(n_acc)
        n_acc += bits
        while n_acc >= 8:
            out[pos] = np.uint8(acc & low_byte)
            pos += 1
            acc >>= eight
            n_acc -= 8
    if n_acc > 0:
        out[pos] = np.uint8(acc & low_byte)
    return seen


@_jit
def unpack_bits_into(buf, bits, out):  # type: ignore[no-untyped-def]
    """Unpack ``out.size`` values; return the left-over padding bits (zero when canonical)."""
    acc = np.uint64(0)
    n_acc = 0
    pos = 0
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    shift = np.uint64(bits)
    for i in range(out.size):
        while n_acc < bits:
            acc |= np.uint64(buf[pos]) << np.uint64(n_acc)
            pos += 1
            n_acc += 8
        out[i] = np.uint32(acc & mask)
        acc >>= shift
        n_acc -= bits
    return acc
