"""SecAgg / SecAgg+ as sans-IO state machines: typed messages in, typed messages out."""

from secagg.protocol.client import ClientSession
from secagg.protocol.config import RoundConfig
from secagg.protocol.graph import NeighbourGraph
from secagg.protocol.messages import (
    ACTIVE_STAGES,
    AdvertiseKeys,
    ClientMessage,
    ConsistencySignature,
    KeyRoster,
    MaskedInput,
    ServerMessage,
    ShareBundle,
    ShareKeys,
    Stage,
    SurvivorsRequest,
    UnmaskRequest,
    UnmaskShares,
)
from secagg.protocol.params import GraphParameters, choose_parameters, full_graph_threshold
from secagg.protocol.server import AggregateResult, ServerSession

__all__ = [
    "ACTIVE_STAGES",
    "AdvertiseKeys",
    "AggregateResult",
    "ClientMessage",
    "ClientSession",
    "ConsistencySignature",
    "GraphParameters",
    "KeyRoster",
    "MaskedInput",
    "NeighbourGraph",
    "RoundConfig",
    "ServerMessage",
    "ServerSession",
    "ShareBundle",
    "ShareKeys",
    "Stage",
    "SurvivorsRequest",
    "UnmaskRequest",
    "UnmaskShares",
    "choose_parameters",
    "full_graph_threshold",
]
