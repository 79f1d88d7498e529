"""Cryptographic primitives of secagg: thin, misuse-resistant calls into PyNaCl/``cryptography``.

* :mod:`~secagg.crypto.transcript`: canonical length-prefixed encoding and transcript digests;
* :mod:`~secagg.crypto.signing`: Ed25519 identity keys with context-bound signatures;
* :mod:`~secagg.crypto.kx`: X25519 key agreement;
* :mod:`~secagg.crypto.kdf`: HKDF-SHA256 with an inventory of purposes;
* :mod:`~secagg.crypto.aead`: XChaCha20-Poly1305 with random nonces;
* :mod:`~secagg.crypto.prg`: AES-256-CTR mask expansion (the hot path);
* :mod:`~secagg.crypto.shamir`: vectorised t-of-n Shamir sharing of 32-byte secrets;
* :mod:`~secagg.crypto.rng`: the injectable randomness source (the OS CSPRNG by default).
"""

from __future__ import annotations

from secagg.crypto.aead import open_sealed, seal
from secagg.crypto.kdf import (
    PURPOSE_GRAPH,
    PURPOSE_NOISE,
    PURPOSE_PAIRWISE_MASK,
    PURPOSE_ROUNDING,
    PURPOSE_SHARE_AEAD,
    PURPOSE_SHARE_INBOX,
    PURPOSES,
    derive_key,
)
from secagg.crypto.kx import KeyAgreementKey, check_public_key, exchange
from secagg.crypto.prg import SEED_BYTES, expand_mask, fill_mask, random_seed, uniform_floats
from secagg.crypto.rng import SYSTEM_RANDOM, DeterministicRandom, RandomSource
from secagg.crypto.shamir import (
    FIELD_PRIME,
    SHARE_BYTES,
    reconstruct,
    reconstruct_many,
    split,
    split_many,
)
from secagg.crypto.signing import IdentityKey, IdentityPublicKey
from secagg.crypto.transcript import PROTOCOL_VERSION, lp_encode, transcript_digest

__all__ = [
    "FIELD_PRIME",
    "PROTOCOL_VERSION",
    "PURPOSES",
    "PURPOSE_GRAPH",
    "PURPOSE_NOISE",
    "PURPOSE_PAIRWISE_MASK",
    "PURPOSE_ROUNDING",
    "PURPOSE_SHARE_AEAD",
    "PURPOSE_SHARE_INBOX",
    "SEED_BYTES",
    "SHARE_BYTES",
    "SYSTEM_RANDOM",
    "DeterministicRandom",
    "IdentityKey",
    "IdentityPublicKey",
    "KeyAgreementKey",
    "RandomSource",
    "check_public_key",
    "derive_key",
    "exchange",
    "expand_mask",
    "fill_mask",
    "lp_encode",
    "open_sealed",
    "random_seed",
    "reconstruct",
    "reconstruct_many",
    "seal",
    "split",
    "split_many",
    "transcript_digest",
    "uniform_floats",
]
