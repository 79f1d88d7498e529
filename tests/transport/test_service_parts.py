"""Configuration, key files, persistence and logs of the aggregator (no network)."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import pathlib

import numpy as np
import pytest

from secagg.client import load_identity, save_identity
from secagg.crypto import IdentityKey
from secagg.errors import ConfigError
from secagg.service.config import load_config
from secagg.service.logs import configure_logging, log_event
from secagg.store import RoundOutcomeRecord, RoundStore


def _config(tmp_path: pathlib.Path, body: str, n: int = 4) -> pathlib.Path:
    if not (tmp_path / "agg.key").exists():
        save_identity(IdentityKey.generate(), tmp_path / "agg.key")
    lines = ['aggregator_key = "agg.key"', "vector_length = 10", body]
    for p in range(1, n + 1):
        raw = IdentityKey.generate().public_key.to_bytes()
        text = raw.hex() if p % 2 else base64.b64encode(raw).decode()
        lines.append(f'[[roster]]\nparty = {p}\npublic_key = "{text}"')
    path = tmp_path / "a.toml"
    path.write_text("\n".join(lines))
    return path


def test_plaintext_is_refused_off_loopback_unless_forced(tmp_path):
    path = _config(tmp_path, 'listen = "0.0.0.0:50051"')
    with pytest.raises(ConfigError, match="without TLS"):
        load_config(path)
    assert load_config(path, insecure_allow_plaintext=True).listen == "0.0.0.0:50051"
    assert load_config(path, listen="127.0.0.1:0").listen == "127.0.0.1:0"
    assert load_config(path, listen="[::1]:0").rounds == 1


def test_threshold_explicit_default_or_from_dropout_and_corruption(tmp_path):
    assert load_config(_config(tmp_path, "[protocol]\nthreshold = 3\ndegree = 2")).degree == 2
    assert load_config(_config(tmp_path, "")).threshold == 3  # n/2 + 1
    cfg = load_config(
        _config(tmp_path, "[protocol]\ndropout_rate = 0.1\ncorrupt_fraction = 0.1", n=40)
    )
    assert 2 <= cfg.threshold <= 40
    with pytest.raises(ConfigError, match="either"):
        load_config(_config(tmp_path, "[protocol]\nthreshold = 3\ndropout_rate = 0.1"))
    with pytest.raises(ConfigError, match="deadlines"):
        load_config(_config(tmp_path, "[deadlines]\nunmask = -1"))
    with pytest.raises(ConfigError, match="public key"):
        p = tmp_path / "bad.toml"
        p.write_text(
            'vector_length = 3\n[[roster]]\nparty = 1\npublic_key = "zz"\n'
            '[[roster]]\nparty = 2\npublic_key = "zz"\n'
        )
        load_config(p)


def test_key_files_are_private_and_round_trip(tmp_path):
    key = IdentityKey.generate()
    path = tmp_path / "site.key"
    save_identity(key, path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_identity(path).public_key == key.public_key
    with pytest.raises(FileExistsError):
        save_identity(key, path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_identity(path)


def test_store_commits_outcome_records_and_result_together_and_marks_interrupted(tmp_path):
    store = RoundStore(tmp_path)
    assert store.next_round_id() == 1
    store.start_round(1, b"d" * 32, {"vector_length": 3, "roster": {}})
    total = np.array([1, 2, 3], dtype=np.uint32)
    result = store.write_result(1, total)
    store.finish_round(
        RoundOutcomeRecord(1, "completed", {"unmask": [1, 2]}, {"unmask": [3]}, survivors=[1, 2]),
        result=result,
        records=[("round_summary", {"ok": True})],
    )
    store.append_record(1, "privacy_report", {"epsilon": 1.5})
    with pytest.raises(ValueError, match="not running"):
        store.finish_round(RoundOutcomeRecord(1, "aborted", {}, {}), records=[])
    with pytest.raises(KeyError):
        store.append_record(9, "x", {})
    store.start_round(2, b"e" * 32, {"vector_length": 3, "roster": {}})
    store.close()

    reopened = RoundStore(tmp_path)
    assert reopened.mark_interrupted("crashed") == [2]
    assert reopened.next_round_id() == 3
    done = reopened.get_round(1)
    assert done is not None and done.status == "completed" and done.survivors == (1, 2)
    assert done.participation == {"unmask": ((1, 2), (3,))}
    np.testing.assert_array_equal(reopened.open_result(done), total)
    assert [r.kind for r in reopened.records(1)] == ["round_summary", "privacy_report"]
    assert reopened.records(1, "privacy_report")[0].record == {"epsilon": 1.5}
    aborted = reopened.get_round(2)
    assert aborted is not None and aborted.status == "aborted" and aborted.abort_reason == "crashed"
    # A tampered result file is detected.
    (tmp_path / "results" / done.result_file).write_bytes(np.array([9, 9, 9], "<u4").tobytes())
    with pytest.raises(OSError, match="digest"):
        reopened.open_result(done)


def test_logs_are_json_lines_with_only_the_given_fields():
    stream = io.StringIO()
    configure_logging("info", stream)
    log_event(logging.getLogger("secagg.service"), "stage_closed", round=3, stage="unmask")
    line = json.loads(stream.getvalue())
    assert line["event"] == "stage_closed" and line["round"] == 3 and line["stage"] == "unmask"
    assert set(line) == {"ts", "level", "logger", "event", "round", "stage"}
