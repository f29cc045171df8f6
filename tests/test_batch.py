import locust  # noqa: F401

import math
import tracemalloc

import numpy as np
import orjson
import pytest

from dg_locust import batch as batch_module
from dg_locust import feed as feed_module
from dg_locust.batch import Batch, RowLayout, _decimal_texts, all_rows_inserted, encode_bulk, encode_unnest
from dg_locust.feed import FeedPlan, RowFeed
from dg_locust.model import MODELS_DIR, load_model, parse_model
from dg_locust.schema import table_for_model

FLOAT_LAST = {
    "meters": {
        "tags": {"city": ["Zürich", 'say "hi"', "a,b", "x]y"], "meter_id": "id"},
        "fields": {
            "on": {"key": {"value": "on"}, "type": {"value": "BOOL"}, "true_ratio": {"value": 0.5}},
            "kwh": {
                "key": {"value": "kwh"},
                "type": {"value": "FLOAT"},
                "min": {"value": -50.0},
                "max": {"value": 1e6},
                "mean": {"value": 10.0},
                "stdev": {"value": 1000.0},
                "variance": {"value": 100.0},
                "error_rate": {"value": 0.1},
                "error_length": {"value": 2},
            },
        },
    }
}


def models():
    shipped = [load_model(MODELS_DIR / f"{name}.json") for name in ("temperature", "factory", "power_plant")]
    return shipped + [parse_model(FLOAT_LAST)]


def feed_for(model, ids, *, first_step=0, delta=0.5, ingest_ts=1600163743.5):
    table = table_for_model(model, table_option="", partition="week", shards=4, replicas="0")
    plan = FeedPlan(
        sensor_ids=np.asarray(ids),
        ingest_ts=ingest_ts,
        ingest_delta=delta,
        mode="fast",
        ingest_size=0,
        seed=5,
        first_step=first_step,
    )
    return RowFeed(model, table, plan), table


def same_json(fast: bytes, reference: bytes) -> None:
    """Equal after parsing, and equal by type too (1 and 1.0 and True compare equal in Python)."""
    got, want = orjson.loads(fast), orjson.loads(reference)
    assert got == want
    assert _types(got) == _types(want)


def _types(value):
    if isinstance(value, dict):
        return {key: _types(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_types(item) for item in value]
    return type(value).__name__


@pytest.mark.parametrize("model", models(), ids=lambda m: m.table)
@pytest.mark.parametrize("method", ["bulk", "unnest"])
def test_spliced_bodies_parse_to_the_reference_encoding(model, method):
    feed, table = feed_for(model, range(1, 8))
    statement = table.insert_sql(method)
    reference = encode_unnest if method == "unnest" else encode_bulk
    # Sizes that start and end mid-step, fit inside one step, span many steps, and take exactly whole steps.
    for size in (1, 3, 7, 5, 30, 2, 14, 7, 1, 100, 6):
        batch = feed.take(size)
        assert batch.row_count == size
        body = batch.encode(method, statement)
        same_json(body, reference(statement, batch.columns))


def test_bulk_rows_are_the_columns_zipped():
    feed, table = feed_for(load_model("temperature"), [3, 1, 600], first_step=10, delta=0.25, ingest_ts=1.0001)
    feed.take(2)
    batch = feed.take(5)
    rows = orjson.loads(batch.encode("bulk", table.insert_sql("bulk")))["bulk_args"]
    ts, plant, line, ids, values, buttons = batch.columns
    assert [row[3] for row in rows] == [600, 3, 1, 600, 3]
    assert [row[0] for row in rows] == ts.tolist() == [1000 + 250 * 10, 3750, 3750, 3750, 4000]
    assert [row[4] for row in rows] == values.tolist()
    assert [row[5] for row in rows] == buttons.tolist()
    assert all(isinstance(row[5], bool) and isinstance(row[0], int) for row in rows)


def test_feed_columns_carry_each_sensors_tags_and_step_timestamps():
    model = parse_model(FLOAT_LAST)
    feed, _ = feed_for(model, [2, 4, 9], first_step=3)
    feed.take(1)
    batch = feed.take(4)
    ts, city, meter, on, kwh = batch.columns
    assert meter.tolist() == [4, 9, 2, 4]
    assert city.tolist() == ["x]y", "Zürich", 'say "hi"', "x]y"]
    assert ts.tolist() == [1600163745000, 1600163745000, 1600163745500, 1600163745500]
    assert (batch.first_step, batch.last_step) == (3, 4)
    assert on.dtype == bool and kwh.dtype == np.float64


@pytest.mark.parametrize("method", ["bulk", "unnest"])
def test_extreme_floats_and_bools_encode_like_python_values(method):
    values = np.array([0.0, -0.0, 1.0, -1.5, 1e-300, 5e-324, 1.7976931348623157e308, 6.4, 0.1 + 0.2, 123456789.0, 1e16])
    flags = np.array([True, False] * 5 + [True])
    layout = RowLayout(
        ["ts", "name", "id", "x", "flag"],
        "ts",
        {"name": np.array(["ä", "\\", "\n", "", "é,]"], dtype=str), "id": np.arange(1, 6)},
        ["x", "flag"],
        base_ms=-5,
        delta_ms=1000 / 3,
    )
    for first_row in (0, 3, 5, 7):
        batch = Batch(
            layout=layout, first_row=first_row, row_count=11, fields=(values, flags), first_step=0, last_step=0
        )
        statement = "INSERT INTO t"
        reference = encode_unnest if method == "unnest" else encode_bulk
        same_json(batch.encode(method, statement), reference(statement, batch.columns))
        assert all(math.isfinite(v) for v in batch.columns[3])


def test_fields_orjson_would_write_differently_fall_back_to_the_reference():
    layout = RowLayout(["ts", "id", "x"], "ts", {"id": np.arange(1, 4)}, ["x"], base_ms=0, delta_ms=500.0)
    values = np.array([6.4, 0.1, 7.3], dtype=np.float32)  # orjson writes float32 shorter than tolist() does
    batch = Batch(layout=layout, first_row=1, row_count=3, fields=(values,), first_step=0, last_step=1)
    for method, reference in (("bulk", encode_bulk), ("unnest", encode_unnest)):
        assert orjson.loads(batch.encode(method, "s")) == orjson.loads(reference("s", batch.columns))


def test_a_batch_of_plain_columns_uses_the_reference_encoding():
    columns = (np.array([1, 2]), ["a", "b"], np.array([0.5, 1.5]), np.array([True, False]))
    batch = Batch(columns=columns, row_count=2, first_step=0, last_step=0)
    assert batch.encode("bulk", "s") == encode_bulk("s", columns)
    assert orjson.loads(batch.encode("bulk", "s"))["bulk_args"] == [[1, "a", 0.5, True], [2, "b", 1.5, False]]
    assert orjson.loads(batch.encode("unnest", "s"))["args"] == [[1, 2], ["a", "b"], [0.5, 1.5], [True, False]]


# --- reading a bulk answer without parsing every result ---


def ok_answer(rows: int, duration=b"1.25") -> bytes:
    return b'{"cols":[],"duration":' + duration + b',"results":[' + b",".join([b'{"rowcount":1}'] * rows) + b"]}"


def test_an_answer_with_every_row_inserted_is_recognised():
    assert all_rows_inserted(ok_answer(1), 1)
    assert all_rows_inserted(ok_answer(10_000), 10_000)
    assert all_rows_inserted(orjson.dumps({"results": [{"rowcount": 1}] * 3, "cols": []}), 3)


@pytest.mark.parametrize(
    "body,rows",
    [
        (ok_answer(3), 2),  # more results than rows
        (ok_answer(3), 4),  # fewer
        (ok_answer(0), 0),
        (ok_answer(3).replace(b'{"rowcount":1}]', b'{"rowcount":-2}]'), 3),  # a failed row
        (ok_answer(3).replace(b'{"rowcount":1},', b'{"rowcount":0},', 1), 3),
        (ok_answer(2).replace(b"]}", b',{"rowcount":-2,"error":{"code":4000,"message":"x"}}]}'), 3),
        (ok_answer(3)[:-1], 3),  # truncated: not JSON
        (ok_answer(3, duration=b"nope"), 3),  # broken outside the array
        (ok_answer(3) + b'"results":[]', 3),
        (b'{"results":[{"rowcount":1}],"results":[]}', 1),  # a duplicate key: the last one counts
        (b'{"results": [{"rowcount":1}]}', 1),  # other spacing: let the full parse decide
        (b'[{"results":[{"rowcount":1}]}]', 1),
        (b'{"cols":[],"rowcount":1}', 1),
    ],
)
def test_anything_else_goes_to_the_full_parse(body, rows):
    assert not all_rows_inserted(body, rows)


def test_decimal_texts_are_what_orjson_writes_for_each_integer():
    edge = [0, 1, 9, 10, 99, 100, -1, -10, 2**31, 2**32 - 1, 2**32, 10**18, 2**63 - 1, -(2**63)]
    randoms = np.random.default_rng(3).integers(-(2**63), 2**63 - 1, 5000).tolist()
    for values in (edge, randoms, list(range(1, 2000)), [7], [-7]):
        texts = _decimal_texts(np.array(values, dtype=np.int64))
        assert texts.tolist() == [orjson.dumps(value) for value in values]


@pytest.mark.parametrize("model", [load_model("power_plant"), parse_model(FLOAT_LAST)], ids=lambda m: m.table)
@pytest.mark.parametrize("method", ["bulk", "unnest"])
def test_bodies_of_a_fleet_larger_than_its_batches_parse_to_the_reference_encoding(model, method, monkeypatch):
    # The limits of a large fleet, scaled down: no bulk tag objects kept, tag texts built in blocks, rows generated
    # in parts of a step.
    monkeypatch.setattr(batch_module, "_BULK_OBJECTS_MAX_SENSORS", 100)
    monkeypatch.setattr(batch_module, "_TEXT_BLOCK", 64)
    monkeypatch.setattr(feed_module, "GENERATION_GRAIN", 50)
    sensors = 701
    feed, table = feed_for(model, range(1_000_000, 1_000_000 + sensors), first_step=3)
    statement = table.insert_sql(method)
    reference = encode_unnest if method == "unnest" else encode_bulk
    # Inside a step, up to a step's end, across one step boundary, and across two (a batch larger than a step).
    for size in (1, 50, 649, 1, 2, 3, 600, 1500, 4, 120):
        batch = feed.take(size)
        assert batch.row_count == size
        same_json(batch.encode(method, statement), reference(statement, batch.columns))
    assert feed.rows_generated < 1 + 50 + 649 + 1 + 2 + 3 + 600 + 1500 + 4 + 120 + 50


def test_a_feed_of_a_million_sensors_keeps_a_few_bytes_per_sensor():
    model = load_model("temperature")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        feed, table = feed_for(model, np.arange(1, 1_000_001))
        for method in ("bulk", "unnest"):
            feed.take(20_000).encode(method, table.insert_sql(method))
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # ids 8, walk state 9, tag codes 2, bulk tag texts 12, unnest tag texts 3 x (text + 5): about 60 bytes
    assert kept < 100 * 1_000_000
