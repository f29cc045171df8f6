"""Benchmark of the sensor-fleet generator alone: rows per second on one core for every shipped model.

A row is one sensor at one step with all of its fields. For each model and batch size a 500-sensor Fleet is
advanced batch after batch for about a second (after one warm-up batch), and the best of three such runs is
reported, with the machine it ran on. The process is pinned to one CPU where the OS allows it, so the figure is
per core. Run from the repository root:

    python bench/generator.py
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import cpu_model  # noqa: E402

from dg_locust.generator import Fleet  # noqa: E402
from dg_locust.model import MODELS_DIR, load_model  # noqa: E402


def rows_per_second(fleet: Fleet, steps: int, seconds: float) -> float:
    fleet.next_steps(steps)
    best = 0.0
    for _ in range(3):
        batches = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 3:
            fleet.next_steps(steps)
            batches += 1
        best = max(best, batches * steps * fleet.size / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sensors", type=int, default=500)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 25_000, 50_000], help="rows per batch")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = parser.parse_args()

    pinned = ""
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        pinned = f", pinned to CPU {cpu}"
    print(f"date:   {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"cpu:    {cpu_model()} ({os.cpu_count()} logical CPUs{pinned})")
    print(f"python: {platform.python_version()}, numpy {np.__version__}, {platform.platform()}")
    print(f"fleet:  {args.sensors} sensors, seed 1\n")
    print(f"{'model':<14} {'fields':>7} {'rows/batch':>11} {'steps/batch':>12} {'rows/s per core':>16}")
    for path in sorted(MODELS_DIR.glob("*.json")):
        model = load_model(path)
        for rows in args.rows:
            steps = max(1, rows // args.sensors)
            fleet = Fleet(model, np.arange(1, args.sensors + 1), seed=1)
            rate = rows_per_second(fleet, steps, args.seconds)
            print(f"{path.stem:<14} {len(model.fields):>7} {steps * args.sensors:>11,} {steps:>12} {rate:>16,.0f}")


if __name__ == "__main__":
    main()
