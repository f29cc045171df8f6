"""The run: ``RunContext``, dg-locust's declared state for one Locust Environment, and the listeners that drive it.

``RunContext.attach(environment)`` (from an ``init`` listener) creates the one context of an environment; everything
else reaches it one way, ``RunContext.of(environment)`` (users in ``on_start``), or is handed it at registration
(metrics, web UI, checks). Its attributes are documented on the class. It hooks onto Locust's events (the pattern
of Locust's ``contrib`` listeners):

- ``init``: maps the seed's ``HOST`` to Locust's host; on a master or local runner parses and validates the options
  (``Settings``, once) and the model, and exits at once with one line (code 2) on bad input; gives in-flight
  batches a stop timeout;
- ``test_start``: the settings of this test (the ones parsed at init for the first test when the options did not
  change since; parsed again otherwise: the web UI may have changed them, and ``INGEST_TS=now`` must move on),
  a fresh ledger, the sensor assignments, and no pipelines of a previous test;
- ``report_to_master`` / ``worker_report``: cumulative row (and query) counters from workers to the master;
- ``test_stopping`` on a master: has every worker stop its users and send its final counters (``dg_finish`` /
  ``dg_final``), so the summary holds the last seconds too;
- ``test_stop``: prints the one-line summary on the master or local runner (and a master's per-worker lines), and
  says why when no row at all was acknowledged (exit code 5);
- ``quitting``: closes the HTTP pools.

It also owns the pipelines (one per user class in this process) and the query workloads (one per query user class
in this process, see ``query_workload``), ends the run when every sensor has its
``INGEST_SIZE`` rows, and stops it with one clear message when the database refuses the credentials or cannot be
reached.
"""

from __future__ import annotations

from locust.runners import STATE_MISSING, STATE_RUNNING, STATE_SPAWNING, MasterRunner, WorkerRunner

import logging
import os
import sys
import time
from typing import ClassVar
from weakref import WeakKeyDictionary

import gevent
from gevent.lock import Semaphore

from dg_locust.capacity import CapacityFinder
from dg_locust.client import CrateError
from dg_locust.errors import EXIT_BAD_INPUT, EXIT_NO_ROWS, DgError
from dg_locust.ids import SensorAssignments
from dg_locust.ledger import REPORT_KEY, RunLedger
from dg_locust.model import load_model
from dg_locust.options import SEED_HOST_ENV_VAR, Settings, check_hosts_for_method, parse_hosts
from dg_locust.pipeline import IngestPipeline
from dg_locust.query_ledger import REPORT_KEY as QUERY_REPORT_KEY
from dg_locust.query_ledger import QueryLedger
from dg_locust.query_workload import QueryWorkload, workload_specs
from dg_locust.schema import table_for_model

ABORT_MESSAGE = "dg_abort"
EXHAUSTED_MESSAGE = "dg_exhausted"
FINISH_MESSAGE = "dg_finish"  # master -> workers: stop your users and send your final counters
FINAL_MESSAGE = "dg_final"  # worker -> master: the final counters
FINAL_REPORT_GRACE_S = 5.0
INGEST_SIZE_REACHED = "every sensor has its INGEST_SIZE rows"  # the stop_reason of a run that is done, not failed

logger = logging.getLogger(__name__)


class RunContext:
    """dg-locust's state for one environment. Attributes:

    - ``environment``: the Locust Environment it belongs to;
    - ``settings``: the validated ``Settings`` of the current test (None before the first test on a worker, or
      when the options are bad); parsed once per test, never re-read from the options by anyone else;
    - ``ledger``: the row counters of this process (and on a master, every worker's latest report);
    - ``assignments``: which sensors this process owns (``ids``);
    - ``pipelines``: user class name -> its ``IngestPipeline`` in this process, created by the first user;
    - ``queries``: the query counters of this process (and on a master, every worker's latest report);
    - ``query_workloads``: query user class name -> its ``QueryWorkload`` in this process;
    - ``stop_reason``: why the run stopped by itself (None while it runs or when a person stopped it);
    - ``capacity``: the capacity finder's load shape on a master or local runner (``capacity_shape``; it holds the
      result of the last test it ran), None on workers and before it is registered;
    - ``settings_built``: how many times ``Settings`` were parsed in this process (once per test).
    """

    _by_environment: ClassVar[WeakKeyDictionary] = WeakKeyDictionary()

    def __init__(self, environment):
        self.environment = environment
        self.settings: Settings | None = None
        self.settings_built = 0
        self.ledger = RunLedger()
        self.assignments = SensorAssignments()
        self.pipelines: dict[str, IngestPipeline] = {}
        self.queries = QueryLedger()
        self.query_workloads: dict[str, QueryWorkload] = {}
        self.stop_reason: str | None = None
        self.capacity: CapacityFinder | None = None
        self._pipeline_lock = Semaphore()
        self._aborted = False
        self._finishing = False
        self._awaiting_final: set[str] = set()
        # The options the init-time settings were parsed from; the first test reuses them while they still match.
        self._init_options: dict | None = None

    @classmethod
    def attach(cls, environment, runner=None) -> RunContext:
        """Create the environment's context and hook it onto the events; call it from an ``init`` listener."""
        context = cls(environment)
        cls._by_environment[environment] = context
        events = environment.events
        events.test_start.add_listener(context.on_test_start)
        events.test_stopping.add_listener(context.on_test_stopping)
        events.test_stop.add_listener(context.on_test_stop)
        events.report_to_master.add_listener(context.on_report_to_master)
        events.worker_report.add_listener(context.on_worker_report)
        events.quitting.add_listener(context.on_quitting)
        context.on_init(environment, runner or environment.runner)
        return context

    @classmethod
    def of(cls, environment) -> RunContext:
        """The context ``attach`` made for this environment."""
        return cls._by_environment[environment]

    # --- roles ---

    @property
    def runner(self):
        return self.environment.runner

    @property
    def is_worker(self) -> bool:
        return isinstance(self.runner, WorkerRunner)

    @property
    def is_master(self) -> bool:
        return isinstance(self.runner, MasterRunner)

    @property
    def headless(self) -> bool:
        options = self.environment.parsed_options
        return bool(options and getattr(options, "headless", False))

    # --- events ---

    def on_init(self, environment, runner) -> None:
        if not environment.host and os.environ.get(SEED_HOST_ENV_VAR):
            environment.host = os.environ[SEED_HOST_ENV_VAR]
        if isinstance(runner, MasterRunner | WorkerRunner):
            runner.register_message(ABORT_MESSAGE, self._on_abort_message)
            runner.register_message(EXHAUSTED_MESSAGE, self._on_exhausted_message)
            runner.register_message(FINISH_MESSAGE, self._on_finish_message, concurrent=True)
            runner.register_message(FINAL_MESSAGE, self._on_final_message)
        self.assignments.register(environment, runner)
        if isinstance(runner, WorkerRunner) and runner.worker_state in (STATE_SPAWNING, STATE_RUNNING):
            # Locust connects a worker to its master before it fires init. A master already running (a worker that
            # joins late, with rebalancing) sends the first spawn at once, and the worker fires test_start for it
            # before this listener exists: without this, the test would run with no settings and no sensors.
            self.on_test_start(environment)
        forked_child = _is_forked_child(environment)
        if (isinstance(runner, WorkerRunner) and not forked_child) or environment.parsed_options is None:
            return  # a separate worker gets its options from the master, at test start
        problem = self.validate()
        if not problem and not isinstance(runner, WorkerRunner) and not environment.stop_timeout:
            # Locust kills users mid-task by default, which leaves every in-flight batch in doubt. Give a batch
            # the time to finish or time out instead; the master ships this value to its workers.
            environment.stop_timeout = self.settings.timeout + 5
        if problem and forked_child:
            os._exit(EXIT_BAD_INPUT)  # a --processes child: its parent says why, once
        if problem:
            # One line, no traceback: bad input is the user's to fix, not a bug.
            sys.stderr.write(f"dg-locust: {problem}\n")
            sys.stderr.flush()
            sys.exit(EXIT_BAD_INPUT)

    def validate(self) -> str | None:
        """Parse the options into ``settings`` and check the model; the first problem as one line, or None."""
        try:
            self.settings = self._parse_settings()
            self._init_options = dict(vars(self.environment.parsed_options))
            if self.headless and not self.is_worker:
                check_hosts_for_method(parse_hosts(self.environment.host), self.settings.insert_method)
            check_model(self.settings)
        except DgError as error:
            self.settings = None
            return str(error)
        return None

    def _parse_settings(self) -> Settings:
        self.settings_built += 1
        return Settings.from_options(self.environment.parsed_options)

    def settings_for_test(self) -> Settings:
        """The settings of the test starting now: init's for the first test while the options are unchanged."""
        options = self.environment.parsed_options
        if self._init_options is not None and self._init_options == dict(vars(options)) and self.settings:
            self._init_options = None
            return self.settings
        self._init_options = None
        settings = self._parse_settings()
        check_model(settings)
        return settings

    def on_test_start(self, environment, **_kwargs) -> None:
        self.ledger.reset()
        self.queries.reset()
        self._close_pipelines()
        self._aborted = False
        self._finishing = False
        self.stop_reason = None
        try:
            self.settings = self.settings_for_test()
        except DgError as error:
            # Options changed in the web UI (or shipped to a worker) can be bad: the test cannot run.
            self.settings = None
            self.abort(str(error))
            return
        self.assignments.start_test(self.settings)

    def on_test_stop(self, environment, **_kwargs) -> None:
        self.ledger.stopped_at = self.ledger.clock()
        self.queries.stopped_at = self.queries.clock()
        if self.is_worker:
            return
        print(self.ledger.summary_line(), flush=True)
        # Every batch ends as inserted, failed or in doubt: generated == inserted + failed + in_doubt. Retries
        # are re-sends of batches refused with HTTP 429/503; their rows count once, in the final outcome.
        totals = self.ledger.totals()
        print(f"dg outcomes: batches={totals.batches} generated={totals.generated} retries={totals.retries}")
        if self.is_master:
            for line in self.ledger.worker_lines(self.runner.get_worker_index):
                print(line, flush=True)
        for line in self.queries.summary_lines(self.ledger.rows_per_s()):
            print(line, flush=True)
        why = no_rows_reason(totals, self.settings, self.is_master, len(self.ledger.worker_reports))
        # A run of query users only (against rows written before) has no rows to acknowledge.
        queries_only = not self.ledger.per_class() and self.queries.total().requests > 0
        if why and not self._aborted and not queries_only:
            print(f"dg-locust: no rows were acknowledged: {why}", flush=True)
            logger.error("dg-locust: no rows were acknowledged: %s", why)
            if not self.environment.process_exit_code:
                self.environment.process_exit_code = EXIT_NO_ROWS

    def on_report_to_master(self, client_id, data, **_kwargs) -> None:
        data[REPORT_KEY] = self.ledger.local_report()
        data[QUERY_REPORT_KEY] = self.queries.local_report()

    def on_worker_report(self, client_id, data, **_kwargs) -> None:
        if REPORT_KEY in data:
            self.ledger.merge_worker_report(client_id, data[REPORT_KEY])
        if QUERY_REPORT_KEY in data:
            self.queries.merge_worker_report(client_id, data[QUERY_REPORT_KEY])

    def on_quitting(self, environment, **_kwargs) -> None:
        self._close_pipelines()

    # --- pipelines ---

    def pipeline_for(self, user_class) -> IngestPipeline | None:
        """The pipeline of a user class in this process, created (and its table prepared) by the first user;
        None once the run was aborted (the users queued behind a failed first attempt must not try again)."""
        name = user_class.__name__
        with self._pipeline_lock:
            if name not in self.pipelines and not self._aborted and self.settings is not None:
                pipeline = IngestPipeline.create(
                    settings=self.settings,
                    class_name=name,
                    model_path=getattr(user_class, "model", None),
                    host=self.environment.host,
                    ledger=self.ledger.for_class(name),
                    assignments=self.assignments,
                    request_event=self.environment.events.request,
                )
                pipeline.prepare_table()
                self.pipelines[name] = pipeline
            return self.pipelines.get(name)

    def start_user(self, user_class) -> IngestPipeline | None:
        """``pipeline_for`` for a user's on_start; on a problem, stops the run with one message and returns None."""
        try:
            return self.pipeline_for(user_class)
        except (DgError, CrateError) as error:
            self.abort(str(error))
            return None

    def _close_pipelines(self) -> None:
        for pipeline in self.pipelines.values():
            pipeline.close()
        self.pipelines.clear()
        for workload in self.query_workloads.values():
            workload.close()
        self.query_workloads.clear()

    def start_query_user(self, user_class) -> QueryWorkload | None:
        """The query workload of a user class in this process, created by its first user; on a problem, stops the
        run with one message and returns None (as ``start_user``)."""
        name = user_class.__name__
        try:
            with self._pipeline_lock:
                if name not in self.query_workloads and not self._aborted and self.settings is not None:
                    self.query_workloads[name] = QueryWorkload.create(
                        settings=self.settings,
                        class_name=name,
                        host=self.environment.host,
                        ledger=self.queries,
                        request_event=self.environment.events.request,
                        model_path=getattr(user_class, "model", None),
                        ingest_prepared=lambda: bool(self.pipelines),
                    )
                return self.query_workloads.get(name)
        except (DgError, CrateError) as error:
            self.abort(str(error))
            return None

    # --- run control ---

    def abort(self, message: str) -> None:
        """Stop the whole run because it cannot go on (bad credentials, unreachable database); log it once."""
        if self._aborted:
            return
        self._aborted = True
        self.stop_reason = message
        logger.error("dg-locust: %s; stopping the test", message)
        self.environment.process_exit_code = EXIT_BAD_INPUT
        if self.is_worker:
            self.runner.send_message(ABORT_MESSAGE, message)
        else:
            self._end_run()

    def class_exhausted(self, pipeline: IngestPipeline) -> None:
        """A user found its feed exhausted; when every pipeline here is done and idle, this process is done."""
        done = (p.feed is not None and p.feed.exhausted and p.in_flight == 0 for p in self.pipelines.values())
        if self._finishing or not all(done):
            return
        self._finishing = True
        if self.is_worker:
            self.runner.send_message(EXHAUSTED_MESSAGE, self.assignments.exhausted_report())
        else:
            self.stop_reason = INGEST_SIZE_REACHED
            logger.info("dg-locust: every sensor has its INGEST_SIZE rows; ending the test")
            self._end_run()

    def _end_run(self) -> None:
        # Quit from a fresh greenlet: the caller is usually a user greenlet that the runner is about to kill.
        gevent.spawn(self.runner.quit if self.headless else self.runner.stop)

    def _on_abort_message(self, environment, msg, **_kwargs) -> None:
        if self.is_master and not self._aborted:
            self._aborted = True
            self.stop_reason = f"a worker reported: {msg.data}"
            logger.error("dg-locust: a worker reported: %s; stopping the test", msg.data)
            self.environment.process_exit_code = EXIT_BAD_INPUT
            self._end_run()

    def _on_exhausted_message(self, environment, msg, **_kwargs) -> None:
        if self.is_master and self.assignments.slice_exhausted(msg.node_id, msg.data) and not self._finishing:
            self._finishing = True
            self.stop_reason = INGEST_SIZE_REACHED
            logger.info("dg-locust: every sensor has its INGEST_SIZE rows; ending the test")
            self._end_run()

    def on_test_stopping(self, environment, **_kwargs) -> None:
        """On a master, before the summary: every worker stops its users and sends its final counters.

        Locust fires ``test_stop`` on the master before it tells the workers to stop, up to a report interval
        after their last report; without this wait the summary would miss the rows of the last seconds."""
        if not self.is_master:
            return
        self._awaiting_final = {c.id for c in self.runner.clients.all if c.state != STATE_MISSING}
        for client_id in list(self._awaiting_final):
            self.runner.send_message(FINISH_MESSAGE, None, client_id=client_id)
        deadline = time.monotonic() + (self.environment.stop_timeout or 0) + FINAL_REPORT_GRACE_S
        while time.monotonic() < deadline and any(self._still_running(c) for c in self._awaiting_final):
            gevent.sleep(0.05)

    def _still_running(self, client_id: str) -> bool:
        client = self.runner.clients.get(client_id)
        return client is not None and client.state != STATE_MISSING

    def _on_finish_message(self, environment, msg, **_kwargs) -> None:
        if self.runner.state in (STATE_SPAWNING, STATE_RUNNING):
            self.runner.stop()  # lets in-flight batches finish (stop timeout), as Locust's own stop would
        data: dict = {}
        self.on_report_to_master(self.runner.client_id, data)
        self.runner.send_message(FINAL_MESSAGE, data)

    def _on_final_message(self, environment, msg, **_kwargs) -> None:
        self.on_worker_report(msg.node_id, msg.data)
        self._awaiting_final.discard(msg.node_id)


def _is_forked_child(environment) -> bool:
    options = environment.parsed_options
    return bool(options and getattr(options, "processes", None) and getattr(options, "worker", False))


def check_model(settings: Settings) -> None:
    """Load the model and derive its table (and read the --queries file), so a broken model, table name or query
    file fails before the first user starts."""
    model = load_model(settings.model_path)
    table_for_model(
        model,
        table_option=settings.table,
        partition=settings.partition,
        shards=settings.shards,
        replicas=settings.replicas,
    )
    if settings.queries_file:
        workload_specs(model, settings)


def no_rows_reason(totals, settings: Settings | None, is_master: bool, workers_reporting: int) -> str | None:
    """Why a run that has ended acknowledged no row at all, as one line; None when rows were acknowledged."""
    if totals.inserted:
        return None
    if totals.failed and not totals.in_doubt:
        return f"the database refused all {totals.failed} rows sent (see the errors above)"
    if totals.in_doubt and totals.in_doubt == totals.cut_off:
        return (
            f"the end of the run cut off every batch before the database answered ({totals.cut_off} rows in "
            "doubt); run longer, or give batches time to finish with --stop-timeout"
        )
    if totals.in_doubt:
        return f"every batch sent ended in doubt ({totals.in_doubt} rows: timeouts, resets or HTTP 5xx)"
    if is_master and not workers_reporting:
        return "no worker reported any rows (did the workers connect, and did each get users?)"
    if settings is not None and settings.ingest_mode == "consecutive":
        return (
            "nothing was due yet: in consecutive mode each sensor sends one row every "
            f"{settings.ingest_delta:g} s of wall clock"
        )
    return "no rows were sent: no user ran, or no process owned any sensors (more workers than sensors or users?)"
