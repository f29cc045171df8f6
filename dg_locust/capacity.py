"""The capacity finder's decisions: the load stages, what each measured, when to stop, which stage is the capacity.

A ``CapacitySearch`` steps the users up in stages: 1 user per worker, then 2, 4, 8, ... (``GROWTH``), at most
``--capacity-max-users`` in total. Each stage holds its users for ``--capacity-stage-s`` seconds (the first twice as
long when the adaptive batch sizer starts from scratch; later stages start from the size the previous one settled
on, so they settle faster) and is measured over its last half: rows acknowledged per second, the p99 of batch
latency, and the share of rows that errors kept from being acknowledged. On a slow cluster a stage also waits for
the batches the sizer's windows need (``BATCHES_PER_WINDOW`` each), up to ``STRETCH`` times its planned time. The
search stops after the first stage that

- breaks the SLO: p99 above ``--slo-p99-ms`` or error ratio above ``--slo-max-error-ratio``, or
- does not raise rows/s by more than ``--capacity-margin`` over the best stage so far: more load no longer helps,

or at ``--capacity-max-users``, or when ``--run-time`` runs out. The capacity is the best stage within the SLO: the
first stage, or a later one that raised rows/s by more than the margin over the best before it. A stage that adds
less than the margin does not replace it: it got about the same rows out of more load.

Everything here is pure: time comes in as numbers and measurements from an injected ``Meter`` (the Locust adapter,
``capacity_shape``, measures the run's ledger and Locust's latencies; the tests measure a model), so each decision
is testable without Locust. ``Snapshot`` and ``measure_between`` turn two readings of the run's cumulative counters
into one stage's ``StageMeasurement``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from dg_locust.sizing import SizerSettings

GROWTH = 2  # users per worker multiply by this from one stage to the next
P99 = 0.99
# The sizer's windows last 2 s and at least 8 batches, so a slow cluster (seconds per batch) stretches them. Before a
# stage is measured each process finishes this many windows' batches in it (from scratch in the first stage, from
# the previous size later; see README "Batch size"), and while it is measured two windows' worth. A cluster too
# slow even for that is measured after STRETCH times the planned time anyway.
BATCHES_PER_WINDOW = SizerSettings().min_batches
FIRST_SETTLE_WINDOWS = 12
SETTLE_WINDOWS = 4
MEASURE_WINDOWS = 2
STRETCH = 4.0

# What became of a stage.
RISE = "rise"  # it raised rows/s by more than the margin (or was the first): the best stage so far
NO_RISE = "no rise"  # it did not: the search stops
SLO_BROKEN = "SLO broken"  # its p99 or error ratio broke the SLO: the search stops
CUT_SHORT = "cut short"  # the run ended before the stage was measured


@dataclass(frozen=True)
class CapacityPlan:
    """How the search runs: stage lengths, the margin, the user limit, the SLO and the run's time limit."""

    stage_s: float = 30.0
    first_stage_s: float = 60.0
    margin: float = 0.05
    max_users: int = 1024
    slo_p99_ms: float = 0.0  # 0: no latency limit
    slo_max_error_ratio: float = 0.05
    run_time_s: float | None = None
    # Batches each process must finish before a stage is measured (the sizer needs windows of 8 batches, however
    # long they take on a slow cluster) and while it is measured; 0 settle batches for a fixed batch size.
    first_settle_batches: int = FIRST_SETTLE_WINDOWS * BATCHES_PER_WINDOW
    settle_batches: int = SETTLE_WINDOWS * BATCHES_PER_WINDOW
    measure_batches: int = MEASURE_WINDOWS * BATCHES_PER_WINDOW

    @property
    def measure_s(self) -> float:
        """Each stage is measured over its last this many seconds (half a stage; the first stage's warm-up is
        longer, its measurement is not, so every stage's figure comes from equally long windows)."""
        return self.stage_s / 2

    @classmethod
    def from_settings(cls, settings, run_time_s: float | None = None) -> CapacityPlan:
        """The plan of a run's validated ``Settings``: with ``--batch-size auto`` the first stage lasts two stages,
        because the sizer starts from scratch there (10-20 windows of 2 s, see README "Batch size")."""
        auto = settings.batch_size is None
        return cls(
            stage_s=settings.capacity_stage_s,
            first_stage_s=settings.capacity_stage_s * (2 if auto else 1),
            first_settle_batches=FIRST_SETTLE_WINDOWS * BATCHES_PER_WINDOW if auto else 0,
            settle_batches=SETTLE_WINDOWS * BATCHES_PER_WINDOW if auto else 0,
            margin=settings.capacity_margin,
            max_users=settings.capacity_max_users,
            slo_p99_ms=settings.slo_p99_ms,
            slo_max_error_ratio=settings.slo_max_error_ratio,
            run_time_s=run_time_s or None,
        )

    def slo_breaches(self, measurement: StageMeasurement) -> list[str]:
        """What a stage's measurement broke of the SLO, one phrase each; empty when it kept it."""
        breaches = []
        if measurement.batches == 0:
            breaches.append("no batch finished while it was measured")
        elif self.slo_p99_ms and measurement.p99_ms is not None and measurement.p99_ms > self.slo_p99_ms:
            breaches.append(f"p99 {measurement.p99_ms:g} ms is above --slo-p99-ms {self.slo_p99_ms:g}")
        if measurement.error_ratio > self.slo_max_error_ratio:
            breaches.append(
                f"error ratio {measurement.error_ratio:.4f} is above --slo-max-error-ratio {self.slo_max_error_ratio:g}"
            )
        return breaches


# --- measuring ---


@dataclass(frozen=True)
class Counters:
    """One process's cumulative row counters, as they stood at ``as_of`` (a worker's: when its report arrived)."""

    as_of: float
    inserted: int = 0
    failed: int = 0
    in_doubt: int = 0
    cut_off: int = 0  # part of in_doubt: rows whose batch the stop cut off, not an error
    batches: int = 0

    @property
    def errors(self) -> int:
        """Rows an error kept from being acknowledged (what --max-fail-ratio counts)."""
        return self.failed + self.in_doubt - self.cut_off

    @property
    def finished(self) -> int:
        return self.inserted + self.failed + self.in_doubt - self.cut_off


@dataclass(frozen=True)
class Snapshot:
    """The run's cumulative counters at one moment: per process (``sources``), batch latencies as a histogram of
    milliseconds -> batches (Locust's rounded response times), and the batch sizes in use."""

    taken_at: float
    sources: Mapping[str, Counters]
    latency_ms: Mapping[int, int] = field(default_factory=dict)
    batch_size: int = 0
    best_batch_size: int = 0


@dataclass(frozen=True)
class StageMeasurement:
    """What one stage measured between two snapshots."""

    seconds: float
    rows_per_s: float
    inserted: int
    failed: int
    in_doubt: int
    errors: int
    finished: int
    batches: int  # batches whose latency was recorded
    p99_ms: float | None  # None when no batch finished
    batch_size: int
    best_batch_size: int

    @property
    def error_ratio(self) -> float:
        return self.errors / self.finished if self.finished else 0.0


def measure_between(begin: Snapshot, end: Snapshot) -> StageMeasurement:
    """A stage's measurement from the snapshots at the start and the end of its measured window.

    Rows/s are summed per process, each over the time between the two readings of its counters: a master hears
    from each worker every 3 s, so a worker's counters are as old as its last report, and dividing its rows by the
    master's clock instead would be off by up to 3 s per window end. A process that appeared during the window (a
    worker that joined) counts from the window's start; counters that went backwards (a new test) from zero."""
    rows_per_s = 0.0
    inserted = failed = in_doubt = errors = finished = 0
    for name, last in end.sources.items():
        first = begin.sources.get(name)
        if first is None or last.inserted < first.inserted or last.finished < first.finished:
            first = Counters(as_of=begin.taken_at)
        if last.as_of > first.as_of:
            rows_per_s += (last.inserted - first.inserted) / (last.as_of - first.as_of)
        inserted += last.inserted - first.inserted
        failed += last.failed - first.failed
        in_doubt += last.in_doubt - first.in_doubt
        errors += last.errors - first.errors
        finished += last.finished - first.finished
    latency = histogram_difference(end.latency_ms, begin.latency_ms)
    return StageMeasurement(
        seconds=end.taken_at - begin.taken_at,
        rows_per_s=rows_per_s,
        inserted=inserted,
        failed=failed,
        in_doubt=in_doubt,
        errors=errors,
        finished=finished,
        batches=sum(latency.values()),
        p99_ms=percentile(latency, P99),
        batch_size=end.batch_size,
        best_batch_size=end.best_batch_size,
    )


def fewest_batches(begin: Snapshot, end: Snapshot) -> int:
    """The fewest batches any process finished between two snapshots (each process has its own sizer, which needs
    its own batches); 0 when no process has reported."""
    counts = []
    for name, last in end.sources.items():
        first = begin.sources.get(name)
        if first is None or last.batches < first.batches:
            first = Counters(as_of=begin.taken_at)
        counts.append(last.batches - first.batches)
    return min(counts, default=0)


def histogram_difference(later: Mapping[int, int], earlier: Mapping[int, int]) -> dict[int, int]:
    """The batches of ``later`` that ``earlier`` did not hold yet; all of ``later`` when it holds fewer batches in
    total (the statistics were reset in between, e.g. by Locust's --reset-stats)."""
    if sum(later.values()) < sum(earlier.values()):
        return {ms: count for ms, count in later.items() if count > 0}
    difference = {ms: count - earlier.get(ms, 0) for ms, count in later.items()}
    return {ms: count for ms, count in difference.items() if count > 0}


def percentile(histogram: Mapping[int, int], share: float) -> float | None:
    """The smallest value that at least ``share`` of the counted batches did not exceed; None when empty."""
    total = sum(histogram.values())
    if not total:
        return None
    wanted = math.ceil(share * total - 1e-9)
    running = 0
    for value in sorted(histogram):
        running += histogram[value]
        if running >= wanted:
            return float(value)
    return float(max(histogram))


class Meter(Protocol):
    """Measures the run for the search, since the last ``mark`` (a stage began, or its measured window opened)."""

    def mark(self, now: float) -> None: ...

    def batches(self, now: float) -> int:
        """The fewest batches any process finished since the mark."""
        ...

    def measure(self, now: float) -> StageMeasurement: ...


# --- the search ---


@dataclass
class Stage:
    """One load stage: its users, its timing, what it measured and what became of it."""

    number: int
    users: int
    workers: int
    per_worker: int  # users per worker the stage asked for (users may be fewer at --capacity-max-users)
    started_at: float
    measure_from: float  # planned, until the measured window opens (later when batches are slow)
    ends_at: float  # planned end, likewise
    settle_batches: int = 0  # batches each process must finish before the stage is measured
    settled_batches: int | None = None  # the fewest any process had finished when the window opened
    measuring: bool = False
    measurement: StageMeasurement | None = None
    outcome: str = ""  # RISE, NO_RISE, SLO_BROKEN or CUT_SHORT once decided
    note: str = ""  # why, for people

    def phase(self, now: float) -> str:
        """``settling`` (the sizer adapts to the new load), ``measuring``, or the stage's outcome."""
        if self.outcome:
            return self.outcome
        return "measuring" if self.measuring else "settling"


class CapacitySearch:
    """Decides the users of each stage, when to stop, and which stage is the capacity."""

    def __init__(self, plan: CapacityPlan, meter: Meter):
        self.plan = plan
        self.meter = meter
        self.stages: list[Stage] = []
        self.best: Stage | None = None
        self.stop_reason: str | None = None
        self.started_at: float | None = None

    @property
    def current(self) -> Stage | None:
        return self.stages[-1] if self.stages else None

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    @property
    def measuring(self) -> bool:
        """Whether the current stage's measured window is open."""
        return self.current is not None and self.current.measuring and not self.current.outcome

    def tick(self, now: float, workers: int) -> int | None:
        """The users to run now (``workers``: the workers there are; 1 for a local run), or None when the search
        is done. Call it about once a second; the first call starts the first stage."""
        if self.done:
            return None
        workers = max(workers, 1)
        if self.started_at is None:
            self.started_at = now
            self._begin(now, 1, workers)
        stage = self.current
        if not stage.measuring and self._settled(stage, now):
            stage.settled_batches = self.meter.batches(now)
            self.meter.mark(now)
            stage.measuring = True
            stage.measure_from, stage.ends_at = now, now + self.plan.measure_s
        if stage.measuring and self._measured(stage, now):
            stage.measurement, stage.ends_at = self.meter.measure(now), now
            self._judge(stage)
            if not self.done:
                self._next_stage(now, stage, workers)
            if self.done:
                return None
        if self._time_left(now) <= 0:
            self.finish(f"--run-time {self.plan.run_time_s:g}s ran out")
            return None
        return self.current.users

    def finish(self, reason: str = "") -> None:
        """The run ends: a stage not measured to its end is cut short. ``reason`` says why the run ended (the
        stage it ended in is added), unless the search had already stopped by itself."""
        stage = self.current
        if stage is not None and not stage.outcome:
            stage.outcome = CUT_SHORT
            stage.note = "the run ended before the stage was measured"
        if self.stop_reason is None:
            where = f" during stage {stage.number}" if stage is not None else ""
            self.stop_reason = f"{reason or 'the run was stopped'}{where}"

    def result(self) -> CapacityResult:
        return CapacityResult.of(self)

    def _settled(self, stage: Stage, now: float) -> bool:
        """Its planned settle time is over and every process has finished its settle batches (or the stage has
        waited ``STRETCH`` times the settle time for them)."""
        if now < stage.measure_from:
            return False
        waited_enough = now >= stage.started_at + STRETCH * (stage.measure_from - stage.started_at)
        return waited_enough or self.meter.batches(now) >= stage.settle_batches

    def _measured(self, stage: Stage, now: float) -> bool:
        if now < stage.ends_at:
            return False
        waited_enough = now >= stage.measure_from + STRETCH * self.plan.measure_s
        return waited_enough or self.meter.batches(now) >= self.plan.measure_batches

    def _next_stage(self, now: float, stage: Stage, workers: int) -> None:
        per_worker = stage.per_worker * GROWTH
        if min(per_worker * workers, self.plan.max_users) <= stage.users:
            self.stop_reason = f"stage {stage.number} ran --capacity-max-users {self.plan.max_users} users"
        elif self._time_left(now) < self.plan.stage_s:
            self.stop_reason = (
                f"--run-time {self.plan.run_time_s:g}s leaves no time for stage {stage.number + 1} "
                f"({self.plan.stage_s:g} s)"
            )
        else:
            self._begin(now, per_worker, workers)

    def _time_left(self, now: float) -> float:
        if not self.plan.run_time_s:
            return math.inf
        return self.started_at + self.plan.run_time_s - now

    def _begin(self, now: float, per_worker: int, workers: int) -> None:
        number = len(self.stages) + 1
        length = self.plan.first_stage_s if number == 1 else self.plan.stage_s
        ends_at = now + length
        users = max(min(per_worker * workers, self.plan.max_users), 1)
        settle = self.plan.first_settle_batches if number == 1 else self.plan.settle_batches
        stage = Stage(number, users, workers, per_worker, now, ends_at - self.plan.measure_s, ends_at, settle)
        self.stages.append(stage)
        self.meter.mark(now)

    def _judge(self, stage: Stage) -> None:
        measurement = stage.measurement
        breaches = self.plan.slo_breaches(measurement)
        if breaches:
            stage.outcome, stage.note = SLO_BROKEN, "; ".join(breaches)
            self.stop_reason = f"stage {stage.number} broke the SLO: {stage.note}"
            return
        best = self.best
        if best is None:
            stage.outcome, stage.note = RISE, "the first stage"
            self.best = stage
            return
        gain = measurement.rows_per_s / best.measurement.rows_per_s - 1 if best.measurement.rows_per_s else math.inf
        versus = f"{_percent(gain)} rows/s over stage {best.number}"
        if gain > self.plan.margin:
            stage.outcome, stage.note = RISE, versus
            self.best = stage
            return
        stage.outcome = NO_RISE
        stage.note = f"{versus}, not more than the {_percent(self.plan.margin, sign=False)} margin"
        self.stop_reason = f"stage {stage.number} ({users_text(stage.users)}) {stage.note}"


def users_text(users: int) -> str:
    return "1 user" if users == 1 else f"{users} users"


def _percent(share: float, sign: bool = True) -> str:
    if math.isinf(share):
        return "+inf %"
    return f"{share * 100:+.1f} %" if sign else f"{share * 100:g} %"


# --- the result ---


@dataclass(frozen=True)
class CapacityResult:
    """The capacity found: the best stage within the SLO (none when no stage kept it), why the search stopped, and
    every stage. ``summary_line`` and ``table_lines`` are what the end of a run prints; ``as_dict`` is the same as
    plain JSON-ready data."""

    best: Stage | None
    stages: tuple[Stage, ...]
    stop_reason: str
    plan: CapacityPlan
    started_at: float | None

    @classmethod
    def of(cls, search: CapacitySearch) -> CapacityResult:
        stages = tuple(copy.copy(stage) for stage in search.stages)
        best = next((stage for stage in stages if search.best is not None and stage.number == search.best.number), None)
        return cls(best, stages, search.stop_reason or "", search.plan, search.started_at)

    @property
    def rows_per_s(self) -> float:
        """The capacity: the best stage's rows/s; 0 when no stage kept the SLO."""
        return self.best.measurement.rows_per_s if self.best is not None else 0.0

    @property
    def users(self) -> int:
        """The best stage's users; 0 when no stage kept the SLO."""
        return self.best.users if self.best is not None else 0

    @property
    def batch_size(self) -> int:
        """The batch size that got the best stage's rows; 0 when no stage kept the SLO."""
        return _batch_size(self.best.measurement) if self.best is not None else 0

    def summary_line(self) -> str:
        stopped = f"stopped: {self.stop_reason}" if self.stop_reason else "still running"
        if self.best is None:
            return f"dg capacity: none found within the SLO after {len(self.stages)} stages; {stopped}"
        best, measured = self.best, self.best.measurement
        p99 = "-" if measured.p99_ms is None else f"{measured.p99_ms:g}"
        return (
            f"dg capacity: rows_per_s={measured.rows_per_s:.1f} users={best.users} workers={best.workers} "
            f"batch_size={_batch_size(measured)} p99_ms={p99} error_ratio={measured.error_ratio:.4f} "
            f"stage={best.number} of {len(self.stages)}; {stopped}"
        )

    def table_lines(self) -> list[str]:
        """The stage table: a title line, a header and one row per stage (the best one's outcome reads ``best``)."""
        lines = [
            f"dg capacity stages (each measured over the last {self.plan.measure_s:g} s or more of it):",
            f"  {'stage':>5}  {'users':>6}  {'workers':>7}  {'rows/s':>12}  {'p99 ms':>7}  {'error ratio':>11}  "
            f"{'batch size':>10}  outcome",
        ]
        for stage in self.stages:
            measured = stage.measurement
            if measured is None:
                numbers = f"{'-':>12}  {'-':>7}  {'-':>11}  {'-':>10}"
            else:
                p99 = "-" if measured.p99_ms is None else f"{measured.p99_ms:g}"
                numbers = (
                    f"{measured.rows_per_s:>12.1f}  {p99:>7}  {measured.error_ratio:>11.4f}  "
                    f"{_batch_size(measured):>10}"
                )
            lines.append(
                f"  {stage.number:>5}  {stage.users:>6}  {stage.workers:>7}  {numbers}  {self._outcome(stage)}"
            )
        return lines

    def as_dict(self) -> dict:
        """The result as plain data (JSON-ready): the capacity, its stage, the plan, and every stage."""
        best = self.best
        measured = best.measurement if best is not None else None
        return {
            "rows_per_s": round(self.rows_per_s, 1),
            "stage": best.number if best is not None else None,
            "users": best.users if best is not None else None,
            "workers": best.workers if best is not None else None,
            "batch_size": _batch_size(measured) if measured is not None else None,
            "p99_ms": measured.p99_ms if measured is not None else None,
            "error_ratio": round(measured.error_ratio, 6) if measured is not None else None,
            "stop_reason": self.stop_reason,
            "plan": {
                "stage_s": self.plan.stage_s,
                "first_stage_s": self.plan.first_stage_s,
                "measure_s": self.plan.measure_s,
                "margin": self.plan.margin,
                "max_users": self.plan.max_users,
                "slo_p99_ms": self.plan.slo_p99_ms or None,
                "slo_max_error_ratio": self.plan.slo_max_error_ratio,
            },
            "stages": [self._stage_dict(stage) for stage in self.stages],
        }

    def _outcome(self, stage: Stage) -> str:
        outcome = "best" if stage is self.best else stage.outcome or "running"
        return f"{outcome}: {stage.note}" if stage.note else outcome

    def _stage_dict(self, stage: Stage) -> dict:
        origin = self.started_at or 0.0
        entry = {
            "stage": stage.number,
            "users": stage.users,
            "workers": stage.workers,
            "started_s": round(stage.started_at - origin, 1),
            "measured_from_s": round(stage.measure_from - origin, 1),
            "ended_s": round(stage.ends_at - origin, 1),
            "settled_batches": stage.settled_batches,
            "outcome": stage.outcome or "running",
            "best": stage is self.best,
            "note": stage.note,
        }
        measured = stage.measurement
        if measured is not None:
            entry.update(
                rows_per_s=round(measured.rows_per_s, 1),
                p99_ms=measured.p99_ms,
                error_ratio=round(measured.error_ratio, 6),
                inserted=measured.inserted,
                failed=measured.failed,
                in_doubt=measured.in_doubt,
                batches=measured.batches,
                batch_size=_batch_size(measured),
            )
        return entry


def _batch_size(measured: StageMeasurement) -> int:
    """The size that got a stage's rows: the sizer's best size, or the size in use when there is none (fixed)."""
    return measured.best_batch_size or measured.batch_size


class CapacityFinder(Protocol):
    """What the rest of the run reads of the capacity finder while it drives a test (``capacity_shape`` has it)."""

    clock: Callable[[], float]

    def result(self) -> CapacityResult | None: ...

    def live_measurement(self) -> StageMeasurement | None: ...
