"""secagg: privacy-hardened secure aggregation for federated learning.

The public API: the sans-IO protocol sessions and their configuration, the fixed-point encoding,
and the error types; the in-process driver is ``secagg.simulate`` (``simulate``, ``run_round``:
imported from that module, whose name the function would otherwise shadow). Optional parts live in
their own packages: ``secagg.client`` (gRPC client), ``secagg.he`` (CKKS, extra ``he``),
``secagg.dp`` and ``secagg.accounting`` (differential privacy), ``secagg.audit`` (round records),
``secagg.integrations.flower`` (extra ``flower``).

Names are resolved lazily (PEP 562), so ``import secagg.accounting`` or ``import secagg.errors``
does not pull numpy or the cryptography libraries in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from secagg.errors import (
    BudgetExceeded,
    ConfigError,
    CryptoError,
    LocalProtocolError,
    MaliciousServerError,
    OverflowRiskError,
    ProtocolError,
    RemoteProtocolError,
    RoundAborted,
    SecAggError,
)

if TYPE_CHECKING:
    from secagg.encoding import FixedPointEncoding
    from secagg.protocol import (
        AggregateResult,
        ClientSession,
        GraphParameters,
        RoundConfig,
        ServerSession,
        Stage,
        choose_parameters,
    )

__version__ = "0.1.0"

_LAZY = {
    "FixedPointEncoding": "secagg.encoding",
    "AggregateResult": "secagg.protocol",
    "ClientSession": "secagg.protocol",
    "GraphParameters": "secagg.protocol",
    "RoundConfig": "secagg.protocol",
    "ServerSession": "secagg.protocol",
    "Stage": "secagg.protocol",
    "choose_parameters": "secagg.protocol",
}

__all__ = [
    "AggregateResult",
    "BudgetExceeded",
    "ClientSession",
    "ConfigError",
    "CryptoError",
    "FixedPointEncoding",
    "GraphParameters",
    "LocalProtocolError",
    "MaliciousServerError",
    "OverflowRiskError",
    "ProtocolError",
    "RemoteProtocolError",
    "RoundAborted",
    "RoundConfig",
    "SecAggError",
    "ServerSession",
    "Stage",
    "__version__",
    "choose_parameters",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'secagg' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
