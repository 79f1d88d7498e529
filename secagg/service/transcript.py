"""A round's signed transcript, retained so that an auditor can recompute the released aggregate.

The aggregator keeps, per round, every client message it accepted, exactly as signed: the
advertisements, share entries, masked inputs (with their complaints), consistency signatures and
unmask shares, in a folder ``transcripts/round-<id>/``:

* ``params.pb``: the round parameters (``secagg.v1.RoundConfig``), which recompute the config
  digest every signature is bound to;
* ``messages.bin``: length-delimited ``secagg.v1.ClientFrame`` frames in the order accepted (a
  masked input is its header frame only);
* ``masked-<party>.u32``: each masked input's words, little-endian uint32.

:func:`replay` feeds it all into a fresh :class:`~secagg.protocol.ServerSession`, which checks
every signature, commitment and complaint again, closes each stage, unmasks and returns the
aggregate: the released sum is exactly the sum of the inputs these sites signed, nothing added and
no one left out, or the replay says which message does not fit. Storage: about ``4 n m`` bytes per
round at b = 32 (the masked inputs). Masked inputs reveal nothing on their own: each is the input
plus a uniform self mask and pairwise masks (SECURITY.md); the transcript tells an auditor what the
aggregator learnt, the sum, and no more.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from secagg.audit.record import AuditError
from secagg.errors import MalformedMessage, SecAggError
from secagg.protocol import (
    ACTIVE_STAGES,
    AggregateResult,
    ClientMessage,
    MaskedInput,
    ServerSession,
)
from secagg.store.faults import inject
from secagg.transport._gen.secagg.v1 import aggregator_pb2 as pb
from secagg.transport.codec import (
    RoundParameters,
    complaints_from_proto,
    decode_client_message,
    encode_client_message,
    masked_input_frames,
)
from secagg.wire import _delimited, _frames, _parse_client

__all__ = ["TranscriptWriter", "read_transcript", "replay", "transcript_dir"]

_MAX_TRANSCRIPT = 1 << 40


def transcript_dir(data_dir: Path, round_id: int) -> Path:
    return data_dir / "transcripts" / f"round-{round_id}"


class TranscriptWriter:
    """Appends a round's accepted messages to its transcript folder (see the module doc)."""

    def __init__(self, directory: Path, params: RoundParameters) -> None:
        self.directory = directory
        if directory.exists():
            shutil.rmtree(directory)  # a stale folder of an interrupted attempt at this round id
        directory.mkdir(parents=True)
        (directory / "params.pb").write_bytes(params.to_proto().SerializeToString())
        self._messages = open(directory / "messages.bin", "ab")  # noqa: SIM115 - closed in close()

    def add(self, message: ClientMessage, masked_file: Path | None = None) -> None:
        """Record an accepted message; a masked input's words move from ``masked_file``."""
        inject("transcript", message.round_id)
        if isinstance(message, MaskedInput):
            header, _, _ = masked_input_frames(message, chunk_words=8, fmt=1, bits=32)
            target = self.directory / f"masked-{message.sender}.u32"
            if masked_file is not None:
                os.replace(masked_file, target)
            else:
                np.ascontiguousarray(message.masked_vector, dtype="<u4").tofile(target)
            self._messages.write(_delimited(header))
        else:
            self._messages.write(_delimited(encode_client_message(message)))

    def close(self) -> None:
        self._messages.flush()
        os.fsync(self._messages.fileno())
        self._messages.close()

    def abandon(self) -> None:
        """Delete an incomplete transcript: a partial one would not replay to the record."""
        with contextlib.suppress(OSError):
            self._messages.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def read_transcript(directory: Path) -> tuple[RoundParameters, Iterator[ClientMessage]]:
    """The round parameters and the messages of a transcript folder, in the order accepted."""
    try:
        proto = pb.RoundConfig.FromString((directory / "params.pb").read_bytes())
        data = (directory / "messages.bin").read_bytes()
    except FileNotFoundError as exc:
        raise AuditError(f"{directory}: no transcript ({exc.filename} is missing)") from None
    params = RoundParameters.from_proto(proto)
    cfg = params.config

    def messages() -> Iterator[ClientMessage]:
        for body in _frames(data, _MAX_TRANSCRIPT):
            frame = _parse_client(body)
            if frame.WhichOneof("frame") != "masked_input_header":
                yield decode_client_message(frame)
                continue
            h = frame.masked_input_header
            path = directory / f"masked-{h.sender}.u32"
            if not path.is_file() or path.stat().st_size != 4 * cfg.vector_length:
                raise MalformedMessage(f"the masked input of party {h.sender} is missing or short")
            vector = np.memmap(path, dtype="<u4", mode="r", shape=(cfg.vector_length,))
            yield MaskedInput(
                int(h.round_id),
                int(h.sender),
                h.session_id,
                vector.view(np.uint32),
                h.signature,
                complaints_from_proto(h.complaints),
            )

    return params, messages()


def replay(directory: Path) -> AggregateResult:
    """Recompute a round's aggregate from its transcript alone (AuditError naming the message
    that does not fit, or the stage that could not close)."""
    params, messages = read_transcript(directory)
    session = ServerSession(params.config)
    pending = iter(messages)
    message = next(pending, None)
    for stage in ACTIVE_STAGES:
        while message is not None and type(message).stage is stage:
            try:
                session.receive(message)
            except SecAggError as exc:
                raise AuditError(
                    f"the {stage.value} message of party {message.sender} does not verify: {exc}"
                ) from None
            message = next(pending, None)
        try:
            session.close_stage()
        except SecAggError as exc:
            raise AuditError(f"the transcript cannot close stage {stage.value}: {exc}") from None
    if message is not None:
        raise AuditError(f"a {type(message).__name__} of party {message.sender} is out of order")
    return session.result
