"""Site-level distributed DP under secure aggregation (numpy only, no torch).

Each site clips its update, flattens it with a randomized Hadamard rotation, scales it, rounds it
to integers (conditional randomized rounding), and adds its *share* of discrete Gaussian (or
Skellam) noise; secure aggregation then sums the integer vectors in Z_(2^b). The aggregator only
ever sees the noisy sum. This follows TensorFlow Federated's ``DistributedDpSumFactory``
(``tensorflow_federated/python/aggregators/distributed_dp.py``) and the accounting of
google-research/federated ``distributed_dp/accounting_utils.py``:

* Kairouz, Liu & Steinke, ICML 2021, "The Distributed Discrete Gaussian Mechanism for Federated
  Learning with Secure Aggregation" (arXiv:2102.06387), Algorithms 1-2, Thm. 1, Prop. 14, Prop. 22.
* Agarwal, Kairouz & Liu, NeurIPS 2021, "The Skellam Mechanism for Differentially Private Federated
  Learning" (arXiv:2110.04995).
* Canonne, Kamath & Steinke, NeurIPS 2020, "The Discrete Gaussian for Differential Privacy"
  (arXiv:2004.00010), Algorithm 3 (sampler).

Two deliberate differences from TFF:

1. **Dropout-robust noise.** TFF sizes each share as ``central_stddev / sqrt(expected_clients)``, so
   the sum is under-noised when clients drop. Here each share has variance
   ``(z C)^2 / min_clients``: the noise of *any* ``min_clients`` survivors (the secure-aggregation
   threshold; fewer cannot complete a round) already carries the full target variance ``(z C)^2``.
2. **A proven wrap-around bound.** TFF picks the scale so that ``k`` stddevs fit in the bit width,
   a Gaussian heuristic. We keep its formula (with ``k`` from a Chernoff bound and a union bound
   over coordinates), then *prove* a bound on the probability that the aggregate of up to
   ``expected_clients`` sites leaves ``[-2^(b-1), 2^(b-1))`` on any coordinate, shrink the scale if
   needed, and refuse configurations whose bound exceeds ``max_wraparound_probability``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from secagg.accounting.accountant import RdpAccountant
from secagg.accounting.rdp import rounded_l1_norm_bound, rounded_l2_norm_bound
from secagg.accounting.report import DistributedDPStatement
from secagg.errors import ConfigError, OverflowRiskError

__all__ = [
    "DEFAULT_BETA",
    "MAX_SCALE_FACTOR",
    "DistributedDPConfig",
    "DistributedDPEncoder",
    "DistributedDPParams",
    "account_round",
    "derive_params",
    "distributed_dp_epsilon",
    "fwht",
    "heuristic_scale_factor",
    "sample_discrete_gaussian",
    "sample_skellam",
    "site_level_statement",
    "wraparound_probability_bound",
]

#: Conditional randomized rounding bias recommended by Kairouz et al. (and TFF's docstring).
DEFAULT_BETA = math.exp(-0.5)
#: TFF's cap on the scale factor: larger scales add nothing to accuracy (``MAX_SCALE_FACTOR``).
MAX_SCALE_FACTOR = 1e6
#: Leeway added to the rounded L2 bound before accounting, as TFF (absorbs float error).
_NORM_LEEWAY = 1e-5
_MAX_ROUNDING_TRIES = 1000

Mechanism = Literal["ddgauss", "skellam"]


# --------------------------------------------------------------------------------------------------
# configuration and derived parameters
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistributedDPConfig:
    """Parameters of site-level distributed DP, agreed by all sites of a round.

    Give exactly one of ``noise_multiplier`` (total noise stddev / ``l2_clip`` of the sum of any
    ``min_clients`` survivors) or ``target_epsilon`` (then the noise is calibrated so that
    ``rounds`` rounds cost at most ``target_epsilon`` at ``delta``, for any number of survivors in
    ``[min_clients, expected_clients]``).

    Attributes:
        l2_clip: L2 clip norm ``C`` of one site's update (the site-level sensitivity).
        expected_clients: ``n``, the largest number of sites whose inputs enter one sum (the
            round's roster size); the wrap-around bound is taken at ``n``.
        min_clients: ``t``, the secure-aggregation threshold: a round with fewer survivors aborts.
        dimension: ``d``, the number of floats in one update.
        bits: ``b``, secure aggregation sums in Z_(2^b); at most 32.
        noise_multiplier: ``z``.
        target_epsilon: alternative to ``noise_multiplier``.
        delta: the delta at which epsilons are stated (and calibrated).
        rounds: number of rounds the calibration (``target_epsilon``) must cover.
        beta: conditional randomized rounding parameter in ``[0, 1)`` (0 = unconditional).
        mechanism: ``"ddgauss"`` (distributed discrete Gaussian) or ``"skellam"``.
        rotation: ``"hadamard"`` (randomized Walsh-Hadamard with a public seed) or ``"none"``.
        max_wraparound_probability: refuse configurations whose proven probability that the
            aggregate wraps around modulo 2^b (on any coordinate, per round) exceeds this.
    """

    l2_clip: float
    expected_clients: int
    min_clients: int
    dimension: int
    bits: int = 32
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    rounds: int = 1
    beta: float = DEFAULT_BETA
    mechanism: Mechanism = "ddgauss"
    rotation: Literal["hadamard", "none"] = "hadamard"
    max_wraparound_probability: float = 1e-6

    def __post_init__(self) -> None:
        if not (isinstance(self.l2_clip, (int, float)) and 0 < self.l2_clip < math.inf):
            raise ConfigError(f"l2_clip must be a positive finite number, got {self.l2_clip!r}")
        for name in ("expected_clients", "min_clients", "dimension", "bits", "rounds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.min_clients > self.expected_clients:
            raise ConfigError("min_clients (the threshold t) cannot exceed expected_clients")
        if not 2 <= self.bits <= 32:
            raise ConfigError(f"bits must lie in [2, 32], got {self.bits}")
        if self.bits < math.log2(self.expected_clients):
            raise ConfigError(f"bits must be >= log2(expected_clients); 2^{self.bits} is too small")
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ConfigError("give exactly one of noise_multiplier and target_epsilon")
        if self.noise_multiplier is not None and not 0 < self.noise_multiplier < math.inf:
            raise ConfigError("noise_multiplier must be positive (site-level DP needs noise)")
        if self.target_epsilon is not None and not 0 < self.target_epsilon < math.inf:
            raise ConfigError("target_epsilon must be positive and finite")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta must lie in (0, 1), got {self.delta}")
        if not 0 <= self.beta < 1:
            raise ConfigError(f"beta must lie in [0, 1), got {self.beta}")
        if self.mechanism not in ("ddgauss", "skellam"):
            raise ConfigError(f"mechanism must be 'ddgauss' or 'skellam', got {self.mechanism!r}")
        if self.rotation not in ("hadamard", "none"):
            raise ConfigError(f"rotation must be 'hadamard' or 'none', got {self.rotation!r}")
        if not 0 < self.max_wraparound_probability < 1:
            raise ConfigError("max_wraparound_probability must lie in (0, 1)")

    @property
    def padded_dimension(self) -> int:
        """Dimension after padding for the Hadamard transform (next power of two)."""
        if self.rotation == "hadamard":
            return 1 << max(0, (self.dimension - 1).bit_length())
        return self.dimension


@dataclass(frozen=True)
class DistributedDPParams:
    """Everything derived from a :class:`DistributedDPConfig` (all sites compute the same values).

    Integer-domain quantities (``*_int``) are after scaling by ``scale``.
    """

    config: DistributedDPConfig
    noise_multiplier: float
    padded_dimension: int
    scale: float
    k_stddevs: float
    local_stddev: float
    local_stddev_int: float
    l2_sensitivity_int: float
    l1_sensitivity_int: float
    rounding_l2_bound_int: float
    wraparound_probability: float
    modulus: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "modulus", 1 << self.config.bits)

    @property
    def gamma(self) -> float:
        """Rounding granularity ``1 / scale`` (Kairouz et al.'s gamma)."""
        return 1.0 / self.scale

    @property
    def total_stddev(self) -> float:
        """Stddev of the summed noise of ``min_clients`` survivors, unscaled: ``z * C``."""
        return self.noise_multiplier * self.config.l2_clip

    @property
    def local_variance_int(self) -> float:
        """Per-site noise variance in the integer domain (``target total variance / t``)."""
        return self.local_stddev_int**2

    def total_variance_int(self, survivors: int | None = None) -> float:
        """Variance of the summed integer noise of ``survivors`` sites (default: the threshold)."""
        m = self.config.min_clients if survivors is None else survivors
        return m * self.local_variance_int

    @property
    def clip_range(self) -> tuple[int, int]:
        """Centred modular range ``[-2^(b-1), 2^(b-1))`` of encoded values and of the sum."""
        half = self.modulus // 2
        return (-half, half - 1)

    def quantization_error_bound(self, survivors: int) -> float:
        """L2 bound on ``decode(sum) - sum(clipped updates)`` when no noise is added.

        Each rounded coordinate moves by less than 1, so a site's rounding error has L2 norm below
        ``sqrt(d_pad)`` in the integer domain; unscaling divides by ``scale`` and the inverse
        rotation is orthonormal. Hence ``survivors * sqrt(d_pad) / scale`` (plus float error).
        """
        return survivors * math.sqrt(self.padded_dimension) / self.scale


def heuristic_scale_factor(
    local_stddev: float,
    l2_clip: float,
    bits: int,
    num_clients: int,
    dim: int,
    k_stddevs: float,
    rho: float = 1.0,
) -> float:
    """TFF's ``_heuristic_scale_factor``.

    Solves ``2^b = 2k sqrt(rho/d (cn)^2 + (g^2/4 + s^2) n) / g`` for the granularity ``g``.

    Returns ``scale = 1 / gamma``. Raises :class:`OverflowRiskError` when ``2^(2b) < n k^2``.
    """
    n, c, sigma = num_clients, l2_clip, local_stddev
    if 2.0 ** (2.0 * bits) < n * k_stddevs**2:
        raise OverflowRiskError(
            f"bits={bits} is too small for {n} clients at {k_stddevs:.2f} stddevs: "
            "increase bits, decrease expected_clients, or allow a larger wrap-around probability"
        )
    numer = math.sqrt(2.0 ** (2.0 * bits) - n * k_stddevs**2)
    denom = 2.0 * k_stddevs * math.sqrt(rho / dim * c**2 * n**2 + n * sigma**2)
    return numer / denom


def wraparound_probability_bound(
    *,
    scale: float,
    l2_clip: float,
    local_stddev: float,
    num_clients: int,
    padded_dim: int,
    bits: int,
    mechanism: Mechanism,
    rotation: bool,
) -> float:
    """Proven upper bound on P(the sum of ``num_clients`` encodings wraps on some coordinate).

    Coordinate ``j`` of the integer sum is ``S_j = X_j + E_j + N_j``:

    * ``X_j`` = signal. With the randomized Hadamard rotation (random signs ``D``, chosen
      independently of the data), ``X_j = s <h_j, D (sum_i x_i)> / sqrt(d)`` is sub-Gaussian with
      variance proxy ``s^2 ||sum_i x_i||^2 / d <= s^2 (m C)^2 / d``. Without rotation we only know
      ``|X_j| <= s m C`` and subtract it from the margin.
    * ``E_j`` = rounding error, ``|E_j| < m`` deterministically (every rounded coordinate moves by
      less than 1, conditional rounding included); subtracted from the margin.
    * ``N_j`` = noise. A discrete Gaussian N_Z(0, v) is v-sub-Gaussian (Canonne, Kamath & Steinke
      2020); a Skellam share of variance ``v`` has MGF ``exp(v (cosh t - 1))``.

    With margin ``a = 2^(b-1) - m - 1 (- s m C without rotation)`` the Chernoff bound gives
    ``P(|S_j| >= a) <= 2 min_t exp(t^2 V/2 + mu (cosh t - 1) - t a)`` where ``V`` collects the
    sub-Gaussian proxies and ``mu = m v`` for Skellam (``mu = 0`` for the discrete Gaussian, where
    the minimum is ``exp(-a^2 / (2V))``). A union bound over the ``d_pad`` coordinates finishes it.
    """
    m = num_clients
    half = 2.0 ** (bits - 1)
    margin = half - m - 1
    v_int = (local_stddev * scale) ** 2
    if rotation:
        proxy = scale**2 * (m * l2_clip) ** 2 / padded_dim
    else:
        proxy = 0.0
        margin -= scale * m * l2_clip
    if margin <= 0:
        return 1.0
    if mechanism == "ddgauss":
        proxy += m * v_int
        mu = 0.0
    else:
        mu = m * v_int
    if mu == 0.0:
        if proxy == 0.0:
            return 0.0
        log_tail = -(margin**2) / (2.0 * proxy)
    else:
        log_tail = _chernoff_log_tail(margin, proxy, mu)
    log_p = math.log(2.0 * padded_dim) + log_tail
    return 1.0 if log_p >= 0 else math.exp(log_p)


def _chernoff_log_tail(a: float, proxy: float, mu: float) -> float:
    """``min_{t>0} t^2 proxy / 2 + mu (cosh t - 1) - t a`` (convex: bisection on the derivative)."""

    def deriv(t: float) -> float:
        return t * proxy + mu * math.sinh(t) - a

    lo, hi = 0.0, 1.0
    while deriv(hi) < 0:
        hi *= 2.0
        if hi > 1e6:
            break
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if deriv(mid) < 0:
            lo = mid
        else:
            hi = mid
    t = 0.5 * (lo + hi)
    return t * t * proxy / 2.0 + mu * (math.cosh(t) - 1.0) - t * a


def _derive_for_noise(config: DistributedDPConfig, z: float) -> DistributedDPParams:
    d_pad = config.padded_dimension
    t, n = config.min_clients, config.expected_clients
    local_stddev = z * config.l2_clip / math.sqrt(t)
    p_target = config.max_wraparound_probability
    # Chernoff counterpart of TFF's _clip_prob_to_num_stddevs with a union bound over coordinates:
    # 2 d exp(-k^2/2) = p.
    k = math.sqrt(2.0 * math.log(2.0 * d_pad / p_target))
    scale = min(
        heuristic_scale_factor(local_stddev, config.l2_clip, config.bits, n, d_pad, k),
        MAX_SCALE_FACTOR,
    )

    def bound(s: float) -> float:
        return wraparound_probability_bound(
            scale=s,
            l2_clip=config.l2_clip,
            local_stddev=local_stddev,
            num_clients=n,
            padded_dim=d_pad,
            bits=config.bits,
            mechanism=config.mechanism,
            rotation=config.rotation == "hadamard",
        )

    p = bound(scale)
    if p > p_target:
        # The heuristic ignores the deterministic rounding margin: shrink the scale until the proven
        # bound holds (the bound increases with the scale).
        lo, hi = 0.0, scale
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            if bound(mid) <= p_target:
                lo = mid
            else:
                hi = mid
        scale = lo
        p = bound(scale) if scale > 0 else 1.0
    if scale < 1.0 or p > p_target:
        raise OverflowRiskError(
            f"no scale >= 1 keeps the wrap-around probability below {p_target:g} with bits="
            f"{config.bits}, {n} clients, dimension {config.dimension}: increase bits, reduce "
            "expected_clients or the noise, or accept a larger max_wraparound_probability"
        )
    rounding_bound = rounded_l2_norm_bound(config.l2_clip * scale, config.beta, d_pad)
    l2_int = (rounding_bound / scale + _NORM_LEEWAY) * scale
    l1_int = math.ceil(rounded_l1_norm_bound(l2_int, d_pad))
    return DistributedDPParams(
        config=config,
        noise_multiplier=z,
        padded_dimension=d_pad,
        scale=scale,
        k_stddevs=k,
        local_stddev=local_stddev,
        local_stddev_int=local_stddev * scale,
        l2_sensitivity_int=l2_int,
        l1_sensitivity_int=float(l1_int),
        rounding_l2_bound_int=rounding_bound,
        wraparound_probability=p,
    )


def derive_params(config: DistributedDPConfig) -> DistributedDPParams:
    """Scale, per-site noise, sensitivities and wrap-around bound; calibrates ``z`` if asked.

    With ``target_epsilon``, ``z`` is found by bisection so that ``config.rounds`` rounds cost at
    most ``target_epsilon`` at ``config.delta`` in the worst case over the number of survivors; the
    result never overshoots the target.
    """
    if config.noise_multiplier is not None:
        return _derive_for_noise(config, float(config.noise_multiplier))
    target = float(config.target_epsilon)  # type: ignore[arg-type]

    def eps(z: float) -> float:
        return distributed_dp_epsilon(_derive_for_noise(config, z), rounds=config.rounds)

    lo, hi = 0.0, 1.0
    while eps(hi) > target:
        lo, hi = hi, hi * 2.0
        if hi > 1e6:
            raise ConfigError(f"cannot reach epsilon {target} with any reasonable noise")
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if eps(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-6 * hi:
            break
    return _derive_for_noise(config, hi)


# --------------------------------------------------------------------------------------------------
# accounting
# --------------------------------------------------------------------------------------------------


def account_round(
    accountant: RdpAccountant, params: DistributedDPParams, survivors: int | None = None
) -> None:
    """Compose one round of site-level distributed DP into ``accountant``.

    With ``survivors`` (the number of sites whose noisy inputs entered the sum) the exact count is
    used; without it, the worst case over ``[min_clients, expected_clients]``.

    Neighbouring rounds differ in one site's update being replaced by zeros while that site still
    adds its noise share (the zero-out adjacency of Kairouz et al.), so the sensitivity is the
    site's rounded L2 bound.
    """
    cfg = params.config
    if survivors is None:
        lo, hi = cfg.min_clients, cfg.expected_clients
    else:
        if not cfg.min_clients <= survivors <= cfg.expected_clients:
            raise ConfigError(
                f"survivors={survivors} outside [{cfg.min_clients}, {cfg.expected_clients}]"
            )
        lo = hi = survivors
    if cfg.mechanism == "ddgauss":
        accountant.step_distributed_discrete_gaussian(
            l2_sensitivity=params.l2_sensitivity_int,
            l1_sensitivity=params.l1_sensitivity_int,
            local_stddev=params.local_stddev_int,
            num_clients=lo,
            max_clients=hi,
            dim=params.padded_dimension,
        )
    else:
        # Skellam RDP decreases with the summed variance: the worst case is the fewest survivors.
        accountant.step_skellam(
            l2_sensitivity=params.l2_sensitivity_int,
            l1_sensitivity=params.l1_sensitivity_int,
            central_variance=lo * params.local_variance_int,
            dim=params.padded_dimension,
        )


def distributed_dp_epsilon(
    params: DistributedDPParams,
    *,
    rounds: int = 1,
    survivors: int | None = None,
    delta: float | None = None,
) -> float:
    """Epsilon at ``delta`` (default: the config's) of ``rounds`` rounds, via the RDP accountant."""
    acc = RdpAccountant()
    for _ in range(rounds):
        account_round(acc, params, survivors)
    return acc.get_epsilon(params.config.delta if delta is None else delta)


def site_level_statement(
    params: DistributedDPParams,
    accountant_before: RdpAccountant,
    survivors: int,
) -> tuple[DistributedDPStatement, RdpAccountant]:
    """Account one finished round and return its report entry and the updated accountant.

    ``accountant_before`` is not modified; the returned accountant includes this round.
    """
    cfg = params.config
    one = RdpAccountant(accountant_before.orders)
    account_round(one, params, survivors)
    after = accountant_before.copy()
    account_round(after, params, survivors)
    statement = DistributedDPStatement(
        mechanism=cfg.mechanism,
        l2_clip=float(cfg.l2_clip),
        noise_stddev_total=params.total_stddev,
        min_clients=cfg.min_clients,
        bits=cfg.bits,
        wraparound_probability=params.wraparound_probability,
        epsilon_round=one.get_epsilon(cfg.delta),
        epsilon_cumulative=after.get_epsilon(cfg.delta),
        delta=cfg.delta,
    )
    return statement, after


# --------------------------------------------------------------------------------------------------
# samplers and transforms
# --------------------------------------------------------------------------------------------------


def sample_discrete_gaussian(
    sigma: float, size: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """``size`` i.i.d. samples of N_Z(0, sigma^2) (Canonne, Kamath & Steinke, Alg. 3, vectorised).

    Proposal: discrete Laplace with scale ``t = floor(sigma) + 1``, drawn as the difference of two
    geometric variables (``P(y) ~ exp(-|y|/t)``); accept with probability
    ``exp(-(|y| - sigma^2/t)^2 / (2 sigma^2))``. The algorithm is exact; this implementation
    evaluates the Bernoulli probabilities in float64 rather than exact rational arithmetic (as
    tensorflow_privacy's vectorised sampler does), which perturbs the law by ~1e-16 relative.
    """
    if size < 0:
        raise ConfigError("size must be >= 0")
    out = np.zeros(size, dtype=np.int64)
    if sigma == 0 or size == 0:
        return out
    if not 0 < sigma < 2**52:
        raise ConfigError(f"sigma must lie in (0, 2^52), got {sigma}")
    t = math.floor(sigma) + 1
    sigma2 = float(sigma) ** 2
    p_geom = -math.expm1(-1.0 / t)
    filled = 0
    while filled < size:
        need = size - filled
        draw = max(2 * need, 64)
        y = rng.geometric(p_geom, draw).astype(np.int64) - rng.geometric(p_geom, draw).astype(
            np.int64
        )
        ay = np.abs(y).astype(np.float64)
        accept = rng.random(draw) < np.exp(-((ay - sigma2 / t) ** 2) / (2.0 * sigma2))
        taken = y[accept][:need]
        out[filled : filled + taken.size] = taken
        filled += taken.size
    return out


def sample_skellam(variance: float, size: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """``size`` samples of the symmetric Skellam law with the given variance: ``P1 - P2``,
    ``P1, P2 ~ Poisson(variance / 2)`` (Agarwal, Kairouz & Liu 2021)."""
    if variance == 0 or size == 0:
        return np.zeros(size, dtype=np.int64)
    lam = variance / 2.0
    return rng.poisson(lam, size).astype(np.int64) - rng.poisson(lam, size).astype(np.int64)


def fwht(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Unnormalised fast Walsh-Hadamard transform of a vector whose length is a power of two."""
    n = x.shape[0]
    if n & (n - 1):
        raise ConfigError(f"length {n} is not a power of two")
    y = np.array(x, dtype=np.float64, copy=True)
    h = 1
    while h < n:
        v = y.reshape(-1, 2, h)
        a = v[:, 0, :].copy()
        v[:, 0, :] += v[:, 1, :]
        v[:, 1, :] = a - v[:, 1, :]
        h *= 2
    return y


def _rotation_signs(seed: int, d_pad: int) -> npt.NDArray[np.float64]:
    # Public randomness: every site and the decoder derive the same signs from the round's seed.
    bits = np.random.Generator(np.random.PCG64(seed)).integers(0, 2, d_pad, dtype=np.int8)
    return (2.0 * bits - 1.0).astype(np.float64)


def _default_rng() -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(32), "little")))


# --------------------------------------------------------------------------------------------------
# the encoder
# --------------------------------------------------------------------------------------------------


class DistributedDPEncoder:
    """Encodes one site's float update into a noisy integer vector, and decodes the secure sum.

    Args:
        config_or_params: the round's :class:`DistributedDPConfig` (or already derived params).
        rotation_seed: *public* seed of the Hadamard rotation signs; all sites of a round and the
            decoder must use the same seed (derive it from the round id so it changes each round).
        rng: source of the rounding and noise randomness. By default a numpy ``PCG64`` generator
            seeded with 256 bits from ``os.urandom``. PCG64 is **not** a cryptographically secure
            PRNG: its future output is predictable from enough observed output. Here no output is
            observable on its own (shares are rounded, summed and masked), and each encoder gets a
            fresh OS seed, but deployments that want a CSPRNG-backed stream can inject any
            ``np.random.Generator`` (tests inject a seeded one for reproducibility).
    """

    def __init__(
        self,
        config_or_params: DistributedDPConfig | DistributedDPParams,
        *,
        rotation_seed: int = 0,
        rng: np.random.Generator | None = None,
    ) -> None:
        if isinstance(config_or_params, DistributedDPParams):
            self.params = config_or_params
        elif isinstance(config_or_params, DistributedDPConfig):
            self.params = derive_params(config_or_params)
        else:
            raise ConfigError("expected a DistributedDPConfig or DistributedDPParams")
        if (
            isinstance(rotation_seed, bool)
            or not isinstance(rotation_seed, int)
            or rotation_seed < 0
        ):
            raise ConfigError("rotation_seed must be a non-negative integer")
        self._rng = rng if rng is not None else _default_rng()
        cfg = self.params.config
        self._d = cfg.dimension
        self._d_pad = self.params.padded_dimension
        self._signs = (
            _rotation_signs(rotation_seed, self._d_pad) if cfg.rotation == "hadamard" else None
        )

    @property
    def config(self) -> DistributedDPConfig:
        return self.params.config

    # -- transforms ----------------------------------------------------------------------------

    def _rotate(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if self._signs is None:
            return x
        return fwht(x * self._signs) / math.sqrt(self._d_pad)

    def _unrotate(self, y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if self._signs is None:
            return y
        return (fwht(y) / math.sqrt(self._d_pad)) * self._signs

    def _clip_rotate_scale(self, update: npt.ArrayLike) -> npt.NDArray[np.float64]:
        x = np.asarray(update, dtype=np.float64).reshape(-1)
        if x.size != self._d:
            raise ConfigError(f"update has {x.size} values, the config says {self._d}")
        if not np.all(np.isfinite(x)):
            raise ConfigError("update contains NaN or infinity")
        c = float(self.config.l2_clip)
        norm = float(np.linalg.norm(x))
        if norm > c:
            x = x * (c / norm)
        padded = np.zeros(self._d_pad, dtype=np.float64)
        padded[: self._d] = x
        return self._rotate(padded) * self.params.scale

    def _round(self, y: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """Conditional randomized rounding (Kairouz et al., Prop. 22).

        Unbiased stochastic rounding, repeated until the L2 norm is within the accounted bound
        (a retry happens with probability at most beta).
        """
        floor = np.floor(y)
        frac = y - floor
        bound = self.params.l2_sensitivity_int
        for _ in range(_MAX_ROUNDING_TRIES):
            r = floor + (self._rng.random(y.shape[0]) < frac)
            if float(np.linalg.norm(r)) <= bound:
                return r.astype(np.int64)
        raise OverflowRiskError(
            "conditional rounding did not meet its norm bound"
        )  # pragma: no cover

    def _wrap(self, v: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        half = self.params.modulus // 2
        return np.mod(v + half, self.params.modulus) - half

    def _quantize(self, update: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Clip, rotate, scale, round -- **without noise** (tests and diagnostics only)."""
        return self._wrap(self._round(self._clip_rotate_scale(update)))

    # -- public API ----------------------------------------------------------------------------

    def encode(self, update: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Noisy integer encoding of one site's update, length ``padded_dimension``.

        Values are int64 in the centred range ``[-2^(b-1), 2^(b-1))``; ``np.mod(v, 2**b)`` gives
        the Z_(2^b) representative for the masking layer.
        """
        r = self._round(self._clip_rotate_scale(update))
        p = self.params
        if self.config.mechanism == "ddgauss":
            noise = sample_discrete_gaussian(p.local_stddev_int, self._d_pad, self._rng)
        else:
            noise = sample_skellam(p.local_variance_int, self._d_pad, self._rng)
        return self._wrap(r + noise)

    def decode(self, sum_int: npt.ArrayLike, n_survivors: int) -> npt.NDArray[np.float64]:
        """The (noisy) sum of the survivors' clipped updates, as floats of length ``dimension``.

        ``sum_int`` is the secure sum as any int64 representatives modulo 2^b (centred or in
        ``[0, 2^b)``). Divide by the survivors' count (or total weight) for a mean.
        """
        cfg = self.config
        if isinstance(n_survivors, bool) or not isinstance(n_survivors, (int, np.integer)):
            raise ConfigError("n_survivors must be an integer")
        if not cfg.min_clients <= n_survivors <= cfg.expected_clients:
            raise ConfigError(
                f"n_survivors={n_survivors} outside [{cfg.min_clients}, {cfg.expected_clients}]: "
                "below the threshold the promised noise is absent; above, the wrap bound is void"
            )
        v = np.asarray(sum_int)
        if v.shape != (self._d_pad,) or not np.issubdtype(v.dtype, np.integer):
            raise ConfigError(f"sum must be an integer vector of length {self._d_pad}")
        centred = self._wrap(v.astype(np.int64))
        y = centred.astype(np.float64) / self.params.scale
        return self._unrotate(y)[: self._d]

    def epsilon(self, *, rounds: int = 1, survivors: int | None = None) -> float:
        """Epsilon at the config's delta of ``rounds`` rounds (worst case over survivors)."""
        return distributed_dp_epsilon(self.params, rounds=rounds, survivors=survivors)
