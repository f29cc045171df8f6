"""The Grafana dashboard against a real Prometheus scraping a master + 2 workers run (issue 11).

Prometheus (Debian's ``prometheus`` package; ``.ci/run`` installs it) scrapes the master's and both workers'
``/metrics`` every second while the run goes on; then every query of every panel of ``grafana/dg-locust.json`` is
evaluated through Prometheus's HTTP API, the way Grafana would send it: Grafana's interval variables replaced with a
concrete window, the ``user_class`` template variable with its "All" value (``.*``) and with each value Prometheus
knows for it. Each query must return data (at least one finite value), and the per-pod panels one series per worker.
"""

import locust  # noqa: F401

import json
import math
import re
import shutil
import subprocess
import urllib.parse

import pytest
from cratedb_double import DoubleProcess
from support import PROJECT_DIR, LiveLocust, free_ports, get, get_json, wait_until

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus is not installed (apt-get install -y prometheus)"
)

DASHBOARD = PROJECT_DIR / "grafana" / "dg-locust.json"
SCRAPE_INTERVAL_S = 1
# What Grafana makes of $__rate_interval: at least four scrape intervals. The master's latency histograms move only
# with the workers' reports (every 3 s), so the window holds several of those too.
RATE_WINDOW = "15s"
GRAFANA_INTERVALS = {"__rate_interval": RATE_WINDOW, "__interval": f"{SCRAPE_INTERVAL_S}s", "__range": "5m"}
# Mild faults, so the panels of failed and in-doubt rows and of retries show rows, not only zeros.
FAULTS = {
    "row_rejections": {"every": 7, "fraction": 0.01},
    "circuit_breaker": {"every": 29},
    "http_503": {"every": 23},
}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, query) for every target of every panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def template_variables() -> dict[str, dict]:
    return {variable["name"]: variable for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]}


def substitute(query: str, values: dict[str, str]) -> str:
    """The query with ``$name``, ``${name}`` and ``[[name]]`` replaced; an unknown variable fails the test."""

    def value(match: re.Match) -> str:
        name = next(group for group in match.groups() if group)
        assert name in values, f"the dashboard uses ${name}, which this test does not know how to fill in"
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", value, query)


def instant(prometheus: str, query: str) -> list[dict]:
    answer = get_json(f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': query})}")
    assert answer["status"] == "success", (query, answer)
    assert answer["data"]["resultType"] == "vector", (query, answer["data"]["resultType"])
    return answer["data"]["result"]


def finite_values(result: list[dict]) -> list[float]:
    return [value for value in (float(series["value"][1]) for series in result) if math.isfinite(value)]


def start_prometheus(tmp_path, port: int, targets: list[str]) -> subprocess.Popen:
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "scrape_timeout": f"{SCRAPE_INTERVAL_S}s"},
                "scrape_configs": [{"job_name": "dg-locust", "static_configs": [{"targets": targets}]}],
            }
        )
    )
    command = [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
    command += [f"--web.listen-address=127.0.0.1:{port}"]
    with open(tmp_path / "prometheus.log", "w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


@pytest.fixture
def prometheus_and_run(tmp_path):
    """A master + 2 workers run against the double (with faults), and a Prometheus scraping all three."""
    metrics_port, master_port, prometheus_port = free_ports(3, 2)
    targets = [f"127.0.0.1:{metrics_port + offset}" for offset in range(3)]  # the master, workers 0 and 1
    with DoubleProcess(tmp_path / "crate.sqlite", faults=FAULTS, overhead_ms=5) as double:
        master_args = ["--master", "--headless", "--expect-workers", "2", "-u", "4", "-r", "4", "-t", "120s"]
        master_args += ["--stop-timeout", "2", "--exit-code-on-error", "0", "-H", double.url]
        master_args += ["--prometheus-port", str(metrics_port), "--master-bind-host", "127.0.0.1"]
        master_args += ["--master-bind-port", str(master_port)]
        worker_args = ["--worker", "--master-port", str(master_port), "--prometheus-port", str(metrics_port)]
        prometheus = start_prometheus(tmp_path, prometheus_port, targets)
        try:
            with (
                LiveLocust(master_args, tmp_path, "master") as master,
                LiveLocust(worker_args, tmp_path, "worker-a"),
                LiveLocust(worker_args, tmp_path, "worker-b"),
            ):
                url = f"http://127.0.0.1:{prometheus_port}"
                ready = wait_until(lambda: get(f"{url}/-/ready"), timeout=30)
                assert ready, (tmp_path / "prometheus.log").read_text()[-3000:]
                yield url, master
        finally:
            prometheus.terminate()
            try:
                prometheus.wait(timeout=20)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait()


def test_every_dashboard_query_returns_data_from_a_distributed_run(prometheus_and_run):
    prometheus, master = prometheus_and_run

    def targets_up() -> bool:
        up = instant(prometheus, 'up{job="dg-locust"}')
        return len(up) == 3 and all(series["value"][1] == "1" for series in up)

    assert wait_until(targets_up, timeout=30), instant(prometheus, "up")

    # Grafana fills in $user_class from label_values(dg_rows_inserted_total, user_class)
    variable = template_variables()["user_class"]
    assert variable["definition"] == "label_values(dg_rows_inserted_total, user_class)"
    values_url = f"{prometheus}/api/v1/label/user_class/values?match[]=dg_rows_inserted_total"
    user_classes = wait_until(lambda: get_json(values_url)["data"])
    assert user_classes == ["TemperatureUser"]
    choices = [variable["allValue"], *user_classes]

    queries = [
        (title, substitute(query, {**GRAFANA_INTERVALS, "user_class": choice}))
        for title, query in dashboard_queries()
        for choice in choices
    ]
    assert len(queries) >= 2 * 12

    def all_answer() -> list[list[dict]] | None:
        """Every query's result once each returns a finite value, the failure panels show rows, and Prometheus has
        scraped every process over a whole rate window; None until then."""
        results = [instant(prometheus, query) for _, query in queries]
        if not all(finite_values(result) for result in results):
            return None
        failed_or_in_doubt = [r for (title, _), r in zip(queries, results, strict=True) if "+ in doubt" in title]
        if not all(finite_values(result)[0] > 0 for result in failed_or_in_doubt):
            return None
        scraped = instant(prometheus, f'count_over_time(up{{job="dg-locust"}}[{RATE_WINDOW}])')
        if min(float(series["value"][1]) for series in scraped) < 10:
            return None
        return results

    results = wait_until(all_answer, timeout=90, interval=1)
    if not results:
        empty = [(title, query) for title, query in queries if not finite_values(instant(prometheus, query))]
        raise AssertionError(f"{len(empty)} queries without data: {empty}\n{master.output[-2000:]}")

    by_title: dict[str, list[list[dict]]] = {}
    for (title, _), result in zip(queries, results, strict=True):
        by_title.setdefault(title, []).append(result)
    assert set(by_title) == {title for title, _ in dashboard_queries()}
    # the panel that used to be empty: the master counts both workers
    assert all(finite_values(result) == [2.0] for result in by_title["Workers reporting"])
    # the per-pod panels: one series per worker (the master's totals are not a pod's)
    for title in ("Rows/s per pod", "Batch latency p95 per pod", "Batches per second per pod"):
        for result in by_title[title]:
            assert len(result) == 2, (title, result)
    assert all(finite_values(result)[0] > 0 for result in by_title["Rows/s (cluster)"])
