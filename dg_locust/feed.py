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

The feed generates rows just ahead of what it hands out, in whole steps when a step has at most
``GENERATION_GRAIN`` rows, else in parts of a step ending on multiples of ``GENERATION_GRAIN`` sensors. So what it
holds besides the per-sensor state is at most one batch plus one step or grain of rows, however large the fleet:
with a million sensors, rows are generated 65,536 sensors at a time, and a batch of 20,000 rows is encoded from
its 20,000 sensors only.
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

# Rows generated at once when a step is larger than this: big enough that numpy's per-call cost (tens of us) is
# spread over many rows, small enough that the rows generated ahead stay a few MB.
GENERATION_GRAIN = 1 << 16


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
        self._field_names = tuple(model.field_columns())
        self.layout = RowLayout(
            [c.name for c in table.columns],
            TS_COLUMN,
            model.tag_codes(self._sensor_ids),
            self._field_names,
            base_ms=self._base_ms,
            delta_ms=self._delta_ms,
        )
        # Rows of the (step, sensor) grid (row r is sensor r % n at step r // n) generated so far: the fleet
        # continues from _next_row. Generated rows not handed out yet: one flat array per field, from grid row
        # _pending_first.
        self._next_row = plan.first_step * len(self._sensor_ids)
        self._pending: list[np.ndarray] = []
        self._pending_first = self._next_row
        self._pending_count = 0
        self.step_limit: int | None = None
        self.rows_generated = 0

    @property
    def sensor_count(self) -> int:
        return len(self._sensor_ids)

    @property
    def exhausted(self) -> bool:
        """True when every sensor has all its INGEST_SIZE rows handed out (never in endless mode)."""
        return self._pending_count == 0 and self._rows_allowed() == 0 and self._size_reached()

    @property
    def next_step(self) -> int:
        """The step of the first row not handed out yet (the progress a master hears)."""
        return self._pending_first // self.sensor_count if self.sensor_count else 0

    def seconds_until_due(self) -> float:
        """In consecutive mode, the wait until the next step's wall time; 0 when rows are available now."""
        if self._pending_count or self.plan.mode != "consecutive" or self._size_reached():
            return 0.0
        if self._next_row % self.sensor_count:
            return 0.0  # the rest of a step whose first part was handed out: due since that part was
        step = self._next_row // self.sensor_count
        due = self._wall_start + (step - self.plan.first_step) * self.plan.ingest_delta
        return max(0.0, due - self._wall_clock())

    def take(self, max_rows: int) -> Batch | None:
        """The next rows, at most ``max_rows``; None when no row is available now (exhausted or not yet due)."""
        shortfall = max_rows - self._pending_count
        if shortfall > 0 and self.sensor_count:
            rows = min(self._generation_end(self._next_row + shortfall) - self._next_row, self._rows_allowed())
            if rows > 0:
                self._generate(rows)
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

    def _generation_end(self, row: int) -> int:
        """``row`` rounded up to where a generation may end: a step boundary, or a grain boundary in a large step."""
        n = self.sensor_count
        step, position = divmod(row, n)
        if position == 0:
            return row
        if n <= GENERATION_GRAIN:
            return (step + 1) * n
        return step * n + min(n, -(-position // GENERATION_GRAIN) * GENERATION_GRAIN)

    def _size_reached(self) -> bool:
        return self.plan.ingest_size > 0 and self._next_row >= self.plan.ingest_size * self.sensor_count

    def _rows_allowed(self) -> int:
        """How many more rows may be generated now (size limit, lease limit, and wall clock when consecutive)."""
        limit = math.inf if self.plan.ingest_size == 0 else self.plan.ingest_size
        if self.step_limit is not None:
            limit = min(limit, self.step_limit)
        if self.plan.mode == "consecutive":
            elapsed = self._wall_clock() - self._wall_start
            due = self.plan.first_step + math.floor(elapsed / self.plan.ingest_delta) + 1
            limit = min(limit, due)
        if limit == math.inf:
            return 1 << 62
        return int(max(0, limit * self.sensor_count - self._next_row))

    def _generate(self, rows: int) -> None:
        generated = self._fleet.next_rows(rows)
        fresh = [generated[name] for name in self._field_names]
        if self._pending_count:
            # What is left over is less than a step or a grain, so this copy is small next to the rows generated.
            fresh = [np.concatenate((old, new)) for old, new in zip(self._pending, fresh, strict=True)]
        else:
            self._pending_first = self._next_row
        self._pending = fresh
        self._pending_count += rows
        self._next_row += rows
        self.rows_generated += rows
