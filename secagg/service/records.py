"""What the aggregator keeps about every finished round: the privacy report and the audit record.

:class:`RoundBooks` owns the aggregator's audit ledger (``DATA_DIR/audit.db``, an
:class:`~secagg.audit.AuditLedger` in its own SQLite file, so the ledger can be handed to an
auditor without the results) and the site-level privacy accountant. For each round that ends
(completed or aborted) the coordinator asks it for

* the round's :class:`~secagg.accounting.PrivacyReport` (completed rounds): participants (the
  parties whose inputs are in the sum), dropouts (parties that advertised keys but whose input is
  not in the sum), the site-level distributed-DP statement when ``[distributed_dp]`` is configured
  (accounted with an :class:`~secagg.accounting.RdpAccountant` for the exact number of survivors),
  and the record-level statements the survivors signed;
* the signed, hash-chained :class:`~secagg.audit.RoundRecord` carrying that report.

Durability order (the result is released only after both): the round's outcome, its privacy
report, the accountant state *after* the round and the audit record are committed in one
transaction of the round store; then the record is appended to the ledger. A crash between the
two is repaired at the next start (:meth:`RoundBooks.recover`): every stored audit record missing
from the ledger is appended, in order. The accountant is reloaded from the latest stored state, so
a restarted aggregator continues the privacy ledger where it stopped.
"""

from __future__ import annotations

import json
import logging
import pathlib
import sqlite3
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from secagg.accounting.accountant import RdpAccountant
from secagg.accounting.report import (
    PRIVACY_REPORT_SCHEMA_VERSION,
    PrivacyReport,
    SiteRecordLevelDP,
)
from secagg.audit import AuditLedger, RoundRecord, build_record
from secagg.audit.record import GENESIS_HASH
from secagg.crypto import IdentityKey
from secagg.dp.distributed import (
    DistributedDPConfig,
    DistributedDPParams,
    derive_params,
    site_level_statement,
)
from secagg.protocol import ServerSession, Stage
from secagg.service.logs import log_event
from secagg.store import RoundStore
from secagg.store.faults import inject

__all__ = [
    "ACCOUNTANT_KIND",
    "AUDIT_KIND",
    "LEDGER_FILE",
    "PUBLIC_KEY_FILE",
    "REPORT_KIND",
    "STATEMENT_KIND",
    "RoundBooks",
]

LEDGER_FILE = "audit.db"
PUBLIC_KEY_FILE = "aggregator.pub"
AUDIT_KIND = "audit_record"
REPORT_KIND = "privacy_report"
ACCOUNTANT_KIND = "privacy_accountant"
STATEMENT_KIND = "record_level_statement"


class RoundBooks:
    """The audit ledger and the site-level privacy ledger of one aggregator (thread-safe)."""

    def __init__(
        self,
        store: RoundStore,
        *,
        aggregator_key: IdentityKey,
        distributed_dp: DistributedDPConfig | None,
        site_name: Callable[[int], str],
        logger: logging.Logger,
    ) -> None:
        self.store = store
        self._key = aggregator_key
        self._site_name = site_name
        self._log = logger
        self._lock = threading.Lock()
        data_dir = pathlib.Path(store.data_dir)
        public_hex = aggregator_key.public_key.to_bytes().hex()
        pub_file = data_dir / PUBLIC_KEY_FILE
        if not pub_file.is_file() or pub_file.read_text().strip() != public_hex:
            pub_file.write_text(public_hex + "\n")
        # Raises AuditError if the ledger belongs to another aggregator key.
        self.ledger = AuditLedger(data_dir / LEDGER_FILE, aggregator_key=aggregator_key.public_key)
        self.dp_params: DistributedDPParams | None = (
            None if distributed_dp is None else derive_params(distributed_dp)
        )
        self.accountant = RdpAccountant()
        latest = store.latest_record(ACCOUNTANT_KIND)
        if latest is not None:
            self.accountant.load_state_dict(latest.record["state"])
            log_event(
                logger,
                "privacy_ledger_loaded",
                after_round=latest.round_id,
                steps=len(self.accountant.history),
            )
        self.recover()

    # --- restart ---------------------------------------------------------------------------

    def recover(self, expected: int = 0) -> int:
        """Append to the ledger every stored audit record it lacks (a crash, or a disk error,
        between the store's commit and the ledger's); return how many. ``expected`` of them
        are the round just committed, not a recovery."""
        sequence, _ = self.ledger.next_link()
        appended = 0
        for stored in self.store.records_of_kind(AUDIT_KIND):
            record = RoundRecord.from_json(stored.record_json)
            if record.sequence >= sequence:
                self.ledger.append(record)
                sequence += 1
                appended += 1
        if appended > expected:
            log_event(
                self._log, "audit_records_recovered", logging.WARNING, records=appended - expected
            )
        return appended

    # --- one round -------------------------------------------------------------------------

    def prospective_site_epsilon(self, fewest_survivors: int) -> float | None:
        """The cumulative site-level epsilon after one more round with the fewest survivors
        the round may complete with (the most each site's noise share can cost), or None
        without site-level DP."""
        if self.dp_params is None:
            return None
        with self._lock:
            before = self.accountant
        statement, _ = site_level_statement(self.dp_params, before, survivors=fewest_survivors)
        return statement.epsilon_cumulative

    def privacy_report(
        self,
        session: ServerSession,
        statements: Mapping[int, SiteRecordLevelDP],
    ) -> tuple[PrivacyReport, RdpAccountant | None]:
        """The report of a released round and the accountant after it (None without DP).

        Released means the aggregator could rebuild the sum: a completed round, or one that
        aborted at unmask after enough shares arrived (it is accounted all the same)."""
        survivors = tuple(session.transcript().survivors)
        advertised = session.participants(Stage.ADVERTISE_KEYS)
        statement = None
        after: RdpAccountant | None = None
        if self.dp_params is not None:
            with self._lock:
                before = self.accountant
            statement, after = site_level_statement(
                self.dp_params, before, survivors=len(survivors)
            )
        report = PrivacyReport(
            schema_version=PRIVACY_REPORT_SCHEMA_VERSION,
            round_id=session.config.round_id,
            protection_mode="mask",
            participants=tuple(self._site_name(p) for p in survivors),
            dropouts=tuple(self._site_name(p) for p in sorted(set(advertised) - set(survivors))),
            site_level=statement,
            record_level=tuple(
                sorted((statements[p] for p in survivors if p in statements), key=lambda s: s.site)
            ),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        return report, after

    def audit_record(self, session: ServerSession, report: PrivacyReport | None) -> RoundRecord:
        """The signed record of a finished round, placed after the store's last record (the
        store is the authority: the ledger file may be behind after a disk error)."""
        latest = self.store.latest_record(AUDIT_KIND)
        if latest is None:
            sequence, prev = 0, GENESIS_HASH
        else:
            last = RoundRecord.from_json(latest.record_json)
            sequence, prev = last.sequence + 1, last.record_hash()
        return build_record(
            session,
            aggregator_key=self._key,
            sequence=sequence,
            prev_hash=prev,
            privacy_report=report,
        )

    @staticmethod
    def stored_records(
        report: PrivacyReport | None,
        record: RoundRecord,
        accountant: RdpAccountant | None,
        statements: Mapping[int, Mapping[str, Any]],
    ) -> list[tuple[str, Mapping[str, Any]]]:
        """The round_records rows committed with the round's outcome."""
        rows: list[tuple[str, Mapping[str, Any]]] = [
            (STATEMENT_KIND, statements[p]) for p in sorted(statements)
        ]
        if report is not None:
            rows.append((REPORT_KIND, report.to_dict()))
        if accountant is not None:
            rows.append(
                (ACCOUNTANT_KIND, {"round_id": record.round_id, "state": accountant.state_dict()})
            )
        rows.append((AUDIT_KIND, record.to_dict()))
        return rows

    def commit(self, record: RoundRecord, accountant: RdpAccountant | None) -> None:
        """After the store committed the round: append its record (and any the ledger missed),
        adopt the new accountant.

        A ledger that cannot be written right now is caught up from the store at the next
        commit or start; the round's outcome is already durable in the store."""
        if accountant is not None:
            with self._lock:
                self.accountant = accountant
        try:
            inject("ledger_append", record.round_id)
            self.recover(expected=1)
        except (OSError, sqlite3.Error) as exc:
            log_event(
                self._log,
                "audit_ledger_behind",
                logging.ERROR,
                round=record.round_id,
                error=str(exc),
            )
            return
        log_event(
            self._log,
            "audit_record_appended",
            round=record.round_id,
            sequence=record.sequence,
            outcome=record.outcome,
        )

    def close(self) -> None:
        self.ledger.close()


def stored_json(store: RoundStore, round_id: int, kind: str) -> str:
    """The last record of ``kind`` of a round as JSON text ("" if none)."""
    rows = store.records(round_id, kind)
    if not rows:
        return ""
    if kind == REPORT_KIND:
        return PrivacyReport.from_dict(rows[-1].record).to_json()
    return json.dumps(rows[-1].record, sort_keys=True, separators=(",", ":"))
