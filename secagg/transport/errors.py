"""Transport errors and the one table that maps every error to a gRPC status code.

The protocol core raises the typed errors of :mod:`secagg.errors`; the transport adds the few
situations only a network service has (a missed deadline, a limit, a second stream for one party).
:func:`status_for` maps any of them to ``(grpc.StatusCode, message)``; :func:`error_from_status`
turns a status received by a client back into an exception.
"""

from __future__ import annotations

import grpc

from secagg.errors import (
    CheatingDetected,
    ConfigError,
    CryptoError,
    DecryptionError,
    InvalidSignature,
    LocalProtocolError,
    MalformedMessage,
    MaliciousServerError,
    PolicyViolation,
    ReplayedMessage,
    RoundAborted,
    SecAggError,
    ShamirError,
    UnexpectedMessage,
    UnknownParty,
)

__all__ = [
    "STATUS_TABLE",
    "AggregatorError",
    "AlreadyConnected",
    "DeadlineMissed",
    "LimitExceeded",
    "LocalFailure",
    "NotFound",
    "NotJoinable",
    "ShuttingDown",
    "TransportError",
    "UnknownIdentity",
    "error_from_status",
    "status_for",
]


class TransportError(SecAggError):
    """A rejection that only exists in the network service."""


class DeadlineMissed(TransportError):
    """The party did not complete a stage before its deadline; it is a dropout."""


class LimitExceeded(TransportError):
    """A message, chunk, stream or the number of connections exceeds the service's limits."""


class NotJoinable(TransportError):
    """No round is open for joining (finished, past its first stage, or the service is done)."""


class AlreadyConnected(TransportError):
    """The party already has a live stream in this round."""


class UnknownIdentity(TransportError):
    """The identity key is not in the round's roster."""


class NotFound(TransportError):
    """The requested round or result does not exist."""


class ShuttingDown(TransportError):
    """The aggregator is shutting down."""


class LocalFailure(TransportError):
    """The aggregator itself failed (disk full, out of file descriptors): not the site's fault."""


class AggregatorError(SecAggError):
    """A client-side view of a gRPC status the aggregator answered with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


# Most specific first: the first matching row wins.
STATUS_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    # transport
    (DeadlineMissed, grpc.StatusCode.DEADLINE_EXCEEDED),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotJoinable, grpc.StatusCode.FAILED_PRECONDITION),
    (AlreadyConnected, grpc.StatusCode.ALREADY_EXISTS),
    (UnknownIdentity, grpc.StatusCode.PERMISSION_DENIED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (ShuttingDown, grpc.StatusCode.UNAVAILABLE),
    (LocalFailure, grpc.StatusCode.UNAVAILABLE),
    # protocol core (secagg.errors)
    (MalformedMessage, grpc.StatusCode.INVALID_ARGUMENT),
    (UnexpectedMessage, grpc.StatusCode.FAILED_PRECONDITION),
    (ReplayedMessage, grpc.StatusCode.ALREADY_EXISTS),
    (UnknownParty, grpc.StatusCode.PERMISSION_DENIED),
    (InvalidSignature, grpc.StatusCode.UNAUTHENTICATED),
    (CheatingDetected, grpc.StatusCode.PERMISSION_DENIED),
    (PolicyViolation, grpc.StatusCode.FAILED_PRECONDITION),
    (RoundAborted, grpc.StatusCode.ABORTED),
    (MaliciousServerError, grpc.StatusCode.FAILED_PRECONDITION),
    (DecryptionError, grpc.StatusCode.INVALID_ARGUMENT),
    (ShamirError, grpc.StatusCode.INVALID_ARGUMENT),
    (CryptoError, grpc.StatusCode.INVALID_ARGUMENT),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (LocalProtocolError, grpc.StatusCode.INTERNAL),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and a human-readable message for ``exc``.

    Errors not in the table are internal errors; their text is not sent (it could say anything).
    """
    for kind, code in STATUS_TABLE:
        if isinstance(exc, kind):
            if isinstance(exc, RoundAborted):
                return code, f"round aborted at stage {exc.stage}: {exc.reason}"
            return code, str(exc) or kind.__name__
    return grpc.StatusCode.INTERNAL, "internal error in the aggregator (see its log)"


_ABORT_PREFIX = "round aborted at stage "


def error_from_status(code: grpc.StatusCode, details: str | None) -> SecAggError:
    """The exception a client raises for a status the aggregator ended a call with."""
    text = details or ""
    if code is grpc.StatusCode.ABORTED and text.startswith(_ABORT_PREFIX):
        stage, _, reason = text[len(_ABORT_PREFIX) :].partition(": ")
        return RoundAborted(stage, reason)
    return AggregatorError(code, text)
