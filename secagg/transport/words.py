"""How masked vectors travel as bytes: the seam between the wire and the packing kernels.

``WORD_FORMAT_UINT32_LE`` (4 bytes per element) always works. ``WORD_FORMAT_PACKED_BITS`` packs
each element of Z_(2^b) in ``b`` bits with ``secagg.kernels.pack_bits`` / ``unpack_bits``; it is
offered only when the kernels provide them (until then every upload is uint32). Chunks hold a
multiple of 8 elements (except the last), so packed chunks always end on a byte boundary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.errors import MalformedMessage

__all__ = [
    "PACKED_BITS",
    "UINT32_LE",
    "available_formats",
    "chunk_bytes",
    "decode_words",
    "encode_words",
]

UINT32_LE = 1  # = WordFormat.WORD_FORMAT_UINT32_LE
PACKED_BITS = 2  # = WordFormat.WORD_FORMAT_PACKED_BITS

_pack: Callable[..., Any] | None
_unpack: Callable[..., Any] | None
try:  # provided by the kernels work; optional until it lands
    from secagg.kernels import pack_bits as _pack  # type: ignore[attr-defined,no-redef,unused-ignore]
    from secagg.kernels import unpack_bits as _unpack  # type: ignore[attr-defined,no-redef,unused-ignore]
except ImportError:  # pragma: no cover - depends on the kernels version
    _pack = _unpack = None


def available_formats(bits: int) -> tuple[int, ...]:
    """Formats this process can read and write, preferred first."""
    if _pack is not None and _unpack is not None and bits < 32:
        return (PACKED_BITS, UINT32_LE)
    return (UINT32_LE,)


def chunk_bytes(words: int, fmt: int, bits: int) -> int:
    """Exact byte size of a chunk of ``words`` elements."""
    if fmt == UINT32_LE:
        return 4 * words
    if fmt == PACKED_BITS:
        return math.ceil(words * bits / 8)
    raise MalformedMessage(f"unknown word format {fmt}")


def encode_words(words: npt.NDArray[np.uint32], fmt: int, bits: int) -> bytes:
    """Serialise a slice of a masked vector."""
    if fmt == UINT32_LE:
        return np.ascontiguousarray(words, dtype="<u4").tobytes()
    if fmt == PACKED_BITS and _pack is not None:
        return bytes(_pack(words, bits))
    raise MalformedMessage(f"word format {fmt} is not available")


def decode_words(data: bytes, fmt: int, bits: int, length: int) -> npt.NDArray[np.uint32]:
    """Parse ``length`` elements; the caller has already checked ``len(data)``."""
    if fmt == UINT32_LE:
        return np.frombuffer(data, dtype="<u4", count=length).astype(np.uint32, copy=False)
    if fmt == PACKED_BITS and _unpack is not None:
        return np.asarray(_unpack(data, bits, length), dtype=np.uint32)
    raise MalformedMessage(f"word format {fmt} is not available")
