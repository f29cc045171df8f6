"""The run's report: the JSON summary (the dg summary line's numbers), the HTML page with its charts and the PNG,
and the rows section in Locust's own --html report, from a real headless master + 2 workers run."""

import locust  # noqa: F401

import io
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from browser import CHROMIUM, Browser
from cratedb_double import DoubleProcess, count_rows
from PIL import Image
from support import free_port, run_locust

from dg_locust.client import InsertOutcome
from dg_locust.history import LOCAL, RunHistory
from dg_locust.ledger import RunLedger
from dg_locust.report import SECTION_ID, add_section, png_path, report_page, run_summary

TABLE = "doc.temperature"
WORKER_LINE = re.compile(r"^dg worker (\d+): inserted=(\d+) failed=(\d+) in_doubt=(\d+)$", re.M)
ACKNOWLEDGED_RGB = (0x00, 0xA8, 0x4A)  # the colour of the acknowledged rows/s line (charts.OUTCOME_LINES)


# --- pure parts ---


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_summary_holds_the_summary_lines_numbers_and_the_page_shows_them():
    clock = Clock()
    ledger = RunLedger(clock=clock)
    ledger.reset()
    ledger.for_class("A").record(InsertOutcome(12345, 5, 7))
    ledger.for_class("A").batch_size = 1400
    clock.now += 10
    ledger.stopped_at = clock.now
    summary = run_summary(ledger)
    line = dict(re.findall(r"(\w+)=([\d.]+)", ledger.summary_line()))
    assert {key: str(summary[key]) for key in line} == line
    history = RunHistory()
    history.reset(1000.0)
    for second in range(1, 11):
        history.observe(LOCAL, "A", 1000.0 + second, {"inserted": 1234 * second, "batch_size": 1400})
        history.sample(1000.0 + second, {"latency/p50": 20, "latency/p95": 30, "latency/p99": 40})
    page = report_page(summary, history.export(), host="http://db:4200")
    assert "<td>12,345</td>" in page and "<td>1,234.5</td>" in page and "No thresholds were set." in page
    assert page.count("<svg") == 1 and 'id="dg-total-inserted_per_s"' in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//|url\((?!#)|@import""", page)  # nothing loaded from elsewhere


def test_the_section_goes_after_the_root_of_locusts_report_once():
    page = '<html><body>\n<div id="root"></div>\n<script>x</script></body></html>'
    section = f'<section id="{SECTION_ID}">rows</section>'
    once = add_section(page, section)
    assert once.index('<div id="root"></div>') < once.index(section) < once.index("<script>x")
    assert add_section(once, section) == once
    assert png_path("out/report.html") == "out/report.png" and png_path("report.png") == "report.png.png"


# --- a real run ---


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("report")
    with DoubleProcess(workdir / "crate.sqlite") as double:
        args = ["--processes", "2", "--headless", "-u", "4", "-r", "4", "-t", "8s", "-H", double.url]
        port = free_port()  # not Locust's default 5557, which another run on this host may hold
        args += ["--master-bind-host", "127.0.0.1", "--master-bind-port", str(port), "--master-port", str(port)]
        args += ["--rows-report", "out/report.html", "--summary-json", "out/summary.json", "--html", "out/locust.html"]
        args += ["--min-rows-per-sec", "1", "--exit-code-on-error", "0"]
        result = run_locust(args, workdir, timeout=180)
        stored = count_rows(double.db_path, TABLE)
    out = workdir / "out"
    return SimpleNamespace(
        result=result, out=out, stored=stored, summary=json.loads((out / "summary.json").read_text())
    )


def test_the_json_summary_equals_the_summary_and_worker_lines(run):
    assert run.result.exit_code == 0, run.result.output[-3000:]
    summary = run.summary
    assert {key: summary[key] for key in run.result.summary} == run.result.summary
    assert summary["inserted"] == run.stored > 0
    workers = [
        {"worker": int(i), "inserted": int(a), "failed": int(b), "in_doubt": int(c)}
        for i, a, b, c in WORKER_LINE.findall(run.result.stdout)
    ]
    assert len(workers) == 2
    assert [
        {key: w[key] for key in ("worker", "inserted", "failed", "in_doubt")} for w in summary["per_worker"]
    ] == workers
    assert summary["per_class"]["TemperatureUser"]["inserted"] == summary["inserted"]
    assert summary["thresholds"]["passed"] is True
    assert summary["thresholds"]["line"] in run.result.stdout
    assert summary["generated"] == summary["inserted"] + summary["failed"] + summary["in_doubt"]


def test_the_png_shows_the_acknowledged_rows_line(run):
    image = Image.open(io.BytesIO((run.out / "report.png").read_bytes())).convert("RGB")
    assert image.width >= 800 and image.height >= 600
    line_pixels = int(np.all(np.asarray(image) == ACKNOWLEDGED_RGB, axis=-1).sum())
    assert line_pixels > 200  # a line across the rows/s panel (and the legend's sample), not only the legend


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_chromium_shows_the_reports_charts_summary_and_verdict(run, tmp_path):
    summary = run.summary
    with Browser(tmp_path) as browser:
        browser.goto((run.out / "report.html").as_uri())
        cells = browser.evaluate("[...document.querySelectorAll('#dg-summary td')].map(td => td.innerText)")
        assert cells[:3] == [f"{summary['inserted']:,}", f"{summary['failed']:,}", f"{summary['in_doubt']:,}"]
        assert browser.evaluate("document.querySelector('#dg-verdict').innerText") == summary["thresholds"]["line"]
        # the charts are drawn: the rows/s line has a point per sample, and each worker has its line
        points = browser.evaluate("document.querySelector('#dg-total-inserted_per_s path').getAttribute('d')")
        assert len(re.findall(r"[ML]\s*[\d.]+\s+[\d.]+", points)) >= 6
        box = browser.evaluate(
            "(() => { const r = document.querySelector('#dg-chart-main svg').getBoundingClientRect();"
            " return [r.width, r.height]; })()"
        )
        assert box[0] > 600 and box[1] > 400
        worker_lines = browser.evaluate(
            "[...document.querySelectorAll('#dg-chart-workers g[id^=\"dg-worker-\"]')].map(g => g.id)"
        )
        assert len(worker_lines) == 2, worker_lines
        rows = browser.evaluate("[...document.querySelectorAll('#dg-workers tr')].map(tr => tr.innerText)")
        assert len(rows) == 3  # a header and two workers

        # Locust's own report carries the same rows section, below its own content
        browser.goto((run.out / "locust.html").as_uri())
        browser.wait_for("document.querySelector('#root').innerText.includes('Locust Test Report')")
        assert browser.evaluate(f"!!document.querySelector('#{SECTION_ID} #dg-chart-main svg')")
        cells = browser.evaluate(
            f"[...document.querySelectorAll('#{SECTION_ID} #dg-summary td')].map(td => td.innerText)"
        )
        assert cells[0] == f"{summary['inserted']:,}"
