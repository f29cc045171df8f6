"""The CrateDB password never shows, and Basic auth over https verifies the server (issue 7).

A run with a password set is searched everywhere a person or a CI log could see it: stdout and stderr (at DEBUG
level), the JSON, CSV and HTML reports, the web UI's pages, ``/metrics``, and the messages of errors and exceptions.
Neither the password (raw, HTML-, URL- or JSON-escaped) nor its Basic token may appear. The TLS options are checked
on the client's urllib3 pools and end to end against a small https server with a self-signed certificate.
"""

import locust  # noqa: F401

import base64
import html
import json
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from argparse import Namespace
from pathlib import Path

import pytest
from cratedb_double import DoubleProcess
from support import clean_environment, free_port, locust_command, run_locust

from dg_locust.client import CrateError, CrateHttpClient
from dg_locust.options import OPTIONS, Settings

USER = "alice"
PASSWORD = "Tr0ub4dor&3-zebra<dg>"  # distinctive, with characters that HTML and URLs escape
TOKEN = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
TRACES = {
    "password": PASSWORD,
    "html-escaped password": html.escape(PASSWORD),
    "url-quoted password": urllib.parse.quote(PASSWORD),
    "url-quoted (plus) password": urllib.parse.quote_plus(PASSWORD),
    "json-escaped password": json.dumps(PASSWORD)[1:-1],
    "basic token": TOKEN,
    "base64 password": base64.b64encode(PASSWORD.encode()).decode(),
}
# Faults that make the run produce error messages, so messages are searched too.
FAULTS = {"reset_mid_response": {"every": 7}, "row_rejections": {"every": 3}, "http_503": {"every": 11}}


def assert_no_trace(text: str, where: str) -> None:
    for name, trace in TRACES.items():
        assert trace not in text, f"{name} found in {where}"


def assert_no_trace_in_files(folder: Path) -> int:
    searched = 0
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".csv", ".html", ".out", ".err", ".log", ".txt"):
            assert_no_trace(path.read_text(errors="replace"), str(path.name))
            searched += 1
    return searched


def get(url: str, data: bytes | None = None, timeout: float = 10) -> str:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as response:
        return response.read().decode(errors="replace")


def wait_for(url: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return get(url, timeout=2)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def start_locust(args: list[str], workdir: Path, env: dict) -> subprocess.Popen:
    with open(workdir / "locust.out", "w") as out, open(workdir / "locust.err", "w") as err:
        return subprocess.Popen(locust_command(*args), cwd=workdir, env=clean_environment(env), stdout=out, stderr=err)


def test_a_headless_run_with_a_password_leaves_no_trace_of_it(tmp_path):
    with DoubleProcess(tmp_path / "crate.sqlite", users={USER: PASSWORD}, faults=FAULTS) as double:
        metrics_port = free_port()
        args = ["--headless", "-u", "4", "-r", "4", "-t", "5s", "-H", double.url, "--loglevel", "DEBUG"]
        args += ["--html", str(tmp_path / "report.html"), "--csv", str(tmp_path / "stats"), "--csv-full-history"]
        args += ["--json-file", str(tmp_path / "report"), "--prometheus-port", str(metrics_port)]
        args += ["--exit-code-on-error", "0"]
        locust_process = start_locust(args, tmp_path, {"USERNAME": USER, "PASSWORD": PASSWORD})
        try:
            time.sleep(3)
            metrics = get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert locust_process.wait(timeout=60) == 0
        finally:
            if locust_process.poll() is None:
                locust_process.kill()
        stats = double.stats()
    assert stats["rows_stored"] > 0 and stats["auth_failures"] == 0  # the password was used, and it worked
    assert "dg_rows_inserted" in metrics
    assert_no_trace(metrics, "/metrics")
    output = (tmp_path / "locust.out").read_text() + (tmp_path / "locust.err").read_text()
    assert "DEBUG" in output and "RowsNotInserted" in (tmp_path / "stats_failures.csv").read_text()
    assert assert_no_trace_in_files(tmp_path) >= 6  # out, err, html, json, and the CSV files


def test_a_refused_password_is_named_by_user_only(tmp_path):
    wrong = "Wr0ng-" + PASSWORD
    with DoubleProcess(tmp_path / "crate.sqlite", users={USER: PASSWORD}) as double:
        args = ["--headless", "-u", "2", "-r", "2", "-t", "10s", "-H", double.url, "--loglevel", "DEBUG"]
        result = run_locust(args, tmp_path, env={"USERNAME": USER, "PASSWORD": wrong})
    assert result.exit_code == 2
    assert f"refused user '{USER}'" in result.output
    for trace in (wrong, base64.b64encode(f"{USER}:{wrong}".encode()).decode(), html.escape(wrong)):
        assert trace not in result.output


def test_the_web_ui_and_its_reports_never_show_the_password(tmp_path):
    web_port, metrics_port = free_port(), free_port()
    with DoubleProcess(tmp_path / "crate.sqlite", users={USER: PASSWORD}, faults=FAULTS) as double:
        args = ["--web-port", str(web_port), "--web-host", "127.0.0.1", "-H", double.url]
        args += ["--prometheus-port", str(metrics_port), "--username", USER]
        locust_process = start_locust(args, tmp_path, {"PASSWORD": PASSWORD})
        ui = f"http://127.0.0.1:{web_port}"
        pages = {}
        try:
            pages["/ before the run"] = wait_for(ui + "/")
            form = urllib.parse.urlencode({"user_count": 2, "spawn_rate": 2, "host": double.url}).encode()
            pages["/swarm"] = get(ui + "/swarm", data=form)
            time.sleep(4)
            for path in ("/", "/stats/requests", "/stats/requests/csv", "/stats/failures/csv", "/exceptions"):
                pages[path] = get(ui + path)
            pages["/stats/report"] = get(ui + "/stats/report")
            pages["/metrics (web UI)"] = get(ui + "/metrics")
            pages["/metrics"] = get(f"http://127.0.0.1:{metrics_port}/metrics")
            get(ui + "/stop", data=b"")  # a POST
        finally:
            locust_process.terminate()
            locust_process.wait(timeout=30)
        stats = double.stats()
    assert stats["rows_stored"] > 0 and stats["auth_failures"] == 0
    assert json.loads(pages["/stats/requests"])["stats"][0]["num_requests"] > 0
    assert "dg_rows_inserted" in pages["/metrics"]
    assert "extra_options" in pages["/"] or "--prometheus-port" in pages["/"] or "prometheus_port" in pages["/"]
    for where, text in pages.items():
        assert_no_trace(text, where)
    assert_no_trace_in_files(tmp_path)


def _options(**overrides) -> Namespace:
    """Parsed options as Locust would hand them over: every default, then the overrides."""
    return Namespace(**{**{spec.dest: spec.default for spec in OPTIONS}, **overrides})


def test_errors_and_objects_never_carry_the_password(tmp_path):
    with DoubleProcess(tmp_path / "crate.sqlite", users={USER: "another"}) as double:
        client = CrateHttpClient((double.url,), username=USER, password=PASSWORD, timeout=5)
        with pytest.raises(CrateError) as refused:
            client.execute("SELECT 1")
        outcome = client.insert(b'{"stmt": "INSERT INTO t (a) VALUES (?)", "bulk_args": [[1]]}', 1, "bulk")
        client.close()
    assert refused.value.status == 401 and outcome.fatal and outcome.failed == 1
    assert f"refused user '{USER}'" in str(refused.value)
    for text in (str(refused.value), repr(refused.value), outcome.error, repr(outcome), repr(client)):
        assert_no_trace(text, text)
    options = _options(password=PASSWORD, username=USER)
    assert_no_trace(repr(Settings.from_options(options)), "Settings")


# --- TLS ---


def test_ca_cert_and_no_verify_ssl_reach_the_https_pool(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a connection is made\n")
    verified = CrateHttpClient(("https://db1:4200", "http://db2:4200"), ca_cert=str(ca), verify_ssl=True)
    assert verified.pool("https://db1:4200").cert_reqs == "CERT_REQUIRED"
    assert verified.pool("https://db1:4200").ca_certs == str(ca)
    assert not hasattr(verified.pool("http://db2:4200"), "cert_reqs")  # plain http: no TLS settings at all
    unverified = CrateHttpClient(("https://db1:4200",), verify_ssl=False)
    assert unverified.pool("https://db1:4200").cert_reqs == "CERT_NONE"
    default = CrateHttpClient(("https://db1:4200",))
    assert default.pool("https://db1:4200").cert_reqs == "CERT_REQUIRED"  # verification is on unless turned off
    settings = Settings.from_options(_options(ca_cert=str(ca), no_verify_ssl=False))
    assert (settings.ca_cert, settings.verify_ssl) == (str(ca), True)
    assert Settings.from_options(_options(no_verify_ssl=True)).verify_ssl is False


TLS_SERVER = textwrap.dedent(
    """
    import base64, http.server, json, ssl, sys

    cert, key, expected = sys.argv[1], sys.argv[2], "Basic " + sys.argv[3]
    log = open(sys.argv[4], "a")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, status, payload):
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.reply(200, {"ok": True, "version": {"number": "6.1.0"}})

        def do_POST(self):
            data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            ok = self.headers.get("Authorization") == expected
            log.write(("auth ok" if ok else "auth wrong") + "\\n")
            log.flush()
            if not ok:
                return self.reply(401, {"error": {"message": "not authenticated", "code": 4010}})
            rows = len(data.get("bulk_args") or [])
            self.reply(200, {"cols": [], "results": [{"rowcount": 1}] * rows} if rows else {"rowcount": 1})

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    """
)


@pytest.fixture
def tls_server(tmp_path):
    """An https stand-in for CrateDB with a self-signed certificate for 127.0.0.1; yields (url, CA file, log)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    cert, key, log = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "tls-server.txt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
        + ["-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    script = tmp_path / "tls_server.py"
    script.write_text(TLS_SERVER)
    server = subprocess.Popen(
        [sys.executable, str(script), str(cert), str(key), TOKEN, str(log)], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(server.stdout.readline())
        yield f"https://127.0.0.1:{port}", cert, log
    finally:
        server.kill()
        server.wait(timeout=10)


def test_basic_auth_over_https_verifies_the_certificate_against_the_ca_bundle(tls_server):
    url, ca, log = tls_server
    with_ca = CrateHttpClient((url,), username=USER, password=PASSWORD, ca_cert=str(ca), timeout=5)
    assert with_ca.check_reachable() == []
    assert with_ca.execute("SELECT 1")["rowcount"] == 1
    without_ca = CrateHttpClient((url,), username=USER, password=PASSWORD, timeout=5)
    with pytest.raises(CrateError, match="certificate verify failed") as untrusted:
        without_ca.check_reachable()
    assert_no_trace(str(untrusted.value), "the TLS error")
    unverified = CrateHttpClient((url,), username=USER, password=PASSWORD, verify_ssl=False, timeout=5)
    assert unverified.execute("SELECT 1")["rowcount"] == 1
    assert log.read_text().splitlines() == ["auth ok", "auth ok"]  # the Basic token arrived, over TLS
    for client in (with_ca, without_ca, unverified):
        client.close()


def test_the_cli_inserts_over_https_with_ca_cert_and_refuses_an_unknown_certificate(tls_server, tmp_path):
    url, ca, _log = tls_server
    env = {"USERNAME": USER, "PASSWORD": PASSWORD}
    run = ["--headless", "-u", "2", "-r", "2", "-t", "4s", "-H", url]
    trusted = run_locust([*run, "--ca-cert", str(ca)], tmp_path, env=env)
    assert trusted.exit_code == 0, trusted.output[-3000:]
    assert trusted.summary["inserted"] > 0
    untrusted = run_locust(run, tmp_path, env=env)
    assert untrusted.exit_code == 2
    errors = [line for line in untrusted.output.splitlines() if "/ERROR/" in line]
    assert len(errors) == 1 and f"TLS with {url} failed" in errors[0] and "certificate verify failed" in errors[0]
    unverified = run_locust([*run, "--no-verify-ssl"], tmp_path, env=env)
    assert unverified.exit_code == 0, unverified.output[-3000:]
    warnings = [line for line in unverified.output.splitlines() if "/WARNING/" in line]
    assert len(warnings) == 1 and "not verified" in warnings[0]  # said once, not per request
    for result in (trusted, untrusted, unverified):
        assert_no_trace(result.output, "CLI output")
