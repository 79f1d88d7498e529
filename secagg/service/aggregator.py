"""The aggregator process: gRPC server, round loop, persistence and graceful shutdown.

``Aggregator(config).serve()`` starts the gRPC server (Aggregator service, grpc.health.v1 and
reflection), logs ``{"event": "listening", "port": ...}``, runs ``config.rounds`` rounds one after
the other, and keeps serving results and records until it is stopped (or exits once the rounds are
done with ``exit_after_rounds``). On SIGTERM/SIGINT it opens no new round; a round in progress gets
``shutdown_grace`` seconds to finish, after which it is aborted with the reason
"aggregator shutting down", persisted, and every client is told so.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
import signal
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from secagg.errors import ConfigError
from secagg.service.config import ServiceConfig
from secagg.service.coordinator import RoundCoordinator, clean_spool_dir
from secagg.service.logs import log_event
from secagg.service.records import RoundBooks
from secagg.service.transcript import transcript_dir
from secagg.store import RoundStore, StoredRound
from secagg.transport._gen.secagg.v1 import aggregator_pb2 as pb
from secagg.transport.codec import IN_MEMORY_SPOOL_BYTES, RoundParameters
from secagg.transport.errors import NotJoinable, ShuttingDown, UnknownIdentity
from secagg.transport.servicer import (
    MAX_STREAMS_PER_IDENTITY,
    AggregatorServicer,
    add_servicer_to_server,
)
from secagg.transport.tls import server_credentials

__all__ = ["SERVICE_NAME", "Aggregator"]

KEEPALIVE_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 5_000
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Aggregator"].full_name
INTERRUPTED_REASON = (
    "the aggregator stopped while the round was running (crash or kill); the round never completed"
)


MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc <malloc.h>


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (mallopt M_ARENA_MAX) before the server starts its threads.

    By default glibc gives each new thread its own arena (up to 8 per core), and every arena keeps
    the 1 MiB chunk buffers its thread freed: with one reader thread per upload, resident memory
    grew by megabytes per concurrent upload. Same effect as ``MALLOC_ARENA_MAX`` in the
    environment, which wins if set. No-op (False) on other C libraries.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


FD_MARGIN = 64
"""Descriptors beyond the round's: databases, logs, transcripts, gRPC's own."""


class Aggregator:
    def __init__(self, config: ServiceConfig, logger: logging.Logger | None = None) -> None:
        self.config = config
        self.log = logger or logging.getLogger("secagg.service")
        self.store = RoundStore(config.data_dir)
        self.spool_dir = config.data_dir / "spool"
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        clean_spool_dir(self.spool_dir)
        self.books = RoundBooks(
            self.store,
            aggregator_key=config.aggregator_key,
            distributed_dp=config.distributed_dp,
            site_name=config.site_name,
            logger=self.log,
        )
        interrupted = self.store.mark_interrupted(INTERRUPTED_REASON)
        if interrupted:
            log_event(self.log, "rounds_marked_aborted", logging.WARNING, rounds=interrupted)
        orphans = self.store.remove_orphan_results()
        if orphans:
            log_event(self.log, "orphan_results_removed", logging.WARNING, files=orphans)
        self._cond = threading.Condition()
        self._current: RoundCoordinator | None = None
        self._no_more_rounds = False
        self._shutdown_at: float | None = None
        self._stopped = threading.Event()
        self._downloads: dict[int, set[bytes]] = {}
        self._budget_refusal: str | None = None
        self._verified: set[int] = set()
        self._verify_lock = threading.Lock()
        self._roster_keys = {k.to_bytes() for k in config.roster.values()}
        self._auditor_keys = {k.to_bytes() for k in config.auditors}
        self.server: grpc.Server | None = None
        self.health = health.HealthServicer()
        self.port = 0

    # --- used by the servicer ------------------------------------------------------------

    def check_identity(self, public_key: bytes) -> None:
        if bytes(public_key) not in self._roster_keys:
            raise UnknownIdentity(
                "this identity key is not in the aggregator's roster; ask its operator to add "
                "the public key"
            )

    def is_auditor(self, public_key: bytes) -> bool:
        return bytes(public_key) in self._auditor_keys

    def check_reader(self, public_key: bytes) -> None:
        """Results and records are for roster members and configured auditors only."""
        if bytes(public_key) not in self._roster_keys and not self.is_auditor(public_key):
            raise UnknownIdentity(
                "this identity may not read this aggregator's rounds (neither a roster member "
                "nor a configured auditor)"
            )

    def round_for_join(self) -> RoundCoordinator:
        """The round open for joining, waiting up to ``join_wait`` seconds for the next one."""
        deadline = time.monotonic() + self.config.join_wait
        with self._cond:
            while True:
                if self._shutdown_at is not None:
                    raise ShuttingDown("the aggregator is shutting down")
                current = self._current
                if current is not None and current.joinable:
                    return current
                if self._no_more_rounds and self._budget_refusal is not None:
                    raise NotJoinable(self._budget_refusal)
                if self._no_more_rounds:
                    raise NotJoinable(
                        f"no round is open: this aggregator has run its {self.config.rounds} "
                        "configured round(s)"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NotJoinable(
                        f"no round opened for joining within {self.config.join_wait:g} s"
                    )
                self._cond.wait(min(remaining, 0.5))

    def result_chunks(self, stored: StoredRound, chunk_words: int) -> Iterator[bytes]:
        """A completed round's aggregate in chunks; the file's digest is checked once."""
        with self._verify_lock:
            if stored.round_id not in self._verified:
                self.store.verify_result(stored)
                self._verified.add(stored.round_id)
        return self.store.read_result(stored, chunk_words)

    # --- lifecycle ------------------------------------------------------------

    def shutdown_deadline(self) -> float | None:
        at = self._shutdown_at
        return None if at is None else at + self.config.shutdown_grace

    def request_shutdown(self, reason: str = "signal") -> None:
        with self._cond:
            if self._shutdown_at is None:
                self._shutdown_at = time.monotonic()
                log_event(
                    self.log,
                    "shutdown_requested",
                    reason=reason,
                    grace_s=self.config.shutdown_grace,
                )
            self._cond.notify_all()
        # Load balancers stop sending new sites at once; running calls carry on.
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._stopped.set()

    def result_served(self, round_id: int, key: bytes) -> None:
        """A site downloaded a round's whole result (the shutdown drain waits for these)."""
        with self._cond:
            self._downloads.setdefault(round_id, set()).add(key)
            self._cond.notify_all()

    def _drain_downloads(self, round_id: int, survivors: set[bytes]) -> None:
        """A round that completed during a shutdown: keep the listener open until each survivor
        has fetched the result, for at most another grace period."""
        deadline = time.monotonic() + self.config.shutdown_grace
        with self._cond:
            while not survivors <= self._downloads.get(round_id, set()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = len(survivors - self._downloads.get(round_id, set()))
                    log_event(self.log, "shutdown_drain_timeout", round=round_id, missing=missing)
                    return
                self._cond.wait(min(remaining, 0.5))
        log_event(self.log, "shutdown_drained", round=round_id, sites=len(survivors))

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_shutdown(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def descriptors_needed(self) -> int:
        """File descriptors a round of the whole roster may hold at once: two streams per site,
        a spool file per large upload, the outsiders' and unary share, and a fixed margin."""
        cfg = self.config
        n = len(cfg.roster)
        spools = n if 4 * cfg.vector_length > IN_MEMORY_SPOOL_BYTES else 0
        return (
            MAX_STREAMS_PER_IDENTITY * n
            + spools
            + cfg.max_unauthenticated_streams
            + cfg.max_unary_calls
            + FD_MARGIN
        )

    def check_resources(self) -> None:
        """Raise the soft file-descriptor limit to what the roster needs, or refuse to start:
        running out mid-round would look, to the sites, like a misbehaving aggregator."""
        need = self.descriptors_needed()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft >= need:
            return
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft < need:
            raise ConfigError(
                f"this roster of {len(self.config.roster)} sites needs about {need} open file "
                f"descriptors (sockets and upload spools), the limit is {soft} (hard {hard}): "
                "raise it "
                f"(ulimit -n {need}, or LimitNOFILE={need} in a systemd unit) or lower "
                "[service] max_unauthenticated_streams"
            )
        log_event(self.log, "fd_limit_raised", soft=soft, needed=need)

    def start(self) -> int:
        cfg = self.config
        self.check_resources()
        # One worker per site's stream, the outsiders' capped share, the unary calls, and slack:
        # silent unauthenticated streams can never take the sites' workers.
        workers = (
            MAX_STREAMS_PER_IDENTITY * len(cfg.roster)
            + cfg.max_unauthenticated_streams
            + cfg.max_unary_calls
            + 16
        )
        options = [
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            # A silently dead connection is found in ~15 s (ping every 10 s, 5 s to answer),
            # and the sites' own pings every 10 s are allowed (not answered with GOAWAY).
            ("grpc.keepalive_time_ms", KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            # gRPC >= 1.6x times a ping out by this (default 60 s), not by keepalive_timeout_ms.
            ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MS),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.so_reuseport", 0),
            # No BDP probing: it grows every stream's HTTP/2 window to several MiB, which gRPC
            # then buffers per upload whether or not the servicer reads (see docs/service.md §8).
            # Streams keep the 64 KiB default window, enlarged to one message for a pending read.
            ("grpc.http2.bdp_probe", 0),
        ]
        limit_malloc_arenas()
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="secagg-rpc"),
            options=options,
            maximum_concurrent_rpcs=workers,
        )
        add_servicer_to_server(AggregatorServicer(self), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        if cfg.tls_enabled:
            assert cfg.tls_certificate is not None and cfg.tls_private_key is not None
            creds = server_credentials(cfg.tls_certificate, cfg.tls_private_key, cfg.tls_client_ca)
            port = server.add_secure_port(cfg.listen, creds)
        else:
            port = server.add_insecure_port(cfg.listen)
        if port == 0:
            raise OSError(f"cannot listen on {cfg.listen}")
        server.start()
        self.server, self.port = server, int(port)
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        host = cfg.listen.rpartition(":")[0] or cfg.listen
        log_event(
            self.log,
            "listening",
            address=f"{host}:{port}",
            port=port,
            tls=cfg.tls_enabled,
            mtls=cfg.tls_client_ca is not None,
            roster=len(cfg.roster),
            threshold=cfg.threshold,
            degree=cfg.degree,
            vector_length=cfg.vector_length,
            rounds=cfg.rounds,
        )
        return self.port

    def budget_refusal(self) -> str | None:
        """Why the next round may not start (the site-level budget), or None."""
        budget = self.config.epsilon_budget
        dp = self.config.distributed_dp
        if budget is None or dp is None:
            return None
        eps = self.books.prospective_site_epsilon(dp.min_clients)
        if eps is None or eps <= budget:
            return None
        return (
            f"the site-level privacy budget is spent: one more round could take the cumulative "
            f"epsilon to {eps:.4g} > epsilon_budget {budget:g} (delta {dp.delta:g}); no round "
            "is started"
        )

    def _next_round(self, after: int = 0) -> RoundCoordinator | None:
        """The next round, or None (and why, logged) if the privacy budget forbids it."""
        refusal = self.budget_refusal()
        if refusal is not None:
            self._budget_refusal = refusal
            log_event(self.log, "privacy_budget_exhausted", logging.WARNING, reason=refusal)
            return None
        return self._new_round(after=after)

    def run_rounds(self) -> None:
        """Run the configured number of rounds, one after the other."""
        cfg = self.config
        done = 0
        coordinator = self._next_round() if cfg.rounds > 0 else None
        while coordinator is not None:
            with self._cond:
                self._current = coordinator
                self._cond.notify_all()
            started = coordinator.run()
            done += int(started)
            nxt = None
            if self._shutdown_at is None and (
                (started and done < cfg.rounds) or coordinator.start_failed
            ):
                # Open before any client hears this round's outcome; a burned id is skipped.
                nxt = self._next_round(after=coordinator.round_id)
            with self._cond:
                self._current = nxt
                self._no_more_rounds = nxt is None
                self._cond.notify_all()
            coordinator.release()  # the sites hear the outcome
            outcome = coordinator.outcome
            if (
                self._shutdown_at is not None
                and outcome is not None
                and outcome.status == pb.ROUND_STATUS_COMPLETED
            ):
                roster = coordinator.params.config.roster
                survivors = {roster[p].to_bytes() for p in outcome.survivors}
                self._drain_downloads(coordinator.round_id, survivors)
            coordinator = nxt
        with self._cond:
            self._no_more_rounds = True
            self._cond.notify_all()
        log_event(self.log, "rounds_done", rounds=done)

    def _new_round(self, after: int = 0) -> RoundCoordinator:
        cfg = self.config
        params = RoundParameters.create(
            round_id=max(self.store.next_round_id(), after + 1),
            roster=cfg.roster,
            threshold=cfg.threshold,
            vector_length=cfg.vector_length,
            encoding=cfg.encoding,
            deadlines=cfg.deadlines,
            degree=cfg.degree,
            context=cfg.context,
            distributed_dp=cfg.distributed_dp,
        )
        return RoundCoordinator(
            params,
            store=self.store,
            spool_dir=self.spool_dir,
            max_chunk_bytes=cfg.max_chunk_bytes,
            shutdown_deadline=self.shutdown_deadline,
            logger=self.log,
            books=self.books,
            site_name=cfg.site_name,
            transcript_dir=(
                transcript_dir(cfg.data_dir, params.config.round_id)
                if cfg.retain_transcripts
                else None
            ),
        )

    def stop(self, grace: float = 2.0) -> None:
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.server is not None:
            self.server.stop(grace).wait()
        self.books.close()
        self.store.close()
        log_event(self.log, "stopped")

    def serve(self) -> None:
        """Start, run the configured rounds, then serve until a shutdown signal."""
        self.start()
        try:
            self.run_rounds()
            if not self.config.exit_after_rounds:
                while not self._stopped.wait(0.5):
                    pass
        finally:
            self.stop()
