"""Side by side: dg-locust and tsperf 1.2.1 against the same counting double, same model, same machine, same run.

The script creates a throw-away virtual environment (``--venv``, by default under /tmp) and installs
``tsperf==1.2.1`` into it, starts ``tests/cratedb_double.py --count-only`` on CPU 1, and then, round after round,
runs on CPU 0: dg-locust with ``--insert-method unnest`` and ``bulk`` (one worker process, fixed batch size) and
tsperf (``tsperf write --adapter cratedb --ingest-mode fast --ingest-size 0``, endless, with its default two insert
threads and its adaptive batch size, and once more with the same fixed batch size as ours). Every run is counted
by the double over the same window after the same warm-up. Alternating the tools round by round keeps a noisy
neighbour from favouring one of them. The ratio printed is ours / best tsperf run, in rows per second and in rows
per CPU-second of the generator process.

Both use ``models/temperature.json`` (it is tsperf's own fridge schema format) and ids 1-500.

Two textual changes to tsperf, made by a wrapper in the throw-away environment, because the double does not
implement them: its CREATE TABLE has an ``OBJECT(DYNAMIC)`` payload column (the wrapper creates ``ts``,
``payload TEXT`` instead; the double does not check payload values when counting), and its INSERT says
``SELECT col1, col2 FROM UNNEST(?,?)``, sent here as the equivalent ``SELECT * FROM UNNEST(?,?)``. Its data
generation, JSON encoding, client and threads are untouched. Its payload objects cannot be counted from the bytes,
so the double parses those bodies fully (about 0.8M rows/s, far above what tsperf sends). Run:

    python bench/vs_tsperf.py                 # 2 rounds, 20k-row batches
    python bench/vs_tsperf.py --rounds 3 --seconds 20
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # dg_locust, for its packaged models

from harness import (
    Window,
    count_checks,
    load,
    machine,
    run_ours,
    start_double,
    table_row,
    timed_run,
)  # noqa: E402

from dg_locust.model import MODELS_DIR  # noqa: E402

TSPERF = "tsperf==1.2.1"
WRAPPER = '''"""tsperf's CLI, with its CrateDB DDL and INSERT text changed to what the test double understands."""
import sys

from tsperf.adapter.cratedb import CrateDbAdapter
from tsperf.cli import main
from tsperf.util.tictrack import timed_function


def prepare_database(self):
    self.cursor.execute(f'CREATE TABLE IF NOT EXISTS {self.table_name} ("ts" TIMESTAMP WITH TIME ZONE, "payload" TEXT)')


@timed_function()
def insert_stmt(self, timestamps, batch):
    stmt = f"INSERT INTO {self.table_name} (ts, payload) (SELECT * FROM UNNEST(?,?))"
    self.cursor.execute(stmt, (timestamps, batch))


CrateDbAdapter.prepare_database = prepare_database
CrateDbAdapter.insert_stmt = insert_stmt
sys.exit(main())
'''


def ensure_tsperf(venv: Path) -> Path:
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('tsperf'))"]
    if not python.exists() or subprocess.run(probe, capture_output=True, text=True).stdout.strip() != "1.2.1":
        print(f"creating {venv} with {TSPERF} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", TSPERF], check=True)
    wrapper = venv / "tsperf_on_double.py"
    wrapper.write_text(WRAPPER)
    return wrapper


def run_tsperf(double, wrapper: Path, batch_size: int | None, *, warm_up: float, seconds: float) -> Window:
    command = [str(wrapper.parent / "bin" / "python"), str(wrapper), "write", "--adapter", "cratedb"]
    command += ["--address", f"127.0.0.1:{double.port}", "--schema", str(MODELS_DIR / "temperature.json")]
    command += ["--id-start", "1", "--id-end", "500", "--ingest-mode", "fast", "--ingest-size", "0"]
    command += ["--table", "tsperf_temperature"]  # its own table: dg-locust's has typed columns, no payload
    if batch_size:
        command += ["--batch-size", str(batch_size)]
    label = f"tsperf 1.2.1 unnest {batch_size or 'auto'}"
    window, output = timed_run(label, command, double, warm_up=warm_up, seconds=seconds, stop=True, cwd="/tmp")
    if "Traceback" in output and window.rows == 0:
        raise RuntimeError(f"tsperf failed:\n{output[-3000:]}")
    return window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=Path("/tmp/dg-bench-tsperf-venv"))
    parser.add_argument("--batch-size", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--warm-up", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    wrapper = ensure_tsperf(args.venv)
    print(machine())
    print("setup:    models/temperature.json, ids 1-500; each tool on CPU 0, double --count-only on CPU 1;")
    print(f"          {args.warm_up:g} s warm-up, {args.seconds:g} s counted; dg-locust {args.users} users\n")
    print("| run | round | rows/s (double, window) | rows/s (dg summary) | CPU | rows per CPU-s | double CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    best: dict[str, float] = {}
    best_per_cpu: dict[str, float] = {}
    timing = {"warm_up": args.warm_up, "seconds": args.seconds}
    with start_double() as double:
        for round_no in range(1, args.rounds + 1):
            windows = [
                run_ours(double, "unnest", args.batch_size, users=args.users, **timing),
                run_tsperf(double, wrapper, None, **timing),
                run_ours(double, "bulk", args.batch_size, users=args.users, **timing),
                run_tsperf(double, wrapper, args.batch_size, **timing),
            ]
            for window in windows:
                print(table_row(window, str(round_no)), flush=True)
                key = "tsperf" if window.label.startswith("tsperf") else window.label
                best[key] = max(best.get(key, 0.0), window.rows_per_s)
                best_per_cpu[key] = max(best_per_cpu.get(key, 0.0), window.rows_per_cpu_s)
        checks = count_checks(double)
    tsperf = best["tsperf"]
    print()
    for label in (f"dg-locust unnest {args.batch_size}", f"dg-locust bulk {args.batch_size}"):
        print(f"{label}: best {best[label]:,.0f} rows/s = {best[label] / tsperf:.1f}x tsperf's best {tsperf:,.0f}")
        per_cpu = best_per_cpu[label] / best_per_cpu["tsperf"]
        print(f"    per CPU-second of the generator: {per_cpu:.1f}x (tsperf's threads may get more of a busy core)")
    print(checks)
    print(f"load at end: {load()}")


if __name__ == "__main__":
    main()
