"""Record-level DP at one site: DP-SGD with Opacus, a per-site privacy budget, and the statement.

This module (with :mod:`secagg.dp.models`) is the only importer of torch and opacus; nothing else in
secagg imports it implicitly, so ``import secagg`` and ``import secagg.dp`` stay torch-free.

A :class:`OpacusSite` owns one site's model, optimizer and Poisson-sampled data loader wrapped by
``opacus.PrivacyEngine``. Each round it

1. computes the epsilon the *next* round would bring (on a copy of its accountant) and, if that
   would exceed the site's budget, raises :class:`~secagg.errors.BudgetExceeded` **before**
   touching its data;
2. loads the global weights, trains ``local_epochs`` epochs of DP-SGD;
3. returns its update (local minus global weights, a float vector) and the round's
   :class:`~secagg.accounting.report.SiteRecordLevelDP` (noise multiplier, sample rate, steps,
   delta, epsilon of this round alone and cumulative).

Randomness: ``PrivacyEngine(secure_mode=True)`` needs ``torchcsprng``, which is not installable for
torch 2.13, so DP-SGD runs with ``secure_mode=False``. Left alone, Opacus would then take its noise
and its Poisson sampling from torch's *default* generator, whose seed is a fixed constant in every
fresh process: the noise would be the same on every run. Each site therefore gets its own
``torch.Generator`` objects seeded with 64 bits from ``os.urandom`` (or from an explicit seed, for
reproducible tests only). torch's generator is a Mersenne Twister, not a CSPRNG (docs/privacy.md).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from opacus import PrivacyEngine
from opacus.accountants import IAccountant, create_accountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from secagg.accounting.dpsgd import RECORD_ACCOUNTANTS, check_record_accountant, dpsgd_epsilon
from secagg.accounting.report import SiteRecordLevelDP
from secagg.dp import models
from secagg.errors import BudgetExceeded, ConfigError

__all__ = ["ACCOUNTANTS", "OpacusSite", "RecordLevelDPConfig", "SiteUpdate"]

# Opacus logs a warning for every empty Poisson batch; they are expected on small sites.
logging.getLogger("opacus.data_loader").setLevel(logging.ERROR)

AccountantName = Literal["pld", "rdp", "prv"]
ACCOUNTANTS: tuple[str, ...] = RECORD_ACCOUNTANTS


@dataclass(frozen=True)
class RecordLevelDPConfig:
    """DP-SGD settings of one site.

    Attributes:
        noise_multiplier: Gaussian noise stddev / ``max_grad_norm``.
        max_grad_norm: per-example gradient clip (L2).
        batch_size: expected batch size; Opacus samples each record independently with rate
            ``1 / ceil(n / batch_size)`` (Poisson sampling), which is the reported sample rate.
        sample_rate: alternative to ``batch_size``: the batch size becomes ``round(rate * n)``
            so that sites of different sizes sample at (about) the same rate and spend the same
            epsilon per epoch.
        local_epochs: epochs of local training per round (``steps = epochs * ceil(n / batch)``).
        learning_rate: plain SGD step size (no momentum: its state would outlive the round).
        delta: the delta at which epsilons are stated.
        epsilon_budget: the site refuses a round that would take it above this (``None``: no cap).
        accountant: ``"pld"`` (default: Google's dp-accounting PLD, the tight upper bound),
            ``"rdp"`` (dp-accounting's RDP, looser) or ``"prv"`` (Opacus's PRV upper estimate).
            ``"gdp"`` is refused: it is an approximation that can fall below the true epsilon.
        grad_sample_mode: Opacus's per-sample gradient engine; ``"ew"`` was fastest here.
    """

    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    batch_size: int = 16
    sample_rate: float | None = None
    local_epochs: int = 1
    learning_rate: float = 0.5
    delta: float = 1e-5
    epsilon_budget: float | None = None
    accountant: AccountantName = "pld"
    grad_sample_mode: str = "ew"

    def __post_init__(self) -> None:
        if not 0 < self.noise_multiplier < math.inf:
            raise ConfigError("noise_multiplier must be positive and finite")
        if not 0 < self.max_grad_norm < math.inf:
            raise ConfigError("max_grad_norm must be positive and finite")
        for name in ("batch_size", "local_epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.sample_rate is not None and not 0 < self.sample_rate <= 1:
            raise ConfigError(f"sample_rate must lie in (0, 1], got {self.sample_rate}")
        if not 0 < self.learning_rate < math.inf:
            raise ConfigError("learning_rate must be positive and finite")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta must lie in (0, 1), got {self.delta}")
        if self.epsilon_budget is not None and not self.epsilon_budget > 0:
            raise ConfigError("epsilon_budget must be positive (or None for no cap)")
        check_record_accountant(self.accountant)

    @property
    def opacus_accountant(self) -> str:
        """The Opacus accountant that keeps the (z, q, steps) history; PLD and RDP epsilons
        are computed from that history by dp-accounting."""
        return "prv" if self.accountant == "prv" else "rdp"


@dataclass(frozen=True, eq=False)
class SiteUpdate:
    """What one round of local training produced: the update and the privacy it cost."""

    site: str
    delta_weights: npt.NDArray[np.float64]
    num_examples: int
    statement: SiteRecordLevelDP


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int.from_bytes(os.urandom(8), "little") if seed is None else seed)
    return g


# Opacus's conversions take ~0.1-1 s; the ledger repeats the same histories round after round,
# so epsilons are memoised on (accountant, history, delta) (dp-accounting's are memoised there).
_EPSILON_CACHE: dict[tuple[str, tuple[tuple[float, float, int], ...], float], float] = {}


def _epsilon(accountant: IAccountant, delta: float, name: str) -> float:
    """The epsilon of an Opacus history by the named accountant (dp-accounting for pld/rdp)."""
    history = tuple((float(z), float(q), int(s)) for z, q, s in accountant.history)
    if not history:
        return 0.0
    if name in ("pld", "rdp"):
        return dpsgd_epsilon(history, delta, name)
    key = (accountant.mechanism(), history, float(delta))
    if key not in _EPSILON_CACHE:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _EPSILON_CACHE[key] = float(accountant.get_epsilon(delta=delta))
    return _EPSILON_CACHE[key]


class OpacusSite:
    """One site's DP-SGD trainer and record-level privacy ledger.

    Args:
        name: the site's name (as in the roster and the reports).
        features, labels: the site's local data (float matrix, integer class labels).
        model: the model to train (e.g. :func:`secagg.dp.models.mlp`); it is wrapped in place.
        config: DP-SGD settings and the site's budget.
        seed: seeds the noise and sampling generators **for reproducible tests only**; the
            default draws them from ``os.urandom``.
    """

    def __init__(
        self,
        name: str,
        features: npt.ArrayLike,
        labels: npt.ArrayLike,
        model: nn.Module,
        config: RecordLevelDPConfig | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError("a site needs a non-empty name")
        self.name = name
        self.config = config or RecordLevelDPConfig()
        x = torch.as_tensor(np.asarray(features, dtype=np.float32))
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ConfigError("features must be an (n, d) matrix and labels a length-n vector")
        self.num_examples = int(x.shape[0])
        batch = self.config.batch_size
        if self.config.sample_rate is not None:
            batch = max(1, round(self.config.sample_rate * self.num_examples))
        loader = DataLoader(
            TensorDataset(x, y),
            batch_size=min(batch, self.num_examples),
            generator=_generator(None if seed is None else seed + 1),
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=self.config.learning_rate)
        with warnings.catch_warnings():
            # "Secure RNG turned off": known and documented (torchcsprng is unavailable).
            warnings.simplefilter("ignore")
            self._engine = PrivacyEngine(
                accountant=self.config.opacus_accountant, secure_mode=False
            )
            self.model, self.optimizer, self.loader = self._engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=self.config.noise_multiplier,
                max_grad_norm=self.config.max_grad_norm,
                poisson_sampling=True,
                grad_sample_mode=self.config.grad_sample_mode,
                noise_generator=_generator(seed),
            )
        self._criterion = nn.CrossEntropyLoss()
        self.sample_rate = 1.0 / len(self.loader)
        self.steps_per_round = self.config.local_epochs * len(self.loader)

    # -- privacy ledger ------------------------------------------------------------------------

    @property
    def accountant(self) -> IAccountant:
        return self._engine.accountant

    @property
    def epsilon(self) -> float:
        """Cumulative record-level epsilon spent so far, at the config's delta."""
        return _epsilon(self.accountant, self.config.delta, self.config.accountant)

    def _with_one_round(self, accountant: IAccountant) -> IAccountant:
        trial = copy.deepcopy(accountant)
        for _ in range(self.steps_per_round):
            trial.step(noise_multiplier=self.config.noise_multiplier, sample_rate=self.sample_rate)
        return trial

    def prospective_epsilon(self) -> float:
        """Cumulative epsilon after one more round (computed on a copy; nothing is spent)."""
        return _epsilon(
            self._with_one_round(self.accountant), self.config.delta, self.config.accountant
        )

    def check_budget(self) -> float:
        """The prospective epsilon; raise :class:`BudgetExceeded` if it is above the budget."""
        eps = self.prospective_epsilon()
        budget = self.config.epsilon_budget
        if budget is not None and eps > budget:
            raise BudgetExceeded(
                f"site {self.name} declines: one more round would take its record-level epsilon "
                f"from {self.epsilon:.3f} to {eps:.3f} > budget {budget:g} "
                f"(delta={self.config.delta:g}, {self.config.accountant} accountant)"
            )
        return eps

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable ledger: accountant name and Opacus history ``(z, q, steps)``."""
        state = self.accountant.state_dict()
        return {
            "site": self.name,
            "accountant": self.config.accountant,
            "history": [[float(z), float(q), int(s)] for z, q, s in state["history"]],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the ledger of a restarted site (the accountant must be the same kind)."""
        if state.get("accountant") != self.config.accountant or state.get("site") != self.name:
            raise ConfigError(
                f"ledger of {state.get('site')!r} ({state.get('accountant')!r}) does not belong to "
                f"{self.name!r} ({self.config.accountant!r})"
            )
        history = [(float(z), float(q), int(s)) for z, q, s in state["history"]]
        self.accountant.load_state_dict(
            {"history": history, "mechanism": self.accountant.mechanism()}
        )

    # -- training --------------------------------------------------------------------------------

    def _round_epsilon(self) -> float:
        one = create_accountant(self.config.opacus_accountant)
        one.history = [(self.config.noise_multiplier, self.sample_rate, self.steps_per_round)]
        return _epsilon(one, self.config.delta, self.config.accountant)

    def _empty_batch_step(self) -> None:
        # Poisson sampling drew no record. DP-SGD still takes the step (the sum of clipped
        # gradients is zero, the noise is added and accounted); the "ew" engine cannot run a
        # forward pass on zero rows, so the zero per-sample gradients are supplied directly.
        for p in self.optimizer.params:
            p.grad_sample = torch.zeros((1, *p.shape), dtype=p.dtype)
        self.optimizer.step()

    def train_round(self, global_weights: npt.ArrayLike) -> SiteUpdate:
        """Check the budget, then train one round from ``global_weights``; return the update.

        Raises :class:`BudgetExceeded` (and trains nothing) if the round would exceed the budget.
        """
        self.check_budget()
        start = np.asarray(global_weights, dtype=np.float64)
        models.load_flat_weights(self.model, start)
        steps_before = sum(int(s) for _, _, s in self.accountant.history)
        self.model.train()
        for _ in range(self.config.local_epochs):
            for x, y in self.loader:
                self.optimizer.zero_grad(set_to_none=True)
                if x.shape[0] == 0:
                    self._empty_batch_step()
                    continue
                loss = self._criterion(self.model(x), y)
                loss.backward()
                self.optimizer.step()
        steps = sum(int(s) for _, _, s in self.accountant.history) - steps_before
        statement = SiteRecordLevelDP(
            site=self.name,
            accountant=self.config.accountant,
            noise_multiplier=float(self.config.noise_multiplier),
            sample_rate=float(self.sample_rate),
            steps=steps,
            delta=float(self.config.delta),
            epsilon_round=self._round_epsilon(),
            epsilon_cumulative=self.epsilon,
        )
        return SiteUpdate(
            site=self.name,
            delta_weights=models.flat_weights(self.model) - start,
            num_examples=self.num_examples,
            statement=statement,
        )
