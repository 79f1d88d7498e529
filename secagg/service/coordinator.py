"""One round of the aggregator: the sans-IO server session driven with deadlines and streams.

The coordinator owns the round's :class:`~secagg.protocol.ServerSession` and the outboxes of the
joined clients. Stream threads call :meth:`join`, :meth:`submit`, :meth:`open_spool` and
:meth:`leave`; the driver thread calls :meth:`run`, which waits for each stage until every
expected party has answered (or left) or the stage's deadline passes, closes it, and dispatches
the next stage's messages. Clients still connected that did not complete a stage are told
DEADLINE_EXCEEDED and are dropouts from then on. Every session call happens under one lock, so the
session (not thread-safe by design) sees one message at a time.

The round is persisted when its first client joins; its outcome (and result file), its privacy
report and its signed audit record are committed before any client hears about it
(:meth:`release`; see :mod:`secagg.service.records`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from secagg.accounting.dpsgd import understatement
from secagg.accounting.report import SiteRecordLevelDP
from secagg.audit.verify import releasable
from secagg.errors import MalformedMessage, ReplayedMessage, RoundAborted, UnexpectedMessage
from secagg.protocol import ACTIVE_STAGES, ClientMessage, ServerMessage, ServerSession, Stage
from secagg.service.logs import log_event
from secagg.service.records import RoundBooks
from secagg.service.transcript import TranscriptWriter
from secagg.store import RoundOutcomeRecord, RoundStore
from secagg.transport import words
from secagg.transport._gen.secagg.v1 import aggregator_pb2 as pb
from secagg.transport.codec import (
    MaskedInputSpool,
    RoundParameters,
    decode_record_statement,
    encode_server_message,
    verify_join,
)
from secagg.transport.errors import (
    AlreadyConnected,
    DeadlineMissed,
    LocalFailure,
    NotJoinable,
    UnknownIdentity,
)

__all__ = ["END", "SHUTDOWN_REASON", "Outbox", "RoundCoordinator", "Terminate"]

SHUTDOWN_REASON = "aggregator shutting down"
STORAGE_FAILURES = (OSError, sqlite3.Error)
"""What a full, read-only or failing disk raises: the aggregator's own failure, never a site's."""
STORAGE_RETRY_S = 1.0


@dataclasses.dataclass(frozen=True)
class Terminate:
    code: grpc.StatusCode
    details: str


END = object()


class Outbox:
    """What one stream will send: frames, then either END (status OK) or a Terminate."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()
        self.closed = False

    def send(self, frame: pb.ServerFrame) -> None:
        if not self.closed:
            self.queue.put(frame)

    def terminate(self, code: grpc.StatusCode, details: str) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put(Terminate(code, details))

    def end(self) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put(END)


class _ShutdownAbort(Exception):
    pass


class _NobodyJoined(Exception):
    pass


class RoundCoordinator:
    def __init__(
        self,
        params: RoundParameters,
        *,
        store: RoundStore,
        spool_dir: pathlib.Path,
        max_chunk_bytes: int,
        shutdown_deadline: Callable[[], float | None],
        logger: logging.Logger,
        books: RoundBooks,
        site_name: Callable[[int], str] = str,
        transcript_dir: pathlib.Path | None = None,
    ) -> None:
        self.params = params
        self.config = params.config
        self.round_id = params.config.round_id
        self.session = ServerSession(params.config)
        self.store = store
        self.spool_dir = spool_dir
        self.max_chunk_bytes = max_chunk_bytes
        self.formats = words.available_formats(params.config.bits)
        self._shutdown_deadline = shutdown_deadline
        self._log = logger
        self._cond = threading.Condition()
        self._streams: dict[int, Outbox] = {}
        # The frame each party must answer next: re-sent to a party that resumes its stream.
        self._last_frame: dict[int, pb.ServerFrame] = {}
        self._gone: set[int] = set()
        self._spools: dict[int, MaskedInputSpool] = {}
        self._party_of_key = {k.to_bytes(): p for p, k in params.config.roster.items()}
        self._persisted = False
        self._closed_advertise = False
        self._finished = False
        self.start_failed = False
        """Storage refused this round's start: its id is burned (see ``_persist_start``)."""
        self._stage_deadline: float | None = None
        self._stage_opened = time.monotonic()
        self._config_proto = params.to_proto()
        self._final: tuple[pb.RoundOutcome | None, Terminate | None] = (None, None)
        self.outcome: pb.RoundOutcome | None = None
        self.books = books
        self._site_name = site_name
        self._statements: dict[int, tuple[SiteRecordLevelDP, dict[str, Any]]] = {}
        # Every accepted message, as signed, for `secagg audit replay` (None: not retained).
        self._transcript_dir = transcript_dir
        self._transcript: TranscriptWriter | None = None

    # --- called by stream threads ------------------------------------------------------------

    @property
    def joinable(self) -> bool:
        with self._cond:
            return not self._closed_advertise and not self._finished

    def party_of(self, public_key: bytes) -> int:
        party = self._party_of_key.get(bytes(public_key))
        if party is None:
            raise UnknownIdentity(
                f"this identity key is not in the roster of round {self.round_id}; ask the "
                "aggregator's operator to add its public key"
            )
        return party

    def welcome(self, party: int, nonce: bytes) -> pb.ServerFrame:
        return pb.ServerFrame(
            welcome=pb.Welcome(
                config=self._config_proto,
                party=party,
                nonce=nonce,
                max_chunk_bytes=self.max_chunk_bytes,
                formats=list(self.formats),  # type: ignore[arg-type]
            )
        )

    def join(self, party: int, join: pb.Join, nonce: bytes, outbox: Outbox) -> None:
        if join.round_id != self.round_id:
            raise UnexpectedMessage(
                f"Join for round {join.round_id}, the welcome was for round {self.round_id}"
            )
        if join.party != party:
            raise UnexpectedMessage(
                f"Join for party {join.party}, the identity in Hello is party {party}"
            )
        verify_join(
            self.config.roster[party],
            join.signature,
            nonce,
            self.config.digest,
            self.round_id,
            party,
        )
        with self._cond:
            if self._closed_advertise or self._finished:
                raise NotJoinable(
                    f"round {self.round_id} no longer accepts clients (it is at stage "
                    f"{self.session.stage.value}); join the next round"
                )
            if party in self._streams:
                raise AlreadyConnected(f"party {party} already has a stream in this round")
            if party in self.session.participants(Stage.ADVERTISE_KEYS):
                raise AlreadyConnected(
                    f"party {party} already advertised keys in round {self.round_id} and "
                    "cannot rejoin it"
                )
            self._persist_start(party)
            self._gone.discard(party)
            self._streams[party] = outbox
            self._cond.notify_all()
        log_event(self._log, "client_joined", round=self.round_id, party=party)

    def _persist_start(self, party: int) -> None:
        """Record the round as running (once, under the round lock) and start its clock."""
        if self._persisted:
            return
        try:
            self.store.start_round(self.round_id, self.config.digest, self._config_json())
        except STORAGE_FAILURES as exc:
            # The joining site has already accepted this round id in its own ledger and will
            # refuse it again: the id is burned, the aggregator opens the next one.
            self._storage_failed("start_round", exc)
            self.start_failed = True
            self._finished = True
            self._cond.notify_all()
            raise LocalFailure(
                f"the aggregator cannot start round {self.round_id}: its storage failed "
                f"({exc}); try again later"
            ) from None
        self._persisted = True
        self._open_transcript()
        self._stage_opened = time.monotonic()
        self._stage_deadline = self._stage_opened + self.params.deadlines[Stage.ADVERTISE_KEYS]
        log_event(self._log, "round_started", round=self.round_id, first_party=party)

    def refused(self, party: int) -> None:
        """The site refused this round: the first stage need not wait for it."""
        with self._cond:
            if party not in self._streams:
                self._gone.add(party)
                self._cond.notify_all()

    def submit(
        self, party: int, message: ClientMessage, masked_file: pathlib.Path | None = None
    ) -> None:
        """Hand one decoded client message to the session (raises the core's typed errors);
        once accepted it goes into the round's transcript (a masked input's spool file moves
        there)."""
        if message.sender != party:
            raise UnexpectedMessage(
                f"the stream is authenticated as party {party}; it cannot send messages of "
                f"party {message.sender}"
            )
        if message.round_id != self.round_id:
            raise UnexpectedMessage(
                f"message for round {message.round_id}, this stream is in round {self.round_id}"
            )
        with self._cond:
            self._check_live(party)
            stage = self.session.stage
            start = time.perf_counter()
            self.session.receive(message)
            self._transcribe(message, masked_file)
            self._cond.notify_all()
        log_event(
            self._log,
            "message_accepted",
            logging.DEBUG,
            round=self.round_id,
            party=party,
            stage=stage.value,
            ms=round((time.perf_counter() - start) * 1000, 2),
        )

    def has_advertised(self, party: int) -> bool:
        with self._cond:
            return party in self.session.participants(Stage.ADVERTISE_KEYS)

    def attach_statement(self, party: int, message: pb.RecordLevelStatement) -> None:
        """A site's signed record-level DP statement (before its masked input)."""
        if message.party != party:
            raise UnexpectedMessage(
                f"the stream is authenticated as party {party}; it cannot send the statement of "
                f"party {message.party}"
            )
        statement, stored = decode_record_statement(
            message,
            key=self.config.roster[party],
            config_digest=self.config.digest,
            round_id=self.round_id,
        )
        why = understatement(
            statement.noise_multiplier,
            statement.sample_rate,
            statement.steps,
            statement.delta,
            statement.epsilon_round,
        )
        if why is None and statement.epsilon_cumulative < statement.epsilon_round:
            why = "its cumulative epsilon is below this round's"
        if why is not None:
            log_event(
                self._log, "statement_refused", logging.WARNING, round=self.round_id, party=party
            )
            raise MalformedMessage(f"record-level statement refused: {why}")
        name = self._site_name(party)
        if statement.site != name:
            raise MalformedMessage(
                f"the statement is for site {statement.site!r}; party {party} is {name!r} in the "
                "roster"
            )
        with self._cond:
            self._check_live(party)
            if party in self._statements:
                raise ReplayedMessage(f"party {party} already sent its record-level statement")
            stage = self.session.stage
            if stage not in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT) or (
                party in self.session.participants(Stage.MASKED_INPUT) or party in self._spools
            ):
                raise UnexpectedMessage(
                    "a record-level statement must come before the masked input"
                )
            self._statements[party] = (statement, stored)
        log_event(self._log, "statement_accepted", round=self.round_id, party=party)

    def open_spool(self, party: int, header: pb.MaskedInputHeader) -> MaskedInputSpool:
        with self._cond:
            self._check_live(party)
            stage = self.session.stage
            if stage is not Stage.MASKED_INPUT:
                raise UnexpectedMessage(f"a masked input does not fit stage {stage.value}")
            if party in self.session.participants(Stage.MASKED_INPUT) or party in self._spools:
                raise ReplayedMessage(f"party {party} already sent its masked input")
            if party not in self.session.expected():
                raise UnexpectedMessage(
                    f"party {party} did not complete the previous stage and cannot send "
                    "masked_input"
                )
            spool = MaskedInputSpool(
                header,
                config=self.config,
                party=party,
                session_id=self.session.session_id,
                spool_dir=self.spool_dir,
                max_chunk_bytes=self.max_chunk_bytes,
                formats=self.formats,
            )
            self._spools[party] = spool
        log_event(
            self._log,
            "masked_input_started",
            round=self.round_id,
            party=party,
            chunks=spool.chunk_count,
        )
        return spool

    def finish_spool(self, party: int, spool: MaskedInputSpool) -> None:
        """The upload is complete: add it into the accumulator (through the core) and delete it."""
        try:
            message = spool.finish()
            try:
                self.submit(party, message, spool.path)
            finally:
                del message
        finally:
            spool.discard()
            with self._cond:
                if self._spools.get(party) is spool:
                    del self._spools[party]
        log_event(
            self._log,
            "masked_input_received",
            round=self.round_id,
            party=party,
            bytes=spool.bytes_received,
        )

    def leave(self, party: int, terminate: Terminate | None = None, why: str = "") -> None:
        """The party is out of this round: its stream ended or one of its messages was rejected."""
        with self._cond:
            outbox = self._streams.pop(party, None)
            if outbox is not None and not self._finished:
                self._gone.add(party)
                log_event(
                    self._log,
                    "client_left",
                    round=self.round_id,
                    party=party,
                    stage=self.session.stage.value,
                    why=why or (terminate.code.name if terminate else "stream closed"),
                )
            spool = self._spools.pop(party, None)
            if spool is not None:
                spool.discard()
            if outbox is not None and terminate is not None:
                outbox.terminate(terminate.code, terminate.details)
            self._cond.notify_all()

    def _check_live(self, party: int) -> None:
        if party not in self._streams or self._finished:
            raise DeadlineMissed(
                f"party {party} is no longer part of round {self.round_id} (stage "
                f"{self.session.stage.value})"
            )

    # --- the driver ------------------------------------------------------------

    def run(self) -> bool:
        """Drive the round to completion or abort; persist the outcome. False if nobody joined."""
        try:
            for stage in ACTIVE_STAGES:
                self._wait(stage)
                with self._cond:
                    started = time.perf_counter()
                    try:
                        outgoing = self.session.close_stage()
                    finally:
                        if stage is Stage.ADVERTISE_KEYS:
                            self._closed_advertise = True
                    self._log_stage(stage, time.perf_counter() - started)
                    if stage is not Stage.UNMASK:
                        deadline = self.params.deadlines[stage]
                        for party in sorted(set(self._streams) - set(outgoing)):
                            self._drop_late(party, stage, deadline)
                if stage is not Stage.UNMASK:
                    # O(n) encoding and hand-off outside the round lock: the first replies of
                    # the next stage are accepted while the last frames are still going out.
                    self._dispatch(stage, outgoing)
            try:
                self._complete()
            except STORAGE_FAILURES as exc:
                # The sum exists but cannot be committed: nobody may receive it. The abort is
                # accounted as a release (the aggregator saw the sum) once the disk takes it.
                self._storage_failed("complete", exc)
                with contextlib.suppress(OSError):
                    os.unlink(self.store.results_dir / f"round-{self.round_id:010d}.u32")
                self._record_abort(Stage.UNMASK.value, f"storage failure at the aggregator ({exc})")
        except _NobodyJoined:
            with self._cond:
                self._finished = True
            self.session.abort(SHUTDOWN_REASON)
            return False
        except _ShutdownAbort:
            with self._cond:
                self.session.abort(SHUTDOWN_REASON)
                stage = self.session.abort_stage or Stage.ADVERTISE_KEYS
            self._record_abort(stage.value, SHUTDOWN_REASON)
        except RoundAborted as exc:
            self._record_abort(exc.stage, exc.reason)
        finally:
            with self._cond:
                for spool in self._spools.values():
                    spool.discard()
                self._spools.clear()
                self._close_transcript()
        return True

    def _wait(self, stage: Stage) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                shutdown = self._shutdown_deadline()
                if stage is Stage.ADVERTISE_KEYS and not self._persisted:
                    if shutdown is not None or self.start_failed:
                        raise _NobodyJoined
                    self._cond.wait(0.5)
                    continue
                if shutdown is not None and now >= shutdown:
                    raise _ShutdownAbort
                # A stream that ended before its Join registered counts as gone too.
                closed = {p for p, o in self._streams.items() if o.closed}
                if not (self.session.expected() - self._gone - closed):
                    return
                assert self._stage_deadline is not None
                if now >= self._stage_deadline:
                    return
                wait = self._stage_deadline - now
                if shutdown is not None:
                    wait = min(wait, max(shutdown - now, 0.0))
                self._cond.wait(min(wait, 0.5))

    def _dispatch(self, stage: Stage, outgoing: dict[int, ServerMessage]) -> None:
        """Encode and hand each party its next frame (without the lock), then open the stage:
        its clock starts once every frame is on its way."""
        started = time.monotonic()
        frames: dict[int, pb.ServerFrame] = {}
        for party, message in outgoing.items():
            frame = frames.get(id(message))
            if frame is None:
                frame = frames[id(message)] = encode_server_message(message)
            self._last_frame[party] = frame
            outbox = self._streams.get(party)
            if outbox is not None:
                outbox.send(frame)
        next_stage = ACTIVE_STAGES[ACTIVE_STAGES.index(stage) + 1]
        with self._cond:
            self._stage_opened = time.monotonic()
            deadline = self.params.deadlines[next_stage]
            self._stage_deadline = self._stage_opened + deadline
            self._cond.notify_all()
        handoff = self._stage_opened - started
        log_event(
            self._log,
            "stage_opened",
            logging.WARNING if handoff > 0.1 * deadline else logging.INFO,
            round=self.round_id,
            stage=next_stage.value,
            parties=len(outgoing),
            handoff_s=round(handoff, 3),
            deadline_s=deadline,
        )

    def _drop_late(self, party: int, stage: Stage, deadline: float) -> None:
        outbox = self._streams.pop(party)
        self._gone.add(party)
        spool = self._spools.pop(party, None)
        if spool is not None:
            spool.discard()
        log_event(
            self._log,
            "client_missed_deadline",
            round=self.round_id,
            party=party,
            stage=stage.value,
            deadline_s=deadline,
        )
        outbox.terminate(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"party {party} did not complete stage {stage.value} of round {self.round_id} "
            f"within its {deadline:g} s deadline; it is a dropout for the rest of the round",
        )

    def _log_stage(self, stage: Stage, close_s: float) -> None:
        done = self.session.participants(stage)
        log_event(
            self._log,
            "stage_closed",
            round=self.round_id,
            stage=stage.value,
            participants=len(done),
            expected_missing=sorted(self.session.expected()) if not done else [],
            open_s=round(time.monotonic() - self._stage_opened, 3),
            close_s=round(close_s, 3),
        )

    # --- outcome ------------------------------------------------------------

    def _config_json(self) -> dict[str, Any]:
        cfg, enc = self.config, self.params.encoding
        return {
            "round_id": cfg.round_id,
            "roster": {str(p): k.to_bytes().hex() for p, k in cfg.roster.items()},
            "threshold": cfg.threshold,
            "degree": cfg.degree,
            "vector_length": cfg.vector_length,
            "bits": cfg.bits,
            "encoding": {"clip": enc.clip, "scale": enc.scale, "max_clients": enc.max_clients},
            "context_digest": cfg.context_digest.hex(),
            "deadlines_s": {s.value: d for s, d in self.params.deadlines.items()},
        }

    def _participation(
        self, upto: Stage | None
    ) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        participants: dict[str, list[int]] = {}
        dropouts: dict[str, list[int]] = {}
        previous = set(self.config.roster)
        for stage in ACTIVE_STAGES:
            done = set(self.session.participants(stage))
            participants[stage.value] = sorted(done)
            dropouts[stage.value] = sorted(previous - done)
            previous = done
            if stage is upto:
                break
        return participants, dropouts

    def _complete(self) -> None:
        result = self.session.result
        started = time.perf_counter()
        name, digest = self.store.write_result(self.round_id, result.total)
        participants, dropouts = self._participation(None)
        summary = {
            "round_id": self.round_id,
            "status": "completed",
            "config_digest": self.config.digest.hex(),
            "session_id": result.session_id.hex(),
            "survivors": list(result.survivors),
            "participants": participants,
            "dropouts": dropouts,
            "result_digest": digest.hex(),
        }
        statements = {p: s for p, (s, _) in self._statements.items()}
        report, accountant = self.books.privacy_report(self.session, statements)
        record = self.books.audit_record(self.session, report)
        signed = {p: stored for p, (_, stored) in self._statements.items()}
        self.store.finish_round(
            RoundOutcomeRecord(
                round_id=self.round_id,
                status="completed",
                participants=participants,
                dropouts=dropouts,
                survivors=result.survivors,
                session_id=result.session_id,
            ),
            result=(name, digest),
            records=[
                ("round_summary", summary),
                *self.books.stored_records(report, record, accountant, signed),
            ],
        )
        self.books.commit(record, accountant)
        log_event(
            self._log,
            "round_completed",
            round=self.round_id,
            survivors=len(result.survivors),
            dropped=sum(len(v) for v in dropouts.values()),
            persist_s=round(time.perf_counter() - started, 3),
        )
        self.outcome = pb.RoundOutcome(
            round_id=self.round_id,
            status=pb.ROUND_STATUS_COMPLETED,
            survivors=list(result.survivors),
            result_digest=digest,
            privacy_report_json=report.to_json(),
        )

    def _record_abort(self, stage: str, reason: str) -> None:
        if self._persisted:
            participants, dropouts = self._participation(Stage(stage))
            record = self.books.audit_record(self.session, None)
            report, accountant = None, None
            transcript = self.session.transcript()
            if stage == Stage.UNMASK.value and releasable(
                record, self.config, transcript.unmask_receipts
            ):
                # Enough shares arrived to rebuild the sum: count it as released, whatever
                # happened next (the privacy ledger must never miss a release).
                statements = {p: st for p, (st, _) in self._statements.items()}
                report, accountant = self.books.privacy_report(self.session, statements)
                record = self.books.audit_record(self.session, report)
            self._persist_with_retry(
                self.store.finish_round,
                RoundOutcomeRecord(
                    round_id=self.round_id,
                    status="aborted",
                    participants=participants,
                    dropouts=dropouts,
                    session_id=self.session.session_id or None,
                    abort_stage=stage,
                    abort_reason=reason,
                ),
                records=[
                    (
                        "round_summary",
                        {
                            "round_id": self.round_id,
                            "status": "aborted",
                            "config_digest": self.config.digest.hex(),
                            "abort_stage": stage,
                            "abort_reason": reason,
                            "participants": participants,
                            "dropouts": dropouts,
                        },
                    ),
                    *self.books.stored_records(report, record, accountant, {}),
                ],
            )
            self.books.commit(record, accountant)
        log_event(
            self._log,
            "round_aborted",
            logging.WARNING,
            round=self.round_id,
            stage=stage,
            reason=reason,
        )
        self.outcome = pb.RoundOutcome(
            round_id=self.round_id,
            status=pb.ROUND_STATUS_ABORTED,
            abort_stage=stage,
            abort_reason=reason,
        )

    # --- storage ----------------------------------------------------------------------------

    def _storage_failed(self, operation: str, exc: BaseException) -> None:
        log_event(
            self._log,
            "storage_failed",
            logging.ERROR,
            round=self.round_id,
            operation=operation,
            error=type(exc).__name__,
            reason=str(exc),
        )

    def _persist_with_retry(self, write: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Commit an abort, retrying while the disk fails: an outcome (and a release it may
        account for) is never dropped; only a shutdown past its grace gives up, and then the
        round stays 'running' and is marked interrupted at the next start."""
        while True:
            try:
                write(*args, **kwargs)
                return
            except STORAGE_FAILURES as exc:
                self._storage_failed("record_abort", exc)
                shutdown = self._shutdown_deadline()
                if shutdown is not None and time.monotonic() >= shutdown:
                    raise
                time.sleep(STORAGE_RETRY_S)

    def _open_transcript(self) -> None:
        if self._transcript_dir is None:
            return
        try:
            self._transcript = TranscriptWriter(self._transcript_dir, self.params)
        except STORAGE_FAILURES as exc:
            self._storage_failed("transcript", exc)

    def _transcribe(self, message: ClientMessage, masked_file: pathlib.Path | None) -> None:
        """Keep the replay transcript; if the disk refuses it, drop the transcript (replay is
        an audit aid, the round and its signed record do not depend on it)."""
        if self._transcript is None:
            return
        try:
            self._transcript.add(message, masked_file)
        except STORAGE_FAILURES as exc:
            self._storage_failed("transcript", exc)
            self._transcript.abandon()
            self._transcript = None

    def _close_transcript(self) -> None:
        if self._transcript is not None:
            try:
                self._transcript.close()
            except STORAGE_FAILURES as exc:
                self._storage_failed("transcript", exc)
                self._transcript.abandon()
            self._transcript = None

    def release(self) -> None:
        """Tell every connected client the (already persisted) outcome and end the streams."""
        with self._cond:
            self._finished = True
            outcome = self.outcome
            streams, self._streams = self._streams, {}
            finishers = self.session.participants(Stage.UNMASK)
            for party, outbox in sorted(streams.items()):
                if outcome is None or outcome.status == pb.ROUND_STATUS_ABORTED:
                    stage = outcome.abort_stage if outcome else "unknown"
                    reason = outcome.abort_reason if outcome else SHUTDOWN_REASON
                    outbox.terminate(
                        grpc.StatusCode.ABORTED, f"round aborted at stage {stage}: {reason}"
                    )
                elif party in finishers:
                    outbox.send(pb.ServerFrame(outcome=outcome))
                    outbox.end()
                else:
                    self._streams[party] = outbox
                    self._drop_late(party, Stage.UNMASK, self.params.deadlines[Stage.UNMASK])
            self._cond.notify_all()


def clean_spool_dir(spool_dir: pathlib.Path) -> None:
    """Delete uploads left over by a process that died (they never entered any sum)."""
    if spool_dir.is_dir():
        for path in spool_dir.iterdir():
            with contextlib.suppress(OSError):
                os.unlink(path)
