"""Adaptive batch size: a pure decision object that picks how many rows each INSERT batch carries.

Owns `SizerSettings`, `SizerState`, `BatchSizer` (adaptive), `FixedBatchSize` (``--batch-size N``) and the `Sizer`
protocol both satisfy. No I/O, no Locust, no sleeping: the clock and the log sink are injected, so tests drive it with
a fake clock and simulated servers.

One sizer exists per Locust user class per worker process and is shared by all of that class's users (greenlets, so no
locking; but calls from different users interleave in any order and several batches are always in flight). Each user
reads `current` before building a batch and calls `record()` when the batch has finished, with the size it was built
with.

What it optimises
    Acknowledged rows per second of wall time for the whole class in this process, not the latency of one batch.
    Rows that were refused (``failed``) or whose fate is unknown (``in_doubt``) count as zero, so a batch that fails
    fast can never look like a fast batch. Each finished batch is attributed to the size it was sent with, and a
    measurement window for size s only uses batches of size s:

    * it starts after the batches of the previous size have drained: the longest latency seen lately (at most ten
      windows) or, if later, when the last straggler sent before that finished; it ends at ``now - longest latency of
      this window``, so that batches still in flight at the end are not missed;
    * each batch spreads its acknowledged rows evenly over the time it was in flight, and the window's rate is the
      rows that fall inside it divided by its length. In steady state this is exactly the class's rows/s, including
      the gaps in which users build batches (CPU time) rather than wait on the database;
    * it closes once it spans ``window_s`` seconds AND holds ``min_batches`` batches of size s. If the size does not
      change the next window continues seamlessly where the last one ended.

Search (sizes move on a log grid of 8 steps per doubling, ~9 % apart, rounded to two significant digits)
    growing    x2 per window while the rate rises by more than ``margin``; if the very first doubling does not help it
               halves instead ("shrinking") until the rate stops rising.
    narrowing  pattern search around the best size with steps of x1.41, x1.19, x1.09: measure one step below and
               above, move to the winner (the incumbent wins ties within ``margin``), halve the step.
    holding    stay at the best size; every window re-measures it (a moving average, so a stale lucky value decays).
               Every ``probe_every`` windows probe one ~19 % step, alternately above and below ("probing"). A probe
               that wins starts a climb in its direction with accelerating steps (x1.41, x2, x2 ...), then narrowing
               again. If the incumbent's rate moves by more than ``change`` the cluster changed: everything else the
               sizer remembered is forgotten and both neighbours are probed at once; if it moved by more than 2x
               either way, the search restarts with x2 steps (smaller sizes first if the rate fell).
    backoff    overload halves the size at once, not below ``minimum``, and sets a ceiling at the failing size:
               sizes at or above it are not used. Overload is ``overload=True``, any ``in_doubt`` rows, one batch
               with most of its rows refused, or a window whose share of refused rows rose by more than
               ``fail_share_rise`` above its recent level (the first window only sets that level, so a constant share
               of refused rows - bad data, not load - is no overload). The ceiling rises one grid step
               per ``ceiling_decay_s`` seconds; each time a probe hits it again the decay slows down by 2x (up to 8x).
               After one window at the halved size the sizer returns to the best size it remembers below the
               ceiling, or climbs up towards the ceiling with x1.41 steps. Overloads reported by straggling batches of
               a size larger than the current one lower the ceiling but do not cut again.
    recovery   when an overload episode went on although the size was halved, and none of its batches timed out
               (slow batches in doubt: those may really be too big), its failures did not depend on the batch size
               (a node restarting, 503s, a fault hitting every request) and the ceiling it left means nothing. Once
               no batch has failed for two windows' time, the sizer forgets that ceiling and returns to the best size
               it knew before the episode (then narrows around it), so throughput is back within seconds of the
               database's recovery. At most once per ``ceiling_decay_s``, so that a real limit it misjudged costs a
               few failed batches per period at most; until then the episode stays open and keeps the size to return
               to (a fault that comes and goes does not pin the size at the minimum).

    Failures never pull the size up: a window without acknowledged rows, or any batch of the current size or smaller
    in the last ``window_s`` seconds that failed (overload, in doubt, or at least half of its rows refused), makes the
    sizer stay where it is instead of deciding anything (so with mostly refused rows it stays low for good). Sizes
    are always within [minimum, maximum]. Measurements count as stale after ``stale_windows`` windows (windows, not
    seconds, because slow batches make windows long) and are re-measured before a comparison relies on them.

Defaults (`SizerSettings()`)
    start 1_000 rows      small enough not to overload a cold single node; x2 growth reaches 64k in six windows.
    minimum 100 rows      below this, per-request overhead dominates any cluster.
    maximum 100_000 rows  a temperature row is ~60 bytes of JSON, so ~6 MB per request: far below CrateDB's 100 MB
                          ``http.max_content_length``, and it bounds the CPU time a gevent worker spends on one batch.
    window_s 2.0 s, min_batches 8: a window is short, yet averages dozens of batches at typical concurrency 8-32.
    In the simulations of tests/test_sizer.py the incumbent is within +-25 % of the optimum after 2-6 windows and the
    search has ended (holding) after 9-13 windows, 30-80 s of wall time; after a shift of the optimum it re-settles
    within 3-15 windows.

Observability: `snapshot()` returns a `SizerState`; the optional ``log`` callable receives one line when the size has
changed, at most one line per ``log_interval_s`` seconds of the injected clock (changes in between are folded into the
next line), e.g. ``batch size 4000 -> 8000 (growing; 123456 rows/s at 4000)``.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

# Grid resolution: 8 steps per doubling (~9 % apart). Finer steps cannot be told apart through measurement noise.
_OCTAVE = 8
# Hold-phase probes and the climb after a winning probe start with 2 grid steps (~19 %): small enough to cost little
# when the probe loses, large enough that a real improvement stands out of the noise.
_PROBE = 2
# Each time the ceiling is hit again after decaying, its decay period doubles, at most this many times.
_MAX_CEILING_REPEATS = 3


@dataclass(frozen=True)
class SizerSettings:
    """Tuning of `BatchSizer`. The defaults are documented in the module docstring."""

    start: int = 1_000
    minimum: int = 100
    maximum: int = 100_000
    window_s: float = 2.0  # minimum wall time of one measurement window
    min_batches: int = 8  # minimum number of batches of the measured size in one window
    margin: float = 0.02  # a challenger must beat the incumbent's rows/s by this share to win
    probe_every: int = 4  # holding windows between two probes
    change: float = 0.15  # relative move of the incumbent's rate that means "the cluster changed"
    fail_share_rise: float = 0.05  # rise of the refused-row share over its recent level that counts as overload
    ceiling_decay_s: float = 30.0  # seconds per grid step (~9 %) that the overload ceiling rises
    stale_windows: int = 20  # measurements older than this many windows are re-measured before being relied on
    log_interval_s: float = 5.0  # at most one log line per this many seconds

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.start <= self.maximum:
            raise ValueError(f"need 1 <= minimum <= start <= maximum, got {self.minimum}, {self.start}, {self.maximum}")
        if self.window_s <= 0 or self.min_batches < 1 or self.probe_every < 1:
            raise ValueError("window_s must be > 0, min_batches and probe_every >= 1")
        if self.margin < 0 or self.change <= 0 or self.fail_share_rise <= 0:
            raise ValueError("margin must be >= 0, change and fail_share_rise > 0")
        if self.ceiling_decay_s <= 0 or self.stale_windows < 1 or self.log_interval_s < 0:
            raise ValueError("ceiling_decay_s must be > 0, stale_windows >= 1, log_interval_s >= 0")


@dataclass(frozen=True)
class SizerState:
    """What a sizer is doing, for reports and metrics."""

    current: int  # the size handed out now
    best_size: int  # the incumbent: the best size known
    best_rows_per_s: float  # its measured rate (moving average), 0.0 if not measured yet
    phase: str  # growing | shrinking | narrowing | holding | probing | backoff | fixed
    windows: int  # measurement windows closed so far
    backoffs: int  # times the size was cut because of overload (not counting overloads at the minimum)
    last_window_rows_per_s: float  # rate of the last closed window, 0.0 before the first
    ceiling: int | None = None  # sizes at or above this are avoided after overload; None if no ceiling


class Sizer(Protocol):
    """What the user classes code against; both `BatchSizer` and `FixedBatchSize` satisfy it."""

    @property
    def current(self) -> int: ...

    def record(
        self, *, size: int, inserted: int, failed: int, in_doubt: int, duration_s: float, overload: bool
    ) -> None: ...

    def snapshot(self) -> SizerState: ...


@dataclass(frozen=True)
class _Measurement:
    size: int
    rows_per_s: float
    failed_share: float  # refused or in-doubt rows / all rows of the window's batches
    batches: int


class _Meter:
    """Acknowledged rows per wall-clock second of one batch size, in consecutive windows (see module docstring)."""

    def __init__(self, window_s: float, min_batches: int, size: int, now: float) -> None:
        self._window_s = window_s
        self._min_batches = min_batches
        # Longest latency of any batch in the current and the previous window: how long a size change takes to drain.
        self._max_d = 0.0
        self._max_d_prev = 0.0
        self._begin(size, start=now, carry=[])

    def restart(self, size: int, now: float) -> None:
        """The size changed: measure `size` from when the batches of the old size should have drained."""
        # Bounded so that one timed-out batch does not stall measuring for its whole timeout; stragglers that do come
        # later still push the start (see add).
        drain = min(10 * self._window_s, max(self._max_d, self._max_d_prev))
        self._max_d_prev, self._max_d = self._max_d, 0.0
        self._begin(size, start=now + drain, carry=[])

    def _begin(self, size: int, start: float, carry: list[tuple[float, float, int]]) -> None:
        self.size = size
        self._start = start
        self._other_done = start
        self._batches = carry  # (sent, done, acknowledged rows) of batches of this size
        self._longest = max((done - sent for sent, done, _ in carry), default=0.0)
        self._n = 0
        self._rows = 0
        self._refused = 0

    def add(
        self, size: int, now: float, duration_s: float, inserted: int, failed: int, in_doubt: int
    ) -> _Measurement | None:
        """Account one finished batch; returns the measurement if this batch closed a window."""
        d = max(0.0, duration_s)
        self._max_d = max(self._max_d, d)
        if size != self.size:
            # A straggler of an older size: until it finished, its user was not sending batches of this size, so the
            # window starts after it. Batches of other sizes sent later are odd reports, not stragglers: ignored, so
            # that they cannot hold a window open forever.
            if now - d < self._start:
                self._other_done = max(self._other_done, now)
            return None
        self._batches.append((now - d, now, inserted))
        self._longest = max(self._longest, d)
        self._n += 1
        self._rows += inserted + failed + in_doubt
        self._refused += failed + in_doubt
        a = max(self._start, self._other_done)
        # Not capped: with batches slower than a window, a capped end would miss those still in flight and read low.
        b = now - self._longest
        if self._n < self._min_batches or b - a < self._window_s:
            return None
        acked = 0.0
        for sent, done, rows in self._batches:
            if done <= a or sent >= b:
                continue
            flight = done - sent
            acked += rows if flight <= 0 else rows * (min(done, b) - max(sent, a)) / flight
        m = _Measurement(size, acked / (b - a), self._refused / self._rows if self._rows else 0.0, self._n)
        self._max_d_prev, self._max_d = self._max_d, 0.0
        # Batches that straddle the window's end count partly in the next window, which starts where this one ended.
        self._begin(size, start=b, carry=[x for x in self._batches if x[1] > b])
        return m


@dataclass
class _Episode:
    """Overloads in a row, until no batch has failed for two windows' time (grid indexes)."""

    before: int  # the best size before the episode
    first: int  # the size of its first cut
    lowest: int  # the smallest size it cut at
    timed_out: bool = False  # a batch in doubt after a long time: the size may really be too big


def _round2(x: float) -> int:
    """Two significant digits (1414 -> 1400), so that sizes read well in logs; exact below 100."""
    if x < 100:
        return max(1, round(x))
    unit = 10 ** (int(math.log10(x)) - 1)
    return int(round(x / unit) * unit)


def _grid(start: int, minimum: int, maximum: int) -> tuple[tuple[int, ...], int]:
    """Sizes ~9 % apart from minimum to maximum through `start`, and the index of `start`."""
    sizes = {start, minimum, maximum}
    for sign in (1, -1):
        i = 1
        while True:
            x = start * 2 ** (sign * i / _OCTAVE)
            if x >= maximum or x <= minimum:
                break
            sizes.add(_round2(x))
            i += 1
    grid = tuple(sorted(s for s in sizes if minimum <= s <= maximum))
    return grid, grid.index(start)


class BatchSizer:
    """Adaptive batch size shared by the users of one class in one process (see module docstring)."""

    def __init__(
        self,
        settings: SizerSettings,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self._s = settings
        self._clock = clock
        self._log = log
        self._grid, self._idx = _grid(settings.start, settings.minimum, settings.maximum)
        now = clock()
        self._meter = _Meter(settings.window_s, settings.min_batches, self._grid[self._idx], now)
        # Grid index -> (rows/s moving average, number of the window that last measured it). Age counts in windows,
        # not seconds: when batches are slow, windows are long, and a seconds-based age would expire everything.
        self._est: dict[int, tuple[float, int]] = {}
        # Search state.
        self._phase = "growing"
        self._best = self._idx
        self._dir = 1
        self._step = _OCTAVE
        self._moved = False  # the current climb has moved the incumbent at least once
        self._may_flip = True  # the current climb may turn around if its first step loses
        self._h = 0  # narrowing step
        self._probes: list[int] = []
        self._hold_n = 0
        self._probe_up = True
        # Back-pressure state.
        self._ceiling: int | None = None  # grid index: it and everything above are avoided
        self._ceiling_t = now
        self._ceiling_repeats = 0
        # The overload episode going on, None when there is none; see "recovery" in the module docstring.
        self._episode: _Episode | None = None
        self._recovered_t = -math.inf
        self._ok_d = 0.0  # moving average of the latency of batches without failures: what "slow" means
        # Recent share of refused rows, the level a "rising share" is measured against; None before the first window.
        self._fail_base: float | None = None
        self._bad_t = -math.inf  # last failed batch no larger than the current size
        # Counters and logging.
        self._windows = 0
        self._backoffs = 0
        self._last_rate = 0.0
        self._reason = ""
        self._logged = self._grid[self._idx]
        self._log_t = -math.inf

    # --- the interface ---------------------------------------------------------------------------------------------

    @property
    def current(self) -> int:
        return self._grid[self._idx]

    def record(
        self, *, size: int, inserted: int, failed: int, in_doubt: int, duration_s: float, overload: bool
    ) -> None:
        now = self._clock()
        rows = inserted + failed + in_doubt
        refused = failed / rows if rows > 0 else 0.0
        mostly_refused = refused >= 0.5 and refused > (self._fail_base or 0.0) + self._s.fail_share_rise
        # Failures of batches larger than the current size are explained by that size and already acted upon; only
        # those at or below the current size forbid growing.
        if (overload or in_doubt > 0 or refused >= 0.5) and size <= self.current:
            self._bad_t = now
        m = self._meter.add(size, now, duration_s, inserted, failed, in_doubt)
        if not (failed or in_doubt):
            self._ok_d = duration_s if self._ok_d == 0 else 0.9 * self._ok_d + 0.1 * duration_s
        if overload or in_doubt > 0 or mostly_refused:
            # A batch of the current size that stayed in doubt ten times longer than healthy batches take ran into a
            # timeout: it may just be too big for the cluster as it is now, a real limit. (Stragglers of a larger size
            # are slower anyway, and were acted upon already.)
            timed_out = in_doubt > 0 and size <= self.current and not duration_s <= 10 * self._ok_d
            why = "overload" if overload else "rows in doubt" if in_doubt else f"{refused:.0%} of rows refused"
            self._overload(size, now, why)
            if self._episode is not None and timed_out:
                self._episode.timed_out = True
        elif m is not None:
            self._on_window(m, now)
        self._maybe_log(now)

    def snapshot(self) -> SizerState:
        now = self._clock()
        best = self._est.get(self._best)
        ceiling = self._ceiling_at(now)
        return SizerState(
            current=self.current,
            best_size=self._grid[self._best],
            best_rows_per_s=best[0] if best else 0.0,
            phase=self._phase_name(),
            windows=self._windows,
            backoffs=self._backoffs,
            last_window_rows_per_s=self._last_rate,
            ceiling=None if ceiling is None else self._grid[ceiling],
        )

    # --- bookkeeping -----------------------------------------------------------------------------------------------

    def _phase_name(self) -> str:
        if self._phase == "growing" and self._dir < 0:
            return "shrinking"
        return self._phase

    def _fresh(self, i: int) -> float | None:
        e = self._est.get(i)
        return e[0] if e is not None and self._windows - e[1] <= self._s.stale_windows else None

    def _better(self, i: int, j: int) -> bool:
        """Challenger i (freshly measured) beats incumbent j (its last known rate, however old) by the margin."""
        ri, rj = self._fresh(i), self._est.get(j)
        if ri is None:
            return False
        return rj is None or ri > rj[0] * (1 + self._s.margin)

    def _ceiling_at(self, now: float) -> int | None:
        if self._ceiling is None:
            return None
        period = self._s.ceiling_decay_s * 2**self._ceiling_repeats
        c = self._ceiling + int((now - self._ceiling_t) // period)
        if c >= len(self._grid):
            self._ceiling = None
            self._ceiling_repeats = 0
            return None
        return c

    def _hi(self, now: float) -> int:
        """Highest grid index that may be used now."""
        c = self._ceiling_at(now)
        top = len(self._grid) - 1
        return top if c is None else min(top, c - 1)

    def _go(self, i: int, why: str, now: float) -> None:
        if i != self._idx:
            rate = self._fresh(self._idx)
            at = f"; {rate:.0f} rows/s at {self.current}" if rate is not None else ""
            self._reason = f"{why}{at}"
            self._idx = i
            self._meter.restart(self._grid[i], now)

    def _maybe_log(self, now: float) -> None:
        if self._log is None or self.current == self._logged or now - self._log_t < self._s.log_interval_s:
            return
        self._log(f"batch size {self._logged} -> {self.current} ({self._reason})")
        self._logged = self.current
        self._log_t = now

    # --- back-pressure ---------------------------------------------------------------------------------------------

    def _overload(self, size: int, now: float, why: str) -> None:
        fail = max(0, bisect_right(self._grid, size) - 1)
        ceiling = self._ceiling_at(now)
        cut = fail <= self._idx
        if cut:
            # Hitting the top allowed size again right after the ceiling decayed: the limit is real, decay slower.
            # Only after it rose: failures while first narrowing down onto a fresh ceiling are not a repeat.
            at_edge = ceiling is not None and ceiling > self._ceiling and fail == ceiling - 1
            self._ceiling_repeats = min(self._ceiling_repeats + 1, _MAX_CEILING_REPEATS) if at_edge else 0
        if ceiling is None or fail < ceiling:
            # Index 0 (the minimum) always stays allowed.
            self._ceiling = max(fail, 1)
            self._ceiling_t = now
        if not cut:
            return  # a straggler of a larger size: the size was already cut below it
        if self._episode is None:
            self._episode = _Episode(before=self._best, first=fail, lowest=fail)
        self._episode.lowest = min(self._episode.lowest, fail)
        cut_to = max(0, fail - _OCTAVE)
        if cut_to < self._idx:
            self._backoffs += 1
        self._est = {i: e for i, e in self._est.items() if i < self._ceiling}
        self._phase = "backoff"
        self._probes = []
        # The incumbent stays the best size remembered below the ceiling; the cut size competes with it next window.
        known = [(r, i) for i in self._est if (r := self._fresh(i)) is not None]
        self._best = max(known)[1] if known else cut_to
        self._go(cut_to, f"back-off: {why} at {size}", now)

    # --- decisions, one per closed window --------------------------------------------------------------------------

    def _on_window(self, m: _Measurement, now: float) -> None:
        self._windows += 1
        self._last_rate = m.rows_per_s
        if self._fail_base is None:
            # The first window sets the level: a constant share of refused rows (bad data, not load) is no overload,
            # a majority of refused rows is.
            rising = m.failed_share >= 0.5
            self._fail_base = m.failed_share
        else:
            rising = m.failed_share > self._fail_base + self._s.fail_share_rise
            # The level adapts, so a new constant share of refused rows stops cutting after a few windows.
            self._fail_base += 0.5 * (m.failed_share - self._fail_base)
        if rising:
            self._overload(m.size, now, f"{m.failed_share:.0%} of rows refused")
            return
        if self._episode is not None and m.rows_per_s > 0 and now - self._bad_t >= 2 * self._s.window_s:
            episode = self._episode
            if episode.timed_out or episode.lowest > episode.first - _OCTAVE:
                self._episode = None  # the cut helped, or batches timed out: a real limit, the ceiling stays
            elif now - self._recovered_t >= self._s.ceiling_decay_s:
                # Halving did not stop the failures, so they were not about the batch size: forget the ceiling and
                # go back to the best size known before the episode, re-measuring it and its neighbours.
                self._episode = None
                self._ceiling, self._ceiling_repeats = None, 0
                self._recovered_t = now
                self._best = episode.before
                self._est.pop(episode.before, None)
                self._phase, self._h = "narrowing", _PROBE
                self._go(episode.before, "recovered from overload", now)
                return
        if m.rows_per_s <= 0 or now - self._bad_t < self._s.window_s:
            return  # failures are going on: no measurement to trust, and growing is forbidden; keep measuring
        i = self._idx
        prev = self._fresh(i)
        self._est[i] = (m.rows_per_s if prev is None else 0.5 * (prev + m.rows_per_s), self._windows)
        if self._phase == "growing":
            self._on_growing(now)
        elif self._phase == "narrowing":
            self._narrow(now)
        elif self._phase == "backoff":
            self._on_backoff(now)
        else:
            self._on_holding(m, prev, now)

    def _on_growing(self, now: float) -> None:
        if self._idx != self._best:
            if self._better(self._idx, self._best):
                self._best = self._idx
                self._moved = True
                self._step = min(2 * self._step, _OCTAVE)
            elif not self._moved and self._may_flip:
                self._dir = -self._dir
                self._may_flip = False
            else:
                self._start_narrow(max(1, self._step // 2), now)
                return
        self._grow(now)

    def _grow(self, now: float) -> None:
        """Measure the next step of the climb from the incumbent, or narrow down if the climb cannot go on."""
        hi = self._hi(now)
        for _ in range(2):
            target = min(max(self._best + self._dir * self._step, 0), hi)
            if (target - self._best) * self._dir > 0:
                self._go(target, "growing" if self._dir > 0 else "shrinking", now)
                return
            if self._moved or not self._may_flip:
                break
            self._dir = -self._dir
            self._may_flip = False
        self._start_narrow(max(1, self._step // 2), now)

    def _start_narrow(self, h: int, now: float) -> None:
        self._phase = "narrowing"
        self._h = h
        self._narrow(now)

    def _narrow(self, now: float) -> None:
        hi = self._hi(now)
        self._best = min(self._best, hi)
        while self._h >= 1:
            cands = [i for i in (self._best - self._h, self._best + self._h) if 0 <= i <= hi]
            todo = [i for i in [self._best, *cands] if self._fresh(i) is None]
            if todo:
                self._go(todo[0], "narrowing", now)
                return
            top = max(cands, key=lambda i: self._est[i][0], default=None)
            if top is not None and self._better(top, self._best):
                self._best = top
            self._h //= 2
        self._phase = "holding"
        self._hold_n = 0
        self._probes = []
        self._go(self._best, "holding", now)

    def _on_backoff(self, now: float) -> None:
        if self._best != self._idx and self._best <= self._hi(now) and self._better(self._best, self._idx):
            # The best size remembered below the ceiling beats the cut size: go back to it, check its neighbours.
            self._start_narrow(_PROBE, now)
            return
        self._best = self._idx
        self._phase = "growing"
        self._dir, self._step, self._moved, self._may_flip = 1, 2 * _PROBE, False, False
        self._grow(now)

    def _probe_targets(self, now: float, up: bool) -> list[int]:
        """Probe sizes next to the incumbent, the one in direction `up` first; none where a bound or ceiling is."""
        above = min(self._best + _PROBE, self._hi(now))
        below = max(self._best - _PROBE, 0)
        out = [i for i in (above, below) if i != self._best]
        return out if up else out[::-1]

    def _on_holding(self, m: _Measurement, prev: float | None, now: float) -> None:
        i = self._idx
        if i != self._best:
            # A probe just finished.
            if self._better(i, self._best):
                self._dir = 1 if i > self._best else -1
                self._best = i
                self._phase = "growing"
                self._step, self._moved, self._may_flip = 2 * _PROBE, True, False
                self._grow(now)
                return
            if self._probes:
                self._go(self._probes.pop(0), "probing", now)
                return
            self._phase = "holding"
            self._go(self._best, "holding", now)
            return
        if i > self._hi(now):
            # The ceiling came down on the incumbent (an overload of another size): search below it.
            self._start_narrow(_PROBE, now)
            return
        ratio = m.rows_per_s / prev if prev else 1.0
        if abs(ratio - 1) > self._s.change:
            # The cluster changed: what was measured before no longer holds. Keep this window only.
            self._est = {i: (m.rows_per_s, self._windows)}
            self._hold_n = 0
            if not 0.5 <= ratio <= 2:
                # A big change can move the optimum far: search again with x2 steps, smaller sizes first if the rate
                # collapsed (the safe side for a struggling cluster), larger first if it jumped.
                self._phase = "growing"
                self._dir, self._step, self._moved, self._may_flip = (1 if ratio > 1 else -1), _OCTAVE, False, True
                self._grow(now)
                return
            self._probes = self._probe_targets(now, up=self._probe_up)
        else:
            self._hold_n += 1
            if self._hold_n >= self._s.probe_every:
                self._hold_n = 0
                up, self._probe_up = self._probe_up, not self._probe_up
                # Only the side whose turn it is: at a ceiling or bound, the other side must not get probed twice as
                # often.
                self._probes = [i for i in self._probe_targets(now, up=up) if (i > self._best) == up]
        if self._probes:
            self._phase = "probing"
            self._go(self._probes.pop(0), "probing", now)


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
        self._log = log  # accepted for the common interface; a fixed size never changes, so it never logs
        self._meter = _Meter(window_s, min_batches, size, clock())
        self._windows = 0
        self._avg = 0.0
        self._last = 0.0

    @property
    def current(self) -> int:
        return self._size

    def record(
        self, *, size: int, inserted: int, failed: int, in_doubt: int, duration_s: float, overload: bool
    ) -> None:
        m = self._meter.add(size, self._clock(), duration_s, inserted, failed, in_doubt)
        if m is not None:
            self._windows += 1
            self._last = m.rows_per_s
            self._avg = m.rows_per_s if self._windows == 1 else 0.5 * (self._avg + m.rows_per_s)

    def snapshot(self) -> SizerState:
        return SizerState(
            current=self._size,
            best_size=self._size,
            best_rows_per_s=self._avg,
            phase="fixed",
            windows=self._windows,
            backoffs=0,
            last_window_rows_per_s=self._last,
        )
