"""Where a Locust worker's CPU goes: py-spy samples of one worker process against the counting double.

dg-locust runs headless as one process (CPU 0) against ``tests/cratedb_double.py --count-only`` (CPU 1); after a
warm-up, py-spy samples it for ``--seconds`` and the samples are summed into the stages of a row's path (inclusive
time: a stage counts every sample with one of its functions on the stack) and the top functions by own time.
py-spy is a benchmark-only tool, not a requirement: ``pip install py-spy`` first. Run from the repository root:

    python bench/profile.py --method bulk --batch-size 20000
    python bench/profile.py --method unnest --batch-size 20000 --raw /tmp/unnest.txt   # keep the raw samples
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import GENERATOR_CPU, counted, load, locust_command, machine, pin, start_double  # noqa: E402

# Stage -> markers of a frame ("function (file:line)"); a sample belongs to the first stage one of its frames hits,
# checked from the innermost frame out, so "encode" inside "send_next_batch" counts as encode.
STAGES = {
    "generate (generator.py)": ("generator.py",),
    "feed take (feed.py)": ("feed.py",),
    "encode (batch.py)": ("batch.py:", "encode_"),
    "answer parse (client _classify)": ("_classify",),
    "HTTP send/receive (client, urllib3, http.client, sockets)": (
        "client.py",
        "urllib3",
        "http/client.py",
        "_socketcommon",
        "socket.py",
    ),
    "accounting (pipeline _account, ledger, Locust stats)": ("_account", "ledger.py", "stats.py", "event.py"),
    "pipeline other": ("pipeline.py",),
}


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for stage, markers in STAGES.items():
            if any(marker in frame for marker in markers):
                return stage
    if any("users.py" in frame or "task.py" in frame for frame in frames):
        return "Locust task loop"
    return "idle / gevent hub / other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="bulk", choices=["bulk", "unnest"])
    parser.add_argument("--batch-size", default="20000")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--warm-up", type=float, default=4.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw (collapsed stacks) output here")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        sys.exit("py-spy is not installed: pip install py-spy (for benchmarks only, not a requirement)")

    print(machine())
    print(
        f"setup:    {args.method}, batch {args.batch_size}, {args.users} users, one worker on CPU 0; "
        f"py-spy at {args.rate} samples/s"
    )
    raw = args.raw or Path(tempfile.mkstemp(suffix=".txt")[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    with start_double() as double:
        run_s = args.warm_up + args.seconds + 10
        command = locust_command(
            url=double.url, method=args.method, batch_size=args.batch_size, users=args.users, run_seconds=run_s
        )
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            pin(proc.pid, GENERATOR_CPU)
            while counted(double) == 0 and proc.poll() is None:
                time.sleep(0.05)
            pin(proc.pid, GENERATOR_CPU)
            time.sleep(args.warm_up)
            record = [py_spy, "record", "--pid", str(proc.pid), "--duration", f"{args.seconds:.0f}", "--rate"]
            record += [str(args.rate), "--format", "raw", "--output", str(raw), "--nonblocking"]
            subprocess.run(record, check=True, capture_output=True)
        finally:
            proc.kill()
            proc.wait()

    stages: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        total += int(count)
        stages[stage_of(frames)] += int(count)
        own[frames[-1].replace(str(Path(__file__).resolve().parent.parent) + "/", "")] += int(count)
    print(f"\n{total} samples; share of the worker's samples by stage (innermost matching frame):\n")
    print("| stage | share |")
    print("|---|---:|")
    for stage, count in stages.most_common():
        print(f"| {stage} | {count / total:.0%} |")
    print("\ntop functions by own time:")
    for frame, count in own.most_common(12):
        print(f"  {count / total:6.1%}  {frame}")
    print(f"\nload at end: {load()}")
    if not args.raw:
        raw.unlink()


if __name__ == "__main__":
    main()
