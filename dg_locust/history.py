"""Rows over time: a run's rows/s, batch sizes and insert latency as bounded time series, kept on the master.

``RunHistory`` is pure logic, fed with times by its caller. Rates come from cumulative row counters, one *track* per
(source, user class); the source is this process (``LOCAL``) or a worker. A track holds the counters together with
the time they were true (for a worker: when its report reached the master, every 3 s), and its rate is the change
between two of those points at least ``window_s`` apart, so counters that arrive in steps never show as bursts, and
the rate is there from the first look (before a window has passed, it is the rate since the test started). Totals,
user classes and workers are sums of tracks (rates add up); batch sizes are the largest over tracks, as in the
ledger's summary.

Every ``interval_s`` a sample of every group (the total, each user class, each worker) is appended to series that
share one time axis. Memory is bounded: once ``capacity`` samples are held, every other one is dropped and the
interval doubles, so a run of any length keeps its whole course, at a coarser grain the longer it runs.

``HistoryRecorder.register(environment, context)`` (from an ``init`` listener; idle on workers) keeps one history
for the run: it starts afresh at each ``test_start``, observes each worker report as it arrives, samples the local
ledger and Locust's current latency percentiles every second from a greenlet, and takes a last sample at
``test_stop``, when the ledger holds every worker's final counters. The web UI and the report read it.
"""

from __future__ import annotations

from locust.runners import MasterRunner, WorkerRunner

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import gevent

from dg_locust.ledger import REPORT_KEY
from dg_locust.run import RunContext

RATE_WINDOW_S = 10.0
SAMPLE_INTERVAL_S = 1.0
CAPACITY = 1800  # samples per series: 30 minutes at one per second, then coarser
# Workers report every 3 s; after two missed reports a worker's counters are taken as unchanged up to now, so the
# rate of a worker that died falls to zero instead of staying at its last value.
STALE_AFTER_S = 7.0
LOCAL = "local"
TOTAL = "total"
RATE_COUNTERS = ("inserted", "failed", "in_doubt")
SIZE_GAUGES = ("batch_size", "best_batch_size")
METRICS = tuple(f"{counter}_per_s" for counter in RATE_COUNTERS) + SIZE_GAUGES
LATENCY_PERCENTILES = (0.5, 0.95, 0.99)
LATENCY_KEYS = tuple(f"latency/p{round(p * 100)}" for p in LATENCY_PERCENTILES)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    """What a set of series is about: the total, one user class, or one worker."""

    key: str  # "total", "class:<name>" or "worker:<worker id>"
    label: str
    kind: str  # "total", "class" or "worker"


class CounterTrack:
    """Cumulative counters of one (source, user class), with the times they were true, and their latest gauges."""

    def __init__(self, start: float, window_s: float, stale_after_s: float):
        self.window_s = window_s
        self.stale_after_s = stale_after_s
        self.points: deque[tuple[float, tuple[int, ...]]] = deque([(start, (0,) * len(RATE_COUNTERS))])
        self.gauges: dict[str, int] = dict.fromkeys(SIZE_GAUGES, 0)

    def observe(self, t: float, counters: Mapping) -> None:
        values = tuple(int(counters.get(name, 0)) for name in RATE_COUNTERS)
        last_t, last = self.points[-1]
        if any(new < old for new, old in zip(values, last, strict=True)):
            self.points.clear()  # the counters started again (a worker that restarted under the same id)
        self.points.append((max(t, last_t), values))
        # keep the newest point at or before the window's start: the anchor the next rate is measured from
        while len(self.points) > 2 and self.points[1][0] <= self.points[-1][0] - self.window_s:
            self.points.popleft()
        for name in SIZE_GAUGES:
            self.gauges[name] = int(counters.get(name, 0))

    def rates(self, now: float) -> tuple[float, ...]:
        end_t, end = self.points[-1]
        if now - end_t > self.stale_after_s:
            end_t = now  # no news for a while: the counters have not moved since
        anchor_t, anchor = self.points[0]
        for t, values in reversed(self.points):
            if t <= end_t - self.window_s:
                anchor_t, anchor = t, values
                break
        span = end_t - anchor_t
        if span <= 0:
            return (0.0,) * len(RATE_COUNTERS)
        return tuple((e - a) / span for e, a in zip(end, anchor, strict=True))


class RunHistory:
    """Rows/s, batch sizes and latency of one run over time, per group, with bounded memory."""

    def __init__(
        self,
        *,
        window_s: float = RATE_WINDOW_S,
        interval_s: float = SAMPLE_INTERVAL_S,
        capacity: int = CAPACITY,
        stale_after_s: float = STALE_AFTER_S,
    ):
        self.window_s = window_s
        self.base_interval_s = interval_s
        self.capacity = max(capacity, 4)
        self.stale_after_s = stale_after_s
        self.started_at: float | None = None
        self.interval_s = interval_s
        self.tracks: dict[tuple[str, str], CounterTrack] = {}
        self.worker_labels: dict[str, str] = {}
        self.times: list[float] = []
        self.series: dict[str, list[float | None]] = {}

    def reset(self, start: float) -> None:
        """A new test: forget everything, and count rates from ``start``."""
        self.started_at = start
        self.interval_s = self.base_interval_s
        self.tracks.clear()
        self.worker_labels.clear()
        self.times.clear()
        self.series.clear()

    def observe(self, source: str, user_class: str, t: float, counters: Mapping) -> None:
        """The cumulative counters (and batch sizes) of one user class in one source, as they were at ``t``."""
        if self.started_at is None:
            return
        track = self.tracks.get((source, user_class))
        if track is None:
            track = self.tracks[(source, user_class)] = CounterTrack(self.started_at, self.window_s, self.stale_after_s)
        track.observe(t, counters)

    def set_worker_label(self, source: str, label: str) -> None:
        self.worker_labels[source] = label

    def groups(self) -> list[Group]:
        classes = sorted({user_class for _, user_class in self.tracks})
        workers = sorted({source for source, _ in self.tracks if source != LOCAL}, key=self._worker_sort_key)
        return [
            Group(TOTAL, "Total", "total"),
            *(Group(f"class:{name}", name, "class") for name in classes),
            *(Group(f"worker:{source}", self.worker_labels.get(source, source), "worker") for source in workers),
        ]

    def current(self, now: float) -> dict[str, dict[str, float]]:
        """Each group's rows/s (inserted, failed, in doubt) and batch sizes (current, best) at ``now``."""
        if self.started_at is None:
            return {}
        result: dict[str, dict[str, float]] = {TOTAL: dict.fromkeys(METRICS, 0.0)}
        for (source, user_class), track in self.tracks.items():
            rates = track.rates(now)
            keys = [TOTAL, f"class:{user_class}"] + ([f"worker:{source}"] if source != LOCAL else [])
            for key in keys:
                into = result.setdefault(key, dict.fromkeys(METRICS, 0.0))
                for counter, rate in zip(RATE_COUNTERS, rates, strict=True):
                    into[f"{counter}_per_s"] += rate
                for name in SIZE_GAUGES:
                    into[name] = max(into[name], track.gauges[name])
        return result

    def sample(self, now: float, latency_ms: Mapping[str, float | None] | None = None, *, force: bool = False) -> bool:
        """Append one sample of every group (and the latency percentiles) if one is due, or with ``force`` (the
        last one of a run); True when it was."""
        if self.started_at is None or not self.tracks:
            return False  # nothing is known yet: no user class has counted a row
        due = not self.times or now - self.times[-1] >= self.interval_s * 0.75  # ticks jitter; never skip for that
        if not (due or force) or (self.times and now <= self.times[-1]):
            return False
        values: dict[str, float | None] = {
            f"{key}/{metric}": value for key, metrics in self.current(now).items() for metric, value in metrics.items()
        }
        for key in LATENCY_KEYS:
            values[key] = (latency_ms or {}).get(key)
        for key in values.keys() - self.series.keys():
            self.series[key] = [None] * len(self.times)  # a group that appeared during the run: no values before
        self.times.append(now)
        for key, column in self.series.items():
            column.append(values.get(key))
        if len(self.times) > self.capacity:
            self._thin_out()
        return True

    def export(self, since: float | None = None) -> dict:
        """The history as JSON-ready data; with ``since``, only the samples taken after it."""
        first = 0
        if since is not None:
            while first < len(self.times) and self.times[first] <= since:
                first += 1
        return {
            "started_at": self.started_at,
            "interval_s": self.interval_s,
            "time": self.times[first:],
            "groups": [{"key": g.key, "label": g.label, "kind": g.kind} for g in self.groups()],
            "series": {key: column[first:] for key, column in self.series.items()},
        }

    def _thin_out(self) -> None:
        self.times = self.times[::2]
        for key, column in self.series.items():
            self.series[key] = column[::2]
        self.interval_s *= 2

    def _worker_sort_key(self, source: str):
        label = self.worker_labels.get(source, source)
        number = label.split(" ")[1] if label.startswith("worker ") else ""
        return (int(number) if number.isdigit() else 1 << 30, label)


def worker_label(runner, worker_id: str) -> str:
    """How a worker is named to people: ``worker <index> (<host>)``, by Locust's worker index."""
    host = worker_id.rsplit("_", 1)[0]  # Locust's worker ids are "<hostname>_<uuid hex>"
    return f"worker {runner.get_worker_index(worker_id)} ({host})"


class HistoryRecorder:
    """Keeps the run's history on the master or local runner, fed from the ledger and Locust's latency stats."""

    def __init__(
        self,
        environment,
        context: RunContext,
        history: RunHistory | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.environment = environment
        self.context = context
        self.history = history or RunHistory()
        self.clock = clock
        self._sampler: gevent.Greenlet | None = None

    @classmethod
    def register(cls, environment, context: RunContext) -> HistoryRecorder:
        """Hook a recorder onto the environment's events; on a worker it stays idle (the master keeps the history)."""
        recorder = cls(environment, context)
        if isinstance(environment.runner, WorkerRunner):
            return recorder
        events = environment.events
        events.test_start.add_listener(recorder.on_test_start)
        events.worker_report.add_listener(recorder.on_worker_report)
        events.test_stop.add_listener(recorder.on_test_stop)
        events.quitting.add_listener(recorder.on_quitting)
        return recorder

    def on_test_start(self, environment, **_kwargs) -> None:
        self._stop_sampler()
        self.history.reset(self.clock())
        self._sampler = gevent.spawn(self._sample_forever)

    def on_worker_report(self, client_id, data, **_kwargs) -> None:
        report = data.get(REPORT_KEY)
        if report is not None:
            self._observe_worker(client_id, report, self.clock())

    def on_test_stop(self, environment, **_kwargs) -> None:
        """The last sample, once the ledger holds every worker's final counters (the run context collected them)."""
        self._stop_sampler()
        now = self.clock()
        for worker_id, report in list(self.context.ledger.worker_reports.items()):
            self._observe_worker(worker_id, report, now)
        self.sample(now, force=True)

    def on_quitting(self, environment, **_kwargs) -> None:
        self._stop_sampler()

    def sample(self, now: float, force: bool = False) -> None:
        for name, ledger in list(self.context.ledger.classes.items()):
            self.history.observe(LOCAL, name, now, ledger.as_report())
        self.history.sample(now, self._latency(), force=force)

    def _observe_worker(self, worker_id: str, report: dict, now: float) -> None:
        runner = self.environment.runner
        if isinstance(runner, MasterRunner):
            self.history.set_worker_label(worker_id, worker_label(runner, worker_id))
        for name, counters in report.items():
            self.history.observe(worker_id, name, now, counters)

    def _latency(self) -> dict[str, float | None]:
        """Locust's current batch latency percentiles (over its last 10 s), in ms."""
        total = self.environment.runner.stats.total
        latency: dict[str, float | None] = {}
        for key, percentile in zip(LATENCY_KEYS, LATENCY_PERCENTILES, strict=True):
            try:
                latency[key] = total.get_current_response_time_percentile(percentile)
            except ValueError:
                latency[key] = None  # stats without the response time cache (not a master or local runner)
        return latency

    def _sample_forever(self) -> None:
        failed_before = False
        while True:
            try:
                self.sample(self.clock())
            except Exception:  # a bug here must not stop the run: Locust exits 2 on an unhandled greenlet error
                if not failed_before:
                    logger.exception("dg-locust: sampling the rows history failed")
                failed_before = True
            gevent.sleep(SAMPLE_INTERVAL_S)

    def _stop_sampler(self) -> None:
        if self._sampler is not None:
            self._sampler.kill(block=False)
            self._sampler = None
