"""What the tests share to run dg-locust as a person would, and to read what it left behind.

- ``locust_command`` / ``clean_environment``: the one way to start ``python -m locust -f locustfile.py ...``;
- ``run_locust``: a run to its end, as a ``LocustResult`` (exit code, output, the ``--json-file`` report);
- ``LiveLocust``: a process that stays up (web UI, masters, workers), stopped with its whole process group;
- ``free_port`` / ``free_port_block`` / ``free_ports``: ports free on this host right now;
- ``get`` / ``get_json`` / ``post_form`` / ``scrape`` / ``sample_sum`` / ``wait_until``: reading what it serves.

The CrateDB test double is started with ``cratedb_double.DoubleProcess``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

PROJECT_DIR = Path(__file__).resolve().parent.parent
LOCUSTFILE = PROJECT_DIR / "locustfile.py"


def locust_command(*args: str) -> list[str]:
    """The command line that runs dg-locust's locustfile with ``args``."""
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args]


def clean_environment(extra: dict | None = None) -> dict[str, str]:
    """This process's environment without the LOCUST_* variables a developer may have set, plus ``extra``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    environment.update(extra or {})
    return environment


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


SUMMARY = re.compile(
    r"^dg summary: inserted=(\d+) failed=(\d+) in_doubt=(\d+) rows_per_s=([\d.]+) batch_size=(\d+)$", re.M
)


@dataclass
class LocustResult:
    exit_code: int
    stdout: str
    stderr: str
    report: list | None  # the --json-file report, one entry per request name

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def summary(self) -> dict[str, float]:
        found = SUMMARY.findall(self.stdout)
        assert len(found) == 1, f"expected exactly one summary line, got {found}\n{self.output[-3000:]}"
        inserted, failed, in_doubt, rows_per_s, batch_size = found[0]
        return {
            "inserted": int(inserted),
            "failed": int(failed),
            "in_doubt": int(in_doubt),
            "rows_per_s": float(rows_per_s),
            "batch_size": int(batch_size),
        }

    @property
    def reported_rows(self) -> int:
        """Rows Locust counted: the sum of ``total_content_length`` over the JSON report."""
        return sum(entry["total_content_length"] for entry in self.report or [])


def run_locust(args: list[str], tmp_path: Path, *, env: dict | None = None, timeout: float = 120) -> LocustResult:
    report_prefix = tmp_path / "report"
    command = locust_command("--json-file", str(report_prefix), "--prometheus-port", "0", *args)
    completed = subprocess.run(
        command, cwd=tmp_path, env=clean_environment(env), capture_output=True, text=True, timeout=timeout, check=False
    )
    report_file = report_prefix.with_suffix(".json")
    report = json.loads(report_file.read_text()) if report_file.exists() else None
    return LocustResult(completed.returncode, completed.stdout, completed.stderr, report)


def free_port_block(count: int, avoid: tuple[int, ...] = ()) -> int:
    """A port P such that P .. P + count - 1 are all free on this host right now and none is in ``avoid``."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        block = range(base, base + count)
        if base + count <= 65535 and not set(block) & set(avoid) and all(_is_free(port) for port in block):
            return base
    raise RuntimeError(f"no block of {count} free ports found")


def free_ports(block: int, singles: int) -> tuple[int, ...]:
    """A block of ``block`` consecutive free ports (its first port) and ``singles`` other free ports, all distinct."""
    base = free_port_block(block)
    taken = list(range(base, base + block))
    ports = [base]
    for _ in range(singles):
        port = free_port_block(1, avoid=tuple(taken))
        taken.append(port)
        ports.append(port)
    return tuple(ports)


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


class LiveLocust:
    """One dg-locust process running in the background."""

    def __init__(self, args: list[str], workdir: Path, name: str, env: dict | None = None):
        self.args = args
        self.workdir = workdir
        self.name = name
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.stdout_path = workdir / f"{name}.out"
        self.stderr_path = workdir / f"{name}.err"

    def start(self) -> LiveLocust:
        command = locust_command(*self.args)
        environment = clean_environment(self.env)
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            # A session of its own, so stop() can end the --processes children too, not only their parent.
            self.proc = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=environment,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    @property
    def output(self) -> str:
        stderr = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return self.stdout + stderr

    def wait_for_output(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.stdout, re.M)
            if found:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: no {pattern!r} in its output\n{self.output[-3000:]}")

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        code = self.proc.wait()
        self._signal_group(signal.SIGKILL)  # forked workers outlive a parent that was told to stop
        return code

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # the whole group has already exited
            os.killpg(self.proc.pid, signum)

    def __enter__(self) -> LiveLocust:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def get_json(url: str) -> dict:
    return json.loads(get(url))


def post_form(url: str, form: dict) -> dict:
    data = urllib.parse.urlencode(form).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"), timeout=10) as response:
        return json.loads(response.read())


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics page: (sample name, its labels) -> value."""
    text = get(url).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample_sum(samples: dict, name: str, **labels) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (sample, found), value in samples.items() if sample == name and wanted <= found)


def wait_until(check: Callable[[], object], timeout: float = 20, interval: float = 0.3):
    """Call ``check`` until it returns something truthy; return that, or the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)
