"""End-to-end benchmark: one Locust worker process against the counting test double, rows per second.

For each insert method and batch size, dg-locust runs headless as one process (a local runner is one process:
generation, encoding, HTTP and accounting all share one core) with a fixed number of users and a fixed
``--batch-size``, pinned to CPU 0, against ``tests/cratedb_double.py --count-only`` pinned to CPU 1. The double
counts rows from the request bytes (and fully parses one request in 100 to check the count). The figure is the
rows the double counted over ``--seconds`` after ``--warm-up``; dg-locust's own summary line (rows acknowledged
over its whole run, start-up included) is shown beside it. Run from the repository root:

    python bench/end_to_end.py                       # bulk and unnest, batches of 5k, 20k and 50k
    python bench/end_to_end.py --methods unnest --batch-sizes 20000 --repeat 3

It prints a Markdown table for ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import count_checks, load, machine, run_ours, start_double, table_row  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["bulk", "unnest"], choices=["bulk", "unnest"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[5_000, 20_000, 50_000])
    parser.add_argument("--users", type=int, default=8, help="Locust users in the one worker process")
    parser.add_argument("--warm-up", type=float, default=4.0, help="seconds after the first rows before counting")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the counted window")
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting (all are printed)")
    args = parser.parse_args()

    print(machine())
    print(f"setup:    fresh rows of models/temperature.json, 500 sensors, {args.users} users, one worker process")
    print(f"          on CPU 0, double --count-only on CPU 1; {args.warm_up:g} s warm-up, {args.seconds:g} s counted\n")
    print("| run | rows/s (double, window) | rows/s (dg summary) | worker CPU | rows per worker CPU-s | double CPU |")
    print("|---|---:|---:|---:|---:|---:|")
    with start_double() as double:
        for method in args.methods:
            for size in args.batch_sizes:
                for _ in range(args.repeat):
                    window = run_ours(
                        double, method, size, users=args.users, warm_up=args.warm_up, seconds=args.seconds
                    )
                    print(table_row(window), flush=True)
        print(f"\n{count_checks(double)}")
    print(f"load at end: {load()}")


if __name__ == "__main__":
    main()
