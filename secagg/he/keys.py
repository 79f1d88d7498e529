"""CKKS key material: the key holder's secret context and the public-only context.

* :class:`KeyHolderContext` holds the secret key. It is created by the key holder (one designated
  site, or generated once and shared by every site through
  :meth:`KeyHolderContext.export_secret_bytes`, an explicit, separately named step), hands out
  :meth:`~KeyHolderContext.public_context_bytes` and decrypts encrypted sums. It cannot be
  printed with its key, pickled or copied.
* :class:`PublicContext` is what the aggregator (and every encrypting site) holds: public key only.
  :meth:`PublicContext.from_bytes` refuses a context that carries a secret key, so an aggregator can
  never be handed the means to decrypt single updates by mistake.

Every context has a ``key_id``: a BLAKE2b digest of the parameters and of the public-context bytes
the key holder distributes. Chunks carry it, so a ciphertext made under another key is refused even
when its parameters match (SEAL alone cannot tell).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final, NoReturn

import numpy as np
import numpy.typing as npt
import tenseal as ts
import tenseal.sealapi

from secagg.errors import ConfigError, HEError
from secagg.he.packing import KIND_SUM, Layout, load_ciphertext, parse_chunk, parse_sum
from secagg.he.params import CkksParameters

__all__ = ["KeyHolderContext", "PublicContext"]

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


class KeyHolderContext(_NoSerialise):
    """The key holder's CKKS context, with the secret key.

    Build with :meth:`generate` (or :meth:`from_secret_bytes` when every site shares one key).
    """

    __slots__ = ("_key_id", "_params", "_public", "_public_bytes", "_ts")

    def __init__(self, token: object, params: CkksParameters, ctx: ts.Context) -> None:
        if token is not _CONSTRUCT:
            raise TypeError(
                "use KeyHolderContext.generate() or KeyHolderContext.from_secret_bytes()"
            )
        self._params = params
        self._ts = ctx
        self._public_bytes = _serialise_public(ctx)
        self._key_id = _key_id(params, self._public_bytes)
        self._public: PublicContext | None = None

    @classmethod
    def generate(cls, params: CkksParameters | None = None) -> KeyHolderContext:
        """Generate a fresh key pair for ``params`` (default :class:`CkksParameters()`)."""
        params = CkksParameters() if params is None else params
        if not isinstance(params, CkksParameters):
            raise ConfigError("params must be CkksParameters")
        try:
            ctx = ts.context(
                ts.SCHEME_TYPE.CKKS,
                poly_modulus_degree=params.poly_modulus_degree,
                coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
            )
        except Exception as exc:  # SEAL refused the parameters (e.g. no suitable primes)
            raise ConfigError(f"SEAL refused the CKKS parameters {params}: {exc}") from exc
        ctx.global_scale = params.scale
        return cls(_CONSTRUCT, params, ctx)

    @classmethod
    def from_secret_bytes(cls, data: bytes, expected_params: CkksParameters) -> KeyHolderContext:
        """Load a secret context exported by :meth:`export_secret_bytes` (shared-key setups).

        Raises:
            HEError: the bytes do not parse, hold no secret key, or differ from the parameters.
        """
        if not isinstance(expected_params, CkksParameters):
            raise ConfigError("expected_params must be CkksParameters")
        ctx = _load_context(data, "secret context")
        if not (ctx.has_secret_key() and ctx.is_private()):
            raise HEError("secret context holds no secret key")
        _check_parameters(ctx, expected_params, "secret context")
        return cls(_CONSTRUCT, expected_params, ctx)

    @property
    def params(self) -> CkksParameters:
        """The CKKS parameters of this key."""
        return self._params

    @property
    def key_id(self) -> bytes:
        """32-byte id of this key (bound into every chunk encrypted under it)."""
        return self._key_id

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
        layout: Layout | None = None,
        *,
        min_sites: int = 1,
    ) -> npt.NDArray[np.float64]:
        """Decrypt an encrypted sum produced by :meth:`EncryptedSum.result_bytes`.

        Args:
            encrypted_sum: the aggregator's bytes.
            layout: the round's layout; if given, the sum must have been made for exactly it.
                Use ``layout.unflatten(result)`` to recover a dict of named arrays.
            min_sites: refuse a sum the aggregator says has fewer contributors. The site list is
                the aggregator's claim; this check guards against mistakes, not a malicious
                aggregator (see docs/ckks.md).

        Returns:
            The flat float64 sum of the (pre-weighted) updates, of length ``layout.total_length``.

        Raises:
            HEError: malformed or corrupted bytes, other parameters/key/layout, too few sites.
        """
        if not isinstance(min_sites, int) or min_sites < 1:
            raise ConfigError("min_sites must be a positive int")
        parsed = parse_sum(encrypted_sum, params=self._params, key_id=self._key_id)
        if layout is not None and parsed.layout != layout:
            raise HEError("encrypted sum was made for another layout")
        if len(parsed.sites) < min_sites:
            raise HEError(
                f"encrypted sum has {len(parsed.sites)} contributing sites, fewer than {min_sites}"
            )
        out = np.empty(parsed.layout.total_length, dtype=np.float64)
        seen: set[int] = set()
        for chunk in parsed.chunks:
            index, payload = parse_chunk(
                chunk, kind=KIND_SUM, params=self._params, key_id=self._key_id, layout=parsed.layout
            )
            if index in seen:
                raise HEError(f"encrypted sum holds chunk {index} twice")
            seen.add(index)
            start, stop = parsed.layout.chunk_bounds(index)
            vec = load_ciphertext(
                self._ts, payload, params=self._params, expected_length=stop - start, index=index
            )
            out[start:stop] = vec.decrypt()
        return out

    def __repr__(self) -> str:
        return (
            f"KeyHolderContext(params={self._params!r}, "
            f"key_id={self._key_id.hex()[:16]}..., secret=<hidden>)"
        )
