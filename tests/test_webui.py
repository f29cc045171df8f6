"""The Rows tab of the web UI: its rate meter, its rows, and the page and data of a running master (and Chromium)."""

import locust  # noqa: F401

import shutil
import subprocess
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest
from cratedb_double import DoubleProcess, count_rows
from support import LiveLocust, free_ports, get, get_json, post_form, wait_until

from dg_locust.client import InsertOutcome
from dg_locust.history import LOCAL, RunHistory
from dg_locust.ledger import RunLedger
from dg_locust.webui import TAB_KEY, TAB_TITLE, RowsTab

TABLE = "doc.temperature"
SECRET = "pw-that-must-not-show"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# --- pure parts ---


def test_rows_have_one_line_per_user_class_and_a_total_with_the_history_rate_from_the_first_look():
    ledger = RunLedger()
    ledger.reset()
    ledger.for_class("A").record(InsertOutcome(100, 5, 1))
    ledger.for_class("A").batch_size = 400
    ledger.for_class("B").record(InsertOutcome(50, 0, 0))
    ledger.for_class("B").best_batch_size = 800
    history = RunHistory()
    history.reset(0.0)
    history.observe(LOCAL, "A", 2.0, ledger.for_class("A").as_report())
    history.observe(LOCAL, "B", 2.0, ledger.for_class("B").as_report())
    environment = SimpleNamespace(runner=None, web_ui=None)
    tab = RowsTab(environment, SimpleNamespace(ledger=ledger, capacity=None), history, status=None, clock=lambda: 2.0)
    rows = {row["name"]: row for row in tab.rows()}
    assert list(rows) == ["A", "B", "Total"]
    assert rows["A"] == {
        "name": "A",
        "rows_per_s": 50.0,  # 100 rows in the 2 s since the test started: no 0.0 on the first look
        "inserted": 100,
        "failed": 5,
        "in_doubt": 1,
        "batch_size": 400,
        "best_batch_size": 0,
    }
    assert (rows["Total"]["inserted"], rows["Total"]["failed"], rows["Total"]["in_doubt"]) == (150, 5, 1)
    assert rows["Total"]["rows_per_s"] == 75.0
    assert (rows["Total"]["batch_size"], rows["Total"]["best_batch_size"]) == (400, 800)


# --- a running master with two --processes workers ---


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("webui")
    prometheus_port, web_port, master_port = free_ports(3, 2)
    with DoubleProcess(workdir / "crate.sqlite", users={"crate": SECRET}) as double:
        args = ["--processes", "2", "-H", double.url, "--prometheus-port", str(prometheus_port)]
        # never Locust's default master port: other test runs on this machine may use it
        args += [
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(master_port),
            "--master-port",
            str(master_port),
        ]
        args += ["--web-host", "127.0.0.1", "--web-port", str(web_port)]
        with LiveLocust(args, workdir, "master", env={"PASSWORD": SECRET}) as process:
            web = f"http://127.0.0.1:{web_port}"
            connected = wait_until(lambda: get_json(f"{web}/stats/requests").get("worker_count") == 2, timeout=30)
            assert connected, process.output[-3000:]
            yield SimpleNamespace(double=double, web=web, prometheus_port=prometheus_port, process=process)


def _tab_rows(web: str) -> dict[str, dict]:
    report = get_json(f"{web}/stats/requests")
    (tab,) = [entry for entry in report.get("extended_stats", []) if entry["key"] == TAB_KEY]
    return {row["name"]: row for row in tab["data"]}


def _start_once(master) -> None:
    if get_json(f"{master.web}/stats/requests")["state"] == "ready":
        form = {"user_count": 4, "spawn_rate": 4, "host": master.double.url, "run_time": "6s"}
        assert post_form(f"{master.web}/swarm", form)["success"]


def _finished_rows(master) -> dict[str, dict]:
    """The tab's rows once the run has ended and the totals match what the double stored."""

    def settled():
        if get_json(f"{master.web}/stats/requests")["state"] != "stopped":
            return None
        rows = _tab_rows(master.web)
        return rows if rows["Total"]["inserted"] == count_rows(master.double.db_path, TABLE) else None

    rows = wait_until(settled, timeout=30)
    assert rows, master.process.output[-3000:]
    return rows


def test_forked_workers_serve_metrics_on_the_next_ports_from_init(master):
    # before any test ran: Kubernetes probes a worker's /metrics from its start
    for index in range(2):
        page = get(f"http://127.0.0.1:{master.prometheus_port + 1 + index}/metrics")
        assert b"# TYPE dg_rows_inserted_total counter" in page


def test_rows_tab_of_a_running_master_shows_rows_per_class_in_total_and_per_worker(master):
    page = get(f"{master.web}/").decode()
    assert f'"key": "{TAB_KEY}"' in page and f'"title": "{TAB_TITLE}"' in page and "Rows inserted" in page
    assert "dg/assets/dg-webui.js" in page  # Locust's UI with the Rows tab's charts, not Locust's stock page
    assert SECRET not in page  # Locust writes option values into the page; the password stays out
    _start_once(master)

    def live():
        rows = _tab_rows(master.web)
        workers = [row for name, row in rows.items() if name.startswith("worker ")]
        moving = rows.get("TemperatureUser", {}).get("rows_per_s", 0) > 0 and rows["Total"]["rows_per_s"] > 0
        return rows if moving and len(workers) == 2 and all(w["inserted"] > 0 for w in workers) else None

    rows = wait_until(live, timeout=20)
    assert rows, master.process.output[-3000:]
    assert rows["TemperatureUser"]["batch_size"] > 0 and rows["TemperatureUser"]["best_batch_size"] > 0

    rows = _finished_rows(master)
    stored = count_rows(master.double.db_path, TABLE)
    assert rows["TemperatureUser"]["inserted"] == rows["Total"]["inserted"] == stored > 0
    assert rows["Total"]["failed"] == rows["Total"]["in_doubt"] == 0
    assert sum(row["inserted"] for name, row in rows.items() if name.startswith("worker ")) == stored


class _TableCells(HTMLParser):
    """The text of every table row of a page, cell by cell."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_chromium_renders_the_rows_tab_with_the_stored_rows(master, tmp_path):
    _start_once(master)
    _finished_rows(master)
    stored = count_rows(master.double.db_path, TABLE)
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    command += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    command += [f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=8000"]
    command += ["--dump-dom", f"{master.web}/?tab={TAB_KEY}"]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False).stdout
    table = _TableCells()
    table.feed(dom)
    rows = {cells[0]: cells for cells in table.rows if cells}
    assert rows.get("Rows of", [])[:3] == ["Rows of", "Rows/s now", "Rows inserted"], dom[-2000:]
    assert rows["TemperatureUser"][2] == rows["Total"][2] == f"{stored:,}"  # with thousands separators
    assert stored >= 1000 and "," in rows["Total"][2]
    assert sorted(name.split(" (")[0] for name in rows if name.startswith("worker ")) == ["worker 0", "worker 1"]
