import locust  # noqa: F401

from dg_locust.client import InsertOutcome
from dg_locust.ledger import RunLedger


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_every_row_lands_in_exactly_one_counter_and_the_summary_says_so():
    clock = FakeClock()
    ledger = RunLedger(clock=clock)
    ledger.reset()
    rows = ledger.for_class("TemperatureUser")
    rows.record(InsertOutcome(1000, 0, 0))
    rows.record(InsertOutcome(990, 10, 0, error="10 of 1000 rows rejected"))
    rows.record(InsertOutcome(0, 0, 1000, error="timeout"))
    rows.record(InsertOutcome(0, 1000, 0, retries=2, error="HTTP 503"))
    rows.batch_size = 1000
    clock.now += 10
    ledger.stopped_at = clock()
    totals = ledger.totals()
    assert (totals.inserted, totals.failed, totals.in_doubt, totals.retries) == (1990, 1010, 1000, 2)
    assert totals.attempted == 4000
    assert (
        ledger.summary_line() == "dg summary: inserted=1990 failed=1010 in_doubt=1000 rows_per_s=199.0 batch_size=1000"
    )


def test_master_adds_the_latest_cumulative_report_of_each_worker():
    ledger = RunLedger()
    ledger.reset()
    ledger.merge_worker_report("w1", {"TemperatureUser": {"inserted": 100, "failed": 1, "batch_size": 500}})
    ledger.merge_worker_report("w2", {"TemperatureUser": {"inserted": 50, "in_doubt": 5, "batch_size": 800}})
    # a later report of w1 replaces its earlier one: reports are cumulative, never deltas
    ledger.merge_worker_report("w1", {"TemperatureUser": {"inserted": 300, "failed": 1, "batch_size": 600}})
    totals = ledger.totals()
    assert (totals.inserted, totals.failed, totals.in_doubt) == (350, 1, 5)
    assert ledger.last_batch_size() == 800


def test_rows_cut_off_by_the_stop_are_in_doubt_and_counted_apart_also_on_the_master():
    ledger = RunLedger()
    ledger.reset()
    rows = ledger.for_class("TemperatureUser")
    rows.record(InsertOutcome(100, 0, 20, error="timeout"))
    rows.record_cut_off(30)
    totals = ledger.totals()
    assert (totals.in_doubt, totals.cut_off, totals.batches, totals.attempted) == (50, 30, 2, 150)
    assert (totals.not_acknowledged_by_error, totals.finished) == (20, 120)
    master = RunLedger()
    master.reset()
    master.merge_worker_report("w1", ledger.local_report())  # what a worker ships with its report
    assert (master.totals().in_doubt, master.totals().cut_off) == (50, 30)
    assert master.summary_line().startswith("dg summary: inserted=100 failed=0 in_doubt=50 ")


def test_a_new_test_starts_from_zero():
    ledger = RunLedger()
    ledger.reset()
    ledger.for_class("A").record(InsertOutcome(5, 0, 0))
    ledger.merge_worker_report("w1", {"A": {"inserted": 7}})
    ledger.reset()
    assert ledger.totals().inserted == 0
