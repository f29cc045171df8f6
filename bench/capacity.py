"""Benchmark of the capacity finder (issue 15): what ``--find-capacity`` reports, next to the best fixed run.

1. The finder: one headless run with ``--find-capacity`` (stages of ``--stage-s`` seconds); its ``dg capacity`` line
   and stage table are printed as they are.
2. Fixed runs (unless ``--no-fixed``): a fixed users count and batch size each, around what the finder found (its
   users halved, as found and doubled at its batch size; its batch size halved and doubled at its users), or the
   ``--fixed U:B,U:B`` given. Each run's rows/s are the rows acknowledged over ``--measure`` seconds after
   ``--warmup`` seconds from its first acknowledged rows, read from the run's own Prometheus counter
   (``dg_rows_inserted_total``), so any host can be measured the same way.

It prints the capacity, the best fixed run and their ratio, with the machine and the command to rerun.

Against the CrateDB test double (the default; about 4 minutes): the double's latency model of
``tests/test_capacity.py`` (every insert 40 ms + 40 us per row, 2 at once, the rest queue) with batches of at most
4000 rows implies a capacity of 2 * 4000 / (0.040 + 4000 * 0.000040) = 40000 rows/s, printed next to the results:

    python bench/capacity.py

Against a CrateDB (each run starts on an empty table: ``--drop-table`` on ``--table``, ``doc.dg_capacity_bench``
by default):

    python bench/capacity.py --host http://127.0.0.1:4200 --stage-s 30

Arguments after ``--`` go to every Locust run (e.g. ``-- --username crate``).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR / "tests"))

from cratedb_double import DoubleProcess  # noqa: E402
from harness import machine  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

CAPACITY_LINE = re.compile(
    r"^dg capacity: rows_per_s=(?P<rows_per_s>[\d.]+) users=(?P<users>\d+) workers=(?P<workers>\d+) "
    r"batch_size=(?P<batch_size>\d+) .*$",
    re.M,
)
DOUBLE_MODEL = {"overhead_ms": 40.0, "per_row_us": 40.0, "max_concurrency": 2}
DOUBLE_BATCH_SIZE_MAX = 4000


def double_capacity() -> float:
    overhead_s, per_row_s = DOUBLE_MODEL["overhead_ms"] / 1e3, DOUBLE_MODEL["per_row_us"] / 1e6
    return DOUBLE_MODEL["max_concurrency"] * DOUBLE_BATCH_SIZE_MAX / (overhead_s + DOUBLE_BATCH_SIZE_MAX * per_row_s)


@dataclass
class FixedRun:
    users: int
    batch_size: int
    rows: int = 0
    seconds: float = 0.0
    summary: str = ""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def locust(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(PROJECT_DIR / "locustfile.py"), "--headless", *args]


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def inserted(port: int) -> int | None:
    """dg_rows_inserted_total of a running dg-locust process, summed over its series; None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "dg_rows_inserted_total"
        )
    )


def run_finder(common: list[str], stage_s: float) -> str:
    command = locust([*common, "--find-capacity", "--capacity-stage-s", f"{stage_s:g}", "--prometheus-port", "0"])
    print(f"$ {shlex.join(command)}", flush=True)
    completed = subprocess.run(command, capture_output=True, text=True, env=environment(), check=False)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(("dg ", "  "))]
    if not CAPACITY_LINE.search(completed.stdout):
        raise SystemExit(f"the finder reported no capacity (exit {completed.returncode}):\n{completed.stderr[-3000:]}")
    return "\n".join(lines)


def run_fixed(common: list[str], run: FixedRun, warmup: float, measure: float) -> FixedRun:
    port = free_port()
    command = locust(
        [*common, "-u", str(run.users), "-r", str(run.users), "--batch-size", str(run.batch_size)]
        + ["-t", f"{warmup + measure + 60:.0f}s", "--prometheus-port", str(port), "--only-summary"]
    )
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=environment())
    try:
        deadline = time.monotonic() + 60
        while not inserted(port):  # not up, or no rows acknowledged yet
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"fixed run {run.users} users x {run.batch_size}: no rows acknowledged")
            time.sleep(0.2)
        time.sleep(warmup)
        rows0, t0 = inserted(port), time.monotonic()
        time.sleep(measure)
        rows1, t1 = inserted(port), time.monotonic()
        run.rows, run.seconds = rows1 - rows0, t1 - t0
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run.summary = next((line for line in output.splitlines() if line.startswith("dg summary:")), "")
    return run


def neighbours(users: int, batch_size: int, batch_size_max: int | None) -> list[tuple[int, int]]:
    """The finder's users halved, as found and doubled at its batch size; its batch size halved and doubled."""
    runs = [(max(users // 2, 1), batch_size), (users, batch_size), (users * 2, batch_size)]
    runs += [(users, max(batch_size // 2, 1)), (users, min(batch_size * 2, batch_size_max or batch_size * 2))]
    unique = []
    for run in runs:
        if run not in unique:
            unique.append(run)
    return unique


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", help="a CrateDB URL; default: start the test double with its latency model")
    parser.add_argument("--table", default="doc.dg_capacity_bench", help="with --host: the table (dropped per run)")
    parser.add_argument("--stage-s", type=float, default=None, help="--capacity-stage-s (default 30; double: 12)")
    parser.add_argument("--no-fixed", action="store_true", help="only the finder")
    parser.add_argument("--fixed", help="fixed runs as USERS:BATCH,USERS:BATCH (default: around the finder's best)")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of each fixed run before measuring")
    parser.add_argument("--measure", type=float, default=30.0, help="seconds measured of each fixed run")
    parser.add_argument("locust_args", nargs="*", help="after --: more arguments for every Locust run")
    args = parser.parse_args()

    print(machine())
    double = None
    batch_size_max = None
    if args.host:
        common = ["-H", args.host, "--table", args.table, "--drop-table", "--stop-timeout", "10"]
        stage_s = args.stage_s or 30.0
    else:
        double = DoubleProcess(count_only=True, **DOUBLE_MODEL).start()
        batch_size_max = DOUBLE_BATCH_SIZE_MAX
        common = ["-H", double.url, "--batch-size-max", str(batch_size_max), "--stop-timeout", "5"]
        stage_s = args.stage_s or 12.0
    common += args.locust_args
    try:
        started = time.monotonic()
        report = run_finder(common, stage_s)
        print(report, f"(finder: {time.monotonic() - started:.0f} s)", sep="\n", flush=True)
        found = CAPACITY_LINE.search(report)
        capacity, users, batch_size = float(found["rows_per_s"]), int(found["users"]), int(found["batch_size"])
        if double is not None:
            model = double_capacity()
            print(f"the double's model: {model:.0f} rows/s; found {capacity:.0f} = {capacity / model:.1%} of it")
        if args.no_fixed:
            return
        if args.fixed:
            plan = [tuple(int(part) for part in item.split(":")) for item in args.fixed.split(",")]
        else:
            plan = neighbours(users, batch_size, batch_size_max)
        print(f"\nfixed runs ({args.warmup:g} s warm-up, {args.measure:g} s measured):")
        print("| users | batch size | rows/s | dg summary |\n|---:|---:|---:|---|")
        runs = []
        for run_users, run_batch in plan:
            run = run_fixed(common, FixedRun(run_users, run_batch), args.warmup, args.measure)
            runs.append(run)
            print(f"| {run.users} | {run.batch_size} | {run.rows_per_s:,.0f} | {run.summary} |", flush=True)
        best = max(runs, key=lambda run: run.rows_per_s)
        print(
            f"\ncapacity found {capacity:,.0f} rows/s ({users} users, batch {batch_size}); best fixed run "
            f"{best.rows_per_s:,.0f} rows/s ({best.users} users, batch {best.batch_size}); "
            f"found / best fixed = {capacity / best.rows_per_s:.1%}"
        )
    finally:
        if double is not None:
            double.stop()
    print(f"\nrerun: python bench/capacity.py {shlex.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
