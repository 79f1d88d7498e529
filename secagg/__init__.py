"""secagg: privacy-hardened secure aggregation for federated learning."""

from secagg.errors import (
    ConfigError,
    OverflowRiskError,
    ProtocolError,
    RoundAborted,
    SecAggError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "OverflowRiskError",
    "ProtocolError",
    "RoundAborted",
    "SecAggError",
    "__version__",
]
