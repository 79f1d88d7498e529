"""Every user error of the command-line entry points is one line on stderr and a documented exit
code (docs/service.md "Exit codes"), never a traceback; ``--debug`` shows the traceback.

Each case runs the real program as a subprocess, as a user would.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from secagg.client import save_identity
from secagg.commands.errors import (
    EXIT_CODES,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_FILE,
    EXIT_NETWORK,
)
from secagg.crypto import IdentityKey

from .conftest import PY, ROOT, ServerProcess, write_config, write_keys

EXAMPLE_CLIENT = ROOT / "clients" / "example_client.py"


def run(
    argv: list[str], cwd: pathlib.Path, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SECAGG_DEBUG", None)
    env.pop(
        "GRPC_VERBOSITY", None
    )  # a user's plain environment (flwr, imported by other tests, sets it)
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def secagg(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return run([PY, "-m", "secagg", *args], cwd)


def client(
    *args: str, cwd: pathlib.Path, site: str = "site.toml"
) -> subprocess.CompletedProcess[str]:
    """The example client, with ``--site`` (written if missing: an unpinned, relaxed policy)."""
    if site == "site.toml" and not (cwd / site).exists():
        (cwd / site).write_text("[policy]\nunpinned = true\nmin_parties = 2\n")
    return run([PY, str(EXAMPLE_CLIENT), "--site", site, *args], cwd)


def one_line(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The process exited with ``code`` and said why in one line on stderr, no traceback."""
    # JSON log lines (secagg serve) and advisory notes aside, stderr holds exactly one line.
    lines = [
        ln
        for ln in result.stderr.splitlines()
        if ln.strip() and not ln.startswith("{") and " note: " not in ln
    ]
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert code in EXIT_CODES
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_key_file_errors(tmp_path: pathlib.Path) -> None:
    one_line(
        secagg("keys", "generate", "--out", "missing/site1.key", cwd=tmp_path),
        EXIT_FILE,
        "missing/site1.key",
        "mkdir -p missing",
    )
    assert secagg("keys", "generate", "--out", "site1.key", cwd=tmp_path).returncode == 0
    one_line(
        secagg("keys", "generate", "--out", "site1.key", cwd=tmp_path),
        EXIT_FILE,
        "refusing to overwrite",
    )
    one_line(
        client("--target", "127.0.0.1:1", "--key", "nope.key", cwd=tmp_path), EXIT_FILE, "nope.key"
    )
    (tmp_path / "site1.key").chmod(0o644)
    one_line(
        client("--target", "127.0.0.1:1", "--key", "site1.key", cwd=tmp_path),
        EXIT_CONFIG,
        "chmod 600 site1.key",
    )
    one_line(secagg("keys", "public", "nope.key", cwd=tmp_path), EXIT_FILE, "nope.key")


def test_debug_shows_the_traceback(tmp_path: pathlib.Path) -> None:
    result = secagg("keys", "generate", "--out", "missing/k.key", "--debug", cwd=tmp_path)
    assert result.returncode == EXIT_FILE and "Traceback" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("secagg: error: ")


def test_unreachable_aggregator(tmp_path: pathlib.Path) -> None:
    save_identity(IdentityKey.generate(), tmp_path / "site1.key")
    target = f"127.0.0.1:{free_port()}"
    line = one_line(
        client("--target", target, "--key", "site1.key", "--connect-timeout", "1", cwd=tmp_path),
        EXIT_NETWORK,
        target,
    )
    assert "secagg serve" in line  # says what to check


def test_serve_errors(tmp_path: pathlib.Path) -> None:
    keys = write_keys(tmp_path, 3)
    config = write_config(tmp_path, keys, extra="")
    text = config.read_text()
    # A port already in use.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        one_line(
            secagg("serve", "--config", str(config), "--listen", f"127.0.0.1:{port}", cwd=tmp_path),
            EXIT_NETWORK,
            f"cannot listen on 127.0.0.1:{port}",
            "--listen",
        )
    # A typo in a key is an error, with the likely key.
    config.write_text(text.replace("clip = 1.0", "clipp = 1.0"))
    one_line(
        secagg("serve", "--config", str(config), cwd=tmp_path),
        EXIT_CONFIG,
        "unknown key 'clipp' in [encoding]; did you mean 'clip'?",
    )
    config.write_text(text.replace("[service]", "[servce]"))
    one_line(secagg("serve", "--config", str(config), cwd=tmp_path), EXIT_CONFIG, "'service'")
    # A missing configuration file and a missing aggregator key.
    one_line(secagg("serve", "--config", "nope.toml", cwd=tmp_path), EXIT_FILE, "nope.toml")
    config.write_text(text)
    (tmp_path / "aggregator.key").unlink()
    one_line(
        secagg("serve", "--config", str(config), cwd=tmp_path),
        EXIT_CONFIG,
        "secagg keys generate --out",
    )


def test_small_roster_threshold_is_explained(tmp_path: pathlib.Path) -> None:
    from secagg.errors import ConfigError
    from secagg.service.config import load_config, threshold_advice

    keys = write_keys(tmp_path, 3)
    config = write_config(tmp_path, keys)
    text = config.read_text()
    config.write_text(text.replace("threshold = 3", "dropout_rate = 0.1\ncorrupt_fraction = 0.05"))
    cfg = load_config(config)
    assert cfg.threshold == 3  # no dropout tolerated: say so, and how to fix it
    advice = threshold_advice(3, cfg.threshold)
    assert advice is not None and "any dropout aborts the round" in advice
    assert "5 or more" in advice and "honest-but-curious" in advice
    keys2 = {k: v for k, v in keys.items() if k <= 2}
    config.write_text(
        write_config(tmp_path, keys2)
        .read_text()
        .replace("threshold = 3", "dropout_rate = 0.1\ncorrupt_fraction = 0.1")
    )
    with pytest.raises(ConfigError, match="no threshold of 2 sites satisfies"):
        load_config(config)
    # The same rule as the sites' default policy: 5 sites need t = 4, 10 sites t = 7.
    assert "set [protocol] threshold = 4" in (threshold_advice(5, 3) or "")
    assert "threshold = 7 tolerates 3" in (threshold_advice(10, 10) or "")
    assert threshold_advice(5, 4) is None


def test_client_errors_against_a_live_aggregator(tmp_path: pathlib.Path) -> None:
    keys = write_keys(tmp_path, 2)
    deadlines = {
        "advertise_keys": 2,
        "share_keys": 2,
        "masked_input": 2,
        "consistency_check": 2,
        "unmask": 2,
    }
    config = write_config(
        tmp_path, keys, vector_length=8, threshold=2, rounds=3, deadlines=deadlines
    )
    server = ServerProcess(config, tmp_path / "server.log")
    try:
        np.save(tmp_path / "short.npy", np.zeros(5))
        np.save(tmp_path / "nan.npy", np.full(8, np.nan))
        args = ("--target", server.target, "--key", str(keys[1]))
        site = str(keys[1].with_suffix(".toml"))
        one_line(
            client(*args, "--update", "short.npy", cwd=tmp_path, site=site),
            EXIT_CONFIG,
            "vector of 8 values",
        )
        one_line(client(*args, "--update", "nan.npy", cwd=tmp_path, site=site), EXIT_CONFIG, "NaN")
        # Alone in a round that needs 2: the round aborts and the client says so (exit 1).
        one_line(client(*args, cwd=tmp_path, site=site), EXIT_FAILED, "aborted")
        # A site whose own (strict) policy refuses the round: one line, exit 1, nothing sent.
        strict = tmp_path / "strict.toml"
        strict.write_text(f'[policy]\nroster_file = "{config.name}"\n')
        one_line(
            client(*args, cwd=tmp_path, site=str(strict)),
            EXIT_FAILED,
            "policy refused the round",
            "roster size",
        )
    finally:
        server.stop()


def test_site_configuration_errors(tmp_path: pathlib.Path) -> None:
    save_identity(IdentityKey.generate(), tmp_path / "site1.key")
    args = ("--target", "127.0.0.1:1", "--key", "site1.key")
    one_line(client(*args, cwd=tmp_path, site="nope.toml"), EXIT_CONFIG, "nope.toml")
    (tmp_path / "bad.toml").write_text("[policy]\ncorupt_fraction = 0.2\nunpinned = true\n")
    one_line(
        client(*args, cwd=tmp_path, site="bad.toml"),
        EXIT_CONFIG,
        "did you mean 'corrupt_fraction'?",
    )
    (tmp_path / "open.toml").write_text("[policy]\ncorrupt_fraction = 0.2\n")
    one_line(client(*args, cwd=tmp_path, site="open.toml"), EXIT_CONFIG, "must pin the roster")


def test_audit_and_report_errors(tmp_path: pathlib.Path) -> None:
    one_line(secagg("audit", "verify", "nope", cwd=tmp_path), EXIT_FILE, "nope")
    one_line(secagg("audit", "export", "nope.db", "--out", "x.jsonl", cwd=tmp_path), EXIT_FILE)
    one_line(secagg("report", "nope", cwd=tmp_path), EXIT_FILE, "nope")
    (tmp_path / "empty").mkdir()
    one_line(secagg("audit", "verify", "empty", cwd=tmp_path), EXIT_CONFIG, "no ledger")


def test_help_documents_the_exit_codes() -> None:
    out = run([PY, "-m", "secagg", "--help"], ROOT).stdout
    for code in EXIT_CODES:
        assert f"  {code:>3}  " in out
    assert "relative to that file" in out
    assert sys.executable
