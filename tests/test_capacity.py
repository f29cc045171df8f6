"""The capacity finder (issue 15): its decisions on a modelled cluster, its measurements, and whole runs against the
CrateDB double with a known capacity (headless via the CLI; a master with workers in the web UI)."""

import locust  # noqa: F401

import json
import re
from types import SimpleNamespace

import pytest
from cratedb_double import DoubleProcess
from support import LiveLocust, free_ports, get_json, post_form, run_locust, sample_sum, scrape, wait_until

from dg_locust.capacity import (
    CUT_SHORT,
    NO_RISE,
    RISE,
    SLO_BROKEN,
    CapacityPlan,
    CapacitySearch,
    Counters,
    Snapshot,
    StageMeasurement,
    histogram_difference,
    measure_between,
    percentile,
)
from dg_locust.checks import threshold_verdict
from dg_locust.client import InsertOutcome
from dg_locust.ledger import RunLedger
from dg_locust.options import OPTIONS, OptionError, Settings
from dg_locust.webui import TAB_KEY, capacity_rows

# --- the search on a modelled cluster ---


class ModelMeter:
    """Measures a modelled cluster: rows/s, p99 and error ratio of each stage as functions of its users."""

    def __init__(self, rows_per_s, p99_ms=lambda users: 100.0, error_ratio=lambda users: 0.0):
        self.rows_per_s, self.p99_ms, self.error_ratio = rows_per_s, p99_ms, error_ratio
        self.search: CapacitySearch | None = None
        self.marks: list[float] = []
        self.batches_per_s = 100.0  # per process

    def mark(self, now):
        self.marks.append(now)

    def batches(self, now):
        return int((now - self.marks[-1]) * self.batches_per_s)

    def measure(self, now):
        users = self.search.current.users
        finished = 10_000
        errors = round(self.error_ratio(users) * finished)
        return StageMeasurement(
            seconds=now - self.marks[-1],
            rows_per_s=self.rows_per_s(users),
            inserted=finished - errors,
            failed=errors,
            in_doubt=0,
            errors=errors,
            finished=finished,
            batches=100,
            p99_ms=self.p99_ms(users),
            batch_size=900 + users,
            best_batch_size=1000 + users,
        )


def run_search(plan: CapacityPlan, meter: ModelMeter, workers: int = 1, limit_s: int = 10_000):
    """Tick the search once a second (as Locust does) until it is done; the users it asked for, second by second."""
    search = CapacitySearch(plan, meter)
    meter.search = search
    asked = []
    for second in range(limit_s):
        users = search.tick(float(second), workers)
        if users is None:
            return search, asked
        asked.append(users)
    raise AssertionError(f"not done after {limit_s} s: {search.stages}")


def plateau(knee_users: int, per_user: float = 10_000.0):
    """A cluster whose rows/s grow with the users up to ``knee_users`` and stay flat above."""
    return lambda users: per_user * min(users, knee_users)


def test_users_double_per_stage_until_rows_per_s_stop_rising_and_the_knee_is_the_capacity():
    meter = ModelMeter(plateau(knee_users=4))
    search, asked = run_search(CapacityPlan(stage_s=20, first_stage_s=40, margin=0.05), meter)
    assert [stage.users for stage in search.stages] == [1, 2, 4, 8]
    assert [stage.outcome for stage in search.stages] == [RISE, RISE, RISE, NO_RISE]
    result = search.result()
    assert (result.rows_per_s, result.users, result.best.number) == (40_000.0, 4, 3)
    assert result.batch_size == 1004  # the sizer's best size in the best stage
    assert search.stop_reason == "stage 4 (8 users) +0.0 % rows/s over stage 3, not more than the 5 % margin"
    # each stage holds its users for its length (the first for two stages), then the next begins
    assert asked == [1] * 40 + [2] * 20 + [4] * 20 + [8] * 20


def test_each_stage_is_measured_over_its_last_half_stage():
    meter = ModelMeter(plateau(knee_users=2))
    search, _ = run_search(CapacityPlan(stage_s=20, first_stage_s=40), meter)
    # each stage starts (0, 40, 60) and is measured 10 s before its end (40, 60, 80)
    assert meter.marks == [0.0, 30.0, 40.0, 50.0, 60.0, 70.0]
    assert [stage.measurement.seconds for stage in search.stages] == [10.0, 10.0, 10.0]


def test_on_a_slow_cluster_stages_wait_for_the_batches_the_sizer_needs():
    plan = CapacityPlan(stage_s=20, first_stage_s=40, first_settle_batches=48, settle_batches=16, measure_batches=16)
    meter = ModelMeter(plateau(knee_users=2))
    meter.batches_per_s = 1.0  # each process finishes one batch a second
    search, _ = run_search(plan, meter)
    timing = [(s["started_s"], s["measured_from_s"], s["ended_s"]) for s in search.result().as_dict()["stages"]]
    # stage 1: 48 batches after 48 s (planned: 30 s), then 16 more (planned: 10 s); stage 2: 16 batches (planned:
    # 10 s) and 16 more; stage 3 likewise
    assert timing == [(0.0, 48.0, 64.0), (64.0, 80.0, 96.0), (96.0, 112.0, 128.0)]
    assert [stage.settled_batches for stage in search.stages] == [48, 16, 16]


def test_a_cluster_too_slow_for_the_batches_is_measured_after_stretching_the_stage_four_times():
    plan = CapacityPlan(stage_s=20, first_stage_s=40, first_settle_batches=48, settle_batches=16, measure_batches=16)
    meter = ModelMeter(plateau(knee_users=2))
    meter.batches_per_s = 0.1
    search, _ = run_search(plan, meter)
    first = search.result().as_dict()["stages"][0]
    assert (first["measured_from_s"], first["ended_s"], first["settled_batches"]) == (120.0, 160.0, 12)


def test_a_stage_that_rises_by_no_more_than_the_margin_does_not_replace_the_best_stage():
    rows = {1: 10_000.0, 2: 20_000.0, 4: 20_800.0}  # +4 %: more load, about the same rows
    search, _ = run_search(CapacityPlan(stage_s=10, first_stage_s=10, margin=0.05), ModelMeter(rows.get))
    result = search.result()
    assert (result.rows_per_s, result.users) == (20_000.0, 2)
    assert search.stages[-1].outcome == NO_RISE and search.stages[-1].note.startswith("+4.0 % rows/s over stage 2")
    # with a smaller margin the same 4 % is a rise
    rows[8] = 20_900.0
    search, _ = run_search(CapacityPlan(stage_s=10, first_stage_s=10, margin=0.02), ModelMeter(rows.get))
    assert (search.result().users, len(search.stages)) == (4, 4)


def test_falling_rows_per_s_stop_the_search_and_keep_the_best_stage():
    rows = {1: 10_000.0, 2: 18_000.0, 4: 12_000.0}  # overload: more users, fewer rows
    search, _ = run_search(CapacityPlan(stage_s=10, first_stage_s=10), ModelMeter(rows.get))
    assert (search.result().rows_per_s, search.result().users) == (18_000.0, 2)
    assert search.stages[-1].note.startswith("-33.3 % rows/s over stage 2")


def test_a_stage_above_the_latency_slo_stops_the_search_and_is_not_the_capacity():
    meter = ModelMeter(plateau(knee_users=16), p99_ms=lambda users: 60.0 * users)
    search, _ = run_search(CapacityPlan(stage_s=10, first_stage_s=10, slo_p99_ms=200), meter)
    assert [stage.users for stage in search.stages] == [1, 2, 4]
    assert search.stages[-1].outcome == SLO_BROKEN
    assert search.stop_reason == "stage 3 broke the SLO: p99 240 ms is above --slo-p99-ms 200"
    assert (search.result().rows_per_s, search.result().users) == (20_000.0, 2)


def test_a_stage_above_the_error_slo_stops_the_search():
    meter = ModelMeter(plateau(knee_users=16), error_ratio=lambda users: 0.01 * users)
    search, _ = run_search(CapacityPlan(stage_s=10, first_stage_s=10, slo_max_error_ratio=0.03), meter)
    assert [stage.outcome for stage in search.stages] == [RISE, RISE, SLO_BROKEN]
    assert search.stages[-1].note == "error ratio 0.0400 is above --slo-max-error-ratio 0.03"


def test_no_capacity_when_the_first_stage_breaks_the_slo():
    meter = ModelMeter(plateau(knee_users=4), p99_ms=lambda users: 500.0)
    search, _ = run_search(CapacityPlan(stage_s=10, first_stage_s=10, slo_p99_ms=300), meter)
    result = search.result()
    assert (result.best, result.rows_per_s, result.users, result.batch_size) == (None, 0.0, 0, 0)
    assert result.summary_line() == (
        "dg capacity: none found within the SLO after 1 stages; stopped: stage 1 broke the SLO: p99 500 ms is above "
        "--slo-p99-ms 300"
    )
    assert result.as_dict()["rows_per_s"] == 0.0 and result.as_dict()["users"] is None


def test_a_stage_in_which_no_batch_finished_breaks_the_slo():
    meter = ModelMeter(plateau(knee_users=4))
    plan = CapacityPlan(stage_s=10, first_stage_s=10)
    search = CapacitySearch(plan, meter)
    meter.search = search
    meter.measure = lambda now: StageMeasurement(5, 0.0, 0, 0, 0, 0, 0, 0, None, 1000, 1000)
    for second in range(11):
        search.tick(float(second), 1)
    assert search.stages[0].outcome == SLO_BROKEN and "no batch finished" in search.stop_reason


def test_users_are_multiples_of_the_workers_up_to_the_user_limit():
    search, _ = run_search(CapacityPlan(stage_s=10, first_stage_s=10, max_users=20), ModelMeter(plateau(100)), 3)
    assert [(stage.users, stage.workers) for stage in search.stages] == [(3, 3), (6, 3), (12, 3), (20, 3)]
    assert search.stop_reason == "stage 4 ran --capacity-max-users 20 users"
    assert search.result().users == 20


def test_a_worker_joining_between_stages_gets_users_from_the_next_stage_on():
    plan = CapacityPlan(stage_s=10, first_stage_s=10)
    meter = ModelMeter(plateau(100))
    search = CapacitySearch(plan, meter)
    meter.search = search
    asked = [search.tick(float(second), 2 if second < 15 else 3) for second in range(25)]
    assert asked[:10] == [2] * 10 and asked[10:20] == [4] * 10 and asked[20:] == [12] * 5  # 4 per worker on 3


def test_the_run_time_limit_ends_the_search_before_a_stage_that_cannot_finish():
    meter = ModelMeter(plateau(100))
    search, asked = run_search(CapacityPlan(stage_s=20, first_stage_s=40, run_time_s=70), meter)
    assert [stage.users for stage in search.stages] == [1, 2]
    assert search.stop_reason == "--run-time 70s leaves no time for stage 3 (20 s)"
    assert len(asked) == 60
    # a limit shorter than the first stage cuts it short
    search, _ = run_search(CapacityPlan(stage_s=20, first_stage_s=40, run_time_s=30), ModelMeter(plateau(100)))
    assert search.stages[0].outcome == CUT_SHORT and search.result().best is None
    assert search.stop_reason == "--run-time 30s ran out during stage 1"


def test_a_run_stopped_mid_stage_reports_the_stages_measured_and_the_cut_one():
    meter = ModelMeter(plateau(100))
    search = CapacitySearch(CapacityPlan(stage_s=10, first_stage_s=10), meter)
    meter.search = search
    for second in range(25):
        search.tick(float(second), 1)
    search.finish()
    assert [stage.outcome for stage in search.stages] == [RISE, RISE, CUT_SHORT]
    assert search.stop_reason == "the run was stopped during stage 3"
    assert search.tick(26.0, 1) is None
    result = search.result()
    assert result.users == 2
    assert result.table_lines()[-1].split() == ["3", "4", "1", "-", "-", "-", "-", "cut", "short:", "the", "run"] + [
        "ended",
        "before",
        "the",
        "stage",
        "was",
        "measured",
    ]


def test_result_as_dict_is_json_and_holds_the_capacity_and_every_stage():
    search, _ = run_search(CapacityPlan(stage_s=20, first_stage_s=40), ModelMeter(plateau(knee_users=2)))
    data = json.loads(json.dumps(search.result().as_dict()))
    assert {key: data[key] for key in ("rows_per_s", "users", "workers", "stage", "batch_size", "p99_ms")} == {
        "rows_per_s": 20_000.0,
        "users": 2,
        "workers": 1,
        "stage": 2,
        "batch_size": 1002,
        "p99_ms": 100.0,
    }
    assert data["plan"] == {
        "stage_s": 20,
        "first_stage_s": 40,
        "measure_s": 10.0,
        "margin": 0.05,
        "max_users": 1024,
        "slo_p99_ms": None,
        "slo_max_error_ratio": 0.05,
    }
    assert [(s["stage"], s["users"], s["outcome"], s["best"]) for s in data["stages"]] == [
        (1, 1, RISE, False),
        (2, 2, RISE, True),
        (3, 4, NO_RISE, False),
    ]
    assert [(s["started_s"], s["measured_from_s"], s["ended_s"]) for s in data["stages"]] == [
        (0.0, 30.0, 40.0),
        (40.0, 50.0, 60.0),
        (60.0, 70.0, 80.0),
    ]


def test_the_plan_follows_the_settings_and_the_first_stage_is_longer_with_the_auto_sizer():
    options = SimpleNamespace(**{spec.dest: spec.default for spec in OPTIONS})
    options.capacity_stage_s, options.slo_p99_ms = 25.0, 300.0
    plan = CapacityPlan.from_settings(Settings.from_options(options), run_time_s=600)
    assert (plan.stage_s, plan.first_stage_s, plan.measure_s, plan.slo_p99_ms, plan.run_time_s) == (
        25.0,
        50.0,
        12.5,
        300.0,
        600,
    )
    assert (plan.first_settle_batches, plan.settle_batches, plan.measure_batches) == (96, 32, 16)
    options.batch_size = "5000"  # a fixed size has nothing to settle
    fixed = CapacityPlan.from_settings(Settings.from_options(options))
    assert (fixed.first_stage_s, fixed.first_settle_batches, fixed.settle_batches, fixed.measure_batches) == (
        25.0,
        0,
        0,
        16,
    )


@pytest.mark.parametrize(
    ("dest", "value", "message"),
    [
        ("capacity_stage_s", 2, "--capacity-stage-s / CAPACITY_STAGE_S must be between 4 and 86400 seconds, got 2"),
        ("capacity_margin", 1.5, "--capacity-margin / CAPACITY_MARGIN must be between 0 and 1, got 1.5"),
        ("capacity_max_users", 0, "--capacity-max-users / CAPACITY_MAX_USERS must be 1 or more, got 0"),
        ("slo_p99_ms", -1, "--slo-p99-ms / SLO_P99_MS must be 0 (no limit) or more, got -1"),
        ("slo_max_error_ratio", 2, "--slo-max-error-ratio / SLO_MAX_ERROR_RATIO must be between 0 and 1, got 2"),
    ],
)
def test_bad_capacity_options_are_one_line_errors(dest, value, message):
    options = SimpleNamespace(**{spec.dest: spec.default for spec in OPTIONS})
    setattr(options, dest, value)
    with pytest.raises(OptionError, match=re.escape(message)):
        Settings.from_options(options)


# --- measuring ---


def test_rows_per_s_are_summed_per_process_over_the_time_between_its_own_reports():
    begin = Snapshot(
        taken_at=100.0,
        sources={"w1": Counters(as_of=98.0, inserted=1_000), "w2": Counters(as_of=99.5, inserted=5_000)},
    )
    end = Snapshot(
        taken_at=110.0,
        sources={
            "w1": Counters(as_of=107.0, inserted=10_000),  # 9000 rows in the 9 s between its reports
            "w2": Counters(as_of=109.5, inserted=25_000),  # 20000 rows in 10 s
            "w3": Counters(as_of=108.0, inserted=4_000),  # joined during the window: 4000 rows in 8 s
        },
    )
    measured = measure_between(begin, end)
    assert measured.rows_per_s == pytest.approx(1_000 + 2_000 + 500)
    assert (measured.seconds, measured.inserted) == (10.0, 33_000)


def test_error_ratio_counts_errors_not_rows_the_stop_cut_off_and_restarted_counters_count_from_zero():
    begin = Snapshot(0.0, {"local": Counters(0.0, inserted=900, failed=100), "w": Counters(0.0, inserted=50_000)})
    end = Snapshot(
        10.0,
        {
            "local": Counters(10.0, inserted=9_900, failed=400, in_doubt=800, cut_off=500),
            "w": Counters(10.0, inserted=1_000),  # a new test on that worker: its counters went back
        },
    )
    measured = measure_between(begin, end)
    # local: 9000 inserted, 300 failed, 300 in doubt from errors (500 more cut off); w: 1000 from zero
    assert (measured.inserted, measured.failed, measured.in_doubt) == (10_000, 300, 800)
    assert (measured.errors, measured.finished) == (600, 10_600)
    assert measured.error_ratio == pytest.approx(600 / 10_600)
    assert measured.rows_per_s == pytest.approx(900 + 100)


def test_p99_comes_from_the_batches_of_the_window_only():
    begin = Snapshot(0.0, {}, latency_ms={2000: 50})  # slow batches before the window do not count
    end = Snapshot(10.0, {}, latency_ms={2000: 50, 100: 98, 150: 1, 400: 1})
    measured = measure_between(begin, end)
    assert (measured.batches, measured.p99_ms) == (100, 150.0)
    assert percentile({10: 1}, 0.99) == 10.0 and percentile({}, 0.99) is None
    assert percentile({1: 1, 2: 1, 3: 98}, 0.01) == 1.0
    # Locust's statistics were reset in between (--reset-stats): the later histogram is the window's
    assert histogram_difference({100: 5}, {100: 50, 200: 3}) == {100: 5}


# --- what the checks, the Rows tab and the metrics make of a result ---


def _finished_search(knee_users=2):
    search, _ = run_search(CapacityPlan(stage_s=10, first_stage_s=10), ModelMeter(plateau(knee_users)))
    return search


def test_min_rows_per_sec_judges_the_capacity_found_when_the_finder_ran():
    ledger = RunLedger()
    ledger.reset()
    ledger.for_class("A").record(InsertOutcome(10, 0, 0))
    capacity = _finished_search().result()  # 20000 rows/s
    passed = threshold_verdict(ledger, 15_000, 1.0, capacity)
    assert passed.passed and passed.line == "dg thresholds: passed: capacity 20000.0 rows/s >= --min-rows-per-sec 15000"
    failed = threshold_verdict(ledger, 25_000, 1.0, capacity)
    assert failed.line == "dg thresholds: FAILED: capacity 20000.0 rows/s is below --min-rows-per-sec 25000"
    meter = ModelMeter(plateau(2), p99_ms=lambda users: 900.0)
    none_found = run_search(CapacityPlan(stage_s=10, first_stage_s=10, slo_p99_ms=100), meter)[0].result()
    assert threshold_verdict(ledger, 1, 1.0, none_found).line == (
        "dg thresholds: FAILED: capacity (none found within the SLO) 0.0 rows/s is below --min-rows-per-sec 1"
    )
    assert threshold_verdict(ledger, 1, 1.0).line.startswith("dg thresholds: passed: mean ")  # no finder: the mean


def test_rows_tab_has_a_row_per_stage_and_the_capacity():
    result = _finished_search().result()
    rows = capacity_rows(result, live=None, now=1000.0)
    assert [row["name"] for row in rows] == [
        "capacity stage 1: 1 user (rise: the first stage)",
        "capacity stage 2: 2 users (best: +100.0 % rows/s over stage 1)",
        "capacity stage 3: 4 users (no rise: +0.0 % rows/s over stage 2, not more than the 5 % margin)",
        "capacity: 20000.0 rows/s at 2 users (stage 2); stopped: stage 3 (4 users) +0.0 % rows/s over stage 2, "
        "not more than the 5 % margin",
    ]
    assert [row["rows_per_s"] for row in rows] == [10_000.0, 20_000.0, 20_000.0, 20_000.0]
    assert rows[1]["best_batch_size"] == 1002
    # a stage being measured shows its window so far
    meter = ModelMeter(plateau(4))
    search = CapacitySearch(CapacityPlan(stage_s=10, first_stage_s=10), meter)
    meter.search = search
    for second in range(17):
        search.tick(float(second), 1)
    live = meter.measure(17.0)
    rows = capacity_rows(search.result(), live=live, now=17.0)
    assert rows[1]["name"] == "capacity stage 2: 2 users (measuring, 3 s left)"
    assert rows[1]["rows_per_s"] == 20_000.0
    assert rows[-1]["name"] == "capacity: 10000.0 rows/s at 1 user (stage 1)"
    # a stage past its planned settle time that still waits for batches says so
    meter = ModelMeter(plateau(4))
    meter.batches_per_s = 1.0
    search = CapacitySearch(CapacityPlan(stage_s=10, first_stage_s=10, first_settle_batches=50), meter)
    meter.search = search
    for second in range(8):
        search.tick(float(second), 1)
    names = [row["name"] for row in capacity_rows(search.result(), live=None, now=8.0)]
    assert names[0] == "capacity stage 1: 1 user (settling, waiting for the batches the sizer needs)"
    assert names[-1] == "capacity: none found within the SLO yet"


# --- whole runs against the CrateDB double ---
#
# The double's latency model (see tests/cratedb_double.py) sets the pace: every INSERT costs OVERHEAD_MS plus
# PER_ROW_US per row, and at most MAX_CONCURRENCY inserts run at once while the rest queue. The sizer may not go
# above BATCH_SIZE_MAX rows, the size at which rows/s per insert slot is highest, so once enough users keep every
# slot busy the double takes exactly
#     CAPACITY = MAX_CONCURRENCY * BATCH_SIZE_MAX / (OVERHEAD_MS + BATCH_SIZE_MAX * PER_ROW_US) = 40000 rows/s,
# and more users only queue (latency grows, rows/s do not). One user leaves a slot idle (about half of that); two
# users get close to it but leave the slots idle while they prepare their next batch; four or more keep the queue
# full. So rows/s rise with users up to the knee and then stay flat: the finder must stop there and report ~CAPACITY.
# The stage length keeps the run near a minute: 20 s for the first stage (the sizer grows from 1000 to ~4000 rows in
# about 3 windows of 2 s; the stage waits for its 96 settle batches, ~20 s for one user at ~0.2 s each) and 10 s for
# each later one, measured over its last 5 s.
OVERHEAD_MS, PER_ROW_US, MAX_CONCURRENCY, BATCH_SIZE_MAX = 40.0, 40.0, 2, 4_000
CAPACITY = MAX_CONCURRENCY * BATCH_SIZE_MAX / (OVERHEAD_MS / 1e3 + BATCH_SIZE_MAX * PER_ROW_US / 1e6)
TOLERANCE = 0.10
STAGE_ROW = re.compile(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+|-)\s+([\d.]+|-)\s+([\d.]+|-)\s+(\d+|-)\s+(.+)$", re.M)


def _latency_double(**options):
    return DoubleProcess(
        count_only=True,
        overhead_ms=OVERHEAD_MS,
        per_row_us=PER_ROW_US,
        max_concurrency=MAX_CONCURRENCY,
        **options,
    )


def test_the_finder_reports_the_doubles_capacity_within_10_percent_headless(tmp_path):
    assert CAPACITY == 40_000
    with _latency_double() as double:
        args = ["--headless", "--find-capacity", "--capacity-stage-s", "10", "--capacity-max-users", "16"]
        args += ["--batch-size-max", str(BATCH_SIZE_MAX), "--stop-timeout", "5", "-H", double.url, "--seed", "5"]
        # 36000 is within the band; the run's mean rows/s (its early stages included) stays far below it
        args += ["--min-rows-per-sec", str(int(CAPACITY * (1 - TOLERANCE)))]
        result = run_locust(args, tmp_path, timeout=120)
        stats = double.stats()
    report = result.output[-4000:]
    summary = result.summary
    found = re.search(
        r"^dg capacity: rows_per_s=([\d.]+) users=(\d+) workers=1 batch_size=(\d+) p99_ms=(\d+) "
        r"error_ratio=([\d.]+) stage=(\d+) of (\d+); stopped: (.+)$",
        result.stdout,
        re.M,
    )
    assert found, report
    rows_per_s, users, batch_size = float(found[1]), int(found[2]), int(found[3])
    assert abs(rows_per_s - CAPACITY) <= TOLERANCE * CAPACITY, report
    assert users >= 2 and 0 < batch_size <= BATCH_SIZE_MAX, report
    assert "not more than the 5 % margin" in found[8], report
    stages = STAGE_ROW.findall(result.stdout)
    assert [int(stage[1]) for stage in stages] == [2**k for k in range(len(stages))], report
    assert len(stages) == int(found[7]) >= 3, report
    assert stages[int(found[6]) - 1][7].startswith("best"), report
    # the knee: one user gets about half the capacity; the stages after the best do not rise by more than 5 %
    assert float(stages[0][3]) < 0.7 * CAPACITY, report
    # the rows the finder counted are the ones the double acknowledged, and the run stopped by itself
    assert summary["inserted"] == stats["rows_acknowledged"] > 0, report
    assert summary["rows_per_s"] < CAPACITY * (1 - TOLERANCE), report
    assert "dg thresholds: passed: capacity " in result.stdout, report
    assert result.exit_code == 0, report


def test_the_finder_runs_from_the_web_ui_on_a_master_with_workers_and_shows_its_stages(tmp_path):
    # A fixed batch size has nothing to settle, so every stage (the first too) lasts --capacity-stage-s.
    prometheus_port, web_port, master_port = free_ports(3, 2)
    with _latency_double() as double:
        args = ["--processes", "2", "-H", double.url, "--prometheus-port", str(prometheus_port)]
        args += ["--master-bind-host", "127.0.0.1", "--master-bind-port", str(master_port)]
        args += ["--master-port", str(master_port), "--web-host", "127.0.0.1", "--web-port", str(web_port)]
        args += ["--batch-size", str(BATCH_SIZE_MAX), "--capacity-stage-s", "8", "--capacity-max-users", "8"]
        args += ["--stop-timeout", "2"]  # Locust's workers are ready for the next test only this long after a stop
        with LiveLocust(args, tmp_path, "master") as process:
            web = f"http://127.0.0.1:{web_port}"
            assert wait_until(lambda: get_json(f"{web}/stats/requests").get("worker_count") == 2, timeout=30), (
                process.output[-3000:]
            )
            # started without --find-capacity: the form's box turns the finder on for this test
            form = {"user_count": 1, "spawn_rate": 1, "host": double.url, "find_capacity": "true"}
            answer = post_form(f"{web}/swarm", form)
            assert answer["success"] and "CapacityShape" in answer["message"], answer

            def tab_rows():
                report = get_json(f"{web}/stats/requests")
                (tab,) = [entry for entry in report.get("extended_stats", []) if entry["key"] == TAB_KEY]
                return report["state"], {row["name"]: row for row in tab["data"]}

            def measuring_stage_one():
                _, rows = tab_rows()
                return [name for name in rows if name.startswith("capacity stage 1: 2 users on 2 workers (measuring")]

            assert wait_until(measuring_stage_one, timeout=20), tab_rows()

            def stopped():
                state, rows = tab_rows()
                return rows if state == "stopped" else None

            rows = wait_until(stopped, timeout=60)
            assert rows, process.output[-3000:]
            metrics = scrape(f"http://127.0.0.1:{prometheus_port}/metrics")
            process.wait_for_output(r"^dg capacity stages")  # printed at test_stop, just after the state changed
            output = process.output

            # the box off: the next test runs the users asked for, without the finder and its rows
            assert wait_until(lambda: get_json(f"{web}/stats/requests").get("worker_count") == 2, timeout=30)
            form = {"user_count": 2, "spawn_rate": 2, "host": double.url, "find_capacity": "false", "run_time": "4s"}
            answer = post_form(f"{web}/swarm", form)
            assert answer["success"] and "CapacityShape" not in answer["message"], answer
            assert wait_until(lambda: tab_rows()[0] in ("spawning", "running"), timeout=10)
            plain = wait_until(stopped, timeout=30)
            assert plain and not [name for name in plain if name.startswith("capacity")], plain
            assert plain["Total"]["inserted"] > 0
    (capacity_row,) = [row for name, row in rows.items() if name.startswith("capacity: ")]
    stage_rows = [name for name in rows if name.startswith("capacity stage ")]
    # users step up in multiples of the workers: 2, 4, 8 (the limit). Two users already keep the double's two slots
    # nearly busy, so four may add no more than the margin and end the search there.
    users = [name.split(":")[1].split(" users")[0].strip() for name in stage_rows]
    assert users in (["2", "4"], ["2", "4", "8"]), rows
    found = re.search(r"^dg capacity: rows_per_s=([\d.]+) users=(\d+) workers=2 ", output, re.M)
    assert found, output[-3000:]
    assert abs(float(found[1]) - CAPACITY) <= TOLERANCE * CAPACITY, output[-3000:]
    assert capacity_row["rows_per_s"] == pytest.approx(float(found[1]), abs=0.1)
    assert sample_sum(metrics, "dg_capacity_rows_per_second", role="master") == pytest.approx(float(found[1]), 0.01)
    assert sample_sum(metrics, "dg_capacity_users", role="master") == int(found[2])
    assert sample_sum(metrics, "dg_capacity_stage", role="master") == len(stage_rows)
    assert sample_sum(metrics, "dg_capacity_done", role="master") == 1
    assert sample_sum(metrics, "dg_capacity_stage_rows_per_second", stage="1", users="2") > 0
