"""dg-locust end to end: the Locust CLI against the CrateDB test double, counting what the double stored."""

import locust  # noqa: F401

import json

import numpy as np
import pytest
from cratedb_double import DoubleProcess, count_rows, duplicate_keys, fetch_rows
from support import run_locust

from dg_locust.errors import EXIT_NO_ROWS
from dg_locust.model import MODELS_DIR, load_model

TABLE = "doc.temperature"


@pytest.fixture
def double(tmp_path):
    with DoubleProcess(tmp_path / "crate.sqlite") as server:
        yield server


def test_headless_run_stores_exactly_the_rows_it_reports(double, tmp_path):
    result = run_locust(["--headless", "-u", "8", "-r", "8", "-t", "8s", "-H", double.url, "--seed", "7"], tmp_path)
    assert result.exit_code == 0, result.output[-3000:]
    summary = result.summary
    assert summary["inserted"] > 0
    assert summary["failed"] == summary["in_doubt"] == 0
    assert count_rows(double.db_path, TABLE) == summary["inserted"] == result.reported_rows
    assert duplicate_keys(double.db_path, TABLE, ["sensor_id", "ts"]) == 0


def test_batches_cut_off_by_the_stop_are_in_doubt_never_inserted(tmp_path):
    with DoubleProcess(tmp_path / "crate.sqlite", overhead_ms=2500) as slow_double:
        args = ["--headless", "-u", "4", "-r", "4", "-t", "4s", "--stop-timeout", "1", "-H", slow_double.url]
        result = run_locust(args + ["--batch-size", "500"], tmp_path)
        summary = result.summary
        # On a slow machine no batch may have been answered before the stop: then the run says so and exits 5.
        expected_exit = 0 if summary["inserted"] else EXIT_NO_ROWS
        assert result.exit_code == expected_exit, result.output[-3000:]
        assert summary["in_doubt"] > 0
        stored = count_rows(slow_double.db_path, TABLE)
        assert summary["inserted"] == result.reported_rows
        assert summary["inserted"] <= stored <= summary["inserted"] + summary["in_doubt"]


def test_stored_values_and_tags_follow_the_model(double, tmp_path):
    args = ["--headless", "-u", "2", "-r", "2", "-t", "30s", "-H", double.url, "--batch-size", "1000"]
    env = {"ID_START": "1", "ID_END": "60", "INGEST_SIZE": "50", "INGEST_TS": "1600163743.500"}
    result = run_locust(args, tmp_path, env=env)
    assert result.exit_code == 0, result.output[-3000:]
    rows = fetch_rows(double.db_path, TABLE)
    assert len(rows) == 60 * 50 == result.summary["inserted"]
    model = load_model(MODELS_DIR / "temperature.json")
    temperature = model.fields[0]
    ids = np.arange(1, 61)
    expected_tags = model.tag_values(ids)
    for row in rows:
        index = row["sensor_id"] - 1
        assert row["plant"] == expected_tags["plant"][index]
        assert row["line"] == expected_tags["line"][index]
        assert temperature.min <= row["value"] <= temperature.max
        assert row["button_press"] in (0, 1)
        step = (row["ts"] - 1600163743500) / 500
        assert step == int(step) and 0 <= step < 50
    assert len({(r["plant"], r["line"]) for r in rows}) == 60  # every sensor has its own tags
    assert duplicate_keys(double.db_path, TABLE, ["sensor_id", "ts"]) == 0


def test_ingest_size_ends_the_run_with_exactly_ids_times_size_rows(double, tmp_path):
    model_file = tmp_path / "boiler.json"
    model_file.write_text(
        json.dumps(
            {
                "boilers": {
                    "tags": {"site": ["berlin", "vienna", "zurich"], "boiler": 4, "boiler_id": "id"},
                    "fields": {
                        "pressure": {
                            "key": {"value": "pressure"},
                            "type": {"value": "FLOAT"},
                            "min": {"value": 1.0},
                            "max": {"value": 3.0},
                            "mean": {"value": 2.0},
                            "stdev": {"value": 0.3},
                            "variance": {"value": 0.05},
                            "error_rate": {"value": 0.01},
                            "error_length": {"value": 3},
                        },
                        "burner": {
                            "key": {"value": "burner_on"},
                            "type": {"value": "BOOL"},
                            "true_ratio": {"value": 0.5},
                        },
                    },
                }
            }
        )
    )
    args = ["--headless", "-u", "6", "-r", "6", "-H", double.url, "--insert-method", "unnest"]
    env = {"MODEL_PATH": str(model_file), "ID_START": "5", "ID_END": "40", "INGEST_SIZE": "300"}
    result = run_locust(args, tmp_path, env=env, timeout=90)  # no -t: the run must end by itself
    assert result.exit_code == 0, result.output[-3000:]
    assert count_rows(double.db_path, "doc.boilers") == 36 * 300
    assert result.summary["inserted"] == 36 * 300 == result.reported_rows
    assert duplicate_keys(double.db_path, "doc.boilers", ["boiler_id", "ts"]) == 0
