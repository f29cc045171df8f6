"""End-of-run checks: --verify against what the double stored, and the CI thresholds' exit code 3."""

import locust  # noqa: F401

import re
from types import SimpleNamespace

import pytest
from cratedb_double import DoubleProcess, count_rows
from support import run_locust

from dg_locust.checks import (
    EXIT_THRESHOLD,
    EXIT_VERIFY,
    RunChecks,
    count_targets,
    threshold_verdict,
    verify_verdict,
)
from dg_locust.client import InsertOutcome
from dg_locust.ledger import RunLedger
from dg_locust.options import OPTIONS, Settings

TABLE = "doc.temperature"


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _ten_second_run(inserted: int, failed: int) -> RunLedger:
    clock = FakeClock()
    ledger = RunLedger(clock=clock)
    ledger.reset()
    ledger.for_class("TemperatureUser").record(InsertOutcome(inserted, failed, 0))
    clock.now += 10
    ledger.stopped_at = clock()
    return ledger


# --- pure decisions ---


def test_thresholds_pass_or_fail_with_one_line_naming_the_option():
    ledger = _ten_second_run(inserted=9_000, failed=1_000)  # 900 rows/s, fail ratio 0.1
    assert threshold_verdict(ledger, 0.0, 1.0) is None  # no threshold set
    passed = threshold_verdict(ledger, 800, 0.2)
    assert passed.passed and passed.line.startswith("dg thresholds: passed: mean 900.0 rows/s")
    slow = threshold_verdict(ledger, 1000, 0.2)
    assert not slow.passed
    assert slow.line == "dg thresholds: FAILED: mean 900.0 rows/s is below --min-rows-per-sec 1000"
    both = threshold_verdict(ledger, 1000, 0.05)
    assert "\n" not in both.line and "--min-rows-per-sec 1000" in both.line
    assert (
        "rows not acknowledged because of errors (failed + in doubt, not counting 0 cut off by the stop) "
        "1000/10000 = 0.1000 is above --max-fail-ratio 0.05"
    ) in both.line


def test_fail_ratio_counts_rows_in_doubt_from_errors_and_leaves_out_rows_cut_off_by_the_stop():
    clock = FakeClock()
    ledger = RunLedger(clock=clock)
    ledger.reset()
    rows = ledger.for_class("TemperatureUser")
    rows.record(InsertOutcome(8_000, 0, 0))
    rows.record(InsertOutcome(0, 0, 1_000, error="HTTP 500 CircuitBreakingException", overload=True))
    rows.record(InsertOutcome(0, 500, 0, error="HTTP 503"))
    rows.record_cut_off(5_000)  # batches in flight when the run ended: no error, whatever their size
    clock.now += 10
    ledger.stopped_at = clock()
    totals = ledger.totals()
    assert (totals.in_doubt, totals.cut_off, totals.attempted) == (6_000, 5_000, 14_500)
    # 1500 of the 9500 rows whose batch finished were kept from the database by errors
    over = threshold_verdict(ledger, 0.0, 0.15)
    assert over.line == (
        "dg thresholds: FAILED: rows not acknowledged because of errors (failed + in doubt, not counting 5000 cut off "
        "by the stop) 1500/9500 = 0.1579 is above --max-fail-ratio 0.15"
    )
    assert threshold_verdict(ledger, 0.0, 0.16).passed
    # a master's totals hold the cut-off rows its workers reported
    master = RunLedger()
    master.reset()
    master.merge_worker_report("w1", ledger.local_report())
    master.merge_worker_report("w2", {"TemperatureUser": {"inserted": 500, "in_doubt": 100, "cut_off": 100}})
    assert (master.totals().cut_off, master.totals().not_acknowledged_by_error) == (5_100, 1_500)


def test_count_targets_cover_every_workers_window_and_count_classes_sharing_a_table_once():
    ledger = RunLedger()
    ledger.reset()
    common = {"table": TABLE, "id_column": "sensor_id"}
    nothing_sent = {"table": "doc.other", "id_column": "id", "inserted": 0}
    ledger.merge_worker_report(
        "w1", {"A": {**common, "inserted": 10, "first_ts_ms": 1000, "last_ts_ms": 5000}, "B": nothing_sent}
    )
    ledger.merge_worker_report("w2", {"A": {**common, "inserted": 20, "in_doubt": 3, "first_ts_ms": 2000}})
    ledger.merge_worker_report(  # a later report replaces w2's earlier one
        "w2",
        {
            "A": {**common, "inserted": 30, "in_doubt": 3, "first_ts_ms": 2000, "last_ts_ms": 9000},
            "C": {**common, "inserted": 5, "first_ts_ms": 3000, "last_ts_ms": 4000},
        },
    )
    (target,) = count_targets(ledger, 1, 500)
    assert (target.table, target.id_column, target.first_id, target.last_id) == (TABLE, "sensor_id", 1, 500)
    assert (target.first_ts_ms, target.last_ts_ms) == (1000, 9000)
    assert (target.acknowledged, target.in_doubt) == (45, 3)
    assert target.count_args() == [1, 500, 1000, 9000]


def test_verify_verdict_fails_below_acknowledged_and_above_acknowledged_plus_in_doubt():
    ledger = RunLedger()
    ledger.reset()
    ledger.merge_worker_report(
        "w1",
        {
            "A": {
                "table": TABLE,
                "id_column": "sensor_id",
                "inserted": 100,
                "in_doubt": 10,
                "first_ts_ms": 0,
                "last_ts_ms": 1,
            }
        },
    )
    (target,) = count_targets(ledger, 1, 5)
    assert verify_verdict(target, 100).passed
    assert verify_verdict(target, 110).passed  # in-doubt rows may or may not have landed
    fewer = verify_verdict(target, 97)
    assert not fewer.passed and "3 fewer than the 100 acknowledged" in fewer.line
    more = verify_verdict(target, 111)
    assert not more.passed and "more than acknowledged + in doubt (100 + 10)" in more.line


# --- real runs against the double ---


def _line(result, prefix: str) -> str:
    found = re.findall(rf"^{prefix}.*$", result.stdout, re.M)
    assert len(found) == 1, f"expected one {prefix!r} line, got {found}\n{result.output[-3000:]}"
    return found[0]


RUN = ["--headless", "-u", "4", "-r", "4", "-t", "2s"]


def test_verify_passes_on_a_clean_run_and_counts_what_the_database_holds(tmp_path):
    with DoubleProcess(tmp_path / "crate.sqlite") as double:
        args = [*RUN, "-H", double.url, "--verify", "--min-rows-per-sec", "1", "--max-fail-ratio", "0.01"]
        result = run_locust(args, tmp_path)
        stored = count_rows(double.db_path, TABLE)
    assert result.exit_code == 0, result.output[-3000:]
    verify = _line(result, "dg verify:")
    assert verify.startswith(f"dg verify: passed: {TABLE} holds {stored} rows of this run (sensor_id 1..500, ts ")
    assert stored == result.summary["inserted"] > 0
    assert _line(result, "dg thresholds:").startswith("dg thresholds: passed: ")


def test_verify_fails_when_the_database_loses_acknowledged_rows(tmp_path):
    faults = {"drop_acknowledged": {"rate": 1, "keep": 0.9}}
    with DoubleProcess(tmp_path / "crate.sqlite", faults=faults) as double:
        result = run_locust([*RUN, "-H", double.url, "--verify"], tmp_path)
        stored = count_rows(double.db_path, TABLE)
    assert result.exit_code == EXIT_VERIFY, result.output[-3000:]
    acknowledged = result.summary["inserted"]
    assert stored < acknowledged
    verify = _line(result, "dg verify:")
    assert verify.startswith(f"dg verify: FAILED: {TABLE} holds {stored} rows of this run")
    assert f"{acknowledged - stored} fewer than the {acknowledged} acknowledged" in verify


def test_a_run_below_min_rows_per_sec_exits_3_with_one_line(tmp_path):
    with DoubleProcess(tmp_path / "crate.sqlite") as double:
        result = run_locust([*RUN, "-H", double.url, "--min-rows-per-sec", "1e9"], tmp_path)
    assert result.exit_code == EXIT_THRESHOLD, result.output[-3000:]
    assert re.fullmatch(
        r"dg thresholds: FAILED: mean [\d.]+ rows/s is below --min-rows-per-sec 1e\+09", _line(result, "dg thresholds:")
    )


@pytest.mark.parametrize(
    ("max_fail_ratio", "extra", "exit_code"),
    [
        ("0.05", [], EXIT_THRESHOLD),  # over the ratio: 3, whatever Locust would say about failed requests
        ("0.5", [], 1),  # within the ratio, but batches failed: Locust's own exit code for failed requests
        ("0.5", ["--exit-code-on-error", "0"], 0),  # ... unless told not to: then the ratio alone decides
    ],
)
def test_max_fail_ratio_decides_the_exit_code_with_locusts_exit_code_on_error(
    tmp_path, max_fail_ratio, extra, exit_code
):
    faults = {"row_rejections": {"rate": 1, "fraction": 0.2}}
    with DoubleProcess(tmp_path / "crate.sqlite", faults=faults) as double:
        args = [*RUN, "-H", double.url, "--batch-size", "500", "--max-fail-ratio", max_fail_ratio, *extra]
        result = run_locust(args, tmp_path)
    assert result.exit_code == exit_code, result.output[-3000:]
    summary = result.summary
    assert summary["failed"] > 0
    line = _line(result, "dg thresholds:")
    assert line.startswith("dg thresholds: FAILED: " if exit_code == EXIT_THRESHOLD else "dg thresholds: passed: ")
    assert f"because of errors (failed + in doubt, not counting 0 cut off by the stop) {summary['failed']}/" in line


def _fail_ratio_line(result) -> tuple[int, int, int]:
    """(cut off, not acknowledged because of errors, rows whose batch finished) from the thresholds line."""
    found = re.search(r"not counting (\d+) cut off by the stop\) (\d+)/(\d+) = ", _line(result, "dg thresholds:"))
    assert found, result.output[-3000:]
    return tuple(map(int, found.groups()))


@pytest.mark.parametrize(("faults", "exit_code"), [({"circuit_breaker": {"rate": 0.3}}, EXIT_THRESHOLD), ({}, 0)])
def test_max_fail_ratio_counts_rows_in_doubt_after_http_500(tmp_path, faults, exit_code):
    """30 % of the inserts answered by HTTP 500 (a circuit breaker) leave their rows in doubt: that fails a 5 % gate,
    although no row was refused; a clean run passes it."""
    with DoubleProcess(tmp_path / "crate.sqlite", faults=faults) as double:
        args = [*RUN, "-t", "3s", "-H", double.url, "--max-fail-ratio", "0.05", "--exit-code-on-error", "0"]
        result = run_locust(args, tmp_path)
        stats = double.stats()
    assert result.exit_code == exit_code, result.output[-3000:]
    summary = result.summary
    cut_off, errors, finished = _fail_ratio_line(result)
    assert errors == summary["failed"] + summary["in_doubt"] - cut_off
    assert finished == summary["inserted"] + summary["failed"] + summary["in_doubt"] - cut_off
    if faults:
        assert stats["faults"]["circuit_breaker"] > 0 and summary["failed"] == 0 and errors > 0.05 * finished
        assert _line(result, "dg thresholds:").startswith("dg thresholds: FAILED: rows not acknowledged because of")
    else:
        assert errors == 0 and summary["inserted"] > 0


def test_rows_cut_off_by_the_stop_do_not_count_against_max_fail_ratio(tmp_path):
    """Every third insert hangs for 20 s, so the stop (after a 1 s stop timeout) cuts those batches off in flight:
    their rows are in doubt, yet a 5 % gate passes, since the database reported no error."""
    faults = {"slow": {"every": 3, "seconds": 20}}
    with DoubleProcess(tmp_path / "crate.sqlite", faults=faults) as double:
        args = [*RUN, "-H", double.url, "--stop-timeout", "1", "--max-fail-ratio", "0.05"]
        result = run_locust(args, tmp_path)
    assert result.exit_code == 0, result.output[-3000:]
    summary = result.summary
    cut_off, errors, finished = _fail_ratio_line(result)
    assert cut_off == summary["in_doubt"] > 0.05 * (summary["inserted"] + summary["in_doubt"])
    assert (errors, finished) == (0, summary["inserted"]) and finished > 0
    assert _line(result, "dg thresholds:").startswith("dg thresholds: passed: ")


def test_checks_are_skipped_with_one_line_when_the_run_was_stopped_by_an_error(capsys):
    options = SimpleNamespace(**{spec.dest: spec.default for spec in OPTIONS})
    options.verify, options.min_rows_per_sec = True, 1000.0
    ledger = _ten_second_run(inserted=10, failed=0)
    environment = SimpleNamespace(parsed_options=options, host="http://127.0.0.1:1", process_exit_code=2)
    context = SimpleNamespace(ledger=ledger, settings=Settings.from_options(options))
    assert RunChecks(environment, context).run_checks() is None
    assert environment.process_exit_code == 2
    assert capsys.readouterr().out == "dg checks: skipped: the run was stopped by an error (exit code 2)\n"
