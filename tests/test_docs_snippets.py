"""Every shell and Python snippet of README.md and docs/*.md is run, or is listed here with the
reason it is not (and where its behaviour is tested instead).

How a snippet runs is decided by :data:`PLAN`, keyed by the file and the snippet's first line:

* ``exec``: Python, executed as written (after a documented prelude for its placeholders);
* ``ci``: run verbatim by ``.ci/run`` (the README's set-up-and-run and test commands);
* ``tour:*``: the shell lines run as written in a temporary folder against a real
  ``secagg serve`` on 127.0.0.1, with the substitutions of :data:`SUBSTITUTIONS`;
* ``toml``: parsed (and, where it is a whole aggregator configuration, loaded by a tour);
* ``not-run``: with the reason.

A snippet added to the docs without an entry here fails :func:`test_every_snippet_has_a_plan`.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGS = ("bash", "console", "python", "toml")

# Placeholders in snippets and what the tests put in their place (documented substitutions).
SUBSTITUTIONS = {
    '"5f0c...e1"': "the public key printed by `secagg keys generate` (one per roster entry)",
    "127.0.0.1:50051": "a free port on 127.0.0.1 (tests run in parallel with other services)",
    "rounds = 10": "rounds = 1 (one round proves the walk-through)",
    "more sites": "the README shows one site's command; the test runs it for site2 and site3 "
    "too (3 sites: the smallest roster with a safe threshold against a malicious aggregator)",
}

PRELUDES = {
    "ckks": "import numpy as np\nm = 1000\nupdate_i = np.linspace(-1, 1, m)\nw_i = 0.5\nt = 1\n",
    "readme-ckks": "import numpy as np\nupdate = np.linspace(-1, 1, 1000)\n",
}

NOT_RUN = "not-run"
PLAN: dict[tuple[str, str], str] = {
    ("README.md", "python3 -m venv .venv"): "ci",
    ("README.md", "python -m pytest"): "ci",
    ("README.md", "secagg keys generate --out aggregator.key"): "tour:readme",
    ("README.md", 'listen = "127.0.0.1:50051"'): "toml",  # loaded by tour:readme
    ("README.md", 'listen = "0.0.0.0:50051"'): "toml",
    ("README.md", 'ledger = "site1-ledger.jsonl"'): "toml",  # each site's TOML in tour:readme
    ("README.md", "python clients/example_client.py --target agg.example.org:50051"): NOT_RUN
    + ": needs a TLS deployment; TLS and mTLS are tested in tests/service/test_ops.py",
    ("README.md", "import numpy as np"): "exec",
    ("README.md", "# client_app.py"): NOT_RUN
    + ": two-file fragment inside a Flower app; the same two lines run in clients/flower_app "
    "(tests/integrations/test_flower.py)",
    ("README.md", "from secagg.crypto import IdentityKey"): "exec:readme-ckks",
    ("README.md", "secagg audit verify aggregator-data"): "tour:readme",
    ("README.md", "python -m benchmarks"): NOT_RUN
    + ": benchmarks take minutes to hours; tests/benchmarks and tests/fuzz run bounded versions",
    ("docs/ckks.md", "from secagg.crypto import IdentityKey"): NOT_RUN
    + ": one site's view with placeholders (key_i, chunks_i, ...); the same calls run in "
    "tests/he/test_verified.py, and the README's CKKS snippet runs as written",
    ("docs/demo.md", "secagg demo"): "tour:demo",
    ("docs/embedding.md", "import numpy as np"): "exec",
    ("docs/flower.md", 'pip install "secagg[flower]"'): NOT_RUN
    + ": installs from the registry; CI installs the same extra with the README command",
    ("docs/flower.md", "# client_app.py"): NOT_RUN + ": the same fragment as the README's",
    ("docs/flower.md", "from secagg.integrations.flower import SecAggWorkflow"): NOT_RUN
    + ": fragment with the app's own names; tested in tests/integrations/test_flower.py",
    ("docs/service.md", "$ secagg keys generate --out site1.key --party 1"): "tour:service",
    ("docs/service.md", "$ secagg keys generate --out aggregator.key"): "tour:service",
    ("docs/service.md", 'listen = "0.0.0.0:50051"'): "toml",
    ("docs/service.md", "# site1.toml"): "toml",
    ("docs/service.md", "$ secagg serve --config aggregator.toml"): "tour:service",
    ("docs/service.md", "$ python clients/example_client.py --target agg.example.org:50051"): (
        NOT_RUN + ": TLS deployment; the plaintext command runs in tour:readme"
    ),
    ("docs/service.md", "from secagg.client import AggregatorClient"): NOT_RUN
    + ": needs TLS files and a federation; the calls are tested in tests/service/test_rounds.py",
    ("docs/service.md", "from secagg.accounting import SiteRecordLevelDP"): NOT_RUN
    + ": needs a [distributed_dp] federation; tested in tests/service/test_audit_privacy.py",
    ("docs/service.md", "$ secagg audit verify aggregator-data"): "tour:service",
    ("docs/service.md", "$ openssl req -x509"): NOT_RUN
    + ": needs openssl; the service's TLS is tested with generated certificates",
    ("docs/service.md", "$ python scripts/gen_proto.py"): "ci",
}


def snippets() -> list[tuple[str, int, str, str]]:
    """(file relative to the repo, line, language, body) of every fenced block."""
    out = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
            if m.group(1) in LANGS:
                line = text[: m.start()].count("\n") + 1
                out.append((str(path.relative_to(ROOT)), line, m.group(1), m.group(2)))
    return out


def _key(file: str, body: str) -> tuple[str, str] | None:
    first = body.strip().splitlines()[0]
    for (f, prefix), _ in PLAN.items():
        if f == file and first.startswith(prefix):
            return (f, prefix)
    return None


def plan(file: str, body: str) -> str:
    key = _key(file, body)
    assert key is not None, f"{file}: no plan for the snippet starting {body.splitlines()[0]!r}"
    return PLAN[key]


def test_every_snippet_has_a_plan() -> None:
    used = set()
    for file, line, _, body in snippets():
        key = _key(file, body)
        assert key is not None, f"{file}:{line}: add this snippet to PLAN in {__file__}"
        used.add(key)
    assert used == set(PLAN), f"stale PLAN entries: {sorted(set(PLAN) - used)}"


def test_ci_runs_the_readme_commands_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_block setup-and-run" in ci and "readme_block tests" in ci
    assert 'bash -euo pipefail -c "$SETUP"' in ci and 'bash -euo pipefail -c "$TESTS"' in ci
    assert "scripts/check_proto.sh" in ci
    readme = (ROOT / "README.md").read_text()
    setup = re.search(r"<!-- ci: setup-and-run -->\s*```bash\n(.*?)```", readme, re.S)
    assert setup and setup.group(1).strip().endswith("&& secagg demo")


@pytest.mark.parametrize(
    "file,body",
    [(f, b) for f, _, lang, b in snippets() if lang == "python" and plan(f, b).startswith("exec")],
    ids=lambda v: v if isinstance(v, str) and v.endswith(".md") else "",
)
def test_python_snippet_runs(
    file: str, body: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    how = plan(file, body)
    if "ckks" in how:
        pytest.importorskip("tenseal")
    prelude = PRELUDES.get(how.partition(":")[2], "")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "snippet"}
    exec(compile(prelude + body, f"{file} snippet", "exec"), namespace)
    if how == "exec:readme-ckks":  # the decrypted sum is the one weighted update
        update = np.asarray(namespace["update"])
        assert np.allclose(
            np.asarray(namespace["aggregate"])[: update.size], 0.5 * update, atol=1e-3
        )


def test_toml_snippets_parse() -> None:
    for file, line, lang, body in snippets():
        if lang == "toml":
            try:
                tomllib.loads(body)
            except tomllib.TOMLDecodeError as exc:
                raise AssertionError(f"{file}:{line}: {exc}") from None


# --- tours: shell lines run as written against a real service ----------------------------------


def _shell_lines(body: str) -> list[str]:
    """The commands of a bash block, or the ``$ `` lines of a console block (with ``\\``
    continuations joined and trailing comments dropped)."""
    lines, current = [], ""
    raw = body.splitlines()
    console = any(r.startswith("$ ") for r in raw)
    for r in raw:
        if console and not (r.startswith("$ ") or current):
            continue
        r = r[2:] if r.startswith("$ ") else r
        current += r.rstrip("\\").strip() + " "
        if not r.endswith("\\"):
            cmd = current.split(" #")[0].strip()
            if cmd:
                lines.append(cmd)
            current = ""
    return lines


def _block(file: str, prefix: str) -> str:
    for f, _, _, body in snippets():
        if f == file and body.strip().startswith(prefix):
            return body
    raise AssertionError(f"{file}: no snippet starting {prefix!r}")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _argv(cmd: str) -> list[str]:
    """The command as this interpreter runs it (``clients/...`` scripts live in the repo)."""
    argv = shlex.split(cmd)
    if argv[0] == "python":
        argv[0] = sys.executable
        if len(argv) > 1 and argv[1].startswith("clients/"):
            argv[1] = str(ROOT / argv[1])
    elif argv[0] == "secagg":
        argv = [sys.executable, "-m", "secagg", *argv[1:]]
    return argv


def _run(cmd: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    argv = _argv(cmd)
    result = subprocess.run(
        argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{cmd}\n{result.stdout}\n{result.stderr}"
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _public_key(key: str, cwd: Path) -> str:
    out = _run(f"secagg keys public {key}", cwd).stdout
    return re.search(r"public key \(hex\):\s+([0-9a-f]{64})", out).group(1)  # type: ignore[union-attr]


def _serve(cmd: str, cwd: Path) -> subprocess.Popen[str]:
    argv = _argv(cmd)
    log = open(cwd / "serve.log", "w")  # noqa: SIM115 - the process owns it until stopped
    proc = subprocess.Popen(argv, cwd=cwd, env=_env(), stdout=log, stderr=log, text=True)
    deadline = time.monotonic() + 60
    while '"event":"listening"' not in (cwd / "serve.log").read_text():
        assert proc.poll() is None, (cwd / "serve.log").read_text()
        assert time.monotonic() < deadline, "secagg serve did not start"
        time.sleep(0.1)
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.service
def test_readme_service_tour(tmp_path: Path) -> None:
    """The README's `secagg serve` walk-through, its minimal aggregator.toml, then its audits."""
    port = _free_port()
    commands = _shell_lines(_block("README.md", "secagg keys generate --out aggregator.key"))
    keys, serve, site, audit = commands[:2], commands[2], commands[3], commands[4]
    for cmd in keys:
        _run(cmd, tmp_path)
    for party in (2, 3):  # more sites
        _run(f"secagg keys generate --out site{party}.key --party {party}", tmp_path)
    toml = _block("README.md", 'listen = "127.0.0.1:50051"')
    toml = toml.replace("127.0.0.1:50051", f"127.0.0.1:{port}").replace("rounds = 10", "rounds = 1")
    toml = toml.replace('"5f0c...e1"', f'"{_public_key("site1.key", tmp_path)}"')
    for party in (2, 3):
        pub = _public_key(f"site{party}.key", tmp_path)
        toml += f'\n[[roster]]\nparty = {party}\npublic_key = "{pub}"\n'
    (tmp_path / "aggregator.toml").write_text(toml)
    site_toml = _block("README.md", 'ledger = "site1-ledger.jsonl"')
    for party in (1, 2, 3):  # each site's own policy, as the README shows for site 1
        (tmp_path / f"site{party}.toml").write_text(site_toml.replace("site1", f"site{party}"))
    server = _serve(serve, tmp_path)
    try:
        site = site.replace("127.0.0.1:50051", f"127.0.0.1:{port}")
        others = [
            subprocess.Popen(
                _argv(site.replace("site1.", f"site{p}.")),
                cwd=tmp_path,
                env=_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for p in (2, 3)
        ]
        out = _run(site, tmp_path).stdout
        assert "completed" in out
        assert [o.wait(120) for o in others] == [0, 0]
    finally:
        _stop(server)
    assert "OK: 1 records" in _run(audit, tmp_path).stdout
    for cmd in _shell_lines(_block("README.md", "secagg audit verify aggregator-data")):
        _run(cmd, tmp_path)
    assert (tmp_path / "records.jsonl").is_file()


@pytest.mark.service
def test_service_guide_tour(tmp_path: Path) -> None:
    """docs/service.md's commands: keys, a roster entry, serve (its configuration minus TLS, on
    loopback) and the audit of the data directory."""
    keys = _shell_lines(_block("docs/service.md", "$ secagg keys generate --out site1.key"))
    out = _run(keys[0], tmp_path).stdout
    assert "[[roster]]" in out and "mode 0600" in out
    for cmd in _shell_lines(
        _block("docs/service.md", "$ secagg keys generate --out aggregator.key")
    ):
        _run(cmd, tmp_path)
    _run("secagg keys generate --out site2.key --party 2", tmp_path)
    _run("secagg keys generate --out site3.key --party 3", tmp_path)
    toml = _block("docs/service.md", 'listen = "0.0.0.0:50051"')
    toml = re.sub(r"^\[tls\].*?(?=\n\[)", "", toml, flags=re.S | re.M)  # no certificates here
    toml = toml.replace('"0.0.0.0:50051"', '"127.0.0.1:0"').replace("rounds = 10", "rounds = 0")
    toml = re.sub(r"\[\[roster\]\].*", "", toml, flags=re.S)
    for party in (1, 2, 3):
        toml += (
            f'\n[[roster]]\nparty = {party}\nname = "hospital-{party}"\n'
            f'public_key = "{_public_key(f"site{party}.key", tmp_path)}"\n'
        )
    (tmp_path / "aggregator.toml").write_text(toml)
    (serve,) = _shell_lines(_block("docs/service.md", "$ secagg serve --config aggregator.toml"))
    _stop(_serve(serve, tmp_path))
    (audit,) = _shell_lines(_block("docs/service.md", "$ secagg audit verify aggregator-data"))
    # No round ran here: an empty chain proves nothing, and the audit says so (exit 1).
    empty = subprocess.run(_argv(audit), cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert empty.returncode == 1 and "holds no record" in empty.stderr, empty.stderr


@pytest.mark.slow
def test_demo_guide_commands(tmp_path: Path) -> None:
    """docs/demo.md's commands, as written, shortened to 2 rounds without baselines."""
    pytest.importorskip("opacus")
    for cmd in _shell_lines(_block("docs/demo.md", "secagg demo")):
        if cmd.startswith("secagg demo") and "--masking-only" not in cmd:
            cmd += " --rounds 2 --no-baselines --no-progress"
        _run(cmd, tmp_path)
    assert (tmp_path / "runs" / "mine" / "report.html").is_file()
