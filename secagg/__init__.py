"""secagg: privacy-hardened secure aggregation for federated learning.

The public API: the sans-IO protocol sessions and their configuration, the fixed-point encoding,
and the error types; the in-process driver is ``secagg.simulate`` (``simulate``, ``run_round``:
imported from that module, whose name the function would otherwise shadow). Optional parts
live in their own packages: ``secagg.client`` (gRPC client), ``secagg.he`` (CKKS, extra ``he``),
``secagg.dp`` and ``secagg.accounting`` (differential privacy), ``secagg.audit`` (round records),
``secagg.integrations.flower`` (extra ``flower``).
"""

from secagg.encoding import FixedPointEncoding
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
