"""The main job: hospitals train a breast-cancer classifier together, privately.

An aggregator and ``sites`` simulated hospitals (each a non-IID slice of scikit-learn's Wisconsin
breast-cancer data) run FedAvg for ``rounds`` rounds:

* each hospital trains the global 30-64-2 MLP on its records with DP-SGD (Opacus): record-level DP,
  its own ledger and budget (a hospital whose next round would exceed its budget declines);
* each hospital clips its update, adds its share of distributed discrete Gaussian noise and rounds
  it into Z_(2^b) (:class:`~secagg.dp.DistributedDPEncoder`): site-level DP;
* the encodings are summed by secure aggregation (SecAgg masking) through a
  :class:`~secagg.demo.runner.RoundRunner`; some hospitals drop at the masked-input stage, others
  at unmask; the aggregator decodes the noisy sum, divides by the number of survivors and steps
  the global model;
* every round leaves ``rounds/<id>/`` in the run directory (round record, privacy report,
  accountant state, global weights), a table row on the terminal, and at the end ``report.html``
  and a comparison against models trained on one hospital alone with the same DP settings.

Torch is imported only through :mod:`secagg.dp` (inside :func:`run_demo`).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from secagg.accounting.accountant import RdpAccountant
from secagg.accounting.report import (
    PRIVACY_REPORT_SCHEMA_VERSION,
    VACUOUS_EPSILON_PER_ROUND,
    PrivacyReport,
    is_vacuous,
)
from secagg.demo.data import DemoData, load_demo_data
from secagg.demo.runner import RoundOutcome, RoundRunner, RoundTask
from secagg.dp.distributed import (
    DistributedDPConfig,
    DistributedDPEncoder,
    site_level_statement,
)
from secagg.errors import BudgetExceeded, ConfigError, RoundAborted
from secagg.protocol import Stage
from secagg.protocol.params import full_graph_threshold
from secagg.reporting.numbers import fmt_eps, fmt_probability
from secagg.reporting.rundir import RoundRecord, RunDirectory

__all__ = ["POLICY_CORRUPT_FRACTION", "DemoConfig", "DemoResult", "fault_schedule", "run_demo"]

#: The sites' default policy: a malicious aggregator with 10 % of the roster colluding with it,
#: under which a full-graph round needs t > ceil((n + 0.1 n) / 2) (secagg.protocol.params).
POLICY_CORRUPT_FRACTION = 0.1
#: Keys of ``config.json`` that are derived, not knobs.
_DERIVED_KEYS = ("threshold", "run_nonce")


@dataclass(frozen=True)
class DemoConfig:
    """Every knob of the demo (the defaults are what ``secagg demo`` runs)."""

    sites: int = 5
    rounds: int = 15
    local_epochs: int = 2
    sample_rate: float = 0.2
    weight_cap: int = 100
    learning_rate: float = 0.2
    record_noise: float = 1.5
    max_grad_norm: float = 1.0
    accountant: str = "pld"
    delta: float = 1e-5
    epsilon_budget: float | None = None
    site_budgets: Mapping[str, float] = field(default_factory=dict)
    site_clip: float = 5.0
    site_noise: float = 0.01
    server_momentum: float = 0.0  # FedAvgM; measured no better here (docs/demo.md)
    bits: int = 32
    label_alpha: float = 0.2  # strong label skew: referral centres vs screening clinics
    size_alpha: float = 100.0
    test_fraction: float = 0.25
    dropouts: bool = True
    baselines: bool = True
    seed: int = 0
    reproducible_noise: bool = False

    def __post_init__(self) -> None:
        if self.sites < 3:
            raise ConfigError("the demo needs at least 3 hospitals")
        if self.rounds < 1:
            raise ConfigError("rounds must be >= 1")
        if not 0 <= self.server_momentum < 1:
            raise ConfigError(f"server_momentum must lie in [0, 1), got {self.server_momentum}")
        try:
            self.threshold  # noqa: B018 - validates the roster size against the policy
        except ConfigError as exc:
            raise ConfigError(
                f"{self.sites} hospitals: {exc}. With its one dropout per round the demo needs "
                "at least 5 hospitals (or pass --no-dropouts)"
            ) from None

    @property
    def max_dropouts(self) -> int:
        """Dropouts per round in the simulated schedule (at most one)."""
        return 1 if self.dropouts else 0

    @property
    def threshold(self) -> int:
        """t: the largest number of survivors the schedule guarantees (``sites - max_dropouts``),
        checked against the sites' default policy (:data:`POLICY_CORRUPT_FRACTION`, a malicious
        aggregator): 4 of 5 hospitals."""
        return full_graph_threshold(
            self.sites,
            dropout_rate=self.max_dropouts / self.sites,
            corrupt_fraction=POLICY_CORRUPT_FRACTION,
        )

    def noise_seed(self, index: int) -> int | None:
        """Seed of hospital ``index``'s DP noise and sampling: None (the OS, private) unless
        ``reproducible_noise`` asked for a reproducible, explicitly non-private run."""
        if not self.reproducible_noise:
            return None
        return int(np.random.SeedSequence([self.seed, 0x5EED, index]).generate_state(1)[0])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["site_budgets"] = dict(self.site_budgets)
        d["threshold"] = self.threshold
        return d

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> DemoConfig:
        """The configuration of a run directory's ``config.json``."""
        return cls(**{k: v for k, v in stored.items() if k not in _DERIVED_KEYS})


@dataclass(frozen=True, eq=False)
class DemoResult:
    run_dir: Path
    federated_accuracy: float
    federated_f1: float
    baselines: tuple[dict[str, Any], ...]
    reports: tuple[PrivacyReport, ...]
    records: tuple[RoundRecord, ...]
    seconds: float

    @property
    def best_single_f1(self) -> float | None:
        return max((b["f1"] for b in self.baselines), default=None)


def fault_schedule(
    round_id: int, names: tuple[str, ...], seed: int = 0
) -> dict[Stage, frozenset[str]]:
    """The demo's simulated dropouts: at most one per round, fixed by ``seed``.

    Rounds 2, 5, 8, ... one hospital vanishes before sending its masked input (its update is not
    in the sum); rounds 3, 6, 9, ... one drops before unmasking (its input *is* in the sum; the
    others' shares recover its self mask). Which hospital is drawn from ``(seed, round_id)``.
    """
    if round_id % 3 == 1:
        return {}
    stage = Stage.MASKED_INPUT if round_id % 3 == 2 else Stage.UNMASK
    pick = int(np.random.default_rng([seed, round_id]).integers(len(names)))
    return {stage: frozenset({names[pick]})}


def _rotation_seed(seed: int, round_id: int) -> int:
    # Public and fixed before any site trains: independent of the data, as the wrap bound needs.
    h = hashlib.sha256(f"secagg-demo/rotation/{seed}/{round_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1


def _site_eps_cell(report: PrivacyReport) -> str:
    site = report.site_level
    if site is None:
        return "-"
    flag = " vacuous" if is_vacuous(site.epsilon_round) else ""
    return fmt_eps(site.epsilon_cumulative) + flag


_COLUMNS = (
    ("round", 5),
    ("participants", 12),
    ("dropouts", 44),
    ("accuracy", 8),
    ("F1", 5),
    ("site eps", 15),
    ("max record eps", 14),
)


def table_header() -> str:
    head = "  ".join(
        name.rjust(w) if k != 2 else name.ljust(w) for k, (name, w) in enumerate(_COLUMNS)
    )
    return head + "\n" + "  ".join("-" * w for _, w in _COLUMNS)


def table_row(
    record: RoundRecord, report: PrivacyReport, malignant: Mapping[str, float] | None = None
) -> str:
    """One row; a hospital missing from the sum is marked with its malignant share."""
    short = {"masked_input": "masked input", "unmask": "unmask"}
    drops = []
    for stage, names in record.dropouts.items():
        for s in names:
            cell = f"{s} @ {short.get(stage, stage)}"
            share = (malignant or {}).get(s)
            if stage == Stage.MASKED_INPUT.value and share is not None:
                cell += f" ({100 * share:.0f}% malignant)"
            drops.append(cell)
    drops += [f"{s} declined" for s in sorted(record.declined)]
    cells = (
        str(record.round_id),
        f"{len(report.participants)}/{len(record.roster)}",
        ", ".join(drops) or "-",
        f"{record.accuracy:.3f}",
        f"{record.f1:.3f}",
        _site_eps_cell(report),
        fmt_eps(report.max_record_level_epsilon),
    )
    return "  ".join(
        c.ljust(w) if k == 2 else c.rjust(w)
        for k, (c, (_, w)) in enumerate(zip(cells, _COLUMNS, strict=True))
    )


def table_notes(cfg: DemoConfig, reports: list[PrivacyReport]) -> list[str]:
    """The footnotes of the per-round table: what the marks mean."""
    notes = [
        "(N% malignant): a hospital whose input is not in this round's sum. Under label skew "
        "the average then leans towards the other hospitals' label mix, so accuracy can dip "
        "for that round; the DP-SGD noise makes every round wobble too (docs/demo.md)"
        + (
            f" (server momentum {cfg.server_momentum:g} carries the earlier rounds' direction "
            "through it)"
            if cfg.server_momentum
            else ""
        )
        + ". A hospital dropping at unmask is still in the sum."
    ]
    if any(r.site_level is not None and is_vacuous(r.site_level.epsilon_round) for r in reports):
        notes.append(
            f"vacuous: more than epsilon {VACUOUS_EPSILON_PER_ROUND:g} per round, a bound that "
            "rules out almost nothing (see the closing note)."
        )
    return notes


def default_run_dir() -> Path:
    return Path("runs") / f"demo-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"


def privacy_statement(cfg: DemoConfig, last: PrivacyReport | None) -> list[str]:
    """What the run's guarantees are, in words: the closing note of the terminal and the HTML."""
    lines: list[str] = []
    if cfg.reproducible_noise:
        lines.append(
            "NOT PRIVATE: --reproducible-noise seeded every DP noise and sampling draw from "
            f"--seed {cfg.seed}; anyone who knows the seed can remove the noise. The epsilons "
            "describe the mechanism, not this run."
        )
    if last is not None and last.record_level:
        worst = max(last.record_level, key=lambda r: r.epsilon_cumulative)
        lines.append(
            f"Record level (each patient): epsilon <= {fmt_eps(worst.epsilon_cumulative)} at "
            f"delta {worst.delta:g} after {last.round_id} rounds for the hospital that spent "
            f"most ({worst.site}), DP-SGD accounted by Opacus ({worst.accountant})."
        )
    if last is not None and last.site_level is not None:
        site = last.site_level
        if is_vacuous(site.epsilon_round):
            lines.append(
                f"Site level (a whole hospital): VACUOUS, epsilon {fmt_eps(site.epsilon_round)} "
                f"per round (> {VACUOUS_EPSILON_PER_ROUND:g}), "
                f"{fmt_eps(site.epsilon_cumulative)} in total. With {cfg.sites} hospitals, "
                "distributed noise large enough to hide one hospital's whole update would swamp "
                "the model (the noise on the average shrinks only with many more sites); the "
                "record-level guarantee above is the one that holds."
            )
        else:
            lines.append(
                f"Site level (a whole hospital): epsilon <= {fmt_eps(site.epsilon_cumulative)} "
                f"at delta {site.delta:g} ({fmt_eps(site.epsilon_round)} per round) while at "
                f"least {site.min_clients} hospitals' noise is in each sum."
            )
    lines.append(
        f"Assumed public: each hospital's dataset size. Its FedAvg weight min(records, "
        f"{cfg.weight_cap}) / {cfg.weight_cap} rides in the summed vector, so record-level DP "
        "treats the number of records at each hospital as known (only the total weight is "
        "revealed, with the site-level noise)."
    )
    return lines


def run_demo(
    config: DemoConfig | None = None,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    out: TextIO | None = None,
    progress: bool = True,
    runner_factory: Callable[[list[Any]], RoundRunner] | None = None,
) -> DemoResult:
    """Run the demo; write the run directory; return the figures. See the module docstring."""
    from secagg.demo.hospital import WEIGHT_COORDINATE_SCALE, DemoHospital, cached_params
    from secagg.demo.runner import InProcessRunner
    from secagg.dp import models
    from secagg.dp.opacus_site import OpacusSite, RecordLevelDPConfig
    from secagg.reporting.html import render_html_report

    out = out if out is not None else sys.stdout
    started = time.perf_counter()
    rd = RunDirectory(run_dir if run_dir is not None else default_run_dir())
    completed = rd.round_ids() if resume else []
    if resume:
        if not rd.exists():
            raise ConfigError(f"nothing to resume in {rd.path}")
        config = DemoConfig.from_stored(rd.read_config())
    else:
        if rd.exists():
            raise ConfigError(f"{rd.path} already holds a run (use --resume or another --run-dir)")
        config = config or DemoConfig()
        rd.write_config({**config.to_dict(), "run_nonce": os.urandom(16).hex()})
    cfg = config
    models.configure_torch(1)

    data: DemoData = load_demo_data(
        cfg.sites,
        test_fraction=cfg.test_fraction,
        label_alpha=cfg.label_alpha,
        size_alpha=cfg.size_alpha,
        seed=cfg.seed,
    )
    malignant = {s.name: s.malignant_fraction for s in data.sites}

    def record_dp(name: str) -> RecordLevelDPConfig:
        return RecordLevelDPConfig(
            noise_multiplier=cfg.record_noise,
            max_grad_norm=cfg.max_grad_norm,
            sample_rate=cfg.sample_rate,
            local_epochs=cfg.local_epochs,
            learning_rate=cfg.learning_rate,
            delta=cfg.delta,
            epsilon_budget=cfg.site_budgets.get(name, cfg.epsilon_budget),
            accountant=cfg.accountant,  # type: ignore[arg-type]
        )

    hospitals = [
        DemoHospital(
            s,
            record_dp(s.name),
            model_seed=cfg.seed,
            noise_seed=cfg.noise_seed(k),
            weight_cap=cfg.weight_cap,
        )
        for k, s in enumerate(data.sites)
    ]
    min_weight = 1.0 / cfg.weight_cap
    names = tuple(h.name for h in hospitals)
    runner = runner_factory(hospitals) if runner_factory else InProcessRunner(hospitals)
    global_model = models.mlp(in_features=data.test_features.shape[1], seed=cfg.seed)
    weights: npt.NDArray[np.float64] = models.flat_weights(global_model)
    initial_weights = weights.copy()
    velocity = np.zeros_like(weights)  # server momentum (FedAvgM); zero when it is off

    dp_config = DistributedDPConfig(
        l2_clip=cfg.site_clip,
        expected_clients=cfg.sites,
        min_clients=cfg.threshold,
        dimension=weights.size + 1,  # the FedAvg weight rides along as one more coordinate
        bits=cfg.bits,
        noise_multiplier=cfg.site_noise,
        delta=cfg.delta,
    )
    params = cached_params(dp_config)
    site_acc = RdpAccountant()
    reports: list[PrivacyReport] = []
    records: list[RoundRecord] = []
    if completed:
        last = completed[-1]
        state = rd.read_accountant_state(last)
        site_acc.load_state_dict(state["site_level"])
        for h in hospitals:
            h.site.load_state_dict(state["record_level"][h.name])
        weights = rd.read_global_weights(last)
        # w_r = w_(r-1) + v_r: the momentum is the last completed round's step.
        before = rd.read_global_weights(completed[-2]) if len(completed) > 1 else initial_weights
        velocity = weights - before if cfg.server_momentum else velocity
        reports = rd.read_reports()
        records = rd.read_records()

    print(
        f"secagg demo: {cfg.sites} hospitals, {cfg.rounds} rounds of FedAvg under secure "
        f"aggregation (t={cfg.threshold} of {cfg.sites}: tolerates {cfg.sites - cfg.threshold} "
        f"dropout per round, and sites assuming a malicious aggregator accept it), run "
        f"directory {rd.path}",
        file=out,
    )
    if cfg.reproducible_noise:
        print(
            "  NOT PRIVATE: --reproducible-noise seeds the DP noise from --seed (for "
            "reproducing figures only)",
            file=out,
        )
    for s in data.sites:
        print(
            f"  {s.name}: {s.size:>3} records, {100 * s.malignant_fraction:3.0f}% malignant",
            file=out,
        )
    print(
        f"  held-out test set: {data.test_labels.size} records (stratified); features scaled by "
        "the published ranges (no statistics fitted)",
        file=out,
    )
    print(
        f"  record level: DP-SGD noise {cfg.record_noise:g}, clip {cfg.max_grad_norm:g}, "
        f"sample rate {cfg.sample_rate:g}, {cfg.local_epochs} epoch(s)/round, "
        f"{cfg.accountant} accountant, "
        f"delta {cfg.delta:g}",
        file=out,
    )
    print(
        f"  site level: update clip {cfg.site_clip:g}, distributed discrete Gaussian noise "
        f"{cfg.site_noise:g} x clip in total for any {cfg.threshold} survivors, "
        f"{params.padded_dimension} coordinates in Z_(2^{cfg.bits}), wrap-around probability "
        f"{fmt_probability(params.wraparound_probability)} per round",
        file=out,
    )
    if cfg.server_momentum:
        print(f"  server: FedAvg with momentum {cfg.server_momentum:g} (FedAvgM)", file=out)
    if completed:
        print(f"  resuming after round {completed[-1]}", file=out)
    print(file=out)
    print(table_header(), file=out)
    for rec, rep in zip(records, reports, strict=True):
        print(table_row(rec, rep, malignant), file=out)

    decoder = DistributedDPEncoder(params)  # aggregator side: decodes only
    todo = range((completed[-1] if completed else 0) + 1, cfg.rounds + 1)
    bar = _progress(todo, enabled=progress)
    aborted: list[int] = []
    try:
        for round_id in bar:
            t0 = time.perf_counter()
            faults = fault_schedule(round_id, names, cfg.seed) if cfg.dropouts else {}
            seed = _rotation_seed(cfg.seed, round_id)
            task = RoundTask(
                round_id=round_id,
                global_weights=weights,
                dp_config=dp_config,
                rotation_seed=seed,
                roster=names,
                faults=faults,
            )
            try:
                outcome: RoundOutcome = runner.run(task)
            except RoundAborted as exc:
                # Too few hospitals left (e.g. one declined and one dropped): nothing is
                # released, the model stays as it is, the next round starts afresh.
                aborted.append(round_id)
                _write(bar, f"{round_id:>5}  aborted: {exc.reason} (model unchanged)", out)
                continue
            n = len(outcome.survivors)
            decoder = DistributedDPEncoder(params, rotation_seed=seed)
            noisy_sum = decoder.decode(outcome.total.astype(np.int64), n)
            # FedAvg: the securely summed weighted updates over the (noisy) total weight, which is
            # known only in sum; never below half a site's weight, so the noise cannot blow it up.
            total_weight = max(float(noisy_sum[-1]) / WEIGHT_COORDINATE_SCALE, 0.5 * min_weight)
            velocity = cfg.server_momentum * velocity + noisy_sum[:-1] / total_weight
            weights = weights + velocity
            statement, site_acc = site_level_statement(params, site_acc, survivors=n)
            models.load_flat_weights(global_model, weights)
            accuracy, f1 = models.accuracy_and_f1(
                data.test_labels, models.predict(global_model, data.test_features)
            )
            not_in_sum = tuple(
                s for s in names if s not in outcome.survivors and s not in outcome.declined
            )
            report = outcome.privacy_report
            if report is None or report.round_id != round_id:
                report = PrivacyReport(
                    schema_version=PRIVACY_REPORT_SCHEMA_VERSION,
                    round_id=round_id,
                    protection_mode="mask",
                    participants=outcome.survivors,
                    dropouts=not_in_sum,
                    site_level=statement,
                    record_level=tuple(sorted(outcome.statements, key=lambda s: s.site)),
                    created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                )
            record = RoundRecord(
                round_id=round_id,
                roster=names,
                survivors=outcome.survivors,
                dropouts={st.value: v for st, v in outcome.dropouts.items() if v},
                declined=dict(outcome.declined),
                accuracy=accuracy,
                f1=f1,
                aggregate_sha256=hashlib.sha256(outcome.total.astype("<u4").tobytes()).hexdigest(),
                session_id=outcome.session_id.hex(),
                rotation_seed=seed,
                seconds=round(time.perf_counter() - t0, 4),
            )
            # With a networked runner each hospital keeps its own ledger and reports it.
            ledgers = (
                dict(outcome.site_states)
                if outcome.site_states is not None
                else {h.name: h.site.state_dict() for h in hospitals}
            )
            rd.write_round(
                record,
                report,
                {"site_level": site_acc.state_dict(), "record_level": ledgers},
                weights,
            )
            reports.append(report)
            records.append(record)
            for reason in outcome.declined.values():
                _write(bar, f"  {reason}", out)
            _write(bar, table_row(record, report, malignant), out)

    finally:
        close = getattr(runner, "close", None)
        if close is not None:
            close()  # stops the aggregator and hospital processes of a networked runner
    for note in table_notes(cfg, reports):
        print(note, file=out)
    if (rd.path / "audit.jsonl").is_file():
        print(
            f"\naudit records: {rd.path / 'audit.jsonl'}, signed by the aggregator "
            f"(check them: secagg audit verify {rd.path})",
            file=out,
        )

    fed_acc, fed_f1 = (records[-1].accuracy, records[-1].f1) if records else (0.0, 0.0)
    baselines: list[dict[str, Any]] = []
    if cfg.baselines:
        print(
            "\nsingle-site baselines: each hospital alone, same DP-SGD settings, "
            f"{cfg.rounds} x {cfg.local_epochs} epochs, no site-level noise (nothing is shared), "
            "evaluated on the same held-out test set",
            file=out,
        )
        for k, s in enumerate(data.sites):
            site = OpacusSite(
                s.name,
                s.features,
                s.labels,
                models.mlp(in_features=s.features.shape[1], seed=cfg.seed),
                record_dp(s.name),
                seed=cfg.noise_seed(k),
            )
            w = initial_weights.copy()
            trained = 0
            for _ in range(cfg.rounds):
                if site.config.epsilon_budget is not None:
                    try:
                        site.check_budget()
                    except BudgetExceeded:
                        break
                w = w + site.train_round(w).delta_weights
                trained += 1
            m = models.mlp(in_features=s.features.shape[1], seed=cfg.seed)
            models.load_flat_weights(m, w)
            a, f = models.accuracy_and_f1(data.test_labels, models.predict(m, data.test_features))
            baselines.append(
                {
                    "model": f"{s.name} alone",
                    "site": s.name,
                    "records": s.size,
                    "malignant_fraction": round(s.malignant_fraction, 4),
                    "accuracy": a,
                    "f1": f,
                    "record_level_epsilon": site.epsilon,
                    "rounds": trained,
                    "federated_gain_accuracy": fed_acc - a,
                    "federated_gain_f1": fed_f1 - f,
                }
            )
    fed_eps = reports[-1].max_record_level_epsilon if reports else None
    comparison = [
        {
            "model": f"federated ({cfg.sites} hospitals)",
            "records": sum(s.size for s in data.sites),
            "malignant_fraction": round(
                sum(s.size * s.malignant_fraction for s in data.sites)
                / sum(s.size for s in data.sites),
                4,
            ),
            "accuracy": fed_acc,
            "f1": fed_f1,
            "record_level_epsilon": fed_eps,
            "site_level_epsilon": (
                reports[-1].site_level.epsilon_cumulative
                if reports and reports[-1].site_level
                else None
            ),
            "rounds": len(records),
        },
        *baselines,
    ]
    verdict = _verdict(fed_f1, baselines) if baselines else None
    statement_lines = privacy_statement(cfg, reports[-1] if reports else None)
    seconds = time.perf_counter() - started
    rd.write_summary(
        {
            "comparison": comparison,
            "verdict": verdict,
            "privacy": statement_lines,
            "aborted_rounds": aborted,
            "seconds": round(seconds, 2),
        }
    )
    report_path = render_html_report(rd.path)
    if baselines:
        print(_comparison_table(comparison), file=out)
        print(verdict, file=out)
    print(file=out)
    for line in statement_lines:
        print(line, file=out)
    print(
        f"\nrun directory: {rd.path}\nreport: {report_path}\ntotal time: {seconds:.1f} s", file=out
    )
    return DemoResult(
        run_dir=rd.path,
        federated_accuracy=fed_acc,
        federated_f1=fed_f1,
        baselines=tuple(baselines),
        reports=tuple(reports),
        records=tuple(records),
        seconds=seconds,
    )


def _verdict(fed_f1: float, baselines: list[dict[str, Any]]) -> str:
    best = max(baselines, key=lambda b: b["f1"])
    margin = fed_f1 - best["f1"]
    head = (
        f"federated F1 {fed_f1:.3f} is {'above' if margin > 0 else 'NOT above'} the best "
        f"single-site F1 {best['f1']:.3f} ({best['model']}): margin {margin:+.3f}"
    )
    losers = [b["site"] for b in baselines if b["federated_gain_f1"] < 0]
    if not losers:
        return head + "; every hospital gains from federating."
    return head + f"; {', '.join(losers)} did better alone."


def _comparison_table(rows: list[dict[str, Any]]) -> str:
    header = ("model", "records", "malignant", "accuracy", "F1", "F1 gain", "record eps")
    cells = [header] + [
        (
            str(r["model"]),
            str(r["records"]),
            f"{100 * r['malignant_fraction']:.0f}%",
            f"{r['accuracy']:.3f}",
            f"{r['f1']:.3f}",
            f"{r['federated_gain_f1']:+.3f}" if "federated_gain_f1" in r else "",
            fmt_eps(r.get("record_level_epsilon")),
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = []
    for k, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("F1 gain: the federated model's F1 minus that hospital's own model's F1.")
    return "\n".join(lines)


def _progress(it: range, *, enabled: bool) -> Any:
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc="rounds", unit="round", leave=False, file=sys.stderr, dynamic_ncols=True)


def _write(bar: Any, line: str, out: TextIO) -> None:
    if hasattr(bar, "write") and out is sys.stdout:
        bar.write(line, file=out)
    else:
        print(line, file=out)
