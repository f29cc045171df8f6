import locust  # noqa: F401

import numpy as np
import pytest

from dg_locust import feed as feed_module
from dg_locust.feed import FeedPlan, RowFeed
from dg_locust.model import MODELS_DIR, load_model
from dg_locust.schema import table_for_model

MODEL = load_model(MODELS_DIR / "temperature.json")
TABLE = table_for_model(MODEL, table_option="", partition="week", shards=4, replicas="0-1")
COLUMNS = list(TABLE.column_names)


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_feed(ids=range(1, 11), *, size=0, mode="fast", delta=0.5, ingest_ts=1600163743.5, clock=None, seed=1):
    plan = FeedPlan(
        sensor_ids=np.array(list(ids)),
        ingest_ts=ingest_ts,
        ingest_delta=delta,
        mode=mode,
        ingest_size=size,
        seed=seed,
    )
    return RowFeed(MODEL, TABLE, plan, wall_clock=clock or FakeClock())


def rows_of(batch) -> list[tuple]:
    column = dict(zip(COLUMNS, batch.columns, strict=True))
    return list(zip(column["sensor_id"].tolist(), column["ts"].tolist(), strict=True))


def test_batches_are_the_next_rows_in_time_order_and_never_repeat():
    feed = make_feed()
    seen = []
    for size in (3, 7, 25, 1, 64):  # sizes that cut steps in the middle
        batch = feed.take(size)
        assert batch.row_count == size
        seen += rows_of(batch)
    assert len(seen) == len(set(seen)) == 100
    expected = [(sensor, 1600163743500 + step * 500) for step in range(10) for sensor in range(1, 11)]
    assert seen == expected


def test_ingest_size_limits_each_sensor_and_exhausts_the_feed():
    feed = make_feed(ids=range(5, 9), size=3)
    rows = []
    while (batch := feed.take(5)) is not None:
        rows += rows_of(batch)
    assert len(rows) == 4 * 3
    assert feed.exhausted
    assert sorted({sensor for sensor, _ in rows}) == [5, 6, 7, 8]


def test_consecutive_mode_hands_out_a_step_only_when_its_wall_time_has_come():
    clock = FakeClock(5000.0)
    feed = make_feed(ids=range(1, 5), mode="consecutive", delta=2.0, clock=clock)
    first = feed.take(100)
    assert first.row_count == 4  # step 0 only
    assert feed.take(100) is None
    assert feed.seconds_until_due() == pytest.approx(2.0)
    clock.now += 2.0
    assert feed.take(100).row_count == 4
    clock.now += 10.0  # five more steps are due
    assert feed.take(100).row_count == 20
    assert not feed.exhausted


def test_step_limit_caps_what_is_handed_out():
    feed = make_feed(ids=range(1, 3))
    feed.step_limit = 2
    rows = []
    while (batch := feed.take(3)) is not None:
        rows += rows_of(batch)
    assert len(rows) == 4
    assert not feed.exhausted  # endless: waiting for a larger limit, not done
    feed.step_limit = 3
    assert feed.take(10).row_count == 2


def test_columns_follow_the_table_and_carry_the_model_tags():
    feed = make_feed(ids=[1, 2, 501])
    batch = feed.take(3)
    column = dict(zip(COLUMNS, batch.columns, strict=True))
    tags = MODEL.tag_values(np.array([1, 2, 501]))
    assert column["plant"].tolist() == tags["plant"].tolist()
    assert column["line"].tolist() == tags["line"].tolist()
    assert column["button_press"].dtype == bool
    assert np.all((column["value"] >= 6.0) & (column["value"] <= 7.4))


def test_same_seed_same_rows():
    a, b = make_feed(seed=3), make_feed(seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a.take(50).columns, b.take(50).columns, strict=True))


@pytest.fixture
def small_grain(monkeypatch):
    """A fleet of 30 sensors behaves like one larger than the generation grain: steps are generated in parts."""
    monkeypatch.setattr(feed_module, "GENERATION_GRAIN", 8)


def test_a_step_larger_than_the_grain_is_generated_in_parts_just_ahead_of_the_batches(small_grain):
    feed = make_feed(ids=range(1, 31))
    seen = []
    for size in (3, 7, 25, 1, 64, 2, 30, 8):
        batch = feed.take(size)
        assert batch.row_count == size
        seen += rows_of(batch)
        assert feed.rows_generated - len(seen) < 8  # never more than a grain generated ahead
        assert feed.next_step == len(seen) // 30
    expected = [(sensor, 1600163743500 + step * 500) for step in range(5) for sensor in range(1, 31)]
    assert seen == expected[:140]


def test_parts_of_a_step_are_due_with_the_step_and_the_lease_still_counts_whole_steps(small_grain):
    clock = FakeClock(5000.0)
    feed = make_feed(ids=range(1, 31), mode="consecutive", delta=2.0, clock=clock)
    feed.step_limit = 2
    assert feed.take(10).row_count == 10
    assert feed.seconds_until_due() == 0.0  # the rest of step 0 is due already
    assert feed.take(100).row_count == 20
    assert feed.take(100) is None
    assert feed.seconds_until_due() == pytest.approx(2.0)
    clock.now += 10.0  # five more steps are due, but the lease allows one
    assert feed.take(45).row_count == 30
    assert feed.take(45) is None and not feed.exhausted
