"""Queries under ingest (issue 14), end to end: ingest and query users in one Locust run against the CrateDB test
double; what it reports, and whether every shipped query answers what the stored rows hold."""

import locust  # noqa: F401

import json
import random
import re
from collections import defaultdict

import numpy as np
import pytest
from cratedb_double import DoubleProcess, count_rows, fetch_rows
from support import (
    LiveLocust,
    free_port,
    free_ports,
    get_json,
    post_form,
    run_locust,
    sample_sum,
    scrape,
    wait_until,
)

from dg_locust.client import CrateHttpClient
from dg_locust.model import load_model
from dg_locust.queries import DataFront, bind, shipped_queries
from dg_locust.schema import table_for_model

TABLE = "doc.temperature"
INGEST_TS = 1_600_000_000.0
SENSORS = 50
MODEL = load_model("temperature")
SCHEMA = table_for_model(MODEL, table_option="", partition="week", shards=4, replicas="0-1")
SHIPPED = shipped_queries(MODEL, SCHEMA)
QUERY_LINE = re.compile(
    r"^dg query (\S+): requests=(\d+) failed=(\d+) p50_ms=([\d.]+) p95_ms=([\d.]+) p99_ms=([\d.]+) "
    r"max_ms=([\d.]+) rows_per_answer=([\d.]+)$",
    re.M,
)
RUN_ENV = {"ID_START": "1", "ID_END": str(SENSORS), "INGEST_TS": str(INGEST_TS)}


def _write_queries(tmp_path, entries) -> str:
    path = tmp_path / "queries.json"
    path.write_text(json.dumps({"queries": entries}))
    return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run of 2 ingest and 2 query users; every shipped query has the same weight, so each runs."""
    tmp_path = tmp_path_factory.mktemp("queries")
    with DoubleProcess(tmp_path / "crate.sqlite") as double:
        queries = _write_queries(tmp_path, [{"shipped": spec.name} for spec in SHIPPED])
        args = ["--headless", "-u", "4", "-r", "4", "-t", "16s", "-H", double.url, "--seed", "3"]
        args += ["--query-users", "2", "--query-rate", "0", "--queries", queries, "--batch-size", "2500"]
        result = run_locust(args, tmp_path, env=RUN_ENV)
        yield result, double


def test_one_run_reports_latency_percentiles_per_query_next_to_rows_per_second(run):
    result, _ = run
    assert result.exit_code == 0, result.output[-3000:]
    summary = result.summary
    assert summary["inserted"] > 0 and summary["failed"] == summary["in_doubt"] == 0
    totals = re.search(
        r"^dg queries: requests=(\d+) failed=(\d+) queries_per_s=([\d.]+) rows_per_s=([\d.]+)$", result.stdout, re.M
    )
    assert totals, result.stdout[-3000:]
    assert float(totals.group(4)) == summary["rows_per_s"] and totals.group(2) == "0"
    lines = {match[0]: match for match in QUERY_LINE.findall(result.stdout)}
    assert set(lines) == {spec.name for spec in SHIPPED} | {"data_front"}, result.stdout[-3000:]
    stats = {entry["name"]: entry for entry in result.report if entry["method"] == "CrateDB query"}
    for name, (_, requests, failed, p50, p95, p99, top, rows) in lines.items():
        assert int(requests) >= 1 and failed == "0", name
        assert 0 < float(p50) <= float(p95) <= float(p99) <= float(top), name
        assert stats[name]["num_requests"] == int(requests) and stats[name]["num_failures"] == 0, name
        if name != "data_front":
            assert float(rows) >= 1, name
    assert sum(int(line[1]) for line in lines.values()) == int(totals.group(1))
    ingest = [entry for entry in result.report if entry["method"] == "CrateDB"]
    assert sum(entry["total_content_length"] for entry in ingest) == summary["inserted"]


def _oracle(name: str, args: list, rows: list[dict]) -> list[list]:
    """What a shipped query must answer, computed in Python from the rows the double stored."""

    def window(start, end):
        return [r for r in rows if start <= r["ts"] <= end]

    if name == "latest_per_sensor":
        latest: dict[int, dict] = {}
        for r in window(*args):
            if r["sensor_id"] not in latest or r["ts"] > latest[r["sensor_id"]]["ts"]:
                latest[r["sensor_id"]] = r
        return [[s, r["ts"], r["value"], bool(r["button_press"])] for s, r in sorted(latest.items())]
    if name == "sensor_last_5m":
        sensor, start, end = args
        chosen = sorted((r for r in window(start, end) if r["sensor_id"] == sensor), key=lambda r: r["ts"])
        return [[r["ts"], r["value"], bool(r["button_press"])] for r in chosen]
    if name == "downsample_1m_by_plant":
        groups = defaultdict(list)
        for r in window(*args):
            groups[(r["ts"] // 60_000 * 60_000, r["plant"])].append(r["value"])
        return [[b, p, len(v), sum(v) / len(v), min(v), max(v)] for (b, p), v in sorted(groups.items())]
    if name == "stats_5m_one_plant":
        plant, start, end = args
        values = [r["value"] for r in window(start, end) if r["plant"] == plant]
        return [[plant, len(values), sum(values) / len(values), min(values), max(values), np.percentile(values, 95)]]
    if name == "out_of_range_5m":
        low, high, start, end = args
        chosen = window(start, end)
        return [[len(chosen), sum(1 for r in chosen if not low <= r["value"] <= high)]]
    if name == "top10_value_5m":
        best: dict[int, float] = {}
        for r in window(*args):
            best[r["sensor_id"]] = max(best.get(r["sensor_id"], -np.inf), r["value"])
        return [[s, v] for s, v in sorted(best.items(), key=lambda item: (-item[1], item[0]))[:10]]
    raise AssertionError(f"no oracle for {name}")


def test_every_shipped_query_answers_what_the_stored_rows_hold(run, tmp_path):
    result, double = run
    client = CrateHttpClient((double.url,))
    rows = fetch_rows(double.db_path, TABLE)
    assert len(rows) == result.summary["inserted"]
    newest = max(r["ts"] for r in rows)
    # Another writer's rows outside the model's min..max, off the 500 ms grid so no sensor's latest row is tied
    tags = MODEL.tag_values(np.arange(1, 8))
    strays = [
        [newest - 1 - k, int(tags["plant"][k]), int(tags["line"][k]), k + 1, 5.5 if k % 2 else 7.9, False]
        for k in range(7)
    ]
    body = {"stmt": SCHEMA.insert_sql("bulk"), "bulk_args": strays}
    assert client.insert(json.dumps(body).encode(), len(strays), "bulk").inserted == len(strays)
    rows = fetch_rows(double.db_path, TABLE)
    latest: dict[int, int] = {}
    for r in rows:
        latest[r["sensor_id"]] = max(latest.get(r["sensor_id"], 0), r["ts"])
    front = DataFront(MODEL, latest)
    rng = random.Random(11)
    out_of_range_seen = 0
    for spec in SHIPPED:
        for _ in range(4):
            bound = bind(spec, front, MODEL, rng)
            answer = client.execute(spec.statement, bound.args)["rows"]
            expected = _oracle(spec.name, bound.args, rows)
            assert len(answer) >= bound.min_rows >= 1, spec.name
            assert len(answer) == len(expected), (spec.name, bound.args)
            for got, want in zip(answer, expected, strict=True):
                assert got == pytest.approx(want, rel=1e-9), (spec.name, bound.args)
            if spec.name == "out_of_range_5m":
                out_of_range_seen += answer[0][1]
    assert out_of_range_seen == 4 * 7  # the strays are in every 5-minute window that ends at the newest row
    client.close()


def test_a_query_that_finds_nothing_where_the_data_holds_rows_fails(tmp_path):
    with DoubleProcess(tmp_path / "crate.sqlite") as double:
        queries = _write_queries(
            tmp_path,
            [
                {
                    "name": "above_max",
                    "sql": 'SELECT "ts" FROM {table} WHERE "sensor_id" = ? AND "ts" >= ? AND "ts" <= ? AND "value" > ?',
                    "params": ["sensor_id", "window_start", "window_end", "value.max"],
                },
                {
                    "name": "one_sensor",
                    "sql": 'SELECT "ts" FROM {table} WHERE "sensor_id" = ? AND "ts" >= ? AND "ts" <= ?',
                    "params": ["sensor_id", "window_start", "window_end"],
                },
            ],
        )
        args = ["--headless", "-u", "3", "-r", "3", "-t", "9s", "-H", double.url, "--queries", queries]
        result = run_locust([*args, "--query-users", "1", "--query-rate", "5"], tmp_path, env=RUN_ENV)
    assert result.exit_code == 1, result.output[-3000:]  # Locust's code for failed requests
    lines = {match[0]: match for match in QUERY_LINE.findall(result.stdout)}
    assert int(lines["above_max"][1]) >= 1 and lines["above_max"][2] == lines["above_max"][1], result.stdout
    assert int(lines["one_sensor"][1]) >= 1 and lines["one_sensor"][2] == "0", result.stdout
    stats = {entry["name"]: entry for entry in result.report if entry["method"] == "CrateDB query"}
    assert stats["above_max"]["num_failures"] == stats["above_max"]["num_requests"] == int(lines["above_max"][1])


def test_a_run_is_ingest_only_unless_query_users_are_asked_for(tmp_path):
    with DoubleProcess(tmp_path / "crate.sqlite") as double:
        result = run_locust(["--headless", "-u", "3", "-r", "3", "-t", "4s", "-H", double.url], tmp_path)
    assert result.exit_code == 0, result.output[-3000:]
    assert '"QueryUser": 0, "TemperatureUser": 3' in result.output
    assert not [entry for entry in result.report if entry["method"] == "CrateDB query"]
    assert "dg queries:" not in result.stdout


def test_a_run_of_query_users_only_reads_rows_written_before_and_exits_0(run, tmp_path):
    _, double = run  # the table the module's run wrote
    args = ["QueryUser", "--headless", "-u", "2", "-r", "2", "-t", "12s", "-H", double.url, "--query-rate", "4"]
    result = run_locust(args, tmp_path, env=RUN_ENV)
    assert result.exit_code == 0, result.output[-3000:]  # no rows to acknowledge is no failure here
    assert "no rows were acknowledged" not in result.output
    lines = {match[0]: match for match in QUERY_LINE.findall(result.stdout)}
    answered = [name for name, line in lines.items() if name != "data_front" and int(line[1]) >= 1]
    assert answered and all(line[2] == "0" for line in lines.values()), result.stdout[-3000:]


def test_naming_both_classes_on_the_command_line_splits_users_by_weight(tmp_path):
    with DoubleProcess(tmp_path / "crate.sqlite") as double:
        args = ["TemperatureUser", "QueryUser", "--headless", "-u", "4", "-r", "4", "-t", "4s", "-H", double.url]
        result = run_locust(args, tmp_path)
    assert result.exit_code == 0, result.output[-3000:]
    assert '"QueryUser": 2, "TemperatureUser": 2' in result.output
    assert result.summary["inserted"] > 0


BAD_QUERY_FILES = [
    ("missing", None, "file not found"),
    ("not-a-select", [{"name": "wipe", "sql": "DELETE FROM {table}"}], "only SELECT"),
    ("unknown-param", [{"name": "q", "sql": "SELECT * FROM {table} WHERE plant = ?", "params": ["site"]}], "site"),
]


@pytest.mark.parametrize(("entries", "fragment"), [c[1:] for c in BAD_QUERY_FILES], ids=[c[0] for c in BAD_QUERY_FILES])
def test_a_bad_query_file_gives_one_line_and_exit_2_at_once(tmp_path, entries, fragment):
    path = tmp_path / "queries.json"
    if entries is not None:
        path.write_text(json.dumps({"queries": entries}))
    args = ["--headless", "-u", "2", "-t", "60s", "-H", "http://127.0.0.1:1", "--queries", str(path)]
    result = run_locust(args, tmp_path)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "/ERROR/" not in result.output, result.output
    own_lines = [line for line in result.output.splitlines() if line.strip() and "/INFO/" not in line]
    assert len(own_lines) == 1 and own_lines[0].startswith(f"dg-locust: --queries {path}: "), result.output
    assert fragment in own_lines[0]


def test_the_queries_tab_and_metrics_show_query_latency_of_a_running_test(tmp_path):
    web_port, prometheus_port = free_ports(1, 1)
    with DoubleProcess(tmp_path / "crate.sqlite") as double:
        args = ["-H", double.url, "--web-host", "127.0.0.1", "--web-port", str(web_port)]
        args += ["--prometheus-port", str(prometheus_port), "--query-users", "1", "--query-rate", "4"]
        with LiveLocust(args, tmp_path, "local", env=RUN_ENV) as process:
            web = f"http://127.0.0.1:{web_port}"
            assert wait_until(lambda: get_json(f"{web}/stats/requests"), timeout=30), process.output[-3000:]
            assert post_form(f"{web}/swarm", {"user_count": 2, "spawn_rate": 2, "host": double.url})["success"]

            def queries_tab():
                report = get_json(f"{web}/stats/requests")
                tabs = {entry["key"]: entry["data"] for entry in report.get("extended_stats", [])}
                rows = {row["name"]: row for row in tabs.get("dg_queries", [])}
                done = [r for name, r in rows.items() if name not in ("Total", "data_front") and r["requests"]]
                return (tabs, rows) if done and "dg_rows" in tabs else None

            found = wait_until(queries_tab, timeout=40)
            assert found, process.output[-3000:]
            tabs, rows = found
            query = next(r for name, r in rows.items() if name not in ("Total", "data_front") and r["requests"])
            assert query["p50_ms"] > 0 and query["p99_ms"] >= query["p50_ms"] and query["failures"] == 0
            assert rows["Total"]["requests"] >= query["requests"]
            samples = scrape(f"http://127.0.0.1:{prometheus_port}/metrics")
            count = sample_sum(samples, "dg_query_duration_seconds_count", query=query["name"], role="local")
            assert count >= query["requests"] >= 1
            assert sample_sum(samples, "dg_query_failures_total", query=query["name"]) == 0
            assert sample_sum(samples, "dg_rows_inserted_total") > 0


def test_in_a_distributed_run_query_users_read_the_sensors_other_workers_write(tmp_path):
    # Two workers, one user each: one ingests every sensor (query users take no slice), the other only queries.
    env = {**RUN_ENV, "ID_END": "20", "INGEST_SIZE": "60", "INGEST_MODE": "consecutive", "INGEST_DELTA": "0.1"}
    with DoubleProcess(tmp_path / "crate.sqlite") as double:
        args = ["--processes", "2", "--headless", "-u", "2", "-r", "2", "-t", "60s", "-H", double.url]
        port = free_port()  # not Locust's default 5557, which another run on this host may hold
        args += ["--master-bind-host", "127.0.0.1", "--master-bind-port", str(port), "--master-port", str(port)]
        result = run_locust([*args, "--query-users", "1", "--query-rate", "4"], tmp_path, env=env, timeout=90)
        stored = count_rows(double.db_path, TABLE)
    assert result.exit_code == 0, result.output[-3000:]
    assert "every sensor has its INGEST_SIZE rows" in result.output  # ended by itself, long before -t
    assert stored == 20 * 60 == result.summary["inserted"]
    lines = {match[0]: match for match in QUERY_LINE.findall(result.stdout)}
    answered = [name for name, line in lines.items() if name != "data_front" and int(line[1]) >= 1]
    assert answered and all(line[2] == "0" for line in lines.values()), result.stdout[-3000:]
