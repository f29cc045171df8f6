"""The web UI: Locust's own UI with a Rows tab of charts (rows/s, batch size, latency), a table and a status line;
and a Queries tab (per query: its rate, failures and latency percentiles next to the rows inserted per second).

``RowsTab.register(environment, context, history, status)`` (from an ``init`` listener; it does nothing where there
is no web UI: on workers, in headless runs and in ``--processes`` children):

- serves the page in ``dg_locust/web_assets/`` instead of Locust's ``index.html``: Locust's UI as Locust publishes it
  for extension (the npm package ``locust-ui``), with a Rows tab whose charts are that package's own line charts.
  Its source is ``webui/``; rebuild the committed bundle with ``npm --prefix webui ci && npm --prefix webui run
  build``. A UI of your own given with Locust's ``--build-path`` wins;
- answers ``/dg/rows?since=T``: the tab's table, the status line, and the history samples taken after ``T`` (the tab
  polls it every 2 s, and takes the whole history on its first call, so the charts survive a page reload), and
  ``/dg/status``: the status line alone (a banner on every tab polls it);
- adds the table to ``/stats/requests`` as ``extended_stats`` (key ``dg_rows``), Locust's extension point for tabs,
  and declares the tab in ``extended_tabs`` / ``extended_tables``, so Locust's stock page shows the table too.

The table's rows are one per user class, the total and (on a master) one per worker; counts come from the ledger
(the master's holds every worker's latest cumulative report), "rows/s now" from the history: the rate over the last
10 s as the master has it, from the first look on. In a test the capacity finder runs (``--find-capacity``), one row
per stage follows (its users, whether it is settling or measured, what it measured) and a last row with the
capacity found so far.
"""

from __future__ import annotations

from locust.runners import MasterRunner

import json
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from flask import jsonify, request, send_from_directory
from jinja2 import ChoiceLoader, FileSystemLoader

from dg_locust.capacity import CapacityResult, StageMeasurement, users_text
from dg_locust.history import TOTAL, RunHistory, worker_label
from dg_locust.query_ledger import QueryTally
from dg_locust.run import RunContext
from dg_locust.status import RunStatus

TAB_KEY = "dg_rows"
TAB_TITLE = "Rows"
COLUMNS = (
    ("name", "Rows of"),
    ("rows_per_s", "Rows/s now"),
    ("inserted", "Rows inserted"),
    ("failed", "Rows failed"),
    ("in_doubt", "Rows in doubt"),
    ("batch_size", "Batch size"),
    ("best_batch_size", "Best batch size"),
)
TOTAL_NAME = "Total"
WEB_ASSETS_DIR = Path(__file__).resolve().parent / "web_assets"


class RowsTab:
    """The Rows tab's data and the routes that serve it and the page."""

    def __init__(
        self,
        environment,
        context: RunContext,
        history: RunHistory,
        status: RunStatus,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.environment = environment
        self.context = context
        self.history = history
        self.status = status
        self.clock = clock

    @classmethod
    def register(cls, environment, context: RunContext, history: RunHistory, status: RunStatus) -> RowsTab | None:
        web_ui = environment.web_ui
        if web_ui is None:
            return None
        tab = cls(environment, context, history, status)
        web_ui.template_args.setdefault("extended_tabs", []).append({"title": TAB_TITLE, "key": TAB_KEY})
        web_ui.template_args.setdefault("extended_tables", []).append(
            {"key": TAB_KEY, "structure": [{"key": key, "title": title} for key, title in COLUMNS]}
        )
        options = environment.parsed_options
        base = (getattr(options, "web_base_path", "") or "").rstrip("/")
        app = web_ui.app
        if not getattr(options, "build_path", None) and (WEB_ASSETS_DIR / "index.html").is_file():
            # Our index.html first; Locust's templates (auth.html, its report) still come from Locust.
            app.jinja_env.loader = ChoiceLoader([FileSystemLoader(str(WEB_ASSETS_DIR)), app.jinja_env.loader])

        @app.route(f"{base}/dg/assets/<path:path>")
        def dg_assets(path):
            return send_from_directory(WEB_ASSETS_DIR / "dg" / "assets", path)

        @app.route(f"{base}/dg/rows")
        @web_ui.auth_required_if_enabled
        def dg_rows():
            return jsonify(tab.page_data(_since(request.args.get("since"))))

        @app.route(f"{base}/dg/status")
        @web_ui.auth_required_if_enabled
        def dg_status():
            return jsonify({"status": tab.status.line().as_dict(), "started_at": tab.history.started_at})

        @app.after_request
        def add_rows_to_stats(response):
            if request.path.endswith("/stats/requests") and response.is_json:
                report = response.get_json()
                add_extended_stats(report, TAB_KEY, tab.rows())
                response.set_data(json.dumps(report))
            return response

        return tab

    def page_data(self, since: float | None) -> dict:
        runner = self.environment.runner
        return {
            "state": runner.state if runner is not None else None,
            "status": self.status.line().as_dict(),
            "columns": [{"key": key, "title": title} for key, title in COLUMNS],
            "rows": self.rows(),
            "history": self.history.export(since),
        }

    def rows(self) -> list[dict]:
        ledger = self.context.ledger
        rates = self.history.current(self.clock())
        rows = [
            self._row(name, counters, rates.get(f"class:{name}"))
            for name, counters in sorted(ledger.per_class().items())
        ]
        total = {key: sum(row[key] for row in rows) for key in ("inserted", "failed", "in_doubt")}
        total["batch_size"] = max((row["batch_size"] for row in rows), default=0)
        total["best_batch_size"] = max((row["best_batch_size"] for row in rows), default=0)
        rows.append(self._row(TOTAL_NAME, total, rates.get(TOTAL)))
        runner = self.environment.runner
        if isinstance(runner, MasterRunner):
            workers = sorted(ledger.worker_reports.items(), key=lambda item: runner.get_worker_index(item[0]))
            for worker_id, report in workers:
                label = worker_label(runner, worker_id)
                rows.append(self._row(label, _worker_totals(report), rates.get(f"worker:{worker_id}")))
        finder = self.context.capacity
        capacity = finder.result() if finder is not None else None
        if capacity is not None:
            rows.extend(capacity_rows(capacity, finder.live_measurement(), finder.clock()))
        return rows

    @staticmethod
    def _row(name: str, counters: dict, rates: dict | None) -> dict:
        return {
            "name": name,
            "rows_per_s": round((rates or {}).get("inserted_per_s", 0.0), 1),
            "inserted": int(counters.get("inserted", 0)),
            "failed": int(counters.get("failed", 0)),
            "in_doubt": int(counters.get("in_doubt", 0)),
            "batch_size": int(counters.get("batch_size", 0)),
            "best_batch_size": int(counters.get("best_batch_size", 0)),
        }


def _worker_totals(report: dict[str, dict]) -> dict:
    """One worker's rows over its user classes (its latest cumulative report)."""
    totals = {
        key: sum(int(counters.get(key, 0)) for counters in report.values())
        for key in ("inserted", "failed", "in_doubt")
    }
    for key in ("batch_size", "best_batch_size"):
        totals[key] = max((int(counters.get(key, 0)) for counters in report.values()), default=0)
    return totals


def _since(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def capacity_rows(capacity: CapacityResult, live: StageMeasurement | None, now: float) -> list[dict]:
    """The capacity finder's rows: one per stage (its users, its phase or outcome, and what its measured window
    held: rows/s, rows, batch sizes; the current stage's window so far while it is measured), then the capacity."""
    rows = []
    for stage in capacity.stages:
        measured = (
            stage.measurement if stage.measurement is not None else live if stage is capacity.stages[-1] else None
        )
        phase = "best" if stage is capacity.best else stage.phase(now)
        if not stage.outcome and not stage.measuring and now >= stage.measure_from:
            phase += ", waiting for the batches the sizer needs"
        elif not stage.outcome:
            phase += f", {max(stage.ends_at - now, 0):.0f} s left"
        name = f"capacity stage {stage.number}: {users_text(stage.users)}"
        if stage.workers > 1:
            name += f" on {stage.workers} workers"
        name += f" ({phase}{': ' + stage.note if stage.note else ''})"
        rows.append(
            {
                "name": name,
                "rows_per_s": round(measured.rows_per_s, 1) if measured else 0.0,
                "inserted": measured.inserted if measured else 0,
                "failed": measured.failed if measured else 0,
                "in_doubt": measured.in_doubt if measured else 0,
                "batch_size": measured.batch_size if measured else 0,
                "best_batch_size": measured.best_batch_size if measured else 0,
            }
        )
    if capacity.best is not None:
        at = users_text(capacity.users)
        name = f"capacity: {capacity.rows_per_s:.1f} rows/s at {at} (stage {capacity.best.number})"
    else:
        name = (
            "capacity: none found within the SLO yet" if not capacity.stop_reason else "capacity: none within the SLO"
        )
    if capacity.stop_reason:
        name += f"; stopped: {capacity.stop_reason}"
    best = capacity.best.measurement if capacity.best is not None else None
    rows.append(
        {
            "name": name,
            "rows_per_s": round(capacity.rows_per_s, 1),
            "inserted": best.inserted if best else 0,
            "failed": best.failed if best else 0,
            "in_doubt": best.in_doubt if best else 0,
            "batch_size": best.batch_size if best else 0,
            "best_batch_size": best.best_batch_size if best else 0,
        }
    )
    return rows


def add_extended_stats(report: dict, key: str, rows: list[dict]) -> None:
    """Put one tab's rows into a /stats/requests report, beside other tabs' (Flask runs the after_request hooks
    last-registered first) and in place of this tab's earlier rows (Locust caches the report for a moment)."""
    others = [entry for entry in report.get("extended_stats", []) if entry.get("key") != key]
    report["extended_stats"] = [*others, {"key": key, "data": rows}]


RATE_WINDOW_S = 10.0


class RateMeter:
    """Rate of a cumulative counter over a sliding window, from samples taken whenever someone asks."""

    def __init__(self, window_s: float = RATE_WINDOW_S):
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def update(self, now: float, value: float) -> float:
        if self._samples and value < self._samples[-1][1]:
            self._samples.clear()  # the counter restarted (a new test)
        self._samples.append((now, value))
        # keep the newest sample at or before the window's start as the anchor, so the rate spans the whole window
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()
        first_time, first_value = self._samples[0]
        return (value - first_value) / (now - first_time) if now > first_time else 0.0


QUERIES_TAB_KEY = "dg_queries"
QUERIES_TAB_TITLE = "Queries"
QUERY_COLUMNS = (
    ("name", "Query"),
    ("queries_per_s", "Queries/s now"),
    ("requests", "Requests"),
    ("failures", "Failed"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("rows_per_answer", "Rows per answer"),
    ("rows_per_s", "Rows inserted/s now"),
)


class QueriesTab:
    """The Queries tab: one row per query (and user class when several), the total with the rows inserted per
    second, from the query ledger (see ``query_ledger``); added beside the Rows tab."""

    def __init__(self, environment, context: RunContext, clock: Callable[[], float] = time.monotonic):
        self.environment = environment
        self.context = context
        self.clock = clock
        self._rates: dict[str, RateMeter] = {}

    @classmethod
    def register(cls, environment, context: RunContext) -> QueriesTab | None:
        web_ui = environment.web_ui
        if web_ui is None:
            return None
        tab = cls(environment, context)
        web_ui.template_args.setdefault("extended_tabs", []).append(
            {"title": QUERIES_TAB_TITLE, "key": QUERIES_TAB_KEY}
        )
        web_ui.template_args.setdefault("extended_tables", []).append(
            {"key": QUERIES_TAB_KEY, "structure": [{"key": key, "title": title} for key, title in QUERY_COLUMNS]}
        )

        @web_ui.app.after_request
        def add_queries_to_stats(response):
            if request.path.endswith("/stats/requests") and response.is_json:
                report = response.get_json()
                add_extended_stats(report, QUERIES_TAB_KEY, tab.rows())
                response.set_data(json.dumps(report))
            return response

        return tab

    def rows(self) -> list[dict]:
        now = self.clock()
        tallies = self.context.queries.per_query()
        several = len({t.user_class for t in tallies}) > 1
        rows = [self._row(f"{t.user_class}/{t.query}" if several else t.query, t, now) for t in tallies]
        total = self._row(TOTAL_NAME, self.context.queries.total(), now)
        total["rows_per_s"] = round(self._rate("rows inserted", self.context.ledger.totals().inserted, now), 1)
        return [*rows, total]

    def _row(self, name: str, tally: QueryTally, now: float) -> dict:
        return {
            "name": name,
            "queries_per_s": round(self._rate(f"query:{name}", tally.requests, now), 1),
            "requests": tally.requests,
            "failures": tally.failures,
            "p50_ms": tally.percentile_ms(0.5),
            "p95_ms": tally.percentile_ms(0.95),
            "p99_ms": tally.percentile_ms(0.99),
            "rows_per_answer": round(tally.rows_per_answer, 1),
            "rows_per_s": "",
        }

    def _rate(self, key: str, value: float, now: float) -> float:
        return self._rates.setdefault(key, RateMeter()).update(now, value)
