"""Bad input stops dg-locust at once with one line naming the problem (issue 7).

Table-driven through the Locust CLI, as a person would hit it: each bad model file or option must give exit code 2
within seconds (not at the end of ``-t``), exactly one line of its own naming the problem (Locust's INFO start-up
lines aside), no ERROR line and no traceback. The host is unreachable on purpose: validation must come first.
"""

import locust  # noqa: F401

import copy
import json
import time

import pytest
from support import run_locust

from dg_locust.model import MODELS_DIR

FRIDGE = json.loads((MODELS_DIR / "temperature.json").read_text())
UNREACHABLE = "http://127.0.0.1:1"


def fridge(*edits) -> dict:
    """The fridge model with edits applied: (path, value) sets a value, (path, None) deletes the key."""
    model = copy.deepcopy(FRIDGE)
    for path, value in edits:
        node = model
        for key in path[:-1]:
            node = node[key]
        if value is None:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return model


TABLE = ("temperature",)
TEMPERATURE = (*TABLE, "fields", "temperature")
BUTTON = (*TABLE, "fields", "button")

# id, model file content (None: no file; str: written as is; dict: as JSON; absent: the default model),
# environment, extra arguments, a fragment the message must contain
CASES = [
    ("model-missing", None, {}, [], "file not found"),
    ("model-not-json", "{nope", {}, [], "not valid JSON"),
    ("model-not-an-object", "[1, 2]", {}, [], "model"),
    ("model-no-fields", fridge(((*TABLE, "fields"), None)), {}, [], '"fields"'),
    ("model-no-stdev", fridge(((*TEMPERATURE, "stdev"), None)), {}, [], "stdev"),
    ("model-min-not-a-number", fridge(((*TEMPERATURE, "min", "value"), "cold")), {}, [], "not a number"),
    ("model-tag-wrong-type", fridge(((*TABLE, "tags", "plant"), 2.5)), {}, [], "plant"),
    ("model-unknown-field-type", fridge(((*TEMPERATURE, "type", "value"), "INT")), {}, [], "INT"),
    ("model-min-above-max", fridge(((*TEMPERATURE, "min", "value"), 9.0)), {}, [], "greater than max"),
    ("model-negative-stdev", fridge(((*TEMPERATURE, "stdev", "value"), -0.1)), {}, [], "negative"),
    ("model-error-rate-above-1", fridge(((*TEMPERATURE, "error_rate", "value"), 1.5)), {}, [], "error_rate"),
    ("model-error-rate-below-0", fridge(((*TEMPERATURE, "error_rate", "value"), -0.01)), {}, [], "error_rate"),
    ("model-true-ratio-above-1", fridge(((*BUTTON, "true_ratio", "value"), 1.2)), {}, [], "true_ratio"),
    ("model-true-ratio-below-0", fridge(((*BUTTON, "true_ratio", "value"), -0.2)), {}, [], "true_ratio"),
    ("model-no-id-tag", fridge(((*TABLE, "tags", "sensor_id"), 3)), {}, [], '"id"'),
    ("id-end-below-id-start", ..., {"ID_START": "10", "ID_END": "5"}, [], "ID_END"),
    ("id-start-not-a-number", ..., {"ID_START": "ten"}, [], "argument --id-start: invalid int value: 'ten'"),
    ("unknown-ingest-mode", ..., {"INGEST_MODE": "turbo"}, [], "INGEST_MODE"),
    ("batch-size-zero", ..., {"BATCH_SIZE": "0"}, [], "BATCH_SIZE"),
    ("batch-size-too-large", ..., {}, ["--batch-size", "9999999"], "BATCH_SIZE"),
    ("batch-size-not-a-number", ..., {"BATCH_SIZE": "lots"}, [], "BATCH_SIZE"),
    ("batch-size-min-above-max", ..., {"BATCH_SIZE_MIN": "5000", "BATCH_SIZE_MAX": "1000"}, [], "--batch-size-min"),
    ("table-name-with-sql", ..., {"TABLE_NAME": 'doc.t"; DROP TABLE x; --'}, [], "table name"),
    ("table-name-three-parts", ..., {}, ["--table", "a.b.c"], "table name"),
    ("table-name-in-model", {"bad name": FRIDGE["temperature"]}, {}, [], "bad name"),
    ("timeout-zero", ..., {"TIMEOUT": "0"}, [], "TIMEOUT"),
    ("max-retries-unbounded", ..., {"MAX_RETRIES": "1000"}, [], "MAX_RETRIES"),
    ("ca-cert-missing", ..., {"CA_CERT": "/nonexistent/ca.pem"}, [], "CA_CERT"),
]


@pytest.mark.parametrize(("model", "env", "args", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_exit_2_at_once(tmp_path, model, env, args, fragment):
    env = dict(env)
    if model is not ...:
        model_file = tmp_path / "model.json"
        if model is not None:
            model_file.write_text(model if isinstance(model, str) else json.dumps(model))
        env["MODEL_PATH"] = str(model_file)
    started = time.monotonic()
    result = run_locust(["--headless", "-u", "2", "-r", "2", "-t", "60s", "-H", UNREACHABLE, *args], tmp_path, env=env)
    elapsed = time.monotonic() - started
    assert result.exit_code == 2, result.output
    assert elapsed < 15
    assert "Traceback" not in result.output and "/ERROR/" not in result.output, result.output
    own_lines = [line for line in result.output.splitlines() if line.strip() and "/INFO/" not in line]
    assert len(own_lines) == 1, result.output
    # Values of the wrong type never reach dg-locust: Locust's argument parser names them (in one line, too).
    assert own_lines[0].startswith(("dg-locust: ", "__main__.py: error: ")), own_lines[0]
    assert fragment in own_lines[0], own_lines[0]


def test_a_host_with_credentials_is_refused_without_echoing_them(tmp_path):
    result = run_locust(["--headless", "-t", "60s", "-H", "http://alice:hunter2-pw@db:4200"], tmp_path)
    assert result.exit_code == 2
    assert "hunter2-pw" not in result.output
    own_lines = [line for line in result.output.splitlines() if line.strip() and "/INFO/" not in line]
    assert own_lines == [
        "dg-locust: a host holds credentials (user:password@host); pass --username and --password instead"
    ]
