"""The public neighbour graph of a SecAgg / SecAgg+ round.

In plain SecAgg (Bonawitz et al., CCS 2017) every client masks with, and secret-shares to, every
other client: the *full* graph, degree k = n - 1. SecAgg+ (Bell et al., CCS 2020) replaces it by a
sparse k-regular graph. Like Google's production implementation (federated-compute,
``fcp/secagg/server/secret_sharing_harary_graph.h``) we use a Harary graph H(k, n): the n parties
are placed on a ring in a pseudo-random order and each is joined to the k/2 nodes on either side.
The random order is what makes the graph secure (the adversary cannot choose which clients end up
next to each other); it must therefore come from randomness the server cannot bias, which is the
caller's job (the 32-byte ``seed`` is public, e.g. the output of a commit-reveal or a beacon).

The ring order is a Fisher–Yates shuffle of the parties sorted ascending, drawing each index from
``SHAKE-256(b"secagg/v1/neighbour-graph" || seed)`` as a big-endian 64-bit integer with rejection
sampling (no modulo bias). Same parties, degree and seed give the same graph on every machine.

Unlike Google's ``SecretSharingHararyGraph`` (which adds a self-edge and so has odd degree k + 1),
``neighbours(p)`` never contains ``p`` itself; ``degree`` is the even number of *other* parties.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

from secagg.errors import ConfigError

__all__ = ["GRAPH_DOMAIN", "SEED_BYTES", "NeighbourGraph"]

GRAPH_DOMAIN = b"secagg/v1/neighbour-graph"
SEED_BYTES = 32
_WORD = 8  # bytes per draw
_WORD_RANGE = 1 << (8 * _WORD)


class _ShakeStream:
    """Reads an unbounded SHAKE-256 output stream, 8 bytes at a time."""

    __slots__ = ("_buffer", "_offset", "_xof")

    def __init__(self, data: bytes, initial_words: int) -> None:
        self._xof = hashlib.shake_256(data)
        self._buffer = self._xof.digest(max(1, initial_words) * _WORD)
        self._offset = 0

    def next_word(self) -> int:
        if self._offset + _WORD > len(self._buffer):
            # An XOF output of length 2L starts with the output of length L, so growing the buffer
            # keeps every byte already read.
            self._buffer = self._xof.digest(2 * len(self._buffer))
        word = int.from_bytes(self._buffer[self._offset : self._offset + _WORD], "big")
        self._offset += _WORD
        return word

    def uniform_below(self, bound: int) -> int:
        """A uniform integer in [0, bound), by rejection sampling (no modulo bias)."""
        limit = _WORD_RANGE - (_WORD_RANGE % bound)
        while True:
            word = self.next_word()
            if word < limit:
                return word % bound


def _check_parties(parties: Iterable[int]) -> tuple[int, ...]:
    items = list(parties)
    for p in items:
        if isinstance(p, bool) or not isinstance(p, int):
            raise ConfigError(f"party ids must be ints, got {type(p).__name__}")
        if p <= 0:
            raise ConfigError(f"party ids must be positive, got {p}")
    canonical = tuple(sorted(items))
    if len(set(canonical)) != len(canonical):
        raise ConfigError("party ids must be distinct")
    if len(canonical) < 2:
        raise ConfigError(f"a neighbour graph needs at least 2 parties, got {len(canonical)}")
    return canonical


def _shuffle(parties: tuple[int, ...], seed: bytes) -> tuple[int, ...]:
    """Fisher–Yates shuffle of ``parties`` driven by SHAKE-256(domain || seed)."""
    ring = list(parties)
    stream = _ShakeStream(GRAPH_DOMAIN + seed, initial_words=len(ring))
    for i in range(len(ring) - 1, 0, -1):
        j = stream.uniform_below(i + 1)
        ring[i], ring[j] = ring[j], ring[i]
    return tuple(ring)


class NeighbourGraph:
    """An immutable, symmetric, k-regular graph over distinct positive party ids.

    Build one with :meth:`full` (plain SecAgg) or :meth:`harary` (SecAgg+).
    """

    __slots__ = ("_degree", "_members", "_parties", "_position", "_ring")

    _parties: tuple[int, ...]
    _degree: int
    _ring: tuple[int, ...] | None
    _position: dict[int, int]
    _members: frozenset[int]

    def __init__(self, *_: Any, **__: Any) -> None:
        raise TypeError("use NeighbourGraph.full(...) or NeighbourGraph.harary(...)")

    @classmethod
    def _make(
        cls, parties: tuple[int, ...], degree: int, ring: tuple[int, ...] | None
    ) -> NeighbourGraph:
        self = object.__new__(cls)
        object.__setattr__(self, "_parties", parties)
        object.__setattr__(self, "_degree", degree)
        object.__setattr__(self, "_ring", ring)
        object.__setattr__(self, "_members", frozenset(parties))
        position = {} if ring is None else {p: i for i, p in enumerate(ring)}
        object.__setattr__(self, "_position", position)
        return self

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def full(cls, parties: Iterable[int]) -> NeighbourGraph:
        """The complete graph: every party is a neighbour of every other (degree n - 1)."""
        canonical = _check_parties(parties)
        return cls._make(canonical, len(canonical) - 1, None)

    @classmethod
    def harary(cls, parties: Iterable[int], degree: int, seed: bytes) -> NeighbourGraph:
        """The Harary graph H(degree, n) over a seed-derived pseudo-random ring of ``parties``.

        ``degree`` must be an even int with 2 <= degree < n; degree == n - 1 gives the full graph.
        ``seed`` is 32 bytes of public randomness the server cannot bias.
        """
        canonical = _check_parties(parties)
        n = len(canonical)
        if isinstance(degree, bool) or not isinstance(degree, int):
            raise ConfigError(f"degree must be an int, got {type(degree).__name__}")
        if not isinstance(seed, (bytes, bytearray, memoryview)) or len(seed) != SEED_BYTES:
            raise ConfigError(f"seed must be {SEED_BYTES} bytes")
        if degree < 2 or degree >= n:
            raise ConfigError(f"degree must satisfy 2 <= degree < n = {n}, got {degree}")
        if degree == n - 1:
            return cls.full(canonical)
        if degree % 2:
            raise ConfigError(f"a Harary neighbour graph needs an even degree, got {degree}")
        return cls._make(canonical, degree, _shuffle(canonical, bytes(seed)))

    # -- queries ------------------------------------------------------------------------------

    @property
    def parties(self) -> tuple[int, ...]:
        """All parties, ascending."""
        return self._parties

    @property
    def degree(self) -> int:
        """Number of neighbours of every party (the party itself not counted)."""
        return self._degree

    @property
    def is_full(self) -> bool:
        """True when every party is a neighbour of every other."""
        return self._degree == len(self._parties) - 1

    def neighbours(self, party: int) -> frozenset[int]:
        """The parties ``party`` masks with and shares its secrets to (never ``party`` itself)."""
        if party not in self._members:
            raise ConfigError(f"party {party!r} is not in the graph")
        if self._ring is None:
            return self._members - {party}
        ring = self._ring
        n = len(ring)
        here = self._position[party]
        half = self._degree // 2
        return frozenset(ring[(here + step) % n] for step in range(-half, half + 1) if step != 0)

    def are_neighbours(self, u: int, v: int) -> bool:
        """True when ``u`` and ``v`` are distinct and adjacent (ConfigError for unknown parties)."""
        if u not in self._members or v not in self._members:
            raise ConfigError("both parties must be in the graph")
        if u == v:
            return False
        if self._ring is None:
            return True
        n = len(self._ring)
        gap = abs(self._position[u] - self._position[v])
        return min(gap, n - gap) <= self._degree // 2

    def __contains__(self, party: object) -> bool:
        return party in self._members

    def __len__(self) -> int:
        return len(self._parties)

    def __iter__(self) -> Iterator[int]:
        return iter(self._parties)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeighbourGraph):
            return NotImplemented
        return (self._parties, self._degree, self._ring) == (
            other._parties,
            other._degree,
            other._ring,
        )

    def __hash__(self) -> int:
        return hash((self._parties, self._degree, self._ring))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("NeighbourGraph is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("NeighbourGraph is immutable")

    def __repr__(self) -> str:
        kind = "full" if self._ring is None else "harary"
        return f"NeighbourGraph.{kind}(n={len(self._parties)}, degree={self._degree})"
