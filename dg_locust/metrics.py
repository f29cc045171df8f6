"""The Prometheus exposition of a run: one registry per process, read from the ledger at scrape time.

``DgMetrics.register(environment)`` (from an ``init`` listener, after ``DgRuntime.register``) gives this process its
own ``CollectorRegistry`` (never prometheus-client's global one) holding one collector that, at each scrape, reads
the run's cumulative row counters from the ledger, so the counters are exactly the ledger's and never depend on
Locust's per-report stats resets. Batch latency is the one thing the ledger does not hold: it is collected here from
Locust's request event into cumulative histograms that workers ship to the master under ``LATENCY_REPORT_KEY``.
The query workload's series (``dg_query_*``, labelled by query too) are read from the query ledger the same way.

A worker or local run exposes its own process's rows; the master exposes the cluster-wide totals it merges from the
workers' reports (label ``role``: local, worker or master, so dashboards never add a master's totals to its
workers'). ``/metrics`` is served on ``metrics_port(...)`` from ``init`` on (after Locust's ``--processes`` fork,
since init runs in each forked process), and on a master also at ``/metrics`` of the web UI when the UI runs.
"""

from __future__ import annotations

from locust.runners import MasterRunner, WorkerRunner

import bisect
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable

from flask import Response
from gevent.pywsgi import WSGIServer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from dg_locust.capacity import CapacityResult
from dg_locust.client import REQUEST_TYPE
from dg_locust.query_ledger import QueryTally
from dg_locust.run import RunContext

LATENCY_REPORT_KEY = "dg_latency"
KUBERNETES_ENV_VAR = "KUBERNETES_SERVICE_HOST"
# Batch latency in seconds: a small batch on an idle node takes milliseconds, a large one on a busy cluster seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LABELS = ("user_class", "table", "role")
QUERY_LABELS = ("user_class", "table", "query", "role")
# Query latency in seconds: a point lookup on an idle node takes a millisecond, an aggregate on a busy cluster seconds.
# Every bound has 3 significant digits, so the query ledger's rounded latencies fall into the right bucket.
QUERY_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# (ledger counter, metric name without the _total suffix, help)
COUNTER_METRICS = (
    ("inserted", "dg_rows_inserted", "Rows CrateDB acknowledged"),
    ("failed", "dg_rows_failed", "Rows CrateDB refused (error response or per-row failure)"),
    ("in_doubt", "dg_rows_in_doubt", "Rows whose outcome is unknown (timeout, reset connection, HTTP 500, cut off)"),
    (
        "cut_off",
        "dg_rows_cut_off",
        "Rows in doubt because the stop cut their batch off in flight (in dg_rows_in_doubt)",
    ),
    ("generated", "dg_rows_generated", "Rows generated and handed to users for sending"),
    ("batches", "dg_batches", "Insert requests (batches) sent"),
    ("retries", "dg_batch_retries", "Re-sends of batches CrateDB refused before executing them (HTTP 429/503)"),
)

logger = logging.getLogger(__name__)


def metrics_port(base: int, *, is_worker: bool, worker_index: int, shares_host: bool) -> int:
    """The /metrics port of this process; 0 means none.

    The master or a local runner takes ``base``; a worker takes ``base + 1 + worker_index`` when it shares a host
    with the master and its other workers, and ``base`` when it has a host (a pod, a container) of its own."""
    if base <= 0 or not is_worker:
        return max(base, 0)
    return base + 1 + max(worker_index, 0) if shares_host else base


def shares_host(*, forked_child: bool, master_host: str, in_kubernetes: bool) -> bool:
    """Whether a worker shares its host with the master: forked by ``--processes``, or (outside Kubernetes, where
    every pod has its own address) connected to the master through an address of this machine."""
    return forked_child or (not in_kubernetes and is_local_address(master_host))


def is_local_address(host: str) -> bool:
    """True when ``host`` names this machine (a loopback address, or one of this host's own addresses)."""
    try:
        targets = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    if any(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in targets):
        return True
    try:
        own = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return False
    return bool(targets & own)


class LatencyHistogram:
    """A cumulative histogram of batch latencies (seconds) with fixed buckets; mergeable across processes."""

    def __init__(self, counts: Iterable[int] | None = None, total: float = 0.0):
        self.counts = list(counts) if counts is not None else [0] * (len(LATENCY_BUCKETS) + 1)  # last: +Inf
        self.sum = total

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def add(self, other: LatencyHistogram) -> None:
        if len(other.counts) != len(self.counts):
            return  # a worker with another bucket layout (another version): not comparable
        self.counts = [mine + theirs for mine, theirs in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum

    def cumulative_buckets(self) -> list[tuple[str, int]]:
        buckets, running = [], 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return buckets

    def as_report(self) -> dict:
        return {"counts": list(self.counts), "sum": self.sum}

    @classmethod
    def from_report(cls, report: dict) -> LatencyHistogram:
        return cls(report.get("counts", ()), float(report.get("sum", 0.0)))


class DgMetrics:
    """This process's metrics: its registry, its latency histograms and its /metrics server."""

    def __init__(self, environment, context: RunContext):
        self.environment = environment
        self.context = context
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_LedgerCollector(self))
        self.latency: dict[tuple[str, str], LatencyHistogram] = {}  # (user class, table) -> this process's batches
        self.worker_latency: dict[str, list[dict]] = {}  # worker id -> its latest cumulative report (master)
        self.server: WSGIServer | None = None
        self.port = 0

    @classmethod
    def register(cls, environment, context: RunContext) -> DgMetrics:
        """Hook the metrics onto the environment's events and start serving /metrics (call it from ``init``)."""
        metrics = cls(environment, context)
        events = environment.events
        events.request.add_listener(metrics.on_request)
        events.test_start.add_listener(metrics.on_test_start)
        events.report_to_master.add_listener(metrics.on_report_to_master)
        events.worker_report.add_listener(metrics.on_worker_report)
        events.quitting.add_listener(metrics.on_quitting)
        if environment.web_ui is not None:
            metrics.add_web_ui_route(environment.web_ui)
        metrics.start_server(metrics.port_for_this_process())
        return metrics

    # --- roles and port ---

    @property
    def role(self) -> str:
        runner = self.environment.runner
        return (
            "master" if isinstance(runner, MasterRunner) else "worker" if isinstance(runner, WorkerRunner) else "local"
        )

    def port_for_this_process(self) -> int:
        options = self.environment.parsed_options
        try:
            base = int(getattr(options, "prometheus_port", 0) or 0)
        except (TypeError, ValueError):
            base = 0  # the run context reports bad option values; metrics just stay off
        runner = self.environment.runner
        is_worker = isinstance(runner, WorkerRunner)
        if not is_worker:
            return metrics_port(base, is_worker=False, worker_index=0, shares_host=False)
        same_host = shares_host(
            forked_child=bool(getattr(options, "processes", None)),
            master_host=runner.master_host,
            in_kubernetes=bool(os.environ.get(KUBERNETES_ENV_VAR)),
        )
        return metrics_port(base, is_worker=True, worker_index=runner.worker_index, shares_host=same_host)

    def start_server(self, port: int) -> None:
        if not port:
            return
        server = WSGIServer(("", port), make_wsgi_app(self.registry), log=None, error_log=logger)
        try:
            server.start()
        except OSError as error:
            logger.error("dg-locust: cannot serve /metrics on port %s (%s); set --prometheus-port", port, error)
            return
        self.server, self.port = server, port
        logger.info("dg-locust: Prometheus metrics on :%s/metrics (%s)", port, self.role)

    def add_web_ui_route(self, web_ui) -> None:
        @web_ui.app.route("/metrics")
        @web_ui.auth_required_if_enabled
        def dg_metrics() -> Response:
            return Response(generate_latest(self.registry), mimetype=CONTENT_TYPE_LATEST)

    # --- events ---

    def on_request(self, request_type, name, response_time, context=None, **_kwargs) -> None:
        if request_type != REQUEST_TYPE:
            return
        key = self._labels_for(name, context or {})
        histogram = self.latency.get(key)
        if histogram is None:
            histogram = self.latency[key] = LatencyHistogram()
        histogram.observe(response_time / 1000)

    def on_test_start(self, environment, **_kwargs) -> None:
        self.latency.clear()  # the ledger starts from zero at each test; so do the histograms
        self.worker_latency.clear()

    def on_report_to_master(self, client_id, data, **_kwargs) -> None:
        data[LATENCY_REPORT_KEY] = [
            {"user_class": user_class, "table": table, **histogram.as_report()}
            for (user_class, table), histogram in self.latency.items()
        ]

    def on_worker_report(self, client_id, data, **_kwargs) -> None:
        if LATENCY_REPORT_KEY in data:
            self.worker_latency[client_id] = data[LATENCY_REPORT_KEY]

    def on_quitting(self, environment, **_kwargs) -> None:
        if self.server is not None:
            self.server.stop(timeout=1)
            self.server = None

    # --- what a scrape reads ---

    def latency_by_class(self) -> dict[tuple[str, str], LatencyHistogram]:
        """This process's histograms plus (on a master) every worker's latest ones, merged per (class, table)."""
        merged: dict[tuple[str, str], LatencyHistogram] = {}
        for key, histogram in self.latency.items():
            merged.setdefault(key, LatencyHistogram()).add(histogram)
        for report in self.worker_latency.values():
            for entry in report:
                key = (entry.get("user_class", ""), entry.get("table", ""))
                merged.setdefault(key, LatencyHistogram()).add(LatencyHistogram.from_report(entry))
        return merged

    def _labels_for(self, request_name: str, context: dict) -> tuple[str, str]:
        """(user class, table) of a request: from its context when given, else from the pipeline of that name."""
        if context.get("user_class"):
            return context["user_class"], context.get("table", "")
        matches = [p for p in self.context.pipelines.values() if p.request_name == request_name]
        if not matches:
            return "", request_name.split(" ", 1)[-1]
        # Two classes inserting into one table with one method share a request name; their latencies are one series.
        return "+".join(sorted(p.class_name for p in matches)), matches[0].table.display_name


class _LedgerCollector:
    """Reads the ledger (and the latency histograms) at scrape time into Prometheus metric families."""

    def __init__(self, metrics: DgMetrics):
        self.metrics = metrics

    def collect(self):
        metrics = self.metrics
        ledger = metrics.context.ledger
        role = metrics.role
        per_class = ledger.per_class()
        for counter, name, documentation in COUNTER_METRICS:
            family = CounterMetricFamily(name, documentation, labels=LABELS)
            for user_class, counters in sorted(per_class.items()):
                family.add_metric([user_class, counters.get("table", ""), role], int(counters.get(counter, 0)))
            yield family
        for key, name, documentation in (
            (
                "batch_size",
                "dg_batch_size",
                "Current batch size (rows) of the adaptive sizer; the largest over workers",
            ),
            ("best_batch_size", "dg_batch_size_best", "Best batch size the sizer found; the largest over workers"),
        ):
            family = GaugeMetricFamily(name, documentation, labels=LABELS)
            for user_class, counters in sorted(per_class.items()):
                family.add_metric([user_class, counters.get("table", ""), role], int(counters.get(key, 0)))
            yield family
        family = HistogramMetricFamily(
            "dg_insert_duration_seconds", "Batch insert latency (request sent to answer)", labels=LABELS
        )
        for (user_class, table), histogram in sorted(metrics.latency_by_class().items()):
            family.add_metric([user_class, table, role], histogram.cumulative_buckets(), histogram.sum)
        yield family
        yield from query_families(metrics.context.queries.per_query(), role)
        capacity = metrics.context.capacity.result() if metrics.context.capacity is not None else None
        if capacity is not None:
            yield from capacity_families(capacity, role)
        if role == "master":
            workers = GaugeMetricFamily(
                "dg_workers_reporting", "Workers whose row counters the master totals hold", labels=("role",)
            )
            workers.add_metric([role], len(ledger.worker_reports))
            yield workers


def query_families(tallies: list[QueryTally], role: str):
    """The query workload's series, from the query ledger: latency histogram, failures and rows per query."""
    latency = HistogramMetricFamily(
        "dg_query_duration_seconds", "Query latency (request sent to answer), per query", labels=QUERY_LABELS
    )
    failures = CounterMetricFamily(
        "dg_query_failures", "Queries that failed (an error, or fewer rows than the data holds)", labels=QUERY_LABELS
    )
    rows = CounterMetricFamily("dg_query_rows", "Rows the queries returned", labels=QUERY_LABELS)
    for tally in tallies:
        labels = [tally.user_class, tally.table, tally.query, role]
        buckets = [(repr(bound), tally.count_at_or_below(bound)) for bound in QUERY_LATENCY_BUCKETS]
        latency.add_metric(labels, [*buckets, ("+Inf", tally.requests)], tally.seconds)
        failures.add_metric(labels, tally.failures)
        rows.add_metric(labels, tally.rows)
    yield latency
    yield failures
    yield rows


def capacity_families(capacity: CapacityResult, role: str) -> list[GaugeMetricFamily]:
    """The capacity finder's gauges (master or local runner, in a test it runs): the capacity found so far, the stage
    it is at, and each measured stage's rows/s."""
    stages = capacity.stages
    current = stages[-1] if stages else None
    families = []
    for name, documentation, value in (
        (
            "dg_capacity_rows_per_second",
            "Capacity found so far: the best capacity stage's acknowledged rows/s within the SLO (0 until one)",
            capacity.rows_per_s,
        ),
        ("dg_capacity_users", "Users of the best capacity stage (0 until one)", capacity.users),
        ("dg_capacity_batch_size", "Batch size of the best capacity stage (0 until one)", capacity.batch_size),
        (
            "dg_capacity_stage",
            "The capacity stage running now (1, 2, ...; the last one once done)",
            current.number if current else 0,
        ),
        ("dg_capacity_stage_users", "Users of the capacity stage running now", current.users if current else 0),
        ("dg_capacity_done", "1 once the capacity finder has stopped, else 0", 1 if capacity.stop_reason else 0),
    ):
        family = GaugeMetricFamily(name, documentation, labels=("role",))
        family.add_metric([role], float(value or 0))
        families.append(family)
    family = GaugeMetricFamily(
        "dg_capacity_stage_rows_per_second",
        "Acknowledged rows/s each measured capacity stage reached",
        labels=("stage", "users", "role"),
    )
    for stage in stages:
        if stage.measurement is not None:
            family.add_metric([str(stage.number), str(stage.users), role], stage.measurement.rows_per_s)
    families.append(family)
    return families
