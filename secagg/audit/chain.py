"""An in-memory record chain, and helpers that record a round as it ends."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

import numpy as np
import numpy.typing as npt

from secagg.accounting.report import PrivacyReport
from secagg.audit.record import GENESIS_HASH, AuditError, RoundRecord, build_record
from secagg.audit.verify import ChainReport, verify_chain
from secagg.crypto import IdentityKey, IdentityPublicKey
from secagg.errors import RoundAborted
from secagg.protocol import (
    AggregateResult,
    RoundConfig,
    ServerSession,
    SiteLedger,
    SitePolicy,
    Stage,
)
from secagg.simulate import run_round

__all__ = ["RecordChain", "RecordSink", "record_round", "run_recorded_round"]


class RecordSink(Protocol):
    """Where records go: a :class:`RecordChain` or an :class:`~secagg.audit.AuditLedger`."""

    def next_link(self) -> tuple[int, bytes]: ...

    def append(self, record: RoundRecord) -> bytes: ...


class RecordChain:
    """Records in memory, oldest first; :meth:`append` refuses anything that breaks the chain."""

    def __init__(self, records: list[RoundRecord] | None = None) -> None:
        self._records: list[RoundRecord] = []
        self._head = GENESIS_HASH
        for record in records or []:
            self.append(record)

    def next_link(self) -> tuple[int, bytes]:
        """``(sequence, prev_hash)`` for the next record."""
        return len(self._records), self._head

    def append(self, record: RoundRecord) -> bytes:
        """Append ``record`` if it extends the chain; return its hash.

        Raises:
            AuditError: its sequence or prev_hash does not continue the chain.
        """
        sequence, prev = self.next_link()
        if record.sequence != sequence or record.prev_hash != prev:
            link = "matches" if record.prev_hash == prev else "differs"
            raise AuditError(
                f"the record does not extend the chain (sequence {record.sequence}, "
                f"expected {sequence}; prev_hash {link})"
            )
        self._records.append(record)
        self._head = record.record_hash()
        return self._head

    def verify(self, aggregator_key: IdentityPublicKey | None = None) -> ChainReport:
        """Check every link and signature (see :func:`secagg.audit.verify_records`)."""
        return verify_chain(self._records, aggregator_key=aggregator_key)

    def to_jsonl(self) -> str:
        """The chain as JSON Lines text."""
        return "".join(r.to_json() + "\n" for r in self._records)

    @property
    def records(self) -> tuple[RoundRecord, ...]:
        return tuple(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[RoundRecord]:
        return iter(self._records)


def record_round(
    server: ServerSession,
    sink: RecordSink,
    *,
    aggregator_key: IdentityKey,
    privacy_report: PrivacyReport | None = None,
    created_at: str | None = None,
) -> RoundRecord:
    """Build the signed record of a finished round, append it to ``sink`` and return it.

    Call it before releasing the aggregate: with an :class:`~secagg.audit.AuditLedger` the record
    is on disk when this returns.
    """
    sequence, prev = sink.next_link()
    record = build_record(
        server,
        aggregator_key=aggregator_key,
        sequence=sequence,
        prev_hash=prev,
        privacy_report=privacy_report,
        created_at=created_at,
    )
    sink.append(record)
    return record


def run_recorded_round(
    config: RoundConfig,
    identities: Mapping[int, IdentityKey],
    encoded_inputs: Mapping[int, npt.NDArray[np.uint32]],
    sink: RecordSink,
    *,
    aggregator_key: IdentityKey,
    dropouts: Mapping[Stage, set[int] | frozenset[int]] | None = None,
    privacy_report: PrivacyReport | None = None,
    created_at: str | None = None,
    policy: SitePolicy | None = None,
    ledgers: Mapping[int, SiteLedger] | None = None,
    server: ServerSession | None = None,
) -> tuple[AggregateResult, RoundRecord]:
    """Like :func:`secagg.simulate.run_round`, and record the round (completed or aborted).

    An aborted round is recorded, then :class:`~secagg.errors.RoundAborted` is raised as usual.
    ``policy``: every simulated site's policy (default: the strict one, pinned to the roster);
    ``ledgers``: each site's ledger; ``server``: a fresh server session to drive (default: one).
    """
    server = server or ServerSession(config)
    try:
        result = run_round(
            config,
            identities,
            encoded_inputs,
            dropouts=dropouts,
            server=server,
            policy=policy,
            ledgers=ledgers,
        )
    except RoundAborted:
        record_round(
            server,
            sink,
            aggregator_key=aggregator_key,
            privacy_report=privacy_report,
            created_at=created_at,
        )
        raise
    record = record_round(
        server,
        sink,
        aggregator_key=aggregator_key,
        privacy_report=privacy_report,
        created_at=created_at,
    )
    return result, record
