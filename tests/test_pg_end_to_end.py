"""--insert-method pg / pg-unnest end to end: the Locust CLI against the pg test double, counting what it stored."""

import locust  # noqa: F401  (first: gevent monkey-patches sockets before anything else imports them)

import pytest
from cratedb_double import count_rows, duplicate_keys
from pg_double import PgDoubleProcess
from support import free_port, run_locust

TABLE = "doc.temperature"
USER, PASSWORD = "dg", "pg-secret"


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if "/ERROR/" in line]


@pytest.fixture
def double(tmp_path):
    with PgDoubleProcess(tmp_path / "crate.sqlite", users={USER: PASSWORD}) as server:
        yield server


@pytest.mark.parametrize("method", ["pg", "pg-unnest"])
def test_a_pg_run_stores_exactly_the_rows_it_reports(double, tmp_path, method):
    args = ["--headless", "-u", "4", "-r", "4", "-t", "6s", "-H", double.pg_url, "--insert-method", method]
    result = run_locust([*args, "--username", USER, "--verify"], tmp_path, env={"PASSWORD": PASSWORD})
    assert result.exit_code == 0, result.output[-3000:]
    summary = result.summary
    assert summary["inserted"] > 0 and summary["failed"] == summary["in_doubt"] == 0
    assert count_rows(double.db_path, TABLE) == summary["inserted"] == result.reported_rows
    assert duplicate_keys(double.db_path, TABLE, ["sensor_id", "ts"]) == 0
    assert "dg verify: passed" in result.output  # --verify counted through the PostgreSQL port too
    assert [entry["method"] for entry in result.report] == ["CrateDB"]  # Locust's request_type, as over HTTP
    assert PASSWORD not in result.output


def test_an_http_host_maps_to_the_pg_port(double, tmp_path):
    # -H names the HTTP port (the double's, here); the rows go to --pg-port on the same host
    args = ["--headless", "-u", "2", "-r", "2", "-t", "4s", "-H", double.url, "--insert-method", "pg"]
    args += ["--pg-port", str(double.pg_port), "--username", USER, "--password", PASSWORD]
    result = run_locust(args, tmp_path)
    assert result.exit_code == 0, result.output[-3000:]
    assert count_rows(double.db_path, TABLE) == result.summary["inserted"] > 0


def test_refused_rows_are_counted_failed_and_never_stored(double, tmp_path):
    double.configure(row_rejections={"fraction": 0.1})
    args = [
        "--headless",
        "-u",
        "2",
        "-r",
        "2",
        "-H",
        double.pg_url,
        "--insert-method",
        "pg",
        "--exit-code-on-error",
        "0",
    ]
    env = {"ID_START": "1", "ID_END": "50", "INGEST_SIZE": "200", "USERNAME": USER, "PASSWORD": PASSWORD}
    result = run_locust([*args, "--batch-size", "500"], tmp_path, env=env)
    assert result.exit_code == 0, result.output[-3000:]
    summary = result.summary
    assert summary["inserted"] + summary["failed"] == 50 * 200 and summary["in_doubt"] == 0
    assert 0.05 * 10_000 < summary["failed"] < 0.15 * 10_000
    assert count_rows(double.db_path, TABLE) == summary["inserted"]


def test_broken_connections_leave_their_batches_in_doubt(double, tmp_path):
    double.configure(reset_before_response={"every": 3, "store": True}, reset_mid_response={"every": 5})
    args = [
        "--headless",
        "-u",
        "3",
        "-r",
        "3",
        "-H",
        double.pg_url,
        "--insert-method",
        "pg",
        "--exit-code-on-error",
        "0",
    ]
    env = {"ID_START": "1", "ID_END": "40", "INGEST_SIZE": "150", "USERNAME": USER, "PASSWORD": PASSWORD}
    result = run_locust([*args, "--batch-size", "400"], tmp_path, env=env)
    assert result.exit_code == 0, result.output[-3000:]
    summary = result.summary
    assert summary["inserted"] + summary["in_doubt"] == 40 * 150 and summary["failed"] == 0
    assert summary["in_doubt"] > 0
    stored = count_rows(double.db_path, TABLE)
    assert summary["inserted"] <= stored <= summary["inserted"] + summary["in_doubt"]


def test_a_wrong_password_stops_the_run_with_one_line_and_exit_2(double, tmp_path):
    args = ["--headless", "-u", "4", "-r", "4", "-t", "20s", "-H", double.pg_url, "--insert-method", "pg"]
    result = run_locust([*args, "--username", USER], tmp_path, env={"PASSWORD": "wrong-one"})
    assert result.exit_code == 2, result.output[-3000:]
    assert "Traceback" not in result.output
    errors = error_lines(result)
    assert len(errors) == 1, errors
    assert f"CrateDB at {double.pg_url} refused user '{USER}'" in errors[0] and "wrong-one" not in result.output


def test_a_closed_pg_port_stops_the_run_with_one_line_and_exit_2(tmp_path):
    url = f"postgresql://127.0.0.1:{free_port()}"
    result = run_locust(["--headless", "-u", "2", "-t", "20s", "-H", url, "--insert-method", "pg-unnest"], tmp_path)
    assert result.exit_code == 2, result.output[-3000:]
    assert "Traceback" not in result.output
    errors = error_lines(result)
    assert len(errors) == 1 and f"cannot reach CrateDB at {url}: Connection refused" in errors[0], errors


def test_a_postgresql_host_with_an_http_method_is_bad_input(tmp_path):
    result = run_locust(["--headless", "-t", "5s", "-H", "postgresql://127.0.0.1:5432"], tmp_path)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("dg-locust:")]
    assert lines == [
        "dg-locust: host postgresql://127.0.0.1:5432 is a PostgreSQL URL: use it with --insert-method pg or "
        "pg-unnest, or give CrateDB's HTTP URL (http://HOST:4200)"
    ]
