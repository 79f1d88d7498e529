"""The stateful RDP accountant: composition, state round trip, budget checks, no heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.accounting import RdpAccountant, rdp
from secagg.errors import BudgetExceeded, ConfigError


def test_facts_figure_five_rounds_of_five_steps() -> None:
    acc = RdpAccountant()
    for _ in range(5):
        acc.step_sampled_gaussian(noise_multiplier=1.0, sample_rate=0.2, steps=5)
    assert acc.get_epsilon(1e-5) == pytest.approx(8.2497135430, rel=1e-9)
    assert len(acc.history) == 5


def test_composition_is_the_sum_of_rdp_curves() -> None:
    acc = RdpAccountant()
    acc.step_sampled_gaussian(1.1, 0.05, steps=100)
    acc.step_gaussian(4.0, steps=2)
    acc.step_distributed_discrete_gaussian(
        l2_sensitivity=1000.0, local_stddev=500.0, num_clients=8, max_clients=12, dim=256
    )
    acc.step_skellam(l2_sensitivity=1000.0, central_variance=2e6, dim=256)
    a = rdp.compute_rdp_sampled_gaussian(0.05, 1.1, 100)
    b = rdp.compute_rdp_gaussian(4.0, 2)
    c = rdp.compute_rdp_distributed_discrete_gaussian(
        l2_sensitivity=1000.0, local_stddev=500.0, num_clients=8, max_clients=12, dim=256
    )
    d = rdp.compute_rdp_skellam(l2_sensitivity=1000.0, central_variance=2e6, dim=256)
    expected = tuple(w + x + y + z for w, x, y, z in zip(a, b, c, d, strict=True))
    assert acc.rdp == pytest.approx(expected, rel=1e-12)


def test_generic_step_equals_typed_step() -> None:
    a, b = RdpAccountant(), RdpAccountant()
    a.step(mechanism="sampled_gaussian", noise_multiplier=0.9, sample_rate=0.01, steps=7)
    b.step_sampled_gaussian(0.9, 0.01, steps=7)
    assert a.rdp == b.rdp
    assert a.history == b.history


@given(
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0.5, max_value=5.0),
            st.floats(min_value=0.001, max_value=1.0),
            st.integers(min_value=1, max_value=50),
        ),
        min_size=1,
        max_size=4,
    ),
    split=st.integers(min_value=0, max_value=4),
)
def test_state_dict_round_trip_continues_composition_identically(steps, split) -> None:
    orders = (1.5, 2.0, 3.0, 8.0, 32.0)
    whole = RdpAccountant(orders)
    for z, q, k in steps:
        whole.step_sampled_gaussian(z, q, k)
    first = RdpAccountant(orders)
    for z, q, k in steps[:split]:
        first.step_sampled_gaussian(z, q, k)
    blob = json.dumps(first.state_dict())
    resumed = RdpAccountant()
    resumed.load_state_dict(json.loads(blob))
    for z, q, k in steps[split:]:
        resumed.step_sampled_gaussian(z, q, k)
    assert resumed.orders == whole.orders
    assert resumed.rdp == whole.rdp
    assert resumed.history == whole.history
    assert resumed.get_epsilon(1e-5) == whole.get_epsilon(1e-5)


def test_state_dict_is_json_and_covers_every_mechanism() -> None:
    acc = RdpAccountant()
    acc.step_distributed_discrete_gaussian(
        l2_sensitivity=100.0, local_stddev=80.0, num_clients=5, dim=16
    )
    acc.step_skellam(l2_sensitivity=100.0, central_variance=40000.0, dim=16)
    other = RdpAccountant()
    other.load_state_dict(json.loads(json.dumps(acc.state_dict())))
    assert other.rdp == acc.rdp


def test_history_is_read_only() -> None:
    acc = RdpAccountant()
    acc.step_gaussian(1.0)
    assert isinstance(acc.history, tuple)
    with pytest.raises(AttributeError):
        acc.history = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        acc.history[0].steps = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"version": 99, "orders": [2.0], "history": []},
        {"version": 1, "orders": [0.5], "history": []},
        {
            "version": 1,
            "orders": [2.0],
            "history": [{"mechanism": "laplace", "params": {}, "steps": 1}],
        },
        {
            "version": 1,
            "orders": [2.0],
            "history": [{"mechanism": "gaussian", "params": {}, "steps": 1}],
        },
        {
            "version": 1,
            "orders": [2.0],
            "history": [{"mechanism": "gaussian", "params": {"noise_multiplier": "1"}, "steps": 1}],
        },
    ],
)
def test_malformed_state_is_rejected(state) -> None:
    with pytest.raises(ConfigError):
        RdpAccountant().load_state_dict(state)


def test_unknown_mechanism_and_bad_params_rejected() -> None:
    acc = RdpAccountant()
    with pytest.raises(ConfigError):
        acc.step(mechanism="laplace", scale=1.0)
    with pytest.raises(ConfigError):
        acc.step(mechanism="gaussian", noise_multiplier=1.0, sample_rate=0.1)
    with pytest.raises(ConfigError):
        acc.step_sampled_gaussian(1.0, 0.1, steps=-1)
    assert acc.history == ()


def test_check_budget_raises_and_leaves_the_accountant_unchanged() -> None:
    acc = RdpAccountant()
    acc.step_sampled_gaussian(1.0, 0.2, steps=20)
    before = acc.rdp
    eps = acc.check_budget(
        epsilon_budget=10.0,
        delta=1e-5,
        mechanism="sampled_gaussian",
        noise_multiplier=1.0,
        sample_rate=0.2,
        steps=5,
    )
    assert eps == pytest.approx(8.2497135430, rel=1e-9)
    with pytest.raises(BudgetExceeded):
        acc.check_budget(
            epsilon_budget=8.0,
            delta=1e-5,
            mechanism="sampled_gaussian",
            noise_multiplier=1.0,
            sample_rate=0.2,
            steps=5,
        )
    assert acc.rdp == before


def test_accounting_imports_neither_torch_nor_numpy() -> None:
    code = (
        "import sys, secagg.accounting; "
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_dp_package_does_not_import_torch() -> None:
    code = "import sys, secagg.dp; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
