"""The row feed: hands this process's sensor rows to its users, in time order, each (sensor, step) exactly once.

One feed exists per user class per process and all of that class's users take batches from it, so however many
users run, no two of them ever produce the same (sensor, timestamp). Rows come step by step (every sensor's row of
step k, then step k + 1); a batch is simply the next ``n`` rows, so it may start or end in the middle of a step.

- Step k of a sensor has the timestamp ``ingest_ts + k * ingest_delta`` seconds, sent as epoch milliseconds.
- ``ingest_size`` (> 0) limits every sensor to that many steps; then the feed is exhausted.
- In ``consecutive`` mode step k is not handed out before ``wall_start + k * ingest_delta`` seconds of wall clock,
  so every sensor emits one row per delta in real time; ``fast`` mode hands rows out as fast as they are taken.
- ``step_limit`` (optional) caps the steps handed out further, for leases granted by a distributed master.

The feed is not thread-safe; under gevent its ``take`` never yields, so greenlets cannot interleave inside it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dg_locust.batch import Batch
from dg_locust.generator import Fleet
from dg_locust.schema import TS_COLUMN


@dataclass(frozen=True)
class FeedPlan:
    """Where and how fast the feed runs: its sensors, first step, timing and size limits."""

    sensor_ids: np.ndarray
    ingest_ts: float
    ingest_delta: float
    mode: str  # fast or consecutive
    ingest_size: int  # steps per sensor, 0 = endless
    seed: int | None
    first_step: int = 0


class RowFeed:
    """Generates and hands out the next rows of a set of sensors as batches in table column order."""

    def __init__(self, model, table, plan: FeedPlan, *, wall_clock: Callable[[], float] = time.time):
        self.plan = plan
        self._wall_clock = wall_clock
        self._wall_start = wall_clock()
        self._sensor_ids = np.asarray(plan.sensor_ids, dtype=np.int64)
        self._fleet = Fleet(model, self._sensor_ids, plan.seed)
        self._base_ms = round(plan.ingest_ts * 1000)
        self._delta_ms = plan.ingest_delta * 1000
        self._tag_values = model.tag_values(self._sensor_ids)
        self._column_order = [c.name for c in table.columns]
        self._next_step = plan.first_step  # the first step not generated yet
        self._pending: dict[str, np.ndarray] = {}  # generated rows not handed out yet, flattened
        self._pending_steps = np.empty(0, dtype=np.int64)
        self.step_limit: int | None = None
        self.rows_generated = 0

    @property
    def sensor_count(self) -> int:
        return len(self._sensor_ids)

    @property
    def exhausted(self) -> bool:
        """True when every sensor has all its INGEST_SIZE rows handed out (never in endless mode)."""
        return self._pending_steps.size == 0 and self._steps_allowed() == 0 and self._size_reached()

    @property
    def next_step(self) -> int:
        """The first step none of whose rows have been handed out (the progress a master hears)."""
        return int(self._pending_steps[0]) if self._pending_steps.size else self._next_step

    def seconds_until_due(self) -> float:
        """In consecutive mode, the wait until the next step's wall time; 0 when rows are available now."""
        if self._pending_steps.size or self.plan.mode != "consecutive" or self._size_reached():
            return 0.0
        due = self._wall_start + (self._next_step - self.plan.first_step) * self.plan.ingest_delta
        return max(0.0, due - self._wall_clock())

    def take(self, max_rows: int) -> Batch | None:
        """The next rows, at most ``max_rows``; None when no row is available now (exhausted or not yet due)."""
        shortfall = max_rows - self._pending_steps.size
        if shortfall > 0:
            steps = min(math.ceil(shortfall / self.sensor_count), self._steps_allowed())
            if steps > 0:
                self._generate(steps)
        count = min(max_rows, self._pending_steps.size)
        if count == 0:
            return None
        steps = self._pending_steps[:count]
        columns = tuple(self._pending[name][:count] for name in self._column_order)
        self._pending = {name: values[count:] for name, values in self._pending.items()}
        self._pending_steps = self._pending_steps[count:]
        return Batch(columns=columns, row_count=count, first_step=int(steps[0]), last_step=int(steps[-1]))

    def _size_reached(self) -> bool:
        return self.plan.ingest_size > 0 and self._next_step >= self.plan.ingest_size

    def _steps_allowed(self) -> int:
        """How many more steps may be generated now (size limit, lease limit, and wall clock when consecutive)."""
        limit = math.inf if self.plan.ingest_size == 0 else self.plan.ingest_size
        if self.step_limit is not None:
            limit = min(limit, self.step_limit)
        if self.plan.mode == "consecutive":
            elapsed = self._wall_clock() - self._wall_start
            due = self.plan.first_step + math.floor(elapsed / self.plan.ingest_delta) + 1
            limit = min(limit, due)
        return int(max(0, limit - self._next_step)) if limit != math.inf else 1 << 30

    def _generate(self, steps: int) -> None:
        sensors = self.sensor_count
        step_numbers = np.arange(self._next_step, self._next_step + steps, dtype=np.int64)
        row_steps = np.repeat(step_numbers, sensors)
        fresh: dict[str, np.ndarray] = {
            TS_COLUMN: self._base_ms + np.rint(row_steps * self._delta_ms).astype(np.int64),
        }
        for name, values in self._tag_values.items():
            fresh[name] = np.tile(values, steps)
        for name, values in self._fleet.next_steps(steps).items():
            fresh[name] = values.reshape(-1)
        self._next_step += steps
        self.rows_generated += steps * sensors
        if self._pending_steps.size:
            fresh = {name: np.concatenate((self._pending[name], values)) for name, values in fresh.items()}
            row_steps = np.concatenate((self._pending_steps, row_steps))
        self._pending = fresh
        self._pending_steps = row_steps
