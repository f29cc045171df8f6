"""The capacity finder in Locust: a load shape that runs a ``CapacitySearch`` (see ``capacity``) when asked to.

``CapacityShape.register(environment, context)`` (from an ``init`` listener; it does nothing on workers, which only
run the users the master gives them) creates the shape, keeps it as ``context.capacity``, and makes it the run's
load shape (``environment.shape_class``) when ``--find-capacity`` is on. Locust always uses a shape class it finds in
a locustfile, so this one is ``abstract`` (Locust never picks it up from a locustfile) and is switched on instead:

- at ``init``, from the validated options (a headless run and the web UI alike);
- in the web UI, from the form's ``find_capacity`` box each time a test is started (``POST /swarm``), so the box
  turns the finder on or off from one test to the next; with ``--class-picker`` the shape menu lists the finder as
  ``CapacityShape`` and has the last word.

Locust calls ``tick`` every second; the shape hands the search the time and the number of workers and returns its
users (all of a stage's users start within about a second). The ``LedgerMeter`` measures the stages: rows from the
run's ledger (on a master the workers' cumulative reports, each stamped with the time it arrived) and batch
latencies from Locust's response times of the insert requests (on a master merged from the workers' reports). When
the test stops, the shape prints the result (``dg capacity: ...`` and the stage table); ``result()`` keeps it
readable for the checks (``--min-rows-per-sec``), the Prometheus metrics and the Rows tab until the next test.
"""

from __future__ import annotations

from locust import LoadTestShape
from locust.runners import STATE_INIT, STATE_STOPPED, MasterRunner, WorkerRunner

import logging
import time
from collections.abc import Callable, Iterable

from flask import request

from dg_locust.capacity import (
    CapacityPlan,
    CapacityResult,
    CapacitySearch,
    Counters,
    Snapshot,
    StageMeasurement,
    fewest_batches,
    measure_between,
)
from dg_locust.client import REQUEST_TYPE
from dg_locust.ledger import REPORT_KEY
from dg_locust.run import RunContext

LOCAL_SOURCE = "local"  # the counters of this process's own users (a local run)
MAX_SPAWN_RATE_PER_WORKER = 100  # Locust warns above this

logger = logging.getLogger(__name__)


class LedgerMeter:
    """Measures capacity stages from the run's cumulative counters (a ``Meter`` for ``CapacitySearch``)."""

    def __init__(self, environment, context: RunContext, clock: Callable[[], float]):
        self.environment = environment
        self.context = context
        self.clock = clock
        self.report_times: dict[str, float] = {}  # worker id -> when its latest report arrived
        self._marked: Snapshot | None = None  # the counters when the stage or its measured window began

    def reset(self) -> None:
        self.report_times.clear()
        self._marked = None

    def on_worker_report(self, client_id, data, **_kwargs) -> None:
        if REPORT_KEY in data:
            self.report_times[client_id] = self.clock()

    def mark(self, now: float) -> None:
        self._marked = self.snapshot(now)

    def batches(self, now: float) -> int:
        return fewest_batches(self._since(now), self.snapshot(now))

    def measure(self, now: float) -> StageMeasurement:
        return measure_between(self._since(now), self.snapshot(now))

    def _since(self, now: float) -> Snapshot:
        return self._marked if self._marked is not None else Snapshot(now, {})

    def snapshot(self, now: float) -> Snapshot:
        ledger = self.context.ledger
        sources = {}
        local = ledger.local_report()
        if local:
            sources[LOCAL_SOURCE] = _counters(now, local.values())
        for worker_id, report in ledger.worker_reports.items():
            sources[worker_id] = _counters(self.report_times.get(worker_id, now), report.values())
        per_class = ledger.per_class().values()
        return Snapshot(
            taken_at=now,
            sources=sources,
            latency_ms=self._latency_ms(),
            batch_size=max((int(c.get("batch_size", 0)) for c in per_class), default=0),
            best_batch_size=max((int(c.get("best_batch_size", 0)) for c in per_class), default=0),
        )

    def _latency_ms(self) -> dict[int, int]:
        """Locust's cumulative response times (ms -> batches) of every insert request, over all request names."""
        merged: dict[int, int] = {}
        for (_name, method), entry in self.environment.stats.entries.items():
            if method != REQUEST_TYPE:
                continue
            for ms, count in entry.response_times.items():
                merged[ms] = merged.get(ms, 0) + count
        return merged


def _counters(as_of: float, reports: Iterable[dict]) -> Counters:
    totals = {"inserted": 0, "failed": 0, "in_doubt": 0, "cut_off": 0, "batches": 0}
    for report in reports:
        for name in totals:
            totals[name] += int(report.get(name, 0))
    return Counters(as_of=as_of, **totals)


class CapacityShape(LoadTestShape):
    """Steps the users up in stages until the capacity is found (``capacity.CapacitySearch`` decides)."""

    abstract = True  # never picked up from a locustfile: --find-capacity (or the web UI) switches it on

    def __init__(self, environment, context: RunContext, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.environment = environment
        self.context = context
        self.clock = clock
        self.meter = LedgerMeter(environment, context, clock)
        self.search: CapacitySearch | None = None  # the search of the current (or last) test; None: not used

    @classmethod
    def register(cls, environment, context: RunContext) -> CapacityShape | None:
        """Create the shape on a master or local runner (call it from ``init``, after ``RunContext.attach``)."""
        runner = environment.runner
        if runner is None or isinstance(runner, WorkerRunner):
            return None
        shape = cls(environment, context)
        shape.runner = runner
        context.capacity = shape
        if environment.available_shape_classes is not None:
            environment.available_shape_classes[cls.__name__] = shape  # listed by --class-picker
        shape.select(context.settings is not None and context.settings.find_capacity)
        events = environment.events
        events.test_start.add_listener(shape.on_test_start)
        events.test_stop.add_listener(shape.on_test_stop)
        events.worker_report.add_listener(shape.meter.on_worker_report)
        if environment.web_ui is not None:
            shape.follow_the_web_form(environment.web_ui)
        return shape

    def select(self, on: bool) -> None:
        """Make this the run's load shape, or stop being it (another shape of the locustfile stays)."""
        if on:
            self.environment.shape_class = self
        elif self.environment.shape_class is self:
            self.environment.shape_class = None

    def follow_the_web_form(self, web_ui) -> None:
        def select_as_the_box_says():
            self.select(request.form["find_capacity"] == "true")

        # Behind --web-login like Locust's own views: only a request that may start a test may switch the shape.
        select_if_allowed = web_ui.auth_required_if_enabled(select_as_the_box_says)

        @web_ui.app.before_request
        def follow_the_find_capacity_box():
            # Before Locust's own /swarm handler, which starts the shape if there is one. Never while a test runs:
            # Locust edits a running test in place.
            starting = request.method == "POST" and request.path.endswith("/swarm")
            if starting and "find_capacity" in request.form and self.runner.state in (STATE_INIT, STATE_STOPPED):
                select_if_allowed()  # its answer to a refused request is the one Locust's handler gives next

    # --- the load shape ---

    def tick(self):
        now = self.clock()
        workers = self.worker_count()
        if self.runner.state == STATE_INIT or self.search is None:
            # The first tick comes before test_start (Locust starts the test with what it returns), so the search of
            # this test does not exist yet (the one there is belongs to the last test): its first stage always runs
            # one user per worker.
            settings = self.context.settings
            users = min(workers, settings.capacity_max_users) if settings is not None else workers
        else:
            users = self.search.tick(now, workers)
        if users is None:
            self.context.stop_reason = f"the capacity finder is done: {self.search.stop_reason}"
            logger.info("dg-locust: %s", self.context.stop_reason)
            return None
        return users, min(max(users, 1), MAX_SPAWN_RATE_PER_WORKER * workers)

    def worker_count(self) -> int:
        runner = self.runner
        return max(runner.worker_count, 1) if isinstance(runner, MasterRunner) else 1

    # --- events ---

    def on_test_start(self, environment, **_kwargs) -> None:
        self.meter.reset()
        settings = self.context.settings
        if environment.shape_class is not self or settings is None:
            self.search = None  # this test runs without the finder (or cannot run: the context says why)
            return
        run_time = getattr(environment.parsed_options, "run_time", None)
        self.search = CapacitySearch(CapacityPlan.from_settings(settings, run_time), self.meter)
        self.search.tick(self.clock(), self.worker_count())  # the first stage starts now
        plan = self.search.plan
        logger.info(
            "dg-locust: finding the capacity: stages of %g s (the first %g s), measured over their last %g s; "
            "stops when rows/s rise by no more than %g %% or the SLO breaks",
            plan.stage_s,
            plan.first_stage_s,
            plan.measure_s,
            plan.margin * 100,
        )

    def on_test_stop(self, environment, **_kwargs) -> None:
        if self.search is None:
            return
        self.search.finish(self.context.stop_reason or "")  # e.g. INGEST_SIZE reached, or an abort
        result = self.search.result()
        for line in (result.summary_line(), *result.table_lines()):
            print(line, flush=True)

    # --- what others read ---

    def result(self) -> CapacityResult | None:
        """The capacity found so far in the current (or last) test; None when the test ran without the finder."""
        return self.search.result() if self.search is not None else None

    def live_measurement(self) -> StageMeasurement | None:
        """The current stage's measurement so far while it is measured; None otherwise."""
        search = self.search
        if search is None or search.done or not search.measuring:
            return None
        return self.meter.measure(self.clock())
