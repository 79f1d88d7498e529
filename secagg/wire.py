"""Bytes-level serialisation of the sans-IO protocol messages, for stacks with their own transport.

An embedding stack (Flower, a home-grown scheduler, a message queue...) moves opaque ``bytes``
between the parties; this module turns :mod:`secagg.protocol` messages into those bytes and back,
with the same protobuf schema (``proto/secagg/v1/aggregator.proto``) and the same checks as the
gRPC service (:mod:`secagg.transport.codec`).

Format: an encoded message is a sequence of **length-delimited protobuf frames** (each frame is a
base-128 varint byte count followed by that many bytes, as protobuf's ``writeDelimitedTo``):

* a client message is ``secagg.v1.ClientFrame`` frames: one frame, except a
  :class:`~secagg.protocol.MaskedInput`, which is a ``MaskedInputHeader`` frame followed by its
  ``MaskedInputChunk`` frames (so a vector never has to fit in one protobuf message);
* a server message is exactly one ``secagg.v1.ServerFrame`` frame.

Decoding trusts nothing: sizes are bounded (``max_bytes``), every length and shape is checked, and
any defect raises :class:`~secagg.errors.MalformedMessage`. Signatures are *not* checked here: the
receiving session does that (:meth:`ServerSession.receive`, :meth:`ClientSession.receive`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from google.protobuf.message import DecodeError

from secagg.errors import MalformedMessage
from secagg.protocol import (
    AdvertiseKeys,
    ClientMessage,
    ConsistencySignature,
    MaskedInput,
    RoundConfig,
    ServerMessage,
    ShareKeys,
    UnmaskShares,
)
from secagg.transport import codec, words
from secagg.transport._gen.secagg.v1 import aggregator_pb2 as pb

__all__ = [
    "DEFAULT_MAX_BYTES",
    "decode_client_message",
    "decode_server_message",
    "encode_client_message",
    "encode_server_message",
]

DEFAULT_MAX_BYTES = 1 << 31
"""Refuse encoded messages larger than this (2 GiB) unless the caller allows more."""

_DEFAULT_CHUNK_WORDS = codec.DEFAULT_CHUNK_WORDS
_MAX_VARINT_BYTES = 10


# --- length-delimited frames ------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _delimited(frame: pb.ClientFrame | pb.ServerFrame) -> bytes:
    body = frame.SerializeToString()
    return _varint(len(body)) + body


def _frames(data: bytes | bytearray | memoryview, max_bytes: int) -> Iterator[memoryview]:
    """Split ``data`` into its length-delimited frames (checked, never trusted)."""
    view = memoryview(data).cast("B")
    if len(view) > max_bytes:
        raise MalformedMessage(f"the message is {len(view)} bytes, the limit is {max_bytes}")
    if not len(view):
        raise MalformedMessage("the message is empty")
    pos = 0
    while pos < len(view):
        size, shift = 0, 0
        while True:
            if pos >= len(view) or shift >= 7 * _MAX_VARINT_BYTES:
                raise MalformedMessage("truncated or invalid frame length")
            byte = view[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if size > len(view) - pos:
            raise MalformedMessage(f"a frame announces {size} bytes, only {len(view) - pos} remain")
        yield view[pos : pos + size]
        pos += size


def _parse_client(body: memoryview) -> pb.ClientFrame:
    frame = pb.ClientFrame()
    try:
        frame.ParseFromString(bytes(body))
    except (DecodeError, ValueError) as exc:
        raise MalformedMessage(f"not a valid ClientFrame: {exc}") from exc
    return frame


def _parse_server(body: memoryview) -> pb.ServerFrame:
    frame = pb.ServerFrame()
    try:
        frame.ParseFromString(bytes(body))
    except (DecodeError, ValueError) as exc:
        raise MalformedMessage(f"not a valid ServerFrame: {exc}") from exc
    return frame


# --- client messages ----------------------------------------------------------------------------


def encode_client_message(
    message: ClientMessage, *, bits: int = 32, chunk_words: int = _DEFAULT_CHUNK_WORDS
) -> bytes:
    """Serialise a client message to bytes.

    ``bits`` is the round's bit width: below 32, masked inputs are packed in ``bits`` bits per
    element when the kernels provide packing (``secagg.transport.words``), else sent as uint32.
    """
    if isinstance(message, MaskedInput):
        fmt = words.available_formats(bits)[0]
        header, _, chunks = codec.masked_input_frames(
            message, chunk_words=chunk_words, fmt=fmt, bits=bits
        )
        return b"".join([_delimited(header), *(_delimited(c) for c in chunks)])
    if isinstance(message, AdvertiseKeys | ShareKeys | ConsistencySignature | UnmaskShares):
        return _delimited(codec.encode_client_message(message))
    raise TypeError(f"not a client message: {type(message).__name__}")


def decode_client_message(
    data: bytes | bytearray | memoryview,
    *,
    config: RoundConfig | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ClientMessage:
    """Parse bytes from :func:`encode_client_message` into a (not yet verified) client message.

    Give the round's ``config`` wherever masked inputs may arrive: their length and bit width are
    checked against it (and packed inputs need ``bits`` to be read). Without it, only uint32
    masked inputs are accepted, of whatever length ``max_bytes`` allows.
    """
    frames = _frames(data, max_bytes)
    first = _parse_client(next(frames))
    if first.WhichOneof("frame") != "masked_input_header":
        message = codec.decode_client_message(first)
        if next(frames, None) is not None:
            raise MalformedMessage("trailing bytes after a single-frame client message")
        return message
    return _decode_masked_input(first.masked_input_header, frames, config)


def _decode_masked_input(
    header: pb.MaskedInputHeader, frames: Iterator[memoryview], config: RoundConfig | None
) -> MaskedInput:
    bits = 32 if config is None else config.bits
    if config is not None and header.length != config.vector_length:
        raise MalformedMessage(
            f"masked input has length {header.length}, the round's vectors have "
            f"{config.vector_length}"
        )
    if config is not None and header.round_id != config.round_id:
        raise MalformedMessage(f"masked input for round {header.round_id}, not this round")
    accepted = words.available_formats(bits)
    if header.format not in accepted:
        raise MalformedMessage(
            f"masked input format {header.format} is not readable here (accepted: {accepted})"
        )
    if header.chunk_words < 8 or header.chunk_words % 8:
        raise MalformedMessage("chunk_words must be a positive multiple of 8")
    if header.length < 1:
        raise MalformedMessage("masked input is empty")
    count = max(1, math.ceil(header.length / header.chunk_words))
    if header.chunk_count != count:
        raise MalformedMessage(
            f"{header.length} words in chunks of {header.chunk_words} make {count} chunks, "
            f"not {header.chunk_count}"
        )
    fmt = int(header.format)
    vector = np.empty(int(header.length), dtype=np.uint32)
    for index in range(count):
        body = next(frames, None)
        if body is None:
            raise MalformedMessage(f"the masked input ended after {index} of {count} chunks")
        frame = _parse_client(body)
        if frame.WhichOneof("frame") != "masked_input_chunk":
            raise MalformedMessage("a masked input header must be followed by its chunks only")
        chunk = frame.masked_input_chunk
        offset = index * header.chunk_words
        if chunk.index != index or chunk.offset != offset:
            raise MalformedMessage(
                f"chunk {chunk.index} at offset {chunk.offset} is out of order: expected chunk "
                f"{index} at offset {offset}"
            )
        n = min(int(header.chunk_words), int(header.length) - offset)
        want = words.chunk_bytes(n, fmt, bits)
        if len(chunk.data) != want:
            raise MalformedMessage(f"chunk {index} carries {len(chunk.data)} bytes, not {want}")
        vector[offset : offset + n] = words.decode_words(chunk.data, fmt, bits, n)
    if next(frames, None) is not None:
        raise MalformedMessage("trailing frames after the last masked-input chunk")
    if bits < 32 and int(vector.max(initial=0)) >= 1 << bits:
        raise MalformedMessage(f"masked input has values outside Z_(2^{bits})")
    vector.flags.writeable = False
    return MaskedInput(
        int(header.round_id),
        int(header.sender),
        header.session_id,
        vector,
        header.signature,
        codec.complaints_from_proto(header.complaints),
    )


# --- server messages ----------------------------------------------------------------------------


def encode_server_message(message: ServerMessage) -> bytes:
    """Serialise a server message to bytes (one length-delimited ``ServerFrame``)."""
    return _delimited(codec.encode_server_message(message))


def decode_server_message(
    data: bytes | bytearray | memoryview, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> ServerMessage:
    """Parse bytes from :func:`encode_server_message` into a server message."""
    frames = _frames(data, max_bytes)
    frame = _parse_server(next(frames))
    if next(frames, None) is not None:
        raise MalformedMessage("trailing bytes after the server frame")
    return codec.decode_server_frame(frame)
