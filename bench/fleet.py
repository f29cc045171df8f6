"""Fleet-size benchmark: memory, start-up and rows/s of dg-locust with 10^4 .. 10^7 sensors.

For each fleet size and insert method, dg-locust runs headless as one process (``--id-end N``, the temperature
model, endless fast mode, a fixed ``--batch-size``) pinned to CPU 0, against ``tests/cratedb_double.py
--count-only`` pinned to CPU 1, as in ``bench/end_to_end.py``. Measured per run:

- first rows: seconds from starting the command to the first rows the double counted (Python and Locust start,
  the feed is built, the table created, the first batch generated, encoded and sent);
- peak RSS: the kernel's high-water mark (VmHWM) of the process up to the end of the counted window, and per
  sensor: the peak above the smallest fleet's, divided by the sensors added;
- rows/s: rows the double counted over ``--seconds`` after ``--warm-up``, beside the figure of the smallest fleet.

``--processes P`` runs Locust's ``--processes P`` instead (a master and P forked workers on this machine, each
worker building only its slice of the ids, unpinned); the RSS columns are then the largest worker's peak and the
sum over all processes. ``--id-start`` shifts the ids, so ``--id-start 9000001 --sensors 1000000`` builds exactly
the slice the last of 10 workers of a 10M fleet builds. Run from the repository root:

    python bench/fleet.py                                     # 10^4, 10^5, 10^6, 10^7 sensors; bulk and unnest
    python bench/fleet.py --sensors 1000000 --methods bulk
    python bench/fleet.py --sensors 1000000 --id-start 9000001  # one worker's slice of 10M ids
    python bench/fleet.py --sensors 10000000 --processes 10 --users 10

It prints a Markdown table for ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import count_checks, load, locust_command, machine, start_double, timed_run  # noqa: E402

START_UP_ALLOWANCE_S = 10.0
START_UP_ALLOWANCE_S_PER_MILLION = 3.0
HEADER = (
    "| sensors | method | first rows (s) | peak RSS (MiB) | RSS per sensor (B) | rows/s (double) | "
    "vs smallest fleet | worker CPU | rows per worker CPU-s |"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sensors", nargs="+", type=int, default=[10_000, 100_000, 1_000_000, 10_000_000])
    parser.add_argument("--methods", nargs="+", default=["bulk", "unnest"], choices=["bulk", "unnest"])
    parser.add_argument("--batch-size", default="20000")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--id-start", type=int, default=1)
    parser.add_argument("--processes", type=int, default=0, help="run Locust with --processes P (0: one process)")
    parser.add_argument("--warm-up", type=float, default=4.0, help="seconds after the first rows before counting")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of the counted window")
    args = parser.parse_args()

    print(machine())
    layout = f"--processes {args.processes}, unpinned" if args.processes else "one process on CPU 0"
    print(
        f"setup:    models/temperature.json, ids from {args.id_start}, --batch-size {args.batch_size}, "
        f"{args.users} users, {layout};"
    )
    print(f"          double --count-only on CPU 1; {args.warm_up:g} s warm-up, {args.seconds:g} s counted\n")
    print(HEADER)
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    smallest: dict[str, tuple[float, float]] = {}  # method -> (peak RSS MiB, rows/s) of the first fleet size
    with start_double() as double:
        for sensors in args.sensors:
            for method in args.methods:
                extra = ["--id-start", str(args.id_start), "--id-end", str(args.id_start + sensors - 1)]
                if args.processes:
                    extra += ["--processes", str(args.processes)]
                # Room for the start-up, so the run (-t) ends after the window, on its own, as a user's run does.
                allowance = START_UP_ALLOWANCE_S + START_UP_ALLOWANCE_S_PER_MILLION * sensors / 1e6
                command = locust_command(
                    url=double.url,
                    method=method,
                    batch_size=args.batch_size,
                    users=args.users,
                    run_seconds=allowance + args.warm_up + args.seconds + 2,
                    extra=tuple(extra),
                )
                window, output = timed_run(
                    f"{sensors:,}",
                    command,
                    double,
                    warm_up=args.warm_up,
                    seconds=args.seconds,
                    first_rows_timeout=allowance,
                    cpu=None if args.processes else 0,
                )
                peaks = window.peak_rss_mib
                if args.processes:
                    # the parent is the master; its children are the workers
                    workers = [mib for pid, mib in peaks.items() if pid != min(peaks)]
                    peak = max(workers)
                    rss = f"{peak:,.0f} (largest worker; all: {sum(peaks.values()):,.0f})"
                else:
                    peak = max(peaks.values())
                    rss = f"{peak:,.0f}"
                base_peak, base_rate = smallest.setdefault(method, (peak, window.rows_per_s))
                added = sensors - args.sensors[0]
                per_sensor = f"{(peak - base_peak) * 2**20 / added:,.0f}" if added > 0 else "-"
                cells = [
                    f"{sensors:,}",
                    method,
                    f"{window.first_rows_s:.1f}",
                    rss,
                    per_sensor,
                    f"{window.rows_per_s:,.0f}",
                    f"{window.rows_per_s / base_rate:.0%}" if base_rate else "-",
                    f"{window.generator_cpu:.0%}",
                    f"{window.rows_per_cpu_s:,.0f}",
                ]
                print("| " + " | ".join(cells) + " |", flush=True)
                if "Traceback" in output or window.summary_rows_per_s is None or not window.rows:
                    print(f"\n(the run printed a traceback, no summary or no rows in the window:)\n{output[-6000:]}\n")
        print(f"\n{count_checks(double)}")
    print(f"load at end: {load()}")


if __name__ == "__main__":
    main()
