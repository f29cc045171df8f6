"""The Rows tab in Chromium: its charts drawn with the ledger's rates (total and per worker), through a page reload,
and why a run stopped, shown on the page when the database goes away under a running test."""

import locust  # noqa: F401

import re
import time
from types import SimpleNamespace

import pytest
from browser import CHROMIUM, Browser
from cratedb_double import DoubleProcess, count_rows
from support import LiveLocust, free_ports, get_json, post_form, wait_until

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")

TABLE = "doc.temperature"
# consecutive mode paces the rows: 400 sensors, one row each every 0.5 s, is 800 rows/s, 400 per worker
SENSORS, DELTA = 400, 0.5
PACED_ROWS_PER_S = SENSORS / DELTA


def _ui_args(double, web_port: int, *extra: str) -> list[str]:
    return ["-H", double.url, "--prometheus-port", "0", "--web-host", "127.0.0.1", "--web-port", str(web_port), *extra]


@pytest.fixture
def distributed(tmp_path):
    """A master with two --processes workers and its web UI, running a paced test against the double."""
    workdir = tmp_path
    web_port, master_port = free_ports(1, 1)
    with DoubleProcess(workdir / "crate.sqlite") as double:
        args = _ui_args(double, web_port, "--processes", "2", "--ingest-mode", "consecutive")
        args += ["--id-end", str(SENSORS), "--ingest-delta", str(DELTA), "--master-bind-host", "127.0.0.1"]
        args += ["--master-bind-port", str(master_port), "--master-port", str(master_port)]
        with LiveLocust(args, workdir, "master") as process:
            web = f"http://127.0.0.1:{web_port}"
            connected = wait_until(lambda: get_json(f"{web}/stats/requests").get("worker_count") == 2, timeout=30)
            assert connected, process.output[-3000:]
            form = {"user_count": 4, "spawn_rate": 4, "host": double.url}
            assert post_form(f"{web}/swarm", form)["success"]
            yield SimpleNamespace(double=double, web=web, process=process, workdir=workdir)


def _tooltip(browser: Browser, chart: str, x_fraction: float) -> str:
    """Hover over a chart at a fraction of its plot width; the text of the tooltip Locust's line chart shows there."""
    browser.evaluate(f"document.querySelector('#dg-chart-{chart}').scrollIntoView({{block: 'center'}})")
    box = browser.evaluate(
        f"(() => {{ const r = document.querySelector('#dg-chart-{chart}').getBoundingClientRect();"
        " return {x: r.left, y: r.top, width: r.width}; })()"
    )
    left, right = box["x"] + 62, box["x"] + box["width"] - 42  # the plot area inside the chart's grid margins
    browser.move_mouse(left + (right - left) * x_fraction, box["y"] + 160)
    return browser.wait_for(
        f"(() => {{ const t = document.querySelector('#dg-chart-{chart}').innerText;"
        " return /:\\s*[\\d,.]+/.test(t) ? t : ''; })()",
        timeout=10,
    )


def _values(tooltip: str) -> dict[str, float]:
    """Series name -> value of a tooltip (its first line is the time of the point)."""
    pairs = (re.fullmatch(r"(.+):\s*([\d,.]+)", line.strip()) for line in tooltip.strip().splitlines()[1:])
    return {pair[1].strip(): float(pair[2].replace(",", "")) for pair in pairs if pair}


def test_the_rows_chart_draws_the_ledger_rate_with_a_series_per_worker_and_survives_a_reload(distributed):
    samples = wait_until(lambda: len(get_json(f"{distributed.web}/dg/rows")["history"]["time"]) >= 14, timeout=60)
    assert samples, distributed.process.output[-3000:]
    with Browser(distributed.workdir) as browser:
        browser.goto(f"{distributed.web}/?tab=dg_rows")
        browser.wait_for("document.querySelectorAll('#dg-chart-rows canvas, #dg-chart-workers canvas').length >= 2")
        # the ledger's rate meanwhile, measured apart from the page: the rows the database acknowledged in 10 s
        first = (time.monotonic(), count_rows(distributed.double.db_path, TABLE))
        time.sleep(10)
        last = (time.monotonic(), count_rows(distributed.double.db_path, TABLE))
        ledger_rate = (last[1] - first[1]) / (last[0] - first[0])
        assert ledger_rate == pytest.approx(PACED_ROWS_PER_S, rel=0.10)

        total = _values(_tooltip(browser, "rows", 0.995))  # the newest point
        workers = _values(_tooltip(browser, "workers", 0.995))
        assert total["Acknowledged"] == pytest.approx(ledger_rate, rel=0.10), total
        assert total["Failed"] == total["In doubt"] == 0
        assert sorted(name.split(" (")[0] for name in workers) == ["worker 0", "worker 1"], workers
        for rate in workers.values():  # each worker owns half of the sensors
            assert rate == pytest.approx(ledger_rate / 2, rel=0.10), workers
        sizes = _values(_tooltip(browser, "batch-size", 0.995))
        assert sizes["Current"] > 0 and sizes["Best"] > 0
        latency = _values(_tooltip(browser, "latency", 0.995))
        assert 0 < latency["50th percentile"] <= latency["99th percentile"]

        reloaded_at = browser.evaluate("Date.now()")
        browser.goto(f"{distributed.web}/?tab=dg_rows")
        browser.wait_for("document.querySelectorAll('#dg-chart-rows canvas').length >= 1")
        oldest = _tooltip(browser, "rows", 0.0)
        oldest_ms = browser.evaluate(f"Date.parse({oldest.splitlines()[0]!r})")
        assert oldest_ms < reloaded_at - 20_000, oldest  # the points from before the reload are still drawn
        assert _values(oldest)["Acknowledged"] > 0


@pytest.fixture
def local_ui(tmp_path):
    """A local run with the web UI against a double that the test may stop; short client timeout."""
    (web_port,) = free_ports(1, 0)
    double = DoubleProcess(tmp_path / "crate.sqlite").start()
    try:
        # paced (100 rows/s), so the machine stays free for Chromium
        args = _ui_args(double, web_port, "--timeout", "2", "--id-end", "50", "--ingest-mode", "consecutive")
        with LiveLocust(args, tmp_path, "local") as process:
            web = f"http://127.0.0.1:{web_port}"
            assert wait_until(lambda: get_json(f"{web}/stats/requests"), timeout=30), process.output[-3000:]
            yield SimpleNamespace(double=double, web=web, process=process, workdir=tmp_path)
    finally:
        double.stop()


def _wait_for_text(browser: Browser, selector: str, wanted: str, process, timeout: float = 30) -> str:
    """The text of an element once it contains ``wanted``."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = browser.evaluate(f"document.querySelector({selector!r})?.innerText || ''")
        if wanted in text:
            return text
        time.sleep(0.25)
    page = browser.evaluate("document.body.innerText.slice(0, 300)")
    raise AssertionError(f"{selector} never said {wanted!r}; it said {text!r}\npage: {page}\n{process.output[-3000:]}")


def test_the_page_says_why_rows_fail_and_why_the_run_stopped_when_the_database_goes_away(local_ui):
    web = local_ui.web
    assert post_form(f"{web}/swarm", {"user_count": 2, "spawn_rate": 2, "host": local_ui.double.url})["success"]
    # a page loaded before the runner left "ready" keeps showing the start form (Locust's UI polls only while running)
    assert wait_until(lambda: get_json(f"{web}/stats/requests")["state"] == "running", timeout=30)
    with Browser(local_ui.workdir) as browser:
        browser.goto(f"{web}/?tab=dg_rows")
        _wait_for_text(browser, "#dg-status-line", "Running", local_ui.process)
        assert wait_until(lambda: count_rows(local_ui.double.db_path, TABLE) > 0, timeout=20)

        local_ui.double.stop()  # the database goes away under the running test
        failing = _wait_for_text(browser, "#dg-status-line", "rows are failing", local_ui.process)
        assert local_ui.double.url.removeprefix("http://") in failing, failing  # it names the server
        # The user stops and starts again; the run cannot reach the database and stops by itself, saying why.
        first_run = get_json(f"{web}/dg/rows")["history"]
        assert len(first_run["time"]) > 0
        post_form(f"{web}/stop", {})
        assert wait_until(lambda: get_json(f"{web}/stats/requests")["state"] == "stopped", timeout=30)
        assert post_form(f"{web}/swarm", {"user_count": 2, "spawn_rate": 2, "host": local_ui.double.url})["success"]
        stopped = _wait_for_text(browser, "#dg-status-line", "Stopped by itself", local_ui.process, timeout=60)
        assert stopped.startswith("Stopped by itself: ") and local_ui.double.url.removeprefix("http://") in stopped
        reason = stopped.removeprefix("Stopped by itself: ")
        assert f"dg-locust: {reason}; stopping the test" in local_ui.process.output  # and in the log
        # the history (and so the charts) started again with the new test, which inserted nothing
        second = get_json(f"{web}/dg/rows")
        history = second["history"]
        assert (
            history["started_at"] > first_run["started_at"] and min(history["time"] or [1e12]) >= history["started_at"]
        )
        assert not any(history["series"].get("total/inserted_per_s", []))
        assert [row["inserted"] for row in second["rows"] if row["name"] == "Total"] == [0]
        # on every other tab a banner says the same
        browser.goto(f"{web}/?tab=stats")
        banner = _wait_for_text(browser, "#dg-status-banner", "Stopped by itself", local_ui.process, timeout=10)
        assert banner.strip() == stopped.strip()
