"""CkksParameters: the 128-bit security table, the error bounds, the digest."""

from __future__ import annotations

import math

import pytest

from secagg.errors import ConfigError
from secagg.he import HE_STANDARD_128_CLASSICAL, CkksParameters


def test_default_parameters_are_within_the_128_bit_bound() -> None:
    p = CkksParameters()
    assert (p.poly_modulus_degree, p.coeff_mod_bit_sizes, p.global_scale_bits) == (
        8192,
        (60, 60, 60),
        80,
    )
    assert p.total_coeff_modulus_bits == 180 <= p.security_bound_bits == 218
    assert p.slots == 4096
    assert p.data_level_bit_sizes == (60, 60)
    assert p.headroom_bits == 37  # (59 + 59) - 1 - 80


def test_table_matches_the_he_standard() -> None:
    assert dict(HE_STANDARD_128_CLASSICAL) == {
        1024: 27,
        2048: 54,
        4096: 109,
        8192: 218,
        16384: 438,
        32768: 881,
    }


@pytest.mark.parametrize(
    ("degree", "chain"),
    [
        (8192, (60, 40, 40, 60, 40)),  # 240 > 218
        (8192, (60, 60, 60, 60)),  # 240 > 218
        (4096, (60, 50)),  # 110 > 109
        (16384, (60,) * 7 + (60, 60)),  # 540 > 438
    ],
)
def test_chain_above_the_security_bound_is_rejected(degree: int, chain: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match="insecure"):
        CkksParameters(poly_modulus_degree=degree, coeff_mod_bit_sizes=chain)


@pytest.mark.parametrize(
    ("degree", "chain", "scale_bits"),
    [(8192, (60, 40, 40, 60), 80), (8192, (58, 60, 60, 40), 80), (4096, (60, 49), 40)],
)
def test_chain_at_or_below_the_bound_is_accepted(
    degree: int, chain: tuple[int, ...], scale_bits: int
) -> None:
    p = CkksParameters(
        poly_modulus_degree=degree, coeff_mod_bit_sizes=chain, global_scale_bits=scale_bits
    )
    assert p.total_coeff_modulus_bits <= HE_STANDARD_128_CLASSICAL[degree]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"poly_modulus_degree": 6000},
        {"poly_modulus_degree": 65536},
        {"poly_modulus_degree": 8192.0},
        {"coeff_mod_bit_sizes": (60,)},
        {"coeff_mod_bit_sizes": ()},
        {"coeff_mod_bit_sizes": (61, 60)},
        {"coeff_mod_bit_sizes": (60, 10)},
        {"coeff_mod_bit_sizes": (60, True)},
        {"coeff_mod_bit_sizes": "6060"},
        {"global_scale_bits": 10},
        {"global_scale_bits": 117},  # no headroom above the scale in two 60-bit data primes
        {"coeff_mod_bit_sizes": (60, 60), "global_scale_bits": 58},  # nor in one
        {"coeff_mod_bit_sizes": (40, 60), "global_scale_bits": 40},
    ],
)
def test_invalid_parameters_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        CkksParameters(**kwargs)  # type: ignore[arg-type]


def test_list_chain_is_normalised_to_a_tuple_and_hashable() -> None:
    p = CkksParameters(coeff_mod_bit_sizes=[60, 60, 60])  # type: ignore[arg-type]
    assert p.coeff_mod_bit_sizes == (60, 60, 60)
    assert hash(p) == hash(CkksParameters())


def test_digest_is_stable_and_binds_every_field() -> None:
    base = CkksParameters()
    assert base.digest() == CkksParameters().digest()
    assert len(base.digest()) == 32
    others = [
        CkksParameters(poly_modulus_degree=16384),
        CkksParameters(coeff_mod_bit_sizes=(60, 40, 60)),
        CkksParameters(coeff_mod_bit_sizes=(59, 60, 60)),
        CkksParameters(global_scale_bits=39),
    ]
    digests = {base.digest(), *(o.digest() for o in others)}
    assert len(digests) == 1 + len(others)


def test_fresh_noise_bound_regression_value() -> None:
    # (B_clean / 2^59 + sqrt(N/3)(3 + 8 sqrt(N)) + N/2) / Delta at N = 8192, sigma = 3.2
    old = CkksParameters(coeff_mod_bit_sizes=(60, 60), global_scale_bits=40)
    assert old.fresh_noise_bound() == pytest.approx(3.828e-8, rel=1e-3)
    assert CkksParameters().fresh_noise_bound() == pytest.approx(3.828e-8 * 2.0**-40, rel=1e-3)


def test_decryption_error_l2_bound_regression_value() -> None:
    # sqrt(n N (N + 1) / 12) * sqrt(1 + 2 sqrt(x/N) + 2x/N), x = 128 ln 2, plus ~1e-10
    p = CkksParameters()
    assert p.decryption_error_l2_bound(10) == pytest.approx(8293.6, rel=1e-4)
    assert p.decryption_error_l2_bound(40) == pytest.approx(2 * p.decryption_error_l2_bound(10))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError):
            p.decryption_error_l2_bound(bad)  # type: ignore[arg-type]


def test_precision_bound_grows_linearly_with_sites() -> None:
    p = CkksParameters()
    one = p.precision_bound(1, 0.0)
    assert one == pytest.approx(p.fresh_noise_bound())
    assert p.precision_bound(10, 0.0) == pytest.approx(10 * one)
    assert p.precision_bound(10, 1.0) > p.precision_bound(10, 0.0)
    assert p.precision_bound(10, 1.0) < 1e-6


def test_precision_bound_refuses_sums_that_could_wrap() -> None:
    p = CkksParameters()
    assert math.isfinite(p.precision_bound(2, 2.0**35))
    with pytest.raises(ConfigError, match="overflow"):
        p.precision_bound(4, 2.0**35)  # 2^37 reaches the headroom
    for n, a in [(0, 1.0), (1, -1.0), (1, math.nan), (1, math.inf)]:
        with pytest.raises(ConfigError):
            p.precision_bound(n, a)
