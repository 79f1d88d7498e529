"""A stateful RDP accountant: composition is the sum of the RDP curves of every step taken.

The maths lives in :mod:`secagg.accounting.rdp`; this class only keeps the (immutable) history of
mechanism invocations and the running RDP curve. Its state is JSON-serialisable and is *recomputed*
from the history on load, so a stored state cannot carry an RDP curve that disagrees with the
parameters it claims (an auditor can replay it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from secagg.accounting import rdp as _rdp
from secagg.errors import BudgetExceeded, ConfigError

__all__ = ["MECHANISMS", "AccountantStep", "RdpAccountant"]

STATE_VERSION = 1

#: Mechanism name -> the parameter names it takes (besides ``steps``).
MECHANISMS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "gaussian": ("noise_multiplier",),
        "sampled_gaussian": ("noise_multiplier", "sample_rate"),
        "distributed_discrete_gaussian": (
            "l2_sensitivity",
            "l1_sensitivity",
            "local_stddev",
            "num_clients",
            "max_clients",
            "dim",
            "sample_rate",
        ),
        "skellam": ("l2_sensitivity", "l1_sensitivity", "central_variance", "dim", "sample_rate"),
    }
)


@dataclass(frozen=True)
class AccountantStep:
    """One entry of the accountant's history: ``steps`` compositions of one mechanism."""

    mechanism: str
    params: tuple[tuple[str, float], ...]
    steps: int

    def to_dict(self) -> dict[str, Any]:
        return {"mechanism": self.mechanism, "params": dict(self.params), "steps": self.steps}


def _rdp_of(
    mechanism: str, params: Mapping[str, float], steps: int, orders: Sequence[float]
) -> tuple[float, ...]:
    if mechanism == "gaussian":
        return _rdp.compute_rdp_gaussian(params["noise_multiplier"], steps, orders)
    if mechanism == "sampled_gaussian":
        return _rdp.compute_rdp_sampled_gaussian(
            params["sample_rate"], params["noise_multiplier"], steps, orders
        )
    if mechanism == "distributed_discrete_gaussian":
        return _rdp.compute_rdp_distributed_discrete_gaussian(
            l2_sensitivity=params["l2_sensitivity"],
            l1_sensitivity=params["l1_sensitivity"],
            local_stddev=params["local_stddev"],
            num_clients=int(params["num_clients"]),
            max_clients=int(params["max_clients"]),
            dim=int(params["dim"]),
            q=params["sample_rate"],
            steps=steps,
            orders=orders,
        )
    if mechanism == "skellam":
        return _rdp.compute_rdp_skellam(
            l2_sensitivity=params["l2_sensitivity"],
            l1_sensitivity=params["l1_sensitivity"],
            central_variance=params["central_variance"],
            dim=int(params["dim"]),
            q=params["sample_rate"],
            steps=steps,
            orders=orders,
        )
    raise ConfigError(f"unknown mechanism {mechanism!r}; known: {sorted(MECHANISMS)}")


def _normalise(mechanism: str, params: Mapping[str, Any]) -> tuple[tuple[str, float], ...]:
    if mechanism not in MECHANISMS:
        raise ConfigError(f"unknown mechanism {mechanism!r}; known: {sorted(MECHANISMS)}")
    names = MECHANISMS[mechanism]
    given = dict(params)
    if mechanism in ("distributed_discrete_gaussian", "skellam"):
        given.setdefault("sample_rate", 1.0)
        if mechanism == "distributed_discrete_gaussian" and given.get("max_clients") is None:
            given["max_clients"] = given.get("num_clients", 0)
        if given.get("l1_sensitivity") is None:
            l2 = float(given["l2_sensitivity"]) if "l2_sensitivity" in given else 0.0
            given["l1_sensitivity"] = _rdp.rounded_l1_norm_bound(l2, int(given.get("dim", 1)))
    missing = [n for n in names if n not in given]
    extra = [n for n in given if n not in names]
    if missing or extra:
        raise ConfigError(f"{mechanism}: missing parameters {missing}, unexpected {extra}")
    out = []
    for n in names:
        v = given[n]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{mechanism}: parameter {n} must be a finite number, got {v!r}")
        out.append((n, float(v)))
    return tuple(out)


class RdpAccountant:
    """Rényi-DP accountant over a fixed list of orders.

    >>> acc = RdpAccountant()
    >>> acc.step_sampled_gaussian(noise_multiplier=1.0, sample_rate=0.2, steps=25)
    >>> round(acc.get_epsilon(1e-5), 2)
    8.25
    """

    def __init__(self, orders: Sequence[float] = _rdp.DEFAULT_ORDERS) -> None:
        self._orders = _rdp._check_orders(orders)
        self._rdp: tuple[float, ...] = tuple(0.0 for _ in self._orders)
        self._history: tuple[AccountantStep, ...] = ()

    # -- composition ---------------------------------------------------------------------------

    @property
    def orders(self) -> tuple[float, ...]:
        return self._orders

    @property
    def rdp(self) -> tuple[float, ...]:
        """The composed RDP curve (one value per order)."""
        return self._rdp

    @property
    def history(self) -> tuple[AccountantStep, ...]:
        """Every step taken, oldest first (read-only)."""
        return self._history

    def step(self, *, mechanism: str, steps: int = 1, **params: float) -> None:
        """Compose ``steps`` invocations of ``mechanism`` (parameters: see :data:`MECHANISMS`)."""
        steps = _rdp._check_steps(steps)
        norm = _normalise(mechanism, params)
        curve = _rdp_of(mechanism, dict(norm), steps, self._orders)
        self._rdp = tuple(a + b for a, b in zip(self._rdp, curve, strict=True))
        self._history = (*self._history, AccountantStep(mechanism, norm, steps))

    def step_gaussian(self, noise_multiplier: float, steps: int = 1) -> None:
        self.step(mechanism="gaussian", noise_multiplier=noise_multiplier, steps=steps)

    def step_sampled_gaussian(
        self, noise_multiplier: float, sample_rate: float, steps: int = 1
    ) -> None:
        """DP-SGD: ``steps`` Poisson-sampled Gaussian steps (Opacus's ``step``, ``steps`` times)."""
        self.step(
            mechanism="sampled_gaussian",
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
        )

    def step_distributed_discrete_gaussian(
        self,
        *,
        l2_sensitivity: float,
        local_stddev: float,
        num_clients: int,
        dim: int,
        l1_sensitivity: float | None = None,
        max_clients: int | None = None,
        sample_rate: float = 1.0,
        steps: int = 1,
    ) -> None:
        """Sum of ``num_clients`` discrete Gaussians; all quantities in the integer domain.

        With ``max_clients`` the step is accounted for any number of contributors in
        ``[num_clients, max_clients]`` (see ``compute_rdp_distributed_discrete_gaussian``).
        """
        self.step(
            mechanism="distributed_discrete_gaussian",
            l2_sensitivity=l2_sensitivity,
            l1_sensitivity=l1_sensitivity,  # type: ignore[arg-type]
            local_stddev=local_stddev,
            num_clients=num_clients,
            max_clients=max_clients,  # type: ignore[arg-type]
            dim=dim,
            sample_rate=sample_rate,
            steps=steps,
        )

    def step_skellam(
        self,
        *,
        l2_sensitivity: float,
        central_variance: float,
        dim: int,
        l1_sensitivity: float | None = None,
        sample_rate: float = 1.0,
        steps: int = 1,
    ) -> None:
        """Distributed Skellam; sensitivities and summed variance in the integer domain."""
        self.step(
            mechanism="skellam",
            l2_sensitivity=l2_sensitivity,
            l1_sensitivity=l1_sensitivity,  # type: ignore[arg-type]
            central_variance=central_variance,
            dim=dim,
            sample_rate=sample_rate,
            steps=steps,
        )

    # -- queries -------------------------------------------------------------------------------

    def get_privacy_spent(self, delta: float) -> tuple[float, float]:
        """``(epsilon, best_order)`` at ``delta``."""
        return _rdp.rdp_to_epsilon(self._orders, self._rdp, delta)

    def get_epsilon(self, delta: float) -> float:
        return self.get_privacy_spent(delta)[0]

    def copy(self) -> RdpAccountant:
        other = RdpAccountant(self._orders)
        other._rdp = self._rdp
        other._history = self._history
        return other

    def check_budget(
        self,
        *,
        epsilon_budget: float,
        delta: float,
        mechanism: str,
        steps: int = 1,
        **params: float,
    ) -> float:
        """Epsilon after a prospective step; raise :class:`BudgetExceeded` if above the budget.

        The accountant itself is left unchanged (the step is tried on a copy).
        """
        trial = self.copy()
        trial.step(mechanism=mechanism, steps=steps, **params)
        eps = trial.get_epsilon(delta)
        if eps > epsilon_budget:
            raise BudgetExceeded(
                f"epsilon would reach {eps:.4g} > budget {epsilon_budget:.4g} at delta={delta:g}"
            )
        return eps

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (orders and history; the curve is recomputed on load)."""
        return {
            "version": STATE_VERSION,
            "orders": list(self._orders),
            "history": [h.to_dict() for h in self._history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace this accountant's state; raises :class:`ConfigError` on malformed input."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise ConfigError("accountant state: missing or unsupported version")
        try:
            orders = _rdp._check_orders(state["orders"])
            history = list(state["history"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"accountant state malformed: {exc}") from exc
        fresh = RdpAccountant(orders)
        for entry in history:
            if not isinstance(entry, Mapping) or set(entry) != {"mechanism", "params", "steps"}:
                raise ConfigError(f"accountant state: malformed history entry {entry!r}")
            params = entry["params"]
            if not isinstance(params, Mapping):
                raise ConfigError("accountant state: params must be a mapping")
            fresh.step(mechanism=entry["mechanism"], steps=entry["steps"], **params)
        self._orders, self._rdp, self._history = fresh._orders, fresh._rdp, fresh._history

    def __repr__(self) -> str:
        return f"RdpAccountant(steps={len(self._history)}, orders={len(self._orders)})"
