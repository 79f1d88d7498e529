"""Signed update chunks: every ciphertext a site sends carries its roster identity's signature.

A signed chunk is the chunk wire form (``secagg.he.packing``) followed by a 64-byte Ed25519
signature (:class:`secagg.crypto.IdentityKey`, context-bound like the protocol messages in
``secagg.protocol.messages``):

* context ``lp_encode("ckks-update-chunk", round_id, site_id, parameters digest, key id,
  layout digest)``: a signature is valid for one round, one site, one key and one layout only;
* message ``lp_encode("ckks-update-chunk", index, count, BLAKE2b-256(chunk bytes))``: it covers the
  whole chunk (header and ciphertext) and its position.

The aggregator checks these signatures when it adds an update; the key holder checks them again
(it trusts nobody's word) and recomputes the sum from the signed ciphertexts before it decrypts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

import tenseal as ts

from secagg.crypto import IdentityKey, IdentityPublicKey, lp_encode
from secagg.crypto.signing import SIGNATURE_BYTES
from secagg.errors import ConfigError, HEError, InvalidSignature
from secagg.he.packing import KIND_UPDATE, Layout, check_site_id, load_ciphertext, parse_chunk
from secagg.he.params import CkksParameters

__all__ = [
    "SIGNATURE_BYTES",
    "MissingSignersError",
    "check_roster",
    "check_round_id",
    "chunk_signing_context",
    "open_signed_update",
    "sign_chunk",
    "split_signed_chunk",
    "verify_chunk_signature",
]

_LABEL: Final = "ckks-update-chunk"
_ROUND_LIMIT: Final = 2**63


class MissingSignersError(HEError):
    """Decryption refused: sites whose signed ciphertexts the key holder needed are missing.

    ``missing`` names them (sorted): sites the encrypted sum claims without a valid signed
    contribution, or, when too few roster members signed, the roster members that did not.
    """

    def __init__(self, missing: Iterable[str], reason: str) -> None:
        self.missing: tuple[str, ...] = tuple(sorted(missing))
        super().__init__(f"{reason}; missing signers: {', '.join(self.missing) or '(none)'}")


def check_round_id(round_id: object) -> int:
    """Return ``round_id`` if it is an int in ``[0, 2**63)`` (ConfigError otherwise)."""
    if not isinstance(round_id, int) or isinstance(round_id, bool):
        raise ConfigError("round_id must be an int")
    if not 0 <= round_id < _ROUND_LIMIT:
        raise ConfigError("round_id must lie in [0, 2**63)")
    return round_id


def check_roster(roster: object) -> Mapping[str, IdentityPublicKey]:
    """A read-only copy of ``roster`` (site id -> Ed25519 public key), checked.

    Raises:
        ConfigError: not a non-empty mapping of valid site ids to ``IdentityPublicKey``.
    """
    if not isinstance(roster, Mapping) or not roster:
        raise ConfigError("roster must be a non-empty mapping of site ids to IdentityPublicKey")
    out: dict[str, IdentityPublicKey] = {}
    for site_id, key in roster.items():
        check_site_id(site_id)
        if not isinstance(key, IdentityPublicKey):
            raise ConfigError(f"roster entry {site_id!r} is not an IdentityPublicKey")
        out[site_id] = key
    return MappingProxyType(out)


def chunk_signing_context(
    *, round_id: int, site_id: str, params_digest: bytes, key_id: bytes, layout_digest: bytes
) -> bytes:
    """What every chunk signature of ``site_id`` in round ``round_id`` is bound to."""
    return lp_encode(_LABEL, round_id, site_id, params_digest, key_id, layout_digest)


def _message(index: int, count: int, chunk: bytes | memoryview) -> bytes:
    digest = hashlib.blake2b(chunk, digest_size=32).digest()
    return lp_encode(_LABEL, index, count, digest)


def sign_chunk(
    identity: IdentityKey, context: bytes, index: int, count: int, chunk: bytes
) -> bytes:
    """``chunk`` followed by the signature of ``identity`` over it (the signed wire form)."""
    return chunk + identity.sign(context, _message(index, count, chunk))


def split_signed_chunk(data: object) -> tuple[memoryview, bytes]:
    """Split a signed chunk into ``(chunk, signature)``; HEError if it cannot hold a signature."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise HEError(f"a signed chunk must be bytes, not {type(data).__name__}")
    view = memoryview(data).cast("B")
    if len(view) <= SIGNATURE_BYTES:
        raise HEError(f"signed chunk too short ({len(view)} bytes) to hold a signature")
    return view[:-SIGNATURE_BYTES], bytes(view[-SIGNATURE_BYTES:])


def verify_chunk_signature(
    key: IdentityPublicKey,
    signature: bytes,
    context: bytes,
    *,
    site_id: str,
    index: int,
    count: int,
    chunk: memoryview,
) -> None:
    """Raise :class:`MissingSignersError` naming ``site_id`` unless ``key`` signed this chunk."""
    try:
        key.verify(signature, context, _message(index, count, chunk))
    except InvalidSignature:
        raise MissingSignersError(
            (site_id,),
            f"site {site_id!r}, chunk {index}: the signature does not verify under its roster key "
            "for this round, key and layout",
        ) from None


def open_signed_update(
    context: ts.Context,
    site_id: str,
    signed_chunks: Iterable[bytes],
    *,
    params: CkksParameters,
    key_id: bytes,
    layout: Layout,
    round_id: int,
    public_key: IdentityPublicKey,
) -> list[ts.CKKSVector]:
    """Check every signed chunk of one site's update and return its ciphertexts in index order.

    Per chunk: framing and checksum (:func:`~secagg.he.packing.parse_chunk`), then the signature
    of ``site_id`` for ``round_id``, then the ciphertext itself
    (:func:`~secagg.he.packing.load_ciphertext`); finally that every index arrived exactly once.

    Raises:
        MissingSignersError: a signature does not verify (names ``site_id``).
        HEError: anything else is wrong with a chunk, or chunks are duplicated or missing.
    """
    sig_context = chunk_signing_context(
        round_id=round_id,
        site_id=site_id,
        params_digest=params.digest(),
        key_id=key_id,
        layout_digest=layout.digest(),
    )
    received: dict[int, ts.CKKSVector] = {}
    for data in signed_chunks:
        chunk, signature = split_signed_chunk(data)
        index, payload = parse_chunk(
            chunk, kind=KIND_UPDATE, params=params, key_id=key_id, layout=layout
        )
        if index in received:
            raise HEError(f"site {site_id!r} sent chunk {index} twice")
        verify_chunk_signature(
            public_key,
            signature,
            sig_context,
            site_id=site_id,
            index=index,
            count=layout.chunk_count,
            chunk=chunk,
        )
        received[index] = load_ciphertext(
            context, payload, params=params, expected_length=layout.chunk_length(index), index=index
        )
    if len(received) != layout.chunk_count:
        missing = sorted(set(range(layout.chunk_count)) - set(received))
        raise HEError(
            f"site {site_id!r} sent {len(received)} of {layout.chunk_count} chunks "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''})"
        )
    return [received[i] for i in range(layout.chunk_count)]
