"""A silently dead connection (a frozen network path, no FIN, no RST) is found by keepalive in
seconds on both sides, well before the stage deadline, and the round goes on without that site."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

import pytest

from secagg.client import AggregatorClient, load_identity
from tests.service.conftest import ClientProcess, ServerProcess, write_config, write_keys

pytestmark = [pytest.mark.service, pytest.mark.timeout(150)]

N = 4
LENGTH = 1000
STAGE_DEADLINE = 60.0  # far above what keepalive needs: the test tells the two apart


class FreezableProxy:
    """A TCP proxy on 127.0.0.1 that can stop forwarding while keeping every socket open."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.frozen = threading.Event()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                downstream, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [downstream, upstream]
            threading.Thread(target=self._pump, args=(downstream, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        while not self._stop.is_set():
            if self.frozen.is_set():
                time.sleep(0.1)  # hold both sockets open and read nothing: a silent partition
                continue
            readable, _, _ = select.select([a, b], [], [], 0.1)
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                peer[sock].sendall(data)

    def close(self) -> None:
        self._stop.set()
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()


def test_a_frozen_connection_is_found_in_seconds_and_the_round_completes_without_it(
    tmp_path, servers, clients
):
    keys = write_keys(tmp_path, N)
    deadlines = {stage: STAGE_DEADLINE for stage in ("share_keys", "masked_input", "unmask")}
    deadlines |= {"advertise_keys": 10, "consistency_check": STAGE_DEADLINE}
    config = write_config(tmp_path, keys, vector_length=LENGTH, deadlines=deadlines)
    server = ServerProcess(config, tmp_path / "server.log")
    servers.append(server)
    proxy = FreezableProxy(server.port)
    try:
        honest = [ClientProcess(server.target, keys[p], p) for p in (1, 2, 3)]
        cut_off = ClientProcess(f"127.0.0.1:{proxy.port}", keys[4], 4, "--timeout", "120")
        clients += [*honest, cut_off]
        for _ in range(400):
            if any(e["event"] == "stage_opened" for e in server.events()):
                break
            time.sleep(0.05)
        proxy.frozen.set()
        frozen_at = time.monotonic()
        reports = [c.result(timeout=90) for c in honest]
        round_done = time.monotonic() - frozen_at
        assert all(r["status"] == "completed" for r in reports), reports
        # Site 4 may have uploaded before the freeze (then its input is in the sum, its
        # unmask shares are not needed): either way the others do not wait for its deadline.
        assert all({1, 2, 3} <= set(r["survivors"]) for r in reports), reports
        assert round_done < STAGE_DEADLINE / 2, f"found by keepalive: {round_done:.1f} s"
        cut_off_report = cut_off.result(timeout=90)
        noticed = time.monotonic() - frozen_at
        assert cut_off_report["status"] != "completed", cut_off_report
        assert noticed < STAGE_DEADLINE / 2, f"the site noticed by keepalive: {noticed:.1f} s"
        print(f"dead connection: round done {round_done:.1f} s, site noticed {noticed:.1f} s")
    finally:
        proxy.close()
    with AggregatorClient(server.target, load_identity(keys[1]), timeout=10) as client:
        record = client.get_round_record(1)
    assert record["status"] == "completed"
