"""Real aggregator and client processes on 127.0.0.1, always stopped in teardown."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from secagg.client import save_identity
from secagg.crypto import IdentityKey
from secagg.encoding import FixedPointEncoding

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLIENT = ROOT / "tests" / "service" / "client_proc.py"
PY = sys.executable

# Most service tests are about the service's mechanics at small thresholds, so their sites accept
# them by a relaxed policy, asked for by name; the policy tests use STRICT_POLICY.
RELAXED_POLICY = 'adversary = "curious_server"\ncorrupt_fraction = 0'
STRICT_POLICY = ""

FAST_DEADLINES = {
    "advertise_keys": 8,
    "share_keys": 3,
    "masked_input": 3,
    "consistency_check": 3,
    "unmask": 3,
}


def write_keys(directory: pathlib.Path, n: int) -> dict[int, pathlib.Path]:
    paths = {}
    for party in range(1, n + 1):
        path = directory / f"site{party}.key"
        save_identity(IdentityKey.generate(), path)
        paths[party] = path
    return paths


def write_config(
    directory: pathlib.Path,
    keys: dict[int, pathlib.Path],
    *,
    vector_length: int = 5000,
    threshold: int = 3,
    rounds: int = 1,
    deadlines: dict[str, float] | None = None,
    extra: str = "",
    roster: Sequence[int] | None = None,
    sections: str = "",
    names: dict[int, str] | None = None,
    site_policy: str = RELAXED_POLICY,
    shutdown_grace: float = 1.0,
) -> pathlib.Path:
    """The aggregator's config, and beside each key ``siteN.toml``: that site's own policy,
    pinned to this roster (``site_policy`` lines added to its [policy] section)."""
    from secagg.client import load_identity

    agg_key = directory / "aggregator.key"
    if not agg_key.exists():
        save_identity(IdentityKey.generate(), agg_key)
    lines = [
        'listen = "127.0.0.1:0"',
        f'data_dir = "{directory / "data"}"',
        f'aggregator_key = "{agg_key}"',
        f"rounds = {rounds}",
        f"vector_length = {vector_length}",
        extra,
        "[encoding]\nclip = 1.0\nbits = 32",
        f"[protocol]\nthreshold = {threshold}",
        f"[service]\nshutdown_grace = {shutdown_grace}\nhandshake_timeout = 20\njoin_wait = 5",
        "[deadlines]",
    ]
    for stage, seconds in (deadlines or FAST_DEADLINES).items():
        lines.append(f"{stage} = {seconds}")
    if sections:
        lines.append(sections)
    for party in roster or sorted(keys):
        pub = load_identity(keys[party]).public_key.to_bytes().hex()
        lines.append(f'[[roster]]\nparty = {party}\npublic_key = "{pub}"')
        if names and party in names:
            lines.append(f'name = "{names[party]}"')
    path = directory / "aggregator.toml"
    path.write_text("\n".join(lines) + "\n")
    for key in keys.values():
        site = key.with_suffix(".toml")
        site.write_text(
            f'ledger = "{key.stem}-ledger.jsonl"\n[policy]\nroster_file = "{path.name}"\n'
            f"{site_policy}\n"
        )
    return path


def site_client(target: str, key: pathlib.Path, **kwargs: Any) -> Any:
    """An AggregatorClient of the site whose key is ``key``, with its own policy and ledger."""
    from secagg.client import AggregatorClient, load_identity
    from secagg.site import load_site_config

    identity = load_identity(key)
    site = load_site_config(key.with_suffix(".toml"))
    return AggregatorClient(
        target, identity, policy=site.policy, ledger=site.open_ledger(identity), **kwargs
    )


class ServerProcess:
    def __init__(
        self,
        config: pathlib.Path,
        log: pathlib.Path,
        *args: str,
        env: dict[str, str] | None = None,
    ) -> None:
        """``env`` adds variables to the server's environment (e.g. ``SECAGG_STORAGE_FAULTS``)."""
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [PY, "-m", "secagg", "serve", "--config", str(config), *args],
            stdout=self._log,
            stderr=self._log,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.port = self._wait_port()
        self.target = f"127.0.0.1:{self.port}"

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def _wait_port(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if event.get("event") == "listening":
                    return int(event["port"])
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()}")
            time.sleep(0.05)
        raise RuntimeError("server did not report its port")

    def terminate(self, timeout: float = 20.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.kill()
        server._log.close()


class ClientProcess:
    def __init__(self, target: str, key: pathlib.Path, seed: int, *args: str) -> None:
        self.seed = seed
        self.proc = subprocess.Popen(
            [PY, str(CLIENT), "--target", target, "--key", str(key), "--seed", str(seed), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    def result(self, timeout: float = 60.0) -> dict[str, Any] | None:
        """The client's JSON report, or None if it died (SIGKILL)."""
        out, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode == -signal.SIGKILL:
            return None
        assert self.proc.returncode == 0, err.decode()
        return json.loads(out.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def clients() -> Iterator[list[ClientProcess]]:
    started: list[ClientProcess] = []
    yield started
    for client in started:
        client.kill()


def expected_total(seeds: Sequence[int], n: int, length: int) -> np.ndarray:
    """The exact modular sum of the test clients' encoded inputs (same seeds as client_proc)."""
    sys.path.insert(0, str(CLIENT.parent))
    from client_proc import make_input  # type: ignore[import-not-found]

    from secagg.crypto import uniform_floats

    enc = FixedPointEncoding.for_clients(clip=1.0, max_clients=n, bits=32)
    total = np.zeros(length, dtype=np.uint32)
    for seed in seeds:
        values, rounding_seed = make_input(seed, length)
        total += enc.encode(values, uniform_floats(rounding_seed, length))
    return total
