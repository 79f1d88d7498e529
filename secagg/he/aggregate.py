"""The encrypted sum (aggregator side) and update encryption (site side).

Bytes in, bytes out: a site turns its update into a list of signed chunk ``bytes``
(:func:`encrypt_update`, or :func:`iter_encrypt_update` to stream them one by one), each signed
with its roster identity for the round (:mod:`secagg.he.signed`); the aggregator feeds each site's
chunks to :meth:`EncryptedSum.add`, which checks the signatures, and sends
:meth:`EncryptedSum.result_bytes` to the key holder together with every added site's signed chunks,
exactly as received; the key holder calls :meth:`~secagg.he.KeyHolderContext.decrypt_sum`. No I/O
happens here; a transport decides how the bytes travel and tells the aggregator nothing but what
arrived (a site that never sends is simply not added: dropouts need no protocol step).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import tenseal as ts

from secagg.crypto import IdentityKey, IdentityPublicKey
from secagg.errors import ConfigError, HEError
from secagg.he.keys import KeyHolderContext, PublicContext
from secagg.he.packing import (
    KIND_SUM,
    KIND_UPDATE,
    ChunkHeader,
    Layout,
    Update,
    check_site_id,
    encode_chunk,
    encode_sum,
)
from secagg.he.signed import (
    check_roster,
    check_round_id,
    chunk_signing_context,
    open_signed_update,
    sign_chunk,
)

__all__ = ["EncryptedSum", "encrypt_update", "iter_encrypt_update"]


def _public_view(context: PublicContext | KeyHolderContext) -> PublicContext:
    if isinstance(context, KeyHolderContext):
        return context.public_context()
    if isinstance(context, PublicContext):
        return context
    raise ConfigError(f"expected a PublicContext or KeyHolderContext, not {type(context).__name__}")


def iter_encrypt_update(
    context: PublicContext | KeyHolderContext,
    update: Update,
    weight: float = 1.0,
    *,
    identity: IdentityKey,
    round_id: int,
    site_id: str,
    layout: Layout | None = None,
) -> Iterator[bytes]:
    """Check and pre-weight ``update``, then return an iterator of its signed encrypted chunks.

    All checks run before this returns, so a bad update raises here, not halfway through a
    stream. Each chunk is encrypted and signed only when the iterator reaches it (client memory:
    one chunk).

    Args:
        context: the round's public context (a key-holder site may pass its own context).
        update: a flat float vector or a dict of named float arrays.
        weight: plaintext weight multiplied in before encryption (FedAvg: ``n_i / n_total``), so
            the aggregator only adds.
        identity: this site's roster signing key; every chunk is signed for ``round_id`` and
            ``site_id`` (the key holder decrypts only signed ciphertexts).
        round_id: the round (an int in ``[0, 2**63)``); sign one update per round.
        site_id: this site's id in the roster.
        layout: the round's layout; defaults to the layout ``update`` implies.

    Raises:
        ConfigError: the update does not match the layout, holds non-finite values, the weight is
            not finite, a weighted value exceeds ``params.max_abs_sum`` (it could not be
            decrypted), or ``identity``, ``round_id`` or ``site_id`` is not usable.
    """
    if not isinstance(identity, IdentityKey):
        raise ConfigError("identity must be the site's IdentityKey")
    round_id = check_round_id(round_id)
    site_id = check_site_id(site_id)
    pub = _public_view(context)
    params = pub.params
    layout = Layout.of(update, params) if layout is None else layout
    if layout.slots != params.slots:
        raise ConfigError(
            f"layout has {layout.slots} slots per chunk, parameters give {params.slots}"
        )
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.floating, np.integer)):
        raise ConfigError("weight must be a real number")
    w = float(weight)
    if not math.isfinite(w):
        raise ConfigError("weight must be finite")
    flat = layout.flatten(update)
    if w != 1.0:
        flat = flat * w
    peak = float(np.max(np.abs(flat)))
    if peak >= params.max_abs_sum:
        raise ConfigError(
            f"weighted update reaches {peak:g}; CKKS values must stay below "
            f"2^{params.headroom_bits} (and so must their sum): clip the update"
        )
    sig_context = chunk_signing_context(
        round_id=round_id,
        site_id=site_id,
        params_digest=params.digest(),
        key_id=pub.key_id,
        layout_digest=layout.digest(),
    )
    return _encrypt_chunks(pub, layout, flat, identity, sig_context)


def _encrypt_chunks(
    pub: PublicContext,
    layout: Layout,
    flat: np.ndarray,
    identity: IdentityKey,
    sig_context: bytes,
) -> Iterator[bytes]:
    params = pub.params
    p_digest, l_digest = params.digest(), layout.digest()
    ctx = pub._ts
    for index in range(layout.chunk_count):
        start, stop = layout.chunk_bounds(index)
        payload: bytes = ts.ckks_vector(ctx, flat[start:stop]).serialize()
        header = ChunkHeader(
            kind=KIND_UPDATE,
            params_digest=p_digest,
            key_id=pub.key_id,
            layout_digest=l_digest,
            index=index,
            count=layout.chunk_count,
            vector_length=layout.total_length,
            chunk_length=stop - start,
        )
        chunk = encode_chunk(header, payload)
        yield sign_chunk(identity, sig_context, index, layout.chunk_count, chunk)


def encrypt_update(
    context: PublicContext | KeyHolderContext,
    update: Update,
    weight: float = 1.0,
    *,
    identity: IdentityKey,
    round_id: int,
    site_id: str,
    layout: Layout | None = None,
) -> list[bytes]:
    """Encrypt ``weight * update`` into ``layout.chunk_count`` signed chunks (see
    :func:`iter_encrypt_update` for the arguments and errors)."""
    return list(
        iter_encrypt_update(
            context,
            update,
            weight,
            identity=identity,
            round_id=round_id,
            site_id=site_id,
            layout=layout,
        )
    )


class EncryptedSum:
    """The aggregator's running sum of encrypted updates for one round.

    Memory: the running sum (one ciphertext per chunk) plus the update being added. Not
    thread-safe: a transport feeding it from several threads must serialise calls to :meth:`add`.
    The key holder needs every added site's signed chunks besides :meth:`result_bytes`: the
    transport forwards them as received (the key holder recomputes and checks the sum).

    Args:
        public_context: the round's public-only context.
        layout: the round's layout (same slots as the context's parameters).
        round_id: the round whose signatures are accepted.
        roster: site id -> Ed25519 public key of every site that may contribute.
    """

    def __init__(
        self,
        public_context: PublicContext,
        layout: Layout,
        *,
        round_id: int,
        roster: Mapping[str, IdentityPublicKey],
    ) -> None:
        if not isinstance(public_context, PublicContext):
            raise ConfigError("EncryptedSum needs a PublicContext (never the key holder's context)")
        if not isinstance(layout, Layout):
            raise ConfigError("layout must be a Layout")
        if layout.slots != public_context.params.slots:
            raise ConfigError(
                f"layout has {layout.slots} slots per chunk, parameters give "
                f"{public_context.params.slots}"
            )
        self._round_id = check_round_id(round_id)
        self._roster = check_roster(roster)
        self._ctx = public_context
        self._layout = layout
        self._sum: list[ts.CKKSVector] | None = None
        self._sites: list[str] = []
        self._failed: str | None = None

    @property
    def layout(self) -> Layout:
        """The round's layout."""
        return self._layout

    @property
    def sites(self) -> tuple[str, ...]:
        """Sites whose updates are in the sum, in the order they were added."""
        return tuple(self._sites)

    def add(self, site_id: str, chunks: Iterable[bytes]) -> None:
        """Add one site's update: every chunk is checked before the running sum is touched.

        ``chunks`` may be any iterable (e.g. a stream) of signed chunks; they may come in any
        order, but each index exactly once. If anything is wrong the site is not added and the
        sum is unchanged.

        Raises:
            ConfigError: ``site_id`` is not a non-empty str of at most 256 UTF-8 bytes.
            MissingSignersError: a chunk's signature does not verify under the site's roster key
                for this round.
            HEError: the site is not in the roster or was already added; a chunk is malformed,
                corrupted, made under other parameters, another key or another layout,
                duplicated or missing; or the sum is in its failed state.
        """
        self._check_usable()
        site_id = check_site_id(site_id)
        if site_id not in self._roster:
            raise HEError(f"site {site_id!r} is not in the round's roster")
        if site_id in self._sites:
            raise HEError(f"site {site_id!r} was already added to this sum")
        ordered = open_signed_update(
            self._ctx._ts,
            site_id,
            chunks,
            params=self._ctx.params,
            key_id=self._ctx.key_id,
            layout=self._layout,
            round_id=self._round_id,
            public_key=self._roster[site_id],
        )
        if self._sum is None:
            self._sum = ordered
        else:
            try:
                for acc, vec in zip(self._sum, ordered, strict=True):
                    acc.add_(vec)
            except Exception as exc:  # cannot happen after the checks above; if it does, stop
                self._failed = f"addition failed midway for site {site_id!r}: {exc}"
                raise HEError(f"encrypted sum failed: {self._failed}") from exc
        self._sites.append(site_id)

    def result_bytes(self) -> bytes:
        """The encrypted sum, framed for the key holder (see ``packing.encode_sum``).

        Raises:
            HEError: no site was added, or the sum is in its failed state.
        """
        self._check_usable()
        if self._sum is None:
            raise HEError("no site has been added to the sum")
        params, layout = self._ctx.params, self._layout
        p_digest, l_digest = params.digest(), layout.digest()
        chunks = []
        for index, vec in enumerate(self._sum):
            header = ChunkHeader(
                kind=KIND_SUM,
                params_digest=p_digest,
                key_id=self._ctx.key_id,
                layout_digest=l_digest,
                index=index,
                count=layout.chunk_count,
                vector_length=layout.total_length,
                chunk_length=layout.chunk_length(index),
            )
            chunks.append(encode_chunk(header, vec.serialize()))
        return encode_sum(
            params=params,
            key_id=self._ctx.key_id,
            layout=layout,
            sites=self._sites,
            chunks=chunks,
        )

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise HEError(f"encrypted sum is in its failed state: {self._failed}")

    def __repr__(self) -> str:
        return (
            f"EncryptedSum(sites={len(self._sites)}, chunks={self._layout.chunk_count}, "
            f"values={self._layout.total_length})"
        )
