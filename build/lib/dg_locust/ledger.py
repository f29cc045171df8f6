"""Row accounting for a run: every batch's rows counted once as inserted, failed or in doubt.

``ClassLedger`` holds the counters of one user class in one process. ``RunLedger`` owns them for the process,
ships cumulative totals from workers to the master with each Locust report (cumulative, so Locust's per-report
stats resets and lost reports do not matter: the master keeps each worker's latest totals), and prints the run's
one-line summary on the master or local runner when the test stops:

    dg summary: inserted=N failed=N in_doubt=N rows_per_s=X batch_size=N

Rows in doubt have two causes, counted apart because only one is the database's doing: an error (a timeout, a reset
connection, an HTTP 5xx) or the end of the run cutting their batch off in flight. ``cut_off`` counts the latter; it
is part of ``in_doubt``, never in addition to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

REPORT_KEY = "dg_rows"
COUNTERS = ("inserted", "failed", "in_doubt", "cut_off", "retries", "generated", "batches")

logger = logging.getLogger(__name__)


@dataclass
class Totals:
    """The row counters (``COUNTERS``): rows inserted, failed and in doubt (of which cut off by the stop), retries,
    rows generated, batches."""

    inserted: int = 0
    failed: int = 0
    in_doubt: int = 0
    cut_off: int = 0  # rows in doubt only because the stop cut their batch off; included in in_doubt
    retries: int = 0
    generated: int = 0
    batches: int = 0

    def add(self, report: dict) -> None:
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + int(report.get(name, 0)))

    @property
    def attempted(self) -> int:
        return self.inserted + self.failed + self.in_doubt

    @property
    def finished(self) -> int:
        """Rows whose batch finished (acknowledged, refused or left in doubt by an error): attempted, less those
        the stop cut off in flight."""
        return self.attempted - self.cut_off

    @property
    def not_acknowledged_by_error(self) -> int:
        """Rows an error kept from being acknowledged: failed, and in doubt for any reason but the stop."""
        return self.failed + self.in_doubt - self.cut_off


@dataclass
class ClassLedger(Totals):
    """Cumulative row counters of one user class in this process, and what the sizer and pipeline last said."""

    batch_size: int = 0  # the last batch size the sizer chose
    best_batch_size: int = 0
    best_rows_per_s: float = 0.0
    exhausted: bool = False
    # What the rows went to, for metric labels and --verify: the table, its sensor id column, and the time window
    # (epoch ms, inclusive) of the rows handed out in this process; the pipeline keeps them.
    table: str = ""
    id_column: str = ""
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None

    def record(self, outcome) -> None:
        self.inserted += outcome.inserted
        self.failed += outcome.failed
        self.in_doubt += outcome.in_doubt
        self.retries += outcome.retries
        self.batches += 1

    def record_cut_off(self, rows: int) -> None:
        """A batch the stop cut off in flight: nobody will hear its answer, so its rows are in doubt."""
        self.in_doubt += rows
        self.cut_off += rows
        self.batches += 1

    def cover(self, first_ts_ms: int, last_ts_ms: int) -> None:
        """Widen the time window of rows sent so it includes first..last (a feed may start later in a new slice)."""
        self.first_ts_ms = first_ts_ms if self.first_ts_ms is None else min(self.first_ts_ms, first_ts_ms)
        self.last_ts_ms = last_ts_ms if self.last_ts_ms is None else max(self.last_ts_ms, last_ts_ms)

    def as_report(self) -> dict:
        report = {name: getattr(self, name) for name in COUNTERS}
        report.update(
            batch_size=self.batch_size,
            best_batch_size=self.best_batch_size,
            best_rows_per_s=self.best_rows_per_s,
            exhausted=self.exhausted,
            table=self.table,
            id_column=self.id_column,
            first_ts_ms=self.first_ts_ms,
            last_ts_ms=self.last_ts_ms,
        )
        return report


@dataclass
class RunLedger:
    """All row counters of this process, plus (on a master) the latest cumulative reports of every worker."""

    clock: Callable[[], float] = time.time
    classes: dict[str, ClassLedger] = field(default_factory=dict)
    worker_reports: dict[str, dict[str, dict]] = field(default_factory=dict)  # worker id -> class -> counters
    started_at: float | None = None
    stopped_at: float | None = None

    def for_class(self, name: str) -> ClassLedger:
        if name not in self.classes:
            self.classes[name] = ClassLedger()
        return self.classes[name]

    def reset(self) -> None:
        """A new test run starts from zero (the web UI can run several tests in one process)."""
        self.classes.clear()
        self.worker_reports.clear()
        self.started_at = self.clock()
        self.stopped_at = None

    def local_report(self) -> dict[str, dict]:
        return {name: ledger.as_report() for name, ledger in self.classes.items()}

    def merge_worker_report(self, worker_id: str, report: dict[str, dict]) -> None:
        self.worker_reports[worker_id] = report

    def per_class(self) -> dict[str, dict]:
        """Counters per user class over this process and every worker (what a master or local run shows)."""
        merged: dict[str, dict] = {}
        for report in [self.local_report(), *self.worker_reports.values()]:
            for name, counters in report.items():
                into = merged.setdefault(name, {**{c: 0 for c in COUNTERS}, "batch_size": 0, "best_batch_size": 0})
                for counter in COUNTERS:
                    into[counter] += int(counters.get(counter, 0))
                into["batch_size"] = max(into["batch_size"], int(counters.get("batch_size", 0)))
                into["best_batch_size"] = max(into["best_batch_size"], int(counters.get("best_batch_size", 0)))
                _merge_target(into, counters)
        return merged

    def totals(self) -> Totals:
        totals = Totals()
        for counters in self.per_class().values():
            totals.add(counters)
        return totals

    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        end = self.stopped_at if self.stopped_at is not None else self.clock()
        return max(end - self.started_at, 1e-9)

    def rows_per_s(self) -> float:
        return self.totals().inserted / self.elapsed() if self.started_at is not None else 0.0

    def last_batch_size(self) -> int:
        sizes = [counters["batch_size"] for counters in self.per_class().values()]
        return max(sizes, default=0)

    def worker_lines(self, index_of: Callable[[str], int]) -> list[str]:
        """On a master, one line per worker that reported, by worker index: ``dg worker I: inserted=N ...``."""
        lines = []
        for worker_id, report in self.worker_reports.items():
            totals = Totals()
            for counters in report.values():
                totals.add(counters)
            index = index_of(worker_id)
            counts = f"inserted={totals.inserted} failed={totals.failed} in_doubt={totals.in_doubt}"
            lines.append((index, f"dg worker {index}: {counts}"))
        return [line for _, line in sorted(lines)]

    def summary_line(self) -> str:
        totals = self.totals()
        return (
            f"dg summary: inserted={totals.inserted} failed={totals.failed} in_doubt={totals.in_doubt} "
            f"rows_per_s={self.rows_per_s():.1f} batch_size={self.last_batch_size()}"
        )


def _merge_target(into: dict, counters: dict) -> None:
    """Table and id column as reported (the same on every worker); the time window widened to cover every report."""
    into["table"] = into.get("table") or counters.get("table", "")
    into["id_column"] = into.get("id_column") or counters.get("id_column", "")
    for key, pick in (("first_ts_ms", min), ("last_ts_ms", max)):
        mine, theirs = into.get(key), counters.get(key)
        into[key] = theirs if mine is None else mine if theirs is None else pick(mine, theirs)
