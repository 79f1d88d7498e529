"""Ed25519 identity keys (PyNaCl / libsodium), with every signature bound to a context.

``IdentityKey.sign(context, message)`` signs
``lp_encode(PROTOCOL_VERSION, "sig", context, message)`` rather than the bare message, so a
signature made for one purpose (say, a consistency check) can never be replayed as a signature
for another (say, an audit record), and signatures from other protocols never verify here.
"""

from __future__ import annotations

import hashlib

import nacl.exceptions
import nacl.signing
import nacl.utils

from secagg.crypto._secret import NoExportMixin
from secagg.crypto.transcript import PROTOCOL_VERSION, lp_encode
from secagg.errors import ConfigError, InvalidSignature

__all__ = ["PUBLIC_KEY_BYTES", "SEED_BYTES", "SIGNATURE_BYTES", "IdentityKey", "IdentityPublicKey"]

SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def _signed_payload(context: bytes, message: bytes) -> bytes:
    if not isinstance(context, bytes) or not isinstance(message, bytes):
        raise ConfigError("context and message must be bytes")
    return lp_encode(PROTOCOL_VERSION, "sig", context, message)


class IdentityPublicKey:
    """An Ed25519 public key that verifies context-bound signatures; equal and hashed by bytes."""

    __slots__ = ("_bytes", "_verify_key")

    def __init__(self, key_bytes: bytes) -> None:
        if not isinstance(key_bytes, bytes) or len(key_bytes) != PUBLIC_KEY_BYTES:
            raise ConfigError(f"an Ed25519 public key is exactly {PUBLIC_KEY_BYTES} bytes")
        self._bytes = key_bytes
        self._verify_key = nacl.signing.VerifyKey(key_bytes)

    @classmethod
    def from_bytes(cls, key_bytes: bytes) -> IdentityPublicKey:
        """Load a 32-byte public key (ConfigError for any other length or type)."""
        return cls(key_bytes)

    def to_bytes(self) -> bytes:
        return self._bytes

    def verify(self, signature: bytes, context: bytes, message: bytes) -> None:
        """Return if ``signature`` is valid for ``(context, message)``; raise otherwise.

        Raises:
            InvalidSignature: wrong length or type, forged or altered signature, another context,
                or a public key that is not a valid curve point (libsodium also refuses small-order
                keys and non-canonical encodings).
        """
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
            raise InvalidSignature("signature verification failed")
        try:
            payload = _signed_payload(context, message)
            self._verify_key.verify(payload, signature)
        except (nacl.exceptions.CryptoError, ValueError, TypeError, ConfigError):
            raise InvalidSignature("signature verification failed") from None

    def fingerprint(self) -> str:
        """Short hex id for logs: the first 8 bytes of BLAKE2b(public key)."""
        return hashlib.blake2b(self._bytes).digest()[:8].hex()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IdentityPublicKey):
            return NotImplemented
        return self._bytes == other._bytes

    def __hash__(self) -> int:
        return hash((IdentityPublicKey, self._bytes))

    def __repr__(self) -> str:
        return f"IdentityPublicKey({self.fingerprint()})"


class IdentityKey(NoExportMixin):
    """An Ed25519 signing key; never printed, pickled or copied. Export with ``private_bytes``."""

    __slots__ = ("_public", "_seed", "_signing_key")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
            raise ConfigError(f"an Ed25519 private key seed is exactly {SEED_BYTES} bytes")
        self._seed = seed
        self._signing_key = nacl.signing.SigningKey(seed)
        self._public = IdentityPublicKey(bytes(self._signing_key.verify_key))

    @classmethod
    def generate(cls) -> IdentityKey:
        """A fresh key from the operating system's CSPRNG."""
        return cls(nacl.utils.random(SEED_BYTES))

    @classmethod
    def from_private_bytes(cls, seed: bytes) -> IdentityKey:
        """Load a key from its 32-byte seed (as returned by :meth:`private_bytes`)."""
        return cls(seed)

    def private_bytes(self) -> bytes:
        """Explicit export of the 32-byte secret seed. Handle the result as a secret."""
        return self._seed

    @property
    def public_key(self) -> IdentityPublicKey:
        return self._public

    def sign(self, context: bytes, message: bytes) -> bytes:
        """64-byte Ed25519 signature over lp_encode(PROTOCOL_VERSION, "sig", context, message)."""
        signed = self._signing_key.sign(_signed_payload(context, message))
        return bytes(signed.signature)

    def __repr__(self) -> str:
        return f"IdentityKey(public={self._public.fingerprint()})"
