"""The server side of secagg over Flower: a fit workflow, drop-in for ``SecAggPlusWorkflow``.

Use it where Flower's workflow goes::

    workflow = DefaultWorkflow(fit_workflow=SecAggWorkflow(num_shares=..., ...))
    workflow(grid, legacy_context)

Each round: the strategy samples clients (``configure_fit``); the workflow sends them the FitIns
(``register``), builds the roster from the identity keys of the nodes that answered (Flower node
ids map to party ids 1..n in ascending node-id order), runs secagg's :class:`ServerSession` over
five more ``grid.send_and_receive`` exchanges, decodes the sum, and hands the strategy one FitRes
per survivor carrying the aggregate (as Flower's workflow does), so ``aggregate_fit``, metrics and
history work unchanged. A node that answers with an error, answers late (``timeout``) or sends an
invalid message is a dropout. The per-round :class:`~secagg.accounting.PrivacyReport` goes into the
server ``Context.state`` (ConfigRecord ``secagg.privacy``, key ``round-<r>``), the log and
:attr:`SecAggWorkflow.reports`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp.grid import Grid

from secagg.accounting import PRIVACY_REPORT_SCHEMA_VERSION, PrivacyReport, RdpAccountant
from secagg.crypto import IdentityPublicKey
from secagg.dp.distributed import site_level_statement
from secagg.encoding import FixedPointEncoding
from secagg.errors import ConfigError, CryptoError, ProtocolError, RoundAborted
from secagg.integrations.flower._common import (
    RECORD_KEY,
    DistributedDP,
    FlowerStage,
    RoundContext,
    dp_encoder,
    flatten,
    model_digest,
    unflatten,
    vector_length,
)
from secagg.protocol import (
    ACTIVE_STAGES,
    AggregateResult,
    ServerMessage,
    ServerSession,
    Stage,
    choose_parameters,
)
from secagg.transport.codec import RoundParameters, result_digest
from secagg.wire import decode_client_message, encode_server_message

__all__ = ["RoundSummary", "SecAggWorkflow"]

logger = logging.getLogger(__name__)

PRIVACY_RECORD = "secagg.privacy"
_PROTOCOL_STAGES = (
    FlowerStage.ADVERTISE_KEYS,
    FlowerStage.SHARE_KEYS,
    FlowerStage.MASKED_INPUT,
    FlowerStage.CONSISTENCY_CHECK,
    FlowerStage.UNMASK,
)


@dataclass(frozen=True, eq=False)
class RoundSummary:
    """What one round produced (also for tests and benchmarks)."""

    round: int
    parties: Mapping[int, int]  # Flower node id -> secagg party id
    survivors: tuple[int, ...]  # node ids whose updates are in the aggregate
    dropouts: tuple[int, ...]  # sampled node ids that are not
    aggregate: list[npt.NDArray[Any]] | None  # the new global parameters (None if aborted)
    report: PrivacyReport
    abort_reason: str | None = None
    result: AggregateResult | None = field(default=None, repr=False)


class SecAggWorkflow:
    """secagg's SecAgg/SecAgg+ as a Flower fit workflow (the knobs of ``SecAggPlusWorkflow``, plus).

    Args:
        num_shares: share holders per client including itself (the SecAgg+ neighbourhood size): an
            int, or a float fraction of the round's clients as in Flower. ``None`` (with
            ``reconstruction_threshold=None``) lets :func:`secagg.protocol.choose_parameters` pick
            the degree and threshold from ``dropout_rate`` and ``corrupt_fraction`` (Bell et al.).
            ``num_shares >= n`` runs the full graph (original SecAgg).
        reconstruction_threshold: t, an int or a float fraction of ``num_shares``.
        max_weight: example counts are divided by it (a client with more refuses the round); the
            weight is summed securely beside the parameters. ``0`` aggregates unweighted.
        clipping_range: parameters are clipped to ``[-clipping_range, clipping_range]``.
        quantization_range: Flower's fixed-point range per client; ``None`` (default) picks the
            finest scale that cannot overflow for the round's n. A range that could overflow the
            modulus is refused (:class:`~secagg.errors.OverflowRiskError`).
        modulus_range: 2^b with b <= 32; the sum lives in Z_(2^b).
        timeout: seconds to wait for the replies of each exchange (``None`` waits for all).
        dropout_rate, corrupt_fraction: inputs of the parameter finder when ``num_shares`` is None.
        distributed_dp: site-level distributed DP (:class:`DistributedDP`), or None.
        epsilon_budget: with ``distributed_dp``, no round starts that could take the cumulative
            site-level epsilon (accounted at ``threshold`` survivors, the fewest a round may
            complete with) above it; such a round is recorded aborted at ``budget``.
        roster: identity keys registered out of band; nodes presenting any other key are left out
            (give the same keys to the clients' mod as ``trusted_roster``). Without it the roster is
            built from what the sampled nodes advertise: see docs/flower.md on Sybils.
        on_report: called with each round's :class:`RoundSummary`.
    """

    def __init__(
        self,
        num_shares: int | float | None = None,
        reconstruction_threshold: int | float | None = None,
        *,
        max_weight: float = 1000.0,
        clipping_range: float = 8.0,
        quantization_range: int | None = None,
        modulus_range: int = 1 << 32,
        timeout: float | None = None,
        dropout_rate: float = 0.1,
        corrupt_fraction: float = 0.1,
        distributed_dp: DistributedDP | None = None,
        epsilon_budget: float | None = None,
        roster: Iterable[IdentityPublicKey | bytes] | None = None,
        on_report: Callable[[RoundSummary], None] | None = None,
    ) -> None:
        if (num_shares is None) != (reconstruction_threshold is None):
            raise ConfigError("give both num_shares and reconstruction_threshold, or neither")
        for name, value in (("num_shares", num_shares), ("threshold", reconstruction_threshold)):
            if value is not None and (isinstance(value, bool) or value <= 0):
                raise ConfigError(f"{name} must be positive, got {value!r}")
        if isinstance(reconstruction_threshold, float) and reconstruction_threshold > 1:
            raise ConfigError("a float reconstruction_threshold is a fraction in (0, 1]")
        if not isinstance(modulus_range, int) or modulus_range.bit_count() != 1:
            raise ConfigError("modulus_range must be a power of two")
        bits = modulus_range.bit_length() - 1
        if not 2 <= bits <= 32:
            raise ConfigError("modulus_range must be between 2^2 and 2^32")
        if not (math.isfinite(clipping_range) and clipping_range > 0):
            raise ConfigError("clipping_range must be positive")
        if max_weight < 0 or not math.isfinite(max_weight):
            raise ConfigError("max_weight must be >= 0 (0 = unweighted)")
        if quantization_range is not None and quantization_range < 2:
            raise ConfigError("quantization_range must be at least 2")
        if timeout is not None and not 0 < timeout <= 86_400:
            raise ConfigError("timeout must be in (0, 86400] seconds")
        self.num_shares = num_shares
        self.reconstruction_threshold = reconstruction_threshold
        self.max_weight = 0.0 if distributed_dp is not None else float(max_weight)
        self.clipping_range = float(clipping_range)
        self.quantization_range = quantization_range
        self.bits = bits
        self.timeout = timeout
        self.dropout_rate = dropout_rate
        self.corrupt_fraction = corrupt_fraction
        if epsilon_budget is not None and not 0 < epsilon_budget < math.inf:
            raise ConfigError("epsilon_budget must be positive (or None for no cap)")
        if epsilon_budget is not None and distributed_dp is None:
            raise ConfigError("epsilon_budget caps the site-level epsilon: it needs distributed_dp")
        self.distributed_dp = distributed_dp
        self.epsilon_budget = epsilon_budget
        self.roster = (
            None
            if roster is None
            else frozenset(
                k if isinstance(k, IdentityPublicKey) else IdentityPublicKey.from_bytes(k)
                for k in roster
            )
        )
        self.on_report = on_report
        self.reports: list[RoundSummary] = []
        self._accountant = RdpAccountant()
        self._last_round_id = 0

    def next_round_id(self) -> int:
        """A protocol round id above every earlier one (sites refuse a reused or smaller id).

        Milliseconds since the epoch, so ids also grow across runs of the same federation.
        """
        self._last_round_id = max(self._last_round_id + 1, int(time.time() * 1000))
        return self._last_round_id

    # --- Flower entry point ---------------------------------------------------------------------

    def __call__(self, grid: Grid, context: Context) -> None:
        if not isinstance(context, LegacyContext):
            raise TypeError(f"expected a LegacyContext, got {type(context).__name__}")
        _Round(self, grid, context).run()

    # --- round parameters -----------------------------------------------------------------------

    def graph_parameters(self, n: int) -> tuple[int | None, int]:
        """(degree or None for the full graph, threshold) for a round of n parties."""
        if self.num_shares is None:
            found = choose_parameters(
                n, dropout_rate=self.dropout_rate, corrupt_fraction=self.corrupt_fraction
            )
            degree, threshold = found.degree, found.threshold
        else:
            shares = (
                round(self.num_shares * n)
                if isinstance(self.num_shares, float)
                else int(self.num_shares)
            )
            shares = min(max(shares, 3), n)
            if shares < n and shares % 2 == 0:
                shares += 1  # an even degree (odd neighbourhood), as Flower's workflow enforces
            degree = shares - 1
            t = self.reconstruction_threshold
            threshold = round(t * shares) if isinstance(t, float) else int(cast(int, t))
            threshold = max(threshold, 2)
        return (None if degree >= n - 1 else degree), threshold

    def encoding(self, n: int) -> FixedPointEncoding:
        if self.quantization_range is None:
            return FixedPointEncoding.for_clients(
                clip=self.clipping_range, max_clients=n, bits=self.bits
            )
        scale = (self.quantization_range - 1) / (2 * self.clipping_range)
        return FixedPointEncoding(
            clip=self.clipping_range, scale=scale, max_clients=n, bits=self.bits
        )


class _Round:
    """One round of the workflow (kept apart so the workflow object holds only configuration)."""

    def __init__(self, wf: SecAggWorkflow, grid: Grid, context: LegacyContext) -> None:
        self.wf, self.grid, self.context = wf, grid, context
        cfg = context.state.config_records[MAIN_CONFIGS_RECORD]
        self.round = int(cast(int, cfg[WorkflowKey.CURRENT_ROUND]))
        self.sampled: list[int] = []
        self.fitres: dict[int, FitRes] = {}
        self.parties: dict[int, int] = {}
        self.proxies: dict[int, Any] = {}

    def _send(self, stage: FlowerStage, contents: Mapping[int, RecordDict]) -> list[Message]:
        def make(node: int, content: RecordDict) -> Message:
            record = content.config_records.get(RECORD_KEY) or ConfigRecord()
            record["stage"] = stage.value
            content.config_records[RECORD_KEY] = record
            return Message(
                content=content,
                dst_node_id=node,
                message_type=MessageType.TRAIN,
                group_id=str(self.round),
            )

        replies = self.grid.send_and_receive(
            [make(node, content) for node, content in contents.items()], timeout=self.wf.timeout
        )
        good = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                # A refusal by the site's policy or an alarm arrives as an error reply too.
                logger.warning("node %s dropped at %s: %s", node, stage.value, reply.error.reason)
                continue
            record = reply.content.config_records.get(RECORD_KEY)
            if record is None or record.get("stage") != stage.value or node not in contents:
                logger.warning("node %s sent an unexpected reply at %s", node, stage.value)
                continue
            good.append(reply)
        return good

    def run(self) -> None:
        ctx, wf = self.context, self.wf
        arr_record = ctx.state.array_records[MAIN_PARAMS_RECORD]
        parameters = compat.arrayrecord_to_parameters(arr_record, keep_input=True)
        instructions = ctx.strategy.configure_fit(self.round, parameters, ctx.client_manager)
        if not instructions:
            logger.info("configure_fit: no clients selected, cancel")
            return
        self.proxies = {proxy.node_id: proxy for proxy, _ in instructions}
        self.sampled = sorted(self.proxies)
        global_arrays = parameters_to_ndarrays(parameters)
        digest = model_digest(global_arrays)
        for _, fitins in instructions:
            if model_digest(parameters_to_ndarrays(fitins.parameters)) != digest:
                raise ConfigError("secure aggregation needs every client to get the same model")

        # 1. register: FitIns out, identity keys (and FitRes without parameters) back.
        replies = self._send(
            FlowerStage.REGISTER,
            {p.node_id: compat.fitins_to_recorddict(f, keep_input=True) for p, f in instructions},
        )
        identities: dict[int, IdentityPublicKey] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            try:
                raw = cast(bytes, reply.content.config_records[RECORD_KEY]["identity_public_key"])
                key = IdentityPublicKey.from_bytes(raw)
                fitres = compat.recorddict_to_fitres(reply.content, keep_input=False)
            except (KeyError, TypeError, ValueError, CryptoError) as exc:
                logger.warning("node %s registered with a malformed reply: %s", node, exc)
                continue
            if wf.roster is not None and key not in wf.roster:
                logger.warning("node %s presented an identity outside the roster", node)
                continue
            identities[node] = key
            self.fitres[node] = fitres
        keys = list(identities.values())
        for node in [n for n, k in identities.items() if keys.count(k) > 1]:
            logger.warning("node %s shares its identity key with another node: left out", node)
            del identities[node]
        self.parties = {node: i for i, node in enumerate(sorted(identities), start=1)}
        n = len(self.parties)
        if n < 2:
            self._finish_aborted("register", f"only {n} clients registered")
            return

        # 2. round parameters.
        degree, threshold = wf.graph_parameters(n)
        round_ctx = RoundContext(
            run_id=self.grid.run.run_id,
            round=self.round,
            model_digest=digest,
            shapes=tuple(a.shape for a in global_arrays),
            dtypes=tuple(a.dtype.str for a in global_arrays),
            max_weight=wf.max_weight,
            dp=wf.distributed_dp,
        )
        context_bytes = round_ctx.to_bytes()
        dp_params = None
        if wf.distributed_dp is not None:
            dp_params = dp_encoder(
                round_ctx, context_bytes, n=n, threshold=threshold, bits=wf.bits
            ).params
            if wf.epsilon_budget is not None:
                worst, _ = site_level_statement(dp_params, wf._accountant, survivors=threshold)
                if worst.epsilon_cumulative > wf.epsilon_budget:
                    self._finish_aborted(
                        "budget",
                        "the site-level privacy budget is spent: this round could take the "
                        f"cumulative epsilon to {worst.epsilon_cumulative:.4g} > epsilon_budget "
                        f"{wf.epsilon_budget:g}",
                    )
                    return
            encoding = FixedPointEncoding(clip=1.0, scale=1.0, max_clients=n, bits=wf.bits)
            length = vector_length(round_ctx, dp_params.padded_dimension)
        else:
            encoding = wf.encoding(n)
            length = vector_length(round_ctx)
        deadline = wf.timeout or 600.0
        params = RoundParameters.create(
            round_id=wf.next_round_id(),
            roster={p: identities[node] for node, p in self.parties.items()},
            threshold=threshold,
            vector_length=length,
            encoding=encoding,
            deadlines={s: deadline for s in ACTIVE_STAGES},
            degree=degree,
            context=context_bytes,
        )
        config_bytes = params.to_proto().SerializeToString()
        server = ServerSession(params.config)
        logger.info(
            "secagg round %s: %s parties, %s, threshold %s",
            self.round,
            n,
            "full graph" if degree is None else f"degree {degree}",
            threshold,
        )

        # 3. the protocol: advertise keys, share keys, masked input, consistency check, unmask.
        outbox: dict[int, ServerMessage] = {}
        node_of = {p: node for node, p in self.parties.items()}
        try:
            for stage in _PROTOCOL_STAGES:
                if stage is FlowerStage.ADVERTISE_KEYS:
                    contents = {
                        node: _record(round_config=config_bytes, party=p)
                        for node, p in self.parties.items()
                    }
                else:
                    contents = {
                        node_of[p]: _record(payload=encode_server_message(m))
                        for p, m in outbox.items()
                    }
                for reply in self._send(stage, contents):
                    self._accept(server, reply, params)
                outbox = server.close_stage()
        except RoundAborted as exc:
            self._finish_aborted(exc.stage, exc.reason, server)
            return
        self._announce(server)
        self._finish(server.result, params, round_ctx, context_bytes, global_arrays, dp_params)

    def _announce(self, server: ServerSession) -> None:
        """Tell every site that unmasked the outcome; each checks it against what it signed."""
        result = server.result
        record = {
            "survivors": list(result.survivors),
            "result_digest": result_digest(result.total),
        }
        node_of = {p: node for node, p in self.parties.items()}
        contents = {node_of[p]: _record(**record) for p in server.participants(Stage.UNMASK)}
        answered = {r.metadata.src_node_id for r in self._send(FlowerStage.OUTCOME, contents)}
        for node in sorted(set(contents) - answered):
            logger.warning("node %s did not confirm the outcome of round %s", node, self.round)

    def _accept(self, server: ServerSession, reply: Message, params: RoundParameters) -> None:
        node = reply.metadata.src_node_id
        party = self.parties.get(node)
        try:
            payload = cast(bytes, reply.content.config_records[RECORD_KEY]["payload"])
            message = decode_client_message(payload, config=params.config)
            if message.sender != party:
                raise ProtocolError(f"node {node} (party {party}) sent party {message.sender}'s")
            server.receive(message)
        except (KeyError, TypeError, ProtocolError, CryptoError) as exc:
            # Never log payloads; the reason names the check that failed.
            logger.warning("rejected a message of node %s: %s", node, exc)

    def _finish(
        self,
        result: AggregateResult,
        params: RoundParameters,
        round_ctx: RoundContext,
        context_bytes: bytes,
        global_arrays: list[npt.NDArray[Any]],
        dp_params: Any,
    ) -> None:
        wf, ctx = self.wf, self.context
        node_of = {p: node for node, p in self.parties.items()}
        survivors = tuple(sorted(node_of[p] for p in result.survivors))
        k = len(result.survivors)
        site_level = None
        if dp_params is not None:
            encoder = dp_encoder(
                round_ctx,
                context_bytes,
                n=len(self.parties),
                threshold=params.config.threshold,
                bits=params.config.bits,
            )
            total = encoder.decode(result.total.astype(np.int64), k)
            new_flat = flatten(global_arrays) + total / k
            site_level, self.wf._accountant = site_level_statement(
                dp_params, wf._accountant, survivors=k
            )
        else:
            total = params.encoding.decode_sum(result.total, k)
            if round_ctx.max_weight > 0:
                weight = float(total[-1]) / params.encoding.clip
                if weight <= 0:
                    self._finish_aborted("unmask", "the survivors' total weight is zero")
                    return
                new_flat = total[:-1] / weight
            else:
                new_flat = total / k
        aggregate = unflatten(new_flat, round_ctx.shapes, round_ctx.dtypes)

        # Hand the strategy one FitRes per survivor, all carrying the aggregate (as Flower's
        # workflow does): any averaging strategy returns it unchanged.
        parameters = ndarrays_to_parameters(aggregate)
        proxies = self.proxies
        results = []
        for node in survivors:
            fitres = self.fitres[node]
            fitres.parameters = parameters
            fitres.num_examples = 1
            fitres.status = Status(Code.OK, "")
            results.append((proxies[node], fitres))
        failures: list[Any] = [
            RuntimeError(f"node {n} dropped out of secure aggregation")
            for n in self.sampled
            if n not in survivors
        ]
        aggregated, metrics = ctx.strategy.aggregate_fit(self.round, results, failures)
        if aggregated:
            ctx.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
                aggregated, True
            )
            ctx.history.add_metrics_distributed_fit(server_round=self.round, metrics=metrics)
        self._publish(survivors, aggregate, site_level, None, result)

    def _finish_aborted(self, stage: str, reason: str, server: ServerSession | None = None) -> None:
        logger.error("secagg round %s aborted at %s: %s", self.round, stage, reason)
        self._publish((), None, None, f"{stage}: {reason}", None)

    def _publish(
        self,
        survivors: tuple[int, ...],
        aggregate: list[npt.NDArray[Any]] | None,
        site_level: Any,
        abort_reason: str | None,
        result: AggregateResult | None,
    ) -> None:
        report = PrivacyReport(
            schema_version=PRIVACY_REPORT_SCHEMA_VERSION,
            round_id=self.round,
            protection_mode="mask",
            participants=tuple(f"node-{n}" for n in survivors),
            dropouts=tuple(f"node-{n}" for n in self.sampled if n not in survivors),
            site_level=site_level,
            record_level=(),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        record = self.context.state.config_records.get(PRIVACY_RECORD) or ConfigRecord()
        record[f"round-{self.round}"] = report.to_json()
        self.context.state.config_records[PRIVACY_RECORD] = record
        logger.info("secagg round %s privacy report: %s", self.round, report.to_json())
        summary = RoundSummary(
            round=self.round,
            parties=dict(self.parties),
            survivors=survivors,
            dropouts=tuple(n for n in self.sampled if n not in survivors),
            aggregate=aggregate,
            report=report,
            abort_reason=abort_reason,
            result=result,
        )
        self.wf.reports.append(summary)
        if self.wf.on_report is not None:
            self.wf.on_report(summary)


def _record(**values: Any) -> RecordDict:
    return RecordDict({RECORD_KEY: ConfigRecord(values)})
