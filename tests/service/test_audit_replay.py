"""``secagg audit replay``: the released aggregate, recomputed from the retained transcript."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from secagg.wire import _delimited, _frames, _parse_client
from tests.service.conftest import (
    PY,
    ROOT,
    STRICT_POLICY,
    ClientProcess,
    ServerProcess,
    write_config,
    write_keys,
)

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

N = 6
LENGTH = 3000


def _replay(data, round_id, *extra):
    return subprocess.run(
        [PY, "-m", "secagg", "audit", "replay", str(data), str(round_id), *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def _frames_of(path):
    return [bytes(f) for f in _frames(path.read_bytes(), 1 << 40)]


def _write_frames(path, frames):
    path.write_bytes(b"".join(_delimited(_parse_client(memoryview(f))) for f in frames))


def test_replay_confirms_an_honest_round_and_catches_any_change(tmp_path, servers, clients):
    keys = write_keys(tmp_path, N)
    config = write_config(
        tmp_path, keys, vector_length=LENGTH, threshold=5, site_policy=STRICT_POLICY
    )
    server = ServerProcess(config, tmp_path / "server.log")
    servers.append(server)
    clients += [
        ClientProcess(server.target, keys[p], p, *(("--die-at", "masked_input") if p == 6 else ()))
        for p in keys
    ]
    reports = [c.result(60) for c in clients]
    assert [r["status"] for r in reports if r] == ["completed"] * 5
    server.stop()
    data = tmp_path / "data"
    round_id = reports[0]["round_id"]
    key = (data / "aggregator.pub").read_text().strip()
    ok = _replay(data, round_id, "--aggregator-key", key)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "exactly the sum of the 5 signed masked inputs of parties [1, 2, 3, 4, 5]" in ok.stdout

    folder = data / "transcripts" / f"round-{round_id}"
    messages = folder / "messages.bin"
    original = messages.read_bytes()
    frames = _frames_of(messages)
    kinds = [_parse_client(memoryview(f)).WhichOneof("frame") for f in frames]
    masked = [i for i, k in enumerate(kinds) if k == "masked_input_header"]

    # One changed word of one masked input.
    words = folder / "masked-3.u32"
    saved = words.read_bytes()
    v = np.frombuffer(saved, dtype="<u4").copy()
    v[17] ^= 1
    words.write_bytes(v.tobytes())
    bad = _replay(data, round_id)
    assert bad.returncode != 0 and "masked_input message of party 3 does not verify" in bad.stderr
    words.write_bytes(saved)

    # One input removed: the survivors' signatures no longer match, or t is not reached.
    _write_frames(messages, [f for i, f in enumerate(frames) if i != masked[0]])
    bad = _replay(data, round_id)
    assert bad.returncode != 0, bad.stdout
    assert "cannot close stage" in bad.stderr or "does not verify" in bad.stderr, bad.stderr

    # One input added (a second copy of a signed one).
    _write_frames(messages, frames[: masked[0] + 1] + frames[masked[0] :])
    bad = _replay(data, round_id)
    assert bad.returncode != 0 and "already sent" in bad.stderr, bad.stderr

    messages.write_bytes(original)
    assert _replay(data, round_id).returncode == 0
