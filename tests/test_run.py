import locust  # noqa: F401  (first: gevent monkey-patches sockets before anything else imports them)
from locust.argument_parser import get_parser
from locust.env import Environment
from locust.event import Events
from locust.runners import STATE_INIT, STATE_SPAWNING, Runner, WorkerRunner

import gevent
import pytest
from cratedb_double import DoubleProcess, count_rows
from support import run_locust

from dg_locust import options as options_module
from dg_locust.errors import EXIT_NO_ROWS
from dg_locust.options import add_options
from dg_locust.run import RunContext
from dg_locust.users import CrateIngestUser

TABLE = "doc.temperature"


class TemperatureUser(CrateIngestUser):
    """The default model's sensors (a class of the test's own: importing dg_locust.locustfile would register its
    option listener on Locust's global events a second time)."""


@pytest.fixture
def double(tmp_path):
    with DoubleProcess(tmp_path / "crate.sqlite") as server:
        yield server


def _parsed(*args: str):
    parser = get_parser()
    add_options(parser)
    return parser.parse_args(["--headless", "--prometheus-port", "0", *args])


def _run_one_test(environment, runner, seconds: float = 2.0) -> None:
    runner.start(2, spawn_rate=2)
    gevent.sleep(seconds)
    runner.stop()


def test_settings_are_parsed_once_per_test_and_reach_everyone_from_the_context(double, monkeypatch):
    built = []
    original = options_module.Settings.from_options.__func__

    def counting(cls, options, **kwargs):
        built.append(options)
        return original(cls, options, **kwargs)

    monkeypatch.setattr(options_module.Settings, "from_options", classmethod(counting))
    environment = Environment(
        user_classes=[TemperatureUser], events=Events(), host=double.url, parsed_options=_parsed("-H", double.url)
    )
    runner = environment.create_local_runner()
    context = RunContext.attach(environment, runner)
    assert len(built) == 1, "init parses the options once, to fail fast on bad input"
    first_settings = context.settings

    _run_one_test(environment, runner)
    assert len(built) == 1, "the first test uses the settings parsed at init (the options did not change)"
    assert context.settings is first_settings
    first_rows = context.ledger.totals().inserted
    assert first_rows > 0 and count_rows(double.db_path, TABLE) == first_rows

    gevent.sleep(1.0)  # INGEST_TS=now of the next test must lie after every row of this one
    _run_one_test(environment, runner)
    assert len(built) == 2, "each later test parses once (the web UI may have changed them; INGEST_TS=now moves)"
    assert context.settings.ingest_ts > first_settings.ingest_ts
    assert context.ledger.totals().inserted > 0
    runner.quit()
    # Both tests' rows are stored, none twice: the second test's timestamps did not reuse the first one's.
    assert count_rows(double.db_path, TABLE) >= first_rows + context.ledger.totals().inserted
    assert RunContext.of(environment) is context and not hasattr(environment, "dg")


class _WorkerBeforeInit(WorkerRunner):
    """A worker runner as Locust leaves it when init fires: connected to its master (no real one here), and, if a
    running master sent its first spawn while the worker connected, already spawning, with test_start fired."""

    def __init__(self, environment, worker_state):
        Runner.__init__(self, environment)  # no connection to a master
        self.worker_state = worker_state


@pytest.mark.parametrize(("state", "starts_now"), [(STATE_SPAWNING, True), (STATE_INIT, False)])
def test_a_worker_whose_first_spawn_came_before_init_starts_its_test_at_init(double, state, starts_now):
    # A worker joining a running master with --enable-rebalancing: its spawn (and so test_start) can come before init.
    environment = Environment(user_classes=[TemperatureUser], events=Events(), host=double.url)
    environment.parsed_options = _parsed("-H", double.url, "--insert-method", "unnest")
    runner = _WorkerBeforeInit(environment, state)
    environment.runner = runner
    context = RunContext.attach(environment, runner)
    if starts_now:
        # the test's settings, parsed from the options the master shipped, for the users about to start
        assert context.settings is not None and context.settings.insert_method == "unnest"
        assert context.settings_built == 1 and context.ledger.totals().generated == 0
    else:
        assert context.settings is None and context.settings_built == 0  # its test_start is still to come
    runner.greenlet.kill(block=True)


@pytest.mark.parametrize(
    ("faults", "reason"),
    [
        ({"row_rejections": {"rate": 1, "fraction": 1.0}}, "the database refused all"),
        ({"circuit_breaker": {"rate": 1}}, "every batch sent ended in doubt"),
    ],
    ids=["every-row-refused", "every-batch-in-doubt"],
)
def test_a_run_that_acknowledged_no_row_says_why_and_exits_5(tmp_path, faults, reason):
    with DoubleProcess(tmp_path / "crate.sqlite", faults=faults) as double:
        args = ["--headless", "-u", "2", "-r", "2", "-t", "3s", "-H", double.url, "--exit-code-on-error", "0"]
        result = run_locust(args, tmp_path)
        stored = count_rows(double.db_path, TABLE)
    assert result.exit_code == EXIT_NO_ROWS, result.output[-3000:]
    assert result.summary["inserted"] == 0 == stored
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("dg-locust: no rows were acknowledged")]
    assert reason in line, line


def test_a_run_with_rows_acknowledged_exits_0_with_no_such_line(double, tmp_path):
    result = run_locust(["--headless", "-u", "2", "-r", "2", "-t", "2s", "-H", double.url], tmp_path)
    assert result.exit_code == 0 and result.summary["inserted"] > 0, result.output[-3000:]
    assert "no rows were acknowledged" not in result.output
