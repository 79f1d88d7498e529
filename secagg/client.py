"""Client library of the secagg aggregator service.

::

    from secagg.client import AggregatorClient, load_identity
    from secagg.site import load_site_config

    identity = load_identity("site1.key")
    site = load_site_config("site.toml")          # the site's own [policy] and ledger
    with AggregatorClient("aggregator.example.org:50051", identity,
                          policy=site.policy, ledger=site.open_ledger(identity),
                          tls=TlsOptions(root_certificates=open("ca.crt", "rb").read())) as client:
        result = client.participate(update)        # a float vector or {name: float array}
        print(result.round_id, result.survivors, result.aggregate)

The site's :class:`~secagg.protocol.SitePolicy` decides whether the round the aggregator offers is
acceptable (pinned roster, threshold, context, round id, DP floor); if not, ``join`` raises
:class:`~secagg.errors.PolicyViolation` before anything is computed or revealed, and the aggregator
is told why. After a completed round the announced survivors are compared with the set this site
signed (:class:`~secagg.errors.OutcomeMismatch` otherwise). Every step is in the site's ledger.

``participate`` joins the round the aggregator has open, encodes the update with the round's
encoding (clip, fixed point, stochastic rounding), runs every protocol stage and returns the
decoded sum over the round's survivors. ``join`` + ``RoundHandle.submit`` do the same in two steps,
so a client can see the round's parameters before computing its update.

With site-level distributed DP (``handle.info.distributed_dp`` is set) the site encodes its update
itself (:class:`secagg.dp.DistributedDPEncoder`, values in Z_(2^b)) and sends it with
``RoundHandle.submit_encoded``; the result's ``total`` is the noisy modular sum. Either call takes
an optional signed record-level statement (``statement=SiteRecordLevelDP(...)``, with ``site`` the
name of this site's roster entry) that the aggregator puts in the round's privacy report, which
comes back as ``RoundResult.privacy_report``. ``RoundHandle.decline`` leaves a round at once (e.g.
when the site's privacy budget would be exceeded).

Errors: :class:`~secagg.errors.RoundAborted` when the round aborts (with its stage and reason),
:class:`AggregatorError` (with the gRPC ``code``) when the aggregator rejects something,
:class:`~secagg.errors.MaliciousServerError` & co. when the aggregator misbehaves.
"""

from __future__ import annotations

import math
import os
import pathlib
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from secagg.accounting.report import PrivacyReport, SiteRecordLevelDP
from secagg.crypto import IdentityKey, IdentityPublicKey, lp_encode
from secagg.dp.distributed import DistributedDPConfig
from secagg.encoding import FixedPointEncoding
from secagg.errors import ConfigError, RoundAborted
from secagg.protocol import SiteLedger, SitePolicy, Stage
from secagg.transport._gen.secagg.v1 import aggregator_pb2 as pb
from secagg.transport._gen.secagg.v1 import aggregator_pb2_grpc as pb_grpc
from secagg.transport.client import ChunkEvent, EventHook, OpenRound, fetch_result, request_auth
from secagg.transport.errors import AggregatorError, error_from_status
from secagg.transport.tls import TlsOptions, channel_credentials, is_loopback

__all__ = [
    "AggregatorClient",
    "AggregatorError",
    "ChunkEvent",
    "RoundAborted",
    "RoundHandle",
    "RoundInfo",
    "RoundResult",
    "TlsOptions",
    "load_identity",
    "save_identity",
]

Update = npt.ArrayLike | Mapping[str, npt.ArrayLike]
_KEY_HEADER = "# secagg Ed25519 identity key (secret: keep this file private)\n"


# --- identity key files ---------------------------------------------------------------------------


def save_identity(identity: IdentityKey, path: str | os.PathLike[str]) -> None:
    """Write a private key file readable by its owner only (0600); refuse to overwrite one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(_KEY_HEADER + identity.private_bytes().hex() + "\n")


def load_identity(path: str | os.PathLike[str]) -> IdentityKey:
    """Read a key file written by ``secagg keys generate`` (refused if others can read it)."""
    p = pathlib.Path(path)
    mode = p.stat().st_mode
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{p} is accessible by other users; run: chmod 600 {p}")
    lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and ln[0] != "#"]
    try:
        seed = bytes.fromhex(lines[0]) if len(lines) == 1 else b""
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise ConfigError(f"{p} is not a secagg identity key file")
    return IdentityKey.from_private_bytes(seed)


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundInfo:
    """The public parameters of the round a client joined."""

    round_id: int
    party: int
    vector_length: int
    threshold: int
    degree: int | None
    roster: Mapping[int, IdentityPublicKey] = field(repr=False)
    encoding: FixedPointEncoding
    deadlines: Mapping[str, float] = field(repr=False)
    distributed_dp: DistributedDPConfig | None = None
    """The site-level distributed DP every site of this round applies (bound into the round)."""


@dataclass(frozen=True, eq=False)
class RoundResult:
    """The outcome of a completed round: the survivors and (if fetched) their sum."""

    round_id: int
    survivors: tuple[int, ...]
    result_digest: bytes
    encoding: FixedPointEncoding
    total: npt.NDArray[np.uint32] | None = field(default=None, repr=False)
    """The exact modular sum of the survivors' encoded inputs (None unless fetched)."""
    layout: tuple[tuple[str, tuple[int, ...]], ...] | None = field(default=None, repr=False)
    privacy_report: PrivacyReport | None = field(default=None, repr=False)
    """The round's privacy report, as the aggregator persisted and signed it (None if absent)."""

    @property
    def aggregate(self) -> npt.NDArray[np.float64]:
        """The decoded sum of the survivors' (clipped) updates, as one float vector."""
        if self.total is None:
            raise ConfigError("the aggregate was not fetched (fetch_result=False)")
        return self.encoding.decode_sum(self.total, len(self.survivors))

    @property
    def mean(self) -> npt.NDArray[np.float64]:
        return self.aggregate / len(self.survivors)

    def arrays(self, *, mean: bool = False) -> dict[str, npt.NDArray[np.float64]]:
        """The aggregate split back into the named arrays that were submitted."""
        if self.layout is None:
            raise ConfigError("the update was a flat vector, not named arrays")
        flat = self.mean if mean else self.aggregate
        return _unflatten(flat, self.layout)


def _flatten(
    update: Update,
) -> tuple[npt.NDArray[np.float64], tuple[tuple[str, tuple[int, ...]], ...] | None]:
    if isinstance(update, Mapping):
        names = sorted(update)
        arrays = [np.asarray(update[n], dtype=np.float64) for n in names]
        layout = tuple((n, tuple(a.shape)) for n, a in zip(names, arrays, strict=True))
        flat = np.concatenate([a.ravel() for a in arrays]) if arrays else np.empty(0)
        return flat, layout
    return np.asarray(update, dtype=np.float64).ravel(), None


def _unflatten(
    flat: npt.NDArray[np.float64], layout: tuple[tuple[str, tuple[int, ...]], ...]
) -> dict[str, npt.NDArray[np.float64]]:
    out, lo = {}, 0
    for name, shape in layout:
        n = math.prod(shape)
        out[name] = flat[lo : lo + n].reshape(shape)
        lo += n
    return out


# --- the client ---------------------------------------------------------------------------------


class RoundHandle:
    """A round this client has been welcomed into; call :meth:`submit` once."""

    def __init__(self, client: AggregatorClient, opened: OpenRound) -> None:
        self._client = client
        self._open = opened
        p = opened.params
        self.info = RoundInfo(
            round_id=p.config.round_id,
            party=opened.party,
            vector_length=p.config.vector_length,
            threshold=p.config.threshold,
            degree=p.config.degree,
            roster=p.config.roster,
            encoding=p.encoding,
            deadlines={s.value: d for s, d in p.deadlines.items()},
            distributed_dp=p.distributed_dp,
        )
        self._used = False

    def submit(
        self,
        update: Update,
        *,
        fetch_result: bool = True,
        rounding_seed: bytes | None = None,
        statement: SiteRecordLevelDP | None = None,
    ) -> RoundResult:
        """Encode, mask and send ``update``; wait for the round's end; return its result.

        ``rounding_seed`` (32 bytes) makes the stochastic rounding reproducible (tests); by
        default it is fresh randomness. ``statement``: this site's record-level DP statement.
        """
        self._claim()
        flat, layout = _flatten(update)
        try:
            encoded = self._open.encode(flat, rounding_seed)
        except BaseException:
            self._open.cancel()
            raise
        return self._play(encoded, layout, fetch_result, statement)

    def submit_encoded(
        self,
        words: npt.ArrayLike,
        *,
        fetch_result: bool = True,
        statement: SiteRecordLevelDP | None = None,
    ) -> RoundResult:
        """Send a vector the site already encoded in Z_(2^bits) (e.g. distributed DP's integers).

        The result's ``total`` is the exact modular sum of the survivors' vectors.
        """
        self._claim()
        v = np.asarray(words)
        bits = self._open.params.config.bits
        m = self.info.vector_length
        try:
            if v.shape != (m,) or not np.issubdtype(v.dtype, np.integer):
                raise ConfigError(f"the encoded vector must hold {m} integers")
            if v.size and (int(v.min()) < 0 or int(v.max()) >= 1 << bits):
                raise ConfigError(f"encoded values must lie in [0, 2^{bits})")
        except BaseException:
            self._open.cancel()
            raise
        return self._play(v.astype(np.uint32), None, fetch_result, statement)

    def decline(self) -> None:
        """Leave the round before taking part; the aggregator goes on without this site at once."""
        self._claim()
        self._open.decline()

    def _claim(self) -> None:
        if self._used:
            raise ConfigError("a round accepts one update per client")
        self._used = True

    def _play(
        self,
        encoded: npt.NDArray[np.uint32],
        layout: tuple[tuple[str, tuple[int, ...]], ...] | None,
        fetch_result: bool,
        statement: SiteRecordLevelDP | None,
    ) -> RoundResult:
        outcome = self._open.run(encoded, chunk_bytes=self._client.chunk_bytes, statement=statement)
        del encoded
        if outcome.status != pb.ROUND_STATUS_COMPLETED:
            raise RoundAborted(outcome.abort_stage or "unknown", outcome.abort_reason)
        report = (
            PrivacyReport.from_json(outcome.privacy_report_json)
            if outcome.privacy_report_json
            else None
        )
        result = RoundResult(
            round_id=int(outcome.round_id),
            survivors=tuple(outcome.survivors),
            result_digest=bytes(outcome.result_digest),
            encoding=self.info.encoding,
            layout=layout,
            privacy_report=report,
        )
        if fetch_result:
            fetched = self._client.get_result(result.round_id, expected_digest=result.result_digest)
            result = RoundResult(
                round_id=result.round_id,
                survivors=result.survivors,
                result_digest=result.result_digest,
                encoding=result.encoding,
                total=fetched.total,
                layout=layout,
                privacy_report=report,
            )
        return result

    def cancel(self) -> None:
        """Leave the round (the aggregator counts this client as a dropout)."""
        self._open.cancel()


class AggregatorClient:
    """A connection to one aggregator, authenticated by this site's roster identity key.

    ``policy`` and ``ledger`` (the site's :class:`~secagg.protocol.SitePolicy` and its
    :class:`~secagg.protocol.SiteLedger`) are needed to take part in rounds; reading results and
    records needs neither.

    Plaintext is only allowed to a loopback address unless ``insecure=True``; otherwise pass
    ``tls`` (``TlsOptions(root_certificates=...)``, plus ``certificate_chain``/``private_key``
    for mutual TLS).
    """

    def __init__(
        self,
        target: str,
        identity: IdentityKey,
        *,
        policy: SitePolicy | None = None,
        ledger: SiteLedger | None = None,
        tls: TlsOptions | None = None,
        insecure: bool = False,
        timeout: float | None = 3600.0,
        chunk_bytes: int = 1 << 20,
        options: tuple[tuple[str, Any], ...] = (),
    ) -> None:
        if not isinstance(identity, IdentityKey):
            raise ConfigError("identity must be an IdentityKey (see load_identity)")
        if policy is not None and not isinstance(policy, SitePolicy):
            raise ConfigError("policy must be a SitePolicy (see secagg.site.load_site_config)")
        if chunk_bytes < 32:
            raise ConfigError("chunk_bytes must be at least 32")
        opts: list[tuple[str, Any]] = [
            # Pings every 10 s (the aggregator allows one per 5 s) even between calls: a dead
            # connection is found in ~15 s instead of minutes.
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.http2.ping_timeout_ms", 5_000),  # what recent gRPC really times pings by
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            *options,
        ]
        if tls is not None:
            if tls.server_name_override:
                opts.append(("grpc.ssl_target_name_override", tls.server_name_override))
            self._channel = grpc.secure_channel(target, channel_credentials(tls), options=opts)
        elif is_loopback(target) or insecure:
            self._channel = grpc.insecure_channel(target, options=opts)
        else:
            raise ConfigError(
                f"refusing a plaintext connection to {target}: pass tls=TlsOptions(...) or, "
                "if you really mean it, insecure=True"
            )
        self.target = target
        self.identity = identity
        self.policy = policy
        self.ledger = ledger
        self.timeout = timeout
        self.chunk_bytes = chunk_bytes
        self._stub = pb_grpc.AggregatorStub(self._channel)

    @classmethod
    def connect(cls, target: str, identity: IdentityKey, **kwargs: Any) -> AggregatorClient:
        """Open a channel and wait until the aggregator is reachable (``timeout`` s at most)."""
        client = cls(target, identity, **kwargs)
        try:
            grpc.channel_ready_future(client._channel).result(timeout=client.timeout)
        except grpc.FutureTimeoutError:
            client.close()
            raise AggregatorError(
                grpc.StatusCode.UNAVAILABLE, f"cannot reach the aggregator at {target}"
            ) from None
        return client

    def __enter__(self) -> AggregatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def join(self, *, on_event: EventHook | None = None) -> RoundHandle:
        """Open a stream for the round the aggregator has open and receive its parameters."""
        if self.policy is None or self.ledger is None:
            raise ConfigError(
                "joining a round needs this site's policy and ledger: "
                "AggregatorClient(..., policy=site.policy, ledger=site.open_ledger(identity)) "
                "with site = secagg.site.load_site_config('site.toml')"
            )
        opened = OpenRound(
            self._stub,
            self.identity,
            policy=self.policy,
            ledger=self.ledger,
            timeout=self.timeout,
            on_event=on_event,
        )
        return RoundHandle(self, opened)

    def participate(
        self,
        update: Update,
        *,
        fetch_result: bool = True,
        rounding_seed: bytes | None = None,
        on_event: EventHook | None = None,
        statement: SiteRecordLevelDP | None = None,
    ) -> RoundResult:
        """Join the open round, submit ``update`` and return the round's result."""
        return self.join(on_event=on_event).submit(
            update, fetch_result=fetch_result, rounding_seed=rounding_seed, statement=statement
        )

    def get_result(self, round_id: int, *, expected_digest: bytes | None = None) -> RoundResult:
        """The aggregate of a completed round (any roster member may fetch it)."""
        header, total = fetch_result(
            self._stub,
            self.identity,
            round_id,
            timeout=self.timeout,
            expected_digest=expected_digest,
        )
        encoding = FixedPointEncoding(
            clip=header.encoding.clip,
            scale=header.encoding.scale,
            max_clients=header.encoding.max_clients,
            bits=header.bits,
        )
        return RoundResult(
            round_id=int(header.round_id),
            survivors=tuple(header.survivors),
            result_digest=bytes(header.result_digest),
            encoding=encoding,
            total=total,
        )

    def get_round_record(self, round_id: int) -> dict[str, Any]:
        """The persisted record of a round: status, participants and dropouts per stage, the
        signed audit record (``audit_record``, canonical JSON text, verifiable with
        :func:`secagg.audit.verify_records`) and the privacy report (``privacy_report``)."""
        try:
            auth = request_auth(self.identity, "GetRoundRecord", lp_encode(round_id))
            r = self._stub.GetRoundRecord(
                pb.GetRoundRecordRequest(round_id=round_id, auth=auth), timeout=self.timeout
            )
        except grpc.RpcError as exc:
            raise error_from_status(exc.code(), exc.details()) from None
        return {
            "round_id": r.round_id,
            "status": pb.RoundStatus.Name(r.status).removeprefix("ROUND_STATUS_").lower(),
            "config_digest": r.config_digest.hex(),
            "started_at_ms": r.started_at_ms,
            "finished_at_ms": r.finished_at_ms or None,
            "stages": {
                s.stage: {"participants": list(s.participants), "dropouts": list(s.dropouts)}
                for s in r.stages
            },
            "survivors": list(r.survivors),
            "result_digest": r.result_digest.hex() or None,
            "abort_stage": r.abort_stage or None,
            "abort_reason": r.abort_reason or None,
            "records": [{"kind": x.kind, "json": x.json} for x in r.records],
            "vector_length": r.vector_length,
            "roster_size": r.roster_size,
            "threshold": r.threshold,
            "audit_record": r.audit_record_json or None,
            "privacy_report": (
                PrivacyReport.from_json(r.privacy_report_json) if r.privacy_report_json else None
            ),
        }

    def list_rounds(self, start_round_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        try:
            auth = request_auth(self.identity, "ListRounds", lp_encode(start_round_id, limit))
            resp = self._stub.ListRounds(
                pb.ListRoundsRequest(start_round_id=start_round_id, limit=limit, auth=auth),
                timeout=self.timeout,
            )
        except grpc.RpcError as exc:
            raise error_from_status(exc.code(), exc.details()) from None
        return [
            {
                "round_id": r.round_id,
                "status": pb.RoundStatus.Name(r.status).removeprefix("ROUND_STATUS_").lower(),
                "survivors": r.survivors,
                "abort_reason": r.abort_reason or None,
            }
            for r in resp.rounds
        ]


STAGES = tuple(s.value for s in Stage if not s.is_terminal)
