"""The public parameters of one round, agreed by the server and every client before it starts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType

from secagg.crypto import IdentityPublicKey, transcript_digest
from secagg.encoding import MAX_BITS
from secagg.errors import ConfigError
from secagg.protocol.graph import NeighbourGraph
from secagg.protocol.partyset import RosterIndex

__all__ = ["RoundConfig", "roster_fingerprint"]


def roster_fingerprint(roster: Mapping[int, IdentityPublicKey]) -> bytes:
    """A hash of the length-prefixed (party, identity key) pairs in party order.

    Independent of any round: it is what a site pins out of band, and it alone seeds the SecAgg+
    neighbour graph, so the aggregator cannot pick among graphs with its per-round choices.
    """
    parts: list[bytes | int] = []
    for party in sorted(roster):
        parts += [party, roster[party].to_bytes()]
    return transcript_digest("roster-fingerprint", len(roster), *parts)


@dataclass(frozen=True)
class RoundConfig:
    """Everything public about one round.

    ``roster`` maps party id (a positive int, also the party's Shamir x-coordinate) to its long-term
    Ed25519 identity key. ``degree`` is the SecAgg+ neighbour-graph degree; ``None`` means the
    full graph of the original SecAgg. ``threshold`` is t: the number of shares that reconstruct a
    secret, and the fewest parties that must remain at every stage. ``context_digest`` binds the
    round to whatever else the parties must agree on (model weights, training config): clients
    with different digests can never be summed together.
    """

    round_id: int
    roster: Mapping[int, IdentityPublicKey]
    threshold: int
    vector_length: int
    bits: int = 32
    degree: int | None = None
    context_digest: bytes = b""

    def __post_init__(self) -> None:
        roster = MappingProxyType(dict(sorted(self.roster.items())))
        object.__setattr__(self, "roster", roster)
        n = len(roster)
        if not 0 <= self.round_id < 2**63:
            raise ConfigError(f"round_id must be in [0, 2^63), got {self.round_id}")
        if n < 2:
            raise ConfigError(f"a round needs at least 2 parties, the roster has {n}")
        if any(not (isinstance(p, int) and 1 <= p < 2**31 - 1) for p in roster):
            raise ConfigError("party ids must be ints in [1, 2^31 - 2] (they are Shamir x-values)")
        if not 2 <= self.bits <= MAX_BITS:
            raise ConfigError(f"bits must be in [2, {MAX_BITS}], got {self.bits}")
        if self.vector_length < 1:
            raise ConfigError(f"vector_length must be >= 1, got {self.vector_length}")
        neighbourhood = n if self.degree is None else min(self.degree, n - 1) + 1
        if not 2 <= self.threshold <= neighbourhood:
            raise ConfigError(
                f"threshold must be in [2, {neighbourhood}] (the size of a neighbourhood including "
                f"the party itself), got {self.threshold}"
            )
        # Any t in range is a valid *offer*: whether it is safe is for each site to decide from
        # its own assumptions (secagg.protocol.policy.SitePolicy), not for the aggregator.
        if self.degree is not None and not self.degree >= 2:
            raise ConfigError(f"degree must be >= 2, got {self.degree}")
        _ = self.graph  # validate the graph parameters now, not mid-round

    @property
    def parties(self) -> tuple[int, ...]:
        return tuple(self.roster)

    @property
    def modulus_mask(self) -> int:
        return (1 << self.bits) - 1

    @cached_property
    def roster_fingerprint(self) -> bytes:
        """:func:`roster_fingerprint` of this round's roster."""
        return roster_fingerprint(self.roster)

    @cached_property
    def roster_digest(self) -> bytes:
        """A hash of the round id, the context digest and the length-prefixed roster."""
        roster_parts: list[bytes | int] = []
        for party, key in self.roster.items():
            roster_parts += [party, key.to_bytes()]
        return transcript_digest("roster", self.round_id, self.context_digest, *roster_parts)

    @cached_property
    def digest(self) -> bytes:
        """A hash of every public parameter; signed into every client message."""
        return transcript_digest(
            "round-config",
            self.round_id,
            self.threshold,
            self.vector_length,
            self.bits,
            0 if self.degree is None else self.degree,
            self.roster_digest,
        )

    @cached_property
    def graph(self) -> NeighbourGraph:
        n = len(self.roster)
        if self.degree is None or self.degree >= n - 1:
            return NeighbourGraph.full(self.parties)
        # Fixed by the roster alone: the round id, context and forwarded advertisements (all the
        # aggregator's choices) cannot change it, so there is nothing to grind (SECURITY.md).
        seed = transcript_digest("neighbour-graph-seed", self.roster_fingerprint)
        return NeighbourGraph.harary(self.parties, self.degree, seed)

    @cached_property
    def roster_index(self) -> RosterIndex:
        """Bit positions of the roster parties, for party-set bitmaps."""
        return RosterIndex(self.parties)

    def holders(self, party: int) -> frozenset[int]:
        """The parties that hold shares of ``party``'s secrets: its neighbours and itself."""
        cache = self._holders_cache
        found = cache.get(party)
        if found is None:
            found = cache[party] = self.graph.neighbours(party) | {party}
        return found

    @cached_property
    def _holders_cache(self) -> dict[int, frozenset[int]]:
        return {}
