"""Memory of one Locust worker process over a long run: RSS at start, after warm-up, at its peak and at the end.

dg-locust runs headless as one process (pinned to CPU 0) for ``--minutes`` against the counting test double
(``--count-only``, CPU 1), and its resident set size is sampled every second with psutil. The target is a flat line:
the RSS at the end within 10% of the RSS after the warm-up. Run from the repository root:

    python bench/memory.py                                   # 5 minutes, bulk, adaptive batch size
    python bench/memory.py --method unnest --batch-size 20000 --minutes 1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import GENERATOR_CPU, SUMMARY, counted, load, locust_command, machine, pin, start_double  # noqa: E402

TOLERANCE = 0.10


def batch_size(samples: list, at: tuple) -> float:
    """Rows per insert request over the 10 s before the sample ``at``."""
    before = next((s for s in reversed(samples) if s[0] <= at[0] - 10), samples[0])
    requests = at[3] - before[3]
    return (at[2] - before[2]) / requests if requests else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--warm-up", type=float, default=60.0, help="seconds after the first rows")
    parser.add_argument("--method", default="bulk", choices=["bulk", "unnest"])
    parser.add_argument("--batch-size", default="auto")
    parser.add_argument("--users", type=int, default=8)
    args = parser.parse_args()

    print(machine())
    print(
        f"setup:    {args.minutes:g} min, {args.method}, batch size {args.batch_size}, {args.users} users, "
        "models/temperature.json with 500 sensors; worker on CPU 0, double --count-only on CPU 1\n"
    )
    run_s = args.minutes * 60
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    # (seconds since first rows, RSS MiB, rows counted, insert requests): rows per request between two samples is
    # the batch size the worker used, which an adaptive run keeps changing (and RSS follows the size of the bodies)
    samples: list[tuple[float, float, int, int]] = []
    with start_double() as double:
        command = locust_command(
            url=double.url, method=args.method, batch_size=args.batch_size, users=args.users, run_seconds=run_s
        )
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        try:
            pin(proc.pid, GENERATOR_CPU)
            worker = psutil.Process(proc.pid)
            start_rss = worker.memory_info().rss / 2**20
            while counted(double) == 0:
                if proc.poll() is not None:
                    raise RuntimeError(proc.stdout.read()[-3000:])
                start_rss = worker.memory_info().rss / 2**20
                time.sleep(0.05)
            pin(proc.pid, GENERATOR_CPU)
            began = time.monotonic()
            while proc.poll() is None:
                try:
                    rss = worker.memory_info().rss / 2**20
                except psutil.NoSuchProcess:
                    break
                stats = double.stats()
                samples.append((time.monotonic() - began, rss, stats["rows_counted_total"], stats["insert_requests"]))
                time.sleep(1.0)
            output = proc.communicate(timeout=120)[0]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    running = [s for s in samples if s[0] <= run_s - 2]  # the last seconds are the stop, not the steady state
    warm = next(s for s in running if s[0] >= args.warm_up)
    peak = max(running, key=lambda s: s[1])
    end = running[-1]
    rows_per_s = (end[2] - warm[2]) / (end[0] - warm[0])
    drift = (end[1] - warm[1]) / warm[1]
    summary = SUMMARY.findall(output)
    print("| point | seconds after first rows | RSS (MiB) | rows per request, last 10 s |")
    print("|---|---:|---:|---:|")
    print(f"| start (process loaded, no rows yet) | 0 | {start_rss:.1f} | - |")
    for label, sample in (("after warm-up", warm), ("peak", peak), ("end", end)):
        print(f"| {label} | {sample[0]:.0f} | {sample[1]:.1f} | {batch_size(running, sample):,.0f} |")
    after = [s[1] for s in running if s[0] >= args.warm_up]
    print(f"\nafter warm-up: min {min(after):.1f} MiB, max {max(after):.1f} MiB over {len(after)} samples")
    print(f"rows/s after warm-up (double): {rows_per_s:,.0f}; dg summary: {summary[-1][3] if summary else '-'}")
    verdict = "flat" if abs(drift) <= TOLERANCE else "NOT flat"
    print(f"end vs after warm-up: {drift:+.1%} ({verdict}: target within {TOLERANCE:.0%}); load at end: {load()}")


if __name__ == "__main__":
    main()
