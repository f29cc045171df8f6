"""A fleet of a million sensors in one dg-locust process: rows arrive, and the process stays under 1 GiB of RSS.

The peak is the kernel's own count for the finished child (``ru_maxrss`` from ``wait4``), so it covers the whole
run, start-up and stop included, and does not depend on how fast the machine is.
"""

import locust  # noqa: F401

import os
import subprocess

from cratedb_double import DoubleProcess
from support import SUMMARY, clean_environment, locust_command

SENSORS = 1_000_000
PEAK_RSS_LIMIT = 2**30


def run_with_peak_rss(command: list[str], cwd, timeout: float) -> tuple[int, str, int]:
    """Run ``command``; its exit code, its output and its peak RSS in bytes."""
    environment = clean_environment()
    log = cwd / "locust.log"
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=environment, stdout=out, stderr=subprocess.STDOUT)
        try:
            # wait4 instead of proc.wait(): the same wait, and the kernel's resource usage of this child
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        except BaseException:
            proc.kill()
            proc.wait(timeout)
            raise
    return proc.returncode, log.read_text(errors="replace"), usage.ru_maxrss * 1024  # Linux reports kB


def test_a_million_sensors_send_rows_in_under_a_gib(tmp_path):
    with DoubleProcess(count_only=True) as double:
        command = locust_command("--headless")
        command += ["-u", "4", "-r", "4", "-t", "8s", "-H", double.url, "--prometheus-port", "0"]
        command += ["--id-end", str(SENSORS), "--batch-size", "20000", "--seed", "3"]
        code, output, peak = run_with_peak_rss(command, tmp_path, timeout=60)
        counted = double.stats()["rows_counted_total"]

    assert code == 0, output[-3000:]
    summary = SUMMARY.findall(output)
    assert summary, output[-3000:]
    inserted = int(summary[-1][0])
    assert inserted > 0
    assert counted == inserted
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB with {SENSORS:,} sensors"
