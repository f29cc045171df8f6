"""Tests of the CrateDB HTTP test double (tests/cratedb_double.py) beyond the recorded answers that
tests/test_conformance.py replays: the official ``crate`` client against it, SQL behaviour the recording does not
cover, auth, the latency model, every fault kind, count-only mode, and the process helpers (shared database,
restart on the same port)."""

import locust  # noqa: F401

import base64
import gzip
import json
import random
import re
import socket
import threading
import time
import uuid
import zlib

import pytest
import urllib3
from crate import client
from crate.client.exceptions import ProgrammingError
from cratedb_double import (
    DoubleProcess,
    count_rows,
    duplicate_keys,
    fetch_rows,
    scan_matrix,
    scan_request,
)

DDL = (
    "CREATE TABLE IF NOT EXISTS {table} ("
    '"ts" TIMESTAMP WITH TIME ZONE, "sensor" TEXT, "value" DOUBLE PRECISION, "seq" INTEGER, "ok" BOOLEAN, '
    '"g_ts_week" TIMESTAMP WITH TIME ZONE GENERATED ALWAYS AS date_trunc(\'week\', "ts")'
    ') CLUSTERED INTO 4 SHARDS PARTITIONED BY ("g_ts_week") WITH (number_of_replicas = 0)'
)
# The same columns with a CHECK constraint: rows with a negative seq are refused by the table, one by one.
CHECKED_DDL = DDL.replace('"seq" INTEGER', '"seq" INTEGER CHECK ("seq" >= 0)')
INSERT = "INSERT INTO {table} (ts, sensor, value, seq, ok) VALUES (?, ?, ?, ?, ?)"
UNNEST = "INSERT INTO {table} (ts, sensor, value, seq, ok) (SELECT * FROM UNNEST(?, ?, ?, ?, ?))"
T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z, a Tuesday


def make_rows(n: int, start: int = 0) -> list[list]:
    return [[T0 + (start + i) * 1000, f"sensor-{i % 7}", 20.0 + i / 10, start + i, i % 2 == 0] for i in range(n)]


def unique_table() -> str:
    return f'"doc"."t_{uuid.uuid4().hex[:10]}"'


def plain_name(table: str) -> str:
    return table.replace('"', "")


class Sql:
    """Raw HTTP access to one double, keeping status codes and bodies that the crate client hides."""

    def __init__(self, url: str):
        self.url = url
        self.http = urllib3.PoolManager(retries=False, timeout=10)

    def post(self, payload=None, *, query: str = "?types=true", headers=None, body: bytes | None = None):
        data = body if body is not None else json.dumps(payload).encode()
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        return self.http.request("POST", self.url + "/_sql" + query, body=data, headers=hdrs)

    def ok(self, stmt: str, args=None, bulk_args=None, **kwargs) -> dict:
        payload = {"stmt": stmt}
        if args is not None:
            payload["args"] = args
        if bulk_args is not None:
            payload["bulk_args"] = bulk_args
        resp = self.post(payload, **kwargs)
        assert resp.status == 200, resp.data
        return json.loads(resp.data)

    def create(self, table: str) -> str:
        self.ok(DDL.format(table=table))
        return table


@pytest.fixture(scope="module")
def double(tmp_path_factory):
    with DoubleProcess(tmp_path_factory.mktemp("main") / "db.sqlite", seed=7) as proc:
        yield proc


@pytest.fixture(scope="module")
def sql(double):
    return Sql(double.url)


@pytest.fixture(scope="module")
def _fault_double(tmp_path_factory):
    with DoubleProcess(tmp_path_factory.mktemp("faults") / "db.sqlite", seed=11) as proc:
        yield proc


@pytest.fixture
def fault_double(_fault_double):
    """The fault double with no faults and no latency, its counters zeroed."""
    _fault_double.configure(
        clear_faults=True, overhead_ms=0, per_row_us=0, max_concurrency=0, overload_rows=0, verify_every=100
    )
    _fault_double.reset_stats()
    return _fault_double


@pytest.fixture(scope="module")
def _count_double():
    with DoubleProcess(count_only=True, seed=3) as proc:
        yield proc


@pytest.fixture
def count_double(_count_double):
    _count_double.configure(clear_faults=True, verify_every=100)
    _count_double.reset_stats()
    return _count_double


# --------------------------------------------------------------------------------------------------------------------
# Protocol fidelity through the official client


def test_node_info_through_crate_client(double, sql):
    conn = client.connect(double.url, timeout=5)
    assert str(conn.lowest_server_version) == "6.4.3"  # the version the conformance answers were recorded from
    info = json.loads(sql.http.request("GET", double.url + "/").data)
    assert set(info) == {"ok", "status", "name", "cluster_name", "version"}
    assert info["ok"] is True and info["status"] == 200
    assert set(info["version"]) == {"number", "build_hash", "build_timestamp", "build_snapshot", "lucene_version"}


def test_bulk_insert_through_crate_client_reports_each_row_the_table_refuses(double):
    table = unique_table()
    conn = client.connect(double.url, timeout=5, compress=False)
    cur = conn.cursor()
    cur.execute(CHECKED_DDL.format(table=table))
    assert cur.rowcount == 1
    rows = make_rows(5)
    rows[2][3] = -1  # refused by CHECK ("seq" >= 0)
    rows[4][0] = "2024-01-02T03:04:05Z"  # ISO timestamps are accepted
    results = cur.executemany(INSERT.format(table=table), rows)
    assert [r["rowcount"] for r in results] == [1, 1, -2, 1, 1]
    assert results[2]["error"]["code"] == 4000
    assert re.fullmatch(
        r'SQLParseException\[Failed CONSTRAINT doc_t_\w+_seq_check_[0-9a-f]{12} CHECK \("seq" >= 0\) '
        r"for values: \[1700000002000, sensor-2, 20\.2, -1, true\]\]",
        results[2]["error"]["message"],
    )
    assert cur.rowcount == 4
    cur.execute(f"SELECT count(*) FROM {table}")
    assert cur.fetchall() == [[4]]
    assert count_rows(double.db_path, plain_name(table)) == 4
    stored = {r["seq"]: r for r in fetch_rows(double.db_path, table)}
    assert stored[4]["ts"] == 1704164645000  # 2024-01-02T03:04:05Z in epoch ms
    assert stored[0]["g_ts_week"] == 1699833600000  # Monday 2023-11-13, the generated date_trunc('week', ts)
    assert stored[4]["g_ts_week"] == 1704067200000  # Monday 2024-01-01


def test_one_value_that_cannot_be_cast_fails_the_whole_bulk_request(double, sql):
    # As a real CrateDB 6.4.3 does (recorded: bulk_type_error_one_row): 400, and no row of the request is stored.
    table = sql.create(unique_table())
    rows = make_rows(5)
    rows[2][3] = "not a number"  # INTEGER column
    resp = sql.post({"stmt": INSERT.format(table=table), "bulk_args": rows})
    assert resp.status == 400
    assert json.loads(resp.data) == {
        "error": {"message": "SQLParseException[Cannot cast value `not a number` to type `integer`]", "code": 4000}
    }
    assert count_rows(double.db_path, table) == 0
    with pytest.raises(ProgrammingError, match="Cannot cast value"):
        client.connect(double.url, timeout=5).cursor().executemany(INSERT.format(table=table), rows)
    assert count_rows(double.db_path, table) == 0


def test_unnest_stores_what_the_table_accepts_and_counts_only_that(double, sql):
    table = unique_table()
    sql.ok(CHECKED_DDL.format(table=table))
    rows = make_rows(10)
    for i in (1, 5, 6):
        rows[i][3] = -i
    out = sql.ok(UNNEST.format(table=table), args=[list(col) for col in zip(*rows, strict=True)])
    assert out["rowcount"] == 7  # the refused rows are just missing (recorded: unnest_check_violation_some)
    assert sorted(r["seq"] for r in fetch_rows(double.db_path, table)) == [0, 2, 3, 4, 7, 8, 9]


def test_gzip_compressed_bulk_through_crate_client(double):
    table = unique_table()
    conn = client.connect(double.url, timeout=5)  # compress=8192 by default: this body is gzipped
    cur = conn.cursor()
    cur.execute(DDL.format(table=table))
    results = cur.executemany(INSERT.format(table=table), make_rows(500))
    assert len(results) == 500 and all(r == {"rowcount": 1} for r in results)
    assert count_rows(double.db_path, table) == 500


def test_unnest_insert_and_select(double, sql):
    table = sql.create(unique_table())
    rows = make_rows(50)
    out = sql.ok(UNNEST.format(table=table), args=[list(col) for col in zip(*rows, strict=True)])
    assert list(out) == ["cols", "col_types", "rows", "rowcount", "duration"]
    assert out["rowcount"] == 50 and out["rows"] == [[]]
    assert count_rows(double.db_path, table) == 50
    counted = sql.ok(f"SELECT count(*) FROM {table} WHERE ts >= ? AND seq BETWEEN $2 AND $3", args=[T0, 10, 19])
    assert counted["rows"] == [[10]] and counted["cols"] == ["count"] and counted["col_types"] == [10]
    picked = sql.ok(f"SELECT seq, ok, ts FROM {table} WHERE ok = ? ORDER BY seq DESC LIMIT 2", args=[True])
    assert picked["rows"] == [[48, True, T0 + 48_000], [46, True, T0 + 46_000]]
    assert picked["col_types"] == [9, 3, 11]
    no_types = sql.ok(f"SELECT count(*) FROM {table}", query="")
    assert list(no_types) == ["cols", "rows", "rowcount", "duration"]


def test_unnest_pads_shorter_arrays_with_null(double, sql):
    table = sql.create(unique_table())
    out = sql.ok(UNNEST.format(table=table), args=[[T0, T0], ["a"], [1.0, 2.0, 3.0], [1, 2], [True, True]])
    assert out["rowcount"] == 3  # recorded: unnest_ragged_arrays
    rows = fetch_rows(double.db_path, table)
    assert [(r["ts"], r["sensor"], r["value"], r["seq"]) for r in rows] == [
        (T0, "a", 1.0, 1),
        (T0, None, 2.0, 2),
        (None, None, 3.0, None),
    ]


def test_single_statement_with_bad_value_fails_as_a_whole(double, sql):
    table = sql.create(unique_table())
    resp = sql.post({"stmt": INSERT.format(table=table), "args": [T0, "s", 1.0, 1, "maybe"]})
    assert resp.status == 400
    assert json.loads(resp.data) == {
        "error": {"message": "SQLParseException[Cannot cast value `maybe` to type `boolean`]", "code": 4000}
    }
    assert count_rows(double.db_path, table) == 0


@pytest.mark.parametrize(
    ("payload", "status", "code", "prefix"),
    [
        ({"stmt": "SELECT count(*) FROM doc.no_such_table"}, 404, 4041, "RelationUnknown[Relation 'doc.no_such_table'"),
        ({"stmt": "SELECT count(*) FROM nowhere.x"}, 404, 4045, "SchemaUnknownException[Schema 'nowhere' unknown]"),
        ({"stmt": "SELEC count(*) FROM doc.x"}, 400, 4000, "ParsingException[line 1:1: mismatched input 'SELEC'"),
        ({"stmt": "SELECT x FROM doc.t WHERE select = 1"}, 400, 4000, "ParsingException[line 1:27: "),
        (
            {"stmt": "UPDATE doc.x SET a = 1"},
            400,
            4004,
            "UnsupportedFeatureException[the CrateDB test double does not implement UPDATE statements]",
        ),
        (
            {"stmt": "INSERT INTO doc.x (a) VALUES (?)", "args": [1], "bulk_args": [[1]]},
            400,
            4000,
            "SQLParseException[request body contains args and bulk_args. It's forbidden to provide both]",
        ),
        ({"stmt": "INSERT INTO doc.nope (a) VALUES (?)", "bulk_args": [[1]]}, 404, 4041, "RelationUnknown["),
        ({"stmt": "SELECT 1", "extra": 1}, 400, 4000, "SQLParseException[Can't parse ["),
        ({"stmt": "CREATE TABLE doc.t (a SMALLINT)"}, 400, 4004, "UnsupportedFeatureException[the CrateDB test"),
    ],
)
def test_error_shapes_and_statuses(sql, payload, status, code, prefix):
    resp = sql.post(payload)
    assert resp.status == status
    assert resp.headers["Content-Type"].startswith("application/json")
    body = json.loads(resp.data)
    assert list(body) == ["error"] and list(body["error"]) == ["message", "code"]
    assert body["error"]["code"] == code
    assert body["error"]["message"].startswith(prefix)


def test_errors_that_need_a_table(sql):
    table = sql.create(unique_table())
    unknown_col = sql.post({"stmt": f"INSERT INTO {table} (ts, nope) VALUES (?, ?)", "args": [T0, 1]})
    assert unknown_col.status == 404
    assert json.loads(unknown_col.data)["error"] == {
        "message": "ColumnUnknownException[Column nope unknown]",
        "code": 4043,
    }
    again = sql.post({"stmt": DDL.format(table=table).replace(" IF NOT EXISTS", "")})
    assert again.status == 409
    assert json.loads(again.data)["error"]["code"] == 4093
    bulk_select = sql.post({"stmt": f"SELECT count(*) FROM {table}", "bulk_args": [[1]]})
    assert bulk_select.status == 400 and json.loads(bulk_select.data)["error"]["code"] == 4004
    # With no bulk args nothing is executed, so even a SELECT answers an empty result list (SqlHttpHandler).
    assert sql.ok(f"SELECT count(*) FROM {table}", bulk_args=[], query="")["results"] == []


def test_select_group_by_having_subquery_and_information_schema(double, sql):
    table = sql.create(unique_table())
    sql.ok(INSERT.format(table=table), bulk_args=make_rows(10) + make_rows(3))  # the first three rows twice
    dupes = f"SELECT count(*) FROM (SELECT ts, seq FROM {table} GROUP BY 1, 2 HAVING count(*) > ?) d"
    assert sql.ok(dupes, args=[1])["rows"] == [[3]]
    grouped = sql.ok(f"SELECT sensor, count(*) AS n FROM {table} GROUP BY sensor ORDER BY sensor LIMIT 2")
    assert grouped["cols"] == ["sensor", "n"] and grouped["rows"] == [["sensor-0", 3], ["sensor-1", 3]]
    bad = sql.post({"stmt": f"SELECT sensor, count(*) FROM {table}"})
    assert bad.status == 400 and "must appear in the GROUP BY clause" in json.loads(bad.data)["error"]["message"]
    schema, name = plain_name(table).split(".")
    columns = sql.ok(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        args=[schema, name],
    )
    assert [c for c, _ in columns["rows"]] == ["ts", "sensor", "value", "seq", "ok", "g_ts_week"]
    assert columns["col_types"] == [4, 4]
    info = sql.ok(
        "SELECT number_of_shards, number_of_replicas, partitioned_by FROM information_schema.tables "
        "WHERE table_name = ?",
        args=[name],
    )
    assert info["rows"] == [[4, "0", ["g_ts_week"]]] and info["col_types"] == [9, 4, [100, 4]]


def test_gzip_bodies_are_read_and_other_encodings_refused(double, sql):
    table = sql.create(unique_table())
    payload = json.dumps({"stmt": INSERT.format(table=table), "bulk_args": make_rows(20)}).encode()
    resp = sql.post(body=gzip.compress(payload), headers={"Content-Encoding": "gzip"})
    assert resp.status == 200 and len(json.loads(resp.data)["results"]) == 20
    resp = sql.post(body=zlib.compress(payload), headers={"Content-Encoding": "deflate"})
    assert resp.status == 400 and json.loads(resp.data)["error"]["code"] == 4004
    assert count_rows(double.db_path, table) == 20


def test_keep_alive_and_connection_close(double):
    with socket.create_connection(("127.0.0.1", double.port), timeout=5) as sock:
        for _ in range(3):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body = recv_http(sock)
            assert head.startswith(b"HTTP/1.1 200") and b"content-type: application/json\r\n" in head
            assert body.endswith(b"}\n")  # pretty-printed with a newline at the end, as CrateDB writes it
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head, _ = recv_http(sock)
        assert b"connection: close" in head.lower()
        assert sock.recv(1) == b""  # the double closed its end


def test_concurrent_create_if_not_exists_all_succeed(double):
    table = unique_table()
    statuses = []

    def create():
        statuses.append(Sql(double.url).post({"stmt": DDL.format(table=table)}).status)

    threads = [threading.Thread(target=create) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 20


def test_duplicate_keys_helper(double, sql):
    plain = sql.create(unique_table())
    sql.ok(INSERT.format(table=plain), bulk_args=make_rows(10))
    sql.ok(INSERT.format(table=plain), bulk_args=make_rows(4))  # the same first four rows again
    assert duplicate_keys(double.db_path, plain, ["ts", "sensor"]) == 4


def test_drop_and_refresh(double, sql):
    table = sql.create(unique_table())
    sql.ok(INSERT.format(table=table), bulk_args=make_rows(3) + [[T0 + 8 * 86_400_000, "x", 1.0, 9, True]])
    assert sql.ok(f"REFRESH TABLE {table}")["rowcount"] == 2  # two weekly partitions
    assert sql.ok(f"DROP TABLE {table}")["rowcount"] == 1
    assert sql.post({"stmt": f"DROP TABLE {table}"}).status == 404
    assert sql.ok(f"DROP TABLE IF EXISTS {table}")["rowcount"] == 0
    assert count_rows(double.db_path, table) == 0


# --------------------------------------------------------------------------------------------------------------------
# Auth and body limit


def test_auth_and_body_limit(tmp_path):
    with DoubleProcess(tmp_path / "db.sqlite", users={"alice": "secret"}, max_body_mb=0.01) as proc:
        for user, password, expected in [
            ("alice", "wrong", 'password authentication failed for user "alice"\n'),
            ("alice", "", 'password authentication failed for user "alice"\n'),
            ("bob", "", 'trust authentication failed for user "bob"\n'),
        ]:
            with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as sock:
                token = base64.b64encode(f"{user}:{password}".encode()).decode()
                sock.sendall(f"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n\r\n".encode())
                head, body = recv_http(sock)
                assert head.startswith(b"HTTP/1.1 401")
                assert b'www-authenticate: Basic realm="CrateDB Authenticator"' in head
                assert b"content-type" not in head.lower()  # recorded: wrong_password has none
                assert body.decode() == expected
                assert sock.recv(1) == b""  # connection closed
        http = urllib3.PoolManager(retries=False)
        assert http.request("GET", proc.url + "/").status == 401
        with pytest.raises(ProgrammingError, match="401"):
            client.connect(proc.url, username="alice", password="nope", timeout=5).cursor().execute("SELECT 1")
        cur = client.connect(proc.url, username="alice", password="secret", timeout=5).cursor()
        cur.execute("CREATE TABLE doc.t (a INTEGER)")
        assert cur.rowcount == 1
        big = json.dumps({"stmt": "INSERT INTO doc.t (a) VALUES (?)", "bulk_args": [[1]] * 5000}).encode()
        auth = {"Authorization": "Basic " + base64.b64encode(b"alice:secret").decode()}
        assert Sql(proc.url).post(body=big, headers=auth).status == 413
        assert proc.stats()["auth_failures"] == 5


# --------------------------------------------------------------------------------------------------------------------
# Latency model


def test_max_concurrency_queues_requests_and_overhead_delays_them(fault_double):
    fault_double.configure(max_concurrency=1, overhead_ms=150)
    elapsed = []

    def one():
        t = time.monotonic()
        assert Sql(fault_double.url).post({"stmt": "SELECT count(*) FROM doc.nowhere"}).status == 404
        elapsed.append(time.monotonic() - t)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(elapsed) >= 0.44  # served one after another: the last waited for two others
    assert min(elapsed) >= 0.14
    assert fault_double.stats()["max_queued"] >= 1


def test_per_row_cost_and_overload(fault_double):
    sql = Sql(fault_double.url)
    table = sql.create(unique_table())
    fault_double.configure(per_row_us=500, overload_rows=1000)
    t = time.monotonic()
    sql.ok(INSERT.format(table=table), bulk_args=make_rows(600))
    assert time.monotonic() - t >= 0.3
    over = sql.post({"stmt": INSERT.format(table=table), "bulk_args": make_rows(1001)})
    assert over.status == 500
    assert json.loads(over.data)["error"]["code"] == 5000
    assert "CircuitBreakingException" in json.loads(over.data)["error"]["message"]
    fault_double.configure(overload_response="429_empty")
    over = sql.post({"stmt": INSERT.format(table=table), "bulk_args": make_rows(1001)})
    assert over.status == 429 and over.data == b""
    assert count_rows(fault_double.db_path, table) == 600
    assert fault_double.stats()["overloads"] == 2
    fault_double.configure(overload_response="circuit_breaker")


# --------------------------------------------------------------------------------------------------------------------
# Faults


def insert_raw(fault_double, table, n=10):
    return Sql(fault_double.url).post({"stmt": INSERT.format(table=table), "bulk_args": make_rows(n)})


@pytest.mark.parametrize("store", [True, False])
def test_reset_before_response(fault_double, store):
    table = Sql(fault_double.url).create(unique_table())
    fault_double.configure(reset_before_response={"every": 1, "store": store})
    with pytest.raises(urllib3.exceptions.ProtocolError, match="Connection aborted"):
        insert_raw(fault_double, table)
    assert count_rows(fault_double.db_path, table) == (10 if store else 0)
    assert fault_double.stats()["faults"] == {"reset_before_response": 1}


def test_reset_mid_response_stores_rows_and_breaks_the_body(fault_double):
    table = Sql(fault_double.url).create(unique_table())
    fault_double.configure(reset_mid_response={"every": 1})
    with socket.create_connection(("127.0.0.1", fault_double.port), timeout=5) as sock:
        body = json.dumps({"stmt": INSERT.format(table=table), "bulk_args": make_rows(10)}).encode()
        sock.sendall(b"POST /_sql HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        received = b""
        with pytest.raises(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
            raise AssertionError("the connection ended without a reset")
    head, _, partial = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = int(next(line for line in head.split(b"\r\n") if line.startswith(b"content-length")).split(b":")[1])
    assert 0 < len(partial) < length
    assert count_rows(fault_double.db_path, table) == 10


@pytest.mark.parametrize("code", [5031, 5033, 5035])
def test_http_503(fault_double, code):
    table = Sql(fault_double.url).create(unique_table())
    fault_double.configure(http_503={"every": 1, "code": code})
    resp = insert_raw(fault_double, table)
    assert resp.status == 503
    error = json.loads(resp.data)["error"]
    assert list(error) == ["message", "code"] and error["code"] == code
    assert count_rows(fault_double.db_path, table) == 0


def test_http_429_empty_closes_the_connection(fault_double):
    table = Sql(fault_double.url).create(unique_table())
    fault_double.configure(http_429_empty={"every": 1})
    with socket.create_connection(("127.0.0.1", fault_double.port), timeout=5) as sock:
        body = json.dumps({"stmt": INSERT.format(table=table), "bulk_args": make_rows(10)}).encode()
        sock.sendall(b"POST /_sql HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        head, data = recv_http(sock)
        assert head.startswith(b"HTTP/1.1 429") and data == b""
        assert b"connection: close" in head
        assert sock.recv(1) == b""
    assert count_rows(fault_double.db_path, table) == 0


def test_circuit_breaker_and_http_401(fault_double):
    table = Sql(fault_double.url).create(unique_table())
    fault_double.configure(circuit_breaker={"every": 1})
    resp = insert_raw(fault_double, table)
    assert resp.status == 500 and json.loads(resp.data)["error"]["code"] == 5000
    fault_double.configure(clear_faults=True, http_401={"every": 1})
    resp = insert_raw(fault_double, table)
    assert resp.status == 401
    assert resp.data == b'trust authentication failed for user "crate"\n'
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="CrateDB Authenticator"'
    assert count_rows(fault_double.db_path, table) == 0
    assert fault_double.stats()["faults"] == {"circuit_breaker": 1, "http_401": 1}


def test_row_rejections_fail_rows_without_storing_them(fault_double):
    table = Sql(fault_double.url).create(unique_table())
    fault_double.configure(row_rejections={"every": 1, "fraction": 0.5})
    results = json.loads(insert_raw(fault_double, table, 10).data)["results"]
    failed = [r for r in results if r["rowcount"] == -2]
    assert len(failed) == 5 and all(r["error"]["code"] == 4000 for r in failed)
    assert count_rows(fault_double.db_path, table) == 5
    fault_double.configure(row_rejections={"every": 1, "fraction": 1.0})
    results = json.loads(insert_raw(fault_double, table, 30).data)["results"]
    assert [r["rowcount"] for r in results] == [-2] * 30
    assert sum("error" in r for r in results) == 10  # only the first 10 failed rows carry an error
    assert "error" in results[9] and "error" not in results[10]
    assert fault_double.stats()["rows_rejected"] == 35


def test_slow_delays_the_response_but_stores(fault_double):
    table = Sql(fault_double.url).create(unique_table())
    fault_double.configure(slow={"every": 1, "seconds": 0.4})
    t = time.monotonic()
    assert insert_raw(fault_double, table).status == 200
    assert time.monotonic() - t >= 0.4
    assert count_rows(fault_double.db_path, table) == 10


def test_drop_acknowledged_stores_part_but_acknowledges_all(fault_double):
    table = Sql(fault_double.url).create(unique_table())
    fault_double.configure(drop_acknowledged={"every": 1, "keep": 0.3})
    results = json.loads(insert_raw(fault_double, table, 20).data)["results"]
    assert results == [{"rowcount": 1}] * 20
    assert count_rows(fault_double.db_path, table) == 6
    assert fault_double.stats()["rows_dropped"] == 14


def test_every_times_and_rate_select_requests(fault_double):
    sql = Sql(fault_double.url)
    table = sql.create(unique_table())
    fault_double.configure(http_503={"every": 3})
    statuses = [insert_raw(fault_double, table, 1).status for _ in range(6)]
    assert statuses == [200, 200, 503, 200, 200, 503]
    assert sql.post({"stmt": f"SELECT count(*) FROM {table}"}).status == 200  # INSERT requests only by default
    fault_double.configure(http_503={"every": 1, "times": 2})
    assert [insert_raw(fault_double, table, 1).status for _ in range(4)] == [503, 503, 200, 200]
    fault_double.configure(http_503={"rate": 0.5})
    statuses = [insert_raw(fault_double, table, 1).status for _ in range(40)]
    assert 5 <= statuses.count(503) <= 35
    assert fault_double.stats()["faults"]["http_503"] == 4 + statuses.count(503)
    config = fault_double.configure(http_503=None)
    assert config["faults"] == {}


def test_bad_fault_config_is_refused(fault_double):
    with pytest.raises(ValueError, match="unknown fault kind"):
        fault_double.configure(faults={"meteor": {"rate": 1}})
    with pytest.raises(ValueError, match="rate"):
        fault_double.configure(http_503={"rate": 2})


# --------------------------------------------------------------------------------------------------------------------
# Count-only mode


def test_count_only_counts_bulk_and_unnest(count_double):
    sql = Sql(count_double.url)
    table = sql.create(unique_table())
    count_double.configure(verify_every=1)  # check every byte count against a full parse
    for n in (1000, 2500):
        out = sql.ok(INSERT.format(table=table), bulk_args=make_rows(n))
        assert len(out["results"]) == n and out["results"][0] == {"rowcount": 1}
        assert list(out) == ["cols", "duration", "results"]
    rows = make_rows(777)
    out = sql.ok(UNNEST.format(table=table), args=[list(c) for c in zip(*rows, strict=True)])
    assert out["rowcount"] == 777
    client.connect(count_double.url, timeout=5).cursor().executemany(INSERT.format(table=table), make_rows(3000))
    stats = count_double.stats()
    assert stats["rows_counted"] == {plain_name(table): 1000 + 2500 + 777 + 3000}
    assert stats["count_checks"] == 4  # the gzipped body is scanned after decompression like the others
    assert stats["count_mismatches"] == 0 and stats["count_fallbacks"] == 0 and stats["rows_stored"] == 0
    assert sql.ok(f"SELECT count(*) FROM {table}")["rows"] == [[7277]]


def test_count_only_falls_back_to_a_full_parse_when_unsure(count_double):
    sql = Sql(count_double.url)
    table = sql.create(unique_table())
    rows = make_rows(10)
    rows[3][1] = "tricky ],[ sensor"  # row separators inside a string: the byte scan gives up and parses fully
    sql.ok(INSERT.format(table=table), bulk_args=rows)
    assert count_double.stats()["count_fallbacks"] == 1
    rows[3][1] = 'escaped "],[" sensor'  # escaped quotes: strings are blanked exactly, no fallback needed
    sql.ok(INSERT.format(table=table), bulk_args=rows)
    stats = count_double.stats()
    assert stats["count_fallbacks"] == 1
    assert stats["rows_counted"] == {plain_name(table): 20}


def test_count_only_faults_apply(count_double):
    sql = Sql(count_double.url)
    table = sql.create(unique_table())
    count_double.configure(row_rejections={"every": 1, "fraction": 0.25})
    results = sql.ok(INSERT.format(table=table), bulk_args=make_rows(100))["results"]
    assert sum(r["rowcount"] == -2 for r in results) == 25
    assert count_double.stats()["rows_counted"] == {plain_name(table): 75}


def random_value(rng: random.Random):
    return rng.choice(
        [
            rng.randint(-(10**15), 10**15),
            rng.random() * 1e6,
            None,
            True,
            "plain",
            "with, comma",
            "brackets ] [ ],[",
            "],[x,",
            'quote " and \\ backslash',
            "unicode ü € 🙂",
            "",
        ]
    )


@pytest.mark.parametrize("seed", range(40))
def test_scan_matrix_never_miscounts(seed):
    rng = random.Random(seed)
    outer, inner = rng.randint(0, 30), rng.randint(1, 6)
    matrix = [[random_value(rng) for _ in range(inner)] for _ in range(outer)]
    for dumps in (
        lambda o: json.dumps(o).encode(),
        lambda o: json.dumps(o, separators=(",", ":"), ensure_ascii=False).encode(),
    ):
        shape = scan_matrix(dumps(matrix))
        assert shape in (None, (outer, inner) if outer else (0, 0))


def test_scan_matrix_is_not_fooled_by_strings_that_look_like_rows():
    # Without escapes this string would turn one row of two values into what looks like two rows of two.
    assert scan_matrix(json.dumps([[1, "],[x,"]]).encode()) is None
    # With a backslash anywhere, strings are blanked by a full string scan instead, which is exact.
    assert scan_matrix(json.dumps([[1, "],[x,"], [2, "\\"]]).encode()) == (2, 2)


def test_scan_matrix_is_sure_about_ordinary_bodies():
    rows = make_rows(100)
    body = json.dumps({"stmt": INSERT.format(table="doc.t"), "bulk_args": rows}).encode()
    stmt, key, array = scan_request(body)
    assert (stmt, key) == (INSERT.format(table="doc.t"), "bulk_args")
    assert scan_matrix(array) == (100, 5)
    assert scan_matrix(json.dumps([list(c) for c in zip(*rows, strict=True)]).encode()) == (5, 100)
    assert scan_matrix(b"[[[1],[2]],[[3],[4]]]") is None  # nested arrays
    assert scan_matrix(b"[[1,2],3]") is None  # a scalar where a row should be
    assert scan_matrix(b'[[1,{"a":[1,2]}],[2,3]]') is None  # objects


# --------------------------------------------------------------------------------------------------------------------
# Processes: two nodes on one file, restart


def test_two_processes_share_one_database(tmp_path):
    db = tmp_path / "cluster.sqlite"
    with DoubleProcess(db) as node1, DoubleProcess(db) as node2:
        table = Sql(node1.url).create(unique_table())
        Sql(node2.url).ok(INSERT.format(table=table), bulk_args=make_rows(10))
        Sql(node1.url).ok(INSERT.format(table=table), bulk_args=make_rows(5, start=10))
        assert Sql(node2.url).ok(f"SELECT count(*) FROM {table}")["rows"] == [[15]]
        assert count_rows(db, table) == 15
        assert Sql(node2.url).ok(f"DROP TABLE {table}")["rowcount"] == 1
        assert Sql(node1.url).post({"stmt": f"SELECT count(*) FROM {table}"}).status == 404


def test_restart_on_the_same_port_keeps_data(tmp_path):
    with DoubleProcess(tmp_path / "db.sqlite") as proc:
        table = Sql(proc.url).create(unique_table())
        Sql(proc.url).ok(INSERT.format(table=table), bulk_args=make_rows(10))
        port = proc.port
        proc.stop()
        assert not proc.alive
        with pytest.raises(urllib3.exceptions.MaxRetryError):
            urllib3.PoolManager(retries=0).request("GET", proc.url + "/", timeout=2)
        proc.restart()
        assert proc.port == port
        Sql(proc.url).ok(INSERT.format(table=table), bulk_args=make_rows(5, start=10))
        assert Sql(proc.url).ok(f"SELECT count(*) FROM {table}")["rows"] == [[15]]
        assert count_rows(proc.db_path, table) == 15


def recv_http(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read one HTTP response with a Content-Length body from a raw socket: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")).split(b":")[1]
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the end of the body")
        body += chunk
    return head, body
