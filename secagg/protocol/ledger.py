"""What a site remembers of the rounds it joined: the interface its session writes to.

A :class:`~secagg.protocol.ClientSession` appends one event to its site's :class:`SiteLedger`
*before* the message the event describes leaves the site (write-ahead): the round it accepted (and
the config digest and threshold it accepted), what it refused and why, the survivor set it signed,
whose shares it revealed, its complaints, and whether the announced outcome matched what it signed.
If the append fails, the session aborts and nothing is sent. The ledger also tells the session the
last round id it accepted in a scope, so round ids only ever increase.

The core holds no files: :class:`MemoryLedger` keeps events in memory (simulations, tests);
:class:`secagg.audit.SiteLedgerFile` keeps a signed, hash-chained JSON Lines file on disk and is
what ``secagg.client`` and ``clients/`` use. An auditor checks site ledgers against the
aggregator's records with ``secagg audit verify``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol

__all__ = [
    "MemoryLedger",
    "OutcomeChecked",
    "RoundAccepted",
    "RoundRefused",
    "ShareComplaint",
    "SharesRevealed",
    "SiteEvent",
    "SiteLedger",
    "SurvivorsSigned",
    "epsilon_spent",
    "event_from_dict",
    "last_round_id",
]


@dataclass(frozen=True)
class SiteEvent:
    """Base of the events a site records; ``kind`` names the event in its JSON form."""

    kind: ClassVar[str] = ""

    round_id: int
    party: int

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": self.kind}
        for key, value in asdict(self).items():
            d[key] = value.hex() if isinstance(value, bytes) else value
        return d


@dataclass(frozen=True)
class RoundAccepted(SiteEvent):
    """The site accepted a round and is about to advertise its keys."""

    kind: ClassVar[str] = "accepted"

    scope: bytes
    config_digest: bytes
    roster_fingerprint: bytes
    roster_size: int
    threshold: int
    degree: int  # 0 = full graph
    minimum_threshold: int
    policy: str  # the assumptions the minimum was computed from
    dp_epsilon: float  # the round's site-level epsilon for this site (0 without site-level DP)
    dp_delta: float


@dataclass(frozen=True)
class RoundRefused(SiteEvent):
    """The site refused a round before sending anything."""

    kind: ClassVar[str] = "refused"

    scope: bytes
    config_digest: bytes
    parameter: str
    offered: str
    required: str
    reason: str


@dataclass(frozen=True)
class ShareComplaint(SiteEvent):
    """A dealer's share entry could not be accepted; the complaint goes with the masked input."""

    kind: ClassVar[str] = "complaint"

    session_id: bytes
    dealer: int
    reason: str


@dataclass(frozen=True)
class SurvivorsSigned(SiteEvent):
    """The site signed this survivor set (roster bitmap) in the consistency check."""

    kind: ClassVar[str] = "signed_survivors"

    session_id: bytes
    survivors: bytes
    survivors_digest: bytes


@dataclass(frozen=True)
class SharesRevealed(SiteEvent):
    """The site revealed these shares to the aggregator (self-mask seed shares of survivors,
    mask-key shares of dropped parties)."""

    kind: ClassVar[str] = "revealed"

    session_id: bytes
    survivors_digest: bytes
    self_mask_owners: tuple[int, ...]
    mask_key_owners: tuple[int, ...]


@dataclass(frozen=True)
class OutcomeChecked(SiteEvent):
    """The aggregator announced the round's outcome; ``mismatch`` is empty when it agrees with
    what the site signed, and says what differs otherwise (an alarm)."""

    kind: ClassVar[str] = "outcome"

    survivors: tuple[int, ...]
    result_digest: bytes
    mismatch: str


_EVENTS: dict[str, type[SiteEvent]] = {
    cls.kind: cls
    for cls in (
        RoundAccepted,
        RoundRefused,
        ShareComplaint,
        SurvivorsSigned,
        SharesRevealed,
        OutcomeChecked,
    )
}


def event_from_dict(d: dict[str, Any]) -> SiteEvent:
    """Rebuild an event from :meth:`SiteEvent.to_dict` output (ValueError if it is not one)."""
    cls = _EVENTS.get(d.get("kind", ""))
    if cls is None:
        raise ValueError(f"unknown site event kind {d.get('kind')!r}")
    fields = {k: v for k, v in d.items() if k != "kind"}
    hints = {f.name: f for f in dataclasses.fields(cls)}
    if set(fields) != set(hints):
        raise ValueError(f"a {cls.kind} event has fields {sorted(hints)}, got {sorted(fields)}")
    for name, f in hints.items():
        if f.type == "bytes":
            fields[name] = bytes.fromhex(fields[name])
        elif f.type == "tuple[int, ...]":
            fields[name] = tuple(int(p) for p in fields[name])
        elif f.type == "float":
            fields[name] = float(fields[name])
    return cls(**fields)


class SiteLedger(Protocol):
    """Where a session records what its site did; durable before :meth:`append` returns."""

    def append(self, event: SiteEvent) -> None:
        """Record ``event``; raise (any exception) if it could not be recorded."""

    def accepted(self, scope: bytes) -> Sequence[RoundAccepted]:
        """The rounds accepted in ``scope``, oldest first."""


def last_round_id(ledger: SiteLedger, scope: bytes) -> int | None:
    """The highest round id the site accepted in ``scope`` (None if it never took part)."""
    return max((e.round_id for e in ledger.accepted(scope)), default=None)


def epsilon_spent(ledger: SiteLedger, scope: bytes) -> float:
    """The site-level epsilon of the rounds accepted in ``scope`` (their sum: basic composition)."""
    return sum(e.dp_epsilon for e in ledger.accepted(scope))


class MemoryLedger:
    """A :class:`SiteLedger` in memory: for simulations and tests (forgotten at exit)."""

    def __init__(self) -> None:
        self.events: list[SiteEvent] = []

    def append(self, event: SiteEvent) -> None:
        self.events.append(event)

    def accepted(self, scope: bytes) -> Sequence[RoundAccepted]:
        return [e for e in self.events if isinstance(e, RoundAccepted) and e.scope == scope]

    def of_kind(self, kind: type[SiteEvent]) -> list[SiteEvent]:
        return [e for e in self.events if isinstance(e, kind)]

    def __repr__(self) -> str:
        return f"MemoryLedger({len(self.events)} events)"
