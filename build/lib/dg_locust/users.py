"""The Locust user classes: each task inserts one batch through its class's shared pipeline.

``CrateIngestUser`` is abstract; a locustfile declares concrete classes. A subclass may pin its own model with a
``model`` class attribute (a path or a shipped model's name); otherwise ``--model`` applies. Users hold no logic of
their own: the pipeline (see ``pipeline``) owns the feed, the batch sizer, the client and the accounting, and the run
context (see ``run``) owns the pipelines and the run's control.
"""

from __future__ import annotations

from locust import User, constant, task
from locust.exception import StopUser

import gevent

from dg_locust.pipeline import IngestPipeline
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
