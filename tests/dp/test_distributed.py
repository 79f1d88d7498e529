"""Site-level distributed DP: samplers, calibration, encode/decode, wrap-around, accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.accounting import DEFAULT_ORDERS, RdpAccountant, compute_rdp_gaussian, rdp_to_epsilon
from secagg.dp import (
    DistributedDPConfig,
    DistributedDPEncoder,
    derive_params,
    distributed_dp_epsilon,
    sample_discrete_gaussian,
    site_level_statement,
    wraparound_probability_bound,
)
from secagg.dp.distributed import fwht
from secagg.errors import ConfigError, OverflowRiskError


def _cfg(**over) -> DistributedDPConfig:
    kw = {
        "l2_clip": 1.0,
        "expected_clients": 10,
        "min_clients": 6,
        "dimension": 1000,
        "noise_multiplier": 1.0,
    }
    kw.update(over)
    return DistributedDPConfig(**kw)


def _discrete_gaussian_moments(sigma: float) -> tuple[float, float]:
    """Exact variance and fourth moment of N_Z(0, sigma^2) by summation."""
    k = np.arange(-int(40 * sigma) - 40, int(40 * sigma) + 41, dtype=np.float64)
    w = np.exp(-(k**2) / (2 * sigma**2))
    w /= w.sum()
    return float((w * k**2).sum()), float((w * k**4).sum())


# -- samplers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.4, 1.0, 3.7, 50.0, 1e6])
def test_discrete_gaussian_sampler_mean_and_variance(sigma: float) -> None:
    rng = np.random.default_rng(20211)
    n = 400_000
    x = sample_discrete_gaussian(sigma, n, rng)
    assert x.dtype == np.int64 and x.shape == (n,)
    var, m4 = _discrete_gaussian_moments(sigma) if sigma < 1e3 else (sigma**2, 3 * sigma**4)
    # 7 standard errors: a false failure has probability < 1e-11 for each statistic.
    assert abs(x.mean()) < 7 * math.sqrt(var / n)
    assert abs(x.var() - var) < 7 * math.sqrt((m4 - var**2) / n)


def test_discrete_gaussian_sampler_pmf_chi_square() -> None:
    sigma, n = 1.3, 300_000
    x = sample_discrete_gaussian(sigma, n, np.random.default_rng(7))
    support = np.arange(-6, 7)
    w = np.exp(-(support.astype(float) ** 2) / (2 * sigma**2))
    all_k = np.arange(-60, 61)
    p = w / np.exp(-(all_k.astype(float) ** 2) / (2 * sigma**2)).sum()
    counts = np.array([(x == k).sum() for k in support])
    chi2 = float((((counts - n * p) ** 2) / (n * p)).sum())
    dof = len(support) - 1
    # Chi-square with 12 dof exceeds 12 + 10 sqrt(24) ~ 61 with probability ~1e-8.
    assert chi2 < dof + 10 * math.sqrt(2 * dof)


def test_discrete_gaussian_with_zero_sigma_is_zero() -> None:
    assert not sample_discrete_gaussian(0.0, 5, np.random.default_rng(0)).any()


def test_fast_walsh_hadamard_is_its_own_inverse_up_to_scale() -> None:
    x = np.random.default_rng(1).normal(size=64)
    assert np.allclose(fwht(fwht(x)) / 64, x)
    h2 = np.array([[1, 1], [1, -1]])
    h = np.kron(np.kron(h2, h2), h2)
    assert np.allclose(fwht(x[:8]), h @ x[:8])


# -- configuration -------------------------------------------------------------------------------


def test_derived_parameters_follow_the_threshold_rule() -> None:
    p = derive_params(_cfg())
    assert p.padded_dimension == 1024
    assert p.total_stddev == 1.0
    # Per-site variance = target total variance / t, in the integer domain.
    assert p.local_variance_int * 6 == pytest.approx((1.0 * p.scale) ** 2)
    assert p.total_variance_int(6) == pytest.approx(p.scale**2)
    assert p.wraparound_probability <= 1e-6
    assert p.clip_range == (-(2**31), 2**31 - 1)
    assert p.l2_sensitivity_int >= p.scale * 1.0


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
def test_small_bit_width_scale_meets_the_wraparound_target(mechanism: str) -> None:
    p = derive_params(_cfg(bits=16, mechanism=mechanism))
    assert 1 < p.scale < 1e5
    assert p.wraparound_probability <= 1e-6
    assert p.wraparound_probability > 1e-7  # the scale is as large as the bound allows


def test_wraparound_bound_grows_with_the_scale() -> None:
    kw = {
        "l2_clip": 1.0,
        "local_stddev": 0.4,
        "num_clients": 10,
        "padded_dim": 1024,
        "bits": 16,
        "rotation": True,
    }
    for mech in ("ddgauss", "skellam"):
        ps = [wraparound_probability_bound(scale=s, mechanism=mech, **kw) for s in (1e3, 5e3, 2e4)]
        assert ps[0] <= ps[1] <= ps[2]


def test_impossible_bit_budget_is_refused() -> None:
    with pytest.raises(OverflowRiskError):
        derive_params(_cfg(bits=8, expected_clients=200, min_clients=100, dimension=10**6))


@pytest.mark.parametrize(
    "over",
    [
        {"noise_multiplier": None},
        {"target_epsilon": 1.0},
        {"noise_multiplier": 0.0},
        {"min_clients": 11},
        {"bits": 33},
        {"bits": 3},
        {"beta": 1.0},
        {"l2_clip": -1.0},
        {"mechanism": "laplace"},
        {"dimension": 0},
        {"delta": 0.0},
    ],
)
def test_invalid_configurations_are_refused(over) -> None:
    with pytest.raises(ConfigError):
        _cfg(**over)


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
def test_target_epsilon_calibration_never_overshoots(mechanism: str) -> None:
    cfg = _cfg(noise_multiplier=None, target_epsilon=3.0, rounds=5, mechanism=mechanism)
    p = derive_params(cfg)
    eps = distributed_dp_epsilon(p, rounds=5)
    assert 3.0 * 0.99 <= eps <= 3.0


# -- noise actually carried by any t survivors ----------------------------------------------------


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
def test_summed_noise_of_threshold_survivors_has_the_promised_variance(mechanism: str) -> None:
    cfg = _cfg(dimension=256, bits=20, mechanism=mechanism)
    p = derive_params(cfg)
    rng = np.random.default_rng(424242)
    enc = DistributedDPEncoder(p, rotation_seed=3, rng=rng)
    zeros = np.zeros(cfg.dimension)
    samples = []
    for _ in range(60):  # 60 rounds x 256 coordinates = 15360 samples of the summed noise
        total = sum(enc.encode(zeros).astype(np.int64) for _ in range(cfg.min_clients))
        samples.append(enc._wrap(total))
    s = np.concatenate(samples).astype(np.float64)
    promised = (p.total_stddev * p.scale) ** 2
    ratio = s.var() / promised
    # The sample variance of N normal-ish samples has relative sd sqrt(2/N) ~ 0.0114; falling
    # 7 sd below 1 has probability < 1e-11, while a share sized for n = 10 instead of t = 6 would
    # give a ratio of 0.6.
    assert ratio >= 1 - 7 * math.sqrt(2 / s.size)
    assert ratio <= 1 + 7 * math.sqrt(2 / s.size)


# -- encode / decode -------------------------------------------------------------------------------


@pytest.mark.parametrize("rotation", ["hadamard", "none"])
@pytest.mark.parametrize("beta", [0.0, math.exp(-0.5)])
def test_noise_free_round_trip_is_within_the_documented_bound(rotation: str, beta: float) -> None:
    cfg = _cfg(dimension=300, bits=16, rotation=rotation, beta=beta)
    p = derive_params(cfg)
    rng = np.random.default_rng(5)
    enc = DistributedDPEncoder(p, rotation_seed=99, rng=rng)
    ups = [rng.normal(size=300) * 0.03 for _ in range(8)]
    ups.append(rng.normal(size=300) * 5)  # will be clipped
    clipped = [u * min(1.0, 1.0 / np.linalg.norm(u)) for u in ups]
    enc_sum = np.mod(sum(np.mod(enc._quantize(u), p.modulus) for u in ups), p.modulus)
    out = enc.decode(enc_sum, len(ups))
    err = float(np.linalg.norm(out - sum(clipped)))
    assert err <= p.quantization_error_bound(len(ups)) + 1e-9
    assert err > 0


def test_encode_adds_noise_and_decode_recovers_the_sum() -> None:
    cfg = _cfg(dimension=500, bits=24, noise_multiplier=0.01)
    p = derive_params(cfg)
    rng = np.random.default_rng(11)
    enc = DistributedDPEncoder(p, rotation_seed=1, rng=rng)
    ups = [rng.normal(size=500) * 0.01 for _ in range(7)]
    codes = [enc.encode(u) for u in ups]
    lo, hi = p.clip_range
    assert all(c.dtype == np.int64 and c.min() >= lo and c.max() <= hi for c in codes)
    assert not np.array_equal(codes[0], enc._quantize(ups[0]))
    out = enc.decode(sum(codes), 7)  # centred representatives are accepted too
    # Noise of 7 >= t sites: per-coordinate stddev <= 0.01 * sqrt(7/6); 8 sigma in L-infinity.
    assert np.max(np.abs(out - sum(ups))) < 8 * 0.01 * math.sqrt(7 / 6)


def test_rotation_seed_must_match_between_encoder_and_decoder() -> None:
    cfg = _cfg(dimension=64, noise_multiplier=1e-3)
    p = derive_params(cfg)
    u = np.linspace(-0.1, 0.1, 64)
    a = DistributedDPEncoder(p, rotation_seed=1, rng=np.random.default_rng(0))
    b = DistributedDPEncoder(p, rotation_seed=2, rng=np.random.default_rng(0))
    code = sum(a.encode(u) for _ in range(6))
    assert np.allclose(a.decode(code, 6), 6 * u, atol=0.05)
    assert not np.allclose(b.decode(code, 6), 6 * u, atol=0.05)


def test_decode_and_encode_reject_bad_input() -> None:
    enc = DistributedDPEncoder(_cfg(dimension=10), rng=np.random.default_rng(0))
    with pytest.raises(ConfigError):
        enc.encode(np.zeros(11))
    with pytest.raises(ConfigError):
        enc.encode(np.array([np.nan] * 10))
    code = enc.encode(np.zeros(10))
    with pytest.raises(ConfigError):
        enc.decode(code, 5)  # below the threshold: the promised noise is missing
    with pytest.raises(ConfigError):
        enc.decode(code, 11)
    with pytest.raises(ConfigError):
        enc.decode(code.astype(np.float64), 6)


def test_default_generator_is_seeded_from_the_os() -> None:
    p = derive_params(_cfg(dimension=16))
    a = DistributedDPEncoder(p).encode(np.zeros(16))
    b = DistributedDPEncoder(p).encode(np.zeros(16))
    assert not np.array_equal(a, b)


# -- accounting ------------------------------------------------------------------------------------


def test_pinned_distributed_epsilons() -> None:
    p = derive_params(_cfg())
    assert distributed_dp_epsilon(p) == pytest.approx(4.75276, rel=1e-4)
    assert distributed_dp_epsilon(p, rounds=10) == pytest.approx(19.8020, rel=1e-4)
    # More survivors than the threshold carry more noise: a smaller epsilon.
    assert distributed_dp_epsilon(p, survivors=10) < distributed_dp_epsilon(p)


@given(
    z=st.floats(min_value=0.3, max_value=5.0),
    t=st.integers(min_value=2, max_value=30),
    extra=st.integers(min_value=0, max_value=30),
    log2_d=st.integers(min_value=0, max_value=14),
    bits=st.integers(min_value=14, max_value=32),
    beta=st.sampled_from([0.0, math.exp(-0.5)]),
    mechanism=st.sampled_from(["ddgauss", "skellam"]),
    rounds=st.integers(min_value=1, max_value=20),
)
def test_distributed_epsilon_never_below_central_gaussian(
    z, t, extra, log2_d, bits, beta, mechanism, rounds
) -> None:
    try:
        cfg = _cfg(
            noise_multiplier=z,
            min_clients=t,
            expected_clients=t + extra,
            dimension=2**log2_d,
            bits=bits,
            beta=beta,
            mechanism=mechanism,
            max_wraparound_probability=1e-3,
        )
        p = derive_params(cfg)
    except OverflowRiskError:
        return
    central = rdp_to_epsilon(DEFAULT_ORDERS, compute_rdp_gaussian(z, rounds), 1e-5)[0]
    assert distributed_dp_epsilon(p, rounds=rounds) >= central
    for m in {t, t + extra}:
        assert (
            distributed_dp_epsilon(p, rounds=rounds, survivors=m)
            >= rdp_to_epsilon(
                DEFAULT_ORDERS, compute_rdp_gaussian(z * math.sqrt(m / t), rounds), 1e-5
            )[0]
        )


def test_site_level_statement_accumulates() -> None:
    p = derive_params(_cfg())
    acc = RdpAccountant()
    s1, acc = site_level_statement(p, acc, survivors=8)
    s2, acc = site_level_statement(p, acc, survivors=6)
    assert s1.epsilon_round == pytest.approx(s1.epsilon_cumulative)
    assert s2.epsilon_cumulative > s2.epsilon_round > s1.epsilon_round
    assert s2.noise_stddev_total == 1.0 and s2.min_clients == 6 and s2.bits == 32
    assert len(acc.history) == 2
