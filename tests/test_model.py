import locust  # noqa: F401

import copy
import json

import numpy as np
import pytest

from dg_locust.model import MODELS_DIR, BoolField, FloatField, ModelError, TagSpec, load_model, parse_model

SHIPPED = sorted(MODELS_DIR.glob("*.json"))

# The reference's fridge example as tsperf ships it: descriptions at every level and units beside values.
TSPERF_FRIDGE = """{
    "description": "this json file contains a tables and it's structure",
    "temperature": {
        "tags": {
            "description": "describes the database structure",
            "plant": 100,
            "line": 5,
            "sensor_id": "id"
        },
        "fields": {
            "description": "fields contain all measured values associated with a tag",
            "temperature": {
                "description": "temperature measured in a fridge",
                "key": {"description": "key used in the database", "value": "value"},
                "type": {"description": "calculation differs for different types", "value": "FLOAT"},
                "min": {"value": 6.0, "unit": "°C", "description": "the minimum value"},
                "max": {"value": 7.4, "unit": "°C", "description": "the maximum value"},
                "mean": {"value": 6.4, "unit": "°C", "description": "the average value"},
                "stdev": {"value": 0.2, "description": "the standard deviation"},
                "variance": {"value": 0.03, "description": "the expectation of the squared deviation"},
                "error_rate": {"value": 0.005, "description": "the chance that the value is outside"},
                "error_length": {"value": 1.08, "description": "the average consecutive values outside"}
            },
            "button": {
                "description": "indicating a pressed button",
                "key": {"description": "key used in the database", "value": "button_press"},
                "type": {"value": "BOOL"},
                "true_ratio": {"description": "how high is the chance of this boolean to be true", "value": 0.001}
            }
        }
    }
}"""


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_model_loads_by_path_and_by_name(path):
    model = load_model(path)

    assert model.source == str(path)
    assert sum(tag.is_id for tag in model.tags) == 1
    assert model.fields
    assert len({column for column, _ in model.columns()}) == len(model.columns())
    by_name = load_model(path.stem)
    assert (by_name.table, by_name.tags, by_name.fields) == (model.table, model.tags, model.fields)


def test_shipped_temperature_model_is_the_fridge():
    model = load_model("temperature")

    assert model.table == "temperature"
    assert model.description
    assert [(t.name, t.sql_type) for t in model.tags] == [
        ("plant", "INTEGER"),
        ("line", "INTEGER"),
        ("sensor_id", "INTEGER"),
    ]
    assert model.fields == (
        FloatField("temperature", "value", 6.0, 7.4, 6.4, 0.2, 0.03, 0.005, 1.08, precision=2),
        BoolField("button", "button_press", 0.001),
    )


def test_reference_fridge_file_parses_with_units_and_descriptions(tmp_path):
    path = tmp_path / "fridge.json"
    path.write_text(TSPERF_FRIDGE, encoding="utf-8")

    model = load_model(path)

    assert model.table == "temperature"
    assert model.description == "this json file contains a tables and it's structure"
    assert model.tags == (
        TagSpec("plant", range(100), False),
        TagSpec("line", range(5), False),
        TagSpec("sensor_id", None, True),
    )
    assert model.id_tag.name == "sensor_id"
    assert model.fields == (
        FloatField("temperature", "value", 6.0, 7.4, 6.4, 0.2, 0.03, 0.005, 1.08),
        BoolField("button", "button_press", 0.001),
    )
    assert model.columns() == [
        ("plant", "INTEGER"),
        ("line", "INTEGER"),
        ("sensor_id", "INTEGER"),
        ("value", "DOUBLE PRECISION"),
        ("button_press", "BOOLEAN"),
    ]
    assert model.combinations == 500


def test_older_metrics_key_is_read_as_fields():
    obj = json.loads(TSPERF_FRIDGE)
    body = obj["temperature"]
    body["metrics"] = body.pop("fields")

    assert parse_model(obj).field_columns() == ["value", "button_press"]


def _three_tag_model():
    return parse_model(
        {
            "t": {
                "tags": {"site": ["a", "b"], "hall": 3, "bay": [10, 20, 30, 40], "sensor": "id"},
                "fields": {"on": {"key": {"value": "on"}, "type": {"value": "BOOL"}, "true_ratio": {"value": 0.5}}},
            }
        }
    )


def test_tags_count_like_mixed_radix_digits_with_the_last_tag_fastest():
    tags = _three_tag_model().tag_values(np.array([1, 2, 4, 5, 13, 24]))

    assert tags["site"].tolist() == ["a", "a", "a", "a", "b", "b"]
    assert tags["hall"].tolist() == [0, 0, 0, 1, 0, 2]
    assert tags["bay"].tolist() == [10, 20, 40, 10, 10, 40]
    assert tags["sensor"].tolist() == [1, 2, 4, 5, 13, 24]


def test_every_id_up_to_the_product_of_cardinalities_gets_its_own_combination():
    model = _three_tag_model()
    ids = np.arange(1, 49)
    tags = model.tag_values(ids)
    combos = list(zip(tags["site"].tolist(), tags["hall"].tolist(), tags["bay"].tolist(), strict=True))

    # The reference multiplies by the sum of the earlier cardinalities, which gives only 16 combinations here.
    assert model.combinations == 24
    assert len(set(combos[:24])) == 24
    assert combos[24:] == combos[:24]
    assert tags["sensor"].tolist() == ids.tolist()


def test_tag_values_are_computed_for_large_id_arrays_at_once():
    model = load_model("temperature")
    tags = model.tag_values(np.arange(1, 1_000_001))

    assert tags["plant"].shape == (1_000_000,)
    assert tags["plant"].max() == 99
    assert tags["line"][:7].tolist() == [0, 1, 2, 3, 4, 0, 1]
    assert tags["plant"][499] == 99 and tags["plant"][500] == 0


def test_sensor_ids_below_one_are_rejected():
    with pytest.raises(ValueError, match="count from 1"):
        load_model("temperature").tag_values(np.array([0, 1]))


def test_list_tag_types():
    model = parse_model(
        {
            "t": {
                "tags": {"name": ["x", "y"], "code": [1, 2], "big": [1, 2**40], "id": "id"},
                "fields": {"on": {"key": {"value": "on"}, "type": {"value": "BOOL"}, "true_ratio": {"value": 1}}},
            }
        }
    )

    assert [t.sql_type for t in model.tags] == ["TEXT", "INTEGER", "BIGINT", "INTEGER"]


def test_missing_file_names_the_path():
    with pytest.raises(ModelError, match=r"^model /nonexistent/x\.json: file not found; check the path$"):
        load_model("/nonexistent/x.json")


def test_unknown_bare_name_lists_the_shipped_models():
    with pytest.raises(ModelError, match=r"^model no_such_model: file not found; .*temperature"):
        load_model("no_such_model")


def test_directory_is_unreadable(tmp_path):
    with pytest.raises(ModelError, match=r": cannot read the file \(.*\); check the path$"):
        load_model(tmp_path)


def test_invalid_json_names_the_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"t": {"tags": {,}}}\n', encoding="utf-8")

    with pytest.raises(ModelError) as raised:
        load_model(path)

    message = str(raised.value)
    assert message.startswith(f"model {path}: not valid JSON (")
    assert "line 1" in message and message.endswith("; fix the syntax")
    assert "\n" not in message


def _good():
    def param(value):
        return {"value": value, "unit": "u"}

    return {
        "description": "ok",
        "t": {
            "tags": {"plant": 3, "sensor_id": "id"},
            "fields": {
                "temperature": {
                    "key": {"value": "value"},
                    "type": {"value": "FLOAT"},
                    "min": param(6.0),
                    "max": param(7.4),
                    "mean": param(6.4),
                    "stdev": param(0.2),
                    "variance": param(0.03),
                    "error_rate": param(0.005),
                    "error_length": param(1.08),
                },
                "button": {"key": {"value": "button_press"}, "type": {"value": "BOOL"}, "true_ratio": param(0.1)},
            },
        },
    }


def _set(path, value):
    """A change to the good model: set the value at a key path."""

    def change(obj):
        *parents, last = path
        for key in parents:
            obj = obj[key]
        obj[last] = value

    return change


def _drop(*path):
    def change(obj):
        *parents, last = path
        for key in parents:
            obj = obj[key]
        del obj[last]

    return change


T = "temperature"
F = ("t", "fields")
BAD_MODELS = [
    ("top level not an object", lambda o: [o], "the top level is a list, not an object"),
    ("no table", _drop("t"), "no table key"),
    ("two tables", _set(("other",), {}), 'more than one table key ("t", "other")'),
    ("table not object", _set(("t",), 5), 'table "t": expected an object, got a number'),
    ("no tags", _drop("t", "tags"), 'table "t": no "tags"; add'),
    ("no fields", _drop("t", "fields"), 'table "t": no "fields"; add'),
    ("empty fields", _set(F, {"description": "x"}), '"fields": no fields; add'),
    ("tags not object", _set(("t", "tags"), ["plant"]), '"tags": expected an object, got a list'),
    ("tag zero", _set(("t", "tags", "plant"), 0), 'tag "plant": 0 is not a count of values'),
    ("tag bool", _set(("t", "tags", "plant"), True), 'tag "plant": true is not a tag kind'),
    ("tag word", _set(("t", "tags", "plant"), "many"), 'tag "plant": "many" is not a tag kind'),
    ("tag float", _set(("t", "tags", "plant"), 2.5), 'tag "plant": 2.5 is not a tag kind'),
    ("tag empty list", _set(("t", "tags", "plant"), []), 'tag "plant": the value list is empty'),
    ("tag mixed list", _set(("t", "tags", "plant"), ["a", 1]), 'tag "plant": ["a",1] mixes kinds of values'),
    ("tag repeated value", _set(("t", "tags", "plant"), ["a", "a"]), 'tag "plant": value "a" is listed twice'),
    ("no id tag", _drop("t", "tags", "sensor_id"), '"tags": no tag is "id"'),
    ("two id tags", _set(("t", "tags", "plant"), "id"), 'more than one tag is "id" ("plant", "sensor_id")'),
    ("field not object", _set((*F, T), 1), 'field "temperature": expected an object with "key"'),
    ("no key", _drop(*F, T, "key"), 'field "temperature": "key" is missing or has no "value"'),
    ("key without value", _set((*F, T, "key"), {"name": "v"}), '"key" is missing or has no "value"'),
    ("empty key", _set((*F, T, "key", "value"), ""), 'field "temperature": key "" is not a column name'),
    ("no type", _drop(*F, T, "type"), 'field "temperature": "type" is missing'),
    ("unknown type", _set((*F, T, "type", "value"), "INT"), 'field "temperature": type "INT" is not supported'),
    ("missing min", _drop(*F, T, "min"), 'field "temperature": "min" is missing or has no "value"'),
    ("missing error_length", _drop(*F, T, "error_length"), '"error_length" is missing or has no "value"'),
    ("missing true_ratio", _drop(*F, "button", "true_ratio"), 'field "button": "true_ratio" is missing'),
    ("bare number", _set((*F, T, "max"), 7.4), 'field "temperature": "max" is missing or has no "value"'),
    ("text number", _set((*F, T, "mean", "value"), "6.4"), 'field "temperature": mean "6.4" is not a number'),
    ("bool number", _set((*F, T, "stdev", "value"), False), "stdev false is not a number"),
    ("nan", _set((*F, T, "stdev", "value"), float("nan")), "stdev nan is not a number"),
    ("min above max", _set((*F, T, "min", "value"), 8.0), "min (8.0) is greater than max (7.4); make min <= max"),
    ("mean below min", _set((*F, T, "mean", "value"), 5.0), "mean (5.0) is outside min..max (6.0..7.4)"),
    ("negative stdev", _set((*F, T, "stdev", "value"), -0.1), "stdev (-0.1) is negative"),
    ("negative variance", _set((*F, T, "variance", "value"), -1), "variance (-1.0) is negative"),
    ("error_rate above 1", _set((*F, T, "error_rate", "value"), 1.5), "error_rate (1.5) is outside 0..1"),
    ("error_rate below 0", _set((*F, T, "error_rate", "value"), -0.1), "error_rate (-0.1) is outside 0..1"),
    ("short errors", _set((*F, T, "error_length", "value"), 0.5), "error_length (0.5) is below 1 step"),
    ("unreachable rate", _set((*F, T, "error_rate", "value"), 0.6), "error_rate (0.6) is unreachable"),
    ("no room for errors", _set((*F, T, "stdev", "value"), 1.5), "leaves no room outside mean ± stdev"),
    ("true_ratio above 1", _set((*F, "button", "true_ratio", "value"), 2), "true_ratio (2.0) is outside 0..1"),
    (
        "column twice",
        _set((*F, "button", "key", "value"), "value"),
        'column "value": used by both field "temperature" and field "button"',
    ),
    ("tag and field column", _set((*F, "button", "key", "value"), "plant"), 'both tag "plant" and field "button"'),
]


@pytest.mark.parametrize(("change", "expected"), [c[1:] for c in BAD_MODELS], ids=[c[0] for c in BAD_MODELS])
def test_bad_model_is_one_line_naming_the_problem(change, expected):
    obj = copy.deepcopy(_good())
    obj = change(obj) or obj

    with pytest.raises(ModelError) as raised:
        parse_model(obj, source="models/x.json")

    message = str(raised.value)
    assert message.startswith("model models/x.json: ")
    assert expected in message
    assert "\n" not in message


def test_the_good_model_used_above_is_valid():
    model = parse_model(_good())

    assert model.table == "t"
    assert model.field_columns() == ["value", "button_press"]


def test_zero_error_rate_ignores_error_length_and_room():
    obj = _good()
    spec = obj["t"]["fields"]["temperature"]
    spec["error_rate"]["value"] = 0
    spec["error_length"]["value"] = 0
    spec["stdev"]["value"] = 1.5

    assert parse_model(obj).fields[0].error_rate == 0.0


def test_tag_codes_give_the_tag_values_in_a_byte_or_two_per_sensor():
    model = _three_tag_model()
    ids = np.arange(1, 49)
    codes = model.tag_codes(ids)
    values = model.tag_values(ids)

    assert list(codes) == list(values) == ["site", "hall", "bay", "sensor"]
    for name, tag in codes.items():
        assert tag.decoded().tolist() == values[name].tolist()
        assert tag.decoded(slice(5, 9)).tolist() == values[name][5:9].tolist()
        assert tag.decoded(np.array([40, 2])).tolist() == values[name][[40, 2]].tolist()
    assert all(codes[name].codes.itemsize == 1 for name in ("site", "hall", "bay"))
    assert codes["sensor"].codes is ids  # the id tag is the ids themselves, not a copy
    flag = {"key": {"value": "on"}, "type": {"value": "BOOL"}, "true_ratio": {"value": 0.5}}
    big = parse_model({"t": {"tags": {"n": 300, "id": "id"}, "fields": {"on": flag}}})
    assert big.tag_codes(np.array([300]))["n"].codes.itemsize == 2
