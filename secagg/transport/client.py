"""The client side of one round over a ``Participate`` stream (used by :mod:`secagg.client`).

The stream is fed from a queue by a generator that gRPC consumes on its own thread, so the masked
input's chunks are produced lazily (one chunk in memory at a time beyond the masked vector itself).
Every server frame goes through the sans-IO :class:`~secagg.protocol.ClientSession`, which aborts on
anything an honest server would not send.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from secagg.accounting.report import SiteRecordLevelDP
from secagg.crypto import IdentityKey, lp_encode, random_seed, uniform_floats
from secagg.dp.distributed import derive_params
from secagg.errors import (
    ConfigError,
    CryptoError,
    MaliciousServerError,
    PolicyViolation,
    ProtocolError,
    SecAggError,
)
from secagg.protocol import (
    ACTIVE_STAGES,
    ClientSession,
    MaskedInput,
    SiteLedger,
    SitePolicy,
    Stage,
)
from secagg.protocol.client import check_offer
from secagg.site import dp_offer
from secagg.transport import words
from secagg.transport._gen.secagg.v1 import aggregator_pb2 as pb
from secagg.transport._gen.secagg.v1 import aggregator_pb2_grpc as pb_grpc
from secagg.transport.codec import (
    RoundParameters,
    decode_server_frame,
    encode_client_message,
    masked_input_frames,
    result_digest,
    sign_hello,
    sign_join,
    sign_record_statement,
    sign_request,
)
from secagg.transport.errors import AggregatorError, error_from_status

__all__ = ["ChunkEvent", "OpenRound", "fetch_result", "request_auth"]

ENCODE_BLOCK = 1 << 20


@dataclass(frozen=True)
class ChunkEvent:
    """Progress: the message of ``stage`` is about to be sent (``chunk`` is set for masked-input
    chunks), or, with ``phase == "request"``, the aggregator's request for it just arrived and
    the site has not yet acted on it."""

    round_id: int
    party: int
    stage: str
    chunk: int | None = None
    chunks: int | None = None
    phase: str = "send"


EventHook = Callable[[ChunkEvent], None]


def _raise_rpc(exc: grpc.RpcError) -> SecAggError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return error_from_status(code, details)


class OpenRound:
    """A joined-to-be round: the Welcome was received; :meth:`run` joins and plays the round."""

    def __init__(
        self,
        stub: pb_grpc.AggregatorStub,
        identity: IdentityKey,
        *,
        policy: SitePolicy,
        ledger: SiteLedger,
        timeout: float | None,
        on_event: EventHook | None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._identity = identity
        self._policy = policy
        self._ledger = ledger
        self._on_event = on_event
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._call = stub.Participate(self._requests(), timeout=timeout, metadata=metadata)
        self._closed = False
        frame = self._next()
        if frame is None or frame.WhichOneof("frame") != "challenge":
            self.cancel()
            raise MaliciousServerError("the aggregator did not open the stream with a challenge")
        challenge = bytes(frame.challenge.nonce)
        if len(challenge) != 32:
            self.cancel()
            raise MaliciousServerError("the challenge nonce is not 32 bytes")
        self._queue.put(
            pb.ClientFrame(
                hello=pb.Hello(
                    identity_public_key=identity.public_key.to_bytes(),
                    protocol_version=1,
                    signature=sign_hello(identity, challenge),
                )
            )
        )
        frame = self._next()
        if frame is None or frame.WhichOneof("frame") != "welcome":
            self.cancel()
            raise MaliciousServerError("the aggregator did not answer Hello with a Welcome")
        welcome = frame.welcome
        try:
            self.params = RoundParameters.from_proto(welcome.config)
        except SecAggError:
            self.cancel()
            raise
        self.party = int(welcome.party)
        if self.params.config.roster.get(self.party) != identity.public_key:
            self.cancel()
            raise MaliciousServerError(
                f"the aggregator assigned party {self.party}, whose roster key is not this "
                "client's identity"
            )
        self._nonce = bytes(welcome.nonce)
        if self._nonce != challenge:
            self.cancel()
            raise MaliciousServerError("the Welcome nonce is not the stream's challenge")
        self._max_chunk_bytes = int(welcome.max_chunk_bytes) or 1 << 20
        self._formats = tuple(int(f) for f in welcome.formats) or (words.UINT32_LE,)
        # The site decides now, before it computes or reveals anything.
        dp = self.params.distributed_dp
        n = len(self.params.config.roster)
        self.dp_offer = None if dp is None else dp_offer(derive_params(dp), policy, n)
        try:
            check_offer(
                self.params.config, self.party, policy=policy, ledger=ledger, dp=self.dp_offer
            )
        except PolicyViolation as exc:
            self._refuse(exc)
            raise

    @property
    def round_id(self) -> int:
        return self.params.config.round_id

    def _requests(self) -> Iterator[pb.ClientFrame]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, pb.ClientFrame):
                yield item
            else:
                yield from item

    def _next(self) -> pb.ServerFrame | None:
        try:
            return next(self._call)  # type: ignore[no-any-return]
        except StopIteration:
            return None
        except grpc.RpcError as exc:
            raise _raise_rpc(exc) from None

    def _event(
        self,
        stage: str,
        chunk: int | None = None,
        chunks: int | None = None,
        phase: str = "send",
    ) -> None:
        if self._on_event is not None:
            self._on_event(ChunkEvent(self.round_id, self.party, stage, chunk, chunks, phase))

    def cancel(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            with contextlib.suppress(Exception):
                self._call.cancel()

    def encode(
        self, values: npt.NDArray[np.float64], rounding_seed: bytes | None
    ) -> npt.NDArray[np.uint32]:
        """Clip and encode (stochastic rounding), block by block to bound the temporaries."""
        m = self.params.config.vector_length
        if values.shape != (m,):
            raise ConfigError(f"the update has {values.size} parameters, the round expects {m}")
        seed = rounding_seed if rounding_seed is not None else random_seed()
        out = np.empty(m, dtype=np.uint32)
        enc = self.params.encoding
        for lo in range(0, m, ENCODE_BLOCK):
            hi = min(lo + ENCODE_BLOCK, m)
            out[lo:hi] = enc.encode(values[lo:hi], uniform_floats(seed, hi - lo, lo))
        return out

    def _refuse(self, exc: PolicyViolation) -> None:
        """Tell the aggregator why this site stays away, then close the stream."""
        self._queue.put(
            pb.ClientFrame(
                refusal=pb.Refusal(
                    round_id=self.round_id,
                    party=self.party,
                    parameter=exc.parameter,
                    offered=str(exc.offered),
                    required=str(exc.required),
                    reason=exc.reason[:500],
                )
            )
        )
        self._closed = True
        self._queue.put(None)
        with contextlib.suppress(Exception):
            for _ in self._call:  # the aggregator ends the stream once it saw the refusal
                pass

    def _join_frame(self) -> pb.ClientFrame:
        cfg = self.params.config
        signature = sign_join(self._identity, self._nonce, cfg.digest, cfg.round_id, self.party)
        return pb.ClientFrame(
            join=pb.Join(round_id=cfg.round_id, party=self.party, signature=signature)
        )

    def decline(self) -> None:
        """Join and close the stream at once: the aggregator counts this site out of the round
        right away instead of waiting for the advertise_keys deadline."""
        if self._closed:
            return
        self._queue.put(self._join_frame())
        self._closed = True
        self._queue.put(None)  # half-close: nothing will follow the Join
        with contextlib.suppress(Exception):
            for _ in self._call:  # the aggregator ends the stream once it saw the Join
                pass
        with contextlib.suppress(Exception):
            self._call.cancel()

    def run(
        self,
        encoded: npt.NDArray[np.uint32],
        *,
        chunk_bytes: int,
        statement: SiteRecordLevelDP | None = None,
    ) -> pb.RoundOutcome:
        """Join, play every stage, and return the outcome (raise on abort or rejection).

        ``statement``: the site's record-level DP statement, signed and sent right after Join.
        """
        cfg = self.params.config
        try:
            session = ClientSession(
                cfg,
                self.party,
                self._identity,
                encoded,
                policy=self._policy,
                ledger=self._ledger,
                dp=self.dp_offer,
            )
            self._queue.put(self._join_frame())
            if statement is not None:
                self._queue.put(
                    sign_record_statement(
                        self._identity,
                        statement,
                        config_digest=cfg.digest,
                        round_id=cfg.round_id,
                        party=self.party,
                    )
                )
            self._event(Stage.ADVERTISE_KEYS.value)
            self._queue.put(encode_client_message(session.advertise_keys()))
            while True:
                frame = self._next()
                if frame is None:
                    raise AggregatorError(
                        grpc.StatusCode.UNKNOWN,
                        "the aggregator ended the stream without an outcome",
                    )
                if frame.WhichOneof("frame") == "outcome":
                    outcome = frame.outcome
                    if outcome.status == pb.ROUND_STATUS_COMPLETED:
                        # An alarm if the aggregator claims other survivors than the set signed.
                        session.check_outcome(outcome.survivors, bytes(outcome.result_digest))
                    return outcome
                message = decode_server_frame(frame)
                answers = ACTIVE_STAGES[ACTIVE_STAGES.index(type(message).stage) + 1]
                self._event(answers.value, phase="request")
                try:
                    reply = session.receive(message)
                except (ProtocolError, CryptoError):
                    self.cancel()
                    raise
                stage = type(reply).stage.value
                self._event(stage)
                if isinstance(reply, MaskedInput):
                    self._send_masked(reply, chunk_bytes)
                else:
                    self._queue.put(encode_client_message(reply))
        except BaseException:
            self.cancel()
            raise
        finally:
            if not self._closed:  # half-close: nothing more to send
                self._closed = True
                self._queue.put(None)

    def _send_masked(self, message: MaskedInput, chunk_bytes: int) -> None:
        bits = self.params.config.bits
        fmt = next(
            (f for f in words.available_formats(bits) if f in self._formats), words.UINT32_LE
        )
        limit = min(chunk_bytes, self._max_chunk_bytes)
        per_word = 4 if fmt == words.UINT32_LE else bits / 8
        chunk_words = max(8, int(limit // per_word) // 8 * 8)
        header, count, chunks = masked_input_frames(
            message, chunk_words=chunk_words, fmt=fmt, bits=bits
        )
        self._queue.put(header)

        def announced() -> Iterator[pb.ClientFrame]:
            for i, frame in enumerate(chunks):
                self._event(Stage.MASKED_INPUT.value + ":chunk", i, count)
                yield frame

        self._queue.put(announced())


def request_auth(identity: IdentityKey, method: str, fields: bytes) -> pb.RequestAuth:
    """A signed read request: results and records are for roster members and auditors only."""
    return sign_request(identity, method, fields, int(time.time() * 1000))


def fetch_result(
    stub: pb_grpc.AggregatorStub,
    identity: IdentityKey,
    round_id: int,
    *,
    timeout: float | None = None,
    expected_digest: bytes | None = None,
) -> tuple[pb.ResultHeader, npt.NDArray[np.uint32]]:
    """Download a completed round's modular sum; checks offsets, sizes and the digest."""
    request = pb.GetResultRequest(
        round_id=round_id, auth=request_auth(identity, "GetResult", lp_encode(round_id))
    )
    header: pb.ResultHeader | None = None
    total: npt.NDArray[np.uint32] | None = None
    filled = 0
    try:
        for chunk in stub.GetResult(request, timeout=timeout):
            if header is None:
                if not chunk.HasField("header"):
                    raise MaliciousServerError("the result stream does not start with a header")
                header = chunk.header
                if header.format != pb.WORD_FORMAT_UINT32_LE:
                    raise MaliciousServerError("the result uses an unknown word format")
                total = np.empty(header.vector_length, dtype=np.uint32)
                continue
            assert total is not None
            n = len(chunk.data) // 4
            if chunk.offset != filled or len(chunk.data) % 4 or filled + n > len(total):
                raise MaliciousServerError("the result chunks are out of order or oversized")
            total[filled : filled + n] = np.frombuffer(chunk.data, dtype="<u4")
            filled += n
    except grpc.RpcError as exc:
        raise _raise_rpc(exc) from None
    if header is None or total is None or filled != len(total):
        raise MaliciousServerError("the result stream ended early")
    digest = result_digest(total)
    if digest != header.result_digest or (
        expected_digest is not None and digest != expected_digest
    ):
        raise MaliciousServerError("the aggregate does not match its announced digest")
    return header, total
