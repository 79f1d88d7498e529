"""The client side of secagg over Flower: a ClientApp mod, drop-in for Flower's ``secaggplus_mod``.

A round is six TRAIN messages from :class:`~secagg.integrations.flower.SecAggWorkflow`:

1. ``register``: the FitIns. The mod runs the ClientApp (``call_next``), keeps the trained
   parameters on the node, and answers with its Ed25519 identity key and the FitRes *without* its
   parameters (``num_examples`` is replaced by 1: the example count is summed securely instead).
2. ``advertise_keys``: the round parameters (roster, threshold, graph, encoding, context). The mod
   checks them (its own key and party id, the model digest it trained on) and the site's
   :class:`~secagg.protocol.SitePolicy` decides (pinned roster, threshold, round id, DP floor); a
   refusal raises :class:`~secagg.errors.PolicyViolation` before anything is revealed. Then it
   encodes its update and answers with a signed :class:`~secagg.protocol.AdvertiseKeys`.
3-6. the protocol's server messages, answered by :class:`~secagg.protocol.ClientSession`.
7. ``outcome``: the survivors and the result digest; the session compares them with the survivor
   set it signed (:class:`~secagg.errors.OutcomeMismatch`, an alarm, otherwise).

The policy comes from ``make_secagg_mod(policy=...)``, or, for the prebuilt :data:`secagg_mod`,
from the TOML file named by the node config key ``secagg-site`` (see :mod:`secagg.site`). Without
one the mod refuses to take part. Each step is recorded in the site's ledger: the file the site
configuration names, else the node's ``Context.state`` (record ``secagg.ledger``).

Between messages the session lives in the node's ``Context.state`` (Flower starts a new ClientApp
process per message), under ``secagg.*`` records, and is deleted when the round ends or aborts. Any
error raises, which Flower reports to the server as an error reply: the server counts a dropout.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Parameters, Status, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from secagg.crypto import IdentityKey, random_seed, uniform_floats
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
from secagg.protocol import ClientSession, SiteEvent, SiteLedger, SitePolicy, Stage
from secagg.protocol.client import check_offer
from secagg.protocol.ledger import RoundAccepted, event_from_dict
from secagg.site import SiteConfig, dp_offer, load_site_config
from secagg.transport._gen.secagg.v1 import aggregator_pb2 as pb
from secagg.transport.codec import RoundParameters
from secagg.wire import decode_server_message, encode_client_message

__all__ = [
    "SITE_CONFIG_KEY",
    "ContextLedger",
    "IdentityProvider",
    "PolicyProvider",
    "default_ledger",
    "make_secagg_mod",
    "node_config_policy",
    "secagg_mod",
]

logger = logging.getLogger(__name__)

IdentityProvider = Callable[[Context], IdentityKey]
"""Returns the node's long-term Ed25519 identity (e.g. loaded from a file named in node_config)."""
PolicyProvider = Callable[[Context], SitePolicy]
"""Returns the node's site policy (e.g. per node in a simulation)."""
LedgerProvider = Callable[[Context, IdentityKey], SiteLedger]

SITE_CONFIG_KEY = "secagg-site"
"""Node config key naming the site's TOML file ([policy] and ledger) for :data:`secagg_mod`."""

_IDENTITY_RECORD = "secagg.identity"
_PENDING_RECORD = "secagg.pending"
_SESSION_RECORD = "secagg.session"
_LEDGER_RECORD = "secagg.ledger"

# The session stage each protocol exchange must find (the session checks the message type too).
_EXPECTED_STAGE = {
    FlowerStage.SHARE_KEYS: Stage.ADVERTISE_KEYS,
    FlowerStage.MASKED_INPUT: Stage.SHARE_KEYS,
    FlowerStage.CONSISTENCY_CHECK: Stage.MASKED_INPUT,
    FlowerStage.UNMASK: Stage.CONSISTENCY_CHECK,
    FlowerStage.OUTCOME: Stage.COMPLETED,
}


class ContextLedger:
    """A :class:`~secagg.protocol.SiteLedger` kept in the node's ``Context.state``.

    It lives as long as the node's context (a Flower run); for a ledger that outlives runs (and
    round ids that stay monotonic across them), name a ledger file in the site configuration.
    """

    def __init__(self, context: Context) -> None:
        self._context = context

    def _lines(self) -> list[str]:
        record = self._context.state.config_records.get(_LEDGER_RECORD)
        return [] if record is None else list(cast(list[str], record["events"]))

    def append(self, event: SiteEvent) -> None:
        lines = [*self._lines(), json.dumps(event.to_dict(), sort_keys=True)]
        self._context.state.config_records[_LEDGER_RECORD] = ConfigRecord({"events": lines})

    def accepted(self, scope: bytes) -> Sequence[RoundAccepted]:
        events = (event_from_dict(json.loads(line)) for line in self._lines())
        return [e for e in events if isinstance(e, RoundAccepted) and e.scope == scope]


def _site_config(context: Context) -> SiteConfig:
    path = context.node_config.get(SITE_CONFIG_KEY)
    if not path:
        raise LocalProtocolError(
            f"this node has no site policy: set the node config key {SITE_CONFIG_KEY!r} to its "
            "site TOML file ([policy] with the pinned roster), or build the mod with "
            "make_secagg_mod(policy=SitePolicy(...))"
        )
    return load_site_config(str(path))


def node_config_policy(context: Context) -> SitePolicy:
    """The policy of the site TOML named by the node config key ``secagg-site``."""
    return _site_config(context).policy


def default_ledger(context: Context, identity: IdentityKey) -> SiteLedger:
    """The ledger file of the node's site configuration if it has one, else the node state."""
    if context.node_config.get(SITE_CONFIG_KEY):
        return _site_config(context).open_ledger(identity)
    return ContextLedger(context)


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
    policy: SitePolicy | PolicyProvider | None = None,
    identity: IdentityProvider | None = None,
    ledger: LedgerProvider | None = None,
) -> Callable[[Message, Context, ClientAppCallable], Message]:
    """Build the client mod.

    Args:
        policy: the site's :class:`~secagg.protocol.SitePolicy` (the same object the gRPC client
            takes), or a function of the node's Context returning it; default: the site TOML named
            by the node config key ``secagg-site``. Flower samples clients, so pin the
            consortium's keys with ``SitePolicy.trusting_keys(keys)`` (any sample of them, at
            least ``min_parties``), which stops a malicious server from adding Sybils.
        identity: where the node's Ed25519 identity comes from (default: generated per run and kept
            in ``Context.state``; a pinned roster needs identities registered in advance).
        ledger: where the site's ledger lives (default: :func:`default_ledger`).
    """
    get_policy: PolicyProvider
    if isinstance(policy, SitePolicy):
        fixed = policy
        get_policy = lambda _: fixed  # noqa: E731
    else:
        get_policy = policy or node_config_policy
    get_identity = identity or context_identity
    get_ledger = ledger or default_ledger

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
                get_policy(ctxt)  # no policy, no training for this server: fail before call_next
                return _register(msg, ctxt, call_next, key)
            site = get_policy(ctxt), get_ledger(ctxt, key)
            if stage is FlowerStage.ADVERTISE_KEYS:
                return _advertise(msg, ctxt, record, key, *site)
            return _protocol_step(msg, ctxt, record, stage, key, *site)
        except BaseException:
            _clear(ctxt)
            raise

    return secagg_mod


secagg_mod = make_secagg_mod()
"""The client mod with default settings: ``ClientApp(client_fn, mods=[secagg_mod])``; its policy
is the site TOML named by the node config key ``secagg-site``."""


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
    policy: SitePolicy,
    ledger: SiteLedger,
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
    encoder = (
        None
        if ctx.dp is None
        else dp_encoder(
            ctx, params.context, n=len(cfg.roster), threshold=cfg.threshold, bits=cfg.bits
        )
    )
    offer = None if encoder is None else dp_offer(encoder.params, policy, len(cfg.roster))
    # The site decides before it encodes anything (PolicyViolation, recorded in its ledger).
    check_offer(cfg, party, policy=policy, ledger=ledger, dp=offer)

    trained = np.frombuffer(cast(bytes, pending["trained"]), dtype="<f8")
    global_flat = np.frombuffer(cast(bytes, pending["global"]), dtype="<f8")
    if trained.size != ctx.dimension:
        raise MaliciousServerError("the round's model dimension is not the trained model's")
    if encoder is not None:
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
    session = ClientSession(cfg, party, key, encoded, policy=policy, ledger=ledger, dp=offer)
    advertisement = session.advertise_keys()
    del ctxt.state.config_records[_PENDING_RECORD]
    _save(ctxt, session, params)
    return _reply(msg, FlowerStage.ADVERTISE_KEYS, payload=encode_client_message(advertisement))


def _protocol_step(
    msg: Message,
    ctxt: Context,
    record: ConfigRecord,
    stage: FlowerStage,
    key: IdentityKey,
    policy: SitePolicy,
    ledger: SiteLedger,
) -> Message:
    saved = ctxt.state.config_records.get(_SESSION_RECORD)
    if saved is None:
        raise LocalProtocolError(f"{stage.value} without a session in progress")
    session, params = restore_client_session(saved, key, policy=policy, ledger=ledger)
    if session.stage is not _EXPECTED_STAGE[stage]:
        raise ProtocolError(f"{stage.value} arrived while the session is {session.stage.value}")
    if RoundContext.from_bytes(params.context).run_id != msg.metadata.run_id:
        raise MaliciousServerError("the message belongs to another Flower run")
    if stage is FlowerStage.OUTCOME:
        _clear(ctxt)
        survivors = [int(p) for p in cast(list[int], record["survivors"])]
        session.check_outcome(survivors, cast(bytes, record["result_digest"]))
        return _reply(msg, stage)
    server_message = decode_server_message(cast(bytes, record["payload"]))
    reply = session.receive(server_message)
    if session.stage is Stage.ABORTED:
        _clear(ctxt)
    else:  # a completed session waits for the outcome, which it checks
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
