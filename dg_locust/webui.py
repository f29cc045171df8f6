"""The Rows tab of Locust's web UI: rows per second and row outcomes per user class, in total and per worker.

``RowsTab.register(environment)`` (from an ``init`` listener; it does nothing where there is no web UI: on workers,
in headless runs and in ``--processes`` children) declares the tab through Locust's ``extended_tabs`` /
``extended_tables`` template arguments and delivers its rows as ``extended_stats`` in ``/stats/requests``, which the
page polls every two seconds, so the tab updates live like the built-in ones. The figures come from the ledger (the
master's holds every worker's latest cumulative report); "rows/s now" is the rate of rows inserted over the last
``RATE_WINDOW_S`` seconds, measured between polls. In a test the capacity finder runs (``--find-capacity``), one row
per stage follows (its users, whether it is settling or measured, what it measured) and a last row with the
capacity found so far.
"""

from __future__ import annotations

from locust.runners import MasterRunner

import json
import time
from collections import deque
from collections.abc import Callable

from flask import request

from dg_locust.capacity import CapacityResult, StageMeasurement, users_text
from dg_locust.run import RunContext

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
RATE_WINDOW_S = 10.0
TOTAL = "Total"


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


class RowsTab:
    """The rows of the tab: one per user class, the total, and (on a master) one per worker."""

    def __init__(self, environment, context: RunContext, clock: Callable[[], float] = time.monotonic):
        self.environment = environment
        self.context = context
        self.clock = clock
        self._rates: dict[str, RateMeter] = {}

    @classmethod
    def register(cls, environment, context: RunContext) -> RowsTab | None:
        web_ui = environment.web_ui
        if web_ui is None:
            return None
        tab = cls(environment, context)
        web_ui.template_args["extended_tabs"] = [{"title": TAB_TITLE, "key": TAB_KEY}]
        web_ui.template_args["extended_tables"] = [
            {"key": TAB_KEY, "structure": [{"key": key, "title": title} for key, title in COLUMNS]}
        ]

        @web_ui.app.after_request
        def add_rows_to_stats(response):
            if request.path.endswith("/stats/requests") and response.is_json:
                report = response.get_json()
                report["extended_stats"] = [{"key": TAB_KEY, "data": tab.rows()}]
                response.set_data(json.dumps(report))
            return response

        return tab

    def rows(self) -> list[dict]:
        ledger = self.context.ledger
        now = self.clock()
        rows = [self._row(name, counters, now) for name, counters in sorted(ledger.per_class().items())]
        total = {key: sum(row[key] for row in rows) for key in ("inserted", "failed", "in_doubt")}
        total["batch_size"] = max((row["batch_size"] for row in rows), default=0)
        total["best_batch_size"] = max((row["best_batch_size"] for row in rows), default=0)
        rows.append(self._row(TOTAL, total, now))
        runner = self.environment.runner
        if isinstance(runner, MasterRunner):
            workers = sorted(ledger.worker_reports.items(), key=lambda item: runner.get_worker_index(item[0]))
            for worker_id, report in workers:
                rows.append(self._row(_worker_label(runner, worker_id), _worker_totals(report), now, key=worker_id))
        finder = self.context.capacity
        capacity = finder.result() if finder is not None else None
        if capacity is not None:
            rows.extend(capacity_rows(capacity, finder.live_measurement(), finder.clock()))
        return rows

    def _row(self, name: str, counters: dict, now: float, key: str | None = None) -> dict:
        inserted = int(counters.get("inserted", 0))
        meter = self._rates.setdefault(key or f"class:{name}", RateMeter())
        return {
            "name": name,
            "rows_per_s": round(meter.update(now, inserted), 1),
            "inserted": inserted,
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


def _worker_label(runner, worker_id: str) -> str:
    host = worker_id.rsplit("_", 1)[0]  # Locust's worker ids are "<hostname>_<uuid hex>"
    return f"worker {runner.get_worker_index(worker_id)} ({host})"


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
