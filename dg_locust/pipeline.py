"""The ingest pipeline of one user class in one process: model, table, feed, sizer, client and ledger, wired.

All users of a class in a process share one pipeline, so they share one feed (no two users ever send the same
(sensor, timestamp)), one adaptive batch sizer (it sees the throughput of the whole class) and one client (one
connection pool per server): HTTP (``client``) for bulk and unnest, the PostgreSQL port (``pg_client``) for pg and
pg-unnest. ``send_next_batch`` is the whole task of a user: take the next rows, encode,
insert, and account for the outcome exactly once (in the ledger, the sizer and Locust's request event).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from gevent import GreenletExit

from dg_locust.batch import Batch
from dg_locust.client import REQUEST_TYPE, CrateError, CrateHttpClient, InsertOutcome
from dg_locust.feed import FeedPlan, RowFeed
from dg_locust.ids import NO_SLICE_WAIT_S, SensorAssignments
from dg_locust.ledger import ClassLedger
from dg_locust.model import Model, load_model
from dg_locust.options import PG_METHODS, Settings
from dg_locust.pg_client import CratePgClient
from dg_locust.schema import TableSchema, table_for_model
from dg_locust.sizing import BatchSizer, FixedBatchSize, SizerSettings

logger = logging.getLogger(__name__)


class RowsNotInserted(Exception):
    """The exception Locust records for a batch whose rows were not all acknowledged."""


@dataclass(frozen=True)
class SentBatch:
    """What the pipeline hands back to a user after one task: how long to wait, or whether to stop."""

    rows: int = 0
    wait_s: float = 0.0
    done: bool = False
    fatal: str | None = None  # the run cannot go on (wrong credentials, ...): the user stops it with this line


class IngestPipeline:
    """Everything one user class needs in one process, created once at the first user's start.

    Its dependencies are handed to it (settings, model, ledger, sensor assignments, Locust's request event), so it
    never reaches back into the run that owns it."""

    def __init__(
        self,
        *,
        class_name: str,
        settings: Settings,
        model: Model,
        client: CrateHttpClient | CratePgClient,
        ledger: ClassLedger,
        assignments: SensorAssignments,
        request_event,
    ):
        self.class_name = class_name
        self.settings = settings
        self.model = model
        self.table: TableSchema = table_for_model(
            model,
            table_option=settings.table,
            partition=settings.partition,
            shards=settings.shards,
            replicas=settings.replicas,
        )
        self.statement = self.table.insert_sql(settings.insert_method)
        self.request_name = f"{settings.insert_method} {self.table.display_name}"
        self.client = client
        self.ledger = ledger
        # What the rows go to, for metric labels and --verify, known before the first batch
        ledger.table = self.table.display_name
        ledger.id_column = model.id_tag.name
        self.assignments = assignments
        self.request_event = request_event
        # None until this process owns sensors: at once in a local run, once the master grants a slice on a worker
        self.feed: RowFeed | None = None
        self._build_feed()
        self.sizer = make_sizer(settings, log=logger.info)
        self.in_flight = 0  # batches sent and not answered yet; the run ends only when this is 0

    @classmethod
    def create(
        cls,
        *,
        settings: Settings,
        class_name: str,
        host: str | None,
        ledger: ClassLedger,
        assignments: SensorAssignments,
        request_event,
        model_path=None,
    ) -> IngestPipeline:
        """A pipeline with its model (the class's own ``model`` path, else --model) and its insert method's client."""
        return cls(
            class_name=class_name,
            settings=settings,
            model=load_model(model_path or settings.model_path),
            client=client_for_settings(settings, host, pool_size=64),
            ledger=ledger,
            assignments=assignments,
            request_event=request_event,
        )

    def _build_feed(self) -> bool:
        plan = self.assignments.plan_for_this_process(self.settings)
        if plan is None:
            return False
        # the master resolves INGEST_TS once for all workers; settings carry it so every reader sees the same value
        self.settings = settings = replace(self.settings, ingest_ts=plan.ingest_ts)
        self.feed = RowFeed(
            self.model,
            self.table,
            FeedPlan(
                sensor_ids=plan.sensor_ids,
                ingest_ts=settings.ingest_ts,
                ingest_delta=settings.ingest_delta,
                mode=settings.ingest_mode,
                ingest_size=settings.ingest_size,
                seed=settings.seed,
                first_step=plan.first_step,
            ),
        )
        self.assignments.attach(self.feed)
        return True

    def prepare_table(self) -> None:
        """Check every server answers, then create the table (and drop it first only with --drop-table).

        CREATE TABLE IF NOT EXISTS from many workers at once is safe; a 409 from a race is taken as success."""
        for problem in self.client.check_reachable():
            logger.warning("dg-locust: %s; going on with the other servers", problem)
        if self.settings.drop_table:
            self.client.execute(self.table.drop_sql())
        try:
            self.client.execute(self.table.create_sql())
        except CrateError as error:
            if error.status != 409:
                raise

    def send_next_batch(self) -> SentBatch:
        if self.feed is None and not self._build_feed():
            return SentBatch(wait_s=NO_SLICE_WAIT_S)  # a worker without sensors (yet): see ids
        size = self.sizer.current
        batch = self.feed.take(size)
        if batch is None:
            if self.feed.exhausted:
                self.ledger.exhausted = True
                return SentBatch(done=True)
            return SentBatch(wait_s=min(max(self.feed.seconds_until_due(), 0.01), 1.0))
        self.ledger.generated += batch.row_count
        self._cover_sent_steps()
        body = batch.encode(self.settings.insert_method, self.statement)
        started = time.perf_counter()
        self.in_flight += 1
        try:
            outcome = self.client.insert(body, batch.row_count, self.settings.insert_method)
        except GreenletExit:
            # The run stopped while this batch was in flight, so nobody will hear its answer: its rows are in doubt.
            # No request event: there was no response to time, and the database did not fail.
            self.ledger.record_cut_off(batch.row_count)
            raise
        finally:
            self.in_flight -= 1
        self._account(batch, size, started, outcome)
        return SentBatch(rows=batch.row_count, fatal=(outcome.error or "fatal error") if outcome.fatal else None)

    def _cover_sent_steps(self) -> None:
        """Widen the ledger's time window to every step handed out so far (--verify counts rows in it)."""
        base_ms, delta = round(self.settings.ingest_ts * 1000), self.settings.ingest_delta
        # next_step bounds every step handed out (it may be one past the last), so the window covers them all
        self.ledger.cover(
            base_ms + round(self.feed.plan.first_step * delta * 1000),
            base_ms + round(self.feed.next_step * delta * 1000),
        )

    def _account(self, batch: Batch, size: int, started: float, outcome: InsertOutcome) -> None:
        duration = time.perf_counter() - started
        self.ledger.record(outcome)
        if not outcome.unreachable:
            # No server took the request: that says nothing about batch size, and feeding it to the sizer would
            # shrink the batches to the minimum during an outage and hold throughput down long after it.
            self.sizer.record(
                size=size,
                inserted=outcome.inserted,
                failed=outcome.failed,
                in_doubt=outcome.in_doubt,
                duration_s=duration,
                overload=outcome.overload,
            )
        state = self.sizer.snapshot()
        self.ledger.batch_size = state.current
        self.ledger.best_batch_size = state.best_size
        self.ledger.best_rows_per_s = state.best_rows_per_s
        exception = None
        if outcome.failed or outcome.in_doubt:
            exception = RowsNotInserted(outcome.error or f"{outcome.failed + outcome.in_doubt} rows not inserted")
        self.request_event.fire(
            request_type=REQUEST_TYPE,
            name=self.request_name,
            response_time=duration * 1000,
            response_length=outcome.inserted,
            exception=exception,
            context={
                "rows": batch.row_count,
                "failed": outcome.failed,
                "in_doubt": outcome.in_doubt,
                "user_class": self.class_name,
                "table": self.table.display_name,
            },
        )

    def close(self) -> None:
        self.client.close()


def client_for_settings(settings: Settings, host: str | None, *, pool_size: int = 32):
    """The client of the run's insert method: CrateDB's PostgreSQL port for pg and pg-unnest, HTTP otherwise."""
    if settings.insert_method in PG_METHODS:
        return CratePgClient.for_settings(settings, host, pool_size=pool_size)
    return CrateHttpClient.for_settings(settings, host, pool_size=pool_size)


def make_sizer(settings: Settings, log=None):
    if settings.batch_size is not None:
        return FixedBatchSize(settings.batch_size)
    start = min(max(SizerSettings().start, settings.batch_size_min), settings.batch_size_max)
    return BatchSizer(
        SizerSettings(start=start, minimum=settings.batch_size_min, maximum=settings.batch_size_max), log=log
    )
