"""Soak test: dg-locust against the CrateDB test double for 10 minutes while random faults come and go.

Not part of CI (it takes the whole duration). It starts the double (``tests/cratedb_double.py``) with a modest
capacity, runs the Locust CLI headless against it, and every ``--phase-s`` seconds switches between a calm phase and
a phase with one or two random faults: HTTP 503 (codes 5031-5035), bare 429, circuit-breaker 500s, resets before
and in the middle of a response, per-row rejections, responses slower than ``--timeout``, and the node being killed
and restarted. At the end it checks what must hold however the faults fell:

- every row generated is counted once: generated == inserted + failed + in doubt (the ``dg outcomes`` line);
- Locust saw the same rows: the JSON report's total content length == inserted;
- the table holds at least the rows acknowledged and at most those plus the rows in doubt, with no duplicate
  (sensor_id, ts): nothing was re-sent;
- the Locust process's memory is flat: RSS at the end is within ``--rss-tolerance`` of RSS after the warm-up.

Run: ``python bench/soak.py`` (defaults: 10 minutes, 8 users, seed 7); ``--minutes 1`` for a quick look. It prints a
JSON result and a Markdown block for ``bench/RESULTS.md``, and exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR / "tests"))

from cratedb_double import DoubleProcess, count_rows, duplicate_keys  # noqa: E402
from support import clean_environment, locust_command  # noqa: E402

TABLE = "doc.temperature"
SUMMARY = re.compile(r"^dg summary: inserted=(\d+) failed=(\d+) in_doubt=(\d+) rows_per_s=([\d.]+)", re.M)
OUTCOMES = re.compile(r"^dg outcomes: batches=(\d+) generated=(\d+) retries=(\d+)", re.M)
WARM_UP_S = 60.0  # pools, batch size and numpy buffers settle in the first minute; RSS is compared from then on


def random_faults(rng: random.Random, timeout_s: float) -> dict[str, dict]:
    """One or two faults at rates that hurt without stopping all progress."""
    menu = {
        "http_503": lambda: {"rate": 0.3, "code": rng.randint(5031, 5035)},
        "http_429_empty": lambda: {"rate": 0.3},
        "circuit_breaker": lambda: {"rate": 0.2},
        "reset_before_response": lambda: {"rate": 0.1, "store": rng.random() < 0.5},
        "reset_mid_response": lambda: {"rate": 0.1},
        "row_rejections": lambda: {"rate": 0.5, "fraction": 0.05},
        "slow": lambda: {"rate": 0.05, "seconds": timeout_s + 1},
    }
    kinds = rng.sample(sorted(menu), k=rng.choice((1, 1, 2)))
    return {kind: menu[kind]() for kind in kinds}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7, help="seed of the fault schedule and of the double")
    parser.add_argument("--phase-s", type=float, default=20.0, help="length of each calm or faulty phase")
    parser.add_argument("--timeout", type=float, default=2.0, help="dg-locust --timeout (slow faults exceed it)")
    parser.add_argument("--per-row-us", type=float, default=60.0, help="the double's cost per row (its capacity)")
    parser.add_argument("--max-concurrency", type=int, default=2, help="requests the double serves at once")
    parser.add_argument("--rss-tolerance", type=float, default=0.15, help="allowed RSS growth after the warm-up")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the database and reports go")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="dg_soak_"))
    work.mkdir(parents=True, exist_ok=True)
    duration_s = args.minutes * 60
    double = DoubleProcess(
        work / "crate.sqlite",
        seed=args.seed,
        per_row_us=args.per_row_us,
        max_concurrency=args.max_concurrency,
    ).start()
    command = locust_command(
        "--headless", "-u", str(args.users), "-r", str(args.users), "-t", f"{int(duration_s)}s", "-H", double.url,
        "--timeout", str(args.timeout), "--exit-code-on-error", "0", "--prometheus-port", "0",
        "--json-file", str(work / "report"), "--seed", str(args.seed),
    )  # fmt: skip
    environment = clean_environment()
    started = time.monotonic()
    with open(work / "locust.out", "w") as out, open(work / "locust.err", "w") as err:
        locust = subprocess.Popen(command, cwd=work, env=environment, stdout=out, stderr=err)
    process = psutil.Process(locust.pid)
    rss: list[tuple[float, int]] = []
    phases: list[dict] = []
    restarts = 0
    next_phase = args.phase_s
    faulty = False
    try:
        while locust.poll() is None:
            now = time.monotonic() - started
            try:
                rss.append((now, process.memory_info().rss))
            except psutil.NoSuchProcess:
                break
            if now >= next_phase and now < duration_s - args.phase_s:
                next_phase += args.phase_s
                faulty = not faulty
                if faulty and rng.random() < 0.2:
                    outage = rng.uniform(2.0, 5.0)
                    phases.append({"at_s": round(now, 1), "fault": "restart", "outage_s": round(outage, 1)})
                    double.stop()
                    time.sleep(outage)
                    double.start()
                    restarts += 1
                elif faulty:
                    faults = random_faults(rng, args.timeout)
                    phases.append({"at_s": round(now, 1), "faults": faults})
                    double.configure(clear_faults=True, **faults)
                else:
                    phases.append({"at_s": round(now, 1), "faults": {}})
                    double.configure(clear_faults=True)
            time.sleep(1.0)
        locust.wait(timeout=duration_s + 120)
    finally:
        if locust.poll() is None:
            locust.kill()
        double.stop()
    elapsed = time.monotonic() - started
    result = check(args, work, locust.returncode, rss, phases, restarts, elapsed, double.db_path)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print(markdown(args, result))
    return 0 if result["ok"] else 1


def check(args, work: Path, exit_code: int, rss, phases, restarts: int, elapsed: float, db_path: str) -> dict:
    stdout = (work / "locust.out").read_text()
    stderr = (work / "locust.err").read_text()
    summary, outcomes = SUMMARY.search(stdout), OUTCOMES.search(stdout)
    report_file = work / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else []
    stored = count_rows(db_path, TABLE)
    duplicates = duplicate_keys(db_path, TABLE, ["sensor_id", "ts"])
    result: dict = {
        "exit_code": exit_code,
        "elapsed_s": round(elapsed, 1),
        "fault_phases": sum(1 for p in phases if p.get("faults") or p.get("fault")),
        "restarts": restarts,
        "stored": stored,
        "duplicates": duplicates,
        "tracebacks": stderr.count("Traceback"),
        "error_lines": sum(1 for line in stderr.splitlines() if "/ERROR/" in line),
    }
    problems = []
    if summary is None or outcomes is None:
        problems.append("no dg summary / dg outcomes line")
    else:
        inserted, failed, in_doubt = (int(x) for x in summary.groups()[:3])
        batches, generated, retries = (int(x) for x in outcomes.groups())
        reported = sum(entry["total_content_length"] for entry in report)
        result.update(
            inserted=inserted,
            failed=failed,
            in_doubt=in_doubt,
            rows_per_s=float(summary.group(4)),
            batches=batches,
            generated=generated,
            retries=retries,
            locust_reported_rows=reported,
            requests=sum(entry["num_requests"] for entry in report),
            failed_requests=sum(entry["num_failures"] for entry in report),
        )
        if generated != inserted + failed + in_doubt:
            problems.append("generated != inserted + failed + in_doubt")
        if reported != inserted:
            problems.append("Locust's rows != inserted")
        if not inserted <= stored <= inserted + in_doubt:
            problems.append("stored rows outside [inserted, inserted + in_doubt]")
    if duplicates:
        problems.append(f"{duplicates} duplicate (sensor_id, ts)")
    if exit_code != 0:
        problems.append(f"exit code {exit_code}")
    if result["tracebacks"]:
        problems.append("traceback in the log")
    after_warm_up = [value for at, value in rss if at >= WARM_UP_S] or [value for _, value in rss]
    if after_warm_up:
        start, peak, end = after_warm_up[0], max(value for _, value in rss), after_warm_up[-1]
        result.update(
            rss_10s_mb=round(next((v for at, v in rss if at >= 10), rss[-1][1]) / 2**20, 1),
            rss_start_mb=round(start / 2**20, 1),
            rss_peak_mb=round(peak / 2**20, 1),
            rss_end_mb=round(end / 2**20, 1),
        )
        if end > start * (1 + args.rss_tolerance):
            problems.append(f"RSS grew from {start / 2**20:.0f} MB to {end / 2**20:.0f} MB after the warm-up")
    result["phases"] = phases
    result["problems"] = problems
    result["ok"] = not problems
    return result


def markdown(args, result: dict) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [
        f"- Machine: {psutil.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GB RAM, "
        f"Python {platform.python_version()}; date {datetime.now(timezone.utc):%Y-%m-%d}.",
        f"- Command: `python bench/soak.py --minutes {args.minutes:g} --users {args.users} --seed {args.seed} "
        f"--phase-s {args.phase_s:g} --timeout {args.timeout:g} --per-row-us {args.per_row_us:g} "
        f"--max-concurrency {args.max_concurrency}`.",
        f"- {result['elapsed_s']:.0f} s, {result['fault_phases']} fault phases of {args.phase_s:g} s "
        f"(of them {result['restarts']} node kill + restart), exit code {result['exit_code']}.",
    ]
    if "inserted" in result:
        lines += [
            f"- Rows: generated {result['generated']:,} = inserted {result['inserted']:,} + failed "
            f"{result['failed']:,} + in doubt {result['in_doubt']:,}; stored {result['stored']:,}; "
            f"duplicates {result['duplicates']}; Locust's rows {result['locust_reported_rows']:,}.",
            f"- Batches {result['batches']:,}, retries (429/503) {result['retries']:,}; "
            f"{result['rows_per_s']:,.0f} rows/s over the run.",
        ]
    if "rss_start_mb" in result:
        lines.append(
            f"- Locust RSS: {result['rss_10s_mb']} MB at 10 s, {result['rss_start_mb']} MB after the "
            f"{WARM_UP_S:.0f} s warm-up, peak {result['rss_peak_mb']} MB, end {result['rss_end_mb']} MB."
        )
    lines.append(f"- Checks: {'all passed' if result['ok'] else '; '.join(result['problems'])}.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
