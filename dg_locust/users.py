"""The Locust user classes: an ingest user's task inserts one batch, a query user's task runs one query.

``CrateIngestUser`` and ``CrateQueryUser`` are abstract; a locustfile declares concrete classes. A subclass may pin
its own model with a ``model`` class attribute (a path or a shipped model's name); otherwise ``--model`` applies,
and a query user reads the table the ingest users of that model write. Users hold no logic of their own: the
pipeline (see ``pipeline``) owns the feed, the batch sizer, the client and the accounting of inserts, the query
workload (see ``query_workload``) that of queries, and the run context (see ``run``) owns both and the run's
control.

Query users are opt-in, so a run is ingest only unless asked (``QueryUserSelection``): ``--query-users N`` makes N
of the ``-u`` users query users (Locust's ``fixed_count``); naming the query class on the command line
(``dg-locust TemperatureUser QueryUser``) or picking it with ``--class-picker`` splits ``-u`` by the classes'
weights, as Locust always does.
"""

from __future__ import annotations

from locust import User, constant, constant_throughput, task
from locust.exception import StopUser

from collections.abc import Callable

import gevent

from dg_locust.pipeline import IngestPipeline
from dg_locust.query_workload import QueryWorkload
from dg_locust.run import RunContext


class CrateIngestUser(User):
    """Bulk-inserts model-driven time-series rows into CrateDB, one batch per task."""

    abstract = True
    wait_time = constant(0)
    model: str | None = None

    def on_start(self) -> None:
        self.context = RunContext.of(self.environment)
        # None when the run cannot start: the context has said why and is stopping the run. Raising StopUser here
        # would make Locust log a traceback for every user, so the task idles until the stop instead.
        self.pipeline: IngestPipeline | None = self.context.start_user(type(self))

    @task
    def insert_batch(self) -> None:
        if self.pipeline is None:
            gevent.sleep(1)
            return
        sent = self.pipeline.send_next_batch()
        if sent.fatal:
            self.context.abort(sent.fatal)
        if sent.done:
            self.context.class_exhausted(self.pipeline)
            raise StopUser()
        if sent.wait_s:
            gevent.sleep(sent.wait_s)


class CrateQueryUser(User):
    """Runs the query workload against the table the ingest users write, one query per task, at ``--query-rate``
    queries per second (Locust's ``constant_throughput``; 0 = no pause)."""

    abstract = True
    model: str | None = None
    context: RunContext
    workload: QueryWorkload | None
    pace: Callable[[User], float]

    def on_start(self) -> None:
        self.context = RunContext.of(self.environment)
        # None when the run cannot start: the context has said why and is stopping the run (as for ingest users).
        self.workload = self.context.start_query_user(type(self))
        rate = self.context.settings.query_rate if self.context.settings else 0.0
        self.pace = constant_throughput(rate) if rate > 0 else constant(0)

    def wait_time(self) -> float:
        return self.pace(self)

    @task
    def run_query(self) -> None:
        if self.workload is None:
            gevent.sleep(1)
            return
        ran = self.workload.run_next()
        if ran.fatal:
            self.context.abort(ran.fatal)
        if ran.wait_s:
            gevent.sleep(ran.wait_s)


class QueryUserSelection:
    """Keeps query users opt-in, on the master or local runner (the one that splits users over classes).

    At each test start, before Locust hands out users: with ``--query-users N`` each query class gets a
    ``fixed_count`` of N; otherwise a query class runs only if it was chosen (named on the command line, declared
    with a ``fixed_count`` of its own, or picked in the web UI with ``--class-picker``, where Locust's choice is the
    person's), and is left out with a weight of 0 when not."""

    def __init__(self, environment, context: RunContext):
        self.environment = environment
        self.context = context
        self.declared = {
            cls: (cls.weight, cls.fixed_count) for cls in environment.user_classes if issubclass(cls, CrateQueryUser)
        }

    @classmethod
    def register(cls, environment, context: RunContext) -> QueryUserSelection:
        selection = cls(environment, context)
        environment.events.test_start.add_listener(selection.on_test_start)
        return selection

    def on_test_start(self, environment, **_kwargs) -> None:
        settings = self.context.settings
        if settings is None or self.context.is_worker:
            return
        options = environment.parsed_options
        named = set(getattr(options, "user_classes", None) or ())
        picker = bool(getattr(options, "class_picker", False))
        for user_class, (weight, fixed_count) in self.declared.items():
            if settings.query_users:
                user_class.fixed_count = settings.query_users
            elif picker:
                continue
            elif fixed_count or user_class.__name__ in named:
                user_class.weight, user_class.fixed_count = weight, fixed_count
            else:
                user_class.weight, user_class.fixed_count = 0, 0
