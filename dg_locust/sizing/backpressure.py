"""Back-pressure: which batches signal overload, the ceiling they leave, and when an overload episode is over.

Owns `BackPressure`, the part of the policy that reacts to failures (`policy.Policy` decides what to do about them).

* Overload is ``overload=True`` (429, 503, circuit breaker), any rows in doubt, one batch with most of its rows
  refused, or a window whose share of refused rows rose by more than ``fail_share_rise`` above its recent level (the
  first window only sets that level, so a constant share of refused rows - bad data, not load - is no overload).
* The ceiling: sizes at or above the failing size are not used. It rises one grid step per ``ceiling_decay_s``
  seconds; each time a size right below a ceiling that had risen fails again, the decay slows down by 2x (up to 8x).
  A failure that took long (a timeout) stalled every user that sent that size: then the ceiling rises one step per
  20x that time at most, so that looking above it again costs at most ~5 % of the time.
* An episode: overloads in a row, until no batch has failed for two windows' time. If the size was halved and the
  failures went on anyway, and none of its batches timed out (slow batches in doubt: those may really be too big),
  the failures did not depend on the batch size (a node restarting, a 503 storm) and the ceiling means nothing: the
  episode ends in a recovery to the size from before it, at most once per ``ceiling_decay_s`` (so that a real limit
  misjudged costs a few failed batches per period at most).
* Failing: a batch of the size in use or smaller failed within the last window; no decision may grow the size then.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from dg_locust.sizing.grid import OCTAVE, SizeGrid
from dg_locust.sizing.settings import SizerSettings

_MAX_CEILING_REPEATS = 3  # the ceiling's decay slows down by 2x per repeated hit, at most this many times
_TIMEOUT_FACTOR = 10  # a batch in doubt after this many times the healthy latency ran into a timeout
_SLOW_FACTOR = 2  # a failure that took this many times the healthy latency stalled its user: costly to repeat
# After a slow failure the ceiling rises no faster than one grid step per this many times the stall, so that looking
# above it again costs at most ~5 % of the time however long the client's timeout is.
_STALL_PERIODS = 20


@dataclass(frozen=True)
class Outcome:
    """One finished batch, as `BatchSizer.record` received it."""

    size: int
    inserted: int
    failed: int
    in_doubt: int
    duration_s: float
    overload: bool


@dataclass(frozen=True)
class Signal:
    """A batch that signalled overload."""

    why: str  # for the log
    timed_out: bool  # in doubt after a long time, at the size in use or smaller: that size may really be too big
    stall_s: float  # how long it took, if over twice a healthy batch: sizes near it stall the users; else 0


@dataclass(frozen=True)
class Ceiling:
    index: int  # grid index: it and everything above are avoided
    since: float  # when it was set
    repeats: int  # how often it was hit again right after it rose; its decay slows down by 2x each time
    stall_s: float = 0.0  # how long the failure that set it took, if slow


@dataclass
class Episode:
    """Overloads in a row (grid indexes)."""

    before: int  # the incumbent before the episode
    first: int  # the size of its first cut
    lowest: int  # the smallest size it cut at
    timed_out: bool = False  # a batch in doubt after a long time: the size may really be too big


class BackPressure:
    def __init__(self, settings: SizerSettings, grid: SizeGrid) -> None:
        self._s = settings
        self._grid = grid
        self._ceiling: Ceiling | None = None
        self.episode: Episode | None = None  # the overload episode going on
        self._recovered_at = -math.inf  # the last recovery
        self._healthy_latency = 0.0  # moving average of the latency of batches without failures
        # Recent share of refused rows, the level a "rising share" is measured against; None before the first window.
        self._refused_level: float | None = None
        self._last_failure = -math.inf  # the last failed batch no larger than the size in use

    # --- reads ------------------------------------------------------------------------------------------------------

    def ceiling(self, now: float) -> int | None:
        """The ceiling's grid index now, after its decay; None if there is none (or it decayed past the grid)."""
        c = self._ceiling
        if c is None:
            return None
        period = max(self._s.ceiling_decay_s * 2**c.repeats, _STALL_PERIODS * c.stall_s)
        index = c.index + int((now - c.since) // period)
        return index if index < len(self._grid) else None

    def limit(self, now: float) -> int:
        """The highest grid index that may be used now."""
        c = self.ceiling(now)
        return self._grid.top if c is None else min(self._grid.top, c - 1)

    def failing(self, now: float) -> bool:
        """A batch of the size in use (or smaller) failed within the last window: no measurement to trust."""
        return now - self._last_failure < self._s.window_s

    # --- batches and windows ------------------------------------------------------------------------------------------

    def assess(self, o: Outcome, now: float, current: int) -> Signal | None:
        """Account one batch; the overload it signals, if it does."""
        rows = o.inserted + o.failed + o.in_doubt
        refused = o.failed / rows if rows > 0 else 0.0
        # Failures of batches larger than the current size are explained by that size and already acted upon.
        if (o.overload or o.in_doubt > 0 or refused >= 0.5) and o.size <= current:
            self._last_failure = now
        if not (o.failed or o.in_doubt):
            d = o.duration_s
            self._healthy_latency = d if self._healthy_latency == 0 else 0.9 * self._healthy_latency + 0.1 * d
        mostly_refused = refused >= 0.5 and refused > (self._refused_level or 0.0) + self._s.fail_share_rise
        if not (o.overload or o.in_doubt > 0 or mostly_refused):
            return None
        # Stragglers of a larger size are slower anyway, and were acted upon already.
        timed_out = o.in_doubt > 0 and o.size <= current and not o.duration_s <= _TIMEOUT_FACTOR * self._healthy_latency
        why = "overload" if o.overload else "rows in doubt" if o.in_doubt else f"{refused:.0%} of rows refused"
        slow = not o.duration_s <= _SLOW_FACTOR * self._healthy_latency
        return Signal(why, timed_out, stall_s=o.duration_s if slow else 0.0)

    def refused_share_rose(self, share: float) -> bool:
        """Account a window's share of refused rows; True if it rose enough to count as overload."""
        if self._refused_level is None:
            # The first window sets the level: a constant share (bad data, not load) is no overload, a majority is.
            self._refused_level = share
            return share >= 0.5
        rose = share > self._refused_level + self._s.fail_share_rise
        # The level adapts, so a new constant share of refused rows stops cutting after a few windows.
        self._refused_level += 0.5 * (share - self._refused_level)
        return rose

    def overload(self, size: int, now: float, current: int, incumbent: int, stall_s: float = 0.0) -> int | None:
        """A batch of `size` rows signalled overload: lower the ceiling; the grid index to cut to, None for no cut.

        `current` and `incumbent` are grid indexes. A straggler of a size larger than the current one lowers the
        ceiling but does not cut again."""
        fail = self._grid.index_at_or_below(size)
        ceiling = self.ceiling(now)
        if fail > current:
            if ceiling is None or fail < ceiling:
                repeats = self._ceiling.repeats if self._ceiling is not None and ceiling is not None else 0
                self._ceiling = Ceiling(max(fail, 1), now, repeats, stall_s)
            return None
        # Hitting the top allowed size again right after the ceiling rose: the limit is real, decay slower. Only
        # after it rose: failures while first narrowing down onto a fresh ceiling are not a repeat.
        old = self._ceiling
        repeat = ceiling is not None and old is not None and ceiling > old.index and fail == ceiling - 1
        repeats = min(old.repeats + 1, _MAX_CEILING_REPEATS) if repeat and old is not None else 0
        if ceiling is None or fail < ceiling:
            self._ceiling = Ceiling(max(fail, 1), now, repeats, stall_s)  # index 0, the minimum, always stays allowed
        elif old is not None:
            self._ceiling = replace(old, repeats=repeats)
        if self.episode is None:
            self.episode = Episode(before=incumbent, first=fail, lowest=fail)
        self.episode.lowest = min(self.episode.lowest, fail)
        return max(0, fail - OCTAVE)

    def mark_timed_out(self) -> None:
        if self.episode is not None:
            self.episode.timed_out = True

    def recovery(self, now: float, rows_per_s: float) -> Episode | None:
        """After a window: the episode to recover from (its ceiling is forgotten), or None.

        An episode ends once no batch failed for two windows' time; it ends in a recovery if halving did not stop
        its failures and none timed out."""
        episode = self.episode
        if episode is None or rows_per_s <= 0 or now - self._last_failure < 2 * self._s.window_s:
            return None
        if episode.timed_out or episode.lowest > episode.first - OCTAVE:
            self.episode = None  # the cut helped, or batches timed out: a real limit, the ceiling stays
            return None
        if now - self._recovered_at < self._s.ceiling_decay_s:
            return None  # until then the episode stays open and keeps the size to return to
        self.episode = None
        self._ceiling = None
        self._recovered_at = now
        return episode
