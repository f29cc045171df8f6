"""The run: dg-locust's state for one Locust Environment, and the listeners that drive it.

``DgRuntime.register(environment)`` attaches one runtime to the environment as ``environment.dg`` and hooks it
onto Locust's events (the pattern of Locust's ``contrib`` listeners):

- at ``init`` (``register`` is called from an init listener): maps the seed's ``HOST`` to Locust's host; on a
  master or local runner validates the options and the model, and exits at once with one line (code 2) on bad
  input, and gives in-flight batches a stop timeout;
- ``test_start``: starts a fresh ledger and forgets the previous run's pipelines (the web UI can run many tests);
- ``report_to_master`` / ``worker_report``: cumulative row counters from workers to the master;
- ``test_stopping`` on a master: has every worker stop its users and send its final counters (``dg_finish`` /
  ``dg_final``), so the summary holds the last seconds too;
- ``test_stop``: prints the one-line summary on the master or local runner (and a master's per-worker lines);
- ``quitting``: closes the HTTP pools.

It also owns the pipelines (one per user class in this process), ends the run when every sensor has its
``INGEST_SIZE`` rows, and stops it with one clear message when the database refuses the credentials or cannot be
reached.
"""

from __future__ import annotations

from locust.runners import STATE_MISSING, STATE_RUNNING, STATE_SPAWNING, MasterRunner, WorkerRunner

import logging
import os
import sys
import time

import gevent
from gevent.lock import Semaphore

from dg_locust.client import CrateError
from dg_locust.ids import SensorAssignments
from dg_locust.ledger import REPORT_KEY, RunLedger
from dg_locust.model import ModelError, load_model
from dg_locust.options import SEED_HOST_ENV_VAR, OptionError, Settings, parse_hosts
from dg_locust.pipeline import IngestPipeline
from dg_locust.schema import table_for_model

ABORT_MESSAGE = "dg_abort"
EXHAUSTED_MESSAGE = "dg_exhausted"
FINISH_MESSAGE = "dg_finish"  # master -> workers: stop your users and send your final counters
FINAL_MESSAGE = "dg_final"  # worker -> master: the final counters
FINAL_REPORT_GRACE_S = 5.0
EXIT_BAD_INPUT = 2

logger = logging.getLogger(__name__)


class DgRuntime:
    """dg-locust's state for one environment: ledger, pipelines, sensor assignments and run control."""

    def __init__(self, environment):
        self.environment = environment
        self.ledger = RunLedger()
        self.assignments = SensorAssignments()
        self.pipelines: dict[str, IngestPipeline] = {}
        self._pipeline_lock = Semaphore()
        self._aborted = False
        self._finishing = False
        self._awaiting_final: set[str] = set()

    @classmethod
    def register(cls, environment, runner=None) -> DgRuntime:
        """Attach a runtime to the environment; call it from an ``init`` listener (it does the init work too)."""
        runtime = cls(environment)
        environment.dg = runtime
        events = environment.events
        events.test_start.add_listener(runtime.on_test_start)
        events.test_stopping.add_listener(runtime.on_test_stopping)
        events.test_stop.add_listener(runtime.on_test_stop)
        events.report_to_master.add_listener(runtime.on_report_to_master)
        events.worker_report.add_listener(runtime.on_worker_report)
        events.quitting.add_listener(runtime.on_quitting)
        runtime.on_init(environment, runner or environment.runner)
        return runtime

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
        forked_child = _is_forked_child(environment)
        if (isinstance(runner, WorkerRunner) and not forked_child) or environment.parsed_options is None:
            return  # a separate worker validates what the master sends it, at test start
        problem = self.validate()
        if not problem and not isinstance(runner, WorkerRunner) and not environment.stop_timeout:
            # Locust kills users mid-task by default, which leaves every in-flight batch in doubt. Give a batch
            # the time to finish or time out instead; the master ships this value to its workers.
            environment.stop_timeout = Settings.from_options(environment.parsed_options).timeout + 5
        if problem and forked_child:
            os._exit(EXIT_BAD_INPUT)  # a --processes child: its parent says why, once
        if problem:
            # One line, no traceback: bad input is the user's to fix, not a bug.
            sys.stderr.write(f"dg-locust: {problem}\n")
            sys.stderr.flush()
            sys.exit(EXIT_BAD_INPUT)

    def validate(self) -> str | None:
        """The first problem with the options or the model, as one line; None when all is well."""
        try:
            settings = Settings.from_options(self.environment.parsed_options)
            if self.headless and not self.is_worker:
                parse_hosts(self.environment.host)
            model = load_model(settings.model_path)
            # The table name may come from the model file: check it now, not when the first user starts.
            table_for_model(
                model,
                table_option=settings.table,
                partition=settings.partition,
                shards=settings.shards,
                replicas=settings.replicas,
            )
        except (OptionError, ModelError) as error:
            return str(error)
        return None

    def on_test_start(self, environment, **_kwargs) -> None:
        self.ledger.reset()
        self._close_pipelines()
        self._aborted = False
        self._finishing = False

    def on_test_stop(self, environment, **_kwargs) -> None:
        self.sync_ledger()
        self.ledger.stopped_at = self.ledger.clock()
        if not self.is_worker:
            print(self.ledger.summary_line(), flush=True)
            # Every batch ends as inserted, failed or in doubt: generated == inserted + failed + in_doubt. Retries
            # are re-sends of batches refused with HTTP 429/503; their rows count once, in the final outcome.
            totals = self.ledger.totals()
            print(f"dg outcomes: batches={totals.batches} generated={totals.generated} retries={totals.retries}")
        if self.is_master:
            for line in self.ledger.worker_lines(self.runner.get_worker_index):
                print(line, flush=True)

    def on_report_to_master(self, client_id, data, **_kwargs) -> None:
        self.sync_ledger()
        data[REPORT_KEY] = self.ledger.local_report()

    def on_worker_report(self, client_id, data, **_kwargs) -> None:
        if REPORT_KEY in data:
            self.ledger.merge_worker_report(client_id, data[REPORT_KEY])

    def on_quitting(self, environment, **_kwargs) -> None:
        self._close_pipelines()

    # --- pipelines ---

    def pipeline_for(self, user_class) -> IngestPipeline | None:
        """The pipeline of a user class in this process, created (and its table prepared) by the first user;
        None once the run was aborted (the users queued behind a failed first attempt must not try again)."""
        name = user_class.__name__
        with self._pipeline_lock:
            if name not in self.pipelines and not self._aborted:
                pipeline = IngestPipeline.for_environment(self.environment, name, getattr(user_class, "model", None))
                pipeline.prepare_table()
                self.pipelines[name] = pipeline
            return self.pipelines.get(name)

    def start_user(self, user_class) -> IngestPipeline | None:
        """``pipeline_for`` for a user's on_start; on a problem, stops the run with one message and returns None."""
        try:
            return self.pipeline_for(user_class)
        except (OptionError, ModelError, CrateError) as error:
            self.abort(str(error))
            return None

    def sensor_plan(self, settings: Settings):
        return self.assignments.plan_for_this_process(settings)

    def sync_ledger(self) -> None:
        """Copy what only the pipelines know into the ledger: the table, id column and time window of rows sent."""
        for pipeline in self.pipelines.values():
            rows = pipeline.ledger
            rows.table = pipeline.table.display_name
            rows.id_column = pipeline.model.id_tag.name
            if rows.generated and pipeline.feed is not None:
                settings, base_ms = pipeline.settings, round(pipeline.settings.ingest_ts * 1000)
                # next_step bounds every step handed out (it may be one past the last), so the window covers them all
                rows.cover(
                    base_ms + round(pipeline.feed.plan.first_step * settings.ingest_delta * 1000),
                    base_ms + round(pipeline.feed.next_step * settings.ingest_delta * 1000),
                )

    def _close_pipelines(self) -> None:
        for pipeline in self.pipelines.values():
            pipeline.close()
        self.pipelines.clear()

    # --- run control ---

    def abort(self, message: str) -> None:
        """Stop the whole run because it cannot go on (bad credentials, unreachable database); log it once."""
        if self._aborted:
            return
        self._aborted = True
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
            logger.info("dg-locust: every sensor has its INGEST_SIZE rows; ending the test")
            self._end_run()

    def _end_run(self) -> None:
        # Quit from a fresh greenlet: the caller is usually a user greenlet that the runner is about to kill.
        gevent.spawn(self.runner.quit if self.headless else self.runner.stop)

    def _on_abort_message(self, environment, msg, **_kwargs) -> None:
        if self.is_master and not self._aborted:
            self._aborted = True
            logger.error("dg-locust: a worker reported: %s; stopping the test", msg.data)
            self.environment.process_exit_code = EXIT_BAD_INPUT
            self._end_run()

    def _on_exhausted_message(self, environment, msg, **_kwargs) -> None:
        if self.is_master and self.assignments.slice_exhausted(msg.node_id, msg.data) and not self._finishing:
            self._finishing = True
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
        self.runner.send_message(FINAL_MESSAGE, data[REPORT_KEY])

    def _on_final_message(self, environment, msg, **_kwargs) -> None:
        self.ledger.merge_worker_report(msg.node_id, msg.data)
        self._awaiting_final.discard(msg.node_id)


def _is_forked_child(environment) -> bool:
    options = environment.parsed_options
    return bool(options and getattr(options, "processes", None) and getattr(options, "worker", False))
