"""Real-node benchmark (issue 12.4): rows/s and CPU per row of each way of getting rows into a real CrateDB.

Against the CrateDB at ``--url``, one after the other, each into a fresh table of its own (dropped afterwards):

- the node's own ``COPY FROM`` of a local JSON-lines file holding rows of ``models/temperature.json`` made by
  dg-locust's own generator (written first, under /tmp, readable by the node's user; the file is not counted);
- tsperf 1.2.1 (installed into a throw-away venv under /tmp, as bench/vs_tsperf.py does), unchanged: its own
  table (``ts``, ``payload OBJECT``), its UNNEST insert, its two threads, with its adaptive batch size and with a
  fixed one;
- dg-locust, bulk and unnest, with ``--batch-size auto`` and a sweep of fixed sizes.

Rows are counted by the database itself: ``REFRESH TABLE`` and ``count(*)`` of the run's table at the start and at
the end of a window that opens after a warm-up (longer for ``auto``, whose sizer searches first), so start-up does
not dilute the figure. Over the same window the CPU time of the load generator's process tree and of the node's
JVM (``--pid-file``) is read with psutil, giving CPU microseconds per stored row for each: what the client spends
and what the node spends per row, by request shape. The machine's total CPU use in the window and the statements
the node ran for others meanwhile (``sys.jobs_log``) are shown too: the node and the client share the cores.

    python bench/real_node.py --url http://127.0.0.1:4200
    python bench/real_node.py --url http://127.0.0.1:4200 --user dg --password dgpass --sizes 5000,20000
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_DIR / "bench"), str(PROJECT_DIR / "tests" / "integration"), str(PROJECT_DIR)]

from harness import cpu_seconds, load, machine  # noqa: E402
from real_cratedb import RealCrateDB, SqlError, TestTable  # noqa: E402
from support import clean_environment, locust_command  # noqa: E402
from vs_tsperf import TSPERF  # noqa: E402

from dg_locust.generator import Fleet  # noqa: E402
from dg_locust.model import MODELS_DIR, load_model  # noqa: E402
from dg_locust.schema import table_for_model  # noqa: E402

MODEL = MODELS_DIR / "temperature.json"
SENSORS = 500
SHARDS = 4
REPLICAS = "0-1"  # dg-locust's default; 0 on a single node
PARTITION = "week"


@dataclass
class Window:
    """What one path stored in its window, and what it cost."""

    label: str
    rows: int = 0
    seconds: float = 0.0
    client_cpu_s: float = 0.0
    node_cpu_s: float = 0.0
    machine_busy: float = 0.0  # share of all cores busy in the window (client, node and everyone else)
    foreign_statements: int = 0  # statements the node ran meanwhile that were not this path's
    note: str = ""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def us_per_row(self, cpu_s: float) -> float:
        return cpu_s / self.rows * 1e6 if self.rows else float("nan")


class Node:
    """The database under test: SQL as the benchmark's user, and its JVM's CPU time."""

    def __init__(self, db: RealCrateDB, pid: int):
        self.db = db
        self.jvm = psutil.Process(pid)

    def cpu(self) -> float:
        times = self.jvm.cpu_times()
        return times.user + times.system

    def stored(self, table: TestTable) -> int:
        try:
            return table.count()
        except SqlError as missing:
            if missing.status == 404:  # not created yet
                return 0
            raise

    def foreign_statements(self, table: TestTable, since_ms: int) -> int:
        stmt = "SELECT count(*) FROM sys.jobs_log WHERE ended >= ? AND stmt NOT LIKE ? AND stmt NOT LIKE ?"
        return self.db.value(stmt, [since_ms, f"%{table.name}%", "%sys.jobs_log%"])


def bench_table(node: Node, path: str) -> TestTable:
    """A table of this run's own, never one somebody else uses: the node may be shared."""
    return TestTable(node.db, "doc", f"dg_bench_{path}_{secrets.token_hex(3)}")


def machine_busy_seconds() -> tuple[float, float]:
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq + times.steal, time.monotonic()


def measure_process(
    node: Node,
    table: TestTable,
    label: str,
    command: list[str],
    *,
    warm_up: float,
    seconds: float,
    env: dict,
    log: Path,
) -> Window:
    """Start a load generator, wait for its first stored rows and ``warm_up`` seconds, then count the rows stored and
    the CPU used over ``seconds``; stop it (SIGTERM to its whole session) and drop its table."""
    window = Window(label)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd="/tmp", start_new_session=True
        )
        try:
            client = psutil.Process(proc.pid)
            deadline = time.monotonic() + 120
            while node.stored(table) == 0:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{label}: no rows stored; output:\n{log.read_text(errors='replace')[-3000:]}")
                time.sleep(0.5)
            time.sleep(warm_up)
            since_ms = int(time.time() * 1000)
            # Time and CPU first, then the count: a REFRESH under load takes a while, and what it shows is what was
            # acknowledged when it started. Both ends alike, so the rows and the CPU cover the same interval.
            (busy0, t0), client0, node0 = machine_busy_seconds(), cpu_seconds(client), node.cpu()
            rows0 = node.stored(table)
            time.sleep(seconds)
            (busy1, t1), client1, node1 = machine_busy_seconds(), cpu_seconds(client), node.cpu()
            rows1 = node.stored(table)
            window.rows, window.seconds = rows1 - rows0, t1 - t0
            window.client_cpu_s, window.node_cpu_s = client1 - client0, node1 - node0
            window.machine_busy = (busy1 - busy0) / (t1 - t0) / (os.cpu_count() or 1)
            window.foreign_statements = node.foreign_statements(table, since_ms)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            table.drop()
    return window


def dg_locust_run(node: Node, method: str, batch_size: str, args, log_dir: Path) -> Window:
    table = bench_table(node, f"{method}_{batch_size}")
    auto = batch_size == "auto"
    warm_up = args.auto_warm_up if auto else args.warm_up
    command = locust_command(
        "--headless", "--only-summary", "-u", str(args.users), "-r", str(args.users),
        "-t", f"{warm_up + args.seconds + 60:.0f}s", "-H", node.db.url, "--table", table.option,
        "--insert-method", method, "--batch-size", batch_size, "--id-end", str(SENSORS),
        "--shards", str(SHARDS), "--replicas", REPLICAS, "--partition", PARTITION, "--prometheus-port", "0",
    )  # fmt: skip
    environment = clean_environment(node.db.product_environment())
    log = log_dir / f"dg-{method}-{batch_size}.log"
    label = f"dg-locust {method} {batch_size}"
    window = measure_process(
        node, table, label, command, warm_up=warm_up, seconds=args.seconds, env=environment, log=log
    )
    if auto:
        sizes = [line.split("->")[1].split()[0] for line in log.read_text().splitlines() if "batch size" in line]
        window.note = f"sizer at {sizes[-1]} at the end" if sizes else ""
    return window


def ensure_tsperf(venv: Path) -> Path:
    tsperf = venv / "bin" / "tsperf"
    probe = [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('tsperf'))"]
    if not tsperf.exists() or subprocess.run(probe, capture_output=True, text=True).stdout.strip() != "1.2.1":
        print(f"creating {venv} with {TSPERF} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", TSPERF], check=True)
    return tsperf


def tsperf_run(node: Node, tsperf: Path, batch_size: int | None, args, log_dir: Path) -> Window:
    table = bench_table(node, f"tsperf_{batch_size or 'auto'}")
    host = node.db.url.split("://", 1)[1]
    command = [str(tsperf), "write", "--adapter", "cratedb", "--address", host, "--schema", str(MODEL)]
    command += ["--id-start", "1", "--id-end", str(SENSORS), "--ingest-mode", "fast", "--ingest-size", "0"]
    command += ["--table", table.name, "--shards", str(SHARDS), "--replicas", "0", "--partition", PARTITION]
    if node.db.user:
        command += ["--username", node.db.user, "--password", node.db.password or ""]
    if batch_size:
        command += ["--batch-size", str(batch_size)]
    log = log_dir / f"tsperf-{batch_size or 'auto'}.log"
    label = f"tsperf 1.2.1 unnest {batch_size or 'auto'}"
    warm_up = args.warm_up if batch_size else args.auto_warm_up
    return measure_process(
        node, table, label, command, warm_up=warm_up, seconds=args.seconds, env=clean_environment(), log=log
    )


def write_rows_file(path: Path, rows: int) -> float:
    """``rows`` rows of the temperature model for sensors 1..500 from dg-locust's generator, as JSON lines, one
    step of every sensor after the other (as dg-locust sends them); returns the CPU seconds it took."""
    started = time.process_time()
    model = load_model(MODEL)
    ids = np.arange(1, SENSORS + 1)
    fleet = Fleet(model, ids, seed=1)
    tags = model.tag_values(ids)
    tag_text = [
        ",".join(f'"{tag.name}":{int(tags[tag.name][i])}' for tag in model.tags) for i in range(SENSORS)
    ]  # integer tags only in this model
    first_ms = int(time.time()) * 1000
    steps = -(-rows // SENSORS)
    written = 0
    with path.open("w") as out:
        for start in range(0, steps, 200):
            chunk = fleet.next_steps(min(200, steps - start))
            values, pressed = chunk["value"].tolist(), chunk["button_press"].tolist()  # Python floats print exactly
            for step in range(len(values)):
                ts = first_ms + (start + step) * 500
                lines = []
                for i in range(min(SENSORS, rows - written)):
                    flag = "true" if pressed[step][i] else "false"
                    lines.append(f'{{"ts":{ts},{tag_text[i]},"value":{values[step][i]!r},"button_press":{flag}}}\n')
                written += len(lines)
                out.writelines(lines)
    path.chmod(0o644)  # the node runs as its own user
    return time.process_time() - started


def copy_from_run(node: Node, rows: int, log_dir: Path) -> Window:
    model = load_model(MODEL)
    table = bench_table(node, "copy")
    schema = table_for_model(model, table_option=table.option, partition=PARTITION, shards=SHARDS, replicas=REPLICAS)
    rows_file = Path(f"/tmp/dg-bench-copy-{os.getpid()}-{secrets.token_hex(3)}.json")
    window = Window("COPY FROM (node-local file)")
    try:
        file_cpu = write_rows_file(rows_file, rows)
        node.db.sql(schema.create_sql())
        since_ms = int(time.time() * 1000)
        node0, (busy0, t0) = node.cpu(), machine_busy_seconds()
        summary = node.db.sql(
            f"COPY {table.qualified} FROM ? WITH (format = 'json') RETURN SUMMARY", [f"file://{rows_file}"]
        )
        node1, (busy1, t1) = node.cpu(), machine_busy_seconds()
        window.rows, window.seconds = node.stored(table), t1 - t0
        window.node_cpu_s = node1 - node0
        window.machine_busy = (busy1 - busy0) / (t1 - t0) / (os.cpu_count() or 1)
        window.foreign_statements = node.foreign_statements(table, since_ms)
        columns = summary["cols"]
        errors = sum(row[columns.index("error_count")] or 0 for row in summary["rows"])
        messages = [message for row in summary["rows"] for message in (row[columns.index("errors")] or {})]
        size_mb = rows_file.stat().st_size / 1e6
        window.note = (
            f"{rows:,} rows, {size_mb:,.0f} MB file; {errors} errors {messages[:1]}; writing it took "
            f"{file_cpu / rows * 1e6:.1f} us/row of CPU, not counted"
        )
    finally:
        rows_file.unlink(missing_ok=True)
        table.drop()
    return window


def table_row(window: Window) -> str:
    cells = [
        window.label,
        f"{window.rows_per_s:,.0f}",
        f"{window.rows:,}",
        f"{window.seconds:.0f}",
        f"{window.us_per_row(window.client_cpu_s):.1f}" if window.client_cpu_s else "0",
        f"{window.us_per_row(window.node_cpu_s):.1f}",
        f"{window.machine_busy:.0%}",
        str(window.foreign_statements),
        window.note,
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:4200")
    parser.add_argument("--user", default="")
    parser.add_argument("--password", default="")
    parser.add_argument("--pid-file", type=Path, default=Path("/opt/cratedb/nodes/single/crate.pid"))
    parser.add_argument("--sizes", default="2000,5000,10000,20000,50000", help="fixed batch sizes to sweep")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--warm-up", type=float, default=10.0)
    parser.add_argument("--auto-warm-up", type=float, default=30.0, help="warm-up of the auto runs (sizer search)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each counted window")
    parser.add_argument("--copy-rows", type=int, default=1_000_000)
    parser.add_argument("--tsperf-batch-size", type=int, default=20_000)
    parser.add_argument("--venv", type=Path, default=Path("/tmp/dg-bench-tsperf-venv"))
    parser.add_argument("--logs", type=Path, default=Path("/tmp/dg-bench-real-node"))
    args = parser.parse_args()

    os.environ.update({"DG_CRATEDB_URL": args.url, "DG_CRATEDB_USER": args.user, "DG_CRATEDB_PASSWORD": args.password})
    db = RealCrateDB.from_environment()
    node = Node(db, int(args.pid_file.read_text().strip()))
    args.logs.mkdir(parents=True, exist_ok=True)
    tsperf = ensure_tsperf(args.venv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    heap = db.value("SELECT heap['max'] FROM sys.nodes ORDER BY name LIMIT 1") / 2**30
    print(machine())
    print(f"node:     CrateDB {db.version()} at {db.url}, {db.node_count()} node(s), heap {heap:.1f} GiB, JVM pid "
          f"{node.jvm.pid}; tables {SHARDS} shards, replicas {REPLICAS}, partitioned by {PARTITION}")  # fmt: skip
    print(f"setup:    {MODEL.name}, sensors 1-{SENSORS}; dg-locust {args.users} users, one process; warm-up "
          f"{args.warm_up:g} s ({args.auto_warm_up:g} s for auto), {args.seconds:g} s counted\n")  # fmt: skip
    print(
        "| path | rows/s | rows | s | client CPU us/row | node CPU us/row | machine CPU | others' statements | note |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    windows: dict[str, Window] = {}

    def show(window: Window) -> None:
        windows[window.label] = window
        print(table_row(window), flush=True)

    show(copy_from_run(node, args.copy_rows, args.logs))
    show(tsperf_run(node, tsperf, None, args, args.logs))
    show(tsperf_run(node, tsperf, args.tsperf_batch_size, args, args.logs))
    for method in ("bulk", "unnest"):
        show(dg_locust_run(node, method, "auto", args, args.logs))
    for size in sizes:
        for method in ("bulk", "unnest"):
            show(dg_locust_run(node, method, size, args, args.logs))

    copy = windows["COPY FROM (node-local file)"].rows_per_s or float("nan")
    tsperf_best = max(w.rows_per_s for label, w in windows.items() if label.startswith("tsperf"))
    print()
    for method in ("bulk", "unnest"):
        auto = windows[f"dg-locust {method} auto"].rows_per_s
        fixed = {size: windows[f"dg-locust {method} {size}"].rows_per_s for size in sizes}
        best_size = max(fixed, key=fixed.get)
        print(
            f"dg-locust {method} auto: {auto:,.0f} rows/s = {auto / copy:.2f}x COPY FROM, {auto / tsperf_best:.1f}x "
            f"tsperf's best ({tsperf_best:,.0f}), {auto / fixed[best_size]:.2f}x its best fixed size ({best_size}: "
            f"{fixed[best_size]:,.0f})"
        )
    print(f"load at end: {load()}")


if __name__ == "__main__":
    main()
