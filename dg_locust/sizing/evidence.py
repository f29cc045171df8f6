"""What the windows say about each size: recent rates per grid index, the measurement noise, and comparisons.

Owns `RateBook`. Rates are kept as natural logarithms, so differences read as relative ones (a gain of 0.05 is ~5 %)
and the noise of a window is one relative spread for every size.

The noise is the spread of one window's rate at a fixed size. It is learned from the windows themselves: each window
of a size that already has windows adds its residual against their mean (scaled so that its square estimates the
variance of one window), and the spread is the root mean square of the last `_NOISE_RESIDUALS` residuals. Each
residual is clipped at 3x the spread so far, so that one real change of the cluster inflates it by ~15 % at most;
no median, because a run of quiet windows would make a median fall far below the spread that matters, and an
underestimated noise is what makes a sizer wander. Until enough windows were seen, a prior of `_PRIOR_NOISE` (what a
steady cluster shows over a few seconds) stands in. The noise outlives forgetting the sizes' rates: a cluster that
changed is as noisy as before.

A comparison of a challenger with a reference size gives the difference of their mean log rates and its standard
error ``noise * sqrt(1/n_challenger + 1/n_reference)``; the policy decides what difference counts.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

_KEEP = 8  # windows kept per size: enough to average noise, few enough to follow a drifting cluster
_NOISE_RESIDUALS = 30  # residuals the noise estimate averages
_PRIOR_NOISE = 0.02  # relative spread of one window assumed until windows show otherwise
_PRIOR_WEIGHT = 4  # the prior counts as this many residuals, until real ones push it out
_CLIP = 3.0  # residuals beyond this many times the spread so far count as this many
_MIN_NOISE = 0.005  # no measurement is more precise than this, whatever a quiet simulation shows


@dataclass(frozen=True)
class Comparison:
    """A challenger's rate against a reference's."""

    gain: float  # difference of mean log rates (challenger - reference); 0.05 is ~5 % more rows/s
    se: float  # its standard error
    windows: int  # windows of the challenger it rests on


@dataclass(frozen=True)
class _Sample:
    window: int  # the number of the window that measured it
    log_rate: float
    rate: float


class RateBook:
    """Recent windows per grid index; samples older than `stale_windows` windows no longer count."""

    def __init__(self, stale_windows: int) -> None:
        self._stale_windows = stale_windows
        self._samples: dict[int, deque[_Sample]] = {}
        self._squares: deque[float] = deque([_PRIOR_NOISE**2] * _PRIOR_WEIGHT, maxlen=_NOISE_RESIDUALS)

    @property
    def noise(self) -> float:
        """The spread (standard deviation) of one window's log rate at a fixed size."""
        return max(_MIN_NOISE, math.sqrt(statistics.fmean(self._squares)))

    def _fresh(self, index: int, window: int) -> list[_Sample]:
        return [s for s in self._samples.get(index, ()) if window - s.window <= self._stale_windows]

    def windows_of(self, index: int, window: int) -> int:
        """How many fresh windows measured `index`."""
        return len(self._fresh(index, window))

    def surprise(self, index: int, rate: float, window: int) -> tuple[float, float] | None:
        """How far a new window's log rate lies from the fresh mean of `index`, and the standard error of that."""
        fresh = self._fresh(index, window)
        if not fresh or rate <= 0:
            return None
        mean = statistics.fmean(s.log_rate for s in fresh)
        return math.log(rate) - mean, self.noise * math.sqrt(1 + 1 / len(fresh))

    def add(self, index: int, rate: float, window: int) -> None:
        """A window measured `rate` (> 0) rows/s at `index`."""
        log_rate = math.log(rate)
        fresh = self._fresh(index, window)
        if fresh:
            n = len(fresh)
            # Scaled so that its square estimates the variance of one window, whatever the number averaged.
            residual = abs(log_rate - statistics.fmean(s.log_rate for s in fresh)) * math.sqrt(n / (n + 1))
            self._squares.append(min(residual, _CLIP * self.noise) ** 2)
        kept = self._samples.setdefault(index, deque(maxlen=_KEEP))
        if len(kept) > len(fresh):
            kept.clear()
            kept.extend(fresh)
        kept.append(_Sample(window, log_rate, rate))

    def mean_rate(self, index: int) -> float | None:
        """The mean rows/s of the windows kept for `index`, however old; None if none."""
        kept = self._samples.get(index)
        return statistics.fmean(s.rate for s in kept) if kept else None

    def fresh_rate(self, index: int, window: int) -> float | None:
        fresh = self._fresh(index, window)
        return statistics.fmean(s.rate for s in fresh) if fresh else None

    def top(self, window: int) -> int | None:
        """The index with the highest fresh mean log rate."""
        means = {i: statistics.fmean(s.log_rate for s in f) for i in self._samples if (f := self._fresh(i, window))}
        return max(means, key=means.__getitem__) if means else None

    def best_of(self, indexes: list[int], window: int) -> int:
        """Of `indexes`, the one with the highest fresh mean (indexes without fresh windows count as lowest)."""
        return max(indexes, key=lambda i: self.fresh_rate(i, window) or 0.0)

    def compare(self, challenger: int, reference: int, window: int) -> Comparison | None:
        """The challenger's fresh windows against the reference's; None if either has none."""
        a, b = self._fresh(challenger, window), self._fresh(reference, window)
        if not a or not b:
            return None
        gain = statistics.fmean(s.log_rate for s in a) - statistics.fmean(s.log_rate for s in b)
        return Comparison(gain, self.noise * math.sqrt(1 / len(a) + 1 / len(b)), len(a))

    def forget(self, index: int) -> None:
        self._samples.pop(index, None)

    def forget_all(self) -> None:
        self._samples = {}

    def forget_from(self, index: int) -> None:
        """Forget `index` and every larger one."""
        self._samples = {i: s for i, s in self._samples.items() if i < index}
