"""Queries under ingest on a real CrateDB (issue 14): the shipped queries checked, then timed next to rows/s.

1. Check (``--check``): dg-locust writes a known data set (ingest only, ``INGEST_SIZE`` steps of ``--sensors``
   sensors, one row a minute from a fixed ``INGEST_TS``, so it spans several week partitions) into a table of its own,
   dropped first. Then every shipped query is bound from a data front and run: the front the product reads from the
   table (its own statement), and a front three weeks back inside the data (every sensor at the same old time), so
   windows fall into an old partition too. Each answer is compared with the answer computed in Python from the raw
   rows of its window (``SELECT`` of the columns, nothing aggregated by the database); percentiles, which CrateDB
   approximates (t-digest), must lie between the 92.5th and the 97.5th percentile of the raw values. Each query also
   runs under ``EXPLAIN ANALYZE``: the partitions it touched must be among those its ts window overlaps.
2. Load (``--load``): Locust runs of ``--seconds`` against a fresh table: ingest only, then ingest with query users
   (paced and unpaced), each with its dg summary and query lines.

From the repository root, against the node on this machine (about 6 minutes):

    python bench/queries.py --host http://127.0.0.1:4200 --check --load

Tables: ``doc.dg_bench_queries_check`` and ``doc.dg_bench_queries_load`` (dropped at the start and at the end).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "tests"))

from support import clean_environment, locust_command  # noqa: E402

from dg_locust.client import CrateHttpClient  # noqa: E402
from dg_locust.model import load_model  # noqa: E402
from dg_locust.queries import DataFront, bind, front_sql, shipped_queries  # noqa: E402
from dg_locust.schema import table_for_model  # noqa: E402

CHECK_TABLE = "doc.dg_bench_queries_check"
LOAD_TABLE = "doc.dg_bench_queries_load"
WEEK_MS = 7 * 86_400_000
# Monday 2020-09-07 12:00 UTC, so the data starts mid-partition
CHECK_INGEST_TS = 1_599_480_000
CHECK_DELTA_S = 60


def machine(client: CrateHttpClient) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.machine(),
    )
    version = client.execute("SELECT version()")["rows"][0][0]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=PROJECT_DIR)
    one, five, _ = os.getloadavg()
    return (
        f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit.stdout.strip()}, "
        f"{cpu}, {os.cpu_count()} logical CPUs (the CrateDB node runs on the same machine), {version}; "
        f"load average {one:.1f} / {five:.1f} at the start"
    )


def dg_locust(host: str, table: str, seconds: int | None, users: int, *extra: str, env: dict | None = None) -> str:
    args = ["--headless", "--only-summary", "-u", str(users), "-r", str(users), "-H", host, "--table", table]
    args += ["--prometheus-port", "0", *(["-t", f"{seconds}s"] if seconds else []), *extra]
    done = subprocess.run(
        locust_command(*args), env=clean_environment(env), capture_output=True, text=True, cwd=PROJECT_DIR
    )
    if done.returncode not in (0, 1):
        raise SystemExit(f"dg-locust exited {done.returncode}:\n{done.stderr[-3000:]}")
    return "\n".join(line for line in done.stdout.splitlines() if line.startswith("dg "))


# --- 1. check ---


def window_rows(client, table, start: int, end: int) -> list[dict]:
    answer = client.execute(
        f'SELECT "ts", "plant", "line", "sensor_id", "value", "button_press" FROM {table.qualified} '
        'WHERE "ts" >= ? AND "ts" <= ?',
        [start, end],
    )
    return [dict(zip(answer["cols"], row, strict=True)) for row in answer["rows"]]


def expected(name: str, args: list, rows: list[dict]) -> list[list]:
    """The answer of a shipped query of the temperature model, computed from the raw rows of its window."""
    if name == "latest_per_sensor":
        latest: dict[int, dict] = {}
        for r in rows:
            if r["sensor_id"] not in latest or r["ts"] > latest[r["sensor_id"]]["ts"]:
                latest[r["sensor_id"]] = r
        return [[s, r["ts"], r["value"], r["button_press"]] for s, r in sorted(latest.items())]
    if name == "sensor_last_5m":
        chosen = sorted((r for r in rows if r["sensor_id"] == args[0]), key=lambda r: r["ts"])
        return [[r["ts"], r["value"], r["button_press"]] for r in chosen]
    if name == "downsample_1m_by_plant":
        groups: dict[tuple, list] = {}
        for r in rows:
            groups.setdefault((r["ts"] // 60_000 * 60_000, r["plant"]), []).append(r["value"])
        return [[b, p, len(v), sum(v) / len(v), min(v), max(v)] for (b, p), v in sorted(groups.items())]
    if name == "stats_5m_one_plant":
        values = [r["value"] for r in rows if r["plant"] == args[0]]
        return [[args[0], len(values), sum(values) / len(values), min(values), max(values), values]]
    if name == "out_of_range_5m":
        low, high = args[:2]
        return [[len(rows), sum(1 for r in rows if not low <= r["value"] <= high)]]
    if name == "top10_value_5m":
        best: dict[int, float] = {}
        for r in rows:
            best[r["sensor_id"]] = max(best.get(r["sensor_id"], -np.inf), r["value"])
        return [[s, v] for s, v in sorted(best.items(), key=lambda item: (-item[1], item[0]))[:10]]
    raise SystemExit(f"no expected answer for {name}")


def same(got: list, want: list) -> str | None:
    """None when a row matches; else what differs. A list in ``want`` holds the raw values of a percentile."""
    if len(got) != len(want):
        return f"{len(got)} columns, expected {len(want)}"
    for index, (g, w) in enumerate(zip(got, want, strict=True)):
        if isinstance(w, list):
            low, high = np.percentile(w, 92.5), np.percentile(w, 97.5)
            if not low <= g <= high:
                return f"p95 {g} outside the 92.5..97.5th percentiles {low}..{high}"
        elif isinstance(w, float):
            if not np.isclose(g, w, rtol=1e-9, atol=0):
                return f"column {index}: {g} != {w}"
        elif g != w:
            return f"column {index}: {g!r} != {w!r}"
    return None


def touched_partitions(client, statement: str, args: list) -> set[str]:
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if "PartitionIdent" in node:
                found.add(node["PartitionIdent"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(client.execute("EXPLAIN ANALYZE " + statement, args)["rows"])
    return found


def plan_text(client, statement: str, args: list) -> str:
    plan = client.execute("EXPLAIN " + statement, args)["rows"][0][0]
    return " <- ".join(line.strip(" └").split("[")[0] for line in plan.splitlines())


def check(host: str, sensors: int, steps: int) -> None:
    client = CrateHttpClient((host,), timeout=120)
    print(machine(client))
    model = load_model("temperature")
    schema, name = CHECK_TABLE.split(".")
    table = table_for_model(model, table_option=CHECK_TABLE, partition="week", shards=4, replicas="0-1")
    env = {"ID_START": "1", "ID_END": str(sensors), "INGEST_SIZE": str(steps), "INGEST_TS": str(CHECK_INGEST_TS)}
    env |= {"INGEST_DELTA": str(CHECK_DELTA_S)}
    started = time.monotonic()
    print(
        dg_locust(
            host,
            CHECK_TABLE,
            None,
            4,
            "--drop-table",
            "--insert-method",
            "unnest",
            "--batch-size",
            "20000",
            "--verify",
            env=env,
        )
    )
    print(f"wrote {sensors} sensors x {steps} steps in {time.monotonic() - started:.0f} s")
    client.execute(table.refresh_sql())
    partitions = {
        ident: values["g_ts_week"]
        for ident, values in client.execute(
            "SELECT partition_ident, values FROM information_schema.table_partitions "
            "WHERE table_schema = ? AND table_name = ?",
            [schema, name],
        )["rows"]
    }
    print(f"{len(partitions)} week partitions")
    first_ms = CHECK_INGEST_TS * 1000
    answer = client.execute(front_sql(model, table), [first_ms, 1, sensors])
    fronts = {
        "newest rows": DataFront(model, {int(s): int(t) for s, t in answer["rows"]}),
        "first week": DataFront(model, dict.fromkeys(range(1, sensors + 1), first_ms + 6 * 86_400_000)),
    }
    newest = first_ms + (steps - 1) * CHECK_DELTA_S * 1000
    assert fronts["newest rows"].oldest_ms == newest == fronts["newest rows"].newest_ms, "every sensor has its rows"
    rng = random.Random(5)
    print("| query | front | rows | answer = rows in Python | partitions touched / overlapping / all | plan |")
    print("|---|---|---:|---|---|---|")
    for spec in shipped_queries(model, table):
        for label, front in fronts.items():
            bound = bind(spec, front, model, rng)
            got = client.execute(spec.statement, bound.args)["rows"]
            start, end = bound.args[-2:]
            want = expected(spec.name, bound.args, window_rows(client, table, start, end))
            problems = [p for g, w in zip(got, want, strict=False) if (p := same(g, w))]
            verdict = "yes" if len(got) == len(want) >= bound.min_rows and not problems else f"NO: {problems[:1]}"
            touched = touched_partitions(client, spec.statement, bound.args)
            overlapping = {i for i, week in partitions.items() if week <= end and week + WEEK_MS > start}
            pruned = "ok" if touched <= overlapping else "TOUCHED OTHERS"
            print(
                f"| {spec.name} | {label} | {len(got)} | {verdict} | {len(touched)} / {len(overlapping)} / "
                f"{len(partitions)} {pruned} | {plan_text(client, spec.statement, bound.args)} |"
            )
    # The data front in steady state looks back from the oldest sensor's latest row (here: every sensor's newest)
    args = [newest, 1, sensors]
    answer = client.execute(front_sql(model, table), args)["rows"]
    correct = "yes" if sorted(answer) == [[s, newest] for s in range(1, sensors + 1)] else "NO"
    touched = touched_partitions(client, front_sql(model, table), args)
    overlapping = {i for i, week in partitions.items() if week + WEEK_MS > newest}
    pruned = "ok" if touched <= overlapping else "TOUCHED OTHERS"
    print(
        f"| data_front | newest rows | {len(answer)} | {correct} | {len(touched)} / {len(overlapping)} / "
        f"{len(partitions)} {pruned} | {plan_text(client, front_sql(model, table), args)} |"
    )
    client.execute(table.drop_sql())
    client.close()


# --- 2. load ---


def load(host: str, seconds: int, users: int) -> None:
    client = CrateHttpClient((host,))
    print(machine(client))
    table = table_for_model(
        load_model("temperature"), table_option=LOAD_TABLE, partition="week", shards=4, replicas="0-1"
    )
    runs = [
        ("ingest only", []),
        ("ingest + 2 query users at 1 query/s each", ["--query-users", "2", "--query-rate", "1"]),
        ("ingest + 4 query users, no pause", ["--query-users", "4", "--query-rate", "0"]),
    ]
    for label, extra in runs:
        total = users + (int(extra[1]) if extra else 0)
        print(f"\n### {label} (-u {total}, {users} ingest users, {seconds} s)\n")
        print(dg_locust(host, LOAD_TABLE, seconds, total, "--drop-table", *extra))
    client.execute(table.drop_sql())
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="http://127.0.0.1:4200")
    parser.add_argument("--check", action="store_true", help="check the shipped queries' answers and plans")
    parser.add_argument("--load", action="store_true", help="time ingest with and without query users")
    parser.add_argument("--sensors", type=int, default=50)
    parser.add_argument("--steps", type=int, default=30_240, help="rows per sensor, one a minute (30240 = 21 days)")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--users", type=int, default=8, help="ingest users of the load runs")
    options = parser.parse_args()
    if not (options.check or options.load):
        parser.error("give --check, --load or both")
    if options.check:
        check(options.host, options.sensors, options.steps)
    if options.load:
        load(options.host, options.seconds, options.users)


if __name__ == "__main__":
    main()
