"""The server side of one round, as a sans-IO state machine.

The transport feeds client messages to :meth:`ServerSession.receive` and, when a stage's deadline
passes (or every expected party has answered), calls :meth:`ServerSession.close_stage`, which
returns the messages to deliver for the next stage. Parties that did not answer in time are the
stage's dropouts. A bad client message raises a typed error and changes nothing, so one faulty or
malicious client cannot spoil the round for the others. Too few parties at any stage abort the
round with :class:`~secagg.errors.RoundAborted` naming the stage.

Masked inputs are added into one accumulator on arrival; the server never holds n vectors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from secagg.crypto import KeyAgreementKey, exchange, reconstruct_many
from secagg.errors import (
    LocalProtocolError,
    MalformedMessage,
    ReplayedMessage,
    RoundAborted,
    ShamirError,
    UnexpectedMessage,
    UnknownParty,
)
from secagg.protocol.config import RoundConfig
from secagg.protocol.masking import apply_masks, pairwise_seed, pairwise_sign
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
    compute_session_id,
)

__all__ = ["AggregateResult", "RoundTranscript", "ServerSession"]

_MESSAGE_OF_STAGE: dict[Stage, type] = {
    Stage.ADVERTISE_KEYS: AdvertiseKeys,
    Stage.SHARE_KEYS: ShareKeys,
    Stage.MASKED_INPUT: MaskedInput,
    Stage.CONSISTENCY_CHECK: ConsistencySignature,
    Stage.UNMASK: UnmaskShares,
}


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """The outcome of a completed round: the sum over ``survivors`` in Z_(2^b)."""

    round_id: int
    session_id: bytes
    total: npt.NDArray[np.uint32]
    survivors: tuple[int, ...]
    participants: Mapping[Stage, tuple[int, ...]] = field(repr=False)
    dropouts: Mapping[Stage, tuple[int, ...]] = field(repr=False)


@dataclass(frozen=True, eq=False)
class RoundTranscript:
    """The public, signed facts of a round (finished or aborted), for audit records.

    Everything here is either public (keys, who answered at which stage) or a signature a client
    made; no share, seed or input is included.
    """

    round_id: int
    session_id: bytes
    stage: Stage
    abort_stage: Stage | None
    abort_reason: str | None
    advertisements: tuple[AdvertiseKeys, ...]
    participants: Mapping[Stage, tuple[int, ...]]
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    consistency_signatures: tuple[tuple[int, bytes], ...]


class ServerSession:
    """The aggregator's view of one round."""

    def __init__(self, config: RoundConfig) -> None:
        self.config = config
        self._stage = Stage.ADVERTISE_KEYS
        self._abort_reason: str | None = None
        self._abort_stage: Stage | None = None
        self._session_id = b""
        # Who completed each stage (U1..U5), filled as messages arrive.
        self._senders: dict[Stage, set[int]] = {s: set() for s in ACTIVE_STAGES}
        self._advertisements: dict[int, AdvertiseKeys] = {}
        self._share_messages: dict[int, ShareKeys] = {}
        self._consistency: dict[int, bytes] = {}
        self._survivors: tuple[int, ...] = ()
        self._survivor_set: frozenset[int] = frozenset()
        self._dropped: tuple[int, ...] = ()
        self._seed_shares: dict[int, dict[int, bytes]] = {}  # owner -> holder -> share
        self._key_shares: dict[int, dict[int, bytes]] = {}
        self._accumulator: npt.NDArray[np.uint32] | None = None
        self._result: AggregateResult | None = None

    # --- public surface -------------------------------------------------------------------

    @property
    def stage(self) -> Stage:
        return self._stage

    @property
    def session_id(self) -> bytes:
        return self._session_id

    @property
    def abort_reason(self) -> str | None:
        return self._abort_reason

    @property
    def abort_stage(self) -> Stage | None:
        return self._abort_stage

    @property
    def result(self) -> AggregateResult:
        if self._result is None:
            raise LocalProtocolError(f"the round has no result (stage {self._stage.value})")
        return self._result

    def transcript(self) -> RoundTranscript:
        """The round's public, signed facts so far (see :class:`RoundTranscript`)."""
        return RoundTranscript(
            round_id=self.config.round_id,
            session_id=self._session_id,
            stage=self._stage,
            abort_stage=self._abort_stage,
            abort_reason=self._abort_reason,
            advertisements=tuple(self._advertisements[p] for p in sorted(self._advertisements)),
            participants=MappingProxyType(
                {s: tuple(sorted(self._senders[s])) for s in ACTIVE_STAGES}
            ),
            survivors=self._survivors,
            dropped=self._dropped,
            consistency_signatures=tuple(sorted(self._consistency.items())),
        )

    def participants(self, stage: Stage) -> frozenset[int]:
        """The parties whose message of ``stage`` was accepted so far."""
        return frozenset(self._senders[stage])

    def expected(self) -> frozenset[int]:
        """The parties that may still send a message in the current stage."""
        if self._stage.is_terminal:
            return frozenset()
        return frozenset(self._eligible(self._stage)) - self._senders[self._stage]

    def receive(self, message: ClientMessage) -> None:
        """Accept one client message, or raise a typed error and change nothing."""
        stage = self._stage
        if stage.is_terminal:
            raise UnexpectedMessage(f"the round is {stage.value}; no more messages are accepted")
        expected_type = _MESSAGE_OF_STAGE[stage]
        if not isinstance(message, expected_type):
            raise UnexpectedMessage(
                f"{type(message).__name__} does not fit stage {stage.value} "
                f"(expected {expected_type.__name__})"
            )
        cfg = self.config
        if message.round_id != cfg.round_id:
            raise ReplayedMessage(
                f"message for round {message.round_id}, this is round {cfg.round_id}"
            )
        if stage is not Stage.ADVERTISE_KEYS and message.session_id != self._session_id:  # type: ignore[union-attr]
            raise ReplayedMessage("message belongs to another session of this round")
        sender = message.sender
        if sender not in cfg.roster:
            raise UnknownParty(f"party {sender} is not in the roster")
        if sender not in self._eligible(stage):
            raise UnexpectedMessage(
                f"party {sender} did not complete the previous stage and cannot send {stage.value}"
            )
        if sender in self._senders[stage]:
            raise ReplayedMessage(f"party {sender} already sent its {stage.value} message")
        self._validate_content(message)
        message.verify(cfg.roster[sender], cfg.digest)
        self._accept(message)
        self._senders[stage].add(sender)

    def close_stage(self) -> dict[int, ServerMessage]:
        """End the current stage; return the next stage's messages by recipient.

        After the unmask stage the round is complete and :attr:`result` holds the sum.
        """
        stage = self._stage
        if stage.is_terminal:
            raise LocalProtocolError(f"the round is already {stage.value}")
        cfg = self.config
        done = self._senders[stage]
        try:
            if len(done) < cfg.threshold:
                raise RoundAborted(
                    stage.value,
                    f"only {len(done)} parties completed {stage.value}, "
                    f"threshold is {cfg.threshold}",
                )
            outgoing = self._close(stage)
        except RoundAborted as exc:
            self._abort(exc.stage, exc.reason)
            raise
        next_index = ACTIVE_STAGES.index(stage) + 1
        self._stage = (
            ACTIVE_STAGES[next_index] if next_index < len(ACTIVE_STAGES) else Stage.COMPLETED
        )
        return outgoing

    def abort(self, reason: str) -> None:
        """Abort the round from outside (e.g. the service is shutting down)."""
        if not self._stage.is_terminal:
            self._abort(self._stage.value, reason)

    # --- per-stage logic ------------------------------------------------------------------

    def _eligible(self, stage: Stage) -> set[int] | Mapping[int, object]:
        if stage is Stage.ADVERTISE_KEYS:
            return self.config.roster
        previous = ACTIVE_STAGES[ACTIVE_STAGES.index(stage) - 1]
        if stage is Stage.UNMASK:
            return self._senders[Stage.CONSISTENCY_CHECK]
        return self._senders[previous]

    def _validate_content(self, message: ClientMessage) -> None:
        cfg = self.config
        if isinstance(message, AdvertiseKeys):
            taken = {
                k
                for ad in self._advertisements.values()
                for k in (ad.cipher_public_key, ad.mask_public_key)
            }
            if {message.cipher_public_key, message.mask_public_key} & taken or (
                message.cipher_public_key == message.mask_public_key
            ):
                raise MalformedMessage(f"party {message.sender} reuses a public key")
        elif isinstance(message, ShareKeys):
            wanted = (cfg.holders(message.sender) & self._senders[Stage.ADVERTISE_KEYS]) - {
                message.sender
            }
            got = {receiver for receiver, _ in message.encrypted_shares}
            if got != wanted:
                raise MalformedMessage(
                    f"party {message.sender} must send shares to exactly {sorted(wanted)}"
                )
        elif isinstance(message, MaskedInput):
            v = message.masked_vector
            if v.shape != (cfg.vector_length,):
                raise MalformedMessage(
                    f"masked input has length {v.shape[0]}, the round's vectors have "
                    f"{cfg.vector_length}"
                )
            if cfg.bits < 32 and int(v.max(initial=0)) > cfg.modulus_mask:
                raise MalformedMessage(f"masked input has values outside Z_(2^{cfg.bits})")
        elif isinstance(message, ConsistencySignature):
            if message.survivors != self._survivors:
                raise MalformedMessage("the signed survivor set is not the one the server sent")
        elif isinstance(message, UnmaskShares):
            survivors, dropped = self._survivor_set, set(self._dropped)
            for owners, allowed, what in (
                (message.self_mask_shares, survivors, "self-mask"),
                (message.mask_key_shares, dropped, "mask-key"),
            ):
                for owner, _ in owners:
                    if owner not in allowed or message.sender not in cfg.holders(owner):
                        raise MalformedMessage(
                            f"party {message.sender} cannot hold a {what} share of party {owner}"
                        )

    def _accept(self, message: ClientMessage) -> None:
        if isinstance(message, AdvertiseKeys):
            self._advertisements[message.sender] = message
        elif isinstance(message, ShareKeys):
            self._share_messages[message.sender] = message
        elif isinstance(message, MaskedInput):
            if self._accumulator is None:
                self._accumulator = np.zeros(self.config.vector_length, dtype=np.uint32)
            np.add(self._accumulator, message.masked_vector, out=self._accumulator)
        elif isinstance(message, ConsistencySignature):
            self._consistency[message.sender] = message.signature
        elif isinstance(message, UnmaskShares):
            for owner, share in message.self_mask_shares:
                self._seed_shares.setdefault(owner, {})[message.sender] = share
            for owner, share in message.mask_key_shares:
                self._key_shares.setdefault(owner, {})[message.sender] = share

    def _close(self, stage: Stage) -> dict[int, ServerMessage]:
        cfg = self.config
        if stage is Stage.ADVERTISE_KEYS:
            ads = tuple(self._advertisements[p] for p in sorted(self._advertisements))
            self._session_id = compute_session_id(cfg.digest, ads)
            roster = KeyRoster(cfg.round_id, ads)
            return {p: roster for p in self._advertisements}
        if stage is Stage.SHARE_KEYS:
            u2 = self._senders[Stage.SHARE_KEYS]
            inbox: dict[int, list[tuple[int, bytes]]] = {v: [] for v in u2}
            for u in sorted(u2):
                for receiver, box in self._share_messages[u].encrypted_shares:
                    if receiver in u2:
                        inbox[receiver].append((u, box))
            self._share_messages.clear()
            return {
                v: ShareBundle(cfg.round_id, self._session_id, tuple(boxes))
                for v, boxes in inbox.items()
            }
        if stage is Stage.MASKED_INPUT:
            self._survivors = tuple(sorted(self._senders[Stage.MASKED_INPUT]))
            self._survivor_set = frozenset(self._survivors)
            self._dropped = tuple(
                sorted(self._senders[Stage.SHARE_KEYS] - self._senders[Stage.MASKED_INPUT])
            )
            survivors = SurvivorsRequest(cfg.round_id, self._session_id, self._survivors)
            return {p: survivors for p in self._survivors}
        if stage is Stage.CONSISTENCY_CHECK:
            signatures = tuple(sorted(self._consistency.items()))
            request = UnmaskRequest(
                cfg.round_id, self._session_id, self._survivors, self._dropped, signatures
            )
            return {p: request for p in self._senders[Stage.CONSISTENCY_CHECK]}
        self._unmask()
        return {}

    def _unmask(self) -> None:
        cfg = self.config
        survivors, alive = self._survivors, self._survivor_set
        # Only dropped parties with a surviving neighbour left masks in the sum.
        dropped = [v for v in self._dropped if cfg.graph.neighbours(v) & alive]
        seeds = self._reconstruct(survivors, self._seed_shares, "self-mask seed")
        keys = self._reconstruct(dropped, self._key_shares, "mask key")

        add: list[bytes] = []
        subtract = list(seeds)
        for v, private in zip(dropped, keys, strict=True):
            expected = self._advertisements[v].mask_public_key
            if KeyAgreementKey.from_private_bytes(private).public_bytes != expected:
                raise RoundAborted(
                    Stage.UNMASK.value,
                    f"the shares of party {v}'s mask key are inconsistent with its public key",
                )
            for w in sorted(cfg.graph.neighbours(v) & alive):
                secret = exchange(private, self._advertisements[w].mask_public_key)
                seed = pairwise_seed(
                    secret, round_id=cfg.round_id, session_id=self._session_id, a=v, b=w
                )
                # w added sign(w, v) * PRG(seed); take it back out.
                (subtract if pairwise_sign(w, v) > 0 else add).append(seed)

        total = self._accumulator
        if total is None:  # pragma: no cover - threshold >= 2 guarantees masked inputs
            raise RoundAborted(Stage.UNMASK.value, "no masked input was received")
        apply_masks(total, add, subtract)
        np.bitwise_and(total, np.uint32(cfg.modulus_mask), out=total)
        self._accumulator = None
        participants = {s: tuple(sorted(self._senders[s])) for s in ACTIVE_STAGES}
        dropouts: dict[Stage, tuple[int, ...]] = {}
        previous: set[int] = set(cfg.roster)
        for s in ACTIVE_STAGES:
            dropouts[s] = tuple(sorted(previous - self._senders[s]))
            previous = self._senders[s]
        self._result = AggregateResult(
            round_id=cfg.round_id,
            session_id=self._session_id,
            total=total,
            survivors=survivors,
            participants=MappingProxyType(participants),
            dropouts=MappingProxyType(dropouts),
        )
        self._seed_shares.clear()
        self._key_shares.clear()

    def _reconstruct(
        self, owners: tuple[int, ...] | list[int], shares: dict[int, dict[int, bytes]], what: str
    ) -> list[bytes]:
        threshold = self.config.threshold
        share_sets = []
        for owner in owners:
            held = shares.get(owner, {})
            if len(held) < threshold:
                raise RoundAborted(
                    Stage.UNMASK.value,
                    f"cannot reconstruct the {what} of party {owner}: {len(held)} of its share "
                    f"holders answered, threshold is {threshold}",
                )
            share_sets.append(held)
        try:
            return reconstruct_many(share_sets, threshold=threshold)
        except ShamirError as exc:
            raise RoundAborted(Stage.UNMASK.value, f"invalid {what} shares: {exc}") from exc

    def _abort(self, stage: str, reason: str) -> None:
        self._stage = Stage.ABORTED
        self._abort_stage = Stage(stage)
        self._abort_reason = reason
        self._accumulator = None
        self._seed_shares.clear()
        self._key_shares.clear()

    def __repr__(self) -> str:
        return f"ServerSession(round={self.config.round_id}, stage={self._stage.value})"
