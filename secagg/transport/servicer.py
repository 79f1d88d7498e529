"""The ``secagg.v1.Aggregator`` gRPC service: decode, call the round coordinator, encode.

Each ``Participate`` stream has a reader thread that decodes client frames and hands them to the
round's coordinator, and the handler thread that yields the stream's outbox. Any rejected frame
ends the stream with the status of :data:`secagg.transport.errors.STATUS_TABLE`; the client is
then out of the round (a dropout), and the round goes on for everybody else.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from secagg.crypto import IdentityPublicKey, lp_encode
from secagg.errors import MalformedMessage, SecAggError, UnexpectedMessage
from secagg.service.coordinator import END, Outbox, RoundCoordinator, Terminate
from secagg.service.logs import log_event
from secagg.service.records import AUDIT_KIND, REPORT_KIND, stored_json
from secagg.store import StoredRound
from secagg.transport._gen.secagg.v1 import aggregator_pb2 as pb
from secagg.transport._gen.secagg.v1 import aggregator_pb2_grpc as pb_grpc
from secagg.transport.codec import (
    MaskedInputSpool,
    decode_client_message,
    verify_hello,
    verify_request,
)
from secagg.transport.errors import (
    DeadlineMissed,
    LimitExceeded,
    LocalFailure,
    NotFound,
    NotJoinable,
    UnknownIdentity,
    status_for,
)

if TYPE_CHECKING:
    from secagg.service.aggregator import Aggregator

__all__ = ["AggregatorServicer", "add_servicer_to_server"]

REQUEST_WINDOW_MS = 300_000
"""Signed unary requests must be issued within this many ms of the aggregator's clock."""
MIN_CHUNK_WORDS = 1024
RESULT_CHUNK_WORDS = 1 << 18
# Masked-input chunks read at once over all uploads (docs/service.md §8): an uploading stream
# waits for a slot before it asks gRPC for its next chunk, so the other uploads are held back by
# HTTP/2 flow control in their clients instead of piling up in the server. A slot still waiting
# for its chunk after UPLOAD_SLOT_LEASE_S is handed on: a slow client cannot hold the others up.
UPLOAD_SLOTS = 2
UPLOAD_SLOT_LEASE_S = 2.0
# Result chunks in flight at once over all GetResult calls (same gate, same reason).
DOWNLOAD_SLOTS = 4
# Authenticated Participate streams one identity may hold at once (one round, one spare while a
# dead connection is being noticed).
MAX_STREAMS_PER_IDENTITY = 2


class Undecodable:
    """A request that reached the server but is not a valid protobuf message: it is answered
    INVALID_ARGUMENT, with a log line, instead of gRPC's own ``INTERNAL "Exception
    deserializing request!"``."""

    __slots__ = ("error", "kind")

    def __init__(self, kind: str, error: str) -> None:
        self.kind = kind
        self.error = error

    def refusal(self) -> MalformedMessage:
        return MalformedMessage(f"undecodable {self.kind}: {self.error or 'bad protobuf'}")


def _parser(message: Any) -> Any:
    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except DecodeError as exc:
            return Undecodable(message.DESCRIPTOR.name, str(exc))

    return parse


_METHODS: tuple[tuple[str, Any, Any, Any], ...] = (
    ("Participate", grpc.stream_stream_rpc_method_handler, pb.ClientFrame, pb.ServerFrame),
    ("GetResult", grpc.unary_stream_rpc_method_handler, pb.GetResultRequest, pb.ResultChunk),
    (
        "GetRoundRecord",
        grpc.unary_unary_rpc_method_handler,
        pb.GetRoundRecordRequest,
        pb.RoundRecord,
    ),
    (
        "ListRounds",
        grpc.unary_unary_rpc_method_handler,
        pb.ListRoundsRequest,
        pb.ListRoundsResponse,
    ),
)
"""The service's methods: name, gRPC handler kind, request and response messages."""


def add_servicer_to_server(servicer: AggregatorServicer, server: grpc.Server) -> None:
    """The generated ``add_AggregatorServicer_to_server``, with parsers that hand an
    undecodable request to the servicer as :class:`Undecodable`."""
    handlers = {
        method: make(
            getattr(servicer, method),
            request_deserializer=_parser(request),
            response_serializer=response.SerializeToString,
        )
        for method, make, request, response in _METHODS
    }
    name = pb.DESCRIPTOR.services_by_name["Aggregator"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


class UploadGate:
    """At most ``slots`` chunk reads at a time; a slot lapses ``lease_s`` after it was taken."""

    def __init__(self, slots: int = UPLOAD_SLOTS, lease_s: float = UPLOAD_SLOT_LEASE_S) -> None:
        self.slots = slots
        self.lease_s = lease_s
        self._cond = threading.Condition()
        self._leases: dict[object, float] = {}

    def acquire(self) -> object:
        with self._cond:
            while True:
                now = time.monotonic()
                for token, expiry in list(self._leases.items()):
                    if expiry <= now:
                        del self._leases[token]
                if len(self._leases) < self.slots:
                    token = object()
                    self._leases[token] = now + self.lease_s
                    return token
                self._cond.wait(max(0.001, min(self._leases.values()) - now))

    def release(self, token: object) -> None:
        with self._cond:
            if self._leases.pop(token, None) is not None:
                self._cond.notify()


class _Stream:
    """The server side of one Participate call."""

    def __init__(
        self,
        aggregator: Aggregator,
        context: grpc.ServicerContext,
        gate: UploadGate | None = None,
    ) -> None:
        self.aggregator = aggregator
        self.gate = gate
        self._slot: object | None = None
        self.log = aggregator.log
        self.context = context
        self.outbox = Outbox()
        self.round: RoundCoordinator | None = None
        self.party: int | None = None
        self.nonce = b""
        self.joined = False
        self.spool: MaskedInputSpool | None = None
        self.frames = 0
        self.bytes = 0
        # A stream must prove its identity within hello_timeout; until then it holds one of the
        # few unauthenticated slots (see AggregatorServicer.Participate).
        self.handshake_deadline: float | None = time.monotonic() + aggregator.config.hello_timeout
        self.authenticated = False
        self.identity: bytes | None = None
        self.challenge = os.urandom(32)
        self.outbox.send(pb.ServerFrame(challenge=pb.Challenge(nonce=self.challenge)))
        self._lock = threading.Lock()

    # --- reader thread ------------------------------------------------------------

    def read_loop(self, requests: Iterator[pb.ClientFrame]) -> None:
        try:
            for frame in self._gated(requests):
                if self.outbox.closed:
                    return
                if isinstance(frame, Undecodable):
                    raise frame.refusal()
                self._count(frame)
                self._handle(frame)
                del frame  # not held while this stream waits for an upload slot
            self._half_closed()
        except SecAggError as exc:
            self.reject(exc)
        except OSError as exc:  # the aggregator's own failure (a full disk, EMFILE): say so
            log_event(
                self.log,
                "stream_error",
                logging.ERROR,
                party=self.party,
                error=type(exc).__name__,
                errno=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                reason=exc.strerror,
            )
            self.reject(
                LocalFailure(
                    f"the aggregator failed locally ({exc.strerror or type(exc).__name__}); "
                    "this is not the site's fault"
                )
            )
        except Exception as exc:  # the RPC ended under us (cancelled, disconnected)
            if not self.outbox.closed and not isinstance(exc, grpc.RpcError):
                log_event(
                    self.log,
                    "stream_error",
                    logging.ERROR,
                    party=self.party,
                    error=type(exc).__name__,
                )
            self.lost()

    def _gated(self, requests: Iterator[pb.ClientFrame]) -> Iterator[pb.ClientFrame]:
        """The frames; while an upload is open, each chunk is read and handled under a slot."""
        it = iter(requests)
        while True:
            if self.gate is not None and self.spool is not None and not self.spool.complete:
                self._slot = self.gate.acquire()
            try:
                frame = next(it, None)
                if frame is None:
                    return
                yield frame
                del frame
            finally:
                self._release_slot()

    def _release_slot(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None and self.gate is not None:
            self.gate.release(slot)

    def _count(self, frame: pb.ClientFrame) -> None:
        size = frame.ByteSize()
        self.frames += 1
        self.bytes += size
        cfg = self.aggregator.config
        max_frames = 8 + math.ceil(cfg.vector_length / MIN_CHUNK_WORDS)
        max_bytes = 4 * cfg.vector_length + 8 * cfg.max_message_bytes
        if self.frames > max_frames or self.bytes > max_bytes:
            raise LimitExceeded(
                f"the stream exceeded its limits ({max_frames} frames, {max_bytes} bytes)"
            )

    def _handle(self, frame: pb.ClientFrame) -> None:
        kind = frame.WhichOneof("frame")
        if kind == "hello":
            self._hello(frame.hello)
        elif kind == "join":
            self._join(frame.join)
        elif kind == "refusal":
            self._refusal(frame.refusal)
        elif not self.joined:
            raise UnexpectedMessage(f"{kind or 'an empty frame'} before Hello and Join")
        elif kind == "masked_input_header":
            if self.spool is not None:
                raise MalformedMessage("a second masked input header on one stream")
            assert self.round is not None and self.party is not None
            if (
                frame.masked_input_header.chunk_words
                < min(MIN_CHUNK_WORDS, self.round.config.vector_length)
                and frame.masked_input_header.chunk_count > 1
            ):
                raise LimitExceeded(f"chunks must hold at least {MIN_CHUNK_WORDS} words")
            self.spool = self.round.open_spool(self.party, frame.masked_input_header)
        elif kind == "masked_input_chunk":
            if self.spool is None:
                raise UnexpectedMessage("a masked input chunk before its header")
            assert self.round is not None and self.party is not None
            self.spool.add(frame.masked_input_chunk)
            if self.spool.complete:
                self._release_slot()  # adding into the accumulator is serialized anyway
                self.round.finish_spool(self.party, self.spool)
        elif kind == "record_level_statement":
            assert self.round is not None and self.party is not None
            self.round.attach_statement(self.party, frame.record_level_statement)
        else:
            assert self.round is not None and self.party is not None
            self.round.submit(self.party, decode_client_message(frame))

    def _hello(self, hello: pb.Hello) -> None:
        if self.round is not None or self.authenticated:
            raise UnexpectedMessage("a second Hello on one stream")
        key = bytes(hello.identity_public_key)
        if len(key) != 32:
            raise MalformedMessage("the identity public key must be 32 bytes")
        self.aggregator.check_identity(key)  # PERMISSION_DENIED before anything else
        # Proof of possession: nothing about the rounds is sent to a mere holder of a public key.
        verify_hello(IdentityPublicKey.from_bytes(key), bytes(hello.signature), self.challenge)
        self.authenticated = True
        self.identity = key
        self.on_authenticated(self)
        self.handshake_deadline = None
        self.round = self.aggregator.round_for_join()
        self.party = self.round.party_of(key)
        self.nonce = self.challenge
        self.handshake_deadline = time.monotonic() + self.aggregator.config.handshake_timeout
        self.outbox.send(self.round.welcome(self.party, self.nonce))

    def on_authenticated(self, stream: _Stream) -> None:
        """Replaced by the servicer: moves the stream from the unauthenticated slots."""

    def _join(self, join: pb.Join) -> None:
        if self.round is None or self.party is None:
            raise UnexpectedMessage("Join before Hello")
        if self.joined:
            raise UnexpectedMessage("a second Join on one stream")
        self.round.join(self.party, join, self.nonce, self.outbox)
        self.joined = True
        self.handshake_deadline = None

    def _refusal(self, refusal: pb.Refusal) -> None:
        """The site's policy refuses the offered round: it stays away (and says why)."""
        if self.round is None or self.party is None or self.joined:
            raise UnexpectedMessage("a Refusal answers a Welcome, before any Join")
        log_event(
            self.log,
            "site_refused",
            logging.WARNING,
            round=self.round.round_id,
            party=self.party,
            parameter=refusal.parameter[:64],
            offered=refusal.offered[:64],
            required=refusal.required[:64],
            reason=refusal.reason[:300],
        )
        self.round.refused(self.party)
        self.handshake_deadline = None
        self.outbox.end()

    # --- endings ------------------------------------------------------------

    def _half_closed(self) -> None:
        """The client closed its side. Before advertising keys that means it declines the round
        (it can never take part without them): it leaves now instead of at the deadline."""
        if (
            self.joined
            and self.round is not None
            and self.party is not None
            and not self.round.has_advertised(self.party)
        ):
            self.round.leave(self.party, why="declined")
            self.outbox.end()

    def reject(self, exc: BaseException) -> None:
        code, details = status_for(exc)
        log_event(
            self.log,
            "message_rejected",
            logging.WARNING,
            party=self.party,
            round=self.round.round_id if self.round else None,
            code=code.name,
            reason=details,
        )
        self._discard_spool()
        if self.joined and self.round is not None and self.party is not None:
            self.round.leave(self.party, Terminate(code, details), why=code.name)
        self.outbox.terminate(code, details)

    def lost(self) -> None:
        self._discard_spool()
        if self.joined and self.round is not None and self.party is not None:
            self.round.leave(self.party, why="stream closed")
        self.outbox.end()

    def _discard_spool(self) -> None:
        if self.spool is not None:
            self.spool.discard()


class AggregatorServicer(pb_grpc.AggregatorServicer):
    def __init__(self, aggregator: Aggregator) -> None:
        self.aggregator = aggregator
        self.log = aggregator.log
        self.upload_gate: UploadGate | None = UploadGate(UPLOAD_SLOTS)
        self.download_gate: UploadGate | None = UploadGate(DOWNLOAD_SLOTS)
        cfg = aggregator.config
        self._admission = threading.Lock()
        self._unauthenticated = 0
        self._streams_of: dict[bytes, int] = {}
        self._unary = threading.BoundedSemaphore(cfg.max_unary_calls)

    # --- admission: outsiders cannot hold the workers the sites need ----------------------

    def _admit(self, context: grpc.ServicerContext) -> bool:
        with self._admission:
            if self._unauthenticated >= self.aggregator.config.max_unauthenticated_streams:
                full = True
            else:
                self._unauthenticated += 1
                full = False
        if full:
            log_event(self.log, "stream_refused", logging.WARNING, why="unauthenticated_cap")
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "too many streams are waiting to authenticate; retry in a few seconds",
            )
        return True

    def _authenticated(self, stream: _Stream) -> None:
        key = stream.identity
        assert key is not None
        with self._admission:
            self._unauthenticated -= 1
            count = self._streams_of.get(key, 0)
            if count >= MAX_STREAMS_PER_IDENTITY:
                self._unauthenticated += 1  # released with the stream, like an outsider's
                stream.authenticated = False
                raise LimitExceeded(
                    f"this identity already holds {count} streams (at most "
                    f"{MAX_STREAMS_PER_IDENTITY})"
                )
            self._streams_of[key] = count + 1

    def _release(self, stream: _Stream) -> None:
        with self._admission:
            if stream.authenticated and stream.identity is not None:
                left = self._streams_of.get(stream.identity, 1) - 1
                if left:
                    self._streams_of[stream.identity] = left
                else:
                    self._streams_of.pop(stream.identity, None)
            else:
                self._unauthenticated -= 1

    def _reader(self, auth: pb.RequestAuth, method: str, request: bytes) -> IdentityPublicKey:
        """The roster member or auditor that signed this read request (refuse anyone else)."""
        key = verify_request(
            auth,
            method,
            request,
            now_ms=int(time.time() * 1000),
            window_ms=REQUEST_WINDOW_MS,
        )
        self.aggregator.check_reader(key.to_bytes())
        return key

    def _gated_chunks(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Result chunks, each read and sent under a slot of the download gate (like uploads)."""
        gate = self.download_gate
        if gate is None:
            yield from chunks
            return
        while True:
            slot = gate.acquire()
            try:
                block = next(chunks, None)
                if block is None:
                    return
                yield block  # resumed once gRPC has sent the chunk's message
                del block
            finally:
                gate.release(slot)

    def Participate(  # noqa: N802 - gRPC method name
        self, request_iterator: Iterator[pb.ClientFrame], context: grpc.ServicerContext
    ) -> Iterator[pb.ServerFrame]:
        self._admit(context)
        stream = _Stream(self.aggregator, context, self.upload_gate)
        stream.on_authenticated = self._authenticated  # type: ignore[method-assign]
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                self._release(stream)

        context.add_callback(stream.lost)
        context.add_callback(release)
        reader = threading.Thread(
            target=stream.read_loop, args=(request_iterator,), daemon=True, name="secagg-reader"
        )
        reader.start()
        while True:
            try:
                item = stream.outbox.queue.get(timeout=0.25)
            except queue.Empty:
                if not context.is_active():
                    return
                deadline = stream.handshake_deadline
                if deadline is not None and time.monotonic() > deadline:
                    phase = "Join" if stream.authenticated else "signed Hello"
                    stream.reject(DeadlineMissed(f"no {phase} in time: the stream is closed"))
                continue
            if isinstance(item, Terminate):
                context.abort(item.code, item.details)
            if item is END:
                return
            yield item

    # --- results and records ------------------------------------------------------------

    def _stored(self, round_id: int) -> StoredRound:
        stored = self.aggregator.store.get_round(round_id)
        if stored is None:
            raise NotFound(f"round {round_id} does not exist on this aggregator")
        return stored

    def GetResult(  # noqa: N802
        self, request: pb.GetResultRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ResultChunk]:
        self._check_decoded(request, context, "GetResult")
        try:
            key = self._reader(request.auth, "GetResult", lp_encode(request.round_id)).to_bytes()
            stored = self._stored(request.round_id)
            roster = {bytes.fromhex(k) for k in stored.config["roster"].values()}
            if key not in roster and not self.aggregator.is_auditor(key):
                raise UnknownIdentity(
                    f"this identity is not in the roster of round {request.round_id}"
                )
            if stored.status == "running":
                raise NotJoinable(f"round {request.round_id} is still running")
            if stored.status == "aborted":
                context.abort(
                    grpc.StatusCode.ABORTED,
                    f"round aborted at stage {stored.abort_stage}: {stored.abort_reason}",
                )
            chunks = self.aggregator.result_chunks(stored, RESULT_CHUNK_WORDS)
        except (SecAggError, OSError, KeyError) as exc:
            if isinstance(exc, SecAggError):
                context.abort(*status_for(exc))
            log_event(
                self.log,
                "result_unavailable",
                logging.ERROR,
                round=request.round_id,
                error=type(exc).__name__,
            )
            context.abort(
                grpc.StatusCode.DATA_LOSS,
                f"the result of round {request.round_id} is missing or damaged on the aggregator",
            )
        length = int(stored.config["vector_length"])
        enc = stored.config["encoding"]
        yield pb.ResultChunk(
            header=pb.ResultHeader(
                round_id=stored.round_id,
                vector_length=length,
                bits=int(stored.config["bits"]),
                encoding=pb.Encoding(
                    clip=enc["clip"], scale=enc["scale"], max_clients=enc["max_clients"]
                ),
                survivors=list(stored.survivors),
                result_digest=stored.result_digest or b"",
                format=pb.WORD_FORMAT_UINT32_LE,
            )
        )
        offset = 0
        for block in self._gated_chunks(chunks):
            yield pb.ResultChunk(offset=offset, data=block)
            offset += len(block) // 4
            del block
        self.aggregator.result_served(stored.round_id, key)
        log_event(self.log, "result_served", round=stored.round_id, words=offset)

    def GetRoundRecord(  # noqa: N802
        self, request: pb.GetRoundRecordRequest, context: grpc.ServicerContext
    ) -> pb.RoundRecord:
        self._check_decoded(request, context, "GetRoundRecord")
        with self._unary_slot(context):
            return self._round_record(request, context)

    def _round_record(
        self, request: pb.GetRoundRecordRequest, context: grpc.ServicerContext
    ) -> pb.RoundRecord:
        try:
            self._reader(request.auth, "GetRoundRecord", lp_encode(request.round_id))
            stored = self._stored(request.round_id)
        except SecAggError as exc:
            self._refuse_read(context, "GetRoundRecord", exc)
        records = self.aggregator.store.records(stored.round_id)
        return pb.RoundRecord(
            round_id=stored.round_id,
            status=_STATUS[stored.status],
            config_digest=stored.config_digest,
            started_at_ms=stored.started_at_ms,
            finished_at_ms=stored.finished_at_ms or 0,
            stages=[
                pb.StageParticipation(stage=s, participants=list(done), dropouts=list(dropped))
                for s, (done, dropped) in _stage_order(stored.participation)
            ],
            survivors=list(stored.survivors),
            result_digest=stored.result_digest or b"",
            abort_stage=stored.abort_stage or "",
            abort_reason=stored.abort_reason or "",
            records=[
                pb.AppendedRecord(kind=r.kind, json=r.record_json, created_at_ms=r.created_at_ms)
                for r in records
            ],
            vector_length=int(stored.config["vector_length"]),
            roster_size=len(stored.config["roster"]),
            threshold=int(stored.config["threshold"]),
            audit_record_json=stored_json(self.aggregator.store, stored.round_id, AUDIT_KIND),
            privacy_report_json=stored_json(self.aggregator.store, stored.round_id, REPORT_KIND),
        )

    def ListRounds(  # noqa: N802
        self, request: pb.ListRoundsRequest, context: grpc.ServicerContext
    ) -> pb.ListRoundsResponse:
        self._check_decoded(request, context, "ListRounds")
        with self._unary_slot(context):
            try:
                fields = lp_encode(request.start_round_id, request.limit)
                self._reader(request.auth, "ListRounds", fields)
            except SecAggError as exc:
                self._refuse_read(context, "ListRounds", exc)
            return self._list_rounds(request, context)

    @contextlib.contextmanager
    def _unary_slot(self, context: grpc.ServicerContext) -> Iterator[None]:
        """Unary calls have their own capacity, apart from the sites' streams."""
        if not self._unary.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many concurrent requests")
        try:
            yield
        finally:
            self._unary.release()

    def _check_decoded(self, request: object, context: grpc.ServicerContext, method: str) -> None:
        if isinstance(request, Undecodable):
            self._refuse_read(context, method, request.refusal())

    def _refuse_read(self, context: grpc.ServicerContext, method: str, exc: SecAggError) -> None:
        code, details = status_for(exc)
        log_event(
            self.log, "read_refused", logging.WARNING, method=method, code=code.name, reason=details
        )
        context.abort(code, details)

    def _list_rounds(
        self, request: pb.ListRoundsRequest, context: grpc.ServicerContext
    ) -> pb.ListRoundsResponse:
        limit = request.limit or 100
        if limit > 1000:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit must be at most 1000")
        rounds = self.aggregator.store.list_rounds(request.start_round_id, limit)
        return pb.ListRoundsResponse(
            rounds=[
                pb.RoundSummary(
                    round_id=r.round_id,
                    status=_STATUS[r.status],
                    survivors=len(r.survivors),
                    started_at_ms=r.started_at_ms,
                    finished_at_ms=r.finished_at_ms or 0,
                    abort_reason=r.abort_reason or "",
                )
                for r in rounds
            ]
        )


_STATUS: dict[str, Any] = {
    "running": pb.ROUND_STATUS_RUNNING,
    "completed": pb.ROUND_STATUS_COMPLETED,
    "aborted": pb.ROUND_STATUS_ABORTED,
}
_STAGE_ORDER = ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmask")


def _stage_order(
    participation: Any,
) -> list[tuple[str, tuple[tuple[int, ...], tuple[int, ...]]]]:
    return sorted(
        participation.items(),
        key=lambda kv: _STAGE_ORDER.index(kv[0]) if kv[0] in _STAGE_ORDER else 99,
    )
