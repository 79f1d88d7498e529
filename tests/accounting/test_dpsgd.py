"""Record-level DP-SGD epsilon through dp-accounting: an upper bound, within 1 % of the truth."""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant

from secagg.accounting.dpsgd import dpsgd_epsilon, dpsgd_epsilons
from secagg.accounting.report import SiteRecordLevelDP
from secagg.dp.opacus_site import RecordLevelDPConfig
from secagg.errors import ConfigError

GRID = [  # (noise multiplier, sample rate, steps, delta)
    (1.0, 0.01, 1000, 1e-5),
    (0.5, 0.2, 1000, 1e-5),
    (1.1, 0.05, 200, 1e-6),
    (1.5, 0.2, 30, 1e-5),
    (2.0, 0.001, 10000, 1e-5),
    (0.8, 0.1, 100, 1e-3),
    (4.0, 0.5, 50, 1e-5),
    (0.3, 1.0, 1000, 1e-5),
]


def _finer_pld(z: float, q: float, steps: int, delta: float, interval: float) -> float:
    """dp-accounting's PLD at a finer discretisation: a tighter upper bound, the reference."""
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps
    )
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval)
    return float(accountant.compose(event).get_epsilon(delta))


@pytest.mark.parametrize(("z", "q", "steps", "delta"), GRID)
def test_the_reported_epsilon_is_dp_accounting_pld_within_one_percent_and_never_below(
    z, q, steps, delta
):
    both = dpsgd_epsilons([(z, q, steps)], delta)
    assert both.pld == dpsgd_epsilon([(z, q, steps)], delta)  # the default is PLD
    reference = _finer_pld(z, q, steps, delta, interval=min(1e-3, max(1e-6, 5e-5 * both.rdp)))
    assert reference <= both.pld <= 1.01 * reference, (reference, both.pld)
    assert both.rdp >= both.pld * (1 - 1e-9), "RDP is the looser bound"


def test_a_history_composes_its_rounds():
    one = dpsgd_epsilon([(1.0, 0.05, 100)], 1e-5)
    two = dpsgd_epsilon([(1.0, 0.05, 100), (1.0, 0.05, 100)], 1e-5)
    assert two == pytest.approx(dpsgd_epsilon([(1.0, 0.05, 200)], 1e-5), rel=1e-3)
    assert one < two


def test_gdp_is_refused_with_the_reason_everywhere():
    with pytest.raises(ConfigError, match="approximation, not an upper bound"):
        RecordLevelDPConfig(accountant="gdp")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="approximation, not an upper bound"):
        dpsgd_epsilon([(1.0, 0.1, 10)], 1e-5, "gdp")
    with pytest.raises(ConfigError, match="accountant"):
        SiteRecordLevelDP(
            site="a",
            accountant="gdp",
            noise_multiplier=1.0,
            sample_rate=0.1,
            steps=10,
            delta=1e-5,
            epsilon_round=1.0,
            epsilon_cumulative=1.0,
        )
