"""Straggler-aware measurement: acknowledged rows per second of wall time of one batch size, in windows.

Owns `Window` (one closed measurement) and `WindowMeter`. Several batches are always in flight, and when the size
changes, batches of the old size are still out for up to their latency, so a window for size s only uses batches of
size s and:

* starts after the batches of the previous size have drained: the longest latency seen lately (at most ten windows)
  or, if later, when the last straggler sent before that finished;
* ends at ``now - longest latency of this window``, so that batches still in flight at the end are not missed;
* spreads each batch's acknowledged rows evenly over the time it was in flight and divides the rows that fall inside
  the window by its length. In steady state this is exactly the rows/s of all users together, including the gaps in
  which users build batches (CPU time) rather than wait on the database;
* closes once it spans ``window_s`` seconds AND holds ``min_batches`` batches of size s. While the size does not
  change, the next window continues seamlessly where the last one ended.

Rows refused (``failed``) or of unknown fate (``in_doubt``) count as zero rows/s, so a batch that fails fast never
looks fast; their share is reported separately.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """One closed measurement window."""

    size: int
    rows_per_s: float  # acknowledged rows per second of wall time
    failed_share: float  # refused or in-doubt rows / all rows of the window's batches
    batches: int


@dataclass(frozen=True)
class _Flight:
    sent: float
    done: float
    acknowledged: int


class WindowMeter:
    """Consecutive windows of one batch size at a time (see the module docstring)."""

    def __init__(self, window_s: float, min_batches: int, size: int, now: float) -> None:
        self._window_s = window_s
        self._min_batches = min_batches
        # Longest latency of any batch in the current and the previous window: how long a size change takes to drain.
        self._longest_now = 0.0
        self._longest_before = 0.0
        self.size = size  # the size measured now
        self._start = now  # the window's start, unless a straggler finished later
        self._stragglers_done = now  # when the last straggler of an older size finished
        self._flights: list[_Flight] = []  # batches of `size` that may overlap the window
        self._longest = 0.0  # longest latency among `_flights`
        self._batches = 0  # batches of `size` counted in this window
        self._rows = 0  # all their rows
        self._refused = 0  # their refused and in-doubt rows
        self._begin(size, start=now, carry=[])

    def restart(self, size: int, now: float) -> None:
        """The size changed: measure `size` from when the batches of the old size should have drained."""
        # Bounded so that one timed-out batch does not stall measuring for its whole timeout; stragglers that do come
        # later still push the start (see add).
        drain = min(10 * self._window_s, max(self._longest_now, self._longest_before))
        self._longest_before, self._longest_now = self._longest_now, 0.0
        self._begin(size, start=now + drain, carry=[])

    def _begin(self, size: int, start: float, carry: list[_Flight]) -> None:
        self.size = size
        self._start = start
        self._stragglers_done = start
        self._flights = carry
        self._longest = max((f.done - f.sent for f in carry), default=0.0)
        self._batches = 0
        self._rows = 0
        self._refused = 0

    def add(self, size: int, now: float, duration_s: float, inserted: int, failed: int, in_doubt: int) -> Window | None:
        """Account one finished batch; returns the window if this batch closed one."""
        d = max(0.0, duration_s)
        self._longest_now = max(self._longest_now, d)
        if size != self.size:
            # A straggler of an older size: until it finished, its user was not sending batches of this size, so the
            # window starts after it. Batches of other sizes sent later are odd reports, not stragglers: ignored, so
            # that they cannot hold a window open forever.
            if now - d < self._start:
                self._stragglers_done = max(self._stragglers_done, now)
            return None
        self._flights.append(_Flight(now - d, now, inserted))
        self._longest = max(self._longest, d)
        self._batches += 1
        self._rows += inserted + failed + in_doubt
        self._refused += failed + in_doubt
        a = max(self._start, self._stragglers_done)
        # Not capped: with batches slower than a window, a capped end would miss those still in flight and read low.
        b = now - self._longest
        if self._batches < self._min_batches or b - a < self._window_s:
            return None
        acknowledged = 0.0
        for f in self._flights:
            if f.done <= a or f.sent >= b:
                continue
            flight = f.done - f.sent
            acknowledged += (
                f.acknowledged if flight <= 0 else f.acknowledged * (min(f.done, b) - max(f.sent, a)) / flight
            )
        window = Window(size, acknowledged / (b - a), self._refused / self._rows if self._rows else 0.0, self._batches)
        self._longest_before, self._longest_now = self._longest_now, 0.0
        # Batches that straddle the window's end count partly in the next window, which starts where this one ended.
        self._begin(size, start=b, carry=[f for f in self._flights if f.done > b])
        return window
