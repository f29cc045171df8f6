"""The sensor-fleet generator: per-sensor state of a set of sensors as numpy arrays, advanced many steps at a time.

``Fleet(model, sensor_ids, seed).next_steps(steps)`` returns, for every field column, an array of shape
(steps, sensors): float64 for FLOAT fields, bool for BOOL fields. Row-major order is step by step, so
``array.ravel()`` lists the sensors of step 0, then of step 1, and so on. The fleet remembers where every sensor
is, so consecutive calls continue each sensor's signal. ``next_steps_with_errors()`` also says which FLOAT values
are errors. ``next_rows(count)`` returns the next ``count`` values of that row-major order as flat arrays, so it
can start and end in the middle of a step: a fleet of a million sensors hands out a part of a step without
generating the whole step. Pure arithmetic, no I/O. Everything is vectorised over sensors and steps at once:
random numbers are drawn in bulk and the walk's recursion is a prefix scan, so the only Python loop runs
log2(steps) times per call.

Memory: the state of a sensor is 9 bytes per FLOAT field (its walk position and error state) and nothing per BOOL
field; the ids are the caller's array. A call's arrays are of the size of what it generates.

FLOAT signal (what the model's parameters mean here):

- Normal values are a stationary Gaussian AR(1) walk, a discretised Ornstein-Uhlenbeck process,
  ``y[t] = mu + phi * (y[t-1] - mu) + kick * N(0, 1)``, mirrored (folded) at ``min`` and ``max`` so that every
  normal value lies in [min, max]. ``mu`` and the walk's own spread are solved for once per field so that the
  folded values have exactly the model's ``mean`` and ``stdev`` (when ``stdev`` is small next to max - min the
  folding hardly matters and ``mu`` = mean). Each sensor starts at a draw from that stationary distribution, so
  the statistics hold from the first step, over time and across sensors alike. A mean closer to a bound than
  about 1.32 stdev cannot be reached that way; then the mean is kept and the spread comes out narrower.
- ``variance`` is the typical step: the root mean square of the change between consecutive normal values, which
  fixes ``phi = 1 - variance**2 / (2 * spread**2)``. A step larger than sqrt(2) * spread cannot be stationary with
  that spread; then phi is 0 and the values are independent draws.
- Errors come from a two-state Markov chain per sensor: an error run starts after a normal value with probability
  ``p`` and goes on with probability ``1 - 1/error_length``, so runs are geometric with mean ``error_length`` and
  ``p`` is chosen so that the long-run share of errors is ``error_rate``. Each error value is uniform in
  [min, mean - stdev] when the sensor's last normal value is below the mean, else in [mean + stdev, max] (the other
  side when one side has no room). The walk is frozen during an error and resumes from the last normal value.

BOOL: true with probability ``true_ratio`` at each step, independently.

Determinism: the same (seed, sensor ids, sequence of calls) gives the same data; the sensor ids are part of the
seed, so two fleets with one seed but different ids do not repeat each other. Every random stream is drawn one
number per (step, sensor) (errors: one per error value) in row-major order, so ``next_steps(4)`` followed by
``next_steps(6)`` gives the same booleans and error positions as ``next_steps(10)`` and the same floats up to
rounding (well below 1e-12 relative; the scan sums the walk in another order); so does any sequence of
``next_rows`` calls covering the same rows.
"""

from __future__ import annotations

import functools
import hashlib
import math

import numpy as np

from dg_locust.model import BoolField, FloatField, Model

# Grid for the moments of a folded normal: +-9 sigma in steps of sigma/500 puts the quadrature error far below
# what any statistical test can see.
_QUADRATURE_Z = np.linspace(-9.0, 9.0, 9001)
_QUADRATURE_W = np.exp(-0.5 * _QUADRATURE_Z**2)
_QUADRATURE_W /= _QUADRATURE_W.sum()


class Fleet:
    """The signal state of ``sensor_ids`` for every field of ``model``; see the module docstring for the signal."""

    def __init__(self, model: Model, sensor_ids: np.ndarray, seed: int | None = None) -> None:
        ids = np.asarray(sensor_ids, dtype=np.int64)
        if ids.ndim != 1:
            raise ValueError(f"sensor_ids must be a 1-d array, got shape {ids.shape}")
        if seed is not None and seed < 0:
            raise ValueError(f"seed must be >= 0 or None, got {seed}")
        self.model = model
        self.sensor_ids = ids
        self._row = 0  # rows generated so far, in row-major (step, sensor) order
        if seed is None:
            root = np.random.SeedSequence()
        else:
            # Mixing the ids into the seed keeps fleets that share a seed but cover other sensors from repeating
            # each other's data.
            digest = hashlib.blake2b(ids.tobytes(), digest_size=16).digest()
            root = np.random.SeedSequence([seed, *np.frombuffer(digest, dtype=np.uint32).tolist()])
        streams = root.spawn(len(model.fields))
        self._signals: list[_FloatSignal | _BoolSignal] = [
            _FloatSignal(f, len(ids), stream) if isinstance(f, FloatField) else _BoolSignal(f, len(ids), stream)
            for f, stream in zip(model.fields, streams, strict=True)
        ]

    @property
    def size(self) -> int:
        return len(self.sensor_ids)

    @property
    def tags(self) -> dict[str, np.ndarray]:
        """Tag column -> value of every sensor, computed on each access (the fleet itself keeps no tag arrays)."""
        return self.model.tag_values(self.sensor_ids)

    def next_steps(self, steps: int) -> dict[str, np.ndarray]:
        """Advance every sensor by ``steps`` steps; field column -> array of shape (steps, sensors)."""
        return self.next_steps_with_errors(steps)[0]

    def next_steps_with_errors(self, steps: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Like next_steps(), and also FLOAT column -> bool array of the same shape, true where the value is an
        error value rather than a normal one."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if self._row % max(self.size, 1):
            raise ValueError("next_steps() needs whole steps, but next_rows() stopped in the middle of a step")
        self._row += steps * self.size
        return self._advance(0, self.size, steps)

    def next_rows(self, count: int) -> dict[str, np.ndarray]:
        """The next ``count`` rows in row-major (step, sensor) order; field column -> flat array of ``count``.

        The rows may start and end in the middle of a step: each part (the rest of the current step, whole steps,
        the start of the last step) advances only the sensors it covers."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if count and not self.size:
            raise ValueError("a fleet without sensors has no rows")
        parts: list[dict[str, np.ndarray]] = []
        while count > 0 or not parts:
            position = self._row % self.size if self.size else 0
            if position == 0 and count >= self.size:
                steps = count // self.size if self.size else 0
                lo, hi = 0, self.size
            else:
                steps, lo, hi = 1, position, min(self.size, position + count)
            values = self._advance(lo, hi, steps)[0]
            parts.append({column: array.reshape(-1) for column, array in values.items()})
            self._row += steps * (hi - lo)
            count -= steps * (hi - lo)
        if len(parts) == 1:
            return parts[0]
        return {column: np.concatenate([part[column] for part in parts]) for column in parts[0]}

    def _advance(self, lo: int, hi: int, steps: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Advance sensors lo..hi-1 by ``steps`` steps: values and error flags of shape (steps, hi - lo)."""
        values: dict[str, np.ndarray] = {}
        errors: dict[str, np.ndarray] = {}
        for signal in self._signals:
            if isinstance(signal, _FloatSignal):
                values[signal.column], errors[signal.column] = signal.next_steps(steps, lo, hi)
            else:
                values[signal.column] = signal.next_steps(steps, lo, hi)
        return values, errors


class _BoolSignal:
    def __init__(self, spec: BoolField, n: int, stream: np.random.SeedSequence) -> None:
        self.column = spec.column
        self.ratio = spec.true_ratio
        self.rng = np.random.Generator(np.random.SFC64(stream))

    def next_steps(self, steps: int, lo: int, hi: int) -> np.ndarray:
        return self.rng.random((steps, hi - lo)) < self.ratio


class _FloatSignal:
    """One FLOAT field of the fleet: its solved parameters and each sensor's walk position and error state."""

    def __init__(self, spec: FloatField, n: int, stream: np.random.SeedSequence) -> None:
        self.column = spec.column
        self.lo, self.hi, self.mean = spec.min, spec.max, spec.mean
        self.decimals = spec.precision
        self.center, spread = _solve_folded_normal(spec.mean, spec.stdev, spec.min, spec.max)
        self.phi = min(1.0, max(0.0, 1.0 - spec.variance**2 / (2.0 * spread**2))) if spread > 0 else 0.0
        self.kick = spread * math.sqrt(1.0 - self.phi**2)

        # Error chain: run length is geometric with mean L, so a run ends with q = 1/L; the share of errors is
        # p / (p + q), which is error_rate for p below.
        rate = spec.error_rate
        self.q = 1.0 / spec.error_length if rate > 0 else 1.0
        self.p = rate * self.q / (1.0 - rate) if rate > 0 else 0.0
        low_room = spec.mean - spec.stdev > spec.min
        high_room = spec.mean + spec.stdev < spec.max
        self.low_side = (spec.min, spec.mean - spec.stdev) if low_room else (spec.mean + spec.stdev, spec.max)
        self.high_side = (spec.mean + spec.stdev, spec.max) if high_room else self.low_side

        # One stream per purpose, each drawn one number per (step, sensor) in row-major order, so that a call
        # for 10 steps draws what two calls for 4 and 6 steps draw.
        walk, chain, errors = stream.spawn(3)
        self.walk_rng = np.random.Generator(np.random.SFC64(walk))
        self.chain_rng = np.random.Generator(np.random.SFC64(chain))
        self.error_rng = np.random.Generator(np.random.SFC64(errors))

        # Start in the stationary state: walk position from the walk's distribution, error state with P = rate.
        self.offset = self.walk_rng.standard_normal(n) * spread  # y - center of the last normal value
        self.in_error = self.chain_rng.random(n) < rate if rate > 0 else np.zeros(n, dtype=bool)

    def next_steps(self, steps: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Advance sensors lo..hi-1 (their state only) by ``steps`` steps: values and error flags."""
        offset, in_error = self.offset[lo:hi], self.in_error[lo:hi]
        error = self._error_states(steps, in_error)
        offsets = self._walk(steps, error, offset)
        if steps:
            offset[:] = offsets[-1]
            in_error[:] = error[-1]
        values = offsets
        values += self.center
        self._fold(values)
        if self.p > 0:
            self._place_errors(values, error)
        if self.decimals is not None:
            # As a sensor reports them: rounded after the statistics are drawn (the walk goes on unrounded)
            np.round(values, self.decimals, out=values)
        return values, error

    def _error_states(self, steps: int, in_error: np.ndarray) -> np.ndarray:
        """The error state of every (step, sensor), as the Markov chain from each sensor's current state.

        With one uniform u per step: when p <= 1 - q, u < p means "error" and u >= 1 - q means "normal" whatever
        the previous state was, and anything between keeps the previous state. So each state is the one set by the
        last such decisive step, which a running maximum over step indices finds without a loop. When p > 1 - q
        (very short runs) the middle band flips the state instead, and the parity of flips since the last decisive
        step is applied on top.
        """
        n = len(in_error)
        if self.p == 0:
            return np.zeros((steps, n), dtype=bool)
        u = self.chain_rng.random((steps, n))
        low, high = min(self.p, 1.0 - self.q), max(self.p, 1.0 - self.q)
        to_error = u < low
        decisive = to_error | (u >= high)
        # key = 2 * step + (1 if it sets "error"), -1 when not decisive: its running maximum carries both the last
        # decisive step and the state it set.
        key = np.arange(0, 2 * steps, 2, dtype=np.int32)[:, None] + to_error
        np.copyto(key, -1, where=~decisive)
        np.maximum.accumulate(key, axis=0, out=key)
        unseen = key < 0
        state = (key & 1).astype(bool)
        np.copyto(state, in_error[None, :], where=unseen)
        if self.p > 1.0 - self.q:
            flips = np.cumsum(~decisive, axis=0, dtype=np.int32)
            last = np.where(unseen, 0, key >> 1)
            flips_before = np.where(unseen, 0, np.take_along_axis(flips, last, axis=0))
            state ^= ((flips - flips_before) & 1).astype(bool)
        return state

    def _walk(self, steps: int, error: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """Offsets from the walk's center after every step: the AR(1) recursion, frozen at error steps.

        The recursion x[t] = a[t] * x[t-1] + b[t] (a = phi, b = kick * N(0,1) on normal steps; a = 1, b = 0 on
        error steps) is composed by a log2(steps) prefix scan over whole arrays instead of a loop over steps.
        """
        n = len(offset)
        b = self.walk_rng.standard_normal((steps, n))
        b *= self.kick
        a = np.full((steps, n), self.phi)
        if self.p > 0:
            b[error] = 0.0
            a[error] = 1.0
        shift = 1
        while shift < steps:
            b[shift:] += a[shift:] * b[:-shift]
            a[shift:] *= a[:-shift]
            shift *= 2
        a *= offset
        b += a
        return b

    def _fold(self, values: np.ndarray) -> None:
        """Mirror values outside [min, max] back in, in place (only the few outside pay for the modulo)."""
        outside = (values < self.lo) | (values > self.hi)
        if not outside.any():
            return
        width = self.hi - self.lo
        if width == 0:
            values[outside] = self.lo
            return
        phase = np.mod(values[outside] - self.lo, 2.0 * width)
        values[outside] = self.hi - np.abs(phase - width)

    def _place_errors(self, values: np.ndarray, error: np.ndarray) -> None:
        """Replace the values at error steps by error values on the side of each sensor's last normal value.

        During an error the walk is frozen, so ``values`` there still holds the last normal value."""
        where = np.nonzero(error)
        if not where[0].size:
            return
        low = values[where] < self.mean
        start = np.where(low, self.low_side[0], self.high_side[0])
        end = np.where(low, self.low_side[1], self.high_side[1])
        values[where] = start + self.error_rng.random(low.size) * (end - start)


# Memoised because every Locust user builds its own Fleet from the same model, and an unreachable mean/stdev pair
# takes a few hundred quadratures to settle; the function is pure, so the cache cannot change any result.
@functools.lru_cache(maxsize=256)
def _solve_folded_normal(mean: float, stdev: float, lo: float, hi: float) -> tuple[float, float]:
    """(center, spread) of a normal distribution whose values mirrored into [lo, hi] have ``mean`` and ``stdev``.

    A fixed-point iteration: shift the center (kept within [lo, hi]) by the mean's error and scale the spread by
    the stdev's ratio. Not every pair is reachable. A mirrored normal keeps its mean at least about 1.32 stdev away
    from a bound (that is the half-normal at the bound), and no distribution on [lo, hi] is wider than the interval
    allows. Then the mean wins: the center sits on the nearer bound and the spread is whatever gives the model's
    mean, so the values come out narrower than ``stdev``. A spread far wider than the interval is capped at 20
    times the interval, where the values are practically uniform.
    """
    width = hi - lo
    if stdev == 0 or width == 0:
        return mean, 0.0
    if min(mean - lo, hi - mean) > 40 * stdev:
        # The bounds are so far away that mirroring never happens (and moments of such a wide interval lose all
        # precision in floating point): the walk is the plain normal.
        return mean, stdev
    center, spread = mean, stdev
    for _ in range(300):
        got_mean, got_stdev = _folded_moments(center, spread, lo, hi)
        if abs(got_mean - mean) < 1e-9 * width and abs(got_stdev - stdev) < 1e-9 * stdev:
            return center, spread
        center = min(hi, max(lo, center + mean - got_mean))
        spread = min(spread * stdev / got_stdev, 20.0 * width)
    if lo < center < hi:
        return center, spread
    center = lo if mean - lo <= hi - mean else hi
    # With the center on a bound, the mean moves from that bound towards the middle as the spread grows.
    narrow, wide = 0.0, 20.0 * width
    for _ in range(100):
        spread = (narrow + wide) / 2
        got_mean, _ = _folded_moments(center, spread, lo, hi)
        if (got_mean - mean) * (center - mean) > 0:
            narrow = spread  # still too close to the bound
        else:
            wide = spread
    return center, spread


def _folded_moments(center: float, spread: float, lo: float, hi: float) -> tuple[float, float]:
    width = hi - lo
    phase = np.mod(center + spread * _QUADRATURE_Z - lo, 2.0 * width)
    folded = hi - np.abs(phase - width)
    mean = float(_QUADRATURE_W @ folded)
    return mean, math.sqrt(float(_QUADRATURE_W @ (folded - mean) ** 2))
