"""Rounds, participants, results and per-round records in an embedded SQLite database.

Layout of the data directory::

    aggregator.db          SQLite, WAL journal, synchronous=FULL (every commit is fsync'd)
    results/round-<id>.u32 the aggregate of each completed round (uint32 little-endian)

A result file is written to a temporary name, fsync'd, renamed and its directory fsync'd *before*
the transaction that marks the round completed commits; the service releases the result only after
that commit. A round is therefore either running, completed (with its result on disk) or aborted
(with its reason): a restart marks any round still "running" as aborted, never half-finished.

``round_records`` is a generic append-only table of JSON records per round, written in the same
transaction as the round's outcome or on their own. The service stores there, per round: the
``round_summary``, the ``privacy_report``, the site-level ``privacy_accountant`` state after the
round, the signed ``record_level_statement`` of each site, and the signed ``audit_record`` (which
is also appended to the audit ledger, ``audit.db``, before the result is released).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.store.faults import inject

__all__ = [
    "RoundOutcomeRecord",
    "RoundStore",
    "StoredRecord",
    "StoredRound",
]

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round_id       INTEGER PRIMARY KEY,
    status         TEXT NOT NULL CHECK (status IN ('running', 'completed', 'aborted')),
    config_digest  BLOB NOT NULL,
    config_json    TEXT NOT NULL,
    started_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER,
    survivors_json TEXT,
    session_id     BLOB,
    result_digest  BLOB,
    result_file    TEXT,
    abort_stage    TEXT,
    abort_reason   TEXT
);
CREATE TABLE IF NOT EXISTS participation (
    round_id INTEGER NOT NULL REFERENCES rounds(round_id),
    stage    TEXT NOT NULL,
    party    INTEGER NOT NULL,
    outcome  TEXT NOT NULL CHECK (outcome IN ('completed', 'dropped')),
    PRIMARY KEY (round_id, stage, party)
);
CREATE TABLE IF NOT EXISTS round_records (
    record_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    round_id      INTEGER NOT NULL REFERENCES rounds(round_id),
    kind          TEXT NOT NULL,
    record_json   TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS round_records_by_round ON round_records(round_id, record_id);
"""


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class StoredRecord:
    record_id: int
    round_id: int
    kind: str
    record_json: str
    created_at_ms: int

    @property
    def record(self) -> Any:
        return json.loads(self.record_json)


@dataclass(frozen=True)
class StoredRound:
    round_id: int
    status: str
    config_digest: bytes
    config: Mapping[str, Any] = field(repr=False)
    started_at_ms: int
    finished_at_ms: int | None
    survivors: tuple[int, ...]
    session_id: bytes | None
    result_digest: bytes | None
    result_file: str | None
    abort_stage: str | None
    abort_reason: str | None
    participation: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(repr=False)
    """stage -> (parties that completed it, parties that dropped at it)."""


@dataclass(frozen=True)
class RoundOutcomeRecord:
    """What :meth:`RoundStore.finish_round` persists for one round (plain types only)."""

    round_id: int
    status: str  # "completed" | "aborted"
    participants: Mapping[str, Sequence[int]]
    dropouts: Mapping[str, Sequence[int]]
    survivors: Sequence[int] = ()
    session_id: bytes | None = None
    abort_stage: str | None = None
    abort_reason: str | None = None


class RoundStore:
    """Thread-safe access to the aggregator's database (one connection, one lock)."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = pathlib.Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.results_dir = self.data_dir / "results"
        self.results_dir.mkdir(exist_ok=True)
        self.path = self.data_dir / "aggregator.db"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self.transaction() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) != SCHEMA_VERSION:
                raise RuntimeError(f"database schema {row[0]} is not {SCHEMA_VERSION}")

    # --- transactions -------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (fsync'd: WAL with synchronous=FULL); ROLLBACK on error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- rounds -------------------------------------------------------------------------------

    def next_round_id(self) -> int:
        """One more than every round ever started here (round ids are never reused)."""
        with self._lock:
            (last,) = self._db.execute("SELECT MAX(round_id) FROM rounds").fetchone()
        return 1 if last is None else int(last) + 1

    def mark_interrupted(self, reason: str) -> list[int]:
        """Abort every round still marked running (the process died under it)."""
        with self.transaction() as db:
            rows = db.execute("SELECT round_id FROM rounds WHERE status = 'running'").fetchall()
            ids = [int(r[0]) for r in rows]
            for round_id in ids:
                db.execute(
                    "UPDATE rounds SET status = 'aborted', finished_at_ms = ?, "
                    "abort_stage = COALESCE(abort_stage, 'unknown'), abort_reason = ? "
                    "WHERE round_id = ?",
                    (_now_ms(), reason, round_id),
                )
        return ids

    def remove_orphan_results(self) -> list[str]:
        """Delete result files no completed round names: half-written ``.tmp`` files and the
        aggregates of rounds whose outcome could not be committed (they were aborted)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT result_file FROM rounds WHERE status = 'completed'"
            ).fetchall()
        kept = {r[0] for r in rows}
        removed = []
        for path in self.results_dir.iterdir():
            if path.name not in kept:
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path.name)
        return sorted(removed)

    def start_round(self, round_id: int, config_digest: bytes, config: Mapping[str, Any]) -> None:
        inject("start_round", round_id)
        with self.transaction() as db:
            db.execute(
                "INSERT INTO rounds (round_id, status, config_digest, config_json, started_at_ms) "
                "VALUES (?, 'running', ?, ?, ?)",
                (round_id, config_digest, json.dumps(config, sort_keys=True), _now_ms()),
            )

    def write_result(self, round_id: int, total: npt.NDArray[np.uint32]) -> tuple[str, bytes]:
        """Write and fsync the aggregate file; return (file name, BLAKE2b-256 digest)."""
        inject("write_result", round_id)
        name = f"round-{round_id:010d}.u32"
        final = self.results_dir / name
        tmp = self.results_dir / f".{name}.tmp"
        digest = hashlib.blake2b(digest_size=32)
        step = 1 << 20
        with open(tmp, "wb") as f:
            for lo in range(0, len(total), step):
                block = np.ascontiguousarray(total[lo : lo + step], dtype="<u4")
                digest.update(block.data)
                f.write(block.data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.results_dir)
        return name, digest.digest()

    def finish_round(
        self,
        outcome: RoundOutcomeRecord,
        *,
        result: tuple[str, bytes] | None = None,
        records: Sequence[tuple[str, Mapping[str, Any]]] = (),
    ) -> None:
        """Persist a round's outcome, participation and records in one fsync'd transaction."""
        inject("finish_round", outcome.round_id)
        if outcome.status not in ("completed", "aborted"):
            raise ValueError(f"a finished round is completed or aborted, not {outcome.status}")
        if (outcome.status == "completed") != (result is not None):
            raise ValueError("a completed round needs its result file, an aborted one has none")
        now = _now_ms()
        with self.transaction() as db:
            db.execute(
                "UPDATE rounds SET status = ?, finished_at_ms = ?, survivors_json = ?, "
                "session_id = ?, result_file = ?, result_digest = ?, abort_stage = ?, "
                "abort_reason = ? WHERE round_id = ? AND status = 'running'",
                (
                    outcome.status,
                    now,
                    json.dumps(sorted(outcome.survivors)),
                    outcome.session_id,
                    result[0] if result else None,
                    result[1] if result else None,
                    outcome.abort_stage,
                    outcome.abort_reason,
                    outcome.round_id,
                ),
            )
            if db.execute("SELECT changes()").fetchone()[0] != 1:
                raise ValueError(f"round {outcome.round_id} is not running")
            rows = []
            for stage, parties in outcome.participants.items():
                rows += [(outcome.round_id, stage, p, "completed") for p in parties]
            for stage, parties in outcome.dropouts.items():
                rows += [(outcome.round_id, stage, p, "dropped") for p in parties]
            db.executemany(
                "INSERT INTO participation (round_id, stage, party, outcome) VALUES (?, ?, ?, ?)",
                rows,
            )
            for kind, record in records:
                self._insert_record(db, outcome.round_id, kind, record, now)

    # --- generic per-round records ------------------------------------------------------------

    @staticmethod
    def _insert_record(
        db: sqlite3.Connection, round_id: int, kind: str, record: Mapping[str, Any], now: int
    ) -> int:
        if not kind or len(kind) > 64:
            raise ValueError("a record kind is a non-empty string of at most 64 characters")
        cur = db.execute(
            "INSERT INTO round_records (round_id, kind, record_json, created_at_ms) "
            "VALUES (?, ?, ?, ?)",
            (round_id, kind, json.dumps(record, sort_keys=True, separators=(",", ":")), now),
        )
        return int(cur.lastrowid or 0)

    def append_record(self, round_id: int, kind: str, record: Mapping[str, Any]) -> int:
        """Append one JSON record to a round (its own fsync'd transaction); return its id."""
        with self.transaction() as db:
            if (
                db.execute("SELECT 1 FROM rounds WHERE round_id = ?", (round_id,)).fetchone()
                is None
            ):
                raise KeyError(f"round {round_id} does not exist")
            return self._insert_record(db, round_id, kind, record, _now_ms())

    def records(self, round_id: int, kind: str | None = None) -> list[StoredRecord]:
        query = (
            "SELECT record_id, round_id, kind, record_json, created_at_ms FROM round_records "
            "WHERE round_id = ?"
        )
        args: tuple[Any, ...] = (round_id,)
        if kind is not None:
            query += " AND kind = ?"
            args += (kind,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY record_id", args).fetchall()
        return [StoredRecord(int(a), int(b), str(c), str(d), int(e)) for a, b, c, d, e in rows]

    def records_of_kind(self, kind: str) -> list[StoredRecord]:
        """Every record of one kind, over all rounds, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT record_id, round_id, kind, record_json, created_at_ms FROM round_records "
                "WHERE kind = ? ORDER BY record_id",
                (kind,),
            ).fetchall()
        return [StoredRecord(int(a), int(b), str(c), str(d), int(e)) for a, b, c, d, e in rows]

    def latest_record(self, kind: str) -> StoredRecord | None:
        """The most recent record of one kind (e.g. the privacy accountant's state), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT record_id, round_id, kind, record_json, created_at_ms FROM round_records "
                "WHERE kind = ? ORDER BY record_id DESC LIMIT 1",
                (kind,),
            ).fetchone()
        if row is None:
            return None
        return StoredRecord(int(row[0]), int(row[1]), str(row[2]), str(row[3]), int(row[4]))

    # --- queries ------------------------------------------------------------------------------

    _ROUND_COLUMNS = (
        "round_id, status, config_digest, config_json, started_at_ms, finished_at_ms, "
        "survivors_json, session_id, result_digest, result_file, abort_stage, abort_reason"
    )

    def get_round(self, round_id: int) -> StoredRound | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {self._ROUND_COLUMNS} FROM rounds WHERE round_id = ?", (round_id,)
            ).fetchone()
            if row is None:
                return None
            part = self._db.execute(
                "SELECT stage, party, outcome FROM participation WHERE round_id = ? "
                "ORDER BY stage, party",
                (round_id,),
            ).fetchall()
        return self._round_from_row(row, part)

    def list_rounds(self, start_round_id: int = 0, limit: int = 100) -> list[StoredRound]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._ROUND_COLUMNS} FROM rounds WHERE round_id >= ? "
                "ORDER BY round_id LIMIT ?",
                (start_round_id, limit),
            ).fetchall()
        return [self._round_from_row(r, []) for r in rows]

    @staticmethod
    def _round_from_row(row: Sequence[Any], part: Sequence[Sequence[Any]]) -> StoredRound:
        completed: dict[str, list[int]] = {}
        dropped: dict[str, list[int]] = {}
        for stage, party, outcome in part:
            (completed if outcome == "completed" else dropped).setdefault(stage, []).append(
                int(party)
            )
        stages = sorted(set(completed) | set(dropped))
        return StoredRound(
            round_id=int(row[0]),
            status=str(row[1]),
            config_digest=bytes(row[2]),
            config=json.loads(row[3]),
            started_at_ms=int(row[4]),
            finished_at_ms=None if row[5] is None else int(row[5]),
            survivors=tuple(json.loads(row[6])) if row[6] else (),
            session_id=None if row[7] is None else bytes(row[7]),
            result_digest=None if row[8] is None else bytes(row[8]),
            result_file=row[9],
            abort_stage=row[10],
            abort_reason=row[11],
            participation={
                s: (tuple(completed.get(s, ())), tuple(dropped.get(s, ()))) for s in stages
            },
        )

    def result_path(self, stored: StoredRound) -> pathlib.Path:
        if stored.status != "completed" or not stored.result_file:
            raise KeyError(f"round {stored.round_id} has no result")
        return self.results_dir / pathlib.Path(stored.result_file).name

    def verify_result(self, stored: StoredRound) -> pathlib.Path:
        """Check a completed round's result file (size and digest); return its path."""
        path = self.result_path(stored)
        length = int(stored.config["vector_length"])
        if path.stat().st_size != 4 * length:
            raise OSError(f"the result file of round {stored.round_id} has the wrong size")
        digest = hashlib.blake2b(digest_size=32)
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
        if digest.digest() != stored.result_digest:
            raise OSError(f"the result file of round {stored.round_id} does not match its digest")
        return path

    def read_result(self, stored: StoredRound, chunk_words: int = 1 << 18) -> Iterator[bytes]:
        """The result file in chunks of ``chunk_words`` little-endian uint32 (file reads, so
        serving many clients at once costs one chunk each, not one vector each)."""
        with open(self.result_path(stored), "rb") as f:
            while block := f.read(4 * chunk_words):
                yield block

    def open_result(self, stored: StoredRound) -> npt.NDArray[np.uint32]:
        """The aggregate of a completed round as an array, after checking its digest."""
        path = self.verify_result(stored)
        return np.fromfile(path, dtype="<u4").astype(np.uint32, copy=False)


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
