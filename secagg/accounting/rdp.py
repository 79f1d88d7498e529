"""Rényi differential privacy (RDP) of the mechanisms secagg uses: pure functions, ``math`` only.

Everything here is stateless maths (the Opacus split: ``opacus/accountants/analysis/rdp.py`` apart
from the stateful accountant). No numpy, no scipy, no torch: a site, the aggregator and an offline
auditor can all recompute the same epsilons from the parameters printed in a privacy report.

Mechanisms
----------
* Gaussian mechanism: ``RDP(alpha) = alpha / (2 z^2)`` (Mironov, CSF 2017, Prop. 7).
* Poisson-subsampled Gaussian (DP-SGD): Mironov, Talwar & Zhang 2019, "Rényi Differential Privacy of
  the Sampled Gaussian Mechanism" (arXiv:1908.10530), Sec. 3.3 -- the exact binomial expansion for
  integer orders and the two-sided series for fractional orders, as implemented by Opacus
  (``opacus/accountants/analysis/rdp.py``) and Google's ``dp_accounting``
  (``rdp/rdp_privacy_accountant.py``, whose conservative all-terms-added fractional series we
  follow).
* Distributed discrete Gaussian (DDG): Kairouz, Liu & Steinke, ICML 2021 ("The Distributed Discrete
  Gaussian Mechanism for Federated Learning with Secure Aggregation", arXiv:2102.06387), Thm. 1
  and Prop. 14 / Eq. 17, reproduced from google-research/federated
  ``distributed_dp/accounting_utils.py`` (``compute_rdp_dgaussian``, ``ddgauss_epsilon``).
* Distributed Skellam: Agarwal, Kairouz & Liu, NeurIPS 2021 ("The Skellam Mechanism for
  Differentially Private Federated Learning", arXiv:2110.04995), reproduced from ``_skellam_rdp`` in
  the same ``accounting_utils.py``.
* Subsampling of the two distributed mechanisms: Zhu & Wang, ICML 2019 ("Poisson Subsampled Rényi
  Differential Privacy"), general upper bound, as ``_compute_rdp_subsampled`` in
  ``accounting_utils``.

Conversion to (epsilon, delta): Balle et al., AISTATS 2020 ("Hypothesis testing interpretations and
Rényi DP", Prop. 12) / Canonne, Kamath & Steinke 2020 (Eq. 20), exactly as
``dp_accounting.rdp.compute_epsilon``.

Orders: the two distributed mechanisms' bounds are stated and implemented for integer orders; for
a fractional order ``alpha`` we use the bound at ``ceil(alpha)``, which is sound because Rényi
divergence is non-decreasing in its order (``accounting_utils`` truncates with ``int()`` instead,
but only ever passes integer orders).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from secagg.errors import ConfigError

__all__ = [
    "DDG_ORDERS",
    "DEFAULT_ORDERS",
    "compute_rdp_dgaussian",
    "compute_rdp_distributed_discrete_gaussian",
    "compute_rdp_gaussian",
    "compute_rdp_sampled_gaussian",
    "compute_rdp_skellam",
    "compute_rdp_subsampled",
    "ddgauss_epsilon",
    "ddgauss_tau",
    "rdp_to_epsilon",
    "rounded_l1_norm_bound",
    "rounded_l2_norm_bound",
    "skellam_epsilon",
    "skellam_rdp",
]

#: Default RDP orders: ``dp_accounting``'s ``DEFAULT_RDP_ORDERS`` (Opacus's ``DEFAULT_ALPHAS`` plus
#: order 11 and a few large orders, so small-noise regimes are covered as well).
DEFAULT_ORDERS: tuple[float, ...] = (
    tuple(1 + x / 10.0 for x in range(1, 100)) + tuple(range(11, 64)) + (128, 256, 512, 1024)
)

#: Orders used by ``accounting_utils.py`` for the distributed mechanisms (``RDP_ORDERS``).
DDG_ORDERS: tuple[int, ...] = (*range(2, 129), 256)

_MAX_STEPS_LOG_A_FRAC = 1000


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _log_add(logx: float, logy: float) -> float:
    """``log(exp(logx) + exp(logy))`` without overflow."""
    a, b = min(logx, logy), max(logx, logy)
    if a == -math.inf:
        return b
    return math.log1p(math.exp(a - b)) + b


def _log_sum_exp(terms: Sequence[float]) -> float:
    m = max(terms)
    if m == -math.inf:
        return -math.inf
    return m + math.log(math.fsum(math.exp(t - m) for t in terms))


def _log_comb(n: float, k: float) -> float:
    """``log |binom(n, k)|`` (``math.lgamma`` is ``log |Gamma|``, like scipy's ``gammaln``)."""
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _log_erfc(x: float) -> float:
    """``log(erfc(x))``, accurate in the far tail (Laurent series where ``erfc`` underflows)."""
    r = math.erfc(x)
    if r > 0.0:
        return math.log(r)
    # erfc(x) ~ exp(-x^2 - .5/x^2 + .625/x^4 ...) / (x sqrt(pi)), as in dp_accounting / Opacus.
    return (
        -math.log(math.pi) / 2
        - math.log(x)
        - x**2
        - 0.5 * x**-2
        + 0.625 * x**-4
        - 37.0 / 24.0 * x**-6
        + 353.0 / 64.0 * x**-8
    )


def _check_orders(orders: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(a) for a in orders)
    if not out:
        raise ConfigError("orders must not be empty")
    for a in out:
        if not a > 1:
            raise ConfigError(f"every RDP order must be > 1, got {a}")
    return out


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ConfigError(f"steps must be a non-negative integer, got {steps!r}")
    return int(steps)


def _check_rate(q: float) -> float:
    q = float(q)
    if not 0.0 <= q <= 1.0:
        raise ConfigError(f"sampling rate must lie in [0, 1], got {q}")
    return q


def _int_order(alpha: float) -> int:
    """Integer order whose bound is used for ``alpha`` (monotonicity of Rényi divergence)."""
    return math.ceil(alpha - 1e-12)


# --------------------------------------------------------------------------------------------------
# Gaussian and sampled Gaussian
# --------------------------------------------------------------------------------------------------


def compute_rdp_gaussian(
    noise_multiplier: float, steps: int = 1, orders: Sequence[float] = DEFAULT_ORDERS
) -> tuple[float, ...]:
    """RDP of ``steps`` compositions of the Gaussian mechanism (noise stddev: ``z`` x sens.)."""
    return compute_rdp_sampled_gaussian(1.0, noise_multiplier, steps, orders)


def _compute_log_a_int(q: float, sigma: float, alpha: int) -> float:
    log1mq = math.log1p(-q)
    terms = [
        _log_comb(alpha, i) + i * math.log(q) + (alpha - i) * log1mq + (i * i - i) / (2 * sigma**2)
        for i in range(alpha + 1)
    ]
    return _log_sum_exp(terms)


def _compute_log_a_frac(q: float, sigma: float, alpha: float) -> float:
    # Sec. 3.3 of arXiv:1908.10530; the two parts of A_alpha, integrals over (-inf, z0] and
    # [z0, +inf), summed term by term (absolute values of the binomial coefficients: an upper bound,
    # as dp_accounting does).
    log_a0, log_a1 = -math.inf, -math.inf
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    log1mq = math.log1p(-q)
    last_s0 = last_s1 = -math.inf
    for i in range(_MAX_STEPS_LOG_A_FRAC):
        log_coef = _log_comb(alpha, i)
        j = alpha - i
        log_t0 = log_coef + i * math.log(q) + j * log1mq
        log_t1 = log_coef + j * math.log(q) + i * log1mq
        log_e0 = math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        log_s0 = log_t0 + (i * i - i) / (2 * sigma**2) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * sigma**2) + log_e1
        log_a0 = _log_add(log_a0, log_s0)
        log_a1 = _log_add(log_a1, log_s1)
        total = _log_add(log_a0, log_a1)
        if log_s0 < last_s0 and log_s1 < last_s1 and max(log_s0, log_s1) < total - 30:
            return total
        last_s0, last_s1 = log_s0, log_s1
    return math.inf  # did not converge: this order is excluded (infinite RDP)


def _rdp_sampled_gaussian_one(q: float, sigma: float, alpha: float) -> float:
    if q == 0:
        return 0.0
    if sigma == 0 or math.isinf(alpha):
        return math.inf
    if q == 1.0:
        return alpha / (2 * sigma**2)
    if float(alpha).is_integer():
        log_a = _compute_log_a_int(q, sigma, int(alpha))
    else:
        log_a = _compute_log_a_frac(q, sigma, alpha)
    return log_a / (alpha - 1)


def compute_rdp_sampled_gaussian(
    q: float,
    noise_multiplier: float,
    steps: int,
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> tuple[float, ...]:
    """RDP of ``steps`` compositions of the Poisson-subsampled Gaussian mechanism.

    Args:
        q: sampling rate (probability each record is in a batch), in ``[0, 1]``.
        noise_multiplier: noise stddev divided by the L2 sensitivity (clip norm), ``>= 0``.
        steps: number of compositions.
        orders: RDP orders (> 1).

    Returns:
        One RDP value per order (``inf`` where the order is useless).
    """
    q = _check_rate(q)
    steps = _check_steps(steps)
    if not noise_multiplier >= 0:
        raise ConfigError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    orders_t = _check_orders(orders)
    out = []
    for a in orders_t:
        r = _rdp_sampled_gaussian_one(q, float(noise_multiplier), a)
        out.append(0.0 if steps == 0 else r * steps)
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------------------------------


def rdp_to_epsilon(
    orders: Sequence[float], rdp: Sequence[float], delta: float
) -> tuple[float, float]:
    """Smallest epsilon at ``delta`` over the orders, and the order achieving it.

    ``eps = rdp + log1p(-1/a) - log(delta * a) / (a - 1)`` (Balle et al. 2020, Prop. 12; Canonne,
    Kamath & Steinke 2020, Eq. 20), with ``eps = 0`` when ``delta^2 + expm1(-rdp) > 0`` and orders
    ``<= 1.01`` skipped, exactly as ``dp_accounting.rdp.compute_epsilon``.
    """
    orders_t = tuple(float(a) for a in orders)
    rdp_t = tuple(float(r) for r in rdp)
    if len(orders_t) != len(rdp_t) or not orders_t:
        raise ConfigError("orders and rdp must be non-empty and of equal length")
    if not 0.0 <= delta < 1.0:
        raise ConfigError(f"delta must lie in [0, 1), got {delta}")
    if delta == 0:
        return (0.0, 0.0) if all(r == 0 for r in rdp_t) else (math.inf, 0.0)
    best_eps, best_order = math.inf, orders_t[0]
    for a, r in zip(orders_t, rdp_t, strict=True):
        if a < 1:
            raise ConfigError(f"RDP order must be at least 1, got {a}")
        if math.isnan(r):
            continue
        if r < 0:
            eps = 0.0  # numerical noise from extreme parameters, as dp_accounting
        elif math.isinf(r):
            eps = math.inf
        elif delta**2 + math.expm1(-r) > 0:
            eps = 0.0  # KL bound: delta <= sqrt(1 - exp(-KL))
        elif a > 1.01:
            eps = r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1)
        else:
            eps = math.inf
        if eps < best_eps:
            best_eps, best_order = eps, a
    return max(0.0, best_eps), best_order


# --------------------------------------------------------------------------------------------------
# subsampling of the distributed mechanisms (Zhu & Wang 2019)
# --------------------------------------------------------------------------------------------------


def compute_rdp_subsampled(
    alpha: int, q: float, eps: Callable[[int], float], upper_bound: bool = True
) -> float:
    """RDP at integer order ``alpha`` of mechanism ``eps`` (RDP curve), Poisson-subsampled at ``q``.

    Zhu & Wang, ICML 2019 (http://proceedings.mlr.press/v97/zhu19c/zhu19c.pdf); ``upper_bound=True``
    uses the general upper bound (Thm. 5 there), ``False`` the tighter bound of Thm. 6 that needs
    extra conditions -- as ``_compute_rdp_subsampled`` in ``accounting_utils.py``.
    """
    alpha = int(alpha)
    if alpha < 2:
        raise ConfigError(f"alpha must be an integer >= 2, got {alpha}")
    if not 0 < q <= 1:
        raise ConfigError(f"q must lie in (0, 1], got {q}")
    if q == 1:
        return eps(alpha)
    log1mq = math.log1p(-q)
    log_q = math.log(q)
    # The first term b_0 = (1-q)^(alpha-1) (alpha q - q + 1), with log-weight a_0 = 0.
    terms = [(alpha - 1) * log1mq + math.log(alpha * q - q + 1)]
    start = 2
    if upper_bound:
        terms.append(eps(2) + math.log(math.comb(alpha, 2)) + 2 * log_q + (alpha - 2) * log1mq)
        start = 3
    for ell in range(start, alpha + 1):
        val = (ell - 1) * eps(ell) + _log_comb(alpha, ell) + (alpha - ell) * log1mq + ell * log_q
        terms.append(val + (math.log(3) if upper_bound else 0.0))
    return _log_sum_exp(terms) / (alpha - 1)


def _compose_distributed(
    eps_fn: Callable[[int], float], q: float, steps: int, orders: Sequence[float]
) -> tuple[float, ...]:
    q = _check_rate(q)
    steps = _check_steps(steps)
    orders_t = _check_orders(orders)
    out = []
    for a in orders_t:
        k = _int_order(a)
        if q == 0 or steps == 0:
            out.append(0.0)
            continue
        r = eps_fn(k)
        if q < 1:
            r = min(compute_rdp_subsampled(k, q, eps_fn), r)
        out.append(r * steps)
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# distributed discrete Gaussian (Kairouz, Liu & Steinke 2021)
# --------------------------------------------------------------------------------------------------


def rounded_l2_norm_bound(l2_norm_bound: float, beta: float, dim: int) -> float:
    """L2 norm bound after (conditional) randomized rounding to the integer grid.

    Kairouz, Liu & Steinke 2021, Thm. 1 / Prop. 22: with ``beta = 0`` the deterministic
    ``c + sqrt(d)``; with ``beta > 0`` also
    ``sqrt(c^2 + d/4 + sqrt(2 log(1/beta)) (c + sqrt(d)/2))``, which unconditional rounding
    exceeds with probability at most ``beta``. Input ``c`` is already scaled. Reproduces
    ``rounded_l2_norm_bound`` of ``accounting_utils.py``.
    """
    if int(dim) != dim or dim <= 0:
        raise ConfigError(f"invalid dimension: {dim}")
    if not 0 <= beta < 1:
        raise ConfigError("beta must lie in [0, 1)")
    if not l2_norm_bound > 0:
        raise ConfigError("l2_norm_bound must be positive")
    bound_1 = l2_norm_bound + math.sqrt(dim)
    if beta == 0:
        return bound_1
    squared_bound_2 = l2_norm_bound**2 + 0.25 * dim
    squared_bound_2 += math.sqrt(2.0 * math.log(1.0 / beta)) * (
        l2_norm_bound + 0.5 * math.sqrt(dim)
    )
    return min(bound_1, math.sqrt(squared_bound_2))


def rounded_l1_norm_bound(l2_norm_bound: float, dim: int) -> float:
    """L1 bound of an integer vector of L2 norm ``<= l2``: ``l2 * min(sqrt(d), l2)``."""
    return l2_norm_bound * min(math.sqrt(dim), l2_norm_bound)


def ddgauss_tau(local_stddev: float, num_clients: int) -> float:
    """Thm. 1 inflation ``tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k+1))``.

    ``local_stddev`` is the per-client discrete Gaussian stddev in the integer domain.
    """
    tau = 0.0
    for k in range(1, int(num_clients)):
        tau += math.exp(-2 * (math.pi * local_stddev) ** 2 * (k / (k + 1)))
    return 10 * tau


def compute_rdp_dgaussian(
    q: float,
    l1_scale: float,
    l2_scale: float,
    tau: float,
    dim: int,
    steps: int,
    orders: Sequence[float] = DDG_ORDERS,
) -> tuple[float, ...]:
    """RDP of the (sampled, distributed) discrete Gaussian, Prop. 14 / Eq. 17 of arXiv:2102.06387.

    ``eps(a) = min(a/2 l2s^2 + tau d, a/2 (l2s^2 + 2 l1s tau + tau^2 d), a/2 (l2s + sqrt(d)tau)^2)``
    with ``l1s, l2s`` = sensitivity / stddev of the summed noise. Reproduces
    ``compute_rdp_dgaussian`` of ``accounting_utils.py`` (fractional orders use ``ceil``).
    """

    def eps(order: int) -> float:
        term_1 = (order / 2.0) * l2_scale**2 + tau * dim
        term_2 = (order / 2.0) * (l2_scale**2 + 2 * l1_scale * tau + tau**2 * dim)
        term_3 = (order / 2.0) * (l2_scale + math.sqrt(dim) * tau) ** 2
        return min(term_1, term_2, term_3)

    return _compose_distributed(eps, q, steps, orders)


def compute_rdp_distributed_discrete_gaussian(
    *,
    l2_sensitivity: float,
    local_stddev: float,
    num_clients: int,
    dim: int,
    l1_sensitivity: float | None = None,
    max_clients: int | None = None,
    q: float = 1.0,
    steps: int = 1,
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> tuple[float, ...]:
    """RDP of the sum of ``num_clients`` independent discrete Gaussians N_Z(0, local_stddev^2).

    All quantities are in the integer (scaled and rounded) domain: ``l2_sensitivity`` is the scaled
    L2 bound after rounding (see :func:`rounded_l2_norm_bound`), ``l1_sensitivity`` defaults to
    :func:`rounded_l1_norm_bound`. Equivalent to ``ddgauss_epsilon`` with ``rounding=False`` after
    scaling (both scales are ratios of sensitivity to the summed noise stddev).

    ``max_clients`` (default ``num_clients``) makes the bound hold for *any* number of contributing
    clients in ``[num_clients, max_clients]``: every term of Prop. 14 increases with the scales
    ``sensitivity / (sqrt(m) sigma)`` (largest at ``m = num_clients``) and with ``tau`` (largest at
    ``m = max_clients``), so taking each at its worst bounds every ``m`` in the range.
    """
    if num_clients < 1 or int(num_clients) != num_clients:
        raise ConfigError(f"num_clients must be a positive integer, got {num_clients}")
    if max_clients is None:
        max_clients = num_clients
    if int(max_clients) != max_clients or max_clients < num_clients:
        raise ConfigError(f"max_clients must be an integer >= num_clients, got {max_clients}")
    if not local_stddev > 0:
        raise ConfigError("local_stddev must be positive")
    if not l2_sensitivity > 0:
        raise ConfigError("l2_sensitivity must be positive")
    if l1_sensitivity is None:
        l1_sensitivity = rounded_l1_norm_bound(l2_sensitivity, dim)
    total_stddev = math.sqrt(num_clients) * local_stddev
    tau = ddgauss_tau(local_stddev, int(max_clients))
    return compute_rdp_dgaussian(
        q,
        l1_sensitivity / total_stddev,
        l2_sensitivity / total_stddev,
        tau,
        dim,
        steps,
        orders,
    )


def ddgauss_epsilon(
    gamma: float,
    local_stddev: float,
    num_clients: int,
    l2_sens: float,
    beta: float,
    dim: int,
    q: float,
    steps: int,
    delta: float,
    l1_sens: float | None = None,
    rounding: bool = True,
    orders: Sequence[float] = DDG_ORDERS,
) -> tuple[float, float]:
    """Epsilon of the distributed discrete Gaussian via RDP; same signature as ``accounting_utils``.

    ``gamma`` is the rounding granularity (``1/scale``), ``local_stddev`` and ``l2_sens`` are in the
    *unscaled* domain. Returns ``(epsilon, optimal_order)``.
    """
    scale = 1.0 / (gamma + 1e-22)
    l1 = l1_sens or (l2_sens * math.sqrt(dim))
    l2 = l2_sens
    if rounding:
        l2 = rounded_l2_norm_bound(l2 * scale, beta, dim) / scale
        l1 = rounded_l1_norm_bound(l2 * scale, dim) / scale
    tau = ddgauss_tau(local_stddev * scale, num_clients)
    l1_scale = l1 / (math.sqrt(num_clients) * local_stddev)
    l2_scale = l2 / (math.sqrt(num_clients) * local_stddev)
    rdp = compute_rdp_dgaussian(q, l1_scale, l2_scale, tau, dim, steps, orders)
    return rdp_to_epsilon(orders, rdp, delta)


# --------------------------------------------------------------------------------------------------
# distributed Skellam (Agarwal, Kairouz & Liu 2021)
# --------------------------------------------------------------------------------------------------


def skellam_rdp(
    order: float,
    l1_sensitivity: float,
    l2_sensitivity: float,
    central_variance: float,
    scale: float = 1.0,
) -> float:
    """RDP at ``order`` of the Skellam mechanism (``_skellam_rdp`` of ``accounting_utils.py``).

    ``a/(2 mu) D2^2 + min(((2a - 1) s D2^2 + 6 D1) / (4 s^3 mu^2), 3 D1 / (2 s mu))`` where the
    sensitivities ``D1, D2`` and the variance ``mu`` of the summed noise are in the unscaled domain
    and ``s`` is the scale; with ``scale=1`` pass integer-domain quantities directly.
    """
    if not order > 1:
        raise ConfigError(f"alpha must be greater than 1, got {order}")
    a, s, mu = float(order), float(scale), float(central_variance)
    rdp = a / (2 * mu) * l2_sensitivity**2
    rdp += min(
        ((2 * a - 1) * s * l2_sensitivity**2 + 6 * l1_sensitivity) / (4 * s**3 * mu**2),
        3 * l1_sensitivity / (2 * s * mu),
    )
    return rdp


def compute_rdp_skellam(
    *,
    l2_sensitivity: float,
    central_variance: float,
    dim: int,
    l1_sensitivity: float | None = None,
    scale: float = 1.0,
    q: float = 1.0,
    steps: int = 1,
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> tuple[float, ...]:
    """RDP curve of the (sampled, composed) distributed Skellam mechanism.

    The sum of independent Skellam shares is Skellam with the summed variance, so
    ``central_variance`` is the variance of the *summed* noise.
    """
    if not central_variance > 0:
        raise ConfigError("central_variance must be positive")
    if l1_sensitivity is None:
        l1_sensitivity = rounded_l1_norm_bound(l2_sensitivity * scale, dim) / scale
    l1 = float(l1_sensitivity)

    def eps(order: int) -> float:
        return skellam_rdp(order, l1, l2_sensitivity, central_variance, scale)

    return _compose_distributed(eps, q, steps, orders)


def skellam_epsilon(
    scale: float,
    central_stddev: float,
    l2_sens: float,
    beta: float,
    dim: int,
    q: float,
    steps: int,
    delta: float,
    l1_sens: float | None = None,
    rounding: bool = True,
    orders: Sequence[float] = DDG_ORDERS,
) -> tuple[float, float]:
    """Epsilon of distributed Skellam via RDP (the signature of ``accounting_utils``'s)."""
    l1 = l1_sens or (l2_sens * math.sqrt(dim))
    l2 = l2_sens
    if rounding:
        l2 = rounded_l2_norm_bound(l2 * scale, beta, dim) / scale
        l1 = rounded_l1_norm_bound(l2 * scale, dim) / scale
    rdp = compute_rdp_skellam(
        l2_sensitivity=l2,
        l1_sensitivity=l1,
        central_variance=central_stddev**2,
        dim=dim,
        scale=scale,
        q=q,
        steps=steps,
        orders=orders,
    )
    return rdp_to_epsilon(orders, rdp, delta)
