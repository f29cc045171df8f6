"""Query accounting for the run: per query, how many ran, failed and returned rows, and their latency distribution.

The query counterpart of ``ledger``: cumulative counters of this process (one ``QueryTally`` per user class and
query), plus on a master the latest cumulative report of every worker, so the end-of-run lines, the web UI and
``/metrics`` read the same numbers and never Locust's request statistics (which workers reset after every report).
Latencies are kept as counts per value rounded up to 3 significant digits of microseconds: percentiles are exact
to 1 %, a report stays small, and a histogram bucket whose bound has 3 significant digits (1 ms, 2.5 ms, 5 ms, ...)
counts exactly the latencies at or below it. No I/O, no Locust.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

REPORT_KEY = "dg_queries"
SIGNIFICANT_DIGITS = 3


def latency_key(seconds: float) -> int:
    """A latency as whole microseconds rounded up to ``SIGNIFICANT_DIGITS`` significant digits."""
    # less a picosecond, so that a float such as 0.000123 * 1e6 = 123.00000000000001 stays 123
    micros = max(1, math.ceil(seconds * 1_000_000 - 1e-6))
    step = 10 ** max(len(str(micros)) - SIGNIFICANT_DIGITS, 0)
    return -(-micros // step) * step


@dataclass
class QueryTally:
    """One query of one user class: requests, failures, rows returned, latency sum and distribution."""

    user_class: str = ""
    table: str = ""
    query: str = ""
    requests: int = 0
    failures: int = 0
    rows: int = 0
    seconds: float = 0.0
    latency: dict[int, int] = field(default_factory=dict)  # latency_key -> count

    def record(self, seconds: float, rows: int, failed: bool) -> None:
        self.requests += 1
        self.failures += int(failed)
        self.rows += rows
        self.seconds += seconds
        key = latency_key(seconds)
        self.latency[key] = self.latency.get(key, 0) + 1

    def add(self, other: QueryTally) -> None:
        self.requests += other.requests
        self.failures += other.failures
        self.rows += other.rows
        self.seconds += other.seconds
        for key, count in other.latency.items():
            self.latency[key] = self.latency.get(key, 0) + count

    def percentile_ms(self, fraction: float) -> float:
        """The latency (ms) at or below which ``fraction`` of the requests fall (nearest rank); 0 without any."""
        if not self.requests:
            return 0.0
        rank = max(1, math.ceil(fraction * self.requests))
        seen = 0
        for key in sorted(self.latency):
            seen += self.latency[key]
            if seen >= rank:
                return key / 1000
        return max(self.latency) / 1000

    def count_at_or_below(self, seconds: float) -> int:
        """Requests with a latency at or below ``seconds`` (exact for bounds of 3 significant digits)."""
        bound = seconds * 1_000_000
        return sum(count for key, count in self.latency.items() if key <= bound + 1e-6)

    @property
    def rows_per_answer(self) -> float:
        answered = self.requests - self.failures
        return self.rows / answered if answered else 0.0

    def as_report(self) -> dict:
        return {
            "user_class": self.user_class,
            "table": self.table,
            "query": self.query,
            "requests": self.requests,
            "failures": self.failures,
            "rows": self.rows,
            "seconds": self.seconds,
            "latency": [[key, count] for key, count in self.latency.items()],
        }

    @classmethod
    def from_report(cls, report: dict) -> QueryTally:
        return cls(
            user_class=str(report.get("user_class", "")),
            table=str(report.get("table", "")),
            query=str(report.get("query", "")),
            requests=int(report.get("requests", 0)),
            failures=int(report.get("failures", 0)),
            rows=int(report.get("rows", 0)),
            seconds=float(report.get("seconds", 0.0)),
            latency={int(key): int(count) for key, count in report.get("latency", [])},
        )


@dataclass
class QueryLedger:
    """All query tallies of this process, plus (on a master) the latest cumulative reports of every worker."""

    clock: Callable[[], float] = time.time
    tallies: dict[tuple[str, str], QueryTally] = field(default_factory=dict)  # (user class, query) -> tally
    worker_reports: dict[str, list[dict]] = field(default_factory=dict)  # worker id -> its tallies as reports
    started_at: float | None = None
    stopped_at: float | None = None

    def record(self, user_class: str, table: str, query: str, seconds: float, rows: int, failed: bool) -> None:
        tally = self.tallies.get((user_class, query))
        if tally is None:
            tally = self.tallies[(user_class, query)] = QueryTally(user_class, table, query)
        tally.record(seconds, rows, failed)

    def reset(self) -> None:
        """A new test starts from zero."""
        self.tallies.clear()
        self.worker_reports.clear()
        self.started_at = self.clock()
        self.stopped_at = None

    def local_report(self) -> list[dict]:
        return [tally.as_report() for tally in self.tallies.values()]

    def merge_worker_report(self, worker_id: str, report: list[dict]) -> None:
        self.worker_reports[worker_id] = report

    def per_query(self) -> list[QueryTally]:
        """Tallies per (user class, query) over this process and every worker, sorted by class and query."""
        merged: dict[tuple[str, str], QueryTally] = {}
        reports: Iterable[dict] = [r for report in self.worker_reports.values() for r in report]
        for report in [*self.local_report(), *reports]:
            tally = QueryTally.from_report(report)
            into = merged.setdefault(
                (tally.user_class, tally.query), QueryTally(tally.user_class, tally.table, tally.query)
            )
            into.add(tally)
        return [merged[key] for key in sorted(merged)]

    def total(self) -> QueryTally:
        total = QueryTally(query="Total")
        for tally in self.per_query():
            total.add(tally)
        return total

    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        end = self.stopped_at if self.stopped_at is not None else self.clock()
        return max(end - self.started_at, 1e-9)

    def summary_lines(self, rows_per_s: float) -> list[str]:
        """The end-of-run lines: the queries in total next to the ingest's rows/s, then one line per query."""
        tallies = self.per_query()
        if not tallies:
            return []
        total = self.total()
        lines = [
            f"dg queries: requests={total.requests} failed={total.failures} "
            f"queries_per_s={total.requests / self.elapsed():.1f} rows_per_s={rows_per_s:.1f}"
        ]
        several_classes = len({t.user_class for t in tallies}) > 1
        for tally in tallies:
            name = f"{tally.user_class}/{tally.query}" if several_classes else tally.query
            lines.append(
                f"dg query {name}: requests={tally.requests} failed={tally.failures} "
                f"p50_ms={tally.percentile_ms(0.5):g} p95_ms={tally.percentile_ms(0.95):g} "
                f"p99_ms={tally.percentile_ms(0.99):g} max_ms={tally.percentile_ms(1.0):g} "
                f"rows_per_answer={tally.rows_per_answer:.1f}"
            )
        return lines
