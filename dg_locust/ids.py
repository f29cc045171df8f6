"""Who owns which sensors: the id range ID_START..ID_END split across processes so no two share a sensor.

Within one process all users of a class share one feed (see ``feed``), so only processes need disjoint ids.
A local run owns the whole range. In a distributed run the master splits the range into contiguous slices, one
per connected worker (in worker-index order), and sends each worker its slice in a ``dg_assign`` message at test
start, which Locust delivers before the spawn message. A worker with no slice (more workers than sensors) owns no
sensors and its users stop at once.
"""

from __future__ import annotations

from locust.runners import MasterRunner, WorkerRunner

import logging

import gevent
import numpy as np

ASSIGN_MESSAGE = "dg_assign"
ASSIGNMENT_WAIT_S = 10.0

logger = logging.getLogger(__name__)


def split_range(first: int, last: int, parts: int) -> list[tuple[int, int]]:
    """Split first..last (inclusive) into ``parts`` contiguous slices as even as possible; empty ones are (x, x-1)."""
    total = last - first + 1
    slices, start = [], first
    for index in range(parts):
        size = total // parts + (1 if index < total % parts else 0)
        slices.append((start, start + size - 1))
        start += size
    return slices


class SensorAssignments:
    """The sensor ids (and first step) this process owns; on a master, the slices handed to workers."""

    def __init__(self):
        self.runner = None
        self._assigned: dict | None = None

    def register(self, environment, runner) -> None:
        self.runner = runner
        if isinstance(runner, WorkerRunner):
            runner.register_message(ASSIGN_MESSAGE, self._on_assign)
        if isinstance(runner, MasterRunner):
            environment.events.test_start.add_listener(self._assign_workers)

    def _assign_workers(self, environment, **_kwargs) -> None:
        from dg_locust.options import Settings  # at test start the options are final

        settings = Settings.from_options(environment.parsed_options)
        workers = sorted(self.runner.clients.all, key=lambda client: self.runner.get_worker_index(client.id))
        slices = split_range(settings.id_start, settings.id_end, max(len(workers), 1))
        for client, (first, last) in zip(workers, slices, strict=False):
            self.runner.send_message(ASSIGN_MESSAGE, {"first": first, "last": last, "step": 0}, client_id=client.id)

    def _on_assign(self, environment, msg, **_kwargs) -> None:
        self._assigned = dict(msg.data)

    def plan_for_this_process(self, settings) -> tuple[np.ndarray, int]:
        """(sensor ids, first step) for this process's feed."""
        if not isinstance(self.runner, WorkerRunner):
            return np.arange(settings.id_start, settings.id_end + 1, dtype=np.int64), 0
        waited = 0.0
        while self._assigned is None and waited < ASSIGNMENT_WAIT_S:
            gevent.sleep(0.05)
            waited += 0.05
        if self._assigned is None:
            logger.warning("dg-locust: no sensor assignment from the master; this worker sends nothing")
            return np.empty(0, dtype=np.int64), 0
        first, last = self._assigned["first"], self._assigned["last"]
        return np.arange(first, last + 1, dtype=np.int64), int(self._assigned["step"])
