"""Strict reading of TOML configuration tables (shared by the aggregator's and the sites' files)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from secagg.errors import ConfigError

__all__ = ["check_keys"]


def check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    """Refuse a key not in ``allowed``, suggesting the closest known one (a typo is an error:
    a silently ignored ``clipp = 1.0`` would run with the default clip)."""
    for key in sorted(set(table) - allowed):
        close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
        known = ", ".join(sorted(allowed))
        hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {known}"
        raise ConfigError(f"unknown key {key!r} in {where}{hint}")
