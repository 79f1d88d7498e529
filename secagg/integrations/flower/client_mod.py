"""The client side of secagg over Flower: a ClientApp mod, drop-in for Flower's ``secaggplus_mod``.

A round is six TRAIN messages from :class:`~secagg.integrations.flower.SecAggWorkflow`:

1. ``register``: the FitIns. The mod runs the ClientApp (``call_next``), keeps the trained
   parameters on the node, and answers with its Ed25519 identity key and the FitRes *without* its
   parameters (``num_examples`` is replaced by 1: the example count is summed securely instead).
2. ``advertise_keys``: the round parameters (roster, threshold, graph, encoding, context). The mod
   checks them (its own key and party id, the model digest it trained on, the trusted roster, the
   DP floor), encodes its update and answers with a signed :class:`~secagg.protocol.AdvertiseKeys`.
3-6. the protocol's server messages, answered by :class:`~secagg.protocol.ClientSession`.

Between messages the session lives in the node's ``Context.state`` (Flower starts a new ClientApp
process per message), under ``secagg.*`` records, and is deleted when the round ends or aborts. Any
error raises, which Flower reports to the server as an error reply: the server counts a dropout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Parameters, Status, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from secagg.crypto import IdentityKey, IdentityPublicKey, random_seed, uniform_floats
from secagg.errors import ConfigError, LocalProtocolError, MaliciousServerError, ProtocolError
from secagg.integrations._session_state import export_client_session, restore_client_session
from secagg.integrations.flower._common import (
    RECORD_KEY,
    FlowerStage,
    RoundContext,
    dp_encoder,
    flatten,
    model_digest,
)
from secagg.protocol import ClientSession, Stage
from secagg.transport._gen.secagg.v1 import aggregator_pb2 as pb
from secagg.transport.codec import RoundParameters
from secagg.wire import decode_server_message, encode_client_message

__all__ = ["IdentityProvider", "make_secagg_mod", "secagg_mod"]

logger = logging.getLogger(__name__)

IdentityProvider = Callable[[Context], IdentityKey]
"""Returns the node's long-term Ed25519 identity (e.g. loaded from a file named in node_config)."""

_IDENTITY_RECORD = "secagg.identity"
_PENDING_RECORD = "secagg.pending"
_SESSION_RECORD = "secagg.session"

# The session stage each protocol exchange must find (the session checks the message type too).
_EXPECTED_STAGE = {
    FlowerStage.SHARE_KEYS: Stage.ADVERTISE_KEYS,
    FlowerStage.MASKED_INPUT: Stage.SHARE_KEYS,
    FlowerStage.CONSISTENCY_CHECK: Stage.MASKED_INPUT,
    FlowerStage.UNMASK: Stage.CONSISTENCY_CHECK,
}


def context_identity(context: Context) -> IdentityKey:
    """The default identity: generated on first use, kept in the node's ``Context.state``.

    It lives as long as the node's context (a Flower run). For an identity that outlives runs and
    can be registered in advance, pass an ``identity`` provider to :func:`make_secagg_mod`.
    """
    record = context.state.config_records.get(_IDENTITY_RECORD)
    if record is None:
        key = IdentityKey.generate()
        context.state.config_records[_IDENTITY_RECORD] = ConfigRecord(
            {"private_key": key.private_bytes()}
        )
        return key
    return IdentityKey.from_private_bytes(cast(bytes, record["private_key"]))


def make_secagg_mod(
    *,
    identity: IdentityProvider | None = None,
    trusted_roster: Iterable[IdentityPublicKey | bytes] | None = None,
    min_parties: int = 2,
    min_noise_multiplier: float | None = None,
) -> Callable[[Message, Context, ClientAppCallable], Message]:
    """Build the client mod.

    Args:
        identity: where the node's Ed25519 identity comes from (default: generated per run and kept
            in ``Context.state``).
        trusted_roster: the identity keys registered out of band. When given, the mod refuses any
            round whose roster holds another key, which stops a malicious server from adding Sybil
            clients to isolate this one. Without it the roster is whatever the server collected.
        min_parties: refuse rounds with fewer parties (a round of this client and one Sybil would
            reveal this client's update to a server that controls the Sybil).
        min_noise_multiplier: with distributed DP, refuse rounds whose noise multiplier is lower
            (or rounds without DP at all).
    """
    trusted = (
        None
        if trusted_roster is None
        else frozenset(
            k if isinstance(k, IdentityPublicKey) else IdentityPublicKey.from_bytes(k)
            for k in trusted_roster
        )
    )
    if min_parties < 2:
        raise ConfigError("min_parties must be at least 2")
    get_identity = identity or context_identity

    def secagg_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctxt)
        record = msg.content.config_records.get(RECORD_KEY)
        if record is None:
            raise LocalProtocolError(
                "this client only trains under secure aggregation (no secagg record in the message)"
            )
        try:
            stage = FlowerStage(record["stage"])
        except (KeyError, ValueError) as exc:
            raise LocalProtocolError("the message names no known secagg stage") from exc
        key = get_identity(ctxt)
        try:
            if stage is FlowerStage.REGISTER:
                _clear(ctxt)
                return _register(msg, ctxt, call_next, key)
            if stage is FlowerStage.ADVERTISE_KEYS:
                return _advertise(
                    msg, ctxt, record, key, trusted, min_parties, min_noise_multiplier
                )
            return _protocol_step(msg, ctxt, record, stage, key)
        except BaseException:
            _clear(ctxt)
            raise

    return secagg_mod


secagg_mod = make_secagg_mod()
"""The client mod with default settings: ``ClientApp(client_fn, mods=[secagg_mod])``."""


# --- stages -------------------------------------------------------------------------------------


def _reply(
    msg: Message, stage: FlowerStage, content: RecordDict | None = None, **values: Any
) -> Message:
    out = content if content is not None else RecordDict()
    out.config_records[RECORD_KEY] = ConfigRecord({"stage": stage.value, **values})
    return Message(out, reply_to=msg)


def _register(
    msg: Message, ctxt: Context, call_next: ClientAppCallable, key: IdentityKey
) -> Message:
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    global_arrays = parameters_to_ndarrays(fitins.parameters)
    out = call_next(msg, ctxt)
    if out.has_error():
        raise LocalProtocolError(f"local training failed: {out.error.reason}")
    fitres = compat.recorddict_to_fitres(out.content, keep_input=False)
    if fitres.status.code != Code.OK:
        raise LocalProtocolError(f"local training failed: {fitres.status.message}")
    trained = parameters_to_ndarrays(fitres.parameters)
    if [a.shape for a in trained] != [a.shape for a in global_arrays]:
        raise LocalProtocolError("the trained parameters do not have the global model's shapes")
    ctxt.state.config_records[_PENDING_RECORD] = ConfigRecord(
        {
            "run_id": msg.metadata.run_id,
            "group_id": msg.metadata.group_id,
            "model_digest": model_digest(global_arrays),
            "trained": flatten(trained).astype("<f8").tobytes(),
            "global": flatten(global_arrays).astype("<f8").tobytes(),
            "num_examples": int(fitres.num_examples),
        }
    )
    # The FitRes goes back without parameters and with num_examples = 1: the weight is summed
    # securely beside the parameters, so the server never learns one site's example count.
    hidden = FitRes(
        status=Status(Code.OK, ""),
        parameters=Parameters(tensors=[], tensor_type=""),
        num_examples=1,
        metrics=fitres.metrics,
    )
    content = compat.fitres_to_recorddict(hidden, keep_input=False)
    return _reply(msg, FlowerStage.REGISTER, content, identity_public_key=key.public_key.to_bytes())


def _advertise(
    msg: Message,
    ctxt: Context,
    record: ConfigRecord,
    key: IdentityKey,
    trusted: frozenset[IdentityPublicKey] | None,
    min_parties: int,
    min_noise_multiplier: float | None,
) -> Message:
    pending = ctxt.state.config_records.get(_PENDING_RECORD)
    if pending is None:
        raise LocalProtocolError("advertise_keys without a registered update for this round")
    proto = pb.RoundConfig()
    proto.ParseFromString(cast(bytes, record["round_config"]))
    params = RoundParameters.from_proto(proto)  # re-derives and checks both digests
    cfg = params.config
    party = int(cast(int, record["party"]))
    ctx = RoundContext.from_bytes(params.context)
    if ctx.run_id != msg.metadata.run_id or pending["run_id"] != msg.metadata.run_id:
        raise MaliciousServerError("the round belongs to another Flower run")
    if str(ctx.round) != msg.metadata.group_id or pending["group_id"] != msg.metadata.group_id:
        raise MaliciousServerError("the round context names another round")
    if ctx.model_digest != pending["model_digest"]:
        raise MaliciousServerError("the round binds another model than the one this client trained")
    if cfg.roster.get(party) != key.public_key:
        raise MaliciousServerError(f"party {party} of the roster is not this client's identity")
    if len(cfg.roster) < min_parties:
        raise MaliciousServerError(
            f"the round has {len(cfg.roster)} parties, fewer than {min_parties}"
        )
    if trusted is not None and not set(cfg.roster.values()) <= trusted:
        raise MaliciousServerError("the roster holds identity keys outside the trusted roster")
    if min_noise_multiplier is not None and ctx.dp is None:
        raise MaliciousServerError("this client requires distributed DP and the round has none")

    trained = np.frombuffer(cast(bytes, pending["trained"]), dtype="<f8")
    global_flat = np.frombuffer(cast(bytes, pending["global"]), dtype="<f8")
    if trained.size != ctx.dimension:
        raise MaliciousServerError("the round's model dimension is not the trained model's")
    if ctx.dp is not None:
        encoder = dp_encoder(
            ctx, params.context, n=len(cfg.roster), threshold=cfg.threshold, bits=cfg.bits
        )
        if min_noise_multiplier is not None and (
            encoder.params.noise_multiplier < min_noise_multiplier
        ):
            raise MaliciousServerError(
                f"the round's noise multiplier {encoder.params.noise_multiplier:.3g} is below "
                f"this client's floor {min_noise_multiplier}"
            )
        noisy = encoder.encode(trained - global_flat)
        encoded = np.mod(noisy, 1 << cfg.bits).astype(np.uint32)
    else:
        vector = trained
        if ctx.max_weight > 0:
            examples = int(cast(int, pending["num_examples"]))
            weight = examples / ctx.max_weight
            if not 0 <= weight <= 1:
                raise ConfigError(
                    f"num_examples {examples} exceeds the round's max_weight {ctx.max_weight:g}"
                )
            clip = params.encoding.clip
            vector = np.append(weight * np.clip(trained, -clip, clip), weight * clip)
        encoded = params.encoding.encode(vector, uniform_floats(random_seed(), vector.size))
    session = ClientSession(cfg, party, key, encoded)
    advertisement = session.advertise_keys()
    del ctxt.state.config_records[_PENDING_RECORD]
    _save(ctxt, session, params)
    return _reply(msg, FlowerStage.ADVERTISE_KEYS, payload=encode_client_message(advertisement))


def _protocol_step(
    msg: Message, ctxt: Context, record: ConfigRecord, stage: FlowerStage, key: IdentityKey
) -> Message:
    saved = ctxt.state.config_records.get(_SESSION_RECORD)
    if saved is None:
        raise LocalProtocolError(f"{stage.value} without a session in progress")
    session, params = restore_client_session(saved, key)
    if session.stage is not _EXPECTED_STAGE[stage]:
        raise ProtocolError(f"{stage.value} arrived while the session is {session.stage.value}")
    if RoundContext.from_bytes(params.context).run_id != msg.metadata.run_id:
        raise MaliciousServerError("the message belongs to another Flower run")
    server_message = decode_server_message(cast(bytes, record["payload"]))
    reply = session.receive(server_message)
    if session.stage.is_terminal:
        _clear(ctxt)
    else:
        _save(ctxt, session, params)
    payload = encode_client_message(reply, bits=params.config.bits)
    return _reply(msg, stage, payload=payload)


def _save(ctxt: Context, session: ClientSession, params: RoundParameters) -> None:
    ctxt.state.config_records[_SESSION_RECORD] = ConfigRecord(
        cast(Any, export_client_session(session, params))
    )


def _clear(ctxt: Context) -> None:
    for name in (_PENDING_RECORD, _SESSION_RECORD):
        if name in ctxt.state.config_records:
            del ctxt.state.config_records[name]
