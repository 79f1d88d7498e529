"""Noise flooding of CKKS decryptions: how much noise, and drawing it from a CSPRNG.

A raw CKKS decryption releases ``m + e`` where the error ``e`` depends on the secret key; whoever
sees a ciphertext and its decryption can solve for the key (Li and Micciancio, Eurocrypt 2021).
The key holder therefore adds, in the coefficient domain and in exact integer arithmetic, a noise
polynomial ``f`` with i.i.d. coefficients ``round(G)``, ``G ~ N(0, sigma^2)``, before decoding:
what it releases is ``decode(m + e + f)``. Because ``e`` is an integer vector,
``m + e + round(G) = round(m + e + G)``: the release is post-processing of the Gaussian mechanism
``m + e + G``, and every bound below follows from the continuous Gaussian by the data-processing
inequality (no discrete-Gaussian analysis is needed).

Calibration (Li, Micciancio, Schultz, Sorrell, CRYPTO 2022, "Securing approximate homomorphic
encryption using differential privacy", Cor. 2; OpenFHE's ``NOISE_FLOODING_DECRYPT``)::

    sigma = sqrt(24) * 2**(s/2) * sqrt(tau * C) * E2(n)

with ``s`` the statistical security parameter, ``tau`` the number of decryptions the key may ever
release, ``C`` the ciphertexts in one decryption and ``E2(n)`` the bound on ``||e||_2`` of one
decrypted ciphertext (:meth:`CkksParameters.decryption_error_l2_bound`). LMSS state the formula
with ``sqrt(N) * ||e||_inf`` where ``E2`` stands here, and with their ``alpha`` decryption queries
being our ``tau * C`` ciphertexts. Then the Kullback-Leibler divergence between everything the key
ever releases and a simulation that uses the plaintexts but not the secret key is at most
``sum ||e||^2 / (2 sigma^2) <= 2**-s / 48``, the Renyi divergence of order ``alpha`` at most
``alpha * 2**-s / 48`` (see ``docs/ckks.md`` for what that buys).

Sampling: Box-Muller on 53-bit uniforms from AES-256-CTR under a fresh 32-byte seed from the OS
CSPRNG (:func:`secagg.crypto.prg.uniform_floats`), scaled and rounded to int64. ``sigma`` is capped
at :data:`MAX_COEFFICIENT_STDDEV` so that every sample stays below ``2**48`` and floating point
resolves it to well under an integer (see ``docs/ckks.md``, "Why floating-point sampling is
acceptable here").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from secagg.crypto.prg import uniform_floats
from secagg.errors import ConfigError
from secagg.he.params import CkksParameters

__all__ = [
    "MAX_COEFFICIENT_STDDEV",
    "FloodingPolicy",
    "sample_flooding_noise",
]

MAX_COEFFICIENT_STDDEV = 2.0**44
"""Largest flooding standard deviation (coefficient domain) the float sampler accepts."""

_MIN_SECURITY_BITS = 16
_MAX_SECURITY_BITS = 128
_LMSS_FACTOR = math.sqrt(24.0)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class FloodingPolicy:
    """How the key holder floods what it decrypts; fixed when the key is made.

    Args:
        security_bits: the statistical security parameter ``s`` (LMSS 2022): the divergence
            between the releases and a key-independent simulation is at most ``2**-s / 48`` (KL).
        max_decryptions: ``tau``, how many decryptions the key may ever release. The key holder
            refuses the next one; the default, 1, means a fresh key per round.

    Raises:
        ConfigError: a field is not an int in range (``16 <= s <= 128``, ``tau >= 1``).
    """

    security_bits: int = 40
    max_decryptions: int = 1

    def __post_init__(self) -> None:
        s = self.security_bits
        if not _is_int(s) or not _MIN_SECURITY_BITS <= s <= _MAX_SECURITY_BITS:
            raise ConfigError(
                f"security_bits must be an int in [{_MIN_SECURITY_BITS}, {_MAX_SECURITY_BITS}]"
            )
        if not _is_int(self.max_decryptions) or self.max_decryptions < 1:
            raise ConfigError("max_decryptions must be a positive int")

    @property
    def divergence_bound(self) -> float:
        """Bound on the KL divergence (nats) of all releases of one key from the simulation."""
        return 2.0**-self.security_bits / 48.0

    def coefficient_stddev(self, params: CkksParameters, n_sites: int, n_ciphertexts: int) -> float:
        """``sigma`` of the flooding noise for one decryption of ``n_ciphertexts`` ciphertexts, each
        a sum of ``n_sites`` fresh ones (coefficient domain, integer units).

        Raises:
            ConfigError: bad counts, or ``sigma`` above :data:`MAX_COEFFICIENT_STDDEV` (too many
                values or decryptions per key for this security level: rotate keys more often).
        """
        if not _is_int(n_ciphertexts) or n_ciphertexts < 1:
            raise ConfigError("n_ciphertexts must be a positive int")
        error = params.decryption_error_l2_bound(n_sites)
        sigma = (
            _LMSS_FACTOR
            * math.pow(2.0, self.security_bits / 2)
            * math.sqrt(self.max_decryptions * n_ciphertexts)
            * error
        )
        if sigma > MAX_COEFFICIENT_STDDEV:
            raise ConfigError(
                f"flooding {self.max_decryptions} decryption(s) of {n_ciphertexts} ciphertexts "
                f"summing {n_sites} sites at {self.security_bits}-bit security needs noise of "
                f"2^{math.log2(sigma):.1f}, above the sampler's 2^44: use fewer decryptions per "
                "key, fewer values per round, or a lower security level"
            )
        return sigma

    def slot_stddev(self, params: CkksParameters, n_sites: int, n_ciphertexts: int) -> float:
        """Standard deviation the flooding adds to every released value (value domain).

        A coefficient vector of i.i.d. ``N(0, sigma^2)`` entries embeds into slots whose real parts
        are i.i.d. ``N(0, sigma^2 N / 2)`` (the canonical embedding is ``sqrt(N/2)`` times an
        isometry); decoding divides by the scale.
        """
        sigma = self.coefficient_stddev(params, n_sites, n_ciphertexts)
        return sigma * math.sqrt(params.poly_modulus_degree / 2) / params.scale

    def released_error_bound(
        self,
        params: CkksParameters,
        n_sites: int,
        max_abs_value: float,
        n_values: int,
        failure_bits: int = 40,
    ) -> float:
        """Bound on ``|released - exact|`` for every one of ``n_values`` released values, failing
        with probability at most ``2**-failure_bits`` for the whole vector.

        ``precision_bound`` (decryption before flooding) + ``z * slot_stddev`` with the Gaussian
        tail ``z = sqrt(2 ln(2 n_values 2**failure_bits))`` + ``(N/2)/scale`` for rounding the
        noise to integers.
        """
        if not _is_int(n_values) or n_values < 1:
            raise ConfigError("n_values must be a positive int")
        chunks = -(-n_values // params.slots)
        z = math.sqrt(2.0 * (math.log(2.0 * n_values) + failure_bits * math.log(2.0)))
        raw = params.precision_bound(n_sites, max_abs_value)
        rounding = params.poly_modulus_degree / 2 / params.scale
        return raw + z * self.slot_stddev(params, n_sites, chunks) + rounding


def sample_flooding_noise(
    seed: bytes, stddev: float, count: int, offset: int = 0
) -> npt.NDArray[np.int64]:
    """``count`` samples of ``round(N(0, stddev^2))`` from the CSPRNG stream of ``seed``.

    Samples ``2j`` and ``2j + 1`` come from the uniforms at stream positions ``offset + 2j`` and
    ``offset + 2j + 1`` (Box-Muller: ``sqrt(-2 ln(1 - u1)) * (cos, sin)(2 pi u2)``), so disjoint
    ranges ``[offset, offset + count)`` of one seed give independent noise. ``count`` and
    ``offset`` must be even.

    Raises:
        ConfigError: bad seed, odd or negative ``count``/``offset``, or ``stddev`` outside
            ``[0, MAX_COEFFICIENT_STDDEV]``.
    """
    if not _is_int(count) or count < 0 or count % 2:
        raise ConfigError("count must be an even non-negative int")
    if not _is_int(offset) or offset < 0 or offset % 2:
        raise ConfigError("offset must be an even non-negative int")
    sd = float(stddev)
    if not 0.0 <= sd <= MAX_COEFFICIENT_STDDEV:
        raise ConfigError(f"stddev must lie in [0, 2^44], got {stddev!r}")
    u = uniform_floats(seed, count, offset)
    # 1 - u lies in (0, 1]: log is finite; the largest radius is sqrt(2 * 53 ln 2) ~ 8.57.
    radius = np.sqrt(-2.0 * np.log1p(-u[0::2]))
    angle = (2.0 * math.pi) * u[1::2]
    out = np.empty(count, dtype=np.float64)
    out[0::2] = radius * np.cos(angle)
    out[1::2] = radius * np.sin(angle)
    out *= sd
    return np.rint(out).astype(np.int64)
