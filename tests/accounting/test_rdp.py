"""RDP maths against independent references (Google's dp_accounting, Opacus), pinned values."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.accounting import rdp
from secagg.errors import ConfigError


def _dp_accounting_epsilon(q: float, z: float, steps: int, delta: float) -> float:
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps)
    return acc.get_epsilon(delta)


def _ours(q: float, z: float, steps: int, delta: float) -> float:
    curve = rdp.compute_rdp_sampled_gaussian(q, z, steps, rdp.DEFAULT_ORDERS)
    return rdp.rdp_to_epsilon(rdp.DEFAULT_ORDERS, curve, delta)[0]


@pytest.mark.parametrize("q", [0.001, 0.01, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("z", [0.6, 1.0, 2.5])
@pytest.mark.parametrize("steps", [1, 50, 2000])
def test_sampled_gaussian_epsilon_matches_dp_accounting_on_a_grid(
    q: float, z: float, steps: int
) -> None:
    ours = _ours(q, z, steps, 1e-5)
    ref = _dp_accounting_epsilon(q, z, steps, 1e-5)
    assert ours == pytest.approx(ref, rel=0.01)


@given(
    q=st.floats(min_value=1e-3, max_value=1.0),
    z=st.floats(min_value=0.5, max_value=8.0),
    steps=st.integers(min_value=1, max_value=5000),
    log10_delta=st.floats(min_value=-9, max_value=-3),
)
def test_sampled_gaussian_epsilon_matches_dp_accounting_property(
    q: float, z: float, steps: int, log10_delta: float
) -> None:
    delta = 10**log10_delta
    assert _ours(q, z, steps, delta) == pytest.approx(
        _dp_accounting_epsilon(q, z, steps, delta), rel=0.01, abs=1e-9
    )


@pytest.mark.parametrize(("q", "z", "steps"), [(0.2, 1.0, 25), (0.01, 1.1, 1000), (0.05, 0.8, 300)])
def test_sampled_gaussian_epsilon_matches_opacus(q: float, z: float, steps: int) -> None:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=z, sample_rate=q)
    ref = acc.get_epsilon(1e-5)
    # Same orders as Opacus, then ours with the (richer) default orders, which can only be lower.
    alphas = RDPAccountant.DEFAULT_ALPHAS
    same_orders = rdp.rdp_to_epsilon(
        alphas, rdp.compute_rdp_sampled_gaussian(q, z, steps, alphas), 1e-5
    )[0]
    assert same_orders == pytest.approx(ref, rel=0.01)
    assert _ours(q, z, steps, 1e-5) <= ref * 1.01


def test_pinned_facts_figure_noise_1_rate_02_five_steps_five_rounds() -> None:
    # FACTS.md: noise 1.0, sample rate 0.2, 5 steps per round, 5 rounds, delta 1e-5 -> about 8.25.
    eps, order = rdp.rdp_to_epsilon(
        rdp.DEFAULT_ORDERS, rdp.compute_rdp_sampled_gaussian(0.2, 1.0, 25), 1e-5
    )
    assert eps == pytest.approx(8.249713543013, rel=1e-9)
    assert order == 3.0


@pytest.mark.parametrize(
    ("q", "z", "steps", "delta", "expected"),
    [
        (1.0, 1.0, 1, 1e-5, 4.728507067217623),
        (0.01, 0.8, 1000, 1e-5, 3.6956131929534),
        (0.003, 1.3, 5000, 1e-5, 0.79466974102842),
    ],
)
def test_pinned_regression_values(
    q: float, z: float, steps: int, delta: float, expected: float
) -> None:
    assert _ours(q, z, steps, delta) == pytest.approx(expected, rel=1e-9)


def test_gaussian_rdp_is_alpha_over_two_z_squared() -> None:
    curve = rdp.compute_rdp_gaussian(2.0, steps=3, orders=(2, 5.5, 64))
    assert curve == pytest.approx((3 * 2 / 8, 3 * 5.5 / 8, 3 * 64 / 8))


def test_no_sampling_and_no_steps_cost_nothing() -> None:
    assert set(rdp.compute_rdp_sampled_gaussian(0.0, 1.0, 10)) == {0.0}
    assert set(rdp.compute_rdp_sampled_gaussian(0.3, 1.0, 0)) == {0.0}
    assert rdp.rdp_to_epsilon((2.0, 3.0), (0.0, 0.0), 1e-5)[0] == 0.0


def test_conversion_matches_dp_accounting_compute_epsilon() -> None:
    orders = rdp.DEFAULT_ORDERS
    curve = rdp.compute_rdp_sampled_gaussian(0.1, 1.2, 400, orders)
    ref = dp_accounting.rdp.compute_epsilon(list(orders), list(curve), 1e-6)
    ours = rdp.rdp_to_epsilon(orders, curve, 1e-6)
    assert ours[0] == pytest.approx(ref[0], rel=1e-12)
    assert ours[1] == ref[1]


def test_invalid_arguments_raise_config_error() -> None:
    with pytest.raises(ConfigError):
        rdp.compute_rdp_sampled_gaussian(1.5, 1.0, 1)
    with pytest.raises(ConfigError):
        rdp.compute_rdp_sampled_gaussian(0.5, -1.0, 1)
    with pytest.raises(ConfigError):
        rdp.compute_rdp_sampled_gaussian(0.5, 1.0, 1, orders=(1.0,))
    with pytest.raises(ConfigError):
        rdp.rdp_to_epsilon((2.0,), (1.0, 2.0), 1e-5)
    with pytest.raises(ConfigError):
        rdp.rdp_to_epsilon((2.0,), (1.0,), 1.5)


# -- distributed discrete Gaussian and Skellam --------------------------------------------------


def _reference_ddgauss_epsilon(gamma, local_stddev, n, l2, beta, dim, steps, delta):
    """Straight transcription of accounting_utils.ddgauss_epsilon for q = 1 (independent code)."""
    scale = 1.0 / (gamma + 1e-22)
    l2 = l2 * scale
    b1 = l2 + math.sqrt(dim)
    b2 = math.sqrt(
        l2**2 + 0.25 * dim + math.sqrt(2 * math.log(1 / beta)) * (l2 + 0.5 * math.sqrt(dim))
    )
    l2 = min(b1, b2) / scale
    l1 = l2 * scale * min(math.sqrt(dim), l2 * scale) / scale
    tau = 10 * sum(
        math.exp(-2 * (math.pi * local_stddev * scale) ** 2 * (k / (k + 1))) for k in range(1, n)
    )
    l1s = l1 / (math.sqrt(n) * local_stddev)
    l2s = l2 / (math.sqrt(n) * local_stddev)
    best = math.inf
    for a in (*range(2, 129), 256):
        e = min(
            a / 2 * l2s**2 + tau * dim,
            a / 2 * (l2s**2 + 2 * l1s * tau + tau**2 * dim),
            a / 2 * (l2s + math.sqrt(dim) * tau) ** 2,
        )
        r = e * steps
        best = min(best, r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1))
    return best


@pytest.mark.parametrize(
    ("gamma", "local_stddev", "n", "dim"),
    [(1e-3, 0.3, 10, 1024), (0.05, 0.2, 100, 4096), (0.5, 0.9, 20, 64), (0.01, 0.01, 50, 128)],
)
def test_ddgauss_epsilon_reproduces_accounting_utils(gamma, local_stddev, n, dim) -> None:
    ours, _ = rdp.ddgauss_epsilon(gamma, local_stddev, n, 1.0, math.exp(-0.5), dim, 1.0, 3, 1e-5)
    assert ours == pytest.approx(
        _reference_ddgauss_epsilon(gamma, local_stddev, n, 1.0, math.exp(-0.5), dim, 3, 1e-5),
        rel=1e-9,
    )


def test_ddgauss_tends_to_the_central_gaussian_at_fine_granularity() -> None:
    eps, _ = rdp.ddgauss_epsilon(1e-7, 1 / math.sqrt(10), 10, 1.0, 0.0, 100, 1.0, 1, 1e-5)
    central = rdp.rdp_to_epsilon(
        rdp.DDG_ORDERS, rdp.compute_rdp_gaussian(1.0, 1, rdp.DDG_ORDERS), 1e-5
    )
    assert central[0] <= eps <= central[0] * 1.001


def test_distributed_dg_in_integer_domain_equals_ddgauss_epsilon_without_rounding() -> None:
    gamma, sigma, n, dim = 0.01, 0.4, 12, 256
    ref, _ = rdp.ddgauss_epsilon(gamma, sigma, n, 1.0, 0.0, dim, 1.0, 2, 1e-5, rounding=False)
    curve = rdp.compute_rdp_distributed_discrete_gaussian(
        l2_sensitivity=1.0 / gamma,
        l1_sensitivity=math.sqrt(dim) / gamma,
        local_stddev=sigma / gamma,
        num_clients=n,
        dim=dim,
        steps=2,
        orders=rdp.DDG_ORDERS,
    )
    assert rdp.rdp_to_epsilon(rdp.DDG_ORDERS, curve, 1e-5)[0] == pytest.approx(ref, rel=1e-9)


def test_max_clients_bound_dominates_every_client_count_in_range() -> None:
    kw = {"l2_sensitivity": 30.0, "local_stddev": 0.35, "dim": 64, "orders": rdp.DDG_ORDERS}
    worst = rdp.compute_rdp_distributed_discrete_gaussian(num_clients=5, max_clients=40, **kw)
    for m in (5, 6, 17, 40):
        exact = rdp.compute_rdp_distributed_discrete_gaussian(num_clients=m, **kw)
        assert all(w >= e for w, e in zip(worst, exact, strict=True))


def test_skellam_rdp_reproduces_accounting_utils_formula() -> None:
    a, d1, d2, mu, s = 7, 40.0, 3.0, 2.5, 100.0
    expected = a / (2 * mu) * d2**2 + min(
        ((2 * a - 1) * s * d2**2 + 6 * d1) / (4 * s**3 * mu**2), 3 * d1 / (2 * s * mu)
    )
    assert rdp.skellam_rdp(a, d1, d2, mu, s) == pytest.approx(expected, rel=1e-15)
    # The same mechanism in the integer domain (everything scaled by s) has the same RDP.
    assert rdp.skellam_rdp(a, d1 * s, d2 * s, mu * s * s) == pytest.approx(expected, rel=1e-12)


def test_skellam_tends_to_the_central_gaussian_at_large_scale() -> None:
    eps, _ = rdp.skellam_epsilon(1e6, 1.0, 1.0, 0.0, 100, 1.0, 1, 1e-5)
    central = rdp.rdp_to_epsilon(
        rdp.DDG_ORDERS, rdp.compute_rdp_gaussian(1.0, 1, rdp.DDG_ORDERS), 1e-5
    )
    assert central[0] <= eps <= central[0] * 1.001


def test_subsampling_only_helps_the_distributed_mechanisms() -> None:
    kw = {"l2_sensitivity": 100.0, "local_stddev": 40.0, "num_clients": 10, "dim": 32}
    full = rdp.compute_rdp_distributed_discrete_gaussian(**kw)
    sampled = rdp.compute_rdp_distributed_discrete_gaussian(q=0.1, **kw)
    assert all(s <= f for s, f in zip(sampled, full, strict=True))
    assert (
        rdp.rdp_to_epsilon(rdp.DEFAULT_ORDERS, sampled, 1e-5)[0]
        < rdp.rdp_to_epsilon(rdp.DEFAULT_ORDERS, full, 1e-5)[0]
    )


def test_zhu_wang_subsampled_rdp_of_the_gaussian_upper_bounds_the_exact_value() -> None:
    z, q = 1.5, 0.05

    def eps(a: int) -> float:
        return a / (2 * z * z)

    for a in (2, 3, 8, 32):
        exact = rdp.compute_rdp_sampled_gaussian(q, z, 1, (a,))[0]
        assert rdp.compute_rdp_subsampled(a, q, eps) >= exact * (1 - 1e-9)


def test_rounded_norm_bounds() -> None:
    assert rdp.rounded_l2_norm_bound(10.0, 0.0, 100) == pytest.approx(20.0)
    b = rdp.rounded_l2_norm_bound(10.0, math.exp(-0.5), 100)
    assert b == pytest.approx(math.sqrt(100 + 25 + 1.0 * (10 + 5)))
    assert rdp.rounded_l1_norm_bound(3.0, 100) == 9.0
    assert rdp.rounded_l1_norm_bound(30.0, 100) == 300.0
