"""``RUN_DIR/report.html``: epsilon and accuracy over rounds (PNG, base64-embedded) and tables.

The page is self-contained (no scripts, no external resources) so it can be archived with the
audit records. matplotlib is imported only here, with the non-interactive Agg backend.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from secagg.accounting.report import VACUOUS_EPSILON_PER_ROUND, PrivacyReport, is_vacuous
from secagg.reporting.numbers import fmt_eps, fmt_probability, fmt_value
from secagg.reporting.rundir import RoundRecord, RunDirectory

__all__ = ["render_html_report"]


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _plot_png(reports: list[PrivacyReport], records: list[RoundRecord]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r.round_id for r in reports]
    fig, (ax_eps, ax_acc) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    site = [None if r.site_level is None else r.site_level.epsilon_cumulative for r in reports]
    rec = [r.max_record_level_epsilon for r in reports]
    if any(v is not None for v in rec):
        ax_eps.plot(rounds, rec, "o-", label="record level (max over sites)")
    if any(v is not None for v in site):
        vacuous = any(
            r.site_level is not None and is_vacuous(r.site_level.epsilon_round) for r in reports
        )
        label = "site level (distributed DP)" + (
            f": VACUOUS, > {VACUOUS_EPSILON_PER_ROUND:g} per round" if vacuous else ""
        )
        ax_eps.plot(rounds, site, "s-", color="tab:red" if vacuous else None, label=label)
        if max((v for v in site if v is not None), default=0) > 100:
            ax_eps.set_yscale("log")
    delta = next((r.site_level.delta for r in reports if r.site_level), None)
    ax_eps.set_title(f"cumulative epsilon (delta = {delta:g})" if delta else "cumulative epsilon")
    ax_eps.set_xlabel("round")
    ax_eps.set_ylabel("epsilon")
    ax_eps.grid(alpha=0.3)
    ax_eps.legend()
    by_round = {r.round_id: r for r in records}
    ax_acc.plot(rounds, [by_round[i].accuracy for i in rounds], "o-", label="accuracy")
    ax_acc.plot(rounds, [by_round[i].f1 for i in rounds], "s-", label="F1 (malignant)")
    ax_acc.set_ylim(0, 1.02)
    ax_acc.set_title("global model on the held-out test set")
    ax_acc.set_xlabel("round")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


class _Html(str):
    """A table cell that is already HTML (not escaped again)."""


def _cell(c: str) -> str:
    return c if isinstance(c, _Html) else html.escape(c)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _site_eps(rep: PrivacyReport) -> str:
    site = rep.site_level
    if site is None:
        return "-"
    text = html.escape(fmt_eps(site.epsilon_cumulative))
    if is_vacuous(site.epsilon_round):
        return _Html(f"{text} <span class='vacuous'>vacuous</span>")
    return text


def _round_rows(
    reports: list[PrivacyReport], records: list[RoundRecord], malignant: dict[str, float]
) -> list[list[str]]:
    by_round = {r.round_id: r for r in records}

    def drop(site: str, stage: str) -> str:
        share = malignant.get(site) if stage == "masked_input" else None
        mark = f" ({100 * share:.0f}% malignant)" if share is not None else ""
        return f"{site} @ {stage.replace('_', ' ')}{mark}"

    rows = []
    for rep in reports:
        rec = by_round.get(rep.round_id)
        drops = (
            ", ".join(drop(s, stage) for stage, names in rec.dropouts.items() for s in names)
            if rec
            else ""
        )
        declined = ", ".join(sorted(rec.declined)) if rec else ""
        rows.append(
            [
                str(rep.round_id),
                f"{len(rep.participants)} of {len(rec.roster)}"
                if rec
                else str(len(rep.participants)),
                drops or "-",
                declined or "-",
                _fmt(rec.accuracy) if rec else "-",
                _fmt(rec.f1) if rec else "-",
                _site_eps(rep),
                fmt_eps(rep.max_record_level_epsilon),
            ]
        )
    return rows


def _summary_html(summary: dict[str, Any] | None) -> str:
    if not summary or "comparison" not in summary:
        return ""
    rows = [
        [
            str(m["model"]),
            f"{m['records']:,}",
            f"{100 * m['malignant_fraction']:.0f}%" if "malignant_fraction" in m else "-",
            _fmt(m["accuracy"]),
            _fmt(m["f1"]),
            f"{m['federated_gain_f1']:+.3f}" if "federated_gain_f1" in m else "",
            fmt_eps(m.get("record_level_epsilon")),
        ]
        for m in summary["comparison"]
    ]
    parts = [
        "<h2>Federated model against each hospital alone</h2>",
        "<p>Every model is scored on the same held-out test set. <em>F1 gain</em> is the "
        "federated model's F1 minus that hospital's own model's F1.</p>",
        _table(
            [
                "model",
                "training records",
                "malignant",
                "accuracy",
                "F1 (malignant)",
                "F1 gain",
                "record-level eps",
            ],
            rows,
        ),
    ]
    if summary.get("verdict"):
        parts.append(f"<p class='verdict'><strong>{html.escape(summary['verdict'])}</strong></p>")
    return "".join(parts)


def _privacy_html(summary: dict[str, Any] | None, reports: list[PrivacyReport]) -> str:
    """The guarantees in words: the demo's closing note, or the vacuous flags alone."""
    lines = list(summary.get("privacy", [])) if summary else []
    if not lines and reports and reports[-1].site_level is not None:
        site = reports[-1].site_level
        if is_vacuous(site.epsilon_round):
            lines.append(
                f"Site level: VACUOUS, epsilon {fmt_eps(site.epsilon_round)} per round "
                f"(> {VACUOUS_EPSILON_PER_ROUND:g})."
            )
    if not lines:
        return ""
    items = "".join(
        f"<li class='{'warn' if ('VACUOUS' in x or 'NOT PRIVATE' in x) else ''}'>"
        f"{html.escape(x)}</li>"
        for x in lines
    )
    return f"<h2>What is guaranteed</h2><ul class='privacy'>{items}</ul>"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f0f0f0}img{max-width:100%}code{background:#f4f4f4}
.vacuous{color:#b00;font-weight:bold}li.warn{color:#b00}.verdict{font-size:1.1em}
ul.privacy li{margin:.4em 0}
"""


def render_html_report(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/report.html`` from the run's records; return its path."""
    rd = RunDirectory(run_dir)
    reports = rd.read_reports()
    records = rd.read_records()
    summary = rd.read_summary()
    config = rd.read_config() if rd.exists() else {}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>secagg privacy report: {html.escape(rd.path.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>secagg privacy report</h1><p>Run <code>{html.escape(str(rd.path))}</code>, "
        f"{len(reports)} completed round(s).</p>",
    ]
    malignant = {
        str(m["site"]): float(m["malignant_fraction"])
        for m in (summary or {}).get("comparison", [])
        if "site" in m and "malignant_fraction" in m
    }
    parts.append(_privacy_html(summary, reports))
    if reports:
        png = base64.b64encode(_plot_png(reports, records)).decode("ascii")
        parts.append(
            f"<img alt='epsilon and accuracy over rounds' src='data:image/png;base64,{png}'>"
        )
        parts.append("<h2>Per-round privacy</h2>")
        parts.append(
            _table(
                [
                    "round",
                    "participants",
                    "dropouts (stage)",
                    "declined",
                    "accuracy",
                    "F1",
                    "site-level eps (cumulative)",
                    "max record-level eps (cumulative)",
                ],
                _round_rows(reports, records, malignant),
            )
        )
        if malignant and any(r.dropouts.get("masked_input") for r in records):
            parts.append(
                "<p>(N% malignant): a hospital whose input is not in that round's sum. Under "
                "label skew the average then leans towards the other hospitals' label mix, so "
                "accuracy can dip for that round; DP-SGD noise makes every round wobble too.</p>"
            )
        if any(
            r.site_level is not None and is_vacuous(r.site_level.epsilon_round) for r in reports
        ):
            parts.append(
                f"<p><span class='vacuous'>vacuous</span>: more than epsilon "
                f"{VACUOUS_EPSILON_PER_ROUND:g} in that round, a bound that rules out almost "
                "nothing.</p>"
            )
        aborted = (summary or {}).get("aborted_rounds") or []
        if aborted:
            parts.append(
                "<p>Aborted rounds (too few hospitals left; nothing released, model unchanged): "
                f"{html.escape(', '.join(str(a) for a in aborted))}.</p>"
            )
        last = reports[-1]
        if last.site_level is not None:
            s = last.site_level
            parts.append(
                "<p>Site level: distributed "
                f"{html.escape(s.mechanism)} noise under secure aggregation, clip {s.l2_clip:g}, "
                f"total noise stddev {s.noise_stddev_total:g} for any {s.min_clients} survivors, "
                f"{s.bits}-bit modular sum, wrap-around probability "
                f"{html.escape(fmt_probability(s.wraparound_probability))} per round.</p>"
            )
        if last.record_level:
            r0 = last.record_level[0]
            parts.append(
                f"<p>Record level: DP-SGD (Opacus, {html.escape(r0.accountant)} accountant), "
                f"noise multiplier {r0.noise_multiplier:g}, delta {r0.delta:g}. Epsilons are "
                "cumulative at each site's own ledger.</p>"
            )
    parts.append(_summary_html(summary))
    if config:
        parts.append("<h2>Configuration</h2><table><tbody>")
        for k in sorted(config):
            parts.append(
                f"<tr><th>{html.escape(k.replace('_', ' '))}</th>"
                f"<td>{html.escape(fmt_value(config[k]))}</td></tr>"
            )
        parts.append("</tbody></table>")
    parts.append("</body></html>\n")
    out = rd.report_path
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text("".join(parts), encoding="utf-8")
    tmp.replace(out)
    return out
