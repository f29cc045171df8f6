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

Only the field values are generated per row. A batch carries them with its position in the (step, sensor) grid,
and its encodings (``batch.RowLayout``) add each step's timestamp and each sensor's pre-encoded tags, so no
timestamp or tag array is repeated or tiled per batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dg_locust.batch import Batch, RowLayout
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
        self._field_names = tuple(model.field_columns())
        self.layout = RowLayout(
            [c.name for c in table.columns],
            TS_COLUMN,
            self._tag_values,
            self._field_names,
            base_ms=self._base_ms,
            delta_ms=self._delta_ms,
        )
        self._next_step = plan.first_step  # the first step not generated yet
        # Generated rows not handed out yet: one flat array per field, starting at grid row _pending_first
        # (row r is sensor r % n at step r // n).
        self._pending: list[np.ndarray] = []
        self._pending_first = plan.first_step * len(self._sensor_ids)
        self._pending_count = 0
        self.step_limit: int | None = None
        self.rows_generated = 0

    @property
    def sensor_count(self) -> int:
        return len(self._sensor_ids)

    @property
    def exhausted(self) -> bool:
        """True when every sensor has all its INGEST_SIZE rows handed out (never in endless mode)."""
        return self._pending_count == 0 and self._steps_allowed() == 0 and self._size_reached()

    @property
    def next_step(self) -> int:
        """The first step none of whose rows have been handed out (the progress a master hears)."""
        return self._pending_first // self.sensor_count if self._pending_count else self._next_step

    def seconds_until_due(self) -> float:
        """In consecutive mode, the wait until the next step's wall time; 0 when rows are available now."""
        if self._pending_count or self.plan.mode != "consecutive" or self._size_reached():
            return 0.0
        due = self._wall_start + (self._next_step - self.plan.first_step) * self.plan.ingest_delta
        return max(0.0, due - self._wall_clock())

    def take(self, max_rows: int) -> Batch | None:
        """The next rows, at most ``max_rows``; None when no row is available now (exhausted or not yet due)."""
        shortfall = max_rows - self._pending_count
        if shortfall > 0:
            steps = min(math.ceil(shortfall / self.sensor_count), self._steps_allowed())
            if steps > 0:
                self._generate(steps)
        count = min(max_rows, self._pending_count)
        if count <= 0:
            return None
        first = self._pending_first
        fields = tuple(values[:count] for values in self._pending)
        self._pending = [values[count:] for values in self._pending]
        self._pending_first += count
        self._pending_count -= count
        n = self.sensor_count
        return Batch(
            layout=self.layout,
            first_row=first,
            row_count=count,
            fields=fields,
            first_step=first // n,
            last_step=(first + count - 1) // n,
        )

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
        generated = self._fleet.next_steps(steps)
        fresh = [generated[name].reshape(-1) for name in self._field_names]
        if self._pending_count:
            # At most one step's worth is left over, so this copy is small next to the fresh rows.
            fresh = [np.concatenate((old, new)) for old, new in zip(self._pending, fresh, strict=True)]
        else:
            self._pending_first = self._next_step * self.sensor_count
        self._pending = fresh
        self._pending_count += steps * self.sensor_count
        self._next_step += steps
        self.rows_generated += steps * self.sensor_count
