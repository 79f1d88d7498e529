"""CKKS parameters for the ``ckks`` protection mode: security check, error bounds, digest.

Pure arithmetic; this module does not import TenSEAL, so parameters can be checked, compared and
bound into a round's configuration without the HE library installed.

Security
--------
:data:`HE_STANDARD_128_CLASSICAL` is the 128-bit classical column of the Homomorphic Encryption
Security Standard (Albrecht et al., HomomorphicEncryption.org, 2018, Table 1, ternary secret,
error standard deviation 3.2): the largest total coefficient-modulus size ``log2(Q)`` (in bits,
special prime included) for each ring dimension ``N``. Microsoft SEAL, under TenSEAL, enforces the
same table (``sec_level_type::tc128``); :class:`CkksParameters` checks it itself so an insecure
chain is refused with a :class:`~secagg.errors.ConfigError` before any key exists.

Errors
------
Two bounds, both documented in ``docs/ckks.md``:

* :meth:`CkksParameters.precision_bound` bounds every slot of a decrypted sum *before* the key
  holder floods it (the released precision adds the flooding noise, see
  :mod:`secagg.he.flooding`)::

      |decrypted - exact| <= n * (B_enc + N/2) / scale  +  n * a * N * (log2(N) + 2) * 2**-52

* :meth:`CkksParameters.decryption_error_l2_bound` bounds the Euclidean norm of the key-dependent
  part of the decryption error of a sum of ``n`` fresh ciphertexts, in the coefficient domain
  (integer units): the quantity noise flooding must drown.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from secagg.errors import ConfigError

__all__ = [
    "HE_STANDARD_128_CLASSICAL",
    "NOISE_MAX_ABS",
    "NOISE_STDDEV",
    "TAIL_BITS",
    "CkksParameters",
]

HE_STANDARD_128_CLASSICAL: Mapping[int, int] = MappingProxyType(
    {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
)
"""Max total ``log2(Q)`` bits per ring dimension ``N`` for 128-bit classical security."""

NOISE_STDDEV = 3.2
"""Standard deviation of the RLWE error (SEAL uses 3.19; the HE standard tables assume 3.2)."""

NOISE_MAX_ABS = 21
"""Largest absolute value of one RLWE error coefficient in SEAL (centred binomial with 21 coin
pairs by default; the clipped-Gaussian build clips at 6 * 3.2 = 19.2): an absolute bound."""

TAIL_BITS = 128
"""``decryption_error_l2_bound`` fails with probability at most ``2**-TAIL_BITS`` per ciphertext
under the noise heuristic stated there."""

_MAX_PRIME_BITS = 60  # SEAL's limit for one RNS prime
_MIN_PRIME_BITS = 20
_MIN_SCALE_BITS = 20
_DIGEST_LABEL = b"secagg/he/ckks-parameters/v1"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class CkksParameters:
    """CKKS parameters for an additions-only encrypted sum, validated on construction.

    Args:
        poly_modulus_degree: ring dimension ``N`` (a power of two from 1024 to 32768); a ciphertext
            packs ``N/2`` values.
        coeff_mod_bit_sizes: bit sizes of the RNS primes of the coefficient modulus. The last prime
            is SEAL's special (key-switching) prime; the others form the data level every
            ciphertext lives at. Sums need no rescaling; the default ``(60, 60, 60)`` keeps two
            data primes (~2^118) so that the scale can be 2^80 and the flooding noise the key
            holder adds before releasing a sum (``docs/ckks.md``) still leaves ~10 decimal digits.
        global_scale_bits: ``log2`` of the CKKS scale ``Delta``; the fixed-point precision.

    Raises:
        ConfigError: a value has the wrong type, ``N`` is not in the HE-standard table, a prime size
            is outside ``[20, 60]`` bits, fewer than two primes are given, the total modulus
            exceeds the 128-bit bound for ``N``, or the data level leaves no headroom above the
            scale.
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 60, 60)
    global_scale_bits: int = 80

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if not _is_int(n):
            raise ConfigError("poly_modulus_degree must be an int")
        if n not in HE_STANDARD_128_CLASSICAL:
            raise ConfigError(
                f"poly_modulus_degree {n} is not one of {sorted(HE_STANDARD_128_CLASSICAL)}"
            )
        chain = self.coeff_mod_bit_sizes
        if isinstance(chain, (str, bytes)) or not hasattr(chain, "__iter__"):
            raise ConfigError("coeff_mod_bit_sizes must be a sequence of ints")
        chain = tuple(chain)
        object.__setattr__(self, "coeff_mod_bit_sizes", chain)
        if len(chain) < 2:
            raise ConfigError(
                "coeff_mod_bit_sizes needs at least two primes (data level + SEAL's special prime)"
            )
        for bits in chain:
            if not _is_int(bits):
                raise ConfigError("coeff_mod_bit_sizes must contain ints only")
            if not _MIN_PRIME_BITS <= bits <= _MAX_PRIME_BITS:
                raise ConfigError(
                    f"each coefficient-modulus prime must have {_MIN_PRIME_BITS} to "
                    f"{_MAX_PRIME_BITS} bits, got {bits}"
                )
        bound = HE_STANDARD_128_CLASSICAL[n]
        total = sum(chain)
        if total > bound:
            raise ConfigError(
                f"insecure CKKS parameters: coefficient modulus of {total} bits exceeds the "
                f"{bound}-bit bound for 128-bit classical security at N={n} "
                "(HomomorphicEncryption.org security standard, Table 1)"
            )
        scale_bits = self.global_scale_bits
        if not _is_int(scale_bits):
            raise ConfigError("global_scale_bits must be an int")
        if scale_bits < _MIN_SCALE_BITS:
            raise ConfigError(f"global_scale_bits must be at least {_MIN_SCALE_BITS}")
        if self.headroom_bits < 1:
            raise ConfigError(
                f"the data level ({sum(self.data_level_bit_sizes)} bits) leaves no room above a "
                f"scale of 2^{scale_bits}; use a larger first prime or a smaller scale"
            )

    # ---------------------------------------------------------------- derived quantities

    @property
    def slots(self) -> int:
        """Values packed into one ciphertext (``N/2``)."""
        return self.poly_modulus_degree // 2

    @property
    def scale(self) -> float:
        """The CKKS scale ``Delta = 2**global_scale_bits``."""
        return float(2**self.global_scale_bits)

    @property
    def total_coeff_modulus_bits(self) -> int:
        """``log2(Q)`` rounded up: the sum of the prime sizes, special prime included."""
        return sum(self.coeff_mod_bit_sizes)

    @property
    def security_bound_bits(self) -> int:
        """The HE-standard bound on ``log2(Q)`` for 128-bit classical security at this ``N``."""
        return HE_STANDARD_128_CLASSICAL[self.poly_modulus_degree]

    @property
    def data_level_bit_sizes(self) -> tuple[int, ...]:
        """Primes of the level ciphertexts live at (all but SEAL's special prime)."""
        return self.coeff_mod_bit_sizes[:-1]

    @property
    def headroom_bits(self) -> int:
        """``log2`` of the largest absolute value a decrypted sum may reach.

        SEAL's primes of ``b`` bits exceed ``2**(b-1)``, so the data modulus ``q`` exceeds
        ``2**sum(b_i - 1)``; a plaintext decodes correctly while ``scale * |sum| < q/2``.
        """
        q_bits = sum(b - 1 for b in self.data_level_bit_sizes)
        return q_bits - 1 - self.global_scale_bits

    @property
    def max_abs_sum(self) -> float:
        """Largest absolute value any slot of the (pre-weighted) sum may take (``2**headroom``)."""
        return float(2**self.headroom_bits)

    def fresh_noise_bound(self) -> float:
        """Bound on one fresh ciphertext's error, in the value domain (divided by the scale).

        ``(B_enc + N/2) / scale`` where ``N/2`` bounds the encoder's rounding of each coefficient
        and ``B_enc`` is the public-key encryption noise in the canonical embedding:
        ``B_clean = 8*sqrt(2)*sigma*N + 6*sigma*sqrt(N) + 16*sigma*sqrt(h*N)`` (CKKS Lemma 1) with
        the secret's Hamming weight taken at its worst, ``h = N``. With a special prime ``P``, SEAL
        encrypts at the key level and divides by ``P``, so ``B_enc = B_clean / P + B_rs`` with the
        rounding error ``B_rs = sqrt(N/3) * (3 + 8*sqrt(h))`` (CKKS Lemma 2); without one,
        ``B_enc = B_clean``.
        """
        n = float(self.poly_modulus_degree)
        h = n
        sigma = NOISE_STDDEV
        b_clean = (
            8 * math.sqrt(2) * sigma * n + 6 * sigma * math.sqrt(n) + 16 * sigma * math.sqrt(h * n)
        )
        special_prime_min = 2.0 ** (self.coeff_mod_bit_sizes[-1] - 1)
        b_rs = math.sqrt(n / 3) * (3 + 8 * math.sqrt(h))
        b_enc = b_clean / special_prime_min + b_rs
        return (b_enc + n / 2) / self.scale

    def decryption_error_l2_bound(self, n_sites: int) -> float:
        """Bound on ``||e||_2`` for the key-dependent error ``e`` of a sum of ``n_sites`` fresh
        ciphertexts, in the coefficient domain (integer units, before dividing by the scale).

        SEAL encrypts at the key level and divides by the special prime ``P`` with rounding, so a
        fresh ciphertext decrypts to ``m + e_i`` with ``e_i = (u*e_pk + e0 + e1*s)/P + r0 + r1*s``:
        ``r0, r1`` are the rounding residues (coefficients in ``[-1/2, 1/2]``), ``s`` the ternary
        secret of Hamming weight ``h <= N``, ``u`` ternary, ``e_pk, e0, e1`` RLWE errors bounded
        by :data:`NOISE_MAX_ABS`. The encoder's rounding of the plaintext is not part of ``e``: it
        is a function of the plaintext alone, which the flooding analysis lets the simulator know.

        * ``(u*e_pk + e0 + e1*s)/P``: every coefficient is at most ``21 * (2N + 1) / P``
          (absolute), so its norm at most ``sqrt(N)`` times that.
        * ``r0 + r1*s``: with the standard heuristic (CKKS, Cheon et al. 2017; Costache et al.
          2022) that the residues are independent and uniform, each coefficient has variance
          ``(1 + h)/12 <= (1 + N)/12``; ``n`` independent ciphertexts add their variances, and the
          Laurent-Massart chi-square tail gives ``||e||_2^2 <= v N (1 + 2 sqrt(x/N) + 2x/N)``
          except with probability ``e^-x``, here ``x = TAIL_BITS * ln 2``.

        Measured at the defaults (N = 8192, n = 10, sums of encryptions of zero): 6,112, against
        6,107 predicted for SEAL's ``h ~ 2N/3`` and the bound 8,294.

        Raises:
            ConfigError: ``n_sites`` is not a positive int.
        """
        if not _is_int(n_sites) or n_sites < 1:
            raise ConfigError("n_sites must be a positive int")
        n = float(self.poly_modulus_degree)
        x = TAIL_BITS * math.log(2.0)
        tail = math.sqrt(1.0 + 2.0 * math.sqrt(x / n) + 2.0 * x / n)
        rounding = math.sqrt(n_sites * n * (1.0 + n) / 12.0) * tail
        special_prime_min = 2.0 ** (self.coeff_mod_bit_sizes[-1] - 1)
        key_level = n_sites * math.sqrt(n) * NOISE_MAX_ABS * (2.0 * n + 1.0) / special_prime_min
        return rounding + key_level

    def precision_bound(self, n_sites: int, max_abs_value: float) -> float:
        """Absolute-error bound on every slot of a decrypted sum of ``n_sites`` updates, before the
        key holder adds its flooding noise (see :mod:`secagg.he.flooding` for what is released).

        Args:
            n_sites: number of updates in the sum (>= 1).
            max_abs_value: bound on the absolute value of every (pre-weighted) value a site
                encrypts, i.e. ``max |weight * x|``.

        Returns:
            ``n * fresh_noise_bound() + n * a * N * (log2(N) + 2) * 2**-52``: the encryption and
            encoding noise of ``n`` fresh ciphertexts (additions add errors) plus a conservative
            allowance for the double-precision FFTs of encoding and decoding, relative to the
            largest possible sum ``n * a``. See ``docs/ckks.md``.

        Raises:
            ConfigError: ``n_sites < 1``, ``max_abs_value`` negative or not finite, or
                ``n_sites * max_abs_value`` could exceed :attr:`max_abs_sum` (the sum would wrap
                modulo the data modulus and decrypt to garbage).
        """
        if not _is_int(n_sites) or n_sites < 1:
            raise ConfigError("n_sites must be a positive int")
        a = float(max_abs_value)
        if not math.isfinite(a) or a < 0:
            raise ConfigError("max_abs_value must be a finite non-negative number")
        noise = n_sites * self.fresh_noise_bound()
        if n_sites * a + noise >= self.max_abs_sum:
            raise ConfigError(
                f"{n_sites} sites with values up to {a:g} can overflow the CKKS data level "
                f"(|sum| must stay below 2^{self.headroom_bits}); clip harder or change parameters"
            )
        n = self.poly_modulus_degree
        float_allowance = n_sites * a * n * (math.log2(n) + 2) * 2.0**-52
        return noise + float_allowance

    # ---------------------------------------------------------------- binding

    def encode(self) -> bytes:
        """Canonical byte encoding: label, then each field length-prefixed (big-endian)."""
        parts = [
            _DIGEST_LABEL,
            b"CKKS",
            struct.pack(">Q", self.poly_modulus_degree),
            struct.pack(">Q", len(self.coeff_mod_bit_sizes)),
            *(struct.pack(">Q", b) for b in self.coeff_mod_bit_sizes),
            struct.pack(">Q", self.global_scale_bits),
        ]
        return b"".join(struct.pack(">Q", len(p)) + p for p in parts)

    def digest(self) -> bytes:
        """32-byte BLAKE2b digest of :meth:`encode`, bound into every ciphertext and context."""
        return hashlib.blake2b(self.encode(), digest_size=32).digest()
