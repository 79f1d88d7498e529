"""``secagg audit``: verify and export the signed, hash-chained round records."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from secagg.commands.errors import EXIT_FILE, CommandError

_SQLITE_MAGIC = b"SQLite format 3\x00"
_DIR_CANDIDATES = (
    "audit.db",
    "ledger.db",
    "aggregator.db",
    "secagg.db",
    "records.jsonl",
    "audit.jsonl",
)


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="verify or export the signed round records")
    cmds = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    verify = cmds.add_parser(
        "verify", help="check the whole record chain and every signature; print privacy spent"
    )
    verify.add_argument(
        "source", type=Path, help="run directory, ledger database, or records .jsonl file"
    )
    verify.add_argument(
        "--aggregator-key",
        metavar="HEX_OR_FILE",
        help="the aggregator's Ed25519 public key (64 hex digits, or a file holding them), "
        "pinned out of band; default: the key stored in the ledger (trust on first use)",
    )
    verify.add_argument(
        "--head",
        metavar="HEX",
        help="expected hash of the last record (printed by the previous audit): detects records "
        "cut off at the end of the chain",
    )
    verify.set_defaults(handler=run_verify)

    export = cmds.add_parser("export", help="write a ledger's records as JSON Lines")
    export.add_argument("database", type=Path, help="ledger database (SQLite)")
    export.add_argument("--out", type=Path, required=True, help="output .jsonl file")
    export.set_defaults(handler=run_export)


def _load_key(spec: str) -> Any:
    from secagg.audit import AuditError
    from secagg.crypto import IdentityPublicKey

    text = spec.strip()
    path = Path(text)
    if len(text) != 64 and path.is_file():
        text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        return IdentityPublicKey.from_bytes(bytes.fromhex(text))
    except ValueError:
        raise AuditError(
            f"--aggregator-key: expected 64 hex digits or a file holding them, got {spec!r}"
        ) from None


def _ledger_files(folder: Path) -> list[Path]:
    """The ledgers in ``folder``: its database (the first candidate found) and every .jsonl."""
    dbs = [folder / n for n in _DIR_CANDIDATES if n.endswith(".db") and (folder / n).is_file()]
    return dbs[:1] + sorted(folder.glob("*.jsonl"))


def _sources(source: Path) -> list[Path]:
    """What ``secagg audit verify SOURCE`` checks: the file itself, or every ledger of a folder,
    the aggregator's own data directory ``SOURCE/aggregator/`` (a demo run directory) first."""
    from secagg.audit import AuditError

    if not source.exists():
        raise CommandError(
            f"{source}: no such file or folder (give a run directory, a data directory, a "
            "ledger database or a .jsonl export)",
            EXIT_FILE,
        )
    if not source.is_dir():
        return [source]
    found = _ledger_files(source / "aggregator") if (source / "aggregator").is_dir() else []
    found += _ledger_files(source)
    if not found:
        raise AuditError(f"{source}: no ledger database or records .jsonl file found")
    return found


def _read(source: Path) -> tuple[list[str], Any, str]:
    """The record texts, the stored aggregator key (or None) and a description of the source."""
    from secagg.audit import read_jsonl, read_ledger

    with open(source, "rb") as f:
        head = f.read(len(_SQLITE_MAGIC))
    if head == _SQLITE_MAGIC:
        texts, key = read_ledger(source)
        return texts, key, f"ledger {source}"
    texts = list(read_jsonl(source))
    stored_key_file = source.parent / "aggregator.pub"
    key = _load_key(str(stored_key_file)) if stored_key_file.is_file() else None
    return texts, key, f"JSON Lines {source}"


def _eps(v: float | None) -> str:
    if v is None:
        return "-"
    return "inf" if math.isinf(v) else f"{v:.3f}"


def run_verify(args: argparse.Namespace) -> int:
    from secagg.audit import AuditError

    pinned_key = _load_key(args.aggregator_key) if args.aggregator_key else None
    head = None
    if args.head:
        try:
            head = bytes.fromhex(args.head)
        except ValueError:
            raise AuditError(f"--head: expected 64 hex digits, got {args.head!r}") from None
        if len(head) != 32:
            raise AuditError(f"--head: expected 64 hex digits, got {args.head!r}")
    sources = [_read(path) for path in _sources(args.source)]
    longest = max(sources, key=lambda s: len(s[0]))
    problems: list[str] = []
    for k, (texts, stored_key, what) in enumerate(sources):
        expected = head if len(texts) == len(longest[0]) else None  # a shorter copy: a prefix
        problems += _verify_one(texts, stored_key, what, pinned_key, expected, show_table=k == 0)
    # Every copy (the aggregator's ledger, an export) must tell the same story: each is the
    # same chain or a prefix of the longest one.
    for texts, _, what in sources:
        mismatch = next((i for i, t in enumerate(texts) if longest[0][i] != t), None)
        if mismatch is not None:
            problems.append(f"{what} differs from {longest[2]} at record {mismatch}")
    if problems:
        for problem in problems:
            print(f"secagg audit: FAIL: {problem}", file=sys.stderr)
        print(f"FAILED: {len(problems)} problem(s) in {args.source}", file=sys.stderr)
        return 1
    if pinned_key is None:
        print(
            "note: pin the aggregator key with --aggregator-key to detect a chain re-signed "
            "wholesale with another key",
            file=sys.stderr,
        )
    what = " and ".join(s[2] for s in sources)
    print(f"OK: {len(longest[0])} records, chain and every signature verified ({what})")
    return 0


def _verify_one(
    texts: list[str],
    stored_key: Any,
    what: str,
    pinned_key: Any,
    head: bytes | None,
    *,
    show_table: bool,
) -> list[str]:
    """Verify one ledger and print its table; return its problems, each naming the source."""
    from secagg.accounting.report import render_table
    from secagg.audit import verify_records

    key = pinned_key if pinned_key is not None else stored_key
    if pinned_key is not None and stored_key is not None and stored_key != pinned_key:
        print(
            f"secagg audit: warning: {what} stores another aggregator key "
            f"({stored_key.fingerprint()}) than the pinned one ({pinned_key.fingerprint()})",
            file=sys.stderr,
        )
    report = verify_records(texts, aggregator_key=key, expected_head=head)
    print(f"{what}: {len(texts)} records")
    if report.aggregator_key is not None:
        how = "pinned" if pinned_key is not None else "NOT pinned: taken from the ledger"
        print(f"aggregator key {report.aggregator_key.to_bytes().hex()} ({how})")
    if show_table:
        header = f"{'seq':>4}  {'round':>6}  {'outcome':<9}  {'survivors':>9}  {'dropouts':>8}  "
        print(header + f"{'site eps (round/cum)':>20}  {'max record eps':>14}")
        for r in report.records:
            dropouts = sum(len(ps) for _, ps in r.dropouts)
            site = rec = "-"
            if r.privacy_report is not None:
                s = r.privacy_report.site_level
                if s is not None:
                    site = f"{_eps(s.epsilon_round)}/{_eps(s.epsilon_cumulative)}"
                rec = _eps(r.privacy_report.max_record_level_epsilon)
            print(
                f"{r.sequence:>4}  {r.round_id:>6}  {r.outcome:<9}  {len(r.survivors):>9}  "
                f"{dropouts:>8}  {site:>20}  {rec:>14}"
            )
        reports = [r.privacy_report for r in report.records if r.privacy_report is not None]
        if reports:
            print("\nprivacy spent (cumulative):")
            print(render_table(reports), end="")
    if report.ok:
        print(f"head {report.head.hex()} (pass it as --head to the next audit)")
    return [f"{what}: {problem}" for problem in report.problems]


def run_export(args: argparse.Namespace) -> int:
    from secagg.audit import read_ledger, write_jsonl

    if not args.database.is_file():
        raise CommandError(
            f"{args.database}: no such file (the ledger is DATA_DIR/audit.db)", EXIT_FILE
        )
    texts, _ = read_ledger(args.database)
    count = write_jsonl(args.out, texts)
    print(f"wrote {count} records to {args.out}")
    return 0
