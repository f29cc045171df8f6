"""The query workload of one user class in one process: statements, data front, client and accounting, wired.

All query users of a class in a process share one ``QueryWorkload`` (the query counterpart of ``pipeline``): one
HTTP client, one data front, one random stream. ``run_next`` is the whole task of a query user: pick a query by
weight, draw its parameters from the data front (see ``queries``), run it, check that the answer holds at least the
rows the front proves exist, and account for it exactly once (the query ledger and Locust's request event, type
``CrateDB query``, named after the query).

The data front is the latest timestamp of every sensor of ``--id-start``..``--id-end``, read from the database
every ``FRONT_REFRESH_S`` seconds by one statement (a request named ``data_front``, since it is load on the
database too) that looks back only from the oldest sensor's latest row, so partitions prune and it stays cheap. A
front is used once it is ``VISIBILITY_LAG_S`` old: a replica refreshes on its own schedule (1 s by default), so a
row one shard copy showed is then visible on every copy. Until the table holds rows of this run, query users wait;
with ``--drop-table`` they also wait (at most ``DROP_WAIT_S``) until an ingest user of their process has dropped and
created it, so no front is read from the rows about to go. When a sensor the front held is missing from the next
answer, rows vanished (the table was dropped meanwhile): the front is forgotten and found again.
Query users need no sensors of their own: in a distributed run they read every sensor, whichever worker writes it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from gevent.lock import Semaphore

from dg_locust.client import CrateError, CrateHttpClient
from dg_locust.model import Model, load_model
from dg_locust.options import Settings
from dg_locust.queries import (
    FRONT_QUERY_NAME,
    BoundQuery,
    DataFront,
    QuerySpec,
    bind,
    front_sql,
    load_query_file,
    pick,
    shipped_queries,
)
from dg_locust.query_ledger import QueryLedger
from dg_locust.schema import TableSchema, table_for_model

QUERY_REQUEST_TYPE = "CrateDB query"
FRONT_REFRESH_S = 2.0
VISIBILITY_LAG_S = 2.0
NO_DATA_WAIT_S = 0.5
NO_DATA_WARNING_S = 30.0
DROP_WAIT_S = 10.0
TABLE_UNKNOWN_STATUS = 404

logger = logging.getLogger(__name__)


class TooFewRows(Exception):
    """The exception Locust records for an answer with fewer rows than the data front proves exist."""


@dataclass(frozen=True)
class QueryRun:
    """What one task did: how long to wait before the next, or the line that stops the run."""

    wait_s: float = 0.0
    fatal: str | None = None


class QueryWorkload:
    """Everything the query users of one class need in one process, created by the first of them."""

    def __init__(
        self,
        *,
        class_name: str,
        settings: Settings,
        model: Model,
        specs: tuple[QuerySpec, ...],
        client: CrateHttpClient,
        ledger: QueryLedger,
        request_event,
        ingest_prepared: Callable[[], bool] = lambda: True,
        clock=time.monotonic,
    ):
        self.class_name = class_name
        self.settings = settings
        self.model = model
        self.table: TableSchema = workload_table(model, settings)
        self.specs = tuple(spec for spec in specs if spec.weight > 0)
        self.client = client
        self.ledger = ledger
        self.request_event = request_event
        self.ingest_prepared = ingest_prepared  # whether an ingest user of this process has prepared the table
        self.clock = clock
        self.rng = random.Random(settings.seed)
        self.front_statement = front_sql(model, self.table)
        self.front: DataFront | None = None  # the newest front old enough to use
        self._fresh: tuple[float, DataFront] | None = None  # the newest front read, and when
        self._refreshed_at: float | None = None
        self._refresh_lock = Semaphore()
        self._started_at = clock()
        self._warned_no_data = False

    @classmethod
    def create(
        cls,
        *,
        settings: Settings,
        class_name: str,
        host: str | None,
        ledger: QueryLedger,
        request_event,
        model_path,
        ingest_prepared: Callable[[], bool] = lambda: True,
    ) -> QueryWorkload:
        """A workload for the class's own ``model`` (else --model) and its table, with the shipped queries or the
        --queries file's, and an HTTP client checked to reach the database."""
        model = load_model(model_path or settings.model_path)
        client = CrateHttpClient.for_settings(settings, host, pool_size=16)
        for problem in client.check_reachable():
            logger.warning("dg-locust: %s; going on with the other servers", problem)
        return cls(
            class_name=class_name,
            settings=settings,
            model=model,
            specs=workload_specs(model, settings),
            client=client,
            ledger=ledger,
            request_event=request_event,
            ingest_prepared=ingest_prepared,
        )

    # --- the task ---

    def run_next(self) -> QueryRun:
        if self.settings.drop_table and not self.ingest_prepared() and self.clock() - self._started_at < DROP_WAIT_S:
            return QueryRun(wait_s=NO_DATA_WAIT_S)
        fatal = self._refresh_front_if_due()
        if fatal:
            return QueryRun(fatal=fatal)
        if self.front is None:
            self._warn_when_waiting_long()
            return QueryRun(wait_s=NO_DATA_WAIT_S)
        return self.run(bind(pick(self.specs, self.rng), self.front, self.model, self.rng))

    def run(self, bound: BoundQuery) -> QueryRun:
        """Send one bound query, check its rows and account for it."""
        started = time.perf_counter()
        try:
            answer = self.client.execute(bound.spec.statement, bound.args)
        except CrateError as error:
            self._account(bound.spec.name, started, 0, error)
            return QueryRun(fatal=str(error) if error.is_auth else None)
        rows = len(answer.get("rows") or [])
        problem = None
        if rows < bound.min_rows:
            problem = TooFewRows(f"{rows} rows, expected at least {bound.min_rows} (the data front shows them)")
        self._account(bound.spec.name, started, rows, problem)
        return QueryRun()

    def _account(self, name: str, started: float, rows: int, exception: Exception | None) -> None:
        seconds = time.perf_counter() - started
        self.ledger.record(self.class_name, self.table.display_name, name, seconds, rows, exception is not None)
        self.request_event.fire(
            request_type=QUERY_REQUEST_TYPE,
            name=name,
            response_time=seconds * 1000,
            response_length=rows,
            exception=exception,
            context={"user_class": self.class_name, "table": self.table.display_name, "query": name},
        )

    # --- the data front ---

    def _refresh_front_if_due(self) -> str | None:
        """Read the front when it is due; one user reads it while the others go on with the one they have."""
        now = self.clock()
        # Promote before reading: the front read last time is FRONT_REFRESH_S old by now, and the new one replaces it.
        self._promote(now)
        # Until the table shows rows of this run, look again soon; then every FRONT_REFRESH_S.
        interval = FRONT_REFRESH_S if self._fresh else NO_DATA_WAIT_S
        if self._refreshed_at is not None and now - self._refreshed_at < interval:
            return None
        if self._refresh_lock.locked():
            return None
        with self._refresh_lock:
            self._refreshed_at = now
            return self._read_front()

    def _read_front(self) -> str | None:
        since = self._fresh[1].oldest_ms if self._fresh else round(self.settings.ingest_ts * 1000)
        args = [since, self.settings.id_start, self.settings.id_end]
        started = time.perf_counter()
        try:
            answer = self.client.execute(self.front_statement, args)
        except CrateError as error:
            if error.status == TABLE_UNKNOWN_STATUS:
                # The ingest users have not created the table yet: a true answer ("no data yet"), not a failure.
                self._account(FRONT_QUERY_NAME, started, 0, None)
                self._forget_front()
                return None
            self._account(FRONT_QUERY_NAME, started, 0, error)
            return str(error) if error.is_auth else None
        rows = answer.get("rows") or []
        self._account(FRONT_QUERY_NAME, started, len(rows), None)
        latest = {int(sensor): int(ts) for sensor, ts in rows if ts is not None}
        if self._fresh:
            previous = self._fresh[1]
            known = previous.sensor_ids.tolist()
            if any(sensor not in latest for sensor in known):
                # Each of them has a row at or after the look-back (the oldest of their latest rows) unless rows
                # vanished: the table was dropped and written anew. Start over from INGEST_TS.
                self._forget_front()
                return None
            # A copy that refreshed later may show an older latest row; the front never moves back.
            for sensor, ts in zip(known, previous.latest_ms.tolist(), strict=True):
                latest[sensor] = max(latest[sensor], ts)
        if latest:
            self._fresh = (self.clock(), DataFront(self.model, latest))
        return None

    def _forget_front(self) -> None:
        self.front = None
        self._fresh = None

    def _promote(self, now: float) -> None:
        if self._fresh and now - self._fresh[0] >= VISIBILITY_LAG_S:
            self.front = self._fresh[1]

    def _warn_when_waiting_long(self) -> None:
        if not self._warned_no_data and self.clock() - self._started_at > NO_DATA_WARNING_S:
            self._warned_no_data = True
            logger.warning(
                "dg-locust: %s holds no rows of sensors %s..%s since the run's INGEST_TS yet; %s waits for data",
                self.table.display_name,
                self.settings.id_start,
                self.settings.id_end,
                self.class_name,
            )

    def close(self) -> None:
        self.client.close()


def workload_table(model: Model, settings: Settings) -> TableSchema:
    """The table the ingest users of this model write (``--table`` overrides the model's name)."""
    return table_for_model(
        model,
        table_option=settings.table,
        partition=settings.partition,
        shards=settings.shards,
        replicas=settings.replicas,
    )


def workload_specs(model: Model, settings: Settings) -> tuple[QuerySpec, ...]:
    """The --queries file's queries, else the shipped ones; raises QueryFileError for a bad file."""
    table = workload_table(model, settings)
    if settings.queries_file:
        return load_query_file(settings.queries_file, model, table)
    return shipped_queries(model, table)
