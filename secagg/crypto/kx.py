"""X25519 key agreement (PyNaCl / libsodium ``crypto_scalarmult``).

The result is the raw 32-byte X25519 output. Never use it as a key directly: feed it to
:func:`secagg.crypto.kdf.derive_key` with a purpose, round and session.
"""

from __future__ import annotations

import hmac

import nacl.bindings
import nacl.exceptions

from secagg.crypto._secret import NoExportMixin
from secagg.crypto.rng import RandomSource, resolve
from secagg.errors import ConfigError, CryptoError

__all__ = ["KEY_BYTES", "KeyAgreementKey", "check_public_key", "exchange"]

KEY_BYTES = 32
_ZERO = bytes(KEY_BYTES)
_P = 2**255 - 19
# The encodings of the points of order 1, 2, 4 and 8 on Curve25519, top bit cleared: libsodium's
# own blocklist (crypto_scalarmult/curve25519/ref10/x25519_ref10.c, ``has_small_order``). With a
# clamped scalar they, and only they, make X25519 output all zeros, i.e. a secret everybody knows.
_LOW_ORDER = frozenset(
    u.to_bytes(KEY_BYTES, "little")
    for u in (
        0,
        1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
        _P - 1,
        _P,
        _P + 1,
    )
)


def check_public_key(public: bytes) -> None:
    """Refuse anything but a 32-byte X25519 public key that is not a low-order point.

    A byte-level check (no scalar multiplication), so a server can run it on every advertised key
    of a large round. Raises:
        CryptoError: not 32 bytes, or a low-order point (with or without the ignored top bit).
    """
    if not isinstance(public, bytes) or len(public) != KEY_BYTES:
        raise CryptoError("an X25519 public key is exactly 32 bytes")
    if public[:31] + bytes([public[31] & 0x7F]) in _LOW_ORDER:
        raise CryptoError("the X25519 public key is a low-order point")


def _check_private(private_bytes: bytes) -> None:
    if not isinstance(private_bytes, bytes) or len(private_bytes) != KEY_BYTES:
        raise ConfigError(f"an X25519 private key is exactly {KEY_BYTES} bytes")


def exchange(private_bytes: bytes, peer_public: bytes) -> bytes:
    """X25519(private_bytes, peer_public): the 32-byte raw shared secret.

    Used by the server to recompute the pairwise masks of a dropped client from a private key it
    reconstructed from Shamir shares.

    Raises:
        ConfigError: ``private_bytes`` is not 32 bytes.
        CryptoError: ``peer_public`` is not 32 bytes, or is a low-order point (the shared secret
            would be all zeros, i.e. known to everybody).
    """
    _check_private(private_bytes)
    if not isinstance(peer_public, bytes) or len(peer_public) != KEY_BYTES:
        raise CryptoError("peer public key is not a 32-byte X25519 key")
    try:
        shared = nacl.bindings.crypto_scalarmult(private_bytes, peer_public)
    except (nacl.exceptions.CryptoError, nacl.exceptions.RuntimeError, ValueError, TypeError):
        # libsodium itself refuses an all-zero result; report it like our own check below.
        raise CryptoError("key agreement failed: peer public key is a low-order point") from None
    if hmac.compare_digest(shared, _ZERO):
        raise CryptoError("key agreement failed: peer public key is a low-order point")
    return bytes(shared)


class KeyAgreementKey(NoExportMixin):
    """An X25519 private key; never printed, pickled or copied. Export with ``private_bytes``."""

    __slots__ = ("_private", "_public")

    def __init__(self, private_bytes: bytes) -> None:
        _check_private(private_bytes)
        self._private = private_bytes
        self._public = bytes(nacl.bindings.crypto_scalarmult_base(private_bytes))

    @classmethod
    def generate(cls, rng: RandomSource | None = None) -> KeyAgreementKey:
        """A fresh key from ``rng`` (the operating system's CSPRNG by default)."""
        return cls(resolve(rng).random_bytes(KEY_BYTES))

    @classmethod
    def from_private_bytes(cls, private_bytes: bytes) -> KeyAgreementKey:
        """Load a 32-byte private key (as returned by :meth:`private_bytes`)."""
        return cls(private_bytes)

    def private_bytes(self) -> bytes:
        """Explicit export of the 32-byte private key. Handle the result as a secret."""
        return self._private

    @property
    def public_bytes(self) -> bytes:
        """The 32-byte X25519 public key."""
        return self._public

    def exchange(self, peer_public: bytes) -> bytes:
        """The 32-byte raw shared secret with ``peer_public`` (see the module :func:`exchange`)."""
        return exchange(self._private, peer_public)

    def __repr__(self) -> str:
        return f"KeyAgreementKey(public={self._public[:8].hex()})"
