"""Faults at the database never lose, duplicate or hide rows, and the run goes on (issue 7).

Each test runs the Locust CLI for a few seconds against the CrateDB test double with a fault injected, then holds
what the double stored against what dg-locust reported:

- every row generated is counted once: ``generated == inserted + failed + in_doubt`` (the ``dg outcomes`` line);
- the table holds at least the rows reported inserted and at most those plus the rows in doubt;
- no (sensor_id, ts) is stored twice, and the double received exactly one request per batch plus the retries:
  nothing was re-sent behind the ledger's back;
- Locust's own report counts the same inserted rows, and the run ends by itself with exit code 0
  (``--exit-code-on-error 0``: failed batches are expected here).
"""

import locust  # noqa: F401

import json
import re
import subprocess
import time

import orjson
import pytest
from cratedb_double import DoubleProcess, count_rows, duplicate_keys
from support import LocustResult, locust_command, run_locust

from dg_locust.client import CrateHttpClient, _Answer
from dg_locust.model import MODELS_DIR, load_model
from dg_locust.schema import table_for_model
from dg_locust.sizing import BatchSizer, SizerSettings

TABLE = "doc.temperature"
KEY = ["sensor_id", "ts"]
OUTCOMES = re.compile(r"^dg outcomes: batches=(\d+) generated=(\d+) retries=(\d+)$", re.M)
RUN = ["--headless", "-u", "4", "-r", "4", "-t", "4s", "--exit-code-on-error", "0"]
START_BATCH_SIZE = 1000  # the adaptive sizer's first size (SizerSettings().start)


def error_lines(result: LocustResult) -> list[str]:
    return [line for line in result.output.splitlines() if "/ERROR/" in line]


def accounted(result: LocustResult, db_path) -> dict:
    """The checks every run with faults must pass; returns the counts for each test's own assertions."""
    assert result.exit_code == 0, result.output[-3000:]
    assert "Traceback" not in result.output, result.output[-3000:]
    counts = dict(result.summary)
    found = OUTCOMES.findall(result.stdout)
    assert len(found) == 1, result.output[-3000:]
    counts.update(zip(("batches", "generated", "retries"), map(int, found[0]), strict=True))
    assert counts["generated"] == counts["inserted"] + counts["failed"] + counts["in_doubt"]
    assert result.reported_rows == counts["inserted"]
    counts["stored"] = count_rows(db_path, TABLE)
    assert counts["inserted"] <= counts["stored"] <= counts["inserted"] + counts["in_doubt"]
    assert duplicate_keys(db_path, TABLE, KEY) == 0
    return counts


@pytest.mark.parametrize(
    "fault",
    [
        {"reset_before_response": {"every": 5, "store": True}},
        {"reset_before_response": {"every": 5, "store": False}},
        {"reset_mid_response": {"every": 5}},
    ],
    ids=["reset-before-response-stored", "reset-before-response-not-stored", "reset-mid-response"],
)
def test_a_reset_connection_leaves_the_batch_in_doubt_and_never_resends_it(tmp_path, fault):
    with DoubleProcess(tmp_path / "crate.sqlite", faults=fault) as double:
        result = run_locust([*RUN, "-H", double.url], tmp_path)
        counts = accounted(result, double.db_path)
        stats = double.stats()
    assert counts["inserted"] > 0 and counts["in_doubt"] > 0
    assert counts["retries"] == 0
    assert stats["insert_requests"] == counts["batches"]  # one request per batch: nothing re-sent
    if fault.get("reset_before_response", {}).get("store") is False:
        assert counts["stored"] == counts["inserted"]


@pytest.mark.parametrize(
    "fault",
    [{"http_503": {"every": 3, "code": 5031}}, {"http_429_empty": {"every": 3}}],
    ids=["http-503", "http-429-empty-body-connection-closed"],
)
def test_a_refused_batch_is_retried_and_its_rows_counted_once(tmp_path, fault):
    with DoubleProcess(tmp_path / "crate.sqlite", faults=fault) as double:
        result = run_locust([*RUN, "-H", double.url], tmp_path)
        counts = accounted(result, double.db_path)
        stats = double.stats()
    assert counts["retries"] > 0
    assert counts["in_doubt"] == 0
    assert counts["stored"] == counts["inserted"] > 0
    # Every request the double saw is a batch's first attempt or one of the counted retries.
    assert stats["insert_requests"] == counts["batches"] + counts["retries"]


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, {"error": {"message": "SQLParseException[bad]", "code": 4000}}, "failed"),
        (401, b'password authentication failed for user "alice"', "failed fatal"),
        (403, {"error": {"message": "MissingPrivilegeException[no INSERT on doc.t]", "code": 4031}}, "failed fatal"),
        (404, {"error": {"message": "RelationUnknown[doc.t]", "code": 4041}}, "failed"),
        (409, {"error": {"message": "DuplicateKeyException[]", "code": 4091}}, "failed"),
        (429, b"", "failed overload"),
        (
            500,
            {"error": {"message": "CircuitBreakingException[[parent] Data too large]", "code": 5000}},
            "in_doubt overload",
        ),
        (500, {"error": {"message": "SQLActionException[shards failed]", "code": 5002}}, "in_doubt"),
        (503, {"error": {"message": "ClusterBlockException[no master]", "code": 5031}}, "failed overload"),
        (200, b"not json", "in_doubt"),
        (200, {"cols": [], "results": [{"rowcount": 1}] * 3}, "in_doubt"),  # 3 results for 4 rows: untrustworthy
    ],
)
def test_every_answer_sorts_all_rows_into_exactly_one_outcome(status, body, expected):
    client = CrateHttpClient(("http://db:4200",), username="alice", password="pw")
    answer = _Answer(
        server="http://db:4200", status=status, body=body if isinstance(body, bytes) else orjson.dumps(body)
    )
    outcome = client._classify(answer, 4, "bulk")
    kind, *flags = expected.split()
    assert getattr(outcome, kind) == outcome.rows == 4
    assert outcome.fatal == ("fatal" in flags) and outcome.overload == ("overload" in flags)
    assert outcome.error and "\n" not in outcome.error
    if outcome.fatal:
        assert "'alice'" in outcome.error and "http://db:4200" in outcome.error


def test_every_503_code_is_retried_and_retries_are_bounded(tmp_path):
    body = orjson.dumps({"stmt": 'INSERT INTO "doc"."t" (a) VALUES (?)', "bulk_args": [[1], [2], [3]]})
    with DoubleProcess(tmp_path / "crate.sqlite") as double:
        client = CrateHttpClient((double.url,), timeout=5, max_retries=2)
        client.execute('CREATE TABLE "doc"."t" (a INTEGER)')
        for code in range(5031, 5036):  # the 503 codes CrateDB 6.4.3 answers (5030 no exception does)
            double.configure(clear_faults=True, http_503={"code": code, "times": 1})
            outcome = client.insert(body, 3, "bulk")
            assert (outcome.inserted, outcome.retries) == (3, 1), (code, outcome)
        double.configure(clear_faults=True, http_503={"code": 5033})  # refuses every time
        before = double.stats()["insert_requests"]
        outcome = client.insert(body, 3, "bulk")
        assert (outcome.failed, outcome.in_doubt, outcome.retries, outcome.overload) == (3, 0, 2, True)
        assert "HTTP 503" in outcome.error and "NoShardAvailableActionException" in outcome.error
        assert double.stats()["insert_requests"] - before == 3  # first attempt + max_retries, then it stops
        client.close()
        assert count_rows(double.db_path, "doc.t") == 5 * 3


def test_circuit_breaker_errors_are_in_doubt_and_shrink_the_batches(tmp_path):
    with DoubleProcess(tmp_path / "crate.sqlite", faults={"circuit_breaker": {"every": 4}}) as double:
        result = run_locust([*RUN, "-H", double.url], tmp_path)
        counts = accounted(result, double.db_path)
        stats = double.stats()
    # An HTTP 500 without per-row results may have executed part of a bulk: unknown, so never re-sent.
    assert counts["in_doubt"] > 0 and counts["retries"] == 0
    assert stats["insert_requests"] == counts["batches"]
    assert counts["stored"] == counts["inserted"] > 0
    assert counts["batch_size"] < START_BATCH_SIZE  # overload backs off through the sizer


@pytest.mark.parametrize("method", ["bulk", "unnest"])
def test_rows_a_check_constraint_refuses_are_failed_and_the_rest_inserted(tmp_path, method):
    """The table is created beforehand with a CHECK on the temperature field, so about half the rows are refused by
    the table as a real CrateDB 6.4.3 refuses them (recorded: bulk_check_violation_some, a -2 per refused row;
    unnest_check_violation_some, a smaller rowcount); dg-locust's CREATE TABLE IF NOT EXISTS leaves it as it is."""
    model = load_model(MODELS_DIR / "temperature.json")
    plain = table_for_model(model, table_option="", partition="week", shards=4, replicas="0").create_sql()
    checked = plain.replace('"value" DOUBLE PRECISION', '"value" DOUBLE PRECISION CHECK ("value" <= 6.4)')
    assert checked != plain
    with DoubleProcess(tmp_path / "crate.sqlite") as double:
        client = CrateHttpClient((double.url,), timeout=5)
        client.execute(checked)
        client.close()
        result = run_locust([*RUN, "-H", double.url, "--insert-method", method], tmp_path)
        counts = accounted(result, double.db_path)
        stats = double.stats()
    assert counts["failed"] == stats["rows_rejected"] > 0
    assert counts["inserted"] > 0 and counts["in_doubt"] == 0 and counts["retries"] == 0
    assert counts["stored"] == counts["inserted"]
    assert stats["insert_requests"] == counts["batches"]


def test_rows_rejected_in_a_bulk_response_are_failed_and_the_rest_inserted(tmp_path):
    fault = {"row_rejections": {"every": 2, "fraction": 0.1}}
    with DoubleProcess(tmp_path / "crate.sqlite", faults=fault) as double:
        result = run_locust([*RUN, "-H", double.url], tmp_path)
        counts = accounted(result, double.db_path)
        stats = double.stats()
    assert counts["failed"] == stats["rows_rejected"] > 0
    assert counts["in_doubt"] == 0 and counts["retries"] == 0
    assert counts["stored"] == counts["inserted"] > 0


def test_responses_slower_than_the_timeout_are_in_doubt_and_the_run_goes_on(tmp_path):
    with DoubleProcess(tmp_path / "crate.sqlite", faults={"slow": {"every": 4, "seconds": 2.5}}) as double:
        started = time.monotonic()
        result = run_locust([*RUN, "-H", double.url, "--timeout", "1"], tmp_path)
        elapsed = time.monotonic() - started
        counts = accounted(result, double.db_path)
        stats = double.stats()
    assert counts["in_doubt"] > 0 and counts["inserted"] > 0
    assert stats["insert_requests"] == counts["batches"]  # a timed-out batch is never sent again
    assert elapsed < 4 + 1 + 6  # -t, then at most one --timeout for the batches in flight, plus start-up


def test_a_refused_login_stops_the_run_with_one_message_naming_user_and_host(tmp_path):
    users = {"alice": "s3cret-for-401"}
    with DoubleProcess(tmp_path / "crate.sqlite", users=users, faults={"http_401": {"every": 6}}) as double:
        started = time.monotonic()
        args = ["--headless", "-u", "4", "-r", "4", "-t", "20s", "-H", double.url]
        result = run_locust([*args, "--username", "alice", "--password", users["alice"]], tmp_path)
        elapsed = time.monotonic() - started
        stats = double.stats()
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    errors = error_lines(result)
    assert len(errors) == 1, errors
    assert "'alice'" in errors[0] and double.url in errors[0] and "stopping the test" in errors[0]
    assert elapsed < 10  # stopped at once, not at the end of -t
    assert stats["status"].get("401", 0) <= 4  # at most the batches in flight, not a flood


def test_wrong_credentials_at_start_give_one_message_and_exit_non_zero(tmp_path):
    with DoubleProcess(tmp_path / "crate.sqlite", users={"alice": "right"}) as double:
        args = ["--headless", "-u", "4", "-r", "4", "-t", "20s", "-H", double.url, "--username", "alice"]
        result = run_locust([*args, "--password", "wrong"], tmp_path)
        stats = double.stats()
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    errors = error_lines(result)
    assert len(errors) == 1 and "'alice'" in errors[0] and double.url in errors[0], errors
    assert stats["auth_failures"] == 1  # the first user found out; the others did not knock again


def test_database_unreachable_at_start_gives_one_message_and_exit_non_zero(tmp_path):
    with DoubleProcess(tmp_path / "crate.sqlite") as double:
        url = double.url
    started = time.monotonic()
    result = run_locust(["--headless", "-u", "4", "-r", "4", "-t", "30s", "-H", url, "--timeout", "2"], tmp_path)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    errors = error_lines(result)
    assert len(errors) == 1 and f"cannot reach CrateDB at {url}: Connection refused" in errors[0], errors
    assert time.monotonic() - started < 15


def _drive_sizer(sizer: BatchSizer, clock, faulty: list, failure: dict, until: float) -> list:
    """Four users sending back to back; batches sent within the ``faulty`` (from, until) intervals fail as
    ``failure`` says (duration, counts). Returns (time, current size) after every batch."""
    users = [(0.0, user) for user in range(4)]
    trace = []
    while users:
        users.sort()
        sent, user = users.pop(0)
        size = sizer.current
        if any(start <= sent < end for start, end in faulty):
            duration, counts = failure["duration_s"], {k: v * size for k, v in failure["rows"].items()}
            clock.now = sent + duration
            sizer.record(size=size, duration_s=duration, overload=failure["overload"], **counts)
        else:
            duration = 0.005 + size / 40_000  # a healthy node: bigger batches are better up to the maximum
            clock.now = sent + duration
            sizer.record(size=size, inserted=size, failed=0, in_doubt=0, duration_s=duration, overload=False)
        trace.append((clock.now, sizer.current))
        if clock.now < until:
            users.append((clock.now, user))
    return trace


REFUSED = {"duration_s": 0.5, "rows": {"inserted": 0, "failed": 1, "in_doubt": 0}, "overload": True}
TIMED_OUT = {"duration_s": 5.0, "rows": {"inserted": 0, "failed": 0, "in_doubt": 1}, "overload": True}


@pytest.mark.parametrize(("failure", "recovers"), [(REFUSED, True), (TIMED_OUT, False)], ids=["refused", "timeouts"])
def test_the_sizer_returns_to_its_size_after_overload_that_did_not_depend_on_size(failure, recovers):
    class Clock:
        now = 0.0

        def __call__(self):
            return self.now

    clock = Clock()
    sizer = BatchSizer(SizerSettings(), clock=clock)
    # 15 s of faults: with 5-s timeouts every user sees three failed batches. The first ones may be of a larger size
    # the sizer was trying, which only sends it back to its best size; the later ones are of that size or smaller.
    trace = _drive_sizer(sizer, clock, [(20, 35)], failure, until=50)
    before = max(size for t, size in trace if t < 20)
    during = min(size for t, size in trace if 20 <= t < 40)
    after = max(size for t, size in trace if 35 + 1 <= t <= 35 + 8)
    assert during <= before / 4  # it backed off while every batch failed
    if recovers:
        # Refusals at every size: the halving did not help, so when they stop the size returns within seconds.
        assert after >= before / 2, (before, after)
    else:
        # Timeouts may mean the batches are too big for the cluster now: the ceiling stays and decays slowly.
        assert after < before / 2, (before, after)


def test_a_fault_that_comes_and_goes_does_not_pin_the_batch_size_at_the_minimum():
    class Clock:
        now = 0.0

        def __call__(self):
            return self.now

    clock = Clock()
    sizer = BatchSizer(SizerSettings(), clock=clock)
    # Refusals for 5 s every 15 s: more often than the sizer may recover (at most once per 30 s), so the second
    # storm ends without a recovery; the third one must not start from scratch at the minimum size.
    trace = _drive_sizer(sizer, clock, [(20, 25), (35, 40), (50, 55)], REFUSED, until=70)
    before = max(size for t, size in trace if t < 20)
    assert min(size for t, size in trace if 50 <= t < 55) <= before / 4  # it backs off every time
    assert max(size for t, size in trace if 55 <= t <= 65) >= before / 2  # and is back within 10 s of the last


# --- several servers, one of them bad ---


@pytest.fixture
def two_nodes(tmp_path):
    """Two doubles sharing one SQLite file, like two nodes of one cluster."""
    with DoubleProcess(tmp_path / "crate.sqlite") as good, DoubleProcess(tmp_path / "crate.sqlite") as bad:
        yield good, bad


def test_a_server_down_from_the_start_is_skipped_with_one_warning(two_nodes, tmp_path):
    good, bad = two_nodes
    bad.stop()
    result = run_locust([*RUN, "-H", f"{bad.url},{good.url}"], tmp_path)
    counts = accounted(result, good.db_path)
    assert counts["failed"] == counts["in_doubt"] == 0 and counts["inserted"] > 0
    warnings = [line for line in result.output.splitlines() if "/WARNING/" in line and bad.url in line]
    assert len(warnings) == 1 and "going on with the other servers" in warnings[0]
    assert error_lines(result) == []


def test_a_server_that_refuses_every_request_gets_its_batches_retried_elsewhere(two_nodes, tmp_path):
    good, bad = two_nodes
    bad.configure(http_503={"rate": 1.0, "code": 5032})
    result = run_locust([*RUN, "-H", f"{good.url},{bad.url}"], tmp_path)
    counts = accounted(result, good.db_path)
    assert counts["failed"] == counts["in_doubt"] == 0
    assert counts["retries"] == bad.stats()["insert_requests"] > 0
    assert counts["stored"] == counts["inserted"] > 0


def test_a_server_that_resets_every_connection_cools_down_instead_of_eating_batches(two_nodes, tmp_path):
    good, bad = two_nodes
    bad.configure(reset_before_response={"rate": 1.0, "store": False})
    result = run_locust([*RUN, "-H", f"{good.url},{bad.url}"], tmp_path)
    counts = accounted(result, good.db_path)
    to_bad, to_good = bad.stats()["insert_requests"], good.stats()["insert_requests"]
    # Each reset leaves one batch in doubt (never re-sent), and the node rests for 0.25 s, 0.5 s, 1 s ... after
    # each one, so over 4 s it sees a handful of requests while the good node takes the rest.
    assert to_bad <= 16 and to_good > 10 * to_bad
    assert counts["stored"] == counts["inserted"] > 0


# --- the server goes away and comes back ---


def _start_locust(args, tmp_path) -> subprocess.Popen:
    command = locust_command("--json-file", str(tmp_path / "report"), "--prometheus-port", "0", *args)
    return subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rate(samples, start, end) -> float:
    """Rows/s stored between two moments, from (time, stored rows) samples."""
    inside = [(t, n) for t, n in samples if start <= t <= end]
    if len(inside) < 2:
        return 0.0
    (t0, n0), (t1, n1) = inside[0], inside[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


@pytest.mark.parametrize(
    ("disruption", "timeout"),
    [("restart", 30), ("restart", 1), ("http_503", 30), ("circuit_breaker", 30)],
    ids=[
        "node-restart-shorter-than-timeout-loses-nothing",
        "node-restart-longer-than-timeout-fails-rows-only",
        "overload-503-storm",
        "overload-circuit-breaker-storm",
    ],
)
def test_throughput_recovers_within_10_s_when_the_database_does(tmp_path, disruption, timeout):
    """Rows/s measured at the database every 0.25 s, before and after 3 s of disruption: the node killed (SIGKILL)
    and started again on the same port and database, or refusing every insert (503 or circuit breaker)."""
    # The double's latency model, not the shared CPU, sets the pace: 20 ms per request and 40 us per row, two
    # requests at a time, so rows/s depend on the batch size (about 8k at 100 rows, 33k at 1000, 44k at 5000) and
    # a batch size stuck low after the disruption shows, while other processes on the machine matter little.
    double = DoubleProcess(tmp_path / "crate.sqlite", overhead_ms=20, per_row_us=40, max_concurrency=2).start()
    args = ["--headless", "-u", "4", "-r", "4", "-t", "17s", "--exit-code-on-error", "0", "--timeout", str(timeout)]
    locust_process = _start_locust([*args, "-H", double.url], tmp_path)
    started = time.monotonic()
    samples, began, ended = [], None, None
    try:
        while locust_process.poll() is None:
            now = time.monotonic() - started
            samples.append((now, count_rows(double.db_path, TABLE)))
            if began is None and now >= 6:
                if disruption == "restart":
                    double.stop()  # SIGKILL: the batches in flight are cut off
                else:
                    double.configure(**{disruption: {"rate": 1.0}})
                began = time.monotonic() - started
            elif ended is None and began is not None and now >= began + 3:
                if disruption == "restart":
                    double.start()  # same port, same database
                else:
                    double.configure(clear_faults=True)
                ended = time.monotonic() - started
            time.sleep(0.25)
        stdout, stderr = locust_process.communicate(timeout=60)
    finally:
        if locust_process.poll() is None:
            locust_process.kill()
        double.stop()
    report = json.loads((tmp_path / "report.json").read_text())
    counts = accounted(LocustResult(locust_process.returncode, stdout, stderr, report), double.db_path)
    assert began is not None and ended is not None
    # The best 2 s before the disruption against the best 2 s that end within 10 s of its end.
    before = max(_rate(samples, t, t + 2) for t, _ in samples if began - 4 <= t <= began - 2)
    after = max(_rate(samples, t, t + 2) for t, _ in samples if ended <= t <= ended + 8)
    print(f"rows/s before {before:.0f}, after {after:.0f}")
    assert before > 0 and after >= 0.6 * before, (before, after, samples, stderr[-3000:])
    if disruption == "restart" and timeout > 3:
        assert counts["failed"] == 0  # the batches waited for the node instead of failing
    elif disruption == "restart":
        assert counts["failed"] > 0  # refused connections: nothing was sent, so failed, never in doubt
