"""Benchmark of the row feed and the request-body encodings, in one process: nanoseconds of CPU per row.

For each shipped model (500 sensors) and each insert method it times, per batch of ``--rows`` rows:

- ``take``: the feed alone (generation and slicing, no encoding);
- ``spliced``: take + the encoding the load test uses (``Batch.encode``: bodies spliced from pre-encoded tags,
  per-step timestamps and orjson's output for the field arrays);
- ``reference``: take + building every column as an array and encoding with ``batch.encode_bulk`` /
  ``encode_unnest`` (tolist + zip + orjson for bulk, orjson on all columns for unnest).

Time is this thread's CPU time, and each figure is the best of ``--repeat`` short windows, because the machines
are shared: a busy neighbour still slows a window down (caches, memory bandwidth), never speeds it up. The
process pins itself to one CPU. Run from the repository root:

    python bench/encode.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generator import cpu_model  # noqa: E402
from dg_locust.batch import encode_bulk, encode_unnest  # noqa: E402
from dg_locust.feed import FeedPlan, RowFeed  # noqa: E402
from dg_locust.model import MODELS_DIR, load_model  # noqa: E402
from dg_locust.schema import table_for_model  # noqa: E402


def ns_per_row(feed: RowFeed, rows: int, work, seconds: float, repeat: int) -> float:
    work(feed.take(rows))
    best = float("inf")
    for _ in range(repeat):
        done = 0
        start = time.thread_time()
        while (elapsed := time.thread_time() - start) < seconds:
            batch = feed.take(rows)
            work(batch)
            done += batch.row_count
        best = min(best, elapsed / done * 1e9)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sensors", type=int, default=500)
    parser.add_argument("--rows", type=int, default=20_000, help="rows per batch")
    parser.add_argument("--seconds", type=float, default=0.4, help="length of one timing window")
    parser.add_argument("--repeat", type=int, default=7, help="windows per figure; the best one counts")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print(f"cpu: {cpu_model()}; {args.sensors} sensors, {args.rows:,} rows per batch, best of {args.repeat}")
    print(f"{'model':<12} {'method':<7} {'take':>8} {'spliced':>8} {'reference':>10} {'encode speed-up':>16}  (ns/row)")
    for path in sorted(MODELS_DIR.glob("*.json")):
        model = load_model(path)
        table = table_for_model(model, table_option="", partition="week", shards=4, replicas="0")
        for method in ("bulk", "unnest"):
            statement = table.insert_sql(method)
            reference = encode_unnest if method == "unnest" else encode_bulk
            plan = FeedPlan(np.arange(1, args.sensors + 1), 1.6e9, 0.5, "fast", 0, 1)
            feed = RowFeed(model, table, plan)
            take = ns_per_row(feed, args.rows, lambda batch: None, args.seconds, args.repeat)
            spliced = ns_per_row(
                feed, args.rows, lambda batch, m=method, s=statement: batch.encode(m, s), args.seconds, args.repeat
            )
            ref = ns_per_row(
                feed,
                args.rows,
                lambda batch, r=reference, s=statement: r(s, batch.columns),
                args.seconds,
                args.repeat,
            )
            speedup = (ref - take) / max(spliced - take, 1e-9)
            print(f"{path.stem:<12} {method:<7} {take:>8.0f} {spliced:>8.0f} {ref:>10.0f} {speedup:>15.1f}x")


if __name__ == "__main__":
    main()
