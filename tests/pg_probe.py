"""The PostgreSQL-wire requests recorded from a real CrateDB node, and the code that sends them and records the answers.

``PROBE`` lists the requests: each entry names a connection and the frontend messages sent on it (in the JSON form
of ``pg_wire``); they are the exchanges dg-locust's pg path has with CrateDB (startup, cleartext password, the
statements it runs, a prepared INSERT in pipeline mode as psycopg sends it, an UNNEST insert with array literals)
and the errors it must sort (wrong password, rows refused, statements refused, a bad value in a pipeline).

Record against a node with a password user ``dg`` / ``dgpass`` (nothing else runs in schema ``dgprobe_pg``):

    python tests/pg_probe.py --host 127.0.0.1 --port 5432 --out tests/fixtures/cratedb-6.4.3/pg-probe.json

``tests/test_pg_conformance.py`` sends the same requests to the pg test double and compares the answers after
``mask``. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pg_wire import encode_frontend, split_backend  # noqa: E402

SCHEMA = "dgprobe_pg"
TABLE = f'"{SCHEMA}"."t"'
KEYED = f'"{SCHEMA}"."k"'
CHECKED = f'"{SCHEMA}"."c"'
COLUMNS = '("ts", "plant", "line", "sensor_id", "value", "button_press")'
INSERT_VALUES = f"INSERT INTO {TABLE} {COLUMNS} VALUES ($1, $2, $3, $4, $5, $6)"
INSERT_UNNEST = f"INSERT INTO {TABLE} {COLUMNS} (SELECT * FROM UNNEST($1, $2, $3, $4, $5, $6))"
INT8, FLOAT8, BOOL, TEXT = 20, 701, 16, 25
INT8_ARRAY, FLOAT8_ARRAY, BOOL_ARRAY, TEXT_ARRAY = 1016, 1022, 1000, 1009
BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PASSWORD = "dgpass"
ANSWER_TIMEOUT_S = 10.0


def _binary_row(ts: int, plant: int, line: int, sensor: int, value: float, button: bool) -> list[dict[str, str]]:
    """A row's Bind parameters in binary format (as psycopg's binary dumpers send them), as hex for JSON."""
    packed = [struct.pack("!q", ts), struct.pack("!q", plant), struct.pack("!q", line), struct.pack("!q", sensor),
              struct.pack("!d", value), struct.pack("!?", button)]  # fmt: skip
    return [{"hex": raw.hex()} for raw in packed]


def _pipeline(statement: str, name: str, oids: list[int], rows: list[list], formats: list[int]) -> list[dict]:
    """What libpq sends for psycopg's executemany in pipeline mode: one Parse, then Bind, Describe portal and Execute
    per row, and one Sync at the end."""
    messages: list[dict] = [{"type": "Parse", "name": name, "query": statement, "oids": oids}]
    for params in rows:
        messages += [
            {"type": "Bind", "statement": name, "formats": formats, "params": params, "result_formats": [0]},
            {"type": "Describe", "kind": "P", "name": ""},
            {"type": "Execute"},
        ]
    return [*messages, {"type": "Sync"}]


def _extended(statement: str, params: list, oids: list[int], name: str = "") -> list[dict]:
    """One statement with the extended protocol, as psycopg sends an execute() with parameters."""
    return _pipeline(statement, name, oids, [params], [0] * len(params))


def _query(sql: str) -> list[dict]:
    return [{"type": "Query", "sql": sql}]


def _entry(name: str, messages: list[dict], connection: str = "main", **extra: Any) -> dict[str, Any]:
    return {"name": name, "connection": connection, "messages": messages, **extra}


def _rows(first_step: int, sensors: int, bad: int | None = None) -> list[list]:
    return [
        _binary_row(BASE_MS + first_step * 500, s % 5, s % 3, s, -1.0 if s == bad else 6.25 + s / 8, s % 2 == 0)
        for s in range(1, sensors + 1)
    ]


def _count(first_ms: int, last_ms: int) -> list[dict]:
    statement = f'SELECT count(*) FROM {TABLE} WHERE "sensor_id" BETWEEN $1 AND $2 AND "ts" >= $3 AND "ts" <= $4'
    return _extended(statement, ["1", "100", str(first_ms), str(last_ms)], [INT8] * 4)


PROBE: list[dict[str, Any]] = [
    _entry("ssl_request", [{"type": "SSLRequest"}]),
    _entry("startup", [{"type": "Startup", "user": "dg", "database": "doc"}]),
    _entry("password", [{"type": "Password", "password": PASSWORD}]),
    _entry("wrong_password_startup", [{"type": "Startup", "user": "dg", "database": "doc"}], connection="wrong"),
    _entry("wrong_password", [{"type": "Password", "password": "not-the-password"}], connection="wrong"),
    _entry("unknown_user_startup", [{"type": "Startup", "user": "nobody", "database": "doc"}], connection="nobody"),
    _entry("unknown_user", [{"type": "Password", "password": "x"}], connection="nobody"),
    _entry("drop_table_first", _query(f"DROP TABLE IF EXISTS {TABLE}")),
    _entry("drop_keyed_first", _query(f"DROP TABLE IF EXISTS {KEYED}")),
    _entry("drop_checked_first", _query(f"DROP TABLE IF EXISTS {CHECKED}")),
    _entry(
        "create_table",
        _query(
            f'CREATE TABLE IF NOT EXISTS {TABLE} ("ts" TIMESTAMP WITH TIME ZONE, "plant" INTEGER, "line" INTEGER, '
            '"sensor_id" INTEGER, "value" DOUBLE PRECISION, "button_press" BOOLEAN, "g_ts_week" TIMESTAMP WITH TIME '
            "ZONE GENERATED ALWAYS AS date_trunc('week', \"ts\")) CLUSTERED INTO 4 SHARDS PARTITIONED BY "
            "(\"g_ts_week\") WITH (number_of_replicas = '0')"
        ),
    ),
    _entry(
        "create_table_again",
        _query(
            f'CREATE TABLE IF NOT EXISTS {TABLE} ("ts" TIMESTAMP WITH TIME ZONE, "plant" INTEGER, "line" INTEGER, '
            '"sensor_id" INTEGER, "value" DOUBLE PRECISION, "button_press" BOOLEAN, "g_ts_week" TIMESTAMP WITH TIME '
            "ZONE GENERATED ALWAYS AS date_trunc('week', \"ts\")) CLUSTERED INTO 4 SHARDS PARTITIONED BY "
            "(\"g_ts_week\") WITH (number_of_replicas = '0')"
        ),
    ),
    _entry(
        "create_keyed",
        _query(
            f'CREATE TABLE {KEYED} ("id" INTEGER PRIMARY KEY, "v" DOUBLE PRECISION) CLUSTERED INTO 1 SHARDS '
            "WITH (number_of_replicas = '0')"
        ),
    ),
    _entry(
        "create_checked",
        _query(
            f'CREATE TABLE {CHECKED} ("id" INTEGER, "v" DOUBLE PRECISION CHECK ("v" >= 0)) CLUSTERED INTO 1 SHARDS '
            "WITH (number_of_replicas = '0')"
        ),
        needs="CHECK constraints",
    ),
    _entry(
        "pipeline_insert",
        _pipeline(INSERT_VALUES, "_pg3_0", [INT8] * 4 + [FLOAT8, BOOL], _rows(0, 4), [1] * 6),
    ),
    _entry(
        "pipeline_insert_prepared_again",
        _pipeline(INSERT_VALUES, "_pg3_0", [INT8] * 4 + [FLOAT8, BOOL], _rows(1, 3), [1] * 6)[1:],
    ),
    _entry(
        "pipeline_duplicate_key",
        _pipeline(
            f'INSERT INTO {KEYED} ("id", "v") VALUES ($1, $2)',
            "_pg3_1",
            [INT8, FLOAT8],
            [["1", "1.5"], ["2", "2.5"], ["2", "3.5"], ["3", "4.5"]],
            [0, 0],
        ),
    ),
    _entry(
        "pipeline_check_violation",
        _pipeline(
            f'INSERT INTO {CHECKED} ("id", "v") VALUES ($1, $2)',
            "_pg3_2",
            [INT8, FLOAT8],
            [["1", "1.5"], ["2", "-1"], ["3", "2.5"], ["4", "-2"]],
            [0, 0],
        ),
        needs="CHECK constraints",
    ),
    _entry(
        "unnest_insert",
        _pipeline(
            INSERT_UNNEST,
            "_pg3_3",
            [INT8_ARRAY] * 4 + [FLOAT8_ARRAY, BOOL_ARRAY],
            [
                [
                    "{" + ",".join([str(BASE_MS + 1500)] * 3) + "}",
                    "{1,2,3}",
                    "{1,2,0}",
                    "{1,2,3}",
                    "{6.25,6.5,null}",
                    "{true,false,true}",
                ]
            ],
            [0] * 6,
        ),
    ),
    _entry(
        "unnest_duplicate_key",
        _pipeline(
            f'INSERT INTO {KEYED} ("id", "v") (SELECT * FROM UNNEST($1, $2))',
            "_pg3_4",
            [INT8_ARRAY, FLOAT8_ARRAY],
            [["{3,4,5,4}", "{1.0,2.0,3.0,4.0}"]],
            [0, 0],
        ),
    ),
    _entry(
        "unnest_check_violation",
        _pipeline(
            f'INSERT INTO {CHECKED} ("id", "v") (SELECT * FROM UNNEST($1, $2))',
            "_pg3_5",
            [INT8_ARRAY, FLOAT8_ARRAY],
            [["{5,6,7}", "{1.0,-3.0,2.0}"]],
            [0, 0],
        ),
        needs="CHECK constraints",
    ),
    _entry(
        "unnest_text_array",
        _pipeline(
            f'INSERT INTO {KEYED} ("id", "v") (SELECT * FROM UNNEST($1, $2))',
            "",
            [TEXT_ARRAY, FLOAT8_ARRAY],
            [['{"10","11"}', "{1e-5,-2.5E3}"]],
            [0, 0],
        ),
    ),
    _entry("refresh", _query(f"REFRESH TABLE {TABLE}")),
    _entry("refresh_keyed", _query(f"REFRESH TABLE {KEYED}")),
    _entry("count_rows", _count(BASE_MS, BASE_MS + 10_000)),
    _entry(
        "count_keyed",
        _extended(f'SELECT count(*) FROM {KEYED} WHERE "id" BETWEEN $1 AND $2', ["1", "100"], [INT8, INT8]),
    ),
    _entry("missing_table", _extended(f'INSERT INTO "{SCHEMA}"."nosuch" ("id") VALUES ($1)', ["1"], [INT8])),
    _entry("after_parse_error", _query("SELECT 1")),
    _entry("syntax_error", _extended("INSERT INTO", [], [])),
    _entry(
        "pipeline_bad_value",
        _pipeline(
            f'INSERT INTO {KEYED} ("id", "v") VALUES ($1, $2)',
            "",
            [INT8, FLOAT8],
            [["20", "1.5"], ["21", "abc"], ["22", "2.5"]],
            [0, 0],
        ),
    ),
    _entry("after_bind_error", _query("SELECT 1")),
    _entry("refresh_keyed_again", _query(f"REFRESH TABLE {KEYED}")),
    _entry(
        "count_keyed_after_bad_value",
        _extended(f'SELECT count(*) FROM {KEYED} WHERE "id" BETWEEN $1 AND $2', ["20", "22"], [INT8, INT8]),
    ),
    _entry("too_few_params", _extended(f'INSERT INTO {KEYED} ("id", "v") VALUES ($1, $2)', ["30"], [INT8])),
    _entry("deallocate_all", _query("DEALLOCATE ALL")),
    _entry("drop_table", _query(f"DROP TABLE {TABLE}")),
    _entry("drop_keyed", _query(f"DROP TABLE {KEYED}")),
    _entry("drop_checked", _query(f"DROP TABLE IF EXISTS {CHECKED}"), needs="CHECK constraints"),
    _entry("terminate", [{"type": "Terminate"}]),
]


def _to_bytes(message: dict) -> bytes:
    if message["type"] == "Bind":
        params = [bytes.fromhex(p["hex"]) if isinstance(p, dict) else p for p in message.get("params", [])]
        message = {**message, "params": params}
    return encode_frontend(message)


def _expects_one_byte(messages: list[dict]) -> bool:
    return messages[-1]["type"] in ("SSLRequest", "GSSENCRequest")


def _read_answer(sock: socket.socket, messages: list[dict]) -> list[dict]:
    """Backend messages until the exchange is over: ReadyForQuery, a request for a password, a FATAL error, the
    connection's end (an ``EOF`` pseudo-message), or nothing more within ANSWER_TIMEOUT_S (``Timeout``)."""
    if _expects_one_byte(messages):
        answer = sock.recv(1)
        return [{"type": "SSLAnswer", "answer": answer.decode()}] if answer else [{"type": "EOF"}]
    buffer = bytearray()
    answers: list[dict] = []
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while True:
        for message in split_backend(buffer):
            answers.append(message)
            if message["type"] == "ReadyForQuery":
                return answers
            if message["type"] == "Authentication" and message["code"] != 0:
                return answers
            if message["type"] == "ErrorResponse" and message["fields"].get("S") == "FATAL":
                return answers  # the session is over; CrateDB leaves closing the connection to the client
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return [*answers, {"type": "Timeout"}]
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return [*answers, {"type": "Timeout"}]
        except ConnectionError:
            return [*answers, {"type": "EOF"}]
        if not chunk:
            return [*answers, {"type": "EOF"}]
        buffer += chunk


def replay(host: str, port: int, entries: list[dict]) -> list[dict]:
    """Send every entry's messages on its connection (opened at its first entry) and collect the answers."""
    sockets: dict[str, socket.socket] = {}
    recorded = []
    try:
        for entry in entries:
            sock = sockets.get(entry["connection"])
            if sock is None:
                sock = sockets[entry["connection"]] = socket.create_connection((host, port), timeout=ANSWER_TIMEOUT_S)
            sock.sendall(b"".join(_to_bytes(m) for m in entry["messages"]))
            recorded.append({**entry, "answers": _read_answer(sock, entry["messages"])})
    finally:
        for sock in sockets.values():
            sock.close()
    return recorded


# Error fields CrateDB fills from the Java exception (file, line, routine, stack): present, but not comparable.
VOLATILE_ERROR_FIELDS = ("F", "L", "R", "W")
MESSAGE_LIMIT = 300


def mask(answers: list[dict]) -> list[dict]:
    """The answers with what changes between runs or nodes replaced by ``<v>``: the backend key, the server's
    version parameters, the Java source fields of errors; long messages cut to MESSAGE_LIMIT characters."""
    masked = []
    for message in answers:
        message = dict(message)
        kind = message["type"]
        if kind == "BackendKeyData":
            message.update(pid="<v>", secret="<v>")
        elif kind == "ParameterStatus" and message["name"] in ("crate_version", "server_version"):
            message["value"] = "<v>"
        elif kind in ("ErrorResponse", "NoticeResponse"):
            fields = dict(message["fields"])
            for code in VOLATILE_ERROR_FIELDS:
                if code in fields:
                    fields[code] = "<v>"
            if len(fields.get("M", "")) > MESSAGE_LIMIT:
                fields["M"] = fields["M"][:MESSAGE_LIMIT] + "..."
            message["fields"] = fields
        masked.append(message)
    return masked


NOTE = (
    "What a real CrateDB 6.4.3 node answered on its PostgreSQL port to the requests of tests/pg_probe.py "
    "(recorded with `python tests/pg_probe.py`; see tests/fixtures/cratedb-6.4.3/pg-probe.md). "
    "Answers are masked by pg_probe.mask: backend key, version parameters, Java source fields of errors."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--out", help="write the recording here (default: print it)")
    args = parser.parse_args(argv)
    recorded = replay(args.host, args.port, PROBE)
    for entry in recorded:
        entry["answers"] = mask(entry["answers"])
    text = json.dumps({"note": NOTE, "entries": recorded}, indent=1, ensure_ascii=False) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
