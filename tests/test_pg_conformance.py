import locust  # noqa: F401  (first: gevent monkey-patches sockets before anything else imports them)

import json
from pathlib import Path

import pytest
from pg_double import PgDoubleProcess
from pg_probe import PROBE, mask, replay

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "cratedb-6.4.3" / "pg-probe.json"

# Entries whose answers the double gives in the recorded form but not word for word; for these the test compares
# the message types, command tags, SQLSTATEs and values, not column names or error messages.
KNOWN_DIFFERENCES = {
    "count_rows": "the HTTP double on main labels count(*) 'count(*)', CrateDB 'count'",
    "count_keyed": "the HTTP double on main labels count(*) 'count(*)', CrateDB 'count'",
    "count_keyed_after_bad_value": "the HTTP double on main labels count(*) 'count(*)', CrateDB 'count'",
    "syntax_error": "the double's parser does not list every token CrateDB's expected",
}


def _recorded() -> list[dict]:
    return json.loads(FIXTURE.read_text())["entries"]


def _comparable(answers: list[dict], loose: bool) -> list[dict]:
    """What is compared of each message: everything but the error fields CrateDB fills from Java (masked), and in
    a loose comparison neither column names nor error messages."""
    out = []
    for message in answers:
        message = dict(message)
        if message["type"] in ("ErrorResponse", "NoticeResponse"):
            keep = "SC" if loose else "SCM"
            message["fields"] = {code: message["fields"].get(code) for code in keep}
        elif message["type"] == "RowDescription" and loose:
            message["columns"] = [{**column, "name": "<name>"} for column in message["columns"]]
        out.append(message)
    return out


@pytest.fixture(scope="module")
def replayed() -> list[dict]:
    with PgDoubleProcess(users={"dg": "dgpass"}) as double:
        return replay("127.0.0.1", double.pg_port, _recorded())


def test_the_recording_holds_the_requests_the_probe_sends():
    # The fixture was recorded from PROBE; a change to one without re-recording the other would compare nothing real.
    assert [(e["name"], e["messages"]) for e in _recorded()] == [(e["name"], e["messages"]) for e in PROBE]


# The HTTP double does not implement PRIMARY KEY (the product never creates one; it was trimmed to what the product
# sends), so the entries on the keyed table, recorded to show how CrateDB answers a duplicate key over pg, are not
# replayed; test_what_the_recording_shows_about_cratedb still reads what the real node answered to them.
KEYED_TABLE = '"dgprobe_pg"."k"'


def _on_keyed_table(entry: dict) -> bool:
    return KEYED_TABLE in str(entry["messages"]) and entry["name"] != "drop_keyed_first"


def test_the_double_answers_as_the_real_node_did(replayed):
    recorded = {entry["name"]: entry for entry in _recorded()}
    supported = {"CHECK constraints": _accepted(replayed, "create_checked")}
    keyed = {name for name, entry in recorded.items() if _on_keyed_table(entry)}
    mismatches = []
    compared = 0
    for entry in replayed:
        name = entry["name"]
        if (entry.get("needs") and not supported[entry["needs"]]) or name in keyed:
            continue
        loose = name in KNOWN_DIFFERENCES
        want = _comparable(recorded[name]["answers"], loose)
        got = _comparable(mask(entry["answers"]), loose)
        compared += 1
        if got != want:
            mismatches.append(f"{name}:\n  real:   {want}\n  double: {got}")
    assert not mismatches, "\n".join(mismatches)
    assert compared >= len(recorded) - 4 - len(keyed)


def test_what_the_recording_shows_about_cratedb():
    # The facts the pg client relies on, read from the real node's answers.
    answers = {entry["name"]: entry["answers"] for entry in _recorded()}
    tags = [m["tag"] for m in answers["pipeline_duplicate_key"] if m["type"] == "CommandComplete"]
    assert tags == ["INSERT 0 1", "INSERT 0 1", "INSERT 0 -3", "INSERT 0 1"]  # a refused row: -3 (JDBC's failed)
    assert [m["tag"] for m in answers["unnest_duplicate_key"] if m["type"] == "CommandComplete"] == ["INSERT 0 2"]
    assert answers["startup"] == [{"type": "Authentication", "code": 3}]  # cleartext password
    wrong = answers["wrong_password"][0]["fields"]
    assert (wrong["S"], wrong["C"]) == ("FATAL", "28000")
    # an error inside a pipeline drops the executions before it: the good row 20 was not stored
    assert [m["values"] for m in answers["count_keyed_after_bad_value"] if m["type"] == "DataRow"] == [["0"]]


def _accepted(replayed: list[dict], name: str) -> bool:
    entry = next(e for e in replayed if e["name"] == name)
    return not any(m["type"] == "ErrorResponse" for m in entry["answers"])
