"""What a row costs the client and the cluster on each ingest path, against a real CrateDB node, in one run.

For each insert method (bulk, unnest over HTTP; pg, pg-unnest over the PostgreSQL port) and each precision (the
shipped temperature model with its declared 2 decimals, and the same model at full double precision), one
headless dg-locust run against the node, into its own table (``doc.dgbench_paths_<method>_<precision>``, dropped
before and after), with a fixed batch size and user count so the paths differ only in the request shape. After a
warm-up, a window of ``--seconds`` counts:

- rows/s: rows acknowledged in the window (dg-locust's ``dg_rows_inserted_total`` on its /metrics port);
- client CPU per row: the dg-locust process's CPU time (user + system) in the window / rows;
- node CPU per row: the node's JVM CPU time (pid in ``--pid-file``) in the window / rows, raw and net of the CPU the
  node used for others at the rate measured in idle windows (``--idle`` seconds) right before and after the run;
- then it checks that the table holds exactly what the run reported: ``REFRESH``, ``count(*)`` == inserted (and,
  with rows in doubt, inserted <= count <= inserted + in doubt).

Client and node share the machine (and, here, its two cores with other work), so rows/s is what this machine
gives, while CPU per row is the comparable figure. Run from the repository root, with the node up:

    python bench/paths.py [--url http://127.0.0.1:4200] [--seconds 30] [--rounds 1] [--methods bulk,unnest,pg]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import cpu_seconds, machine  # noqa: E402
from dg_locust.model import MODELS_DIR  # noqa: E402
from tests.support import free_port, locust_command  # noqa: E402

SUMMARY = re.compile(r"^dg summary: inserted=(\d+) failed=(\d+) in_doubt=(\d+) rows_per_s=([\d.]+)", re.M)
INSERTED = re.compile(r"^dg_rows_inserted_total\{[^}]*\} ([0-9.e+]+)$", re.M)


@dataclass
class Result:
    method: str
    precision: str
    rows: int = 0
    seconds: float = 0.0
    client_cpu_s: float = 0.0
    node_cpu_s: float = 0.0
    inserted: int = 0
    failed: int = 0
    in_doubt: int = 0
    stored: int = -1
    foreign_jobs: int = 0  # statements of others the node ran in the window (its CPU then counts theirs too)
    node_idle_cores: float = 0.0  # the node's CPU rate without this run (idle windows before and after it)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def us_per_row(self, cpu_s: float) -> float:
        return cpu_s / self.rows * 1e6 if self.rows else float("nan")

    @property
    def stored_ok(self) -> bool:
        return self.inserted <= self.stored <= self.inserted + self.in_doubt

    @property
    def node_net_cpu_s(self) -> float:
        """The node's CPU in the window less what it used for others at the rate of the idle windows."""
        return self.node_cpu_s - self.node_idle_cores * self.seconds

    def row(self) -> str:
        if self.stored < 0:
            check = "not counted"
        elif self.stored == self.inserted:
            check = f"{self.stored:,} = inserted"
        else:
            check = f"{self.stored:,} ({'within' if self.stored_ok else 'OUTSIDE'} inserted..inserted + in doubt)"
        return (
            f"| {self.method} | {self.precision} | {self.rows_per_s:,.0f} | {self.us_per_row(self.client_cpu_s):.1f} | "
            f"{self.us_per_row(self.node_net_cpu_s):.1f} | {self.us_per_row(self.node_cpu_s):.1f} | "
            f"{self.node_idle_cores:.2f} | {self.foreign_jobs:,} | {self.inserted:,} / {self.failed} / {self.in_doubt} "
            f"| {check} |"
        )


def sql(url: str, statement: str) -> dict:
    request = urllib.request.Request(
        f"{url}/_sql", data=json.dumps({"stmt": statement}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def inserted_so_far(port: int) -> float | None:
    """Rows dg-locust counted acknowledged so far (its /metrics), or None when it did not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    return sum(float(value) for value in INSERTED.findall(text))


def sample(port: int, client: psutil.Process, node: psutil.Process) -> tuple[float, float, float, float]:
    """(rows, time, client CPU s, node CPU s), read as close together as the metrics endpoint allows."""
    for _ in range(20):
        rows = inserted_so_far(port)
        if rows is not None:
            return rows, time.monotonic(), cpu_seconds(client), cpu_seconds(node)
        time.sleep(0.2)
    raise RuntimeError(f"dg-locust's /metrics on port {port} does not answer")


def full_precision_model(directory: Path) -> Path:
    """The shipped temperature model without its declared precision."""
    model = json.loads((MODELS_DIR / "temperature.json").read_text())
    for field in model["temperature"]["fields"].values():
        if isinstance(field, dict):
            field.pop("precision", None)
    path = directory / "temperature_full.json"
    path.write_text(json.dumps(model))
    return path


def idle_rate(node: psutil.Process, seconds: float) -> float:
    """The node's CPU use (cores) over ``seconds`` while this benchmark sends nothing."""
    before = cpu_seconds(node)
    time.sleep(seconds)
    return (cpu_seconds(node) - before) / seconds


def one_run(args, method: str, precision: str, model: Path, node: psutil.Process) -> Result:
    table = f"doc.dgbench_paths_{method.replace('-', '_')}_{precision}"
    result = Result(method, precision)
    idle_before = idle_rate(node, args.idle)
    port = free_port()
    host = args.url
    command = locust_command(
        "--headless", "--only-summary", "-u", str(args.users), "-r", str(args.users),
        "-t", "600s", "--stop-timeout", "20",
        "-H", host, "--insert-method", method, "--batch-size", str(args.batch_size),
        "--model", str(model), "--table", table, "--drop-table", "--shards", str(args.shards), "--replicas", "0",
        "--prometheus-port", str(port),
    )  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    environment.update({"USERNAME": args.username, "PASSWORD": args.password} if args.username else {})
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
        client = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        while not inserted_so_far(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"{method}: no rows acknowledged; output:\n{log.read().decode()[-3000:]}")
            time.sleep(0.1)
        time.sleep(args.warm_up)
        rows0, t0, c0, n0 = sample(port, client, node)
        wall0 = time.time()
        time.sleep(args.seconds)
        rows1, t1, c1, n1 = sample(port, client, node)
        wall1 = time.time()
        proc.send_signal(signal.SIGTERM)  # Locust stops the test, lets batches finish and prints the summary
        try:
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        output = log.read().decode(errors="replace")
    result.rows, result.seconds = int(rows1 - rows0), t1 - t0
    result.client_cpu_s, result.node_cpu_s = c1 - c0, n1 - n0
    found = SUMMARY.findall(output)
    if not found:
        raise RuntimeError(f"{method}: no summary line; output:\n{output[-3000:]}")
    result.inserted, result.failed, result.in_doubt = (int(v) for v in found[-1][:3])
    result.foreign_jobs = int(
        sql(
            args.url,
            f"SELECT count(*) FROM sys.jobs_log WHERE started >= {wall0 * 1000:.0f} AND started <= {wall1 * 1000:.0f} "
            "AND stmt NOT LIKE '%dgbench_paths%'",
        )["rows"][0][0]
    )
    quoted = ".".join(f'"{part}"' for part in table.split("."))
    try:
        sql(args.url, f"REFRESH TABLE {quoted}")
        result.stored = int(sql(args.url, f"SELECT count(*) FROM {quoted}")["rows"][0][0])
    except urllib.error.HTTPError as error:  # the node is shared: someone may have dropped the table
        print(f"{method} {precision}: cannot count {table}: HTTP {error.code}", file=sys.stderr)
    sql(args.url, f"DROP TABLE IF EXISTS {quoted}")
    result.node_idle_cores = (idle_before + idle_rate(node, args.idle)) / 2
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:4200", help="the node's HTTP URL (pg: same host, 5432)")
    parser.add_argument("--pid-file", default="/opt/cratedb/nodes/single/crate.pid")
    parser.add_argument("--methods", default="bulk,unnest,pg,pg-unnest")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the counted window")
    parser.add_argument("--warm-up", type=float, default=5.0)
    parser.add_argument("--idle", type=float, default=10.0, help="idle windows before and after each run")
    parser.add_argument("--rounds", type=int, default=1, help="times to run the whole set (order alternates)")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--username", default="")
    parser.add_argument("--password", default="")
    args = parser.parse_args()
    node = psutil.Process(int(Path(args.pid_file).read_text().strip()))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    version = sql(args.url, "SELECT version['number'] FROM sys.nodes LIMIT 1")["rows"][0][0]
    print(machine())
    print(f"commit:   {commit}; CrateDB {version} at {args.url} (JVM pid {node.pid})")
    print(
        f"runs:     {args.users} users, batches of {args.batch_size:,} rows, temperature model (500 sensors), "
        f"{args.warm_up:g} s warm-up, {args.seconds:g} s counted, {args.shards} shards, 0 replicas"
    )
    with tempfile.TemporaryDirectory() as directory:
        models = {"2 decimals": MODELS_DIR / "temperature.json", "full": full_precision_model(Path(directory))}
        runs = [(m, p) for m in args.methods.split(",") for p in models]
        results = []
        for round_number in range(args.rounds):
            for method, precision in runs if round_number % 2 == 0 else list(reversed(runs)):
                label = "decimals" if precision != "full" else "full"
                result = one_run(args, method, label, models[precision], node)
                result.precision = precision
                results.append(result)
                print(result.row(), flush=True)
    print()
    print(
        "| method | precision | rows/s | client CPU us/row | node CPU us/row, net | node CPU us/row, raw "
        "| node idle (cores) | others' jobs | inserted / failed / in doubt | count(*) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for result in results:
        print(result.row())
    print(f"load:     {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min load average at the end)")


if __name__ == "__main__":
    main()
