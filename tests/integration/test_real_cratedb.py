"""dg-locust against a real CrateDB, run as a person runs it, checked in the database itself (issue 12.3).

Every test starts ``python -m locust -f locustfile.py --headless ...`` (tests/support.py) against ``DG_CRATEDB_URL``
with the suite's credentials, then asks the database, over plain HTTP, what it kept: after ``REFRESH TABLE``, the
stored rows lie within [inserted, inserted + in doubt] of the summary line (exactly the rows asked for when the run
is bounded by ``INGEST_SIZE``), no (sensor, ts) is stored twice, the columns have the types the model implies, and
every sensor carries one tag combination. Each test writes its own table (``doc.it_<test>_<random>``) and drops it.
"""

import locust  # noqa: F401

import json
import re
import secrets

import pytest
from real_cratedb import SqlError, quote
from support import free_port, run_locust

TEMPERATURE_COLUMNS = {
    "ts": "timestamp with time zone",
    "plant": "integer",
    "line": "integer",
    "sensor_id": "integer",
    "value": "double precision",
    "button_press": "boolean",
    "g_ts_week": "timestamp with time zone",
}
TEMPERATURE_TAGS = ("plant", "line")
INGEST_TS = 1600163743  # epoch seconds of every bounded run's first step (the seed's own example)
DELTA_MS = 500  # the default INGEST_DELTA
RUN_TIMEOUT = 400  # seconds; a loaded two-core machine runs the node and the load generator at once
VERIFY_PASSED = re.compile(r"^dg verify: passed: ", re.M)
WORKER_LINE = re.compile(r"^dg worker (\d+): inserted=(\d+) failed=(\d+) in_doubt=(\d+)$", re.M)
TAKES = re.compile(r"worker (\d+) takes sensors (\d+)\.\.(\d+)")


def dg_locust(db, tmp_path, *args: str, hosts: tuple[str, ...] = ()):
    """A headless dg-locust run against the suite's database (or ``hosts``), credentials passed as environment
    variables, as the README advises for the password."""
    host = ",".join(hosts or (db.url,))
    return run_locust(["--headless", "-H", host, *args], tmp_path, env=db.product_environment(), timeout=RUN_TIMEOUT)


def bounded(first: int, last: int, size: int) -> list[str]:
    """Options for a run that ends by itself after ``size`` rows of each sensor ``first..last``."""
    return ["--id-start", str(first), "--id-end", str(last), "--ingest-size", str(size), "--ingest-ts", str(INGEST_TS)]


def assert_stored_as_acknowledged(table, result, *, sensors: int) -> dict:
    """What every run must leave behind; returns the summary."""
    assert result.exit_code == 0, result.output[-3000:]
    summary = result.summary
    stored = table.count()
    assert summary["inserted"] > 0, result.output[-3000:]
    assert summary["inserted"] <= stored <= summary["inserted"] + summary["in_doubt"], (summary, stored)
    assert summary["inserted"] == result.reported_rows  # Locust's own statistics count the same rows
    assert table.duplicates(("sensor_id", "ts")) == 0
    assert table.column_types() == TEMPERATURE_COLUMNS
    combinations = table.tag_combinations("sensor_id", TEMPERATURE_TAGS)
    assert len(combinations) == sensors
    assert all(len(found) == 1 for found in combinations.values()), combinations
    # 100 plants x 5 lines: ids up to 500 each get a combination of their own
    assert len({found[0] for found in combinations.values()}) == sensors
    assert all(0 <= plant < 100 and 0 <= line < 5 for [(plant, line)] in combinations.values())
    return summary


def assert_exactly(table, result, *, first: int, last: int, size: int) -> None:
    """A bounded run stored exactly ``size`` rows of each sensor, on the expected timestamps."""
    summary = assert_stored_as_acknowledged(table, result, sensors=last - first + 1)
    expected = (last - first + 1) * size
    assert (summary["inserted"], summary["failed"], summary["in_doubt"]) == (expected, 0, 0), result.output[-3000:]
    assert table.count() == expected
    assert table.rows_per_sensor("sensor_id") == {sensor: size for sensor in range(first, last + 1)}
    first_ts, last_ts = table.db.rows(f"SELECT min(ts), max(ts) FROM {table.qualified}")[0]
    assert (first_ts, last_ts) == (INGEST_TS * 1000, INGEST_TS * 1000 + (size - 1) * DELTA_MS)


@pytest.mark.parametrize("method", ["bulk", "unnest"])
def test_a_timed_run_stores_what_it_acknowledged_and_verify_agrees(db, new_table, record_run, tmp_path, method):
    table = new_table()
    # A batch left in doubt by a busy node makes Locust exit 1; what counts here is what the database kept.
    args = ["-u", "4", "-r", "4", "-t", "12s", "--id-end", "100", "--insert-method", method]
    args += ["--exit-code-on-error", "0"]
    result = dg_locust(db, tmp_path, *args, "--table", table.option, "--verify")
    assert_stored_as_acknowledged(table, result, sensors=100)
    record_run(method, result, table.count())
    assert VERIFY_PASSED.search(result.stdout), result.output[-3000:]


def test_the_seeds_environment_variables_alone_store_ingest_size_rows_of_each_sensor(
    db, new_table, record_run, tmp_path
):
    table = new_table()
    # The seed's Kubernetes Job: only environment variables, the image's Locust settings, no dg-locust option.
    seed_env = {
        "HOST": db.url,
        "TABLE_NAME": table.option,
        "ID_START": "1",
        "ID_END": "40",
        "INGEST_MODE": "1",
        "INGEST_SIZE": "150",
        "INGEST_TS": str(INGEST_TS),
        "SHARDS": "2",
        "REPLICAS": "0",
        "VERIFY": "true",
        "LOCUST_USERS": "4",
        "LOCUST_SPAWN_RATE": "4",
        "LOCUST_STOP_TIMEOUT": "10",
    }
    result = run_locust(["--headless"], tmp_path, env={**db.product_environment(), **seed_env}, timeout=RUN_TIMEOUT)
    assert_exactly(table, result, first=1, last=40, size=150)
    record_run("seed env", result, table.count())
    assert VERIFY_PASSED.search(result.stdout), result.output[-3000:]
    shards, replicas = db.rows(
        "SELECT number_of_shards, number_of_replicas FROM information_schema.tables "
        "WHERE table_schema = ? AND table_name = ?",
        [table.schema, table.name],
    )[0]
    assert (shards, replicas) == (2, "0")


RESERVED_MODEL = {
    "select": {
        "tags": {"order": 3, "group": ["from", "where"], "limit": "id"},
        "fields": {
            "reading": {
                "key": {"value": "table"},
                "type": {"value": "FLOAT"},
                **{
                    name: {"value": value}
                    for name, value in {
                        "min": 0.0,
                        "max": 10.0,
                        "mean": 5.0,
                        "stdev": 1.0,
                        "variance": 0.1,
                        "error_rate": 0.01,
                        "error_length": 1.5,
                    }.items()
                },
            },
            "flag": {"key": {"value": "default"}, "type": {"value": "BOOL"}, "true_ratio": {"value": 0.5}},
        },
    }
}


def test_a_model_whose_table_and_columns_are_reserved_words_is_stored_exactly(db, new_table, record_run, tmp_path):
    # The table is "select" (in a schema of the test's own), the columns "order", "group", "limit", "table" and
    # "default": every one a word CrateDB refuses unquoted.
    table = new_table(schema=f"it_reserved_{secrets.token_hex(3)}", name="select")
    model = tmp_path / "reserved.json"
    model.write_text(json.dumps(RESERVED_MODEL))
    sensors, size = 12, 100
    args = [
        "-u",
        "2",
        "-r",
        "2",
        "--model",
        str(model),
        "--table",
        table.option,
        "--verify",
        *bounded(1, sensors, size),
    ]
    result = dg_locust(db, tmp_path, *args)
    assert result.exit_code == 0, result.output[-3000:]
    assert VERIFY_PASSED.search(result.stdout), result.output[-3000:]
    assert (result.summary["inserted"], result.summary["failed"], result.summary["in_doubt"]) == (1200, 0, 0)
    assert table.count() == sensors * size
    record_run("reserved words", result, table.count())
    assert table.column_types() == {
        "ts": "timestamp with time zone",
        "order": "integer",
        "group": "text",
        "limit": "integer",
        "table": "double precision",
        "default": "boolean",
        "g_ts_week": "timestamp with time zone",
    }
    assert table.duplicates(("limit", "ts")) == 0
    assert table.rows_per_sensor("limit") == {sensor: size for sensor in range(1, sensors + 1)}
    combinations = table.tag_combinations("limit", ("order", "group"))
    assert all(len(found) == 1 for found in combinations.values()), combinations
    # 3 x 2 combinations: ids 1..6 each get their own, ids 7..12 repeat them
    assert {found[0] for sensor, found in combinations.items() if sensor <= 6} == {
        (order, group) for order in range(3) for group in ("from", "where")
    }
    low, high = db.rows(f"SELECT min({quote('table')}), max({quote('table')}) FROM {table.qualified}")[0]
    assert 0.0 <= low <= high <= 10.0


# Sensor values of the temperature model lie around 6.4 (6.0-7.4, errors beyond): a CHECK refuses about half.
CHECK_LIMIT = 6.4


def test_rows_a_check_constraint_refuses_are_counted_as_failed_by_bulk_and_by_unnest(
    db, new_table, record_run, tmp_path
):
    sensors, size = 20, 100
    failed = {}
    for method in ("bulk", "unnest"):
        table = new_table()
        db.sql(
            f'CREATE TABLE {table.qualified} ("ts" TIMESTAMP WITH TIME ZONE, "plant" INTEGER, "line" INTEGER, '
            f'"sensor_id" INTEGER, "value" DOUBLE PRECISION CHECK ("value" < {CHECK_LIMIT}), "button_press" BOOLEAN) '
            "CLUSTERED INTO 2 SHARDS WITH (number_of_replicas = 0)"
        )
        # One seed for both methods, so both send the same rows; a batch with refused rows is a failed request
        # in Locust's statistics, which is not what is checked here.
        args = ["-u", "2", "-r", "2", "--insert-method", method, "--batch-size", "500", "--seed", "12"]
        args += ["--table", table.option, "--verify", "--exit-code-on-error", "0", *bounded(1, sensors, size)]
        result = dg_locust(db, tmp_path, *args)
        assert result.exit_code == 0, result.output[-3000:]
        assert VERIFY_PASSED.search(result.stdout), result.output[-3000:]
        summary, stored = result.summary, table.count()
        record_run(method, result, stored)
        assert summary["in_doubt"] == 0
        assert summary["inserted"] == stored
        assert summary["failed"] == sensors * size - stored
        assert 0.2 * sensors * size < summary["failed"] < 0.8 * sensors * size, summary
        assert db.value(f'SELECT max("value") FROM {table.qualified}') < CHECK_LIMIT
        assert table.duplicates(("sensor_id", "ts")) == 0
        failed[method] = summary["failed"]
    assert failed["bulk"] == failed["unnest"]  # the same rows, refused the same way, counted the same


def test_a_distributed_run_stores_every_row_once_and_the_master_counts_each_worker(db, new_table, record_run, tmp_path):
    table = new_table()
    port = free_port()
    args = ["--processes", "2", "-u", "4", "-r", "4", "--table", table.option, *bounded(1, 60, 100)]
    args += ["--master-bind-host", "127.0.0.1", "--master-bind-port", str(port), "--master-port", str(port)]
    result = dg_locust(db, tmp_path, *args)
    assert_exactly(table, result, first=1, last=60, size=100)
    record_run("2 processes", result, table.count())
    per_worker = {int(i): int(inserted) for i, inserted, _failed, _doubt in WORKER_LINE.findall(result.stdout)}
    slices = {int(i): (int(first), int(last)) for i, first, last in TAKES.findall(result.stderr)}
    assert len(slices) == 2 and set(slices) == set(per_worker), result.output[-3000:]
    assert sum(per_worker.values()) == 6000
    for worker, (first, last) in slices.items():
        stmt = f"SELECT count(*) FROM {table.qualified} WHERE sensor_id BETWEEN ? AND ?"
        assert per_worker[worker] == db.value(stmt, [first, last]) == (last - first + 1) * 100


def test_several_hosts_share_the_inserts(db, new_table, record_run, tmp_path):
    # A cluster (DG_CRATEDB_URLS) gets its nodes; a single node is named twice, which is what -H allows too.
    hosts = db.urls if len(db.urls) > 1 else (db.url, db.url)
    table = new_table()
    args = ["-u", "4", "-r", "4", "--batch-size", "500", "--table", table.option, *bounded(1, 60, 200)]
    result = dg_locust(db, tmp_path, *args, hosts=hosts)
    assert_exactly(table, result, first=1, last=60, size=200)
    # Which node coordinated each insert (sys.jobs_log is kept per node) and as whom.
    handled = db.rows(
        "SELECT node['name'], username, count(*) FROM sys.jobs_log WHERE stmt LIKE ? GROUP BY 1, 2",
        [f"INSERT INTO {table.qualified}%"],
    )
    assert {username for _node, username, _count in handled} == {db.user or "crate"}
    assert sum(count for *_, count in handled) >= 24  # 12,000 rows in batches of 500
    assert len({node for node, _user, _count in handled}) == len(set(hosts))
    per_node = {node: count for node, _user, count in handled}
    record_run(f"{len(hosts)} hosts", result, table.count(), inserts_per_node=per_node)


def test_a_wrong_password_stops_the_run_at_once_with_one_line_and_exit_2(db, new_table, record_run, tmp_path):
    user = db.user or "it_nobody"  # the trusted superuser of a local node takes any password
    password = f"wrong-{secrets.token_hex(4)}"
    try:
        db.sql("SELECT 1", user=user, password=password)
        pytest.skip(f"{db.url} accepted a wrong password for {user!r}: it does not check passwords")
    except SqlError as refused:
        assert refused.status == 401
    table = new_table()
    result = run_locust(
        ["--headless", "-u", "2", "-r", "2", "-t", "60s", "-H", db.url, "--table", table.option],
        tmp_path,
        env={"USERNAME": user, "PASSWORD": password},
        timeout=RUN_TIMEOUT,
    )
    assert result.exit_code == 2, result.output[-3000:]
    assert "Traceback" not in result.output
    assert password not in result.output
    errors = [line for line in result.output.splitlines() if "dg-locust:" in line]
    assert len(errors) == 1, result.output[-3000:]
    assert f"refused user {user!r}" in errors[0] and db.url in errors[0], errors[0]
    assert not table.exists()  # nothing was created or written
    record_run("wrong password", result, 0)
