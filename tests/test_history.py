"""The rows history: rates from cumulative counters that arrive in steps, groups, bounded memory, and new tests."""

import locust  # noqa: F401

import pytest

from dg_locust.history import LOCAL, RunHistory


def counters(inserted, failed=0, in_doubt=0, batch_size=0, best_batch_size=0):
    return {
        "inserted": inserted,
        "failed": failed,
        "in_doubt": in_doubt,
        "batch_size": batch_size,
        "best_batch_size": best_batch_size,
    }


def test_the_rate_is_there_from_the_first_look_then_spans_the_window():
    history = RunHistory(window_s=10)
    history.reset(100.0)
    history.observe(LOCAL, "A", 102.0, counters(2000))
    assert history.current(102.0)["total"]["inserted_per_s"] == pytest.approx(1000.0)  # since the start, not 0
    for second in range(3, 31):
        history.observe(LOCAL, "A", 100.0 + second, counters(1000 * second if second <= 20 else 20000))
    # 20 s of 1000 rows/s, then nothing for 10 s: the window holds only the idle seconds
    assert history.current(130.0)["total"]["inserted_per_s"] == pytest.approx(0.0)


def test_worker_reports_every_three_seconds_give_a_steady_rate_not_bursts():
    history = RunHistory(window_s=10)
    history.reset(0.0)
    rates = []
    for report in range(1, 21):  # a worker inserting 500 rows/s, reporting every 3 s (arrival jitter 0.1 s)
        arrival = report * 3.0 + (0.1 if report % 2 else 0.0)
        history.observe("w1", "A", arrival, counters(1500 * report))
        for tick in (arrival + 0.5, arrival + 1.5, arrival + 2.5):
            rates.append(history.current(tick)["worker:w1"]["inserted_per_s"])
    steady = rates[12:]
    assert min(steady) > 500 * 0.95 and max(steady) < 500 * 1.05


def test_totals_add_up_classes_and_workers_and_sizes_are_the_largest():
    history = RunHistory(window_s=10)
    history.reset(0.0)
    for source, user_class, rows, size in (("w1", "A", 1000, 400), ("w2", "A", 3000, 800), ("w2", "B", 5000, 100)):
        history.observe(
            source, user_class, 10.0, counters(rows, failed=rows // 10, batch_size=size, best_batch_size=size)
        )
    now = history.current(10.0)
    assert now["total"]["inserted_per_s"] == pytest.approx(900.0)
    assert now["total"]["failed_per_s"] == pytest.approx(90.0)
    assert now["class:A"]["inserted_per_s"] == pytest.approx(400.0)
    assert now["worker:w2"]["inserted_per_s"] == pytest.approx(800.0)
    assert (now["total"]["batch_size"], now["class:B"]["batch_size"], now["worker:w1"]["best_batch_size"]) == (
        800,
        100,
        400,
    )
    history.set_worker_label("w1", "worker 0 (host)")
    history.set_worker_label("w2", "worker 1 (host)")
    keys = [(group.kind, group.label) for group in history.groups()]
    assert keys == [
        ("total", "Total"),
        ("class", "A"),
        ("class", "B"),
        ("worker", "worker 0 (host)"),
        ("worker", "worker 1 (host)"),
    ]


def test_a_worker_that_stops_reporting_falls_to_zero():
    history = RunHistory(window_s=10, stale_after_s=7)
    history.reset(0.0)
    for second in range(3, 31, 3):
        history.observe("w1", "A", float(second), counters(300 * second))
    assert history.current(31.0)["total"]["inserted_per_s"] == pytest.approx(300.0)
    assert history.current(45.0)["total"]["inserted_per_s"] == pytest.approx(0.0)  # no report since 30 s


def test_samples_share_one_time_axis_and_a_late_group_has_no_values_before_it_appeared():
    history = RunHistory(window_s=10, interval_s=1)
    history.reset(0.0)
    assert not history.sample(0.5)  # nothing counted yet: no sample
    history.observe(LOCAL, "A", 1.0, counters(100, batch_size=100))
    assert history.sample(1.0, {"latency/p50": 12})
    assert not history.sample(1.2)  # not due
    history.observe(LOCAL, "B", 2.0, counters(50))
    history.observe(LOCAL, "A", 2.0, counters(300, batch_size=200))
    assert history.sample(2.0)
    data = history.export()
    assert data["time"] == [1.0, 2.0]
    assert data["series"]["class:A/batch_size"] == [100, 200]
    assert data["series"]["class:B/inserted_per_s"] == [None, 25.0]
    assert data["series"]["latency/p50"] == [12, None]
    assert history.export(since=1.0)["time"] == [2.0]
    assert history.export(since=1.0)["series"]["class:A/batch_size"] == [200]


def test_memory_is_bounded_and_the_whole_run_stays_covered():
    history = RunHistory(window_s=10, interval_s=1, capacity=100)
    history.reset(0.0)
    for second in range(1, 1001):
        history.observe(LOCAL, "A", float(second), counters(10 * second))
        history.sample(float(second))
    data = history.export()
    assert len(data["time"]) <= 100
    assert data["time"][0] < 20 and data["time"][-1] > 980  # the start and the end are both still there
    assert data["interval_s"] >= 10
    assert all(value == pytest.approx(10.0) for value in data["series"]["total/inserted_per_s"][5:])


def test_a_new_test_starts_empty():
    history = RunHistory()
    history.reset(0.0)
    history.observe("w1", "A", 5.0, counters(500))
    history.sample(5.0)
    history.reset(100.0)
    assert history.export()["time"] == [] and history.current(101.0) == {"total": history.current(101.0)["total"]}
    assert history.current(101.0)["total"]["inserted_per_s"] == 0.0
    assert [group.key for group in history.groups()] == ["total"]
