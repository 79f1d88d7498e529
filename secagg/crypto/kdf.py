"""HKDF-SHA256 key derivation with mandatory, inventoried domain separation.

Every derived key is bound to a *purpose* (one of the ``PURPOSE_*`` constants below, so the labels
in use form a closed inventory), the round, the session and optionally the parties involved::

    salt = PROTOCOL_VERSION (UTF-8)
    info = lp_encode(PROTOCOL_VERSION, purpose, round_id, session_id, *parties)

``parties`` are encoded in the order given; a symmetric quantity such as a pairwise mask seed must
be derived with a canonical order (e.g. ``(min(u, v), max(u, v))``) by the caller.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg.crypto.transcript import PROTOCOL_VERSION, lp_encode
from secagg.errors import ConfigError

__all__ = [
    "PURPOSES",
    "PURPOSE_GRAPH",
    "PURPOSE_NOISE",
    "PURPOSE_PAIRWISE_MASK",
    "PURPOSE_ROUNDING",
    "PURPOSE_SHARE_AEAD",
    "PURPOSE_SHARE_INBOX",
    "derive_key",
]

PURPOSE_PAIRWISE_MASK = "pairwise-mask"
PURPOSE_SHARE_AEAD = "share-aead"
PURPOSE_SHARE_INBOX = "share-inbox"
PURPOSE_GRAPH = "neighbour-graph"
PURPOSE_ROUNDING = "stochastic-rounding"
PURPOSE_NOISE = "dp-noise"

PURPOSES: frozenset[str] = frozenset(
    {
        PURPOSE_PAIRWISE_MASK,
        PURPOSE_SHARE_AEAD,
        PURPOSE_SHARE_INBOX,
        PURPOSE_GRAPH,
        PURPOSE_ROUNDING,
        PURPOSE_NOISE,
    }
)

_MIN_SECRET_BYTES = 16
_MAX_LENGTH = 255 * 32  # HKDF-SHA256 limit


def derive_key(
    secret: bytes,
    *,
    purpose: str,
    round_id: int,
    session_id: bytes,
    parties: tuple[int, ...] = (),
    length: int = 32,
) -> bytes:
    """Derive ``length`` bytes from ``secret`` for one purpose, round, session and party tuple.

    Raises:
        ConfigError: unknown purpose; secret shorter than 16 bytes or not bytes; session_id not
            bytes; round_id or a party id not an int in ``[0, 2**64)``; length outside
            ``[1, 8160]``.
    """
    if purpose not in PURPOSES:
        raise ConfigError(f"unknown KDF purpose {purpose!r}; add it to secagg.crypto.kdf")
    if not isinstance(secret, bytes) or len(secret) < _MIN_SECRET_BYTES:
        raise ConfigError(f"KDF secret must be at least {_MIN_SECRET_BYTES} bytes")
    if not isinstance(session_id, bytes):
        raise ConfigError("session_id must be bytes")
    if not isinstance(round_id, int):
        raise ConfigError("round_id must be an int")
    if not isinstance(parties, tuple) or not all(isinstance(p, int) for p in parties):
        raise ConfigError("parties must be a tuple of ints")
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= _MAX_LENGTH:
        raise ConfigError(f"length must be an int in [1, {_MAX_LENGTH}]")
    info = lp_encode(PROTOCOL_VERSION, purpose, round_id, session_id, *parties)
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=length,
        salt=PROTOCOL_VERSION.encode("utf-8"),
        info=info,
    )
    return hkdf.derive(secret)
