"""The adaptive sizer's decisions: which grid size to measure next, from closed windows and failed batches.

Owns `Policy`. It sees only grid indexes, windows (`meter.Window`) and batch outcomes; the measurement is the
meter's, the statistics the rate book's (`evidence`), the reaction to failures `backpressure`'s.

Judging a challenger against the incumbent (`_judge`), with ``gain`` the difference of their mean log rates, ``se``
its standard error from the measured noise and ``z = confidence``:

* take it if ``gain > max(margin, z * se)``: it is better, by more than the noise explains;
* a smaller challenger is also taken if ``gain - z * se >= -margin`` against the best size measured: as far as the
  noise lets one tell it costs at most the margin, and smaller batches are cheaper (memory, latency). On a plateau
  this leads to the smallest size within the margin of the best;
* keep the incumbent once the challenger cannot win with more windows, or after ``confirm_windows`` windows;
  otherwise measure another window of whichever of the two has fewer. A noisy cluster thus makes close calls take
  more windows and end with the incumbent, instead of following the noise;
* but a challenger that leads by more than the margin, not yet by ``z * se``, is measured on and judged once more
  at ``lead_windows`` windows. On a real node one window's rate varies by +-15-30 %, so three windows cannot show a
  gain below ~25 %, and giving up there kept sizes that were worse by that much. A leader is probably the better
  size, so measuring it longer costs little; it stops early only once its lead is gone. It is judged once more, not
  after every window, because each look is another chance for the noise to pass for a gain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from dg_locust.sizing.backpressure import BackPressure, Outcome
from dg_locust.sizing.evidence import RateBook
from dg_locust.sizing.grid import OCTAVE, SizeGrid
from dg_locust.sizing.meter import Window
from dg_locust.sizing.settings import Phase, SizerSettings

# Hold-phase probes and the climb after a winning probe start with 2 grid steps (~19 %): small enough to cost little
# when the probe loses, large enough that a real improvement stands out of the noise.
_PROBE = 2
# A holding window whose rate lies this many standard errors from the incumbent's mean is a change of the cluster
# (and at least `SizerSettings.change`): so rare as noise that it costs a few probes when it is noise after all.
_SURPRISE_Z = 3.0


class _Verdict(Enum):
    TAKE = "take"  # the challenger replaces the incumbent
    KEEP = "keep"  # the incumbent stays
    MORE = "more"  # measure the challenger another window


@dataclass
class _Climb:
    """A climb in one direction from the incumbent, with steps that double while they win (up to x2)."""

    direction: int  # +1 larger sizes, -1 smaller
    step: int  # grid steps
    moved: bool  # the incumbent moved at least once
    may_flip: bool  # the climb may turn around if its first step loses


class Policy:
    """The decisions of one `BatchSizer`; `index` is the grid index of the size handed out now."""

    def __init__(self, settings: SizerSettings, grid: SizeGrid) -> None:
        self._s = settings
        self._grid = grid
        self.index = grid.start_index
        self.best = grid.start_index  # the incumbent
        self.phase = Phase.GROWING
        self.reason = ""  # why the size last changed, for the log
        self.windows = 0  # windows closed so far
        self.backoffs = 0
        self.last_rate = 0.0  # rows/s of the last closed window
        self.rates = RateBook(settings.stale_windows)
        self.pressure = BackPressure(settings, grid)
        # The size measured against the incumbent while climbing or probing; None when there is no such duel.
        self._challenger: int | None = None
        self._climb = _Climb(direction=1, step=OCTAVE, moved=False, may_flip=True)
        self._narrow_step = 0  # grid steps of the pattern search
        self._probes: list[int] = []  # probes still to measure before holding again
        self._holding_windows = 0  # holding windows since the last probe
        self._probe_up = True  # the side of the next regular probe

    # --- inputs ------------------------------------------------------------------------------------------------------

    def on_batch(self, outcome: Outcome, window: Window | None, now: float) -> None:
        """A batch finished; `window` is the window it closed, if it closed one."""
        signal = self.pressure.assess(outcome, now, self._grid[self.index])
        if signal is not None:
            self._overload(outcome.size, now, signal.why, stall_s=signal.stall_s)
            if signal.timed_out:
                self.pressure.mark_timed_out()
        elif window is not None:
            self._on_window(window, now)

    # --- moving ------------------------------------------------------------------------------------------------------

    def _go(self, index: int, why: str) -> None:
        if index != self.index:
            rate = self.rates.fresh_rate(self.index, self.windows)
            at = f"; {rate:.0f} rows/s at {self._grid[self.index]}" if rate is not None else ""
            self.reason = f"{why}{at}"
            self.index = index

    def _measure_more(self, challenger: int, incumbent: int) -> None:
        """A close call: measure whichever of the two has fewer windows (that narrows the error most)."""
        w = self.windows
        fewer = challenger if self.rates.windows_of(challenger, w) <= self.rates.windows_of(incumbent, w) else incumbent
        again = ", measuring again" if self.rates.windows_of(fewer, w) else ""
        self._go(fewer, f"{self.phase.value}{again}")

    def _judge(self, challenger: int, incumbent: int) -> _Verdict:
        """Whether `challenger` should replace `incumbent`, on the windows so far (see the module docstring)."""
        s, w = self._s, self.windows
        vs = self.rates.compare(challenger, incumbent, w)
        if vs is None:
            # Not measured yet; or an incumbent whose windows went stale, which the fresh challenger replaces.
            return _Verdict.MORE if self.rates.windows_of(challenger, w) == 0 else _Verdict.TAKE
        z = s.confidence
        leads = vs.gain > s.margin
        if leads and s.confirm_windows < vs.windows < s.lead_windows:
            return _Verdict.MORE  # a leader measured on: judged again at `lead_windows` (see the module docstring)
        if vs.gain > max(s.margin, z * vs.se):
            return _Verdict.TAKE
        if challenger < incumbent:
            top = self.rates.top(w)
            ref = self.rates.compare(challenger, top, w) if top not in (None, challenger) else None
            ref = ref or vs
            if ref.gain - z * ref.se >= -s.margin:
                return _Verdict.TAKE
            if ref.gain + z * ref.se < -s.margin:
                return _Verdict.KEEP
        elif vs.gain + z * vs.se < s.margin:
            return _Verdict.KEEP
        return _Verdict.MORE if vs.windows < (s.lead_windows if leads else s.confirm_windows) else _Verdict.KEEP

    # --- back-pressure -----------------------------------------------------------------------------------------------

    def _overload(self, size: int, now: float, why: str, stall_s: float = 0.0) -> None:
        cut_to = self.pressure.overload(size, now, self.index, self.best, stall_s)
        if cut_to is None:
            return  # a straggler of a larger size: the size was already cut below it
        if cut_to < self.index:
            self.backoffs += 1
        ceiling = self.pressure.ceiling(now)
        if ceiling is not None:
            self.rates.forget_from(ceiling)
        challenger, self._challenger = self._challenger, None
        failed = self._grid.index_at_or_below(size)
        if challenger == self.index and failed > self.best and self.rates.windows_of(self.best, self.windows) > 0:
            # A challenger larger than the incumbent failed: that is its answer. Back to the incumbent, which worked a
            # window ago, rather than to half the failed size; if the incumbent fails too, that halves it.
            self._go(self.best, f"back-off: {why} at {size}")
            if self.phase is Phase.PROBING:
                self._after_probe(challenger, _Verdict.KEEP, now)
            else:  # the best size lies between the two: climb on with half the step
                self._start_climb(1, max(1, self._climb.step // 2), moved=False, may_flip=False, now=now)
            return
        self.phase = Phase.BACKOFF
        self._probes = []
        # The incumbent stays the best size remembered below the ceiling; the cut size competes with it next window.
        top = self.rates.top(self.windows)
        self.best = cut_to if top is None else top
        self._go(cut_to, f"back-off: {why} at {size}")

    def _recover(self, before: int) -> None:
        # Halving did not stop the failures, so they were not about the batch size: go back to the best size known
        # before the episode, re-measuring it and its neighbours.
        self.best = before
        self.rates.forget(before)
        self.phase, self._narrow_step, self._challenger = Phase.NARROWING, _PROBE, None
        self._go(before, "recovered from overload")

    # --- decisions, one per closed window ----------------------------------------------------------------------------

    def _on_window(self, m: Window, now: float) -> None:
        self.windows += 1
        self.last_rate = m.rows_per_s
        if self.pressure.refused_share_rose(m.failed_share):
            self._overload(m.size, now, f"{m.failed_share:.0%} of rows refused")
            return
        episode = self.pressure.recovery(now, m.rows_per_s)
        if episode is not None:
            self._recover(episode.before)
            return
        if m.rows_per_s <= 0 or self.pressure.failing(now):
            return  # failures are going on: no measurement to trust, and growing is forbidden; keep measuring
        holding = self.phase is Phase.HOLDING and self.index == self.best
        surprise = self._surprise(m.rows_per_s) if holding else 0.0
        if surprise:
            self.rates.forget_all()  # the cluster changed: what was measured before no longer holds
        self.rates.add(self.index, m.rows_per_s, self.windows)
        if self._challenger is not None:
            self._on_duel(self._challenger, now)
        elif self.phase is Phase.NARROWING:
            self._narrow(now)
        elif self.phase is Phase.BACKOFF:
            self._on_backoff(now)
        elif self.phase in (Phase.GROWING, Phase.SHRINKING):
            self._climb_on(now)  # the climb's first window measured its incumbent
        else:
            self._on_holding(surprise, now)

    def _surprise(self, rate: float) -> float:
        """The log ratio of this window's rate to the incumbent's mean if it means the cluster changed, else 0."""
        found = self.rates.surprise(self.best, rate, self.windows)
        if found is None:
            return 0.0
        deviation, se = found
        return deviation if abs(deviation) > max(math.log1p(self._s.change), _SURPRISE_Z * se) else 0.0

    def _challenge(self, challenger: int, phase: Phase) -> None:
        self.phase = phase
        self._challenger = challenger
        self._go(challenger, phase.value)

    def _on_duel(self, challenger: int, now: float) -> None:
        verdict = self._judge(challenger, self.best)
        if verdict is _Verdict.MORE:
            self._measure_more(challenger, self.best)
            return
        climb = self._climb
        flip = verdict is _Verdict.KEEP and not climb.moved and climb.may_flip and self.phase is not Phase.PROBING
        if flip and min(self.rates.windows_of(i, self.windows) for i in (challenger, self.best)) < 2:
            # Turning the search around rests on two windows of each size: at the start (a table being created, a
            # cold node) rows/s rise whatever the size, and one slow window must not send the search the wrong way.
            self._measure_more(challenger, self.best)
            return
        self._challenger = None
        if self.phase is Phase.PROBING:
            self._after_probe(challenger, verdict, now)
            return
        if verdict is _Verdict.TAKE:
            self.best = challenger
            climb.moved = True
            climb.step = min(2 * climb.step, OCTAVE)
        elif not climb.moved and climb.may_flip:
            climb.direction = -climb.direction
            climb.may_flip = False
        else:
            self._start_narrow(max(1, climb.step // 2), now)
            return
        self._climb_on(now)

    def _climb_on(self, now: float) -> None:
        """Measure the next step of the climb from the incumbent, or narrow down if the climb cannot go on."""
        climb, top = self._climb, self.pressure.limit(now)
        for _ in range(2):
            target = min(max(self.best + climb.direction * climb.step, 0), top)
            if (target - self.best) * climb.direction > 0:
                self._challenge(target, Phase.GROWING if climb.direction > 0 else Phase.SHRINKING)
                return
            if climb.moved or not climb.may_flip:
                break
            climb.direction = -climb.direction
            climb.may_flip = False
        self._start_narrow(max(1, climb.step // 2), now)

    def _start_climb(self, direction: int, step: int, moved: bool, may_flip: bool, now: float) -> None:
        self._climb = _Climb(direction, step, moved, may_flip)
        self._climb_on(now)

    def _start_narrow(self, step: int, now: float) -> None:
        self.phase = Phase.NARROWING
        self._narrow_step = step
        self._narrow(now)

    def _narrow(self, now: float) -> None:
        top = self.pressure.limit(now)
        self.best = min(self.best, top)
        while self._narrow_step >= 1:
            if self.rates.windows_of(self.best, self.windows) == 0:
                self._go(self.best, Phase.NARROWING.value)
                return
            h = self._narrow_step
            taken = []
            for candidate in (i for i in (self.best - h, self.best + h) if 0 <= i <= top):
                verdict = self._judge(candidate, self.best)
                if verdict is _Verdict.MORE:
                    self._measure_more(candidate, self.best)
                    return
                if verdict is _Verdict.TAKE:
                    taken.append(candidate)
            if taken:
                self.best = self.rates.best_of(taken, self.windows)
            self._narrow_step //= 2
        self._hold()

    def _hold(self) -> None:
        self.phase = Phase.HOLDING
        self._holding_windows = 0
        self._probes = []
        self._go(self.best, Phase.HOLDING.value)

    def _on_backoff(self, now: float) -> None:
        best, i = self.best, self.index
        if best != i and best <= self.pressure.limit(now) and self._judge(best, i) is _Verdict.TAKE:
            # The best size remembered below the ceiling beats the cut size: go back to it, check its neighbours.
            self._start_narrow(_PROBE, now)
            return
        self.best = i
        self._start_climb(1, 2 * _PROBE, moved=False, may_flip=False, now=now)

    def _probe_targets(self, now: float, up: bool) -> list[int]:
        """Probe sizes next to the incumbent, the one in direction `up` first; none where a bound or ceiling is."""
        above = min(self.best + _PROBE, self.pressure.limit(now))
        below = max(self.best - _PROBE, 0)
        found = [i for i in (above, below) if i != self.best]
        return found if up else found[::-1]

    def _after_probe(self, probe: int, verdict: _Verdict, now: float) -> None:
        if verdict is _Verdict.TAKE:
            direction = 1 if probe > self.best else -1
            self.best = probe
            self._start_climb(direction, 2 * _PROBE, moved=True, may_flip=False, now=now)
        elif self._probes:
            self._challenge(self._probes.pop(0), Phase.PROBING)
        else:
            self._hold()

    def _on_holding(self, surprise: float, now: float) -> None:
        if self.index > self.pressure.limit(now):
            # The ceiling came down on the incumbent (an overload of another size): search below it.
            self._start_narrow(_PROBE, now)
            return
        if abs(surprise) > math.log(2):
            # A big change can move the optimum far: search again with x2 steps, smaller sizes first if the rate
            # collapsed (the safe side for a struggling cluster), larger first if it jumped.
            self._start_climb(1 if surprise > 0 else -1, OCTAVE, moved=False, may_flip=True, now=now)
            return
        if surprise:
            self._holding_windows = 0
            self._probes = self._probe_targets(now, up=self._probe_up)
        else:
            self._holding_windows += 1
            if self._holding_windows >= self._s.probe_every:
                self._holding_windows = 0
                up, self._probe_up = self._probe_up, not self._probe_up
                # Only the side whose turn it is: at a ceiling or bound, the other side must not get probed twice as
                # often.
                self._probes = [p for p in self._probe_targets(now, up=up) if (p > self.best) == up]
        if self._probes:
            self._challenge(self._probes.pop(0), Phase.PROBING)
