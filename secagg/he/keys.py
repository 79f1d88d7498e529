"""CKKS key material: the key holder's secret context and the public-only context.

* :class:`KeyHolderContext` holds the secret key. It is created by the key holder (one designated
  site, or generated once and shared by every site through
  :meth:`KeyHolderContext.export_secret_bytes`, an explicit, separately named step), hands out
  :meth:`~KeyHolderContext.public_context_bytes` and decrypts encrypted sums, but only as
  :meth:`~KeyHolderContext.decrypt_sum` allows: after checking the sum against the sites' signed
  ciphertexts, with flooding noise added, and at most ``FloodingPolicy.max_decryptions`` times. It
  cannot be printed with its key, pickled or copied.
* :class:`PublicContext` is what the aggregator (and every encrypting site) holds: public key only.
  :meth:`PublicContext.from_bytes` refuses a context that carries a secret key, so an aggregator can
  never be handed the means to decrypt single updates by mistake.

Every context has a ``key_id``: a BLAKE2b digest of the parameters and of the public-context bytes
the key holder distributes. Chunks carry it, so a ciphertext made under another key is refused even
when its parameters match (SEAL alone cannot tell).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import numpy as np
import numpy.typing as npt
import tenseal as ts
import tenseal.sealapi

from secagg.crypto import IdentityPublicKey
from secagg.crypto.prg import random_seed
from secagg.errors import ConfigError, HEError
from secagg.he.decryption import FloodedDecryptor
from secagg.he.flooding import FloodingPolicy, sample_flooding_noise
from secagg.he.packing import (
    KIND_SUM,
    Layout,
    check_site_id,
    load_ciphertext,
    parse_chunk,
    parse_sum,
)
from secagg.he.params import CkksParameters
from secagg.he.signed import (
    MissingSignersError,
    check_roster,
    check_round_id,
    open_signed_update,
)

__all__ = ["DecryptedSum", "KeyHolderContext", "PublicContext"]

Contributions = Mapping[str, Iterable[bytes]] | Iterable[tuple[str, Iterable[bytes]]]
"""Each contributing site's signed chunks, as forwarded by the aggregator (may be streamed)."""

_KEY_ID_LABEL: Final = b"secagg/he/key-id/v1"
_CONSTRUCT: Final = object()


def _key_id(params: CkksParameters, public_bytes: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=32)
    for part in (_KEY_ID_LABEL, params.digest(), public_bytes):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


def _serialise_public(ctx: ts.Context) -> bytes:
    data: bytes = ctx.serialize(
        save_public_key=True,
        save_secret_key=False,
        save_galois_keys=False,
        save_relin_keys=False,
    )
    return data


def _load_context(data: object, what: str) -> ts.Context:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise HEError(f"{what} must be bytes, not {type(data).__name__}")
    try:
        return ts.context_from(bytes(data))
    except Exception as exc:  # any failure of the C++ parser means the bytes are unusable
        raise HEError(f"{what} is not a serialised TenSEAL context") from exc


def _check_parameters(ctx: ts.Context, params: CkksParameters, what: str) -> None:
    """Raise HEError unless ``ctx`` is a CKKS context with exactly ``params``."""
    if not isinstance(params, CkksParameters):
        raise ConfigError("expected_params must be CkksParameters")
    try:
        seal = ctx.seal_context().data
        parms = seal.key_context_data().parms()
        scheme = parms.scheme().name
        degree = parms.poly_modulus_degree()
        chain = tuple(m.bit_count() for m in parms.coeff_modulus())
        scale = ctx.global_scale
        usable = seal.parameters_set()
    except Exception as exc:  # a context without CKKS parameters or a global scale
        raise HEError(f"{what} does not describe CKKS parameters") from exc
    if scheme != "CKKS":
        raise HEError(f"{what} uses scheme {scheme}, expected CKKS")
    if not usable:
        raise HEError(f"{what} has unusable parameters")
    if degree != params.poly_modulus_degree:
        raise HEError(f"{what} has N={degree}, the round expects {params.poly_modulus_degree}")
    if chain != params.coeff_mod_bit_sizes:
        raise HEError(
            f"{what} has coefficient moduli {list(chain)}, "
            f"the round expects {list(params.coeff_mod_bit_sizes)}"
        )
    if scale != params.scale:
        raise HEError(f"{what} has scale {scale!r}, the round expects 2^{params.global_scale_bits}")


class _NoSerialise:
    """Refuse pickling and copying: key material leaves only through an explicit method."""

    __slots__ = ()

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be pickled or copied")

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be pickled or copied")

    def __getstate__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be pickled or copied")


class PublicContext(_NoSerialise):
    """A public-only CKKS context: encrypts and adds, cannot decrypt.

    Build with :meth:`from_bytes` (or :meth:`KeyHolderContext.public_context`).
    """

    __slots__ = ("_bytes", "_key_id", "_params", "_ts")

    def __init__(self, token: object, params: CkksParameters, ctx: ts.Context, data: bytes) -> None:
        if token is not _CONSTRUCT:
            raise TypeError("use PublicContext.from_bytes()")
        self._params = params
        self._ts = ctx
        self._bytes = data
        self._key_id = _key_id(params, data)

    @classmethod
    def from_bytes(cls, data: bytes, expected_params: CkksParameters) -> PublicContext:
        """Load a public context sent by the key holder and check it is fit for the round.

        Raises:
            HEError: the bytes do not parse; the context **carries a secret key** (an aggregator
                must never hold one); it has no public key; its scheme, ring dimension, moduli or
                scale differ from ``expected_params``; or a test encryption and addition fails.
            ConfigError: ``expected_params`` is not a :class:`CkksParameters`.
        """
        if not isinstance(expected_params, CkksParameters):
            raise ConfigError("expected_params must be CkksParameters")
        ctx = _load_context(data, "public context")
        if ctx.has_secret_key() or ctx.is_private():
            raise HEError(
                "refusing a context that carries a secret key: the aggregator and encrypting "
                "sites must receive a public-only context"
            )
        if not ctx.has_public_key():
            raise HEError("public context has no public key, so nothing can be encrypted with it")
        _check_parameters(ctx, expected_params, "public context")
        try:
            probe = ts.ckks_vector(ctx, [0.0])
            probe.add_(probe)
        except Exception as exc:  # the C++ side refused to encrypt or add
            raise HEError("public context cannot encrypt and add") from exc
        return cls(_CONSTRUCT, expected_params, ctx, bytes(data))

    @property
    def params(self) -> CkksParameters:
        """The round's CKKS parameters (checked against the context on load)."""
        return self._params

    @property
    def key_id(self) -> bytes:
        """32-byte id of the key this context encrypts under."""
        return self._key_id

    @property
    def has_secret_key(self) -> bool:
        """Always ``False`` (checked on load); reported for audits and tests."""
        return bool(self._ts.has_secret_key())

    def to_bytes(self) -> bytes:
        """The exact bytes the context was loaded from (to forward to encrypting sites)."""
        return self._bytes

    def __repr__(self) -> str:
        return f"PublicContext(params={self._params!r}, key_id={self._key_id.hex()[:16]}...)"


@dataclass(frozen=True)
class DecryptedSum:
    """What the key holder releases for one round.

    Attributes:
        values: the flat float64 sum of the (pre-weighted) updates of ``sites``, with flooding
            noise; ``layout.unflatten(values)`` gives named arrays.
        sites: the roster members whose signed ciphertexts make up the sum (sorted).
        noise_stddev: standard deviation of the flooding noise in every value.
        security_bits: the statistical security parameter the noise was sized for.
    """

    values: npt.NDArray[np.float64]
    sites: tuple[str, ...]
    noise_stddev: float
    security_bits: int


def _check_policy(flooding: object) -> FloodingPolicy:
    if flooding is None:
        return FloodingPolicy()
    if not isinstance(flooding, FloodingPolicy):
        raise ConfigError("flooding must be a FloodingPolicy")
    return flooding


def _contribution_items(contributions: object) -> Iterator[tuple[object, Iterable[bytes]]]:
    if isinstance(contributions, Mapping):
        yield from contributions.items()
        return
    if isinstance(contributions, (str, bytes)) or not isinstance(contributions, Iterable):
        raise ConfigError("contributions must map site ids to signed chunks")
    for item in contributions:
        if not isinstance(item, tuple) or len(item) != 2:
            raise ConfigError("contributions must be (site_id, signed chunks) pairs")
        yield item


class KeyHolderContext(_NoSerialise):
    """The key holder's CKKS context, with the secret key.

    Build with :meth:`generate` (or :meth:`from_secret_bytes` when every site shares one key).
    Not thread-safe: :meth:`decrypt_sum` counts decryptions.
    """

    __slots__ = (
        "_decrypted_rounds",
        "_decryptor",
        "_flooding",
        "_key_id",
        "_params",
        "_public",
        "_public_bytes",
        "_ts",
    )

    def __init__(
        self, token: object, params: CkksParameters, ctx: ts.Context, flooding: FloodingPolicy
    ) -> None:
        if token is not _CONSTRUCT:
            raise TypeError(
                "use KeyHolderContext.generate() or KeyHolderContext.from_secret_bytes()"
            )
        self._params = params
        self._ts = ctx
        self._flooding = flooding
        self._public_bytes = _serialise_public(ctx)
        self._key_id = _key_id(params, self._public_bytes)
        self._public: PublicContext | None = None
        self._decryptor: FloodedDecryptor | None = None
        self._decrypted_rounds: list[int] = []

    @classmethod
    def generate(
        cls, params: CkksParameters | None = None, *, flooding: FloodingPolicy | None = None
    ) -> KeyHolderContext:
        """Generate a fresh key pair for ``params`` (default :class:`CkksParameters()`).

        ``flooding`` (default :class:`FloodingPolicy()`: 40-bit statistical security, one
        decryption per key) fixes how every decryption under this key is flooded.
        """
        params = CkksParameters() if params is None else params
        if not isinstance(params, CkksParameters):
            raise ConfigError("params must be CkksParameters")
        policy = _check_policy(flooding)
        try:
            ctx = ts.context(
                ts.SCHEME_TYPE.CKKS,
                poly_modulus_degree=params.poly_modulus_degree,
                coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
            )
        except Exception as exc:  # SEAL refused the parameters (e.g. no suitable primes)
            raise ConfigError(f"SEAL refused the CKKS parameters {params}: {exc}") from exc
        ctx.global_scale = params.scale
        return cls(_CONSTRUCT, params, ctx, policy)

    @classmethod
    def from_secret_bytes(
        cls,
        data: bytes,
        expected_params: CkksParameters,
        *,
        flooding: FloodingPolicy | None = None,
    ) -> KeyHolderContext:
        """Load a secret context exported by :meth:`export_secret_bytes` (shared-key setups).

        The decryption budget (``flooding.max_decryptions``) is counted per loaded copy: with
        ``k`` copies the key can release ``k`` times as much (see docs/ckks.md).

        Raises:
            HEError: the bytes do not parse, hold no secret key, or differ from the parameters.
        """
        if not isinstance(expected_params, CkksParameters):
            raise ConfigError("expected_params must be CkksParameters")
        policy = _check_policy(flooding)
        ctx = _load_context(data, "secret context")
        if not (ctx.has_secret_key() and ctx.is_private()):
            raise HEError("secret context holds no secret key")
        _check_parameters(ctx, expected_params, "secret context")
        return cls(_CONSTRUCT, expected_params, ctx, policy)

    @property
    def params(self) -> CkksParameters:
        """The CKKS parameters of this key."""
        return self._params

    @property
    def key_id(self) -> bytes:
        """32-byte id of this key (bound into every chunk encrypted under it)."""
        return self._key_id

    @property
    def flooding(self) -> FloodingPolicy:
        """How decryptions under this key are flooded, and how many it may release."""
        return self._flooding

    @property
    def remaining_decryptions(self) -> int:
        """Decryptions this key may still release (``flooding.max_decryptions`` minus used)."""
        return self._flooding.max_decryptions - len(self._decrypted_rounds)

    def public_context_bytes(self) -> bytes:
        """The context serialised **without** the secret key (nor relinearisation/Galois keys)."""
        return self._public_bytes

    def public_context(self) -> PublicContext:
        """This key's public-only context (what an encrypting key-holder site uses)."""
        if self._public is None:
            self._public = PublicContext.from_bytes(self._public_bytes, self._params)
        return self._public

    def export_secret_bytes(self) -> bytes:
        """HAZARD: serialise the context **with** the secret key, for sites sharing one key.

        Whoever holds these bytes can decrypt every site's update. Send them only to sites that
        hold the key by design, over an authenticated encrypted channel; never to the aggregator.
        """
        data: bytes = self._ts.serialize(
            save_public_key=True,
            save_secret_key=True,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        return data

    def decrypt_sum(
        self,
        encrypted_sum: bytes,
        contributions: Contributions,
        *,
        layout: Layout,
        round_id: int,
        roster: Mapping[str, IdentityPublicKey],
        min_sites: int,
    ) -> DecryptedSum:
        """Verify an encrypted sum against the sites' signed ciphertexts, then decrypt it flooded.

        1. ``contributions``: every site's signed chunks as the aggregator forwards them (a
           mapping, or an iterable of ``(site_id, chunks)`` pairs to stream site by site; memory:
           the running sum plus one update). Each must come from a distinct ``roster`` member and
           carry its valid signature for ``round_id`` on every chunk.
        2. The sites the encrypted sum claims must be exactly the verified signers, at least
           ``min_sites`` of them, and the sum must be exactly their homomorphic sum (recomputed
           here: ciphertext addition is deterministic).
        3. The key holder's own recomputed sum is decrypted with flooding noise
           (:mod:`secagg.he.flooding`) drawn from a fresh OS-CSPRNG seed.

        Nothing is decrypted unless every check passes; a decryption uses up one of the key's
        ``flooding.max_decryptions``, and a round id is decrypted at most once per key.

        Raises:
            MissingSignersError: a site the sum claims has no valid signed contribution (a
                signature does not verify, or its chunks never arrived), or fewer than
                ``min_sites`` roster members signed; ``.missing`` names them.
            HEError: malformed bytes, another key/layout/parameters, a contribution from outside
                the roster or twice from one site, signed contributions the sum leaves out, a sum
                that is not the sum of the signed ciphertexts, or the decryption budget is spent.
            ConfigError: bad arguments, or a flooding noise the policy cannot supply.
        """
        round_id = check_round_id(round_id)
        roster = check_roster(roster)
        if not isinstance(layout, Layout):
            raise ConfigError("layout must be a Layout")
        if not isinstance(min_sites, int) or isinstance(min_sites, bool) or min_sites < 1:
            raise ConfigError("min_sites must be a positive int")
        if min_sites > len(roster):
            raise ConfigError(f"min_sites={min_sites} exceeds the roster of {len(roster)} sites")
        self._check_budget(round_id)
        parsed = parse_sum(encrypted_sum, params=self._params, key_id=self._key_id)
        if parsed.layout != layout:
            raise HEError("encrypted sum was made for another layout")
        signers, forged, recomputed = self._verified_sum(contributions, layout, round_id, roster)
        claimed = set(parsed.sites)
        missing = claimed - set(signers)
        if missing or forged:
            why = f" (signatures that do not verify: {', '.join(forged)})" if forged else ""
            raise MissingSignersError(
                missing | set(forged),
                f"the encrypted sum claims {len(claimed)} sites but only "
                f"{len(claimed & set(signers))} of them have verified signed ciphertexts{why}: "
                "refusing to decrypt",
            )
        extra = sorted(set(signers) - claimed)
        if extra:
            raise HEError(f"the encrypted sum leaves out signed contributions from {extra}")
        if len(signers) < min_sites:
            raise MissingSignersError(
                set(roster) - set(signers),
                f"only {len(signers)} distinct roster members signed ciphertexts for round "
                f"{round_id}, fewer than min_sites={min_sites}: refusing to decrypt",
            )
        if recomputed is None:  # unreachable: min_sites >= 1 signers were added
            raise HEError("no signed contribution arrived")
        self._check_same_sum(parsed.chunks, recomputed, layout)
        return self._release(recomputed, layout, round_id, tuple(sorted(signers)))

    def _check_budget(self, round_id: int) -> None:
        if round_id in self._decrypted_rounds:
            raise HEError(f"round {round_id} was already decrypted under this key")
        if self.remaining_decryptions < 1:
            raise HEError(
                f"this key has released its {self._flooding.max_decryptions} decryption(s): "
                "generate a fresh key (KeyHolderContext.generate) for the next round"
            )

    def _verified_sum(
        self,
        contributions: object,
        layout: Layout,
        round_id: int,
        roster: Mapping[str, IdentityPublicKey],
    ) -> tuple[list[str], list[str], list[ts.CKKSVector] | None]:
        """Verify each contribution (framing, signature, ciphertext) and add up the valid ones.

        Returns the verified signers, the sites whose signatures did not verify (kept out of the
        sum, so every forgery is named at once), and the sum of the verified updates.
        """
        signers: list[str] = []
        forged: list[str] = []
        total: list[ts.CKKSVector] | None = None
        for site_id, chunks in _contribution_items(contributions):
            try:
                site_id = check_site_id(site_id)
            except ConfigError as exc:
                raise HEError(f"contribution with a malformed site id: {exc}") from exc
            if site_id not in roster:
                raise HEError(f"contribution from {site_id!r}, who is not in the roster")
            if site_id in signers or site_id in forged:
                raise HEError(f"two contributions from site {site_id!r}")
            try:
                vectors = open_signed_update(
                    self._ts,
                    site_id,
                    chunks,
                    params=self._params,
                    key_id=self._key_id,
                    layout=layout,
                    round_id=round_id,
                    public_key=roster[site_id],
                )
            except MissingSignersError:
                forged.append(site_id)
                continue
            if total is None:
                total = vectors
            else:
                for acc, vec in zip(total, vectors, strict=True):
                    acc.add_(vec)
            signers.append(site_id)
        return signers, forged, total

    def _check_same_sum(
        self, chunks: tuple[memoryview, ...], recomputed: list[ts.CKKSVector], layout: Layout
    ) -> None:
        """The aggregator's sum must be, chunk by chunk, exactly the recomputed ciphertext."""
        seen: set[int] = set()
        for chunk in chunks:
            index, payload = parse_chunk(
                chunk, kind=KIND_SUM, params=self._params, key_id=self._key_id, layout=layout
            )
            if index in seen:
                raise HEError(f"encrypted sum holds chunk {index} twice")
            seen.add(index)
            theirs = load_ciphertext(
                self._ts,
                payload,
                params=self._params,
                expected_length=layout.chunk_length(index),
                index=index,
            )
            # Canonical re-serialisation: equal ciphertexts give equal bytes with this build.
            if theirs.serialize() != recomputed[index].serialize():
                raise HEError(
                    f"the encrypted sum is not the homomorphic sum of the signed ciphertexts "
                    f"(chunk {index} differs): refusing to decrypt"
                )

    def _release(
        self, total: list[ts.CKKSVector], layout: Layout, round_id: int, sites: tuple[str, ...]
    ) -> DecryptedSum:
        policy, params = self._flooding, self._params
        count = layout.chunk_count
        sigma = policy.coefficient_stddev(params, len(sites), count)
        if self._decryptor is None:
            self._decryptor = FloodedDecryptor(self._ts, params)
        self._decryptor.self_test()
        # Counted before anything is decoded: an exception from here on still spends the budget.
        self._decrypted_rounds.append(round_id)
        seed = random_seed()
        n = params.poly_modulus_degree
        out = np.empty(layout.total_length, dtype=np.float64)
        for index, vec in enumerate(total):
            start, stop = layout.chunk_bounds(index)
            noise = sample_flooding_noise(seed, sigma, n, offset=index * n)
            out[start:stop] = self._decryptor.decrypt(vec, stop - start, noise)
        return DecryptedSum(
            values=out,
            sites=sites,
            noise_stddev=policy.slot_stddev(params, len(sites), count),
            security_bits=policy.security_bits,
        )

    def __repr__(self) -> str:
        return (
            f"KeyHolderContext(params={self._params!r}, "
            f"key_id={self._key_id.hex()[:16]}..., secret=<hidden>)"
        )
