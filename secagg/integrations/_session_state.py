"""Persisting a client session between the messages of a round, for stacks that run each message in
a fresh process (Flower's SuperNode starts one ``flwr-clientapp`` process per message, and its
simulation may hand consecutive messages of one node to different workers).

The state holds the round's secrets (the X25519 private keys, the self-mask seed, the Shamir shares
this client holds), so exporting it is an explicit step, as for any key: the caller must keep the
result where the node keeps its own secrets (Flower: the node's ``Context.state``, which stays on
the node) and delete it when the round ends. Nothing here is sent over the network.

This module reads and writes :class:`~secagg.protocol.ClientSession`'s private attributes. It fails
closed: if the session class grows or loses an attribute, export refuses (``LocalProtocolError``)
instead of silently dropping state. (A ``ClientSession.export_state()`` in the protocol package
would be the right long-term home.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from secagg.crypto import IdentityKey, KeyAgreementKey
from secagg.errors import LocalProtocolError, MalformedMessage
from secagg.protocol import ClientSession, KeyRoster, Stage
from secagg.transport._gen.secagg.v1 import aggregator_pb2 as pb
from secagg.transport.codec import RoundParameters
from secagg.wire import decode_server_message, encode_server_message

__all__ = ["STATE_FORMAT", "export_client_session", "restore_client_session"]

STATE_FORMAT = "secagg.client-session/1"

_ATTRIBUTES = frozenset(
    {
        "_abort_reason",
        "_advertised",
        "_cipher_key",
        "_held_shares",
        "_holders",
        "_identity",
        "_input",
        "_mask_key",
        "_peer_keys",
        "_self_mask_seed",
        "_session_id",
        "_share_senders",
        "_signed_survivors",
        "_stage",
        "config",
        "party",
    }
)

StateValue = bytes | int | str | bool | float | list[int] | list[bytes]


def export_client_session(session: ClientSession, params: RoundParameters) -> dict[str, StateValue]:
    """The session's complete state, secrets included, as a flat mapping of plain values.

    ``params`` are the round parameters the session was built from (their config must be the
    session's). The identity key is *not* included: pass it again to :func:`restore_client_session`.
    """
    found = set(vars(session))
    if found != _ATTRIBUTES:
        raise LocalProtocolError(
            "ClientSession's attributes changed (unknown: "
            f"{sorted(found - _ATTRIBUTES)}, missing: {sorted(_ATTRIBUTES - found)}); "
            "refusing to persist a partial session"
        )
    if params.config.digest != session.config.digest:
        raise LocalProtocolError("the round parameters are not the session's")
    s: Any = session  # private attributes, read on purpose (see the module docstring)
    held = sorted(s._held_shares.items())
    peers = tuple(s._peer_keys[p] for p in sorted(s._peer_keys))
    state: dict[str, StateValue] = {
        "format": STATE_FORMAT,
        "params": params.to_proto().SerializeToString(),
        "party": session.party,
        "input": np.ascontiguousarray(s._input, dtype="<u4").tobytes(),
        "stage": s._stage.value,
        "advertised": bool(s._advertised),
        "abort_reason": s._abort_reason or "",
        "cipher_key": s._cipher_key.private_bytes(),
        "mask_key": s._mask_key.private_bytes(),
        "self_mask_seed": s._self_mask_seed,
        "session_id": s._session_id,
        "holders": sorted(s._holders),
        "peer_keys": encode_server_message(KeyRoster(session.config.round_id, peers)),
        "held_owners": [owner for owner, _ in held],
        "held_seed_shares": [pair[0] for _, pair in held],
        "held_key_shares": [pair[1] for _, pair in held],
        "share_senders": sorted(s._share_senders),
        "has_signed": s._signed_survivors is not None,
        "signed_survivors": list(s._signed_survivors or ()),
    }
    return state


def restore_client_session(
    state: Mapping[str, Any], identity: IdentityKey
) -> tuple[ClientSession, RoundParameters]:
    """Rebuild the session saved by :func:`export_client_session` (and its round parameters)."""
    try:
        if state.get("format") != STATE_FORMAT:
            raise LocalProtocolError(f"unknown client-session state format {state.get('format')!r}")
        proto = pb.RoundConfig()
        proto.ParseFromString(state["params"])
        params = RoundParameters.from_proto(proto)
        cfg = params.config
        vector = np.frombuffer(state["input"], dtype="<u4").astype(np.uint32)
        session = ClientSession(cfg, int(state["party"]), identity, vector)
        roster = decode_server_message(state["peer_keys"])
        if not isinstance(roster, KeyRoster):
            raise MalformedMessage("the saved peer keys are not a key roster")
        owners = list(state["held_owners"])
        seeds, keys = list(state["held_seed_shares"]), list(state["held_key_shares"])
        if not len(owners) == len(seeds) == len(keys):
            raise MalformedMessage("the saved shares are inconsistent")
    except (KeyError, TypeError, ValueError) as exc:
        raise LocalProtocolError(f"the saved client session is unreadable: {exc}") from exc
    s: Any = session  # private attributes, written on purpose (see the module docstring)
    s._stage = Stage(state["stage"])
    s._advertised = bool(state["advertised"])
    s._abort_reason = state["abort_reason"] or None
    s._cipher_key = KeyAgreementKey.from_private_bytes(bytes(state["cipher_key"]))
    s._mask_key = KeyAgreementKey.from_private_bytes(bytes(state["mask_key"]))
    s._self_mask_seed = bytes(state["self_mask_seed"])
    s._session_id = bytes(state["session_id"])
    s._holders = frozenset(int(p) for p in state["holders"])
    s._peer_keys = {ad.sender: ad for ad in roster.advertisements}
    s._held_shares = {
        int(o): (bytes(a), bytes(b)) for o, a, b in zip(owners, seeds, keys, strict=True)
    }
    s._share_senders = frozenset(int(p) for p in state["share_senders"])
    s._signed_survivors = (
        tuple(int(p) for p in state["signed_survivors"]) if state["has_signed"] else None
    )
    return session, params
