"""Durable storage of round records in SQLite, and their JSON Lines form.

:class:`AuditLedger` keeps the chain in its own tables of a given database file
(``audit_round_records`` and ``audit_meta``); the aggregator calls :meth:`AuditLedger.append`
*before* it releases a round's result. Each append is one ``BEGIN IMMEDIATE`` transaction with
``PRAGMA synchronous=FULL``, so once ``append`` returns the record survives a crash or power loss,
and the link to the previous record is checked inside the same transaction (two aggregator threads
can never fork the chain). The aggregator's public key is stored in ``audit_meta`` on first use;
an auditor should still pin it out of band (``secagg audit verify --aggregator-key``).

JSON Lines: one canonical record per line, oldest first, ``\\n``-terminated.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from secagg.audit.record import (
    AUDIT_SIGNING_CONTEXT,
    GENESIS_HASH,
    MAX_RECORD_BYTES,
    AuditError,
    RecordFormatError,
    RoundRecord,
)
from secagg.crypto import IdentityPublicKey
from secagg.errors import InvalidSignature

__all__ = ["AuditLedger", "index_problems", "read_jsonl", "read_ledger", "write_jsonl"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_round_records (
    seq INTEGER PRIMARY KEY,
    round_id INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    record_hash BLOB NOT NULL UNIQUE,
    prev_hash BLOB NOT NULL,
    record_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
_KEY_META = "aggregator_public_key"


class AuditLedger:
    """An append-only, hash-chained record store in one SQLite file. Thread-safe."""

    def __init__(
        self, path: str | os.PathLike[str], *, aggregator_key: IdentityPublicKey | None = None
    ) -> None:
        """Open (or create) the ledger at ``path``.

        ``aggregator_key``: the public key whose signatures this ledger accepts. Stored on first
        use; a different key for an existing ledger raises :class:`AuditError`.
        """
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        stored = self._meta(_KEY_META)
        if aggregator_key is not None:
            if stored is None:
                with self._lock:
                    self._db.execute(
                        "INSERT INTO audit_meta (key, value) VALUES (?, ?)",
                        (_KEY_META, aggregator_key.to_bytes().hex()),
                    )
            elif stored != aggregator_key.to_bytes().hex():
                self._db.close()
                raise AuditError(
                    f"{self.path}: the ledger belongs to aggregator key {stored[:16]}..., "
                    f"not {aggregator_key.to_bytes().hex()[:16]}..."
                )

    # --- reading ----------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM audit_meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @property
    def aggregator_key(self) -> IdentityPublicKey | None:
        """The aggregator public key stored in the ledger's metadata (not pinned by itself)."""
        stored = self._meta(_KEY_META)
        if stored is None:
            return None
        try:
            return IdentityPublicKey.from_bytes(bytes.fromhex(stored))
        except ValueError as exc:
            raise AuditError(f"{self.path}: stored aggregator key is malformed") from exc

    def next_link(self) -> tuple[int, bytes]:
        """``(sequence, prev_hash)`` for the next record."""
        row = self._db.execute(
            "SELECT seq, record_hash FROM audit_round_records ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return (0, GENESIS_HASH) if row is None else (int(row[0]) + 1, bytes(row[1]))

    def raw_records(self) -> Iterator[str]:
        """The stored canonical texts, oldest first (what an auditor verifies)."""
        for (text,) in self._db.execute("SELECT record_json FROM audit_round_records ORDER BY seq"):
            yield str(text)

    def records(self) -> Iterator[RoundRecord]:
        """The parsed records, oldest first."""
        for text in self.raw_records():
            yield RoundRecord.from_json(text)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM audit_round_records").fetchone()[0])

    # --- writing ----------------------------------------------------------------------------

    def append(self, record: RoundRecord) -> bytes:
        """Durably append ``record`` and return its hash; refuse it if it does not extend the chain.

        Raises:
            AuditError: wrong sequence or prev_hash (a fork or a gap), or a record signed by a key
                other than the ledger's aggregator key, or with an invalid signature.
        """
        if not isinstance(record, RoundRecord):
            raise AuditError("append needs a RoundRecord")
        text = record.to_json()
        digest = record.record_hash()
        with self._lock:
            key = self.aggregator_key
            if key is None:
                raise AuditError(
                    f"{self.path}: no aggregator key is set; open the ledger with aggregator_key="
                )
            if record.aggregator_key != key.to_bytes():
                raise AuditError("the record is signed by another aggregator key than the ledger's")
            try:
                key.verify(record.signature, AUDIT_SIGNING_CONTEXT, record.signed_digest())
            except InvalidSignature:
                raise AuditError("the record's aggregator signature does not verify") from None
            self._db.execute("BEGIN IMMEDIATE")
            try:
                sequence, prev = self.next_link()
                if record.sequence != sequence or record.prev_hash != prev:
                    raise AuditError(
                        f"the record does not extend the chain: it has sequence "
                        f"{record.sequence}, the ledger expects {sequence} (prev_hash "
                        f"{'matches' if record.prev_hash == prev else 'differs'})"
                    )
                self._db.execute(
                    "INSERT INTO audit_round_records "
                    "(seq, round_id, outcome, record_hash, prev_hash, record_json) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (sequence, record.round_id, record.outcome, digest, record.prev_hash, text),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return digest

    def export_jsonl(self, path: str | os.PathLike[str]) -> int:
        """Write every record to ``path`` as JSON Lines; return the number written."""
        return write_jsonl(path, self.raw_records())

    def import_jsonl(self, path: str | os.PathLike[str]) -> int:
        """Append the records of a JSON Lines file (each must extend the chain)."""
        count = 0
        for text in read_jsonl(path):
            self.append(RoundRecord.from_json(text))
            count += 1
        return count

    # --- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> AuditLedger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditLedger({str(self.path)!r})"


def write_jsonl(path: str | os.PathLike[str], raw_records: Iterator[str] | list[str]) -> int:
    """Write canonical record texts one per line, then fsync; return how many were written."""
    count = 0
    tmp = Path(f"{os.fspath(path)}.tmp")
    with open(tmp, "w", encoding="ascii", newline="\n") as out:
        for text in raw_records:
            out.write(text + "\n")
            count += 1
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return count


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield the record texts of a JSON Lines file (lines bounded by MAX_RECORD_BYTES).

    Raises:
        RecordFormatError: a line is too long, not ASCII, or not newline-terminated.
    """
    with open(path, "rb") as f:
        number = 0
        while True:
            line = f.readline(MAX_RECORD_BYTES + 2)
            if not line:
                return
            number += 1
            if not line.endswith(b"\n"):
                raise RecordFormatError(
                    f"line {number}: too long or not newline-terminated "
                    f"(records are at most {MAX_RECORD_BYTES} bytes)"
                )
            try:
                yield line[:-1].decode("ascii")
            except UnicodeDecodeError:
                raise RecordFormatError(f"line {number}: not ASCII") from None


def read_ledger(path: str | os.PathLike[str]) -> tuple[list[str], IdentityPublicKey | None]:
    """Read a ledger file without modifying it: ``(record texts, stored aggregator key)``.

    Raises:
        AuditError: the file is not an SQLite database holding an audit ledger.
    """
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise AuditError(f"{path}: cannot open the ledger: {exc}") from exc
    try:
        texts = [
            str(t)
            for (t,) in db.execute("SELECT record_json FROM audit_round_records ORDER BY seq")
        ]
        row = db.execute("SELECT value FROM audit_meta WHERE key = ?", (_KEY_META,)).fetchone()
    except sqlite3.Error as exc:
        raise AuditError(f"{path}: not an audit ledger ({exc})") from exc
    finally:
        db.close()
    key = None
    if row is not None:
        try:
            key = IdentityPublicKey.from_bytes(bytes.fromhex(str(row[0])))
        except ValueError as exc:
            raise AuditError(f"{path}: the stored aggregator key is malformed") from exc
    return texts, key


def index_problems(path: str | os.PathLike[str]) -> list[str]:
    """Where the ledger's index columns (round id, outcome, links) contradict the signed records.

    The columns serve queries; only the record text is signed, so an edited column could mislead
    whoever reads the table rather than the records. Unreadable records are the chain check's
    business and are skipped here.
    """
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True)
        rows = db.execute(
            "SELECT seq, round_id, outcome, prev_hash, record_hash, record_json "
            "FROM audit_round_records ORDER BY seq"
        ).fetchall()
        db.close()
    except sqlite3.Error as exc:
        raise AuditError(f"{path}: not an audit ledger ({exc})") from exc
    problems = []
    for seq, round_id, outcome, prev_hash, record_hash, text in rows:
        try:
            record = RoundRecord.from_json(str(text))
        except RecordFormatError:
            continue
        columns = {
            "seq": (seq, record.sequence),
            "round_id": (round_id, record.round_id),
            "outcome": (outcome, record.outcome),
            "prev_hash": (bytes(prev_hash), record.prev_hash),
            "record_hash": (bytes(record_hash), record.record_hash()),
        }
        for name, (column, signed) in columns.items():
            if column != signed:
                problems.append(
                    f"{Path(path).name} row {seq}: the index column {name} contradicts the "
                    "signed record"
                )
    return problems
