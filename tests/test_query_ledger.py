"""Query accounting: latencies rounded up to 3 significant digits, percentiles, worker reports merged on a master."""

import locust  # noqa: F401

import pytest

from dg_locust.query_ledger import QueryLedger, QueryTally, latency_key


@pytest.mark.parametrize(
    ("seconds", "key"),
    [(0.0000004, 1), (0.000123, 123), (0.0012344, 1240), (0.0025, 2500), (0.25000001, 251000), (3.14159, 3150000)],
)
def test_latencies_are_kept_in_microseconds_rounded_up_to_3_significant_digits(seconds, key):
    assert latency_key(seconds) == key


def test_bucket_counts_are_exact_at_bounds_of_3_significant_digits():
    tally = QueryTally()
    for seconds in (0.0009, 0.001, 0.0010001, 0.0024999, 0.0025, 0.0026):
        tally.record(seconds, rows=1, failed=False)
    assert tally.count_at_or_below(0.001) == 2
    assert tally.count_at_or_below(0.0025) == 5
    assert tally.count_at_or_below(60.0) == 6


def test_percentiles_are_nearest_rank_within_1_percent():
    tally = QueryTally()
    for ms in range(1, 101):  # 1..100 ms
        tally.record(ms / 1000, rows=ms, failed=ms > 98)
    assert tally.percentile_ms(0.5) == 50
    assert tally.percentile_ms(0.95) == 95
    assert tally.percentile_ms(0.99) == 99
    assert tally.percentile_ms(1.0) == 100
    assert tally.requests == 100 and tally.failures == 2
    assert tally.rows_per_answer == pytest.approx(sum(range(1, 101)) / 98)
    assert QueryTally().percentile_ms(0.5) == 0.0


def test_a_master_adds_up_its_workers_latest_cumulative_reports():
    worker = QueryLedger()
    worker.record("QueryUser", "doc.t", "q1", 0.010, 5, False)
    master = QueryLedger()
    master.merge_worker_report("w1", worker.local_report())
    worker.record("QueryUser", "doc.t", "q1", 0.030, 7, True)
    master.merge_worker_report("w1", worker.local_report())  # replaces w1's earlier report: counters are cumulative
    other = QueryLedger()
    other.record("QueryUser", "doc.t", "q1", 0.020, 1, False)
    other.record("QueryUser", "doc.t", "q2", 0.002, 0, False)
    master.merge_worker_report("w2", other.local_report())
    q1, q2 = master.per_query()
    assert (q1.query, q1.requests, q1.failures, q1.rows) == ("q1", 3, 1, 13)
    assert q1.percentile_ms(1.0) == 30 and q1.percentile_ms(0.5) == 20
    assert q1.seconds == pytest.approx(0.06)
    assert (q2.query, q2.requests) == ("q2", 1)
    assert master.total().requests == 4


def test_the_summary_puts_query_latency_next_to_rows_per_second():
    clock = iter([100.0, 110.0])
    ledger = QueryLedger(clock=lambda: next(clock))
    ledger.reset()
    assert ledger.summary_lines(5.0) == []
    for ms in (4, 8):
        ledger.record("QueryUser", "doc.t", "latest", ms / 1000, 500, False)
    ledger.stopped_at = ledger.clock()
    assert ledger.summary_lines(12345.67) == [
        "dg queries: requests=2 failed=0 queries_per_s=0.2 rows_per_s=12345.7",
        "dg query latest: requests=2 failed=0 p50_ms=4 p95_ms=8 p99_ms=8 max_ms=8 rows_per_answer=500.0",
    ]
