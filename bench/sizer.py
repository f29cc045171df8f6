"""Benchmark of the adaptive batch size (issue 3): rows/s at the settled auto size next to the best fixed size.

The database is the CrateDB test double in count-only mode with the latency model of
tests/test_sizer_end_to_end.py: every INSERT costs an overhead plus a per-row cost (asyncio sleeps), at most
``--max-concurrency`` inserts run at once and the rest queue, and inserts with more than ``--overload-rows`` rows
fail with a circuit-breaker error. With more users than slots the double sets the pace, so its model predicts the
rows/s of every fixed size: max_concurrency * s / (overhead + s * per_row) up to the cliff, 0 above.

1. Fixed sizes: a log sweep (x1.41 steps from 500 up to 100000, stopping after two sizes in a row with no
   acknowledged rows unless --full-sweep), then x1.09 steps on both sides of the best size found, and the model's own
   optimum (an oracle size no sweep would hit exactly). Each size is one Locust run; its rows/s are the rows the
   double acknowledged over ``--measure`` seconds, after ``--warmup`` seconds from its first answered batch.
2. Auto: one longer Locust run with ``--batch-size auto``; its rows/s are the rows the double acknowledged from
   ``--settle`` seconds after its first answered batch to the end of the run: the settled size with all its later
   probing and back-offs, not a hand-picked quiet stretch.

It prints auto / best fixed (target: at least 90 %), with the machine and the command to rerun. From the repository
root (about 12 minutes with the defaults):

    python bench/sizer.py

``--host URL`` measures against a real CrateDB instead (e.g. ``--host http://127.0.0.1:4200 --insert-method unnest
--target 0.95``): each run drops and recreates the table, and the rows/s are the rows CrateDB acknowledged as
dg-locust's own ``/metrics`` count them (sampled every ``--poll`` seconds); there is no model, so no oracle size.
``--recheck N`` measures the N best swept sizes again after auto, each over the same slice of its run as auto's settled
part (``--settle`` s not measured, then the rest of ``--auto-seconds``), and compares auto with those too: on a noisy
node the sweep's best is the luckiest of many short runs, and a real node's rows/s fall as the table grows.
``--bracket`` measures them once before auto as well and compares auto with the mean of the two runs of each size:
a node that is faster or slower for minutes at a time (merges, a JVM warming up) then favours neither side, and the
difference between the two runs of one size shows how far one 180-s run can be off another.

``--simulate`` runs no Locust: it replays the double's model in a discrete-event simulation with the real sizer on a
fake clock and prints, for cliffs from 2000 to 33000 rows, when the size in use enters +-30 % of the cliff for good
(the sizer's settling time depends on where the cliff sits between two sizes of its grid).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import heapq
import json
import math
import os
import platform
import random
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "tests"))

from cratedb_double import DoubleProcess  # noqa: E402
from harness import cpu_model, load  # noqa: E402
from test_sizer_end_to_end import per_second_sizes  # noqa: E402

from dg_locust.sizing import BatchSizer, SizerSettings  # noqa: E402

SUMMARY = re.compile(r"^dg summary: .*$", re.M)
SIZE_LINE = re.compile(r"batch size \d+ -> \d+ \(.*\)$")


@dataclass(frozen=True)
class Model:
    """The double's latency model (the CLI flags of tests/cratedb_double.py) and what it predicts."""

    overhead_ms: float
    per_row_us: float
    max_concurrency: int
    overload_rows: int

    def rows_per_s(self, size: float) -> float:
        if size > self.overload_rows:
            return 0.0
        return self.max_concurrency * size / (self.overhead_ms / 1e3 + size * self.per_row_us / 1e6)

    def optimum(self, minimum: int = 100, maximum: int = 100_000) -> int:
        return max(range(minimum, maximum + 1), key=self.rows_per_s)


@dataclass
class Run:
    """One Locust run against a fresh double: the double's counters sampled every `poll` seconds."""

    label: str
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)  # (time, 200s, acked rows, overloads)
    summary: str = ""
    size_lines: list[str] = field(default_factory=list)

    def first_answer(self) -> float:
        """When the first batch was answered (acknowledged or refused as overload)."""
        return next((t for t, _, rows, overloads in self.samples if rows or overloads), self.samples[-1][0])

    def span(self, start: float, end: float) -> tuple[float, int, int, int, list[float]]:
        """Seconds, acknowledged rows, acknowledged batches, overloads and per-second mean sizes in [start, end]."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return 0.0, 0, 0, 0, []
        a, b = inside[0], inside[-1]
        # The 200 responses include the poller's own stats requests, one per sample.
        batches = b[1] - a[1] - (len(inside) - 1)
        return b[0] - a[0], b[2] - a[2], batches, b[3] - a[3], per_second_sizes(inside)


class DoubleCounters:
    """What the double received, from its stats endpoint: (200 responses, rows acknowledged, overloads)."""

    def __init__(self, double: DoubleProcess) -> None:
        self.double = double

    def sample(self) -> tuple[int, int, int]:
        stats = self.double.stats()
        return int(stats["status"].get("200", 0)), stats["rows_acknowledged"], stats["overloads"]


class LocustCounters:
    """A real node keeps no such counters: dg-locust's own /metrics, whose rows are the ones CrateDB acknowledged.

    Returned in the double's shape, (batches + samples taken, rows inserted, rows failed or in doubt), so that the
    same arithmetic (which subtracts one stats request per sample) applies."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.samples = 0
        self.last = (0, 0, 0)

    def sample(self) -> tuple[int, int, int]:
        self.samples += 1
        totals = dict.fromkeys(("dg_batches_total", "dg_rows_inserted_total", "dg_rows_failed_total"), 0.0)
        totals["dg_rows_in_doubt_total"] = 0.0
        try:
            with urllib.request.urlopen(self.url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            # Not serving yet, or already gone: the counters stand where they were.
            self.last = (self.last[0] + 1, *self.last[1:])
            return self.last
        for line in text.splitlines():
            name, _, value = line.partition("{")
            if name in totals:
                totals[name] += float(value.rsplit(" ", 1)[1])
        not_inserted = totals["dg_rows_failed_total"] + totals["dg_rows_in_doubt_total"]
        batches = int(totals["dg_batches_total"]) + self.samples
        self.last = (batches, int(totals["dg_rows_inserted_total"]), int(not_inserted))
        return self.last


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def database(model: Model, args: argparse.Namespace):
    """The URL to send to, the counters to read and the Locust options that go with them."""
    if args.host:
        port = free_port()
        # Every run starts from an empty table, so that no size inherits the segments another one wrote.
        yield args.host, LocustCounters(port), ["--prometheus-port", str(port), "--drop-table"]
        return
    with DoubleProcess(
        count_only=True,
        overhead_ms=model.overhead_ms,
        per_row_us=model.per_row_us,
        max_concurrency=model.max_concurrency,
        overload_rows=model.overload_rows,
        overload_response="circuit_breaker",
    ) as double:
        yield double.url, DoubleCounters(double), ["--prometheus-port", "0"]


def run_locust(model: Model, args: argparse.Namespace, batch_args: list[str], seconds: float, label: str) -> Run:
    run = Run(label)
    with tempfile.TemporaryDirectory(prefix="dg_sizer_bench_") as tmp, database(model, args) as (url, counters, extra):
        command = [sys.executable, "-m", "locust", "-f", str(PROJECT_DIR / "locustfile.py"), "--headless"]
        command += ["--only-summary", "-u", str(args.users), "-r", str(args.users), "-t", f"{math.ceil(seconds)}s"]
        command += ["--stop-timeout", "5", "--seed", "1", "-H", url, *extra, *batch_args]
        command += ["--insert-method", args.insert_method, *shlex.split(args.locust_args)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.Popen(command, cwd=tmp, env=env, stdout=stdout, stderr=stderr)
            while True:
                run.samples.append((time.monotonic(), *counters.sample()))
                if proc.poll() is not None:
                    break
                time.sleep(args.poll)
        found = SUMMARY.findall(out.read_text())
        run.summary = found[-1] if found else f"(no summary; exit code {proc.returncode}): {err.read_text()[-500:]}"
        run.size_lines = [m.group(0) for line in err.read_text().splitlines() if (m := SIZE_LINE.search(line))]
    return run


def fixed_rate(
    model: Model, args: argparse.Namespace, size: int, measure: float = 0.0, warmup: float | None = None
) -> tuple[float, float]:
    measure = measure or args.measure
    warmup = args.warmup if warmup is None else warmup
    run = run_locust(model, args, ["--batch-size", str(size)], warmup + measure + 2, f"fixed {size}")
    t0 = run.first_answer() + warmup
    seconds, rows, _, overloads, _ = run.span(t0, t0 + measure)
    rate = rows / seconds if seconds > 0 else 0.0
    if args.host:
        note = f"{overloads} rows not inserted"
    else:
        note = f"model {model.rows_per_s(size):>9,.0f}; {overloads} overloads"
    print(f"  fixed {size:>7}: {rate:>9,.0f} rows/s   ({note} in {seconds:.1f} s)", flush=True)
    return rate, seconds


def sweep(model: Model, args: argparse.Namespace) -> dict[int, float]:
    rates: dict[int, float] = {}
    print(f"fixed sizes, x1.41 sweep ({args.warmup:g} s warm-up + {args.measure:g} s measured each):", flush=True)
    zeros = 0
    k = 0
    while True:
        size = min(_round2(args.sweep_from * 2 ** (k / 2)), args.sweep_to)
        rates[size], _ = fixed_rate(model, args, size)
        zeros = zeros + 1 if rates[size] == 0 else 0
        if size >= args.sweep_to or (zeros >= 2 and not args.full_sweep):
            break
        k += 1
    best = max(rates, key=rates.get)
    print(f"refining around {best} (x1.09 steps):", flush=True)
    for j in (-3, -2, -1, 1, 2, 3):
        size = _round2(best * 2 ** (j / 8))
        if size not in rates and args.sweep_from <= size <= args.sweep_to:
            rates[size], _ = fixed_rate(model, args, size)
    oracle = model.optimum()
    if not args.host and oracle not in rates:
        print("the model's optimum (oracle):", flush=True)
        rates[oracle], _ = fixed_rate(model, args, oracle)
    return rates


def recheck(model: Model, args: argparse.Namespace, sizes: list[int], when: str) -> dict[int, float]:
    """The given fixed sizes again, `when` auto runs, each measured over the same part of its run as auto's settled
    part (from --settle s after the first answer, for as long): on a noisy node the sweep's best is the luckiest of
    many short runs, the load may have changed since, and on a real node rows/s fall as the table grows (more
    segments to merge), so only the same slice of a run compares alike."""
    seconds = args.auto_seconds - args.settle
    print(
        f"recheck {when} auto: the {len(sizes)} best swept sizes again, {args.settle:g} s not measured + {seconds:g} s "
        "measured each (auto's slice):",
        flush=True,
    )
    return {size: fixed_rate(model, args, size, measure=seconds, warmup=args.settle)[0] for size in sizes}


def bracketed(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    """Each size's mean over its run before auto and its run after (only `after` if there was no run before)."""
    return {size: (before[size] + rate) / 2 if size in before else rate for size, rate in after.items()}


def auto_rate(model: Model, args: argparse.Namespace) -> tuple[float, Run]:
    print(
        f"auto: one {args.auto_seconds:g} s run, measured from {args.settle:g} s after its first answered batch:",
        flush=True,
    )
    run = run_locust(model, args, ["--batch-size", "auto"], args.auto_seconds, "auto")
    t0 = run.first_answer()
    end = run.samples[-1][0]
    seconds, rows, batches, overloads, sizes = run.span(t0 + args.settle, end)
    whole_s, whole_rows, *_ = run.span(t0, end)
    rate = rows / seconds if seconds > 0 else 0.0
    print("  sizer log (rate-limited to one line per 5 s, changes in between folded in):")
    for line in run.size_lines:
        print(f"    {line}")
    print(f"  {run.summary}")
    if sizes:
        common = statistics.median(sizes)
        print(
            f"  settled part ({seconds:.0f} s): {rate:,.0f} rows/s; batch size median {common:.0f} "
            f"(per-second means {min(sizes):.0f}..{max(sizes):.0f}), {batches} batches, "
            + (f"{overloads} rows not inserted" if args.host else f"{overloads} overloads")
        )
    print(f"  whole run including the search ({whole_s:.0f} s): {whole_rows / max(whole_s, 1e-9):,.0f} rows/s")
    return rate, run


def _round2(x: float) -> int:
    unit = 10 ** max(0, int(math.log10(x)) - 1)
    return int(round(x / unit) * unit)


# --- simulation -------------------------------------------------------------------------------------------------------


class _Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(model: Model, users: int, seconds: float, seed: int, noise: float = 0.1) -> list[tuple[float, int]]:
    """(completion time, current size) after every batch: the double's FIFO slots, the real sizer on a fake clock."""
    rng = random.Random(seed)
    clock = _Clock()
    sizer = BatchSizer(SizerSettings(), clock=clock)
    free_at = [0.0] * model.max_concurrency
    events: list = []
    seq = 0

    def send(user: int, now: float) -> None:
        nonlocal seq
        size = sizer.current
        slot = min(range(len(free_at)), key=free_at.__getitem__)
        start = max(now + 1e-6 * size, free_at[slot])  # ~1 us per row to build and encode a batch
        overload = size > model.overload_rows
        service = model.overhead_ms / 1e3
        if not overload:
            service = (service + size * model.per_row_us / 1e6) * (1 + rng.uniform(-noise, noise))
        free_at[slot] = start + service
        outcome = {"inserted": 0 if overload else size, "failed": 0, "in_doubt": size if overload else 0}
        heapq.heappush(events, (start + service, seq, user, size, start + service - now, overload, outcome))
        seq += 1

    for user in range(users):
        send(user, 0.0)
    trace = []
    while events and events[0][0] <= seconds:
        now, _, user, size, duration, overload, outcome = heapq.heappop(events)
        clock.now = now
        sizer.record(size=size, duration_s=duration, overload=overload, **outcome)
        trace.append((now, sizer.current))
        send(user, now)
    return trace


def simulate_cliffs(args: argparse.Namespace) -> None:
    horizon, hold = 120.0, 20.0
    print(f"simulated: {args.users} users, overhead {args.overhead_ms:g} ms + {args.per_row_us:g} us/row, ", end="")
    print(f"{args.max_concurrency} slots, +-10 % latency noise, {horizon:g} s per cliff, 3 seeds")
    print(f"settled: the size in use stays within +-30 % of the cliff for {hold:g} s from then on;")
    print("dips: times it left that band again later (a back-off after probing a decayed overload ceiling)")
    print(f"{'cliff':>7} {'settled after (s)':>20} {'dips until ' + str(int(horizon)) + ' s':>16}")
    for k in range(33):
        cliff = int(2000 * 2 ** (k / 8) * 1.03)  # 3 % above a grid size (the grid starts at 1000 = 2000 / 2)
        model = Model(args.overhead_ms, args.per_row_us, args.max_concurrency, cliff)
        settled, dips = [], []
        for seed in range(3):
            trace = simulate(model, args.users, horizon, seed)
            inside = [(t, abs(size / cliff - 1) <= 0.3) for t, size in trace]
            t_in, next_out = math.inf, math.inf
            for t, ok in reversed(inside):  # the earliest t in the band with no exit within `hold` seconds
                if not ok:
                    next_out = t
                elif next_out - t >= hold and t <= horizon - hold:
                    t_in = t
            after = [ok for t, ok in inside if t >= t_in]
            settled.append(t_in)
            dips.append(sum(1 for a, b in zip(after, after[1:], strict=False) if a and not b))
        print(f"{cliff:>7} {' '.join(f'{t:5.0f}' for t in settled):>20} {' '.join(map(str, dips)):>16}")


# --- main -------------------------------------------------------------------------------------------------------------


def code_version() -> str:
    """The commit, and whether the sizer differs from it in the working tree (others may be changing it)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "dg_locust/sizing/"],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return f"{commit}" + (", dg_locust/sizing/ modified in the working tree" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--overhead-ms", type=float, default=60.0)
    parser.add_argument("--per-row-us", type=float, default=10.0)
    parser.add_argument("--max-concurrency", type=int, default=2)
    parser.add_argument("--overload-rows", type=int, default=7_000)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds skipped in each fixed-size run")
    parser.add_argument("--measure", type=float, default=15.0, help="seconds measured in each fixed-size run")
    parser.add_argument("--sweep-from", type=int, default=500)
    parser.add_argument("--sweep-to", type=int, default=100_000)
    parser.add_argument("--full-sweep", action="store_true", help="do not stop after two sizes with no rows")
    parser.add_argument("--auto-seconds", type=float, default=180.0, help="length of the auto run")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds of the auto run not measured")
    parser.add_argument("--poll", type=float, default=0.25, help="seconds between two reads of the double's stats")
    parser.add_argument("--simulate", action="store_true", help="only the simulation of settling times per cliff")
    parser.add_argument("--host", default="", help="a real CrateDB (URL) instead of the double; rows from /metrics")
    parser.add_argument("--insert-method", default="bulk", choices=("bulk", "unnest"))
    parser.add_argument("--locust-args", default="", help="more dg-locust options, e.g. '--username crate'")
    parser.add_argument("--target", type=float, default=0.9, help="auto / best fixed size to reach")
    parser.add_argument("--recheck", type=int, default=0, help="after auto, measure the N best swept sizes again")
    parser.add_argument("--bracket", action="store_true", help="with --recheck: measure them before auto too")
    args = parser.parse_args()
    if args.bracket and not args.recheck:
        parser.error("--bracket needs --recheck N")

    print(f"date:    {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"cpu:     {cpu_model()} ({os.cpu_count()} logical CPUs, load average {load()})")
    print(f"python:  {platform.python_version()}, {platform.platform()}")
    print(f"code:    {code_version()}")
    print(f"command: python bench/sizer.py {shlex.join(sys.argv[1:])}".rstrip())
    if args.simulate:
        simulate_cliffs(args)
        return
    model = Model(args.overhead_ms, args.per_row_us, args.max_concurrency, args.overload_rows)
    if args.host:
        with urllib.request.urlopen(args.host, timeout=5) as response:
            version = json.load(response)["version"]["number"]
        print(f"database: CrateDB {version} at {args.host}; insert method {args.insert_method}; {args.users} users\n")
    else:
        print(
            f"double:  count-only, overhead {model.overhead_ms:g} ms + {model.per_row_us:g} us/row, "
            f"{model.max_concurrency} inserts at once (the rest queue), overload above {model.overload_rows} rows; "
            f"{args.users} Locust users, insert method {args.insert_method}"
        )
        print(f"model:   optimum {model.optimum()} rows/batch, {model.rows_per_s(model.optimum()):,.0f} rows/s\n")
    started = time.monotonic()
    rates = sweep(model, args)
    swept = {size: rate for size, rate in rates.items() if args.host or size != model.optimum()}
    best_swept = max(swept, key=swept.get)
    best = max(rates, key=rates.get)
    print()
    again = sorted(swept, key=swept.get, reverse=True)[: args.recheck]
    before = recheck(model, args, again, "before") if args.bracket else {}
    auto, _ = auto_rate(model, args)
    after = recheck(model, args, again, "after") if args.recheck else {}
    rechecked = bracketed(before, after)
    print(f"\nload average at the end {load()}, {time.monotonic() - started:.0f} s in all")
    print(f"best fixed size found by the sweep: {best_swept} at {swept[best_swept]:,.0f} rows/s")
    if best != best_swept:
        print(f"best fixed size including the oracle: {best} at {rates[best]:,.0f} rows/s")
    print(f"auto, settled: {auto:,.0f} rows/s")
    for name, size in (("sweep's best", best_swept), ("oracle", best))[: 1 if best == best_swept else 2]:
        ratio = auto / rates[size] if rates[size] else 0.0
        verdict = "meets" if ratio >= args.target else "BELOW"
        print(f"auto / {name} fixed: {ratio:.1%} ({verdict} the {args.target:.0%} target)")
    if rechecked:
        size = max(rechecked, key=rechecked.get)
        ratio = auto / rechecked[size] if rechecked[size] else 0.0
        verdict = "meets" if ratio >= args.target else "BELOW"
        runs = f"mean of {before[size]:,.0f} before and {after[size]:,.0f} after auto, " if before else ""
        print(
            f"auto / best rechecked fixed ({size} at {rechecked[size]:,.0f} rows/s, {runs}over "
            f"{args.auto_seconds - args.settle:g} s): {ratio:.1%} ({verdict} the {args.target:.0%} target)"
        )


if __name__ == "__main__":
    main()
