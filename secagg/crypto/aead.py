"""XChaCha20-Poly1305 (IETF) authenticated encryption via libsodium.

``seal`` draws a fresh random 24-byte nonce for every message and prepends it, so the caller never
manages nonces (192-bit random nonces do not collide in practice). ``open_sealed`` raises one
generic :class:`~secagg.errors.DecryptionError` for every failure, so errors reveal nothing about
which check failed.
"""

from __future__ import annotations

import nacl.bindings
import nacl.exceptions

from secagg.crypto.rng import RandomSource, resolve
from secagg.errors import ConfigError, DecryptionError

__all__ = ["KEY_BYTES", "NONCE_BYTES", "OVERHEAD_BYTES", "TAG_BYTES", "open_sealed", "seal"]

KEY_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_KEYBYTES
NONCE_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
TAG_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES
OVERHEAD_BYTES = NONCE_BYTES + TAG_BYTES
"""len(seal(k, m, ad)) == len(m) + OVERHEAD_BYTES."""

_DECRYPTION_FAILED = "decryption failed"


def _check_key(key: bytes) -> None:
    # A wrong key length is the caller's mistake, not the peer's, hence ConfigError.
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ConfigError(f"AEAD key must be exactly {KEY_BYTES} bytes")


def seal(
    key: bytes, plaintext: bytes, associated_data: bytes, *, rng: RandomSource | None = None
) -> bytes:
    """Encrypt and authenticate: ``nonce (24 bytes) || ciphertext || tag (16 bytes)``.

    ``associated_data`` is authenticated but not encrypted; bind it to the round, session, sender
    and recipient (e.g. with ``lp_encode``) so a box cannot be replayed elsewhere. The nonce comes
    from ``rng`` (the OS CSPRNG by default).

    Raises:
        ConfigError: key not 32 bytes, or plaintext / associated_data not bytes.
    """
    _check_key(key)
    if not isinstance(plaintext, bytes) or not isinstance(associated_data, bytes):
        raise ConfigError("plaintext and associated_data must be bytes")
    nonce = resolve(rng).random_bytes(NONCE_BYTES)
    ciphertext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, associated_data, nonce, key
    )
    return nonce + ciphertext


def open_sealed(key: bytes, box: bytes, associated_data: bytes) -> bytes:
    """Authenticate and decrypt a box made by :func:`seal`.

    Raises:
        ConfigError: key not 32 bytes (a local mistake).
        DecryptionError: anything wrong with ``box`` or ``associated_data`` (too short, altered,
            wrong key, wrong associated data, wrong type); always the same message.
    """
    _check_key(key)
    if (
        not isinstance(box, bytes)
        or not isinstance(associated_data, bytes)
        or len(box) < OVERHEAD_BYTES
    ):
        raise DecryptionError(_DECRYPTION_FAILED)
    nonce, ciphertext = box[:NONCE_BYTES], box[NONCE_BYTES:]
    try:
        return bytes(
            nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                ciphertext, associated_data, nonce, key
            )
        )
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise DecryptionError(_DECRYPTION_FAILED) from None
