"""One round of the gRPC aggregator over loopback: n client processes x m parameters.

    python -m benchmarks.bench_grpc [--clients 20] [--length 10000000]

Starts a real ``secagg serve`` process and n real client processes (the public client API) on
127.0.0.1, runs one full-graph SecAgg round and records:

* wall time of the round (first join -> outcome persisted) and of each stage, from the server log;
* server peak memory (VmHWM of the server process) against one vector (4m bytes) and n vectors;
* bytes per client: protobuf payload sent and received on the round's stream, and the download of
  the aggregate (gRPC/HTTP2 framing adds well under 1 %).

Writes ``benchmarks/results/grpc.md``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "grpc.md"


# --- client mode -------------------------------------------------------


class _Counter(grpc.StreamStreamClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Counts the protobuf bytes of every message sent and received."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0

    def _count_out(self, it: Iterator[Any]) -> Iterator[Any]:
        for m in it:
            self.sent += m.ByteSize()
            yield m

    def _count_in(self, call: Any) -> Any:
        counter = self

        class Wrapped:
            def __iter__(self) -> Any:
                return self

            def __next__(self) -> Any:
                m = next(call)
                counter.received += m.ByteSize()
                return m

            def __getattr__(self, name: str) -> Any:
                return getattr(call, name)

        return Wrapped()

    def intercept_stream_stream(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return self._count_in(continuation(details, self._count_out(request_iterator)))

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        self.sent += request.ByteSize()
        return self._count_in(continuation(details, request))


def client_main(target: str, key: str, seed: int) -> None:
    from secagg.client import AggregatorClient, load_identity
    from secagg.protocol import AdversaryClass, MemoryLedger, SitePolicy
    from secagg.transport._gen.secagg.v1 import aggregator_pb2_grpc as pb_grpc

    identity = load_identity(key)
    # The benchmark's thresholds are the grid's; its sites accept them by a relaxed policy.
    policy = SitePolicy.unpinned(adversary=AdversaryClass.CURIOUS_SERVER, corrupt_fraction=0)
    client = AggregatorClient(target, identity, policy=policy, ledger=MemoryLedger(), timeout=1800)
    counter = _Counter()
    # Benchmark-only instrumentation: count bytes on the client's channel.
    client._channel = grpc.intercept_channel(client._channel, counter)
    client._stub = pb_grpc.AggregatorStub(client._channel)
    handle = client.join()
    update = np.random.default_rng(seed).normal(0, 0.1, handle.info.vector_length)
    t0 = time.perf_counter()
    result = handle.submit(update, fetch_result=False)
    t1 = time.perf_counter()
    stream_sent, stream_received = counter.sent, counter.received
    fetched = client.get_result(result.round_id, expected_digest=result.result_digest)
    t2 = time.perf_counter()
    assert fetched.total is not None
    client.close()
    print(
        json.dumps(
            {
                "party": handle.info.party,
                "round_s": t1 - t0,
                "fetch_s": t2 - t1,
                "stream_sent": stream_sent,
                "stream_received": stream_received,
                "result_received": counter.received - stream_received,
                "rss_peak_kb": _vmhwm(os.getpid()),
            }
        ),
        flush=True,
    )


# --- driver -----------------------------------------------------------------


def _status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/status (VmRSS, VmHWM, RssAnon, RssFile, ...)."""
    out = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0])
    return out


def _vmhwm(pid: int) -> int:
    return _status(pid).get("VmHWM", 0)


def _rss(pid: int) -> int:
    return _status(pid).get("VmRSS", 0)


class _Sampler(threading.Thread):
    """Samples the server's RssAnon / RssFile every 20 ms (VmHWM alone does not split them)."""

    def __init__(self, pid: int, trace: pathlib.Path | None = None) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.trace = trace
        self.stop = threading.Event()
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self.at_peak = {"RssAnon": 0, "RssFile": 0}

    def run(self) -> None:
        t0 = time.perf_counter()
        rows = []
        while not self.stop.wait(0.02):
            try:
                st = _status(self.pid)
            except OSError:
                return
            for k in self.peak:
                self.peak[k] = max(self.peak[k], st.get(k, 0))
            if st.get("VmRSS", 0) >= self.peak["VmRSS"]:
                self.at_peak = {k: st.get(k, 0) for k in ("RssAnon", "RssFile")}
            rows.append(
                f"{time.perf_counter() - t0:.2f} {st.get('RssAnon', 0)} {st.get('RssFile', 0)}"
            )
        if self.trace is not None:
            self.trace.write_text("t_s rss_anon_kb rss_file_kb\n" + "\n".join(rows) + "\n")


def _events(log: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]


def run(
    n: int,
    m: int,
    server_env: dict[str, str] | None = None,
    trace: pathlib.Path | None = None,
) -> dict[str, Any]:
    from secagg.client import load_identity, save_identity
    from secagg.crypto import IdentityKey

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="secagg-bench-grpc-"))
    keys = {}
    roster = []
    for p in range(1, n + 1):
        keys[p] = tmp / f"site{p}.key"
        save_identity(IdentityKey.generate(), keys[p])
        pub = load_identity(keys[p]).public_key.to_bytes().hex()
        roster.append(f'[[roster]]\nparty = {p}\npublic_key = "{pub}"')
    save_identity(IdentityKey.generate(), tmp / "aggregator.key")
    config = tmp / "aggregator.toml"
    config.write_text(
        "\n".join(
            [
                'listen = "127.0.0.1:0"',
                f'data_dir = "{tmp / "data"}"',
                f'aggregator_key = "{tmp / "aggregator.key"}"',
                "rounds = 1",
                f"vector_length = {m}",
                "[encoding]\nclip = 1.0",
                "[service]\nhandshake_timeout = 120",
                "[deadlines]\nadvertise_keys = 300\nshare_keys = 300\nmasked_input = 600",
                "consistency_check = 300\nunmask = 300",
                *roster,
            ]
        )
        + "\n"
    )
    log = tmp / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "secagg", "serve", "--config", str(config)],
            stdout=out,
            stderr=out,
            cwd=ROOT,
            env={**os.environ, **(server_env or {})},
        )
    clients: list[subprocess.Popen[bytes]] = []
    try:
        port = None
        while port is None:
            for e in _events(log):
                if e["event"] == "listening":
                    port = e["port"]
            if server.poll() is not None:
                raise RuntimeError(log.read_text())
            time.sleep(0.1)
        idle = _status(server.pid)
        sampler = _Sampler(server.pid, trace)
        sampler.start()
        start = time.perf_counter()
        for p in range(1, n + 1):
            clients.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(pathlib.Path(__file__).resolve()),
                        "--client",
                        f"127.0.0.1:{port}",
                        str(keys[p]),
                        str(p),
                    ],
                    stdout=subprocess.PIPE,
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
            )
        reports = []
        for c in clients:
            stdout, _ = c.communicate(timeout=3600)
            if c.returncode != 0:
                raise RuntimeError(f"a client failed ({c.returncode})")
            reports.append(json.loads(stdout.decode().strip().splitlines()[-1]))
        total_s = time.perf_counter() - start
        server_peak_kb = _vmhwm(server.pid)
        sampler.stop.set()
        sampler.join()
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    events = _events(log)
    shutil.rmtree(tmp / "data", ignore_errors=True)
    at = {
        e["event"]: datetime.datetime.fromisoformat(e["ts"])
        for e in events
        if e["event"] in ("round_started", "round_completed")
    }
    stages = {
        e["stage"]: (e["open_s"], e["close_s"]) for e in events if e["event"] == "stage_closed"
    }
    return {
        "n": n,
        "m": m,
        "round_s": (at["round_completed"] - at["round_started"]).total_seconds(),
        "all_s": total_s,
        "stages": stages,
        "server_peak_mb": server_peak_kb / 1024,
        "server_idle_mb": idle["VmRSS"] / 1024,
        "server_idle_anon_mb": idle["RssAnon"] / 1024,
        "server_idle_file_mb": idle["RssFile"] / 1024,
        "server_peak_anon_mb": sampler.peak["RssAnon"] / 1024,
        "server_peak_file_mb": sampler.peak["RssFile"] / 1024,
        "vector_mb": 4 * m / 2**20,
        "clients": reports,
    }


def markdown(r: dict[str, Any]) -> str:
    n, m = r["n"], r["m"]
    reps = r["clients"]
    med = lambda k: float(np.median([x[k] for x in reps]))  # noqa: E731
    mb = 2**20
    lines = [
        "## gRPC aggregator: one round over loopback",
        "",
        f"- CPU: {_cpu()}, {len(os.sched_getaffinity(0))} usable cores shared by the server and "
        f"all {n} client processes; Python {platform.python_version()}, grpcio {grpc.__version__}",
        f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "- Command: `python -m benchmarks.bench_grpc` (real `secagg serve` process and "
        f"{n} client processes on 127.0.0.1, full-graph SecAgg, t = n/2 + 1, no TLS, "
        "uint32 words on the wire, 1 MiB chunks)",
        "",
        "| clients | parameters | round wall time (first join -> result persisted) | "
        "client processes start -> all done | server peak RSS (VmHWM) | "
        "peak RssAnon / RssFile | one vector (4m) | n vectors (4nm) | "
        "(peak RssAnon - idle) / vector |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {n} | {m:,} | {r['round_s']:.1f} s | {r['all_s']:.1f} s | "
        f"{r['server_peak_mb']:.0f} MB (idle {r['server_idle_mb']:.0f} MB) | "
        f"{r['server_peak_anon_mb']:.0f} / {r['server_peak_file_mb']:.0f} MB "
        f"(idle {r['server_idle_anon_mb']:.0f} / {r['server_idle_file_mb']:.0f} MB) | "
        f"{r['vector_mb']:.0f} MB | {n * r['vector_mb']:,.0f} MB | "
        f"{(r['server_peak_anon_mb'] - r['server_idle_anon_mb']) / r['vector_mb']:.1f}x |",
        "",
        "Stages (server side: time the stage was open / time to close it):",
        "",
        "| stage | open | close |",
        "|---|---|---|",
        *(f"| {s} | {o:.2f} s | {c:.2f} s |" for s, (o, c) in r["stages"].items()),
        "",
        "Per client (median over the clients; protobuf payload bytes):",
        "",
        "| sent on the round stream | received on the round stream | aggregate download | "
        "sent / (4m) | client round time | client peak RSS |",
        "|---|---|---|---|---|---|",
        f"| {med('stream_sent') / mb:.2f} MiB | {med('stream_received') / mb:.3f} MiB | "
        f"{med('result_received') / mb:.2f} MiB | {med('stream_sent') / (4 * m):.4f} | "
        f"{med('round_s'):.1f} s | {med('rss_peak_kb') / 1024:.0f} MB |",
        "",
        "The server spools each upload to disk and adds it into one accumulator once complete "
        "(never n vectors at once); the n-vectors column is what holding every input would take. "
        "RssAnon and RssFile are sampled every 20 ms (their peaks need not coincide). The peak "
        "does not grow with n: uploads and result downloads pass through a few slots (a stream "
        "waits for one before reading its next chunk, so other clients are held back by HTTP/2 "
        "flow control), BDP probing is off (it let each stream buffer MiBs) and glibc malloc "
        "is capped at 2 arenas. Fixed overhead, whatever n and m: the idle process (~30 MB anon "
        "+ ~33 MB file) plus numba/llvmlite loaded on first use (~45-50 MB anon + ~77 MB file); "
        "the rest is the accumulator and the unmask stage, about 2 vectors. See "
        "docs/service.md section 8.",
        "",
    ]
    return "\n".join(lines)


def _cpu() -> str:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--length", type=int, default=10_000_000)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.clients, args.length)
    text = markdown(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
