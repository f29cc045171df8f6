"""Prometheus metrics: port rules, histograms, one registry per process, and /metrics of real runs vs the double."""

import locust  # noqa: F401
from locust.runners import MasterRunner

import json
import re
from types import SimpleNamespace

import prometheus_client
import pytest
from cratedb_double import DoubleProcess, count_rows
from prometheus_client import generate_latest
from support import PROJECT_DIR, LiveLocust, free_ports, get, sample_sum, scrape, wait_until

from dg_locust.client import InsertOutcome
from dg_locust.ledger import RunLedger
from dg_locust.metrics import LATENCY_BUCKETS, DgMetrics, LatencyHistogram, metrics_port, shares_host
from dg_locust.query_ledger import QueryLedger

TABLE = "doc.temperature"


@pytest.fixture
def double(tmp_path):
    with DoubleProcess(tmp_path / "crate.sqlite") as server:
        yield server


# --- port rules ---


def test_master_and_local_runner_take_the_port_and_workers_on_one_host_the_next_ones():
    assert metrics_port(8000, is_worker=False, worker_index=0, shares_host=False) == 8000
    assert metrics_port(8000, is_worker=True, worker_index=0, shares_host=True) == 8001
    assert metrics_port(8000, is_worker=True, worker_index=3, shares_host=True) == 8004
    assert metrics_port(8000, is_worker=True, worker_index=3, shares_host=False) == 8000  # a pod or host of its own
    assert metrics_port(0, is_worker=True, worker_index=3, shares_host=True) == 0  # 0 turns metrics off
    assert metrics_port(0, is_worker=False, worker_index=0, shares_host=False) == 0


def test_a_worker_shares_the_host_when_forked_or_pointed_at_this_machine_outside_kubernetes():
    assert shares_host(forked_child=True, master_host="master.example", in_kubernetes=True)
    assert shares_host(forked_child=False, master_host="127.0.0.1", in_kubernetes=False)
    assert shares_host(forked_child=False, master_host="localhost", in_kubernetes=False)
    assert not shares_host(forked_child=False, master_host="127.0.0.1", in_kubernetes=True)
    assert not shares_host(forked_child=False, master_host="no-such-host.invalid", in_kubernetes=False)


# --- histograms and the collector ---


def test_latency_histogram_buckets_are_cumulative_and_merge_across_processes():
    one, two = LatencyHistogram(), LatencyHistogram()
    for seconds in (0.004, 0.02, 0.02, 0.3):
        one.observe(seconds)
    two.observe(100.0)
    one.add(LatencyHistogram.from_report(two.as_report()))
    buckets = dict(one.cumulative_buckets())
    assert buckets["0.005"] == 1
    assert buckets["0.025"] == 3
    assert buckets["0.5"] == 4
    assert buckets[repr(LATENCY_BUCKETS[-1])] == 4
    assert buckets["+Inf"] == one.count == 5
    assert one.sum == pytest.approx(100.344)


def _fake_environment(ledger):
    return SimpleNamespace(runner=None, parsed_options=None, web_ui=None)


def _metrics(environment, ledger) -> DgMetrics:
    return DgMetrics(environment, SimpleNamespace(ledger=ledger, pipelines={}, queries=QueryLedger(), capacity=None))


def test_each_process_has_its_own_registry_and_counters_read_the_ledger():
    first, second = RunLedger(), RunLedger()
    first.reset()
    second.reset()
    rows = first.for_class("TemperatureUser")
    rows.table = TABLE
    rows.record(InsertOutcome(900, 60, 30))
    rows.record_cut_off(10)
    rows.batch_size = 1000
    second.for_class("TemperatureUser").record(InsertOutcome(5, 0, 0))
    metrics_one, metrics_two = _metrics(_fake_environment(first), first), _metrics(_fake_environment(second), second)
    metrics_one.on_request("CrateDB", "bulk doc.temperature", 120.0, context={"user_class": "TemperatureUser"})

    text = generate_latest(metrics_one.registry).decode()
    labels = 'role="local",table="doc.temperature",user_class="TemperatureUser"'
    assert f"dg_rows_inserted_total{{{labels}}} 900.0" in text
    assert f"dg_rows_failed_total{{{labels}}} 60.0" in text
    assert f"dg_rows_in_doubt_total{{{labels}}} 40.0" in text
    assert f"dg_rows_cut_off_total{{{labels}}} 10.0" in text  # part of the 40 in doubt
    assert f"dg_batch_size{{{labels}}} 1000.0" in text
    assert 'dg_insert_duration_seconds_bucket{le="0.25",role="local",table="",user_class="TemperatureUser"} 1.0' in text
    other = generate_latest(metrics_two.registry).decode()
    assert 'dg_rows_inserted_total{role="local",table="",user_class="TemperatureUser"} 5.0' in other
    assert "dg_rows" not in generate_latest(prometheus_client.REGISTRY).decode()  # never the global registry


# --- real runs against the double ---


def _rows(samples, **labels):
    return {name: sample_sum(samples, f"dg_rows_{name}_total", **labels) for name in ("inserted", "failed", "in_doubt")}


def test_local_run_metrics_count_exactly_the_rows_the_database_stored(double, tmp_path):
    port, web_port = free_ports(1, 1)
    args = ["--autostart", "-u", "4", "-r", "4", "-t", "3s", "-H", double.url, "--prometheus-port", str(port)]
    args += ["--web-host", "127.0.0.1", "--web-port", str(web_port)]
    with LiveLocust(args, tmp_path, "local") as local:
        during = wait_until(lambda: sample_sum(scrape(f"http://127.0.0.1:{port}/metrics"), "dg_rows_inserted_total"))
        assert during > 0, local.output[-3000:]  # counters move while the test runs
        summary = local.wait_for_output(r"^dg summary: inserted=(\d+) failed=(\d+) in_doubt=(\d+)")
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        stored = count_rows(double.db_path, TABLE)
        labels = {"role": "local", "table": TABLE, "user_class": "TemperatureUser"}
        assert _rows(samples, **labels) == {"inserted": stored, "failed": 0, "in_doubt": 0}
        assert stored == int(summary.group(1)) >= during
        batches = sample_sum(samples, "dg_batches_total", **labels)
        assert sample_sum(samples, "dg_insert_duration_seconds_count", **labels) == batches > 0
        assert sample_sum(samples, "dg_batch_size", **labels) > 0
        # the same registry, also on the web UI port
        assert _rows(scrape(f"http://127.0.0.1:{web_port}/metrics")) == _rows(samples)


def test_master_totals_equal_the_sum_over_workers_and_the_rows_stored(double, tmp_path):
    port, web_port, master_port = free_ports(3, 2)
    master_args = ["--master", "--autostart", "--expect-workers", "2", "-u", "4", "-r", "4", "-t", "4s"]
    master_args += ["-H", double.url, "--prometheus-port", str(port), "--master-bind-port", str(master_port)]
    master_args += ["--master-bind-host", "127.0.0.1"]
    master_args += ["--web-host", "127.0.0.1", "--web-port", str(web_port)]
    worker_args = ["--worker", "--master-port", str(master_port), "--prometheus-port", str(port)]
    with (
        LiveLocust(master_args, tmp_path, "master") as master,
        LiveLocust(worker_args, tmp_path, "worker-a"),
        LiveLocust(worker_args, tmp_path, "worker-b"),
    ):
        master.wait_for_output(r"^dg summary: ")
        master_url, web_url = f"http://127.0.0.1:{port}/metrics", f"http://127.0.0.1:{web_port}/metrics"
        # worker i serves on port + 1 + i: they share this host with the master
        worker_urls = [f"http://127.0.0.1:{port + 1 + index}/metrics" for index in range(2)]

        def settled():
            stored = count_rows(double.db_path, TABLE)
            master_rows = _rows(scrape(master_url), role="master")
            worker_rows = [_rows(scrape(url), role="worker") for url in worker_urls]
            summed = {key: sum(rows[key] for rows in worker_rows) for key in master_rows}
            return master_rows == summed == {"inserted": stored, "failed": 0, "in_doubt": 0} and worker_rows

        worker_rows = wait_until(settled, timeout=15)
        assert worker_rows, (
            f"master {_rows(scrape(master_url))}, stored {count_rows(double.db_path, TABLE)}\n{master.output[-3000:]}"
        )
        assert all(rows["inserted"] > 0 for rows in worker_rows)  # both workers inserted rows
        master_samples = scrape(master_url)
        assert sample_sum(master_samples, "dg_workers_reporting", role="master") == 2

        def latency_counts():
            on_workers = sum(sample_sum(scrape(url), "dg_insert_duration_seconds_count") for url in worker_urls)
            on_master = sample_sum(scrape(master_url), "dg_insert_duration_seconds_count")
            return (on_master, on_workers) if on_master == on_workers else None

        # latencies ride on Locust's periodic worker reports (every 3 s), the row counters also on the final one
        assert wait_until(latency_counts, timeout=10), "the master's latency histograms never matched the workers'"
        assert _rows(scrape(web_url)) == _rows(master_samples)
        assert b"# TYPE dg_rows_inserted_total counter" in get(worker_urls[0])


class _IdleMaster(MasterRunner):
    """Only the role of a master: no server, no greenlets."""

    def __init__(self):
        self.greenlet = None


def test_grafana_dashboard_queries_only_metrics_dg_locust_exposes():
    dashboard = json.loads((PROJECT_DIR / "grafana" / "dg-locust.json").read_text())
    environment = _fake_environment(RunLedger())
    environment.runner = _IdleMaster()  # a master also exposes dg_workers_reporting
    exposed = {family.name for family in _metrics(environment, RunLedger()).registry.collect()}
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus", panel["title"]
            queried |= {
                re.sub(r"_(total|bucket|count|sum)$", "", name) for name in re.findall(r"dg_\w+", target["expr"])
            }
    assert queried and queried <= exposed, queried - exposed
    assert {"dg_rows_inserted", "dg_batch_size", "dg_insert_duration_seconds", "dg_rows_failed"} <= queried
