"""The sizers the user classes hold: `BatchSizer` (adaptive) and `FixedBatchSize` (``--batch-size N``).

Each wires a clock and a log sink (both injected, so tests drive them with a fake clock) to a `WindowMeter` and, for
the adaptive one, a `Policy`. One sizer exists per Locust user class per worker process and is shared by all of that
class's users (greenlets, so no locking; but calls from different users interleave in any order and several batches
are always in flight). Each user reads `current` before building a batch and calls `record()` when the batch has
finished, with the size it was built with.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Protocol

from dg_locust.sizing.backpressure import Outcome
from dg_locust.sizing.grid import SizeGrid
from dg_locust.sizing.meter import WindowMeter
from dg_locust.sizing.policy import Policy
from dg_locust.sizing.settings import Phase, SizerSettings, SizerState


class Sizer(Protocol):
    """What the user classes code against; both `BatchSizer` and `FixedBatchSize` satisfy it."""

    @property
    def current(self) -> int: ...

    def record(
        self, *, size: int, inserted: int, failed: int, in_doubt: int, duration_s: float, overload: bool
    ) -> None: ...

    def snapshot(self) -> SizerState: ...


class BatchSizer:
    """Adaptive batch size (see the package docstring)."""

    def __init__(
        self,
        settings: SizerSettings,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self._s = settings
        self._clock = clock
        self._log = log
        self._grid = SizeGrid(settings.start, settings.minimum, settings.maximum)
        self._policy = Policy(settings, self._grid)
        self._meter = WindowMeter(settings.window_s, settings.min_batches, self.current, clock())
        self._logged = self.current  # the size the last log line ended at
        self._logged_at = -math.inf

    @property
    def current(self) -> int:
        return self._grid[self._policy.index]

    def record(
        self, *, size: int, inserted: int, failed: int, in_doubt: int, duration_s: float, overload: bool
    ) -> None:
        now = self._clock()
        window = self._meter.add(size, now, duration_s, inserted, failed, in_doubt)
        self._policy.on_batch(Outcome(size, inserted, failed, in_doubt, duration_s, overload), window, now)
        if self.current != self._meter.size:
            self._meter.restart(self.current, now)
        self._maybe_log(now)

    def snapshot(self) -> SizerState:
        p = self._policy
        ceiling = p.pressure.ceiling(self._clock())
        return SizerState(
            current=self.current,
            best_size=self._grid[p.best],
            best_rows_per_s=p.rates.mean_rate(p.best) or 0.0,
            phase=p.phase,
            windows=p.windows,
            backoffs=p.backoffs,
            last_window_rows_per_s=p.last_rate,
            ceiling=None if ceiling is None else self._grid[ceiling],
            noise=p.rates.noise,
        )

    def _maybe_log(self, now: float) -> None:
        if self._log is None or self.current == self._logged or now - self._logged_at < self._s.log_interval_s:
            return
        self._log(f"batch size {self._logged} -> {self.current} ({self._policy.reason})")
        self._logged = self.current
        self._logged_at = now


class FixedBatchSize:
    """``--batch-size N``: `current` never changes; windows are still measured so that `snapshot()` reports rows/s."""

    def __init__(
        self,
        size: int,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] | None = None,
        *,
        window_s: float = SizerSettings.window_s,
        min_batches: int = SizerSettings.min_batches,
    ) -> None:
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        self._size = size
        self._clock = clock
        del log  # accepted for the common interface; a fixed size never changes, so it never logs
        self._meter = WindowMeter(window_s, min_batches, size, clock())
        self._windows = 0
        self._recent: list[float] = []  # rates of the last windows, for the mean it reports
        self._last = 0.0

    @property
    def current(self) -> int:
        return self._size

    def record(
        self, *, size: int, inserted: int, failed: int, in_doubt: int, duration_s: float, overload: bool
    ) -> None:
        window = self._meter.add(size, self._clock(), duration_s, inserted, failed, in_doubt)
        if window is not None:
            self._windows += 1
            self._last = window.rows_per_s
            self._recent = [*self._recent[-7:], window.rows_per_s]

    def snapshot(self) -> SizerState:
        return SizerState(
            current=self._size,
            best_size=self._size,
            best_rows_per_s=statistics.fmean(self._recent) if self._recent else 0.0,
            phase=Phase.FIXED,
            windows=self._windows,
            backoffs=0,
            last_window_rows_per_s=self._last,
        )
