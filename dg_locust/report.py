"""The run's report for people and CI: its summary as JSON, a self-contained HTML page, and rows in Locust's report.

``RunReport.register(environment, context, history, status)`` (from an ``init`` listener, after ``RunChecks``;
nothing on workers):

- at each ``test_stop`` (the counters are final, the summary line printed) writes ``--summary-json FILE``: the
  ``dg summary`` line's numbers and more (outcomes, per user class, per worker, the thresholds' verdict, why the run
  stopped), and ``--rows-report FILE``: one HTML page with no outside references (charts as inline SVG: rows/s,
  batch size and latency over time, rows/s per worker, per user class; the summary, the verdict), plus its main
  chart as a PNG beside it (``FILE`` with the suffix ``.png``), for a CI job to attach;
- adds the same rows section to Locust's own HTML report: to the ``--html`` file (at ``quitting``, just after Locust
  wrote it: Locust renders that page from its fixed template and data, with no extension point) and to the web
  UI's ``/stats/report`` page.

``run_summary`` and ``rows_section`` are pure; charts come from ``charts`` (matplotlib), imported when drawn.
"""

from __future__ import annotations

from locust.runners import MasterRunner, WorkerRunner

import html
import json
import logging
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from flask import request

from dg_locust.checks import Verdict
from dg_locust.history import RunHistory
from dg_locust.ledger import RunLedger, Totals
from dg_locust.run import INGEST_SIZE_REACHED, RunContext
from dg_locust.status import RunStatus, StatusLine

SECTION_ID = "dg-rows-report"
LOCUST_REPORT_ROOT = '<div id="root"></div>'

logger = logging.getLogger(__name__)


def run_summary(
    ledger: RunLedger,
    *,
    worker_index: Callable[[str], int] | None = None,
    verdict: Verdict | None = None,
    status: StatusLine | None = None,
    stop_reason: str | None = None,
) -> dict:
    """The run's numbers: the first five are the ``dg summary`` line's, with the same values."""
    totals = ledger.totals()
    summary = {
        "inserted": totals.inserted,
        "failed": totals.failed,
        "in_doubt": totals.in_doubt,
        "rows_per_s": float(f"{ledger.rows_per_s():.1f}"),  # as the line prints it
        "batch_size": ledger.last_batch_size(),
        "cut_off": totals.cut_off,
        "batches": totals.batches,
        "generated": totals.generated,
        "retries": totals.retries,
        "started_at": _iso(ledger.started_at),
        "stopped_at": _iso(ledger.stopped_at),
        "duration_s": round(ledger.elapsed(), 3) if ledger.started_at is not None else 0.0,
        "per_class": {
            name: {
                key: counters.get(key)
                for key in (
                    "inserted",
                    "failed",
                    "in_doubt",
                    "cut_off",
                    "batches",
                    "generated",
                    "retries",
                    "batch_size",
                    "best_batch_size",
                    "table",
                )
            }
            for name, counters in sorted(ledger.per_class().items())
        },
        "per_worker": [],
        "thresholds": None,
        "stop_reason": None,
        "status": status.as_dict() if status is not None else None,
    }
    if worker_index is not None:
        workers = []
        for worker_id, report in ledger.worker_reports.items():
            worker = Totals()
            for counters in report.values():
                worker.add(counters)
            workers.append(
                {
                    "worker": worker_index(worker_id),
                    "id": worker_id,
                    "inserted": worker.inserted,
                    "failed": worker.failed,
                    "in_doubt": worker.in_doubt,
                }
            )
        summary["per_worker"] = sorted(workers, key=lambda worker: worker["worker"])
    if verdict is not None:
        summary["thresholds"] = {"passed": verdict.passed, "line": verdict.line}
    if stop_reason is not None:
        summary["stop_reason"] = {"message": stop_reason, "error": stop_reason != INGEST_SIZE_REACHED}
    return summary


def rows_section(summary: dict, history: dict, *, host: str = "", with_png_note: bool = False) -> str:
    """The rows part of a report, as one HTML ``<section>`` with its own style (it goes into other pages too)."""
    from dg_locust import charts  # matplotlib: only when a report is made

    figures = [("main", "Rows/s, batch size and insert latency", charts.main_chart(history))]
    figures.append(("workers", "Rows/s per worker", charts.workers_chart(history)))
    classes = [group for group in history.get("groups", []) if group["kind"] == "class"]
    if len(classes) > 1:
        for group in classes:
            figures.append((f"class-{group['label']}", group["label"], charts.class_chart(history, group)))
    chart_html = (
        "".join(
            f'<figure class="dg-chart" id="dg-chart-{_e(name)}" aria-label="{_e(title)}">{charts.svg(figure)}</figure>'
            for name, title, figure in figures
            if figure is not None
        )
        or "<p>No samples: the test ended before the first one.</p>"
    )
    return f"""<section id="{SECTION_ID}">
<style>
#{SECTION_ID} {{ font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1b1b;
  background: #fff; max-width: 1100px; margin: 2em auto; padding: 1em 1.5em; }}
#{SECTION_ID} h2 {{ font-size: 1.4em; margin: 1.2em 0 .4em; }}
#{SECTION_ID} table {{ border-collapse: collapse; margin: .4em 0 1em; }}
#{SECTION_ID} th, #{SECTION_ID} td {{ border-bottom: 1px solid #ddd; padding: .3em .8em; text-align: right; }}
#{SECTION_ID} th:first-child, #{SECTION_ID} td:first-child {{ text-align: left; }}
#{SECTION_ID} .dg-verdict {{ padding: .6em 1em; border-radius: 4px; margin: .6em 0; }}
#{SECTION_ID} .dg-success {{ background: #e6f4ea; }} #{SECTION_ID} .dg-info {{ background: #e8f0fe; }}
#{SECTION_ID} .dg-warning {{ background: #fff4e5; }} #{SECTION_ID} .dg-error {{ background: #fdecea; }}
#{SECTION_ID} figure {{ margin: 1em 0; }} #{SECTION_ID} svg {{ max-width: 100%; height: auto; }}
</style>
<h2>Rows (dg-locust)</h2>
{_meta(summary, host)}
{_verdict(summary)}
<table id="dg-summary">
<tr><th>Rows inserted</th><th>Rows failed</th><th>Rows in doubt</th><th>Rows/s (mean)</th><th>Batch size</th>
<th>Batches</th><th>Rows generated</th><th>Retries</th></tr>
<tr>{"".join(f"<td>{_n(summary[k])}</td>" for k in _SUMMARY_KEYS)}</tr>
</table>
{chart_html}
{"<p>The main chart is also in the PNG file beside this page.</p>" if with_png_note else ""}
{_class_table(summary)}
{_worker_table(summary)}
</section>"""


def report_page(summary: dict, history: dict, *, host: str = "") -> str:
    """The ``--rows-report`` page: the rows section alone, with no outside references."""
    started = summary.get("started_at") or ""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>dg-locust report {_e(started)}</title></head>\n"
        f'<body style="margin:0;background:#f5f5f5">\n{rows_section(summary, history, host=host, with_png_note=True)}'
        "\n</body></html>\n"
    )


def add_section(page: str, section: str) -> str:
    """Locust's report page with the rows section after its root element (where its React app renders)."""
    if f'id="{SECTION_ID}"' in page:
        return page  # already there
    at = page.rfind(LOCUST_REPORT_ROOT)
    if at >= 0:
        at += len(LOCUST_REPORT_ROOT)
    else:
        at = page.rfind("</body>")
        at = at if at >= 0 else len(page)
    return page[:at] + "\n" + section + "\n" + page[at:]


class RunReport:
    """Writes the summary JSON and the report at the end of each test; adds rows to Locust's HTML report."""

    def __init__(self, environment, context: RunContext, history: RunHistory, status: RunStatus):
        self.environment = environment
        self.context = context
        self.history = history
        self.status = status

    @classmethod
    def register(cls, environment, context: RunContext, history: RunHistory, status: RunStatus) -> RunReport | None:
        if isinstance(environment.runner, WorkerRunner):
            return None
        report = cls(environment, context, history, status)
        environment.events.test_stop.add_listener(report.on_test_stop)
        environment.events.quitting.add_listener(report.on_quitting)
        if environment.web_ui is not None:

            @environment.web_ui.app.after_request
            def add_rows_to_locust_report(response):
                if request.path.endswith("/stats/report") and response.mimetype == "text/html":
                    response.set_data(add_section(response.get_data(as_text=True), report.section()))
                return response

        return report

    def summary(self) -> dict:
        runner = self.environment.runner
        return run_summary(
            self.context.ledger,
            worker_index=runner.get_worker_index if isinstance(runner, MasterRunner) else None,
            verdict=self.status.verdict,
            status=self.status.line(),
            stop_reason=self.context.stop_reason,
        )

    def section(self) -> str:
        return rows_section(self.summary(), self.history.export(), host=self.environment.host or "")

    def on_test_stop(self, environment, **_kwargs) -> None:
        settings = self.context.settings
        if self.context.ledger.started_at is None or settings is None:
            return  # no test ran, or its options were bad (the run context has said so)
        if not (settings.summary_json or settings.rows_report):
            return
        summary = self.summary()
        if settings.summary_json:
            _write(settings.summary_json, json.dumps(summary, indent=2) + "\n")
            logger.info("dg-locust: summary written to %s", settings.summary_json)
        if settings.rows_report:
            from dg_locust import charts  # matplotlib: only when a report is made

            history = self.history.export()
            _write(settings.rows_report, report_page(summary, history, host=self.environment.host or ""))
            figure = charts.main_chart(history)
            if figure is not None:
                _write(png_path(settings.rows_report), charts.png(figure))
            logger.info("dg-locust: report written to %s", settings.rows_report)

    def on_quitting(self, environment, **_kwargs) -> None:
        """Locust has just written its --html report (it does before ``quitting``); add the rows to it."""
        options = self.environment.parsed_options
        html_file = getattr(options, "html_file", None)
        started = self.history.started_at
        if not html_file or started is None or not os.path.isfile(html_file):
            return
        if os.path.getmtime(html_file) < started:
            return  # a file from an earlier run: Locust did not write it this time
        try:
            page = Path(html_file).read_text(encoding="utf-8")
            Path(html_file).write_text(add_section(page, self.section()), encoding="utf-8")
        except OSError as error:
            logger.error("dg-locust: cannot add the rows to the HTML report %s: %s", html_file, error)


def png_path(report_file: str) -> str:
    path = Path(report_file)
    png = path.with_suffix(".png")
    return str(png if png != path else path.with_name(path.name + ".png"))


def _write(file: str, content: str | bytes) -> None:
    path = Path(file)
    try:
        if path.parent:
            path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    except OSError as error:
        logger.error("dg-locust: cannot write %s: %s", file, error)


_SUMMARY_KEYS = ("inserted", "failed", "in_doubt", "rows_per_s", "batch_size", "batches", "generated", "retries")


def _meta(summary: dict, host: str) -> str:
    parts = []
    if summary.get("started_at"):
        parts.append(f"{_e(summary['started_at'])} to {_e(summary.get('stopped_at') or 'now')}")
        parts.append(f"{_n(summary['duration_s'])} s")
    if host:
        parts.append(f"host {_e(host)}")
    return f'<p id="dg-meta">{" · ".join(parts)}</p>' if parts else ""


def _verdict(summary: dict) -> str:
    lines = []
    thresholds, reason = summary.get("thresholds"), summary.get("stop_reason")
    if thresholds:
        level = "success" if thresholds["passed"] else "error"
        lines.append(f'<div class="dg-verdict dg-{level}" id="dg-verdict">{_e(thresholds["line"])}</div>')
    elif reason and reason["error"]:
        text = "The thresholds were not checked: an error stopped the run."
        lines.append(f'<div class="dg-verdict dg-error" id="dg-verdict">{text}</div>')
    else:
        lines.append('<div class="dg-verdict dg-info" id="dg-verdict">No thresholds were set.</div>')
    if reason:
        level = "error" if reason["error"] else "success"
        text = f"The run stopped by itself: {reason['message']}"
        lines.append(f'<div class="dg-verdict dg-{level}" id="dg-stop-reason">{_e(text)}</div>')
    return "\n".join(lines)


def _class_table(summary: dict) -> str:
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td>{_e(c.get('table') or '')}</td>"
        + "".join(
            f"<td>{_n(c.get(k))}</td>" for k in ("inserted", "failed", "in_doubt", "batch_size", "best_batch_size")
        )
        + "</tr>"
        for name, c in summary["per_class"].items()
    )
    return (
        '<h2>Per user class</h2><table id="dg-classes"><tr><th>User class</th><th>Table</th><th>Rows inserted</th>'
        f"<th>Rows failed</th><th>Rows in doubt</th><th>Batch size</th><th>Best batch size</th></tr>{rows}</table>"
    )


def _worker_table(summary: dict) -> str:
    if not summary["per_worker"]:
        return ""
    rows = "".join(
        f"<tr><td>worker {w['worker']}</td>"
        + "".join(f"<td>{_n(w[k])}</td>" for k in ("inserted", "failed", "in_doubt"))
        + "</tr>"
        for w in summary["per_worker"]
    )
    return (
        '<h2>Per worker</h2><table id="dg-workers"><tr><th>Worker</th><th>Rows inserted</th><th>Rows failed</th>'
        f"<th>Rows in doubt</th></tr>{rows}</table>"
    )


def _n(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
