"""The CrateDB test double answers as a real CrateDB 6.4.3 node did (issue 12).

``tests/fixtures/cratedb-6.4.3/probe.json`` holds 39 requests and what a real node answered to them
(``tests/fixtures/README.md`` says where it comes from). They are replayed in the recorded order on a fresh double
with the recording's auth setup (user ``dg`` with a password), and each answer is held against the recorded one:
the status, the content type, the parsed body (key order included) and the first bytes as sent, with the volatile
values (durations, node and cluster names, version fields, the random suffix of a CHECK constraint's name) masked
the same way in both. Entries in ``DOCUMENTED_DIFFERENCES`` (also listed, with the reason, in the README) compare
the error code and the exception class name instead of the whole body.

The product's own readers of an answer are run on the recorded bytes too: ``batch.all_rows_inserted`` and the
client's sorting of an answer into rows inserted, failed and in doubt.
"""

import locust  # noqa: F401

import base64
import copy
import dataclasses
import http.client
import json
import re
from pathlib import Path

import orjson
import pytest
from cratedb_double import DoubleProcess

from dg_locust.batch import all_rows_inserted
from dg_locust.client import CrateHttpClient, _Answer

FIXTURES = Path(__file__).parent / "fixtures"
RECORDING = json.loads((FIXTURES / "cratedb-6.4.3" / "probe.json").read_text())
USER, PASSWORD = "dg", "conformance-password"
# The recording keeps no request for wrong_password; the README says what it was: a statement sent as dg with a
# password that is not dg's.
WRONG_PASSWORD_REQUEST = {"method": "POST", "path": "/_sql", "body": {"stmt": "SELECT 1"}}
# name -> reason; these compare status, content type, error code and exception class name only.
DOCUMENTED_DIFFERENCES: dict[str, str] = {}
EXACT_AT_LEAST = 37

MASK = "<v>"
VOLATILE_KEYS = frozenset({"duration", "name", "cluster_name", "version"})  # everything under "version"
MESSAGE_LIMIT = 300  # the recorder cut longer strings to 300 characters and "..."
_CHECK_SUFFIX = re.compile(r"(_check_)[0-9a-f]{12}")
_RAW_CHECK_SUFFIX = re.compile(r"(_check_)[0-9a-f]{1,12}")  # a prefix may end inside the suffix
_RAW_VOLATILE = re.compile(
    r'("(?:duration|name|cluster_name|number|build_hash|build_timestamp|build_snapshot|lucene_version)"\s*:\s*)'
    r'("(?:[^"\\]|\\.)*"?|[-+0-9.eE]+|true|false)'
)


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    content_type: str | None
    raw: bytes
    body: object = None  # the parsed JSON answer, or None
    text: str | None = None  # a non-JSON answer


def answer_of(status: int, content_type: str | None, raw: bytes) -> Answer:
    try:
        return Answer(status, content_type, raw, body=json.loads(raw))
    except ValueError:
        return Answer(status, content_type, raw, text=raw.decode("utf-8", "replace"))


def mask(value, volatile: bool = False):
    """Volatile values -> "<v>", the CHECK name's suffix -> "<v>", strings cut as the recorder cut them."""
    if isinstance(value, dict):
        return {key: mask(item, volatile or key in VOLATILE_KEYS) for key, item in value.items()}
    if isinstance(value, list):
        return [mask(item, volatile) for item in value]
    if volatile:
        return MASK
    if isinstance(value, str):
        value = _CHECK_SUFFIX.sub(rf"\1{MASK}", value)
        return value if len(value) <= MESSAGE_LIMIT else value[:MESSAGE_LIMIT] + "..."
    return value


def mask_raw(text: str) -> str:
    return _RAW_CHECK_SUFFIX.sub(rf"\1{MASK}", _RAW_VOLATILE.sub(rf'\1"{MASK}"', text))


def error_identity(body) -> tuple:
    """(error code, exception class name) of an error answer."""
    error = body.get("error", {}) if isinstance(body, dict) else {}
    return error.get("code"), str(error.get("message", "")).split("[", 1)[0]


def differences(entry: dict, answer: Answer) -> list[str]:
    """What differs between a recorded answer and the double's; empty when it is reproduced."""
    found = []
    if answer.status != entry["status"]:
        found.append(f"status: {answer.status} != recorded {entry['status']}")
    if answer.content_type != entry["content_type"]:
        found.append(f"content type: {answer.content_type!r} != recorded {entry['content_type']!r}")
    if entry["name"] in DOCUMENTED_DIFFERENCES:
        if error_identity(answer.body) != error_identity(entry["body"]):
            found.append(f"error: {error_identity(answer.body)} != recorded {error_identity(entry['body'])}")
        return found
    ours, theirs = json.dumps(mask(answer.body)), json.dumps(mask(entry["body"]))
    if ours != theirs:
        found.append(f"body: {ours[:2000]} != recorded {theirs[:2000]}")
    if entry.get("text") is not None and answer.text != entry["text"]:
        found.append(f"text: {answer.text!r} != recorded {entry['text']!r}")
    prefix = mask_raw(entry["raw_prefix"])
    if not mask_raw(answer.raw.decode("utf-8", "replace")).startswith(prefix):
        found.append(f"raw: {answer.raw[:200]!r} does not start with recorded {entry['raw_prefix']!r}")
    return found


def send(port: int, request: dict, password: str) -> Answer:
    body = request["body"]
    data = None if body is None else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    token = base64.b64encode(f"{USER}:{password}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(request["method"], request["path"], body=data, headers=headers)
        response = connection.getresponse()
        return answer_of(response.status, response.getheader("Content-Type"), response.read())
    finally:
        connection.close()


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> dict[str, Answer]:
    """Every recorded request sent in the recorded order to one fresh double; the answers by entry name."""
    answers = {}
    with DoubleProcess(tmp_path_factory.mktemp("conformance") / "double.sqlite", users={USER: PASSWORD}) as double:
        for entry in RECORDING:
            if entry["name"] == "wrong_password":
                answers[entry["name"]] = send(double.port, WRONG_PASSWORD_REQUEST, PASSWORD + "-wrong")
            else:
                answers[entry["name"]] = send(double.port, entry["request"], PASSWORD)
    return answers


@pytest.mark.parametrize("entry", RECORDING, ids=[entry["name"] for entry in RECORDING])
def test_the_double_answers_as_cratedb_did(replayed, entry):
    assert differences(entry, replayed[entry["name"]]) == []


def test_at_least_37_of_the_39_recorded_answers_are_reproduced_exactly(replayed):
    exact = [
        e["name"]
        for e in RECORDING
        if e["name"] not in DOCUMENTED_DIFFERENCES and not differences(e, replayed[e["name"]])
    ]
    print(f"reproduced exactly: {len(exact)} of {len(RECORDING)}")
    assert len(RECORDING) == 39
    assert len(exact) >= EXACT_AT_LEAST
    assert len(exact) + len(DOCUMENTED_DIFFERENCES) == len(RECORDING)


def test_every_documented_difference_is_written_down_in_the_fixtures_readme():
    readme = (FIXTURES / "README.md").read_text()
    names = {e["name"] for e in RECORDING}
    for name in DOCUMENTED_DIFFERENCES:
        assert name in names and f"`{name}`" in readme, name


# --- the comparison fails when any recorded answer of the double changes ---


def _leaf_paths(value, path=()):
    """Paths to the values the masking keeps (a change there must be seen)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in VOLATILE_KEYS:
                yield from _leaf_paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaf_paths(item, (*path, i))
    else:
        yield path


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return "x" + value  # in front: past character 300 a long string was cut by the recorder, so is invisible
    return "x" if value is None else None


def body_mutations(body):
    """Each changes the body in one way: one kept value, a key added, removed or moved, a list entry removed."""
    for path in _leaf_paths(body):
        if not path:
            continue
        mutated = copy.deepcopy(body)
        holder = mutated
        for step in path[:-1]:
            holder = holder[step]
        holder[path[-1]] = _changed(holder[path[-1]])
        yield f"value at {path}", mutated
    if isinstance(body, dict):
        yield "key added", {**body, "extra": 1}
        first = next(iter(body))
        yield "key removed", {k: v for k, v in body.items() if k != first}
        if len(body) > 1:
            yield "keys reordered", dict(reversed(list(body.items())))
        for key, item in body.items():
            if isinstance(item, list) and item:
                yield f"entry of {key} removed", {**body, key: item[:-1]}


def test_the_comparison_catches_any_change_of_a_recorded_answer(replayed):
    checked = 0
    for entry in RECORDING:
        answer = replayed[entry["name"]]
        changes = [
            ("status", dataclasses.replace(answer, status=answer.status + 1), "status"),
            ("content type", dataclasses.replace(answer, content_type=(answer.content_type or "") + "x"), "content"),
        ]
        if entry["name"] in DOCUMENTED_DIFFERENCES:
            error = answer.body["error"]
            for key, value in (("code", error["code"] + 1), ("message", "Other" + error["message"])):
                changes.append((key, dataclasses.replace(answer, body={"error": {**error, key: value}}), "error"))
        else:
            changes += [(what, dataclasses.replace(answer, body=b), "body") for what, b in body_mutations(answer.body)]
            raw = bytearray(answer.raw)
            raw[0] ^= 0x20  # the first byte is never a volatile value
            changes.append(("first byte", dataclasses.replace(answer, raw=bytes(raw)), "raw"))
            if entry.get("text") is not None:
                changes.append(("text", dataclasses.replace(answer, text=answer.text + "x"), "text"))
        assert differences(entry, answer) == [], entry["name"]
        for what, changed, kind in changes:
            found = differences(entry, changed)
            assert any(d.startswith(kind) for d in found), (entry["name"], what, found)
            checked += 1
    assert checked > 39 * 3


# --- the product's readers of an answer, on the recorded bytes ---

BY_NAME = {entry["name"]: entry for entry in RECORDING}


def recorded_bytes(name: str) -> bytes:
    """The answer's bytes as the node sent them: the recorded prefix when it is the whole answer, else the body
    written back in the node's compact form with the volatile duration taken from the prefix (checked against it)."""
    entry = BY_NAME[name]
    prefix = entry["raw_prefix"].encode()
    if entry["body"] is None:
        return prefix
    try:
        json.loads(prefix)
        return prefix
    except ValueError:
        pass
    duration = re.search(rb'"duration":([-+0-9.eE]+)', prefix)
    body = dict(entry["body"])
    if duration is not None:
        body["duration"] = float(duration.group(1))
    full = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    assert full.startswith(prefix), (full[:200], prefix)
    return full


@pytest.mark.parametrize(
    ("name", "rows", "expected"),
    [
        ("bulk_ok_3", 3, True),
        ("bulk_ok_12", 12, True),
        ("bulk_null_everywhere_ok", 1, True),
        ("bulk_ok_3", 2, False),  # three results for two rows
        ("bulk_check_violation_some", 4, False),
        ("bulk_empty_args", 0, False),
        ("unnest_ok_10", 10, False),  # an UNNEST answer has no results array
    ],
)
def test_the_all_rows_inserted_fast_path_on_recorded_answers(name, rows, expected):
    assert all_rows_inserted(recorded_bytes(name), rows) is expected


@pytest.mark.parametrize(
    ("name", "rows", "method", "expected"),
    [
        ("bulk_ok_3", 3, "bulk", (3, 0, 0)),
        ("bulk_ok_12", 12, "bulk", (12, 0, 0)),
        ("bulk_null_everywhere_ok", 1, "bulk", (1, 0, 0)),
        ("bulk_type_error_one_row", 4, "bulk", (0, 4, 0)),  # one bad value fails the whole request
        ("bulk_check_violation_some", 4, "bulk", (2, 2, 0)),  # rows refused by the table fail on their own
        ("bulk_wrong_arity", 1, "bulk", (0, 1, 0)),
        ("bulk_missing_table", 1, "bulk", (0, 1, 0)),
        ("bulk_empty_args", 0, "bulk", (0, 0, 0)),
        ("unnest_ok_10", 10, "unnest", (10, 0, 0)),
        ("unnest_type_error", 10, "unnest", (0, 10, 0)),
        ("unnest_check_violation_some", 4, "unnest", (2, 2, 0)),  # refused rows are missing from rowcount
        ("wrong_password", 5, "bulk", (0, 5, 0)),
        # Never sent by the product, but a 500 / 5000 it cannot tell from an overload stays in doubt: safe.
        ("no_stmt", 5, "bulk", (0, 0, 5)),
    ],
)
def test_the_client_sorts_recorded_answers_into_inserted_failed_and_in_doubt(name, rows, method, expected):
    client = CrateHttpClient(("http://db:4200",), username=USER, password="pw")
    answer = _Answer(server="http://db:4200", status=BY_NAME[name]["status"], body=recorded_bytes(name))
    outcome = client._classify(answer, rows, method)
    assert (outcome.inserted, outcome.failed, outcome.in_doubt) == expected
    assert outcome.fatal == (name == "wrong_password")
    assert outcome.overload == (name == "no_stmt")  # a 500 with code 5000 reads as a circuit breaker
    if outcome.failed or outcome.in_doubt:
        assert outcome.error and "\n" not in outcome.error
    if name == "bulk_check_violation_some":
        assert "2 of 4 rows rejected: SQLParseException[Failed CONSTRAINT" in outcome.error
    client.close()


def test_recorded_bytes_are_compact_json_with_the_recorded_key_order():
    # The fast path relies on the node writing {"rowcount":1} without spaces; the recording shows it does.
    assert recorded_bytes("bulk_ok_3").startswith(b'{"cols":[],"duration":')
    assert b'{"rowcount":1},{"rowcount":1}' in recorded_bytes("bulk_ok_12")
    assert orjson.loads(recorded_bytes("bulk_check_violation_some"))["results"][1]["rowcount"] == -2
