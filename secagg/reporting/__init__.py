"""Run directories (round records, privacy reports, accountant state) and the HTML report.

Importing this package imports neither torch nor matplotlib; :func:`render_html_report` imports
matplotlib (Agg backend) when called.
"""

from __future__ import annotations

from secagg.reporting.html import render_html_report
from secagg.reporting.rundir import ROUND_RECORD_VERSION, RoundRecord, RunDirectory

__all__ = ["ROUND_RECORD_VERSION", "RoundRecord", "RunDirectory", "render_html_report"]
