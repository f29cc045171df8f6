"""Why rows are not going in, or why the run stopped: one status line for the web UI and the report.

``RunStatus.register(environment, context)`` (from an ``init`` listener, after the run context) keeps, in every
process, the last error of a batch whose rows were not all inserted (from Locust's request event), and ships it from
workers to the master with each report. On the master or local runner ``line()`` puts into one sentence what
people need to know:

- while the test runs: ``Running``, or the error of the failing rows while batches fail (the database stopped, a
  table was dropped, the cluster is overloaded);
- once it stopped: why, when it stopped by itself (the context's ``stop_reason``: wrong credentials, an unreachable
  database, a broken model, or every sensor has its INGEST_SIZE rows), and the CI thresholds' verdict.
"""

from __future__ import annotations

from locust.runners import STATE_RUNNING, STATE_SPAWNING, STATE_STOPPED, STATE_STOPPING, MasterRunner, WorkerRunner

import time
from collections.abc import Callable
from dataclasses import dataclass

from dg_locust.checks import Verdict, threshold_verdict
from dg_locust.client import REQUEST_TYPE
from dg_locust.history import worker_label
from dg_locust.run import INGEST_SIZE_REACHED, RunContext

STATUS_REPORT_KEY = "dg_status"
RECENT_ERROR_S = 15.0  # an error older than this no longer says why rows are failing now
MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class BatchError:
    """The last batch error seen: when (this process's clock), where, and the message."""

    at: float
    where: str
    message: str


@dataclass(frozen=True)
class StatusLine:
    """One sentence for people, and how loud to show it: ``info``, ``success``, ``warning`` or ``error``."""

    level: str
    text: str

    def as_dict(self) -> dict:
        return {"level": self.level, "text": self.text}


class RunStatus:
    """The last batch errors of this process and the workers, the verdict of the last test, and the status line."""

    def __init__(self, environment, context: RunContext, clock: Callable[[], float] = time.time):
        self.environment = environment
        self.context = context
        self.clock = clock
        self.last_error: BatchError | None = None
        self.worker_errors: dict[str, BatchError] = {}
        self.verdict: Verdict | None = None
        self.stopped_at: float | None = None

    @classmethod
    def register(cls, environment, context: RunContext) -> RunStatus:
        status = cls(environment, context)
        events = environment.events
        events.request.add_listener(status.on_request)
        events.test_start.add_listener(status.on_test_start)
        events.report_to_master.add_listener(status.on_report_to_master)
        events.worker_report.add_listener(status.on_worker_report)
        if not isinstance(environment.runner, WorkerRunner):
            events.test_stop.add_listener(status.on_test_stop)
        return status

    # --- events ---

    def on_request(self, request_type, name, exception=None, context=None, **_kwargs) -> None:
        if request_type == REQUEST_TYPE and exception is not None:
            where = (context or {}).get("user_class", "") or name
            self.last_error = BatchError(self.clock(), where, str(exception)[:MAX_ERROR_CHARS])

    def on_test_start(self, environment, **_kwargs) -> None:
        self.last_error = None
        self.worker_errors.clear()
        self.verdict = None
        self.stopped_at = None

    def on_report_to_master(self, client_id, data, **_kwargs) -> None:
        if self.last_error is not None:
            # an age, not a time: the master's clock may differ from this worker's
            age = self.clock() - self.last_error.at
            data[STATUS_REPORT_KEY] = {"age_s": age, "where": self.last_error.where, "error": self.last_error.message}

    def on_worker_report(self, client_id, data, **_kwargs) -> None:
        report = data.get(STATUS_REPORT_KEY)
        if report:
            runner = self.environment.runner
            where = report.get("where", "")
            if isinstance(runner, MasterRunner):
                where = f"{where}, {worker_label(runner, client_id)}" if where else worker_label(runner, client_id)
            at = self.clock() - float(report.get("age_s", 0.0))
            self.worker_errors[client_id] = BatchError(at, where, str(report.get("error", "")))

    def on_test_stop(self, environment, **_kwargs) -> None:
        self.stopped_at = self.clock()
        self.verdict = self._threshold_verdict()

    # --- what people see ---

    def latest_error(self) -> BatchError | None:
        errors = [error for error in (self.last_error, *self.worker_errors.values()) if error is not None]
        return max(errors, key=lambda error: error.at, default=None)

    def line(self) -> StatusLine:
        runner = self.environment.runner
        state = runner.state if runner is not None else None
        error = self.latest_error()
        if state in (STATE_RUNNING, STATE_SPAWNING):
            if error is not None and self.clock() - error.at <= RECENT_ERROR_S:
                return StatusLine("warning", f"Running; rows are failing ({error.where}): {error.message}")
            return StatusLine("info", "Running")
        if state not in (STATE_STOPPED, STATE_STOPPING) or self.stopped_at is None:
            return StatusLine("info", "Ready")
        level, parts = "info", []
        reason = self.context.stop_reason
        if reason is not None:
            level = "success" if reason == INGEST_SIZE_REACHED else "error"
            parts.append(f"Stopped by itself: {reason}")
        else:
            parts.append("Stopped")
            if error is not None and self.stopped_at - error.at <= RECENT_ERROR_S:
                level = "warning"
                parts.append(f"rows were failing ({error.where}): {error.message}")
        if self.verdict is not None:
            parts.append(self.verdict.line.removeprefix("dg "))
            if not self.verdict.passed:
                level = "error"
            elif level == "info":
                level = "success"
        return StatusLine(level, "; ".join(parts))

    def _threshold_verdict(self) -> Verdict | None:
        reason, settings = self.context.stop_reason, self.context.settings
        if settings is None or (reason is not None and reason != INGEST_SIZE_REACHED):
            return None  # no settings (bad options), or stopped by an error: its numbers prove nothing (as the checks)
        return threshold_verdict(self.context.ledger, settings.min_rows_per_sec, settings.max_fail_ratio)
