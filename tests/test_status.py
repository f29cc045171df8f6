"""The status line: why rows fail while the test runs, and why it stopped (by itself, or with the thresholds' say)."""

import locust  # noqa: F401
from locust.runners import STATE_RUNNING, STATE_STOPPED

from types import SimpleNamespace

from dg_locust.client import REQUEST_TYPE, InsertOutcome
from dg_locust.ledger import RunLedger
from dg_locust.options import OPTIONS, Settings
from dg_locust.pipeline import RowsNotInserted
from dg_locust.run import INGEST_SIZE_REACHED
from dg_locust.status import RunStatus


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def make_status(**options):
    parsed = SimpleNamespace(**{spec.dest: spec.default for spec in OPTIONS})
    for name, value in options.items():
        setattr(parsed, name, value)
    clock = Clock()
    ledger = RunLedger(clock=clock)
    ledger.reset()
    environment = SimpleNamespace(runner=SimpleNamespace(state=STATE_RUNNING))
    context = SimpleNamespace(ledger=ledger, stop_reason=None, settings=Settings.from_options(parsed))
    return RunStatus(environment, context, clock=clock), context, clock


def fail_a_batch(status, message):
    error = RowsNotInserted(message)
    status.on_request(REQUEST_TYPE, "bulk doc.t", exception=error, context={"user_class": "TemperatureUser"})


def test_running_says_running_until_batches_fail_and_again_once_the_error_is_old():
    status, _, clock = make_status()
    assert status.line().as_dict() == {"level": "info", "text": "Running"}
    fail_a_batch(status, "cannot reach CrateDB at http://db:4200: Connection refused")
    line = status.line()
    assert line.level == "warning"
    assert line.text == (
        "Running; rows are failing (TemperatureUser): cannot reach CrateDB at http://db:4200: Connection refused"
    )
    clock.now += 60
    assert status.line().text == "Running"


def test_a_workers_error_reaches_the_master_with_its_age():
    worker, _, worker_clock = make_status()
    fail_a_batch(worker, "HTTP 500: CircuitBreakingException")
    worker_clock.now += 2
    report = {}
    worker.on_report_to_master("w1", report)
    master, _, master_clock = make_status()
    master_clock.now = 5000.0  # another machine's clock
    master.on_worker_report("w1", report)
    assert master.latest_error().at == 4998.0
    assert "rows are failing (TemperatureUser): HTTP 500: CircuitBreakingException" in master.line().text


def test_a_run_that_stopped_by_itself_says_why():
    status, context, clock = make_status(min_rows_per_sec=1000.0)
    status.environment.runner.state = STATE_STOPPED
    context.stop_reason = "CrateDB at http://db:4200 refused user 'crate': wrong password"
    status.on_test_stop(status.environment)
    line = status.line()
    assert line.level == "error"
    assert line.text == "Stopped by itself: CrateDB at http://db:4200 refused user 'crate': wrong password"

    context.stop_reason = INGEST_SIZE_REACHED
    context.ledger.for_class("A").record(InsertOutcome(100, 0, 0))
    clock.now += 10
    status.on_test_stop(status.environment)
    line = status.line()
    assert line.level == "error"  # 10 rows/s is below 1000
    assert line.text.startswith("Stopped by itself: every sensor has its INGEST_SIZE rows; thresholds: FAILED: mean")


def test_a_stopped_run_shows_the_verdict_and_a_failure_just_before_the_stop():
    status, context, clock = make_status(max_fail_ratio=0.5)
    context.ledger.for_class("A").record(InsertOutcome(100, 0, 0))
    fail_a_batch(status, "HTTP 500")
    clock.now += 1
    status.environment.runner.state = STATE_STOPPED
    status.on_test_stop(status.environment)
    line = status.line()
    assert line.level == "warning"
    assert line.text.startswith("Stopped; rows were failing (TemperatureUser): HTTP 500; thresholds: passed: ")
    status.on_test_start(status.environment)
    status.environment.runner.state = STATE_RUNNING
    assert status.line().text == "Running"  # a new test forgets the old errors
