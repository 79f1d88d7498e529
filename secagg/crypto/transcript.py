"""Canonical, unambiguous encoding of transcripts that are signed, hashed or used as KDF info.

Every part is written as ``tag || length || content``:

* ``tag`` is one byte: ``b`` for :class:`bytes`, ``s`` for :class:`str` (UTF-8), ``i`` for
  :class:`int`;
* ``length`` is the content length as an 8-byte big-endian unsigned integer;
* ``content`` is the raw bytes, the UTF-8 encoding of the string, or the integer as 8 bytes
  big-endian (unsigned, so integers must lie in ``[0, 2**64)``).

Because each part carries its type and length, two different part lists never encode to the same
bytes (``lp_encode(b"ab", b"c") != lp_encode(b"a", b"bc")``, ``lp_encode("1") != lp_encode(1)``).
"""

from __future__ import annotations

import hashlib

from secagg.errors import ConfigError

__all__ = ["PROTOCOL_VERSION", "lp_encode", "transcript_digest"]

PROTOCOL_VERSION = "secagg/v1"
"""Protocol label bound into every signature, KDF info and transcript digest."""

_INT_LIMIT = 1 << 64
_LEN = 8


def _encode_part(part: bytes | str | int) -> bytes:
    # bool is a subclass of int; refusing it keeps True and 1 from meaning the same thing silently.
    if isinstance(part, bool):
        raise ConfigError("transcript parts must be bytes, str or int, not bool")
    if isinstance(part, (bytes, bytearray, memoryview)):
        tag, content = b"b", bytes(part)
    elif isinstance(part, str):
        tag, content = b"s", part.encode("utf-8")
    elif isinstance(part, int):
        if not 0 <= part < _INT_LIMIT:
            raise ConfigError("transcript integers must lie in [0, 2**64)")
        tag, content = b"i", part.to_bytes(_LEN, "big")
    else:
        raise ConfigError(f"transcript parts must be bytes, str or int, not {type(part).__name__}")
    return tag + len(content).to_bytes(_LEN, "big") + content


def lp_encode(*parts: bytes | str | int) -> bytes:
    """Encode ``parts`` canonically (type tag, 8-byte big-endian length, content for each).

    Raises:
        ConfigError: a part is not bytes/str/int, is a bool, or is an int outside ``[0, 2**64)``.
    """
    return b"".join(_encode_part(p) for p in parts)


def transcript_digest(*parts: bytes | str | int) -> bytes:
    """Return the 32-byte BLAKE2b-256 digest of ``lp_encode(*parts)``."""
    return hashlib.blake2b(lp_encode(*parts), digest_size=32).digest()
