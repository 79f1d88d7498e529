"""The demo over gRPC: a real ``secagg serve`` process and one process per hospital on 127.0.0.1.

:class:`GrpcRunner` implements :class:`~secagg.demo.runner.RoundRunner`:

* at construction it generates (or, on ``--resume``, reuses) the identity keys in
  ``RUN_DIR/grpc/`` and starts one long-lived :mod:`secagg.demo.hospital_proc` per hospital (each
  imports torch once, rebuilds its slice of the data and keeps its own Opacus ledger);
* at the first round it writes ``RUN_DIR/grpc/aggregator.toml`` (roster with the hospitals' names,
  threshold t, ``[distributed_dp]`` from the round's configuration) and starts
  ``secagg serve`` on ``127.0.0.1:0``; its data directory is ``RUN_DIR/aggregator`` (SQLite store,
  audit ledger ``audit.db``);
* each round it writes the global weights to ``RUN_DIR/grpc/global.npy`` and tells every hospital
  to take part; a hospital scheduled to drop stops answering at that stage and the aggregator's
  deadline makes it a dropout. The noisy sum comes back from the survivors, and participation,
  the privacy report and the signed audit record from the aggregator (``GetRoundRecord``);
* :meth:`close` stops every process (by PID) and exports the audit chain to
  ``RUN_DIR/audit.jsonl`` and the aggregator's public key to ``RUN_DIR/aggregator.pub``, so
  ``secagg audit verify RUN_DIR`` checks it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import IO, Any

import numpy as np

from secagg.accounting.report import SiteRecordLevelDP
from secagg.crypto import IdentityKey
from secagg.demo.runner import RoundOutcome, RoundTask
from secagg.dp.distributed import DistributedDPConfig
from secagg.errors import ConfigError, RoundAborted
from secagg.protocol import ACTIVE_STAGES, Stage

__all__ = ["DEFAULT_DEADLINES", "GrpcRunner"]

#: Per-stage deadlines (seconds). Only masked_input and unmask ever run out in the demo (a
#: scheduled dropout stops answering there), so they are short; the others are generous.
DEFAULT_DEADLINES: Mapping[str, float] = {
    "advertise_keys": 60.0,
    "share_keys": 15.0,
    "masked_input": 2.5,
    "consistency_check": 15.0,
    "unmask": 2.5,
}
_READY_TIMEOUT = 180.0
_ROUND_TIMEOUT = 300.0


class _Proc:
    """A child process speaking JSON lines on stdin/stdout; stderr goes to a log file."""

    def __init__(self, argv: Sequence[str], log: pathlib.Path, name: str) -> None:
        self.name = name
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, message: Mapping[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise RuntimeError(f"{self.name} did not answer within {timeout:g} s") from None
            if line is None:
                raise RuntimeError(
                    f"{self.name} exited (code {self.proc.poll()}); see {self.log_path}"
                )
            if line.startswith("{"):
                return dict(json.loads(line))

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send({"cmd": "exit"})
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class GrpcRunner:
    """Aggregator + hospitals as separate processes on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        names: Sequence[str],
        *,
        deadlines: Mapping[str, float] | None = None,
        python: str = sys.executable,
    ) -> None:
        # Absolute: the child processes and aggregator.toml must not depend on the working
        # directory (paths in a config file are relative to that file, docs/service.md).
        self.run_dir = pathlib.Path(run_dir).absolute()
        self.names = tuple(names)
        if len(set(self.names)) != len(self.names):
            raise ConfigError("hospital names must be unique")
        self.party = {name: k + 1 for k, name in enumerate(self.names)}
        self.deadlines = dict(DEFAULT_DEADLINES if deadlines is None else deadlines)
        self.python = python
        self.dir = self.run_dir / "grpc"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.run_dir / "aggregator"
        self.aggregator_key = self._key(self.dir / "aggregator.key")
        # The demo reads each round's record as an auditor (records are not public).
        self.auditor_key = self._key(self.dir / "auditor.key")
        self.keys = {name: self.dir / f"{name}.key" for name in self.names}
        for path in self.keys.values():
            self._key(path)
        self._write_site_configs()
        self.server: _Proc | None = None
        self.target = ""
        self._dp: DistributedDPConfig | None = None
        self.hospitals: dict[str, _Proc] = {}
        try:
            for k, name in enumerate(self.names):
                self.hospitals[name] = _Proc(
                    [
                        python,
                        "-m",
                        "secagg.demo.hospital_proc",
                        "--run-dir",
                        str(self.run_dir),
                        "--site-index",
                        str(k),
                        "--key",
                        str(self.keys[name]),
                    ],
                    self.dir / f"{name}.log",
                    name,
                )
            for name, proc in self.hospitals.items():
                ready = proc.receive(_READY_TIMEOUT)
                if ready.get("ready") != name:
                    raise RuntimeError(f"{name} announced itself as {ready}")
        except BaseException:
            self.close(export=False)
            raise

    def _write_site_configs(self) -> None:
        """Each hospital's own site TOML: the roster it pins and its signed ledger."""
        from secagg.client import load_identity

        roster = "".join(
            f"[[policy.roster]]\nparty = {self.party[n]}\n"
            f'public_key = "{load_identity(self.keys[n]).public_key.to_bytes().hex()}"\n'
            for n in self.names
        )
        for name in self.names:
            self.keys[name].with_suffix(".toml").write_text(
                f'ledger = "{name}-ledger.jsonl"\n[policy]\naggregator = "secagg demo"\n{roster}'
            )

    @staticmethod
    def _key(path: pathlib.Path) -> IdentityKey:
        from secagg.client import load_identity, save_identity

        if not path.exists():
            save_identity(IdentityKey.generate(), path)
        return load_identity(path)

    # --- the aggregator process ------------------------------------------------------------

    def _config_text(self, dp: DistributedDPConfig) -> str:
        from secagg.client import load_identity

        lines = [
            'listen = "127.0.0.1:0"',
            # Relative to aggregator.toml itself, so the run directory can be moved or archived.
            f"data_dir = {json.dumps(os.path.relpath(self.data_dir, self.dir))}",
            'aggregator_key = "aggregator.key"',
            "rounds = 1000000",
            f'auditors = ["{self.auditor_key.public_key.to_bytes().hex()}"]',
            f"vector_length = {dp.padded_dimension}",
            'context = "secagg demo"',
            f"[encoding]\nclip = 1.0\nbits = {dp.bits}",
            f"[protocol]\nthreshold = {dp.min_clients}",
            "[service]\nshutdown_grace = 2\njoin_wait = 120\nhandshake_timeout = 120",
            "[deadlines]",
            *(f"{stage} = {seconds!r}" for stage, seconds in self.deadlines.items()),
            "[distributed_dp]",
        ]
        fields = asdict(dp)
        if fields.pop("target_epsilon") is not None:
            raise ConfigError("the gRPC demo needs a fixed site-level noise multiplier")
        fields["rounds_planned"] = fields.pop("rounds")
        for key, value in sorted(fields.items()):
            lines.append(f"{key} = {json.dumps(value)}")
        for name in self.names:
            pub = load_identity(self.keys[name]).public_key.to_bytes().hex()
            lines.append(
                f'[[roster]]\nparty = {self.party[name]}\npublic_key = "{pub}"\n'
                f"name = {json.dumps(name)}"
            )
        return "\n".join(lines) + "\n"

    def _start_server(self, dp: DistributedDPConfig) -> None:
        config = self.dir / "aggregator.toml"
        config.write_text(self._config_text(dp))
        self.server = _Proc(
            [self.python, "-m", "secagg", "serve", "--config", str(config), "--log-level", "info"],
            self.dir / "aggregator.log",
            "aggregator",
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for line in self.server.log_path.read_text().splitlines():
                if line.startswith("{") and '"event":"listening"' in line:
                    self.target = f"127.0.0.1:{json.loads(line)['port']}"
                    self._dp = dp
                    return
            if self.server.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the aggregator did not start; see {self.server.log_path}")

    # --- rounds ----------------------------------------------------------------------------

    def run(self, task: RoundTask) -> RoundOutcome:
        unknown = set(task.roster) - set(self.names)
        if unknown:
            raise ConfigError(f"unknown hospitals in the roster: {sorted(unknown)}")
        if self.server is None:
            self._start_server(task.dp_config)
        elif task.dp_config != self._dp:
            raise ConfigError("the distributed-DP configuration changed during the run")
        weights = self.dir / "global.npy"
        tmp = self.dir / "global.npy.tmp"
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(task.global_weights, dtype=np.float64))
        os.replace(tmp, weights)
        drop_at = {name: stage.value for stage, names in task.faults.items() for name in names}
        for name in task.roster:
            self.hospitals[name].send(
                {
                    "cmd": "round",
                    "target": self.target,
                    "round_id": task.round_id,
                    "rotation_seed": task.rotation_seed,
                    "weights": str(weights),
                    "drop_at": drop_at.get(name),
                }
            )
        replies = {name: self.hospitals[name].receive(_ROUND_TIMEOUT) for name in task.roster}
        return self._outcome(task, replies)

    def _outcome(self, task: RoundTask, replies: Mapping[str, dict[str, Any]]) -> RoundOutcome:
        from secagg.client import AggregatorClient

        declined = {n: str(r["reason"]) for n, r in replies.items() if r["status"] == "declined"}
        done = [r for r in replies.values() if r["status"] == "completed"]
        server_round = int(next(iter(replies.values()))["server_round"])
        if not done:
            aborted = [r for r in replies.values() if r["status"] == "aborted"]
            if aborted:
                raise RoundAborted(aborted[0]["stage"], aborted[0]["reason"])
            raise RoundAborted(
                Stage.ADVERTISE_KEYS.value,
                f"no hospital completed round {server_round} (declined: {sorted(declined)})",
            )
        if len({r["digest"] for r in done}) != 1:
            raise RuntimeError("the hospitals received different aggregates")
        total = np.frombuffer(base64.b64decode(done[0]["total"]), dtype="<u4").astype(np.uint32)
        with AggregatorClient(self.target, self.auditor_key, timeout=60) as client:
            record = client.get_round_record(server_round)
        by_party = {p: n for n, p in self.party.items()}
        survivors = tuple(by_party[p] for p in sorted(record["survivors"]))
        dropouts = {
            stage: tuple(
                by_party[p]
                for p in record["stages"].get(stage.value, {}).get("dropouts", [])
                if by_party[p] in task.roster and by_party[p] not in declined
            )
            for stage in ACTIVE_STAGES
        }
        report = record["privacy_report"]
        statements: tuple[SiteRecordLevelDP, ...] = report.record_level if report else ()
        audit = json.loads(record["audit_record"]) if record["audit_record"] else {}
        return RoundOutcome(
            round_id=task.round_id,
            total=total,
            survivors=survivors,
            dropouts=dropouts,
            declined=declined,
            statements=statements,
            session_id=bytes.fromhex(audit.get("session_id", "")),
            privacy_report=report,
            site_states={n: r["ledger"] for n, r in replies.items()},
        )

    # --- shutdown --------------------------------------------------------------------------

    def close(self, *, export: bool = True) -> None:
        """Stop the hospitals and the aggregator (by PID); export the audit chain to RUN_DIR."""
        for proc in self.hospitals.values():
            proc.stop()
        if self.server is not None:
            server = self.server.proc
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait(10)
            self.server.stop()
        ledger = self.data_dir / "audit.db"
        if export and ledger.is_file():
            from secagg.audit import read_ledger, write_jsonl

            texts, _ = read_ledger(ledger)
            write_jsonl(self.run_dir / "audit.jsonl", texts)
            pub = self.aggregator_key.public_key.to_bytes().hex()
            (self.run_dir / "aggregator.pub").write_text(pub + "\n")

    def __enter__(self) -> GrpcRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
