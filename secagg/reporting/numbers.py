"""Numbers and values written for people (the demo's terminal tables and ``report.html``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["fmt_eps", "fmt_probability", "fmt_value"]


def fmt_eps(v: float | None) -> str:
    """An epsilon: two decimals when small, thousands separators when large, ``-`` when absent."""
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf"
    if v < 100:
        return f"{v:.2f}"
    if v < 1e6:
        return f"{v:,.0f}"
    return f"{v:.2e}"


def fmt_probability(p: float) -> str:
    """An upper bound on a probability; a bound that underflowed to 0.0 is below 1e-300."""
    if p == 0:
        return "< 1e-300"
    return f"<= {p:.1e}"


def fmt_value(v: Any) -> str:
    """A configuration value: ``yes``/``no``, ``none`` for None or empty, ``k: v`` for maps."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, Mapping):
        return ", ".join(f"{k}: {fmt_value(x)}" for k, x in v.items()) or "none"
    if isinstance(v, Sequence) and not isinstance(v, str):
        return ", ".join(fmt_value(x) for x in v) or "none"
    return str(v)
