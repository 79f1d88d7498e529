"""Storage fault injection, for testing how the aggregator survives disk errors (tests only).

``SECAGG_STORAGE_FAULTS`` lists ``operation:ERRNO[:round[:times]]`` entries separated by commas,
e.g. ``write_result:ENOSPC:2,finish_round:EROFS:3:2``: the named storage operation then raises
that ``OSError`` (for every round, or only the given one; always, or only the first ``times``
attempts, so a disk that comes back can be played). Operations: ``start_round``,
``write_result``, ``finish_round``, ``ledger_append``, ``transcript``. Unset (always, outside the
test suite), nothing is injected.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass

__all__ = ["inject"]

_VARIABLE = "SECAGG_STORAGE_FAULTS"


@dataclass
class _Fault:
    operation: str
    code: int
    round_id: int | None
    remaining: int | None


def _plan() -> list[_Fault]:
    plan = []
    for entry in filter(None, (e.strip() for e in os.environ.get(_VARIABLE, "").split(","))):
        parts = [*entry.split(":"), "", "", ""]
        plan.append(
            _Fault(
                operation=parts[0],
                code=getattr(errno, parts[1]) if parts[1] else errno.EIO,
                round_id=int(parts[2]) if parts[2] else None,
                remaining=int(parts[3]) if parts[3] else None,
            )
        )
    return plan


_PLAN = _plan()
_LOCK = threading.Lock()


def inject(operation: str, round_id: int | None = None) -> None:
    """Raise the OSError the fault plan names for this operation and round, if any."""
    if not _PLAN:
        return
    with _LOCK:
        for fault in _PLAN:
            if fault.operation != operation or fault.round_id not in (None, round_id):
                continue
            if fault.remaining is not None:
                if fault.remaining <= 0:
                    continue
                fault.remaining -= 1
            raise OSError(fault.code, f"{os.strerror(fault.code)} (injected: {_VARIABLE})")
