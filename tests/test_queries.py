"""The query workload's statements: shipped queries derived from each model, parameters drawn from the data front,
and query files (issue 14). Pure logic: no server."""

import locust  # noqa: F401

import json
import random

import numpy as np
import pytest

from dg_locust.model import MODELS_DIR, load_model, parse_model
from dg_locust.queries import (
    DataFront,
    Expectation,
    FieldStat,
    QueryFileError,
    QuerySpec,
    TagValue,
    bind,
    load_query_file,
    parse_queries,
    placeholder_count,
    shipped_queries,
)
from dg_locust.schema import table_for_model

MODEL_NAMES = ("temperature", "factory", "power_plant")


def _table(model, name=""):
    return table_for_model(model, table_option=name, partition="week", shards=4, replicas="0-1")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_shipped_model_gets_the_six_queries_with_one_param_per_placeholder(name):
    model = load_model(name)
    table = _table(model)
    specs = shipped_queries(model, table)
    group = next(tag.name for tag in model.tags if not tag.is_id)
    first_float = next(f.column for f in model.fields if f.sql_type == "DOUBLE PRECISION")
    assert [s.name for s in specs] == [
        "latest_per_sensor",
        "sensor_last_5m",
        f"downsample_1m_by_{group}",
        f"stats_5m_one_{group}",
        "out_of_range_5m",
        f"top10_{first_float}_5m",
    ]
    for spec in specs:
        assert placeholder_count(spec.statement) == len(spec.params), spec.name
        assert spec.statement.startswith("SELECT ") and f"FROM {table.qualified} " in spec.statement
        assert '"ts" >= ? AND "ts" <= ?' in spec.statement  # every query prunes partitions on ts
        assert spec.weight > 0


def test_queries_follow_the_table_option_and_quote_every_identifier():
    model = load_model("temperature")
    specs = shipped_queries(model, _table(model, "metrics.fridges"))
    assert all('FROM "metrics"."fridges" ' in s.statement for s in specs)
    stats = next(s for s in specs if s.name == "stats_5m_one_plant")
    assert 'percentile("value", 0.95) AS "p95_value"' in stats.statement
    assert stats.params[0] == TagValue("plant")
    out_of_range = next(s for s in specs if s.name == "out_of_range_5m")
    assert out_of_range.params[:2] == (FieldStat("value", "min"), FieldStat("value", "max"))


def _bare_model(tags: dict, fields: dict):
    return parse_model({"things": {"tags": tags, "fields": fields}})


def test_a_model_without_float_fields_or_other_tags_keeps_the_queries_it_can_answer():
    flags_only = _bare_model(
        {"id": "id"}, {"on": {"key": {"value": "on"}, "type": {"value": "BOOL"}, "true_ratio": {"value": 0.5}}}
    )
    assert [s.name for s in shipped_queries(flags_only, _table(flags_only))] == ["latest_per_sensor", "sensor_last_5m"]
    fridge = json.loads((MODELS_DIR / "temperature.json").read_text())["temperature"]["fields"]
    ids_only = _bare_model({"id": "id"}, fridge)
    names = [s.name for s in shipped_queries(ids_only, _table(ids_only))]
    assert "downsample_1m_by_id" in names and "stats_5m_one_id" in names


def _front(model, latest: dict[int, int]) -> DataFront:
    return DataFront(model, latest)


def test_a_query_about_one_sensor_ends_at_that_sensors_latest_row_and_others_at_the_newest_row():
    model = load_model("temperature")
    specs = {s.name: s for s in shipped_queries(model, _table(model))}
    latest = {1: 1_000_000, 2: 2_000_000, 7: 1_500_000}
    front = _front(model, latest)
    tags = model.tag_values(np.array([1, 2, 7]))
    for seed in range(20):
        bound = bind(specs["sensor_last_5m"], front, model, random.Random(seed))
        sensor, start, end = bound.args
        assert end == latest[sensor] and start == end - 300_000 and bound.min_rows == 1
        stats = bind(specs["stats_5m_one_plant"], front, model, random.Random(seed))
        plant, start, end = stats.args
        position = [1, 2, 7].index(next(s for s, t in latest.items() if t == end))
        assert plant == tags["plant"][position]
    latest_bound = bind(specs["latest_per_sensor"], front, model, random.Random(0))
    assert latest_bound.args == [2_000_000 - 60_000, 2_000_000]
    out_of_range = bind(specs["out_of_range_5m"], front, model, random.Random(0))
    assert out_of_range.args == [6.0, 7.4, 2_000_000 - 300_000, 2_000_000]


def test_answers_must_hold_the_rows_the_front_proves_exist():
    model = load_model("temperature")
    specs = {s.name: s for s in shipped_queries(model, _table(model))}
    newest = 10_000_000
    # sensors 1..30 (plants 0..5, 5 lines each) have their latest row inside the last minute, 31..40 long before
    latest = {i: newest - i * 1000 for i in range(1, 31)} | {i: newest - 3_600_000 for i in range(31, 41)}
    front = _front(model, latest)
    assert bind(specs["latest_per_sensor"], front, model, random.Random(0)).min_rows == 30
    assert bind(specs["top10_value_5m"], front, model, random.Random(0)).min_rows == 10
    assert bind(specs["downsample_1m_by_plant"], front, model, random.Random(0)).min_rows == 6  # plants 0..5
    assert bind(specs["out_of_range_5m"], front, model, random.Random(0)).min_rows == 1


def test_weights_pick_queries_in_proportion():
    from dg_locust.queries import pick

    specs = (QuerySpec("a", "SELECT 1", weight=3), QuerySpec("b", "SELECT 1", weight=1), QuerySpec("c", "x", weight=0))
    rng = random.Random(4)
    picked = [pick(specs, rng).name for _ in range(4000)]
    assert "c" not in picked
    assert 2.6 < picked.count("a") / picked.count("b") < 3.4


def test_placeholders_in_strings_identifiers_and_comments_do_not_count():
    assert placeholder_count("SELECT '?', \"a?\" FROM t WHERE x = ? -- y = ?\n AND z = ? /* ? */") == 2
    assert placeholder_count("SELECT $2, $1 FROM t") == 2


GOOD_FILE = {
    "queries": [
        {"shipped": "latest_per_sensor", "weight": 5},
        {
            "name": "plant_hourly",
            "sql": 'SELECT date_bin(INTERVAL \'1 hour\', "ts", 0) AS "hour", avg("value") AS "avg" '
            'FROM {table} WHERE "plant" = ? AND "ts" >= ? AND "ts" <= ? GROUP BY 1 ORDER BY 1;',
            "params": ["plant", "window_start", "window_end"],
            "window": "2h",
        },
        {
            "name": "hot_rows",
            "sql": 'SELECT count(*) FROM {table} WHERE "sensor_id" = $1 AND "value" > $2 AND "ts" >= $3 AND "ts" <= $4',
            "params": ["sensor_id", "value.max", "window_start", "window_end"],
            "window": 90,
            "min_rows": 1,
            "weight": 0.5,
        },
        {"name": "literal", "sql": "SELECT ? FROM {table} LIMIT ?", "params": [{"value": "x"}, 3], "min_rows": 0},
    ]
}


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_query_file_holds_own_statements_and_reweighted_shipped_ones(tmp_path, suffix):
    import yaml

    model = load_model("temperature")
    table = _table(model)
    path = tmp_path / f"queries{suffix}"
    path.write_text(json.dumps(GOOD_FILE) if suffix == ".json" else yaml.safe_dump(GOOD_FILE))
    specs = load_query_file(path, model, table)
    assert [s.name for s in specs] == ["latest_per_sensor", "plant_hourly", "hot_rows", "literal"]
    assert specs[0].weight == 5 and specs[0].statement == shipped_queries(model, table)[0].statement
    assert specs[1].statement.endswith("ORDER BY 1") and 'FROM "doc"."temperature" WHERE' in specs[1].statement
    assert specs[1].window_ms == 7_200_000 and specs[1].about_one_sensor
    assert specs[2].params[:2] == (TagValue("sensor_id"), FieldStat("value", "max"))
    assert specs[2].window_ms == 90_000 and specs[2].weight == 0.5
    assert specs[3].expect == Expectation(minimum=0) and not specs[3].about_one_sensor
    bound = bind(specs[2], _front(model, {3: 5_000_000}), model, random.Random(0))
    assert bound.args == [3, 7.4, 5_000_000 - 90_000, 5_000_000]
    assert bind(specs[3], _front(model, {3: 5_000_000}), model, random.Random(0)).args == ["x", 3]


def _entry(**fields):
    base = {"name": "q", "sql": 'SELECT * FROM {table} WHERE "ts" >= ?', "params": ["window_start"]}
    return {"queries": [{**base, **fields}]}


BAD_FILES = [
    ("not-a-mapping", [1, 2], "expected a mapping"),
    ("no-queries-key", {"query": []}, '"queries"'),
    ("extra-top-key", {"queries": [], "x": 1}, '"queries"'),
    ("empty", {"queries": []}, "empty"),
    ("entry-not-a-mapping", {"queries": ["SELECT 1"]}, "queries[0]"),
    ("unknown-key", _entry(wieght=2), "unknown key 'wieght'"),
    ("no-name", _entry(name=None), '"name"'),
    ("bad-name", _entry(name="two words"), '"name"'),
    ("reserved-name", _entry(name="data_front"), "data front's own statement"),
    ("no-sql", _entry(sql=""), '"sql"'),
    ("not-a-select", _entry(sql="DELETE FROM {table} WHERE ts >= ?"), "only SELECT"),
    ("too-few-params", _entry(params=[]), "1 placeholders but 0 params"),
    ("unknown-param", _entry(params=["window_begin"]), "unknown param 'window_begin'"),
    ("stat-of-a-bool", _entry(params=["button_press.max"]), "unknown param 'button_press.max'"),
    ("params-not-a-list", _entry(params="window_start"), "params must be a list"),
    ("negative-weight", _entry(weight=-1), "weight -1"),
    ("weight-not-a-number", _entry(weight="heavy"), "weight 'heavy'"),
    ("all-weights-zero", _entry(weight=0), "every weight is 0"),
    ("bad-window", _entry(window="soon"), "window 'soon'"),
    ("zero-window", _entry(window=0), "window 0"),
    ("bad-min-rows", _entry(min_rows=-2), "min_rows -2"),
    ("unknown-shipped", {"queries": [{"shipped": "fastest"}]}, "'fastest' is not a shipped query"),
    ("shipped-with-sql", {"queries": [{"shipped": "latest_per_sensor", "sql": "SELECT 1"}]}, "only a weight"),
    ("duplicate-name", {"queries": [_entry()["queries"][0], _entry()["queries"][0]]}, "used twice"),
]


@pytest.mark.parametrize(("content", "fragment"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_a_bad_query_file_is_one_line_naming_the_problem(content, fragment):
    model = load_model("temperature")
    with pytest.raises(QueryFileError) as raised:
        parse_queries(content, "q.yaml", model, _table(model))
    message = str(raised.value)
    assert "\n" not in message and message.startswith("--queries q.yaml: ")
    assert fragment in message, message


def test_unreadable_query_files_name_the_file(tmp_path):
    model = load_model("temperature")
    table = _table(model)
    for name, content, fragment in [
        ("missing.yaml", None, "file not found"),
        ("broken.yaml", "queries: [\n  - name: x\n   sql: y", "not valid YAML"),
        ("broken.json", '{"queries": [', "not valid JSON"),
    ]:
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        with pytest.raises(QueryFileError, match=fragment) as raised:
            load_query_file(path, model, table)
        assert "\n" not in str(raised.value) and str(path) in str(raised.value)
