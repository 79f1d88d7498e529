"""SecAgg / SecAgg+ as sans-IO state machines: typed messages in, typed messages out."""

from secagg.protocol.client import ClientSession
from secagg.protocol.config import RoundConfig, roster_fingerprint
from secagg.protocol.graph import NeighbourGraph
from secagg.protocol.ledger import MemoryLedger, SiteEvent, SiteLedger
from secagg.protocol.messages import (
    ACTIVE_STAGES,
    AdvertiseKeys,
    ClientMessage,
    Complaint,
    ConsistencySignature,
    InboxKey,
    KeyRoster,
    MaskedInput,
    ServerMessage,
    ShareBundle,
    ShareEntry,
    ShareKeys,
    Stage,
    SurvivorsRequest,
    UnmaskReceipt,
    UnmaskRequest,
    UnmaskShares,
)
from secagg.protocol.params import (
    AdversaryClass,
    GraphParameters,
    choose_parameters,
    full_graph_threshold,
)
from secagg.protocol.policy import DPFloor, OfferedDP, SitePolicy
from secagg.protocol.server import AggregateResult, ServerSession

__all__ = [
    "ACTIVE_STAGES",
    "AdversaryClass",
    "AdvertiseKeys",
    "AggregateResult",
    "ClientMessage",
    "ClientSession",
    "Complaint",
    "ConsistencySignature",
    "DPFloor",
    "GraphParameters",
    "InboxKey",
    "KeyRoster",
    "MaskedInput",
    "MemoryLedger",
    "NeighbourGraph",
    "OfferedDP",
    "RoundConfig",
    "ServerMessage",
    "ServerSession",
    "ShareBundle",
    "ShareEntry",
    "ShareKeys",
    "SiteEvent",
    "SiteLedger",
    "SitePolicy",
    "Stage",
    "SurvivorsRequest",
    "UnmaskReceipt",
    "UnmaskRequest",
    "UnmaskShares",
    "choose_parameters",
    "full_graph_threshold",
    "roster_fingerprint",
]
