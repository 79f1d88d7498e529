"""Record-level DP with Opacus: statements against Google's dp_accounting, budgets, ledgers."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("opacus")
dp_accounting = pytest.importorskip("dp_accounting")

from secagg.dp import models  # noqa: E402
from secagg.dp.opacus_site import OpacusSite, RecordLevelDPConfig  # noqa: E402
from secagg.errors import BudgetExceeded, ConfigError  # noqa: E402

models.configure_torch(1)


def _data(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 30))
    y = (x[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(np.int64)
    return x, y


def _site(config: RecordLevelDPConfig, n: int = 60, name: str = "h1", seed: int = 1) -> OpacusSite:
    x, y = _data(n)
    return OpacusSite(name, x, y, models.mlp(), config, seed=seed)


def _dp_accounting_epsilon(z: float, q: float, steps: int, delta: float, kind: str) -> float:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps
    )
    if kind == "rdp":
        acc = dp_accounting.rdp.RdpAccountant()
    else:
        acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(event)
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize(
    ("accountant", "reference", "noise", "batch", "epochs", "rounds"),
    [
        ("rdp", "rdp", 1.0, 12, 1, 5),  # q = 0.2, 5 steps per round: the FACTS.md setting
        ("rdp", "rdp", 0.8, 20, 2, 3),
        ("prv", "pld", 1.0, 12, 1, 3),
    ],
)
def test_reported_epsilon_matches_dp_accounting_within_one_percent(
    accountant: str, reference: str, noise: float, batch: int, epochs: int, rounds: int
) -> None:
    cfg = RecordLevelDPConfig(
        noise_multiplier=noise, batch_size=batch, local_epochs=epochs, accountant=accountant
    )
    site = _site(cfg)
    w = models.flat_weights(site.model)
    statements = []
    for _ in range(rounds):
        update = site.train_round(w)
        w = w + update.delta_weights
        statements.append(update.statement)
    last = statements[-1]
    assert last.accountant == accountant
    assert last.sample_rate == pytest.approx(batch / 60)
    assert last.steps == epochs * (60 // batch)
    total_steps = sum(s.steps for s in statements)
    expected = _dp_accounting_epsilon(noise, last.sample_rate, total_steps, 1e-5, reference)
    assert last.epsilon_cumulative == pytest.approx(expected, rel=0.01)
    one_round = _dp_accounting_epsilon(noise, last.sample_rate, last.steps, 1e-5, reference)
    assert last.epsilon_round == pytest.approx(one_round, rel=0.01)


def test_facts_figure_five_rounds_of_five_steps_is_8_25_by_rdp_and_less_by_pld() -> None:
    cumulative = {}
    for accountant in ("rdp", "pld"):
        site = _site(
            RecordLevelDPConfig(noise_multiplier=1.0, batch_size=12, accountant=accountant)
        )
        w = models.flat_weights(site.model)
        for _ in range(5):
            st = site.train_round(w).statement
        cumulative[accountant] = st.epsilon_cumulative
    assert cumulative["rdp"] == pytest.approx(8.2497, abs=1e-2)  # FACTS.md (Opacus RDP)
    assert cumulative["pld"] < cumulative["rdp"]


def test_prospective_epsilon_is_what_the_round_then_costs_and_spends_nothing() -> None:
    site = _site(RecordLevelDPConfig(batch_size=12))
    w = models.flat_weights(site.model)
    site.train_round(w)
    before = site.state_dict()
    predicted = site.prospective_epsilon()
    assert site.state_dict() == before
    assert site.train_round(w).statement.epsilon_cumulative == pytest.approx(predicted)


def test_site_over_budget_declines_before_training() -> None:
    site = _site(RecordLevelDPConfig(batch_size=12, epsilon_budget=5.0, accountant="rdp"))
    w = models.flat_weights(site.model)
    site.train_round(w)  # epsilon 4.54 (RDP); a second round would bring 5.9
    ledger = site.state_dict()
    before_weights = models.flat_weights(site.model)
    with pytest.raises(BudgetExceeded, match="h1 declines"):
        site.train_round(w)
    assert site.state_dict() == ledger  # nothing trained, nothing spent
    assert np.array_equal(models.flat_weights(site.model), before_weights)


def test_ledger_round_trips_through_json_and_continues() -> None:
    cfg = RecordLevelDPConfig(batch_size=12)
    a = _site(cfg)
    w = models.flat_weights(a.model)
    for _ in range(2):
        a.train_round(w)
    state = json.loads(json.dumps(a.state_dict()))
    b = _site(cfg)
    b.load_state_dict(state)
    assert b.epsilon == pytest.approx(a.epsilon)
    assert b.train_round(w).statement.epsilon_cumulative == pytest.approx(
        a.train_round(w).statement.epsilon_cumulative
    )
    with pytest.raises(ConfigError):
        _site(RecordLevelDPConfig(batch_size=12, accountant="prv")).load_state_dict(state)
    with pytest.raises(ConfigError):
        _site(cfg, name="h2").load_state_dict(state)


def test_sample_rate_config_sets_the_batch_size() -> None:
    site = _site(RecordLevelDPConfig(sample_rate=0.25), n=40)
    assert site.sample_rate == pytest.approx(0.25)
    assert site.steps_per_round == 4


def test_empty_poisson_batches_are_trained_and_accounted() -> None:
    # 3 records at rate 1/3: P(empty batch) = 8/27 per step, so 30 steps hit some empty ones.
    site = _site(RecordLevelDPConfig(batch_size=1, local_epochs=10), n=3)
    w = models.flat_weights(site.model)
    update = site.train_round(w)
    assert update.statement.steps == 30
    assert np.all(np.isfinite(update.delta_weights)) and np.any(update.delta_weights)


def test_noise_is_not_the_same_on_every_run_without_a_seed() -> None:
    x, y = _data()
    cfg = RecordLevelDPConfig(batch_size=12)
    ups = []
    for _ in range(2):
        site = OpacusSite("h", x, y, models.mlp(), cfg)
        ups.append(site.train_round(models.flat_weights(models.mlp())).delta_weights)
    assert not np.allclose(ups[0], ups[1])


@pytest.mark.parametrize(
    "over",
    [
        {"noise_multiplier": 0.0},
        {"batch_size": 0},
        {"local_epochs": 0},
        {"accountant": "moments"},
        {"delta": 1.0},
        {"epsilon_budget": 0.0},
        {"sample_rate": 1.5},
    ],
)
def test_invalid_record_level_configs_are_refused(over: dict) -> None:
    with pytest.raises(ConfigError):
        RecordLevelDPConfig(**over)


def test_model_weights_round_trip_and_metrics() -> None:
    m = models.mlp(seed=3)
    w = models.flat_weights(m)
    assert w.shape == (30 * 64 + 64 + 64 * 2 + 2,)
    m2 = models.mlp(seed=4)
    models.load_flat_weights(m2, w)
    assert np.array_equal(models.flat_weights(m2), w)
    with pytest.raises(ValueError):
        models.load_flat_weights(m2, w[:-1])
    acc, f1 = models.accuracy_and_f1([0, 0, 1, 1], [0, 1, 1, 1])
    assert acc == 0.75 and f1 == pytest.approx(2 / 3)
