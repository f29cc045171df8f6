"""The adaptive sizer on noisy simulated servers, over many seeds: what tests/test_sizer.py asserts, as figures.

No Locust and no database: the real `BatchSizer` on a fake clock against the simulated servers of
tests/test_sizer.py (8 users), with the whole cluster's speed varying +-30 % from one window to the next
(`NoisyCluster`, as on a real node with refreshes and merges). Per server it runs ``--seeds`` seeded runs of
``--windows`` windows and prints, over the windows after ``--skip``:

* rows/s: acknowledged rows/s as a share of the server's best (mean and worst run);
* in band: runs whose best size stayed within 0.8x-1.5x of the optimum (for the plateau: of where it begins);
* median size: the median over runs of each run's median best size, as a multiple of the optimum, and the worst;
* changes: the most times one run's best size changed.

From the repository root (about a minute per 32 seeds and server):

    python bench/sizer_noise.py
    python bench/sizer_noise.py --seeds 64 --windows 300
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "tests"))

from harness import cpu_model, load  # noqa: E402
from sizer import code_version  # noqa: E402
from test_sizer import (  # noqa: E402
    FakeClock,
    NoisyCluster,
    PlateauServer,
    Server,
    changes,
    efficiency,
    knee_for,
    new_sizer,
    plateau_start,
    simulate,
    true_optimum,
)


def servers() -> list[tuple[str, Server | PlateauServer, int, float]]:
    """(name, server, optimum size, best rows/s) for every server measured."""
    plateau = PlateauServer()
    start = plateau_start(plateau)
    found: list[tuple[str, Server | PlateauServer, int, float]] = [
        (f"plateau (300k rows/s from {start} rows on)", plateau, start, plateau.cap)
    ]
    for optimum in (2_000, 10_000, 40_000):
        server = Server(knee=knee_for(optimum), noise=0.1)
        found.append((f"one optimum at {optimum} rows", server, *true_optimum(server)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--windows", type=int, default=300, help="windows per run")
    parser.add_argument("--skip", type=int, default=50, help="windows of the search not counted")
    args = parser.parse_args()
    if not 0 < args.skip < args.windows or args.seeds < 1:
        parser.error("need --seeds >= 1 and 0 < --skip < --windows")
    print(f"cpu: {cpu_model()}, load average {load()}; code: {code_version()}")
    print(f"{args.seeds} seeds x {args.windows} windows, the first {args.skip} not counted; +-30 % noise\n")
    print("| server | rows/s, mean | rows/s, worst run | in band | median size | worst median size | changes |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, base, optimum, best_rate in servers():
        shares, in_band, medians, most_changes = [], 0, [], 0
        for seed in range(args.seeds):
            clock = FakeClock()
            server = NoisyCluster(base, clock, seed=seed)
            trace = simulate(new_sizer(clock), clock, server, rng=random.Random(seed), windows=args.windows)
            held = [s.best_size for s in trace.windows[args.skip :]]
            shares.append(efficiency(trace, args.skip, best_rate))
            in_band += all(0.8 * optimum <= size <= 1.5 * optimum for size in held)
            medians.append(statistics.median(held) / optimum)
            most_changes = max(most_changes, changes(held))
        print(
            f"| {name} | {statistics.fmean(shares):.1%} | {min(shares):.1%} | {in_band}/{args.seeds} "
            f"| {statistics.median(medians):.2f}x | {max(medians, key=lambda m: abs(m - 1)):.2f}x | {most_changes} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
