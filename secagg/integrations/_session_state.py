"""Persisting a client session between the messages of a round, for stacks that run each message in
a fresh process (Flower's SuperNode starts one ``flwr-clientapp`` process per message, and its
simulation may hand consecutive messages of one node to different workers).

The state holds the round's secrets (the X25519 private keys, the self-mask seed, the Shamir shares
this client holds), so exporting it is an explicit step, as for any key: the caller must keep the
result where the node keeps its own secrets (Flower: the node's ``Context.state``, which stays on
the node) and delete it when the round ends. Nothing here is sent over the network. The session
itself is saved by :meth:`ClientSession.export_state`; this module adds the round parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from secagg.crypto import IdentityKey
from secagg.errors import LocalProtocolError
from secagg.protocol import ClientSession, SiteLedger, SitePolicy
from secagg.protocol.client import StateValue
from secagg.transport._gen.secagg.v1 import aggregator_pb2 as pb
from secagg.transport.codec import RoundParameters

__all__ = ["export_client_session", "restore_client_session"]


def export_client_session(session: ClientSession, params: RoundParameters) -> dict[str, StateValue]:
    """The session's complete state, secrets included, plus its round parameters."""
    if params.config.digest != session.config.digest:
        raise LocalProtocolError("the round parameters are not the session's")
    state = session.export_state()
    state["params"] = params.to_proto().SerializeToString()
    return state


def restore_client_session(
    state: Mapping[str, Any], identity: IdentityKey, *, policy: SitePolicy, ledger: SiteLedger
) -> tuple[ClientSession, RoundParameters]:
    """Rebuild the session saved by :func:`export_client_session` (and its round parameters).

    The site's ``policy`` is checked again and its ``ledger`` keeps recording.
    """
    try:
        proto = pb.RoundConfig()
        proto.ParseFromString(bytes(state["params"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise LocalProtocolError(f"the saved client session is unreadable: {exc}") from exc
    params = RoundParameters.from_proto(proto)
    session = ClientSession.restore(params.config, identity, state, policy=policy, ledger=ledger)
    return session, params
