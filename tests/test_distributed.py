"""Distributed runs: a Locust master and worker processes on 127.0.0.1 against the CrateDB test double.

Each run checks what the double stored against what the master reported: every worker's rows lie in the sensors the
master granted it, the master's totals equal the rows stored, and no (sensor, ts) is stored twice, also when a worker
is killed and a new one takes over its sensors.
"""

import locust  # noqa: F401

import json
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from cratedb_double import DoubleProcess, count_rows, duplicate_keys, storage_table
from support import LocustResult, clean_environment, free_port, locust_command, run_locust

TABLE = "doc.temperature"
INGEST_TS_MS = 1_600_000_000_000
DELTA_MS = 500
BASE_ENV = {"INGEST_TS": str(INGEST_TS_MS // 1000)}
# Real-time pacing for the takeover tests: after a stall a worker has more steps due than its lease holds, so it
# sends right up to its lease limit at once, and a takeover that started any lower would store duplicates.
PACED_DELTA_MS = 250
PACED = {"INGEST_MODE": "consecutive", "INGEST_DELTA": str(PACED_DELTA_MS / 1000)}
TAKES = re.compile(r"worker (\d+) takes sensors (\d+)\.\.(\d+)")
TAKES_OVER = re.compile(r"worker (\d+) takes over sensors (\d+)\.\.(\d+) of worker (\d+) from step (\d+)")
WORKER_LINE = re.compile(r"^dg worker (\d+): inserted=(\d+) failed=(\d+) in_doubt=(\d+)$", re.M)


@pytest.fixture
def double(tmp_path):
    with DoubleProcess(tmp_path / "crate.sqlite") as server:
        yield server


def clean_env(extra: dict | None = None) -> dict:
    return clean_environment({**BASE_ENV, **(extra or {})})


class Worker:
    """A ``locust --worker`` process; its output goes to files so a full pipe never blocks it."""

    def __init__(self, port: int, folder: Path, name: str):
        self.log = folder / f"{name}.log"
        command = locust_command("--worker", "--master-host", "127.0.0.1", "--master-port", str(port))
        command += ["--prometheus-port", "0"]
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(command, cwd=folder, env=clean_env(), stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text()

    def finish(self, timeout: float = 30) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


class Master:
    """A headless ``locust --master`` process run in the background, read back like ``run_locust``'s result."""

    def __init__(self, args: list[str], folder: Path, env: dict | None = None):
        self.folder, self.report = folder, folder / "report"
        self.out, self.err = folder / "master.out", folder / "master.err"
        command = locust_command("--json-file", str(self.report), "--prometheus-port", "0", *args)
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen(command, cwd=folder, env=clean_env(env), stdout=out, stderr=err)

    def log(self) -> str:
        return self.err.read_text()

    def wait_for(self, pattern: re.Pattern, count: int, timeout: float = 60) -> list[tuple]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = pattern.findall(self.log())
            if len(found) >= count:
                return found
            assert self.process.poll() is None, self.log()[-3000:]
            time.sleep(0.2)
        raise AssertionError(f"no {count} x {pattern.pattern} in the master log:\n{self.log()[-3000:]}")

    def finish(self, timeout: float = 90) -> LocustResult:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        report = self.report.with_suffix(".json")
        data = json.loads(report.read_text()) if report.exists() else None
        return LocustResult(code, self.out.read_text(), self.err.read_text(), data)


def master_args(port: int, workers: int, users: int, url: str, run_time: str | None) -> list[str]:
    args = ["--master", "--headless", "--expect-workers", str(workers), "-u", str(users), "-r", str(users)]
    args += ["--master-bind-host", "127.0.0.1", "--master-bind-port", str(port), "-H", url]
    return args + (["-t", run_time] if run_time else [])


def run_cluster(tmp_path, url: str, *, workers: int, users: int, run_time: str | None, env: dict | None = None):
    port = free_port()
    master = Master(master_args(port, workers, users, url, run_time), tmp_path, env)
    started = [Worker(port, tmp_path, f"worker{i}") for i in range(workers)]
    result = master.finish()
    for worker in started:
        assert worker.finish() == 0, worker.output()[-3000:]
    return result


def worker_rows(result: LocustResult) -> dict[int, dict[str, int]]:
    rows = {}
    for index, inserted, failed, in_doubt in WORKER_LINE.findall(result.stdout):
        rows[int(index)] = {"inserted": int(inserted), "failed": int(failed), "in_doubt": int(in_doubt)}
    return rows


def stored(db_path, first: int, last: int, from_step: int = 0, delta_ms: int = DELTA_MS) -> int:
    """Rows stored for sensors first..last at step ``from_step`` or later."""
    with sqlite3.connect(db_path) as conn:
        sql = (
            f'SELECT count(*) FROM "{storage_table("doc", "temperature")}" WHERE sensor_id BETWEEN ? AND ? AND ts >= ?'
        )
        return conn.execute(sql, (first, last, INGEST_TS_MS + from_step * delta_ms)).fetchone()[0]


def assert_each_worker_stored_exactly_its_rows(result: LocustResult, db_path) -> None:
    """Every worker inserted rows, all of them in the sensors it was granted, and the master counted them all."""
    per_worker = worker_rows(result)
    slices = {int(index): (int(first), int(last)) for index, first, last in TAKES.findall(result.stderr)}
    assert len(slices) >= 2 and set(slices) <= set(per_worker), result.output[-3000:]
    for index, (first, last) in slices.items():
        assert per_worker[index]["inserted"] > 0
        assert stored(db_path, first, last) == per_worker[index]["inserted"]
    summary = result.summary
    assert summary["failed"] == summary["in_doubt"] == 0
    assert count_rows(db_path, TABLE) == summary["inserted"] == sum(w["inserted"] for w in per_worker.values())
    assert summary["inserted"] == result.reported_rows
    assert duplicate_keys(db_path, TABLE, ["sensor_id", "ts"]) == 0


def test_master_and_two_workers_store_disjoint_rows_that_the_master_counts_exactly(double, tmp_path):
    result = run_cluster(tmp_path, double.url, workers=2, users=4, run_time="6s")
    assert result.exit_code == 0, result.output[-3000:]
    assert_each_worker_stored_exactly_its_rows(result, double.db_path)


def test_processes_option_runs_workers_with_disjoint_rows(double, tmp_path):
    port = free_port()
    args = ["--processes", "2", "--headless", "-u", "4", "-r", "4", "-t", "6s", "-H", double.url]
    args += ["--master-bind-host", "127.0.0.1", "--master-bind-port", str(port), "--master-port", str(port)]
    result = run_locust(args, tmp_path, env=BASE_ENV)
    assert result.exit_code == 0, result.output[-3000:]
    assert_each_worker_stored_exactly_its_rows(result, double.db_path)


def test_a_worker_started_after_one_was_killed_takes_over_its_sensors_without_duplicates(double, tmp_path):
    port = free_port()
    master = Master(master_args(port, 2, 6, double.url, "25s"), tmp_path, PACED)
    first, second = Worker(port, tmp_path, "first"), Worker(port, tmp_path, "second")
    master.wait_for(TAKES, 2)
    time.sleep(2)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    # Usually connects before the master marks the dead worker missing, so it waits (asking again) for a free slice.
    replacement = Worker(port, tmp_path, "replacement")
    taken = master.wait_for(TAKES_OVER, 1, timeout=30)
    result = master.finish()
    assert second.finish() == 0 and replacement.finish() == 0
    assert result.exit_code == 0, result.output[-3000:]

    new_index, first_id, last_id, dead_index, start = (int(x) for x in taken[0])
    slices = {int(index): (int(a), int(b)) for index, a, b in TAKES.findall(result.stderr)}
    assert slices[dead_index] == (first_id, last_id)
    assert new_index not in slices and start > 0
    assert f"this worker sends sensors {first_id}..{last_id} from step {start}" in replacement.output()
    per_worker = worker_rows(result)
    # The replacement wrote rows, and only at or after the step it took over at, which the dead worker never reached.
    assert per_worker[new_index]["inserted"] > 0
    taken_over = stored(double.db_path, first_id, last_id, from_step=start, delta_ms=PACED_DELTA_MS)
    assert taken_over == per_worker[new_index]["inserted"]
    (survivor,) = set(slices) - {dead_index}
    assert stored(double.db_path, *slices[survivor]) == per_worker[survivor]["inserted"] > 0
    assert duplicate_keys(double.db_path, TABLE, ["sensor_id", "ts"]) == 0
    # The dead worker's last seconds never reached the master, so the stored rows may exceed its total.
    assert count_rows(double.db_path, TABLE) >= result.summary["inserted"]


def test_a_stalled_worker_that_comes_back_after_a_takeover_never_sends_its_successors_rows(double, tmp_path):
    port = free_port()
    # --enable-rebalancing (the README's advice where workers may restart): a worker that connects while Locust is
    # still dispatching gets no users, and without users it never asks for the stalled worker's slice.
    args = [*master_args(port, 2, 6, double.url, "24s"), "--enable-rebalancing"]
    master = Master(args, tmp_path, PACED)
    first, second = Worker(port, tmp_path, "first"), Worker(port, tmp_path, "second")
    master.wait_for(TAKES, 2)
    time.sleep(1.5)
    first.process.send_signal(signal.SIGSTOP)  # no heartbeats: the master marks it missing, but it is not dead
    replacement = Worker(port, tmp_path, "replacement")
    taken = master.wait_for(TAKES_OVER, 1, timeout=30)
    first.process.send_signal(signal.SIGCONT)  # it still holds a lease below the replacement's first step
    result = master.finish()
    assert [w.finish() for w in (first, second, replacement)] == [0, 0, 0]
    assert result.exit_code == 0, result.output[-3000:]

    new_index, first_id, last_id, stalled_index, start = (int(x) for x in taken[0])
    per_worker = worker_rows(result)
    assert per_worker[new_index]["inserted"] > 0 and per_worker[stalled_index]["inserted"] > 0
    # Split at the takeover step, the slice's rows are exactly the stalled worker's and exactly the replacement's,
    # and the stalled worker sent the step just below it: it used its lease to the end, and not one step further.
    sensors = last_id - first_id + 1
    assert stored(double.db_path, first_id, last_id, start, PACED_DELTA_MS) == per_worker[new_index]["inserted"]
    last_step = stored(double.db_path, first_id, last_id, start - 1, PACED_DELTA_MS) - per_worker[new_index]["inserted"]
    assert last_step == sensors
    below = stored(double.db_path, first_id, last_id) - per_worker[new_index]["inserted"]
    assert below == per_worker[stalled_index]["inserted"]
    assert f"another worker took over sensors {first_id}..{last_id}" in first.output()
    assert duplicate_keys(double.db_path, TABLE, ["sensor_id", "ts"]) == 0
    assert count_rows(double.db_path, TABLE) == result.summary["inserted"]  # every worker lived to report


def test_ingest_size_ends_a_distributed_run_with_exactly_ids_times_size_rows(double, tmp_path):
    env = {"ID_START": "1", "ID_END": "40", "INGEST_SIZE": "250"}
    result = run_cluster(tmp_path, double.url, workers=2, users=4, run_time=None, env=env)  # no -t: it ends by itself
    assert result.exit_code == 0, result.output[-3000:]
    assert "every sensor has its INGEST_SIZE rows; ending the test" in result.stderr
    assert count_rows(double.db_path, TABLE) == 40 * 250 == result.summary["inserted"]
    assert duplicate_keys(double.db_path, TABLE, ["sensor_id", "ts"]) == 0
    assert all(rows["inserted"] > 0 for rows in worker_rows(result).values())


def test_more_workers_than_sensors_leaves_a_worker_idle_and_the_run_ends_normally(double, tmp_path):
    env = {"ID_START": "1", "ID_END": "2", "INGEST_SIZE": "300"}
    result = run_cluster(tmp_path, double.url, workers=3, users=3, run_time=None, env=env)
    assert result.exit_code == 0, result.output[-3000:]
    assert "sensors 1..2 in 2 slice(s)" in result.stderr
    assert count_rows(double.db_path, TABLE) == 2 * 300 == result.summary["inserted"]
    assert duplicate_keys(double.db_path, TABLE, ["sensor_id", "ts"]) == 0
    inserted = sorted(rows["inserted"] for rows in worker_rows(result).values())
    assert inserted == [0, 300, 300]
