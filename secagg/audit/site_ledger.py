"""A site's own signed, hash-chained ledger on disk: the other side of the audit.

Every event a :class:`~secagg.protocol.ClientSession` records (:mod:`secagg.protocol.ledger`) is one
line of JSON Lines, written and ``fsync``-ed before the message it describes leaves the site::

    {"event": {...}, "prev": "<hex>", "schema": "secagg.site-ledger/1", "seq": 0,
     "signature": "<hex>", "site": "<hex Ed25519 key>"}

``signature`` is the site's identity signature over the digest of every other field; ``prev`` is
the hash of the previous line (:data:`~secagg.audit.record.GENESIS_HASH` for the first). So the
aggregator cannot write a site's ledger, and the site cannot rewrite its past without breaking
the chain. ``secagg audit verify`` reads these files beside the aggregator's records.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from secagg.audit.record import GENESIS_HASH, AuditError, canonical_json
from secagg.crypto import (
    PROTOCOL_VERSION,
    IdentityKey,
    IdentityPublicKey,
    lp_encode,
    transcript_digest,
)
from secagg.errors import ConfigError, InvalidSignature
from secagg.protocol.ledger import RoundAccepted, SiteEvent, event_from_dict

__all__ = ["SITE_LEDGER_SCHEMA", "SiteLedgerFile", "SiteLedgerReport", "read_site_ledger"]

SITE_LEDGER_SCHEMA: Final = "secagg.site-ledger/1"
_CONTEXT: Final = lp_encode(PROTOCOL_VERSION, "audit", "site-ledger", SITE_LEDGER_SCHEMA)
_MAX_LINE: Final = 1 << 20


def _body_digest(body: dict[str, Any]) -> bytes:
    return transcript_digest("site-ledger-entry", SITE_LEDGER_SCHEMA, canonical_json(body))


def _line_hash(line: str) -> bytes:
    return transcript_digest("site-ledger-hash", SITE_LEDGER_SCHEMA, line)


@dataclass
class SiteLedgerReport:
    """What :func:`read_site_ledger` found: the events, the signing site, every problem."""

    path: Path
    events: list[SiteEvent] = field(default_factory=list)
    site_key: IdentityPublicKey | None = None
    problems: list[str] = field(default_factory=list)
    head: bytes = GENESIS_HASH

    @property
    def ok(self) -> bool:
        return not self.problems


def _lines(path: Path) -> Iterator[str]:
    with path.open("r", encoding="ascii", errors="replace") as f:
        for line in f:
            if len(line) > _MAX_LINE:
                raise AuditError(f"{path}: a ledger line is longer than {_MAX_LINE} bytes")
            if line.strip():
                yield line.rstrip("\n")


def read_site_ledger(
    path: str | os.PathLike[str], *, site_key: IdentityPublicKey | None = None
) -> SiteLedgerReport:
    """Read and verify a site ledger: canonical lines, sequence, chain, one signing site."""
    report = SiteLedgerReport(Path(path), site_key=site_key)
    prev = GENESIS_HASH
    for index, line in enumerate(_lines(report.path)):
        where = f"{report.path.name} line {index + 1}"
        try:
            d = json.loads(line)
            if not isinstance(d, dict) or set(d) != {
                "event",
                "prev",
                "schema",
                "seq",
                "signature",
                "site",
            }:
                raise ValueError("unexpected fields")
            if d["schema"] != SITE_LEDGER_SCHEMA:
                raise ValueError(f"unknown schema {d['schema']!r}")
            if canonical_json(d) != line:
                raise ValueError("not in canonical form (its bytes were altered)")
            event = event_from_dict(d["event"])
            key = IdentityPublicKey.from_bytes(bytes.fromhex(d["site"]))
            signature = bytes.fromhex(d["signature"])
        except (ValueError, TypeError, KeyError, ConfigError) as exc:
            report.problems.append(f"{where}: malformed: {exc}")
            prev = b""
            continue
        if d["seq"] != index:
            report.problems.append(f"{where}: sequence {d['seq']}, expected {index}")
        if prev and d["prev"] != prev.hex():
            report.problems.append(f"{where}: the chain is broken (an entry removed or changed)")
        if report.site_key is None:
            report.site_key = key
        if key != report.site_key:
            report.problems.append(f"{where}: signed by another site key")
        body = {k: v for k, v in d.items() if k != "signature"}
        try:
            report.site_key.verify(signature, _CONTEXT, _body_digest(body))
        except InvalidSignature:
            report.problems.append(f"{where}: the site's signature does not verify")
        report.events.append(event)
        prev = _line_hash(line)
    report.head = prev if report.events else GENESIS_HASH
    return report


class SiteLedgerFile:
    """A :class:`~secagg.protocol.SiteLedger` in a signed, hash-chained JSON Lines file.

    Opening verifies the whole file (a ledger that does not verify is refused: the site must not
    decide on round ids from a history it cannot trust). Appends take an exclusive ``flock`` and
    are fsync-ed before returning; one file may be shared by the threads and processes of a site.
    """

    def __init__(self, path: str | os.PathLike[str], identity: IdentityKey) -> None:
        self.path = Path(path)
        self._identity = identity
        self._lock = threading.Lock()
        self._size = -1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(mode=0o600, exist_ok=True)
        self._reload()

    def _reload(self) -> None:
        size = self.path.stat().st_size
        if size == self._size:
            return  # nothing appended since the last read (lines are only ever appended)
        report = read_site_ledger(self.path, site_key=self._identity.public_key)
        if not report.ok:
            raise AuditError(
                f"the site ledger {self.path} does not verify: {report.problems[0]}"
                + (f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else "")
            )
        self._events = report.events
        self._head = report.head
        self._size = size

    @property
    def events(self) -> Sequence[SiteEvent]:
        return tuple(self._events)

    def accepted(self, scope: bytes) -> Sequence[RoundAccepted]:
        with self._lock:
            self._reload()  # another process of this site may have appended
            return [e for e in self._events if isinstance(e, RoundAccepted) and e.scope == scope]

    def append(self, event: SiteEvent) -> None:
        with self._lock, self.path.open("a+", encoding="ascii") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                self._reload()
                body = {
                    "event": event.to_dict(),
                    "prev": self._head.hex(),
                    "schema": SITE_LEDGER_SCHEMA,
                    "seq": len(self._events),
                    "site": self._identity.public_key.to_bytes().hex(),
                }
                signature = self._identity.sign(_CONTEXT, _body_digest(body))
                line = canonical_json({**body, "signature": signature.hex()})
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
            self._events.append(event)
            self._head = _line_hash(line)
            self._size = self.path.stat().st_size

    def __repr__(self) -> str:
        return f"SiteLedgerFile({str(self.path)!r}, {len(self._events)} events)"
