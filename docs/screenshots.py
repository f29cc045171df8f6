"""Takes the README's screenshots from real runs against the CrateDB test double (needs Chromium):

    .venv/bin/python docs/screenshots.py

- docs/webui-rows.png: the web UI's Rows tab during a master + 2 workers run (adaptive batch size, a double with the
  latency model of tests/test_sizer_end_to_end.py: a cost per request and per row, overload above 7000 rows);
- docs/report.png: the top of the --rows-report page of a headless master + 2 workers run.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent / "tests"))

import locust  # noqa: E402, F401  (gevent's monkey patching first, as in the tests)

from browser import Browser  # noqa: E402
from cratedb_double import DoubleProcess  # noqa: E402
from PIL import Image  # noqa: E402
from support import LiveLocust, free_ports, get_json, post_form, run_locust, wait_until  # noqa: E402

LATENCY_MODEL = {"overhead_ms": 60, "per_row_us": 10, "max_concurrency": 2, "overload_rows": 7000}  # as the sizer test
RUN_S = 60


def web_ui_screenshot(workdir: Path) -> None:
    web_port, master_port = free_ports(1, 1)
    with DoubleProcess(workdir / "ui.sqlite", **LATENCY_MODEL) as double:
        args = ["-H", double.url, "--prometheus-port", "0", "--web-host", "127.0.0.1", "--web-port", str(web_port)]
        args += ["--processes", "2", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(master_port)]
        args += ["--master-port", str(master_port)]
        with LiveLocust(args, workdir, "ui"):
            web = f"http://127.0.0.1:{web_port}"
            assert wait_until(lambda: get_json(f"{web}/stats/requests").get("worker_count") == 2, timeout=60)
            assert post_form(f"{web}/swarm", {"user_count": 8, "spawn_rate": 8, "host": double.url})["success"]
            time.sleep(RUN_S)
            with Browser(workdir, width=1280, height=1000) as browser:
                browser.goto(f"{web}/?tab=dg_rows")
                browser.wait_for("document.querySelectorAll('.dg-chart canvas').length >= 4")
                time.sleep(2)  # the charts' drawing animation
                height = browser.evaluate("document.querySelector('#dg-chart-latency').getBoundingClientRect().top")
                browser.screenshot(DOCS / "webui-rows.png", clip={"x": 0, "y": 0, "width": 1280, "height": height})


def report_screenshot(workdir: Path) -> None:
    with DoubleProcess(workdir / "report.sqlite", **LATENCY_MODEL) as double:
        args = ["--processes", "2", "--headless", "-u", "8", "-r", "8", "-t", f"{RUN_S}s", "-H", double.url]
        args += ["--rows-report", "out/report.html", "--min-rows-per-sec", "10000", "--max-fail-ratio", "0.01"]
        result = run_locust(args, workdir, timeout=RUN_S + 120)
        assert (workdir / "out" / "report.html").exists(), result.output[-3000:]
    with Browser(workdir, width=1200, height=1000) as browser:
        browser.goto((workdir / "out" / "report.html").as_uri())
        bottom = browser.evaluate("document.querySelector('#dg-chart-main').getBoundingClientRect().bottom")
        browser.screenshot(DOCS / "report.png", clip={"x": 0, "y": 0, "width": 1200, "height": bottom + 10})


def shrink(png: Path) -> None:
    """256 colours are plenty for a screenshot of charts and tables, at a third of the size."""
    image = Image.open(png).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        web_ui_screenshot(Path(tmp))
        report_screenshot(Path(tmp))
    for png in (DOCS / "webui-rows.png", DOCS / "report.png"):
        shrink(png)
    print("wrote", DOCS / "webui-rows.png", "and", DOCS / "report.png")
