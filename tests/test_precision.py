"""A field's declared precision: values are rounded to it after the statistics are drawn, and stored as rounded."""

import locust  # noqa: F401  (first: gevent monkey-patches sockets before anything else imports them)

import copy
import json

import numpy as np
import pytest
from cratedb_double import DoubleProcess, fetch_rows
from pg_double import PgDoubleProcess
from support import run_locust
from test_generator import MEAN_TOL, SPREAD_TOL

from dg_locust.errors import ModelError
from dg_locust.generator import Fleet
from dg_locust.model import MODELS_DIR, load_model, parse_model

FRIDGE = json.loads((MODELS_DIR / "temperature.json").read_text())
SENSORS, STEPS, SEED, INGEST_TS = 400, 500, 21, 1_600_000_000.0


def fridge_with(precision) -> dict:
    model = copy.deepcopy(FRIDGE)
    field = model["temperature"]["fields"]["temperature"]
    if precision is None:
        field.pop("precision", None)
    else:
        field["precision"] = precision
    return model


def test_the_shipped_models_declare_realistic_precisions():
    precisions = {
        name: {f.column: f.precision for f in load_model(name).fields if hasattr(f, "precision")}
        for name in ("temperature", "factory", "power_plant")
    }
    assert precisions["temperature"] == {"value": 2}
    assert precisions["factory"] == {"spindle_rpm": 0, "coolant_temp": 1, "pressure_bar": 2}
    assert precisions["power_plant"]["grid_hz"] == 3


@pytest.mark.parametrize("written", [2, {"value": 2}, {"value": 2, "description": "0.01 °C"}])
def test_precision_is_read_in_either_form(written):
    assert parse_model(fridge_with(written)).fields[0].precision == 2


@pytest.mark.parametrize(
    "written, fragment",
    [
        (-1, "precision -1 is not a number of decimal places"),
        (16, "precision 16 is not a number"),
        (1.5, "precision 1.5 is not a number"),
        ({"value": "2"}, 'precision "2" is not a number'),
        ({"unit": "°C"}, "precision null is not a number"),
    ],
)
def test_a_bad_precision_is_one_line_naming_the_field(written, fragment):
    with pytest.raises(ModelError) as bad:
        parse_model(fridge_with(written), source="fridge.json")
    message = str(bad.value)
    assert message.startswith('model fridge.json: field "temperature": ') and fragment in message
    assert '"precision": {"value": n} with n from 0 to 15' in message


def test_precision_on_a_bool_field_is_refused():
    model = copy.deepcopy(FRIDGE)
    model["temperature"]["fields"]["button"]["precision"] = {"value": 1}
    with pytest.raises(ModelError, match='field "button": "precision" applies to FLOAT fields'):
        parse_model(model)


def test_without_precision_values_stay_full_doubles():
    values = Fleet(parse_model(fridge_with(None)), np.arange(1, 51), seed=3).next_steps(200)["value"]
    assert (np.round(values, 6) != values).mean() > 0.99


def test_rounding_leaves_the_random_walk_as_it_was():
    # Same seed with and without precision: the same walk, only rounded (rounding never feeds back into it)
    full = Fleet(parse_model(fridge_with(None)), np.arange(1, 51), seed=3).next_steps(300)["value"]
    rounded = Fleet(parse_model(fridge_with(2)), np.arange(1, 51), seed=3).next_steps(300)["value"]
    assert np.array_equal(rounded, np.round(full, 2))


@pytest.mark.parametrize("path", ["http-unnest", "pg"])
def test_rounded_values_are_stored_rounded_with_the_model_mean_and_spread(tmp_path, path):
    model_file = tmp_path / "fridge.json"
    model_file.write_text(json.dumps(fridge_with({"value": 2})))
    env = {"MODEL_PATH": str(model_file), "ID_START": "1", "ID_END": str(SENSORS), "INGEST_SIZE": str(STEPS)}
    env["INGEST_TS"] = str(INGEST_TS)
    args = ["--headless", "-u", "4", "-r", "4", "--seed", str(SEED), "--batch-size", "20000"]
    if path == "pg":
        with PgDoubleProcess(tmp_path / "crate.sqlite") as double:
            result = run_locust([*args, "-H", double.pg_url, "--insert-method", "pg"], tmp_path, env=env, timeout=240)
    else:
        with DoubleProcess(tmp_path / "crate.sqlite") as double:
            result = run_locust([*args, "-H", double.url, "--insert-method", "unnest"], tmp_path, env=env, timeout=240)
    assert result.exit_code == 0, result.output[-3000:]
    rows = fetch_rows(double.db_path, "doc.temperature")
    assert len(rows) == SENSORS * STEPS == result.summary["inserted"]

    # Back in (step, sensor) order, as the generator made them
    values = np.empty((STEPS, SENSORS))
    for row in rows:
        values[round((row["ts"] - INGEST_TS * 1000) / 500), row["sensor_id"] - 1] = row["value"]
    assert np.array_equal(np.round(values, 2), values)  # every stored value has at most 2 decimals
    assert (np.round(values, 1) != values).mean() > 0.8  # and the second decimal is used

    # The error values are those the same seed marks as errors; the normal ones follow the model
    spec = load_model(model_file).fields[0]
    _, errors = Fleet(load_model(model_file), np.arange(1, SENSORS + 1), seed=SEED).next_steps_with_errors(STEPS)
    normal = values[~errors["value"]]
    assert abs(normal.mean() - spec.mean) < MEAN_TOL * spec.stdev
    assert normal.std() == pytest.approx(spec.stdev, rel=SPREAD_TOL)
    assert spec.min <= normal.min() and normal.max() <= spec.max
