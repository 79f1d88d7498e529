"""A hand-driven client for misbehaviour tests: raw frames over a real Participate stream."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np

from secagg.crypto import IdentityKey
from secagg.protocol import AdversaryClass, ClientSession, MaskedInput, MemoryLedger, SitePolicy
from secagg.transport._gen.secagg.v1 import aggregator_pb2 as pb
from secagg.transport._gen.secagg.v1 import aggregator_pb2_grpc as pb_grpc
from secagg.transport.codec import (
    RoundParameters,
    decode_server_frame,
    encode_client_message,
    masked_input_frames,
    sign_hello,
    sign_join,
)


class RawStream:
    def __init__(self, target: str, timeout: float = 40.0) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.AggregatorStub(self.channel)
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.call = self.stub.Participate(self._gen(), timeout=timeout)

    def _gen(self) -> Iterator[pb.ClientFrame]:
        while (item := self._q.get()) is not None:
            yield item

    def send(self, frame: pb.ClientFrame) -> None:
        self._q.put(frame)

    def recv(self) -> pb.ServerFrame:
        return next(self.call)  # type: ignore[no-any-return]

    def status(self) -> tuple[grpc.StatusCode, str]:
        """Read until the server ends the stream; return its status."""
        try:
            while True:
                next(self.call)
        except StopIteration:
            pass
        except grpc.RpcError:
            pass
        return self.call.code(), self.call.details() or ""

    def close(self) -> None:
        self._q.put(None)
        self.call.cancel()
        self.channel.close()

    # --- helpers ------------------------------------------------------------------------------

    def hello(self, identity: IdentityKey, key: bytes | None = None) -> pb.Welcome:
        """Answer the stream's challenge with a signed Hello (``key``: claim another key)."""
        nonce = self.recv().challenge.nonce
        raw = identity.public_key.to_bytes() if key is None else key
        signature = sign_hello(identity, nonce)
        self.send(pb.ClientFrame(hello=pb.Hello(identity_public_key=raw, signature=signature)))
        return self.recv().welcome

    def join(self, identity: IdentityKey, welcome: pb.Welcome, **tamper: Any) -> RoundParameters:
        params = RoundParameters.from_proto(welcome.config)
        cfg = params.config
        sig = sign_join(identity, welcome.nonce, cfg.digest, cfg.round_id, welcome.party)
        join = pb.Join(round_id=cfg.round_id, party=welcome.party, signature=sig)
        for field, value in tamper.items():
            setattr(join, field, value)
        self.send(pb.ClientFrame(join=join))
        return params

    def to_masked_input(
        self, identity: IdentityKey, after_join: Any = None
    ) -> tuple[RoundParameters, ClientSession, MaskedInput]:
        """Join honestly and play until the masked input is ready (not sent)."""
        welcome = self.hello(identity)
        params = self.join(identity, welcome)
        if after_join is not None:
            after_join()
        session = relaxed_session(params, welcome.party, identity)
        self.send(encode_client_message(session.advertise_keys()))
        share = session.receive(decode_server_frame(self.recv()))
        self.send(encode_client_message(share))  # type: ignore[arg-type]
        masked = session.receive(decode_server_frame(self.recv()))
        assert isinstance(masked, MaskedInput)
        return params, session, masked

    def masked_frames(self, masked: MaskedInput, chunk_words: int = 1024):
        return masked_input_frames(masked, chunk_words=chunk_words, fmt=1, bits=32)


def relaxed_session(params: RoundParameters, party: int, identity: IdentityKey) -> ClientSession:
    """A session that accepts the test's small thresholds (a relaxed policy, by name)."""
    cfg = params.config
    policy = SitePolicy(
        roster=cfg.roster, adversary=AdversaryClass.CURIOUS_SERVER, corrupt_fraction=0
    )
    zeros = np.zeros(cfg.vector_length, dtype=np.uint32)
    return ClientSession(cfg, party, identity, zeros, policy=policy, ledger=MemoryLedger())


def run_in_thread(fn: Any, *args: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = fn(*args)
        except BaseException as exc:  # reported by the test
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out
