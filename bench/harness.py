"""Shared pieces of the end-to-end benchmarks: the machine, the counting double, and timed load-generator runs.

Every load generator runs on CPU 0 and the test double in count-only mode on CPU 1 (when there are two), so the
generator has one whole core and the figure is "rows per second of one worker process". Rows are counted by the
double (``/_double/stats``, rows it received and acknowledged) over a window that starts after a warm-up, so
start-up, imports and the first batches do not dilute the figure. The CPU time each process used in the window is
recorded too: a generator at ~100% of its core is the bottleneck; a double near 100% would mean the figure is the
double's limit, not ours. On a shared machine the generator may get less than its core; rows per second of its own
CPU time (rows / CPU seconds used) shows what one whole core would do, as long as it never waits for the double.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR / "tests"))

from cratedb_double import DoubleProcess  # noqa: E402
from support import locust_command as dg_locust_command  # noqa: E402

SUMMARY = re.compile(r"^dg summary: inserted=(\d+) failed=(\d+) in_doubt=(\d+) rows_per_s=([\d.]+)", re.M)
GENERATOR_CPU = 0
DOUBLE_CPU = 1


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine() -> str:
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("locust", "numpy", "orjson", "gevent")
    )
    return "\n".join(
        [
            f"date:     {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"cpu:      {cpu_model()}, {os.cpu_count()} logical CPUs",
            f"software: Python {platform.python_version()}, {versions}; {platform.platform()}",
            f"load:     {load()} (1, 5, 15 min load average at start; the machine is shared with other engineers)",
        ]
    )


def pin(pid: int, cpu: int) -> None:
    """Pin a process (and its threads) to one CPU, if the machine has it."""
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), {cpu})


def start_double() -> DoubleProcess:
    double = DoubleProcess(count_only=True).start()
    pin(double.proc.pid, DOUBLE_CPU)
    return double


def counted(double: DoubleProcess) -> int:
    return int(double.stats()["rows_counted_total"])


def count_checks(double: DoubleProcess) -> str:
    """How the double's byte-level counts were checked: requests also parsed in full, and disagreements."""
    stats = double.stats()
    return (
        f"double: {stats['insert_requests']:,} insert requests, {stats['count_checks']:,} of them also fully parsed "
        f"to check the byte count, {stats['count_mismatches']} mismatches, {stats['count_fallbacks']:,} counted by "
        f"full parse (not countable from bytes)"
    )


@dataclass
class Window:
    """What one timed run measured."""

    label: str
    rows: int = 0  # rows the double counted in the window
    seconds: float = 0.0
    generator_cpu: float = 0.0  # share of one core the generator process used in the window
    double_cpu: float = 0.0
    summary_rows_per_s: float | None = None  # dg-locust's own summary line, over its whole run
    rss_mb: list[float] = field(default_factory=list)
    note: str = ""
    first_rows_s: float = 0.0  # from starting the command to the first rows the double counted
    peak_rss_mib: dict[int, float] = field(default_factory=dict)  # pid -> peak RSS, of the process and its children

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def rows_per_cpu_s(self) -> float:
        """Rows per second of the generator's own CPU time: what it costs, whatever share of the core it got."""
        return self.rows / (self.generator_cpu * self.seconds) if self.generator_cpu else 0.0


def peak_rss_mib(process: psutil.Process) -> dict[int, float]:
    """The peak resident set size (the kernel's high-water mark, VmHWM) of a process and each of its children."""
    peaks = {}
    for proc in [process, *process.children(recursive=True)]:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            continue
        found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        if found:
            peaks[proc.pid] = int(found.group(1)) / 1024
    return peaks


def cpu_seconds(process: psutil.Process) -> float:
    total = 0.0
    for proc in [process, *process.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def timed_run(
    label: str,
    command: list[str],
    double: DoubleProcess,
    *,
    warm_up: float,
    seconds: float,
    env: dict | None = None,
    cwd: str | None = None,
    stop: bool = False,
    first_rows_timeout: float = 60,
    cpu: int | None = GENERATOR_CPU,
) -> tuple[Window, str]:
    """Start ``command`` on the generator CPU, wait for its first rows plus ``warm_up`` seconds, count the rows of
    the next ``seconds``, then wait for it to end (or stop it with SIGINT when ``stop``). Returns the window (with
    the time to the first rows and the peak RSS up to the end of the window) and the process output. ``cpu=None``
    leaves the process unpinned (a ``--processes`` run, whose children pinning would not reach)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    environment.update(env or {})
    log = Path(f"/tmp/dg-bench-{os.getpid()}-{time.monotonic_ns()}.log")
    with log.open("wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environment, cwd=cwd)
        window = Window(label)
        try:
            if cpu is not None:
                pin(proc.pid, cpu)
            generator = psutil.Process(proc.pid)
            server = psutil.Process(double.proc.pid)
            baseline = counted(double)
            deadline = time.monotonic() + first_rows_timeout
            while counted(double) == baseline:  # not loaded or not sending yet
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{label}: no rows arrived; output:\n{log.read_text()[-3000:]}")
                time.sleep(0.05)
            window.first_rows_s = time.monotonic() - started
            if cpu is not None:
                pin(proc.pid, cpu)  # threads started since
            time.sleep(warm_up)
            rows0, t0, g0, s0 = counted(double), time.monotonic(), cpu_seconds(generator), cpu_seconds(server)
            time.sleep(seconds)
            rows1, t1, g1, s1 = counted(double), time.monotonic(), cpu_seconds(generator), cpu_seconds(server)
            window.rows, window.seconds = rows1 - rows0, t1 - t0
            window.generator_cpu, window.double_cpu = (g1 - g0) / (t1 - t0), (s1 - s0) / (t1 - t0)
            window.peak_rss_mib = peak_rss_mib(generator)
            if stop:
                proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    output = log.read_text(errors="replace")
    log.unlink()
    found = SUMMARY.findall(output)
    if found:
        window.summary_rows_per_s = float(found[-1][3])
    return window, output


def locust_command(
    *, url: str, method: str, batch_size: int | str, users: int, run_seconds: float, extra: tuple = ()
) -> list[str]:
    return dg_locust_command(
        "--headless",
        "--only-summary",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{run_seconds:.0f}s",
        "-H",
        url,
        "--batch-size",
        str(batch_size),
        "--insert-method",
        method,
        "--prometheus-port",
        "0",
        *extra,
    )


def run_ours(
    double: DoubleProcess, method: str, batch_size: int | str, *, users: int, warm_up: float, seconds: float
) -> Window:
    command = locust_command(
        url=double.url, method=method, batch_size=batch_size, users=users, run_seconds=warm_up + seconds + 4
    )
    window, output = timed_run(f"dg-locust {method} {batch_size}", command, double, warm_up=warm_up, seconds=seconds)
    if window.summary_rows_per_s is None:
        raise RuntimeError(f"no summary line from dg-locust; output:\n{output[-3000:]}")
    return window


def table_row(window: Window, *extra: str) -> str:
    summary = f"{window.summary_rows_per_s:,.0f}" if window.summary_rows_per_s is not None else "-"
    cells = [
        window.label,
        *extra,
        f"{window.rows_per_s:,.0f}",
        summary,
        f"{window.generator_cpu:.0%}",
        f"{window.rows_per_cpu_s:,.0f}",
        f"{window.double_cpu:.0%}",
    ]
    return "| " + " | ".join(cells) + " |"
