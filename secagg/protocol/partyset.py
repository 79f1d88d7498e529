"""Sets of roster parties as bitmaps: the compact, canonical form that is hashed and signed.

Bit i (little-endian bit order within each byte) stands for the i-th party of the roster in
ascending order, so a set of n parties is ``ceil(n / 8)`` bytes whatever its size: 1.25 KB for
10,000 parties, against 40 KB as a list of uint32 ids. The encoding is canonical (padding bits
must be zero), so equal sets have equal bytes and one digest.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from secagg.errors import MalformedMessage

__all__ = ["RosterIndex"]


class RosterIndex:
    """Maps parties to bit positions for one roster (parties ascending)."""

    __slots__ = ("_index", "_parties")

    def __init__(self, parties: Sequence[int]) -> None:
        self._parties = np.asarray(parties, dtype=np.int64)
        self._index = {p: i for i, p in enumerate(parties)}

    @property
    def size(self) -> int:
        return len(self._parties)

    @property
    def byte_length(self) -> int:
        return (self.size + 7) // 8

    def encode(self, members: Iterable[int]) -> bytes:
        """The bitmap of ``members`` (each must be a roster party)."""
        bits = np.zeros(self.size, dtype=np.uint8)
        try:
            bits[[self._index[p] for p in members]] = 1
        except KeyError as exc:
            raise MalformedMessage(f"party {exc.args[0]} is not in the roster") from None
        return np.packbits(bits, bitorder="little").tobytes()

    def check(self, bitmap: bytes) -> None:
        """Raise MalformedMessage unless ``bitmap`` is a canonical bitmap of this roster."""
        if not isinstance(bitmap, bytes) or len(bitmap) != self.byte_length:
            raise MalformedMessage(f"a party set of this roster is {self.byte_length} bytes")
        spare = 8 * self.byte_length - self.size
        if spare and bitmap[-1] >> (8 - spare):
            raise MalformedMessage("a party bitmap sets bits beyond the roster")

    def decode(self, bitmap: bytes) -> frozenset[int]:
        """The members of a checked bitmap."""
        self.check(bitmap)
        bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")
        return frozenset(self._parties[np.flatnonzero(bits[: self.size])].tolist())

    def contains(self, bitmap: bytes, party: int) -> bool:
        """Whether ``party`` is in a checked bitmap (False for parties not in the roster)."""
        i = self._index.get(party)
        return i is not None and bool(bitmap[i >> 3] >> (i & 7) & 1)

    def count(self, bitmap: bytes) -> int:
        return int(np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8)).sum())
