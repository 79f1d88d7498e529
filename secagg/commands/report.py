"""``secagg report RUN_DIR``: render RUN_DIR/report.html and print the per-round privacy table."""

from __future__ import annotations

import argparse
from typing import Any

from secagg.commands.errors import EXIT_FILE, CommandError
from secagg.errors import ConfigError


def register(sub: Any) -> None:
    report = sub.add_parser(
        "report",
        help="render RUN_DIR/report.html (epsilon and accuracy over rounds, per-round table)",
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (e.g. of secagg demo)")
    report.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from secagg.accounting.report import render_table
    from secagg.reporting import RunDirectory, render_html_report

    rd = RunDirectory(args.run_dir)
    if not rd.path.is_dir():
        raise CommandError(f"{rd.path}: no such folder (give a run directory)", EXIT_FILE)
    if not rd.round_ids():
        raise ConfigError(f"{rd.path} holds no completed round")
    print(render_table(rd.read_reports()), end="")
    path = render_html_report(rd.path)
    print(f"report: {path}")
    return 0
