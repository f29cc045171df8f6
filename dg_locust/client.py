"""Talks to CrateDB over HTTP and sorts every insert into rows inserted, failed or in doubt.

It uses the ``crate`` client's HTTP layer (``crate.client.http.Server``: one urllib3 pool per server, with the
client's TLS and path handling) but sends each request itself, because the client's high-level ``sql()`` has
traps a load tool must not fall into (see ``shared/notes/crate-client.md``): it gzips every body (CPU-bound and
slow), re-sends a request without end when a connection is reset, re-sends it to the next server after a timeout
(so rows can be inserted twice), and drops the HTTP status and CrateDB error code. Here:

- bodies are sent uncompressed and as given (pre-encoded by ``batch``);
- a request is sent once; only when CrateDB refused it before executing it (HTTP 429, 503) is it retried, at
  most ``max_retries`` times with back-off; a refused connection (nothing was sent) moves on to the next server;
- a timeout, a reset connection or an HTTP 500 (which may have executed part of a bulk) makes the batch
  "in doubt": it is never re-sent and never counted as inserted;
- several servers are used round-robin, one per request.

Outcomes carry whether the database signalled overload (for the batch sizer) and whether the error is fatal for
the run (authentication), so callers never parse messages.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

import gevent
import orjson
import urllib3
from crate.client.http import Server
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

SQL_PATH = "/_sql"
OVERLOAD_STATUSES = (429, 503)
AUTH_STATUSES = (401, 403)


@dataclass(frozen=True)
class InsertOutcome:
    """What became of one batch: every row is in exactly one of inserted, failed or in_doubt."""

    inserted: int
    failed: int
    in_doubt: int
    retries: int = 0
    error: str | None = None  # one line, never containing credentials
    overload: bool = False  # the database signalled overload: back off
    fatal: bool = False  # the run cannot go on (e.g. wrong credentials)

    @property
    def rows(self) -> int:
        return self.inserted + self.failed + self.in_doubt


class CrateError(Exception):
    """A statement CrateDB answered with an error (or could not be reached); ``status`` 0 means no answer."""

    def __init__(self, message: str, *, status: int = 0, code: int = 0, server: str = ""):
        super().__init__(message)
        self.status = status
        self.code = code
        self.server = server

    @property
    def is_auth(self) -> bool:
        return self.status in AUTH_STATUSES


@dataclass(frozen=True)
class _Answer:
    """One HTTP exchange: the status and body, or why there was none."""

    server: str
    status: int = 0
    body: bytes = b""
    sent: bool = True  # False when the request never left (connection refused): safe to send elsewhere
    problem: str = ""
    timed_out: bool = False


class CrateHttpClient:
    """A small CrateDB ``/_sql`` client for a load test: bounded retries, no re-sends of unknown outcomes."""

    def __init__(
        self,
        servers: tuple[str, ...],
        *,
        username: str = "",
        password: str = "",
        timeout: float = 30.0,
        pool_size: int = 32,
        max_retries: int = 2,
        ca_cert: str = "",
        verify_ssl: bool = True,
        retry_backoff_s: float = 0.2,
    ):
        self.servers = servers
        self.username = username
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if username:
            token = base64.b64encode(f"{username}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._pools = {url: Server(url, **self._pool_options(url, pool_size, ca_cert, verify_ssl)) for url in servers}
        self._next = 0

    def _pool_options(self, url: str, pool_size: int, ca_cert: str, verify_ssl: bool) -> dict:
        options = {
            "timeout": urllib3.Timeout(connect=self.timeout, read=self.timeout),
            "maxsize": pool_size,
            "block": False,
        }
        if url.startswith("https://"):
            options["cert_reqs"] = "CERT_REQUIRED" if verify_ssl else "CERT_NONE"
            if ca_cert:
                options["ca_certs"] = ca_cert
        return options

    def close(self) -> None:
        for server in self._pools.values():
            server.close()

    # --- statements (DDL, refresh, counts) ---

    def execute(self, statement: str, args: list | None = None) -> dict:
        """Run one statement and return CrateDB's JSON answer; raise CrateError with a one-line message."""
        payload = {"stmt": statement} if args is None else {"stmt": statement, "args": args}
        answer = self._exchange(orjson.dumps(payload))
        if answer.status == 200:
            return orjson.loads(answer.body)
        status, code, message = self._describe(answer)
        raise CrateError(message, status=status, code=code, server=answer.server)

    def check_reachable(self) -> None:
        """``GET /`` on every server, as the crate client does on connect; raise CrateError for the first problem."""
        for url in self.servers:
            answer = self._send(url, "GET", "/", None)
            if answer.status != 200:
                status, code, message = self._describe(answer)
                raise CrateError(message, status=status, code=code, server=url)

    # --- inserts ---

    def insert(self, body: bytes, row_count: int, method: str) -> InsertOutcome:
        """Send one pre-encoded insert and sort its rows into inserted, failed or in doubt."""
        retries = 0
        while True:
            answer = self._exchange(body)
            if answer.status in OVERLOAD_STATUSES and retries < self.max_retries:
                # Refused before execution, so re-sending cannot duplicate rows; back off so we don't hammer.
                retries += 1
                gevent.sleep(self.retry_backoff_s * (2 ** (retries - 1)))
                continue
            outcome = self._classify(answer, row_count, method)
            return outcome if not retries else _with_retries(outcome, retries)

    def _classify(self, answer: _Answer, rows: int, method: str) -> InsertOutcome:
        if answer.status == 200:
            return self._classify_success(answer.body, rows, method)
        status, code, message = self._describe(answer)
        if not answer.sent or status in (400, 404, 409, 413) or status in OVERLOAD_STATUSES:
            overload = status in OVERLOAD_STATUSES
            return InsertOutcome(0, rows, 0, error=message, overload=overload)
        if status in AUTH_STATUSES:
            return InsertOutcome(0, rows, 0, error=message, fatal=True)
        # No answer (timeout, reset) or a 5xx that may have executed part of the batch: the outcome is unknown.
        overload = answer.timed_out or code == 5000 or "CircuitBreakingException" in message
        return InsertOutcome(0, 0, rows, error=message, overload=overload)

    def _classify_success(self, body: bytes, rows: int, method: str) -> InsertOutcome:
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            return InsertOutcome(0, 0, rows, error="CrateDB answered 200 with a body that is not JSON")
        if method == "unnest" or "results" not in answer:
            inserted = answer.get("rowcount", 0)
            if not isinstance(inserted, int) or not 0 <= inserted <= rows:
                return InsertOutcome(0, 0, rows, error=f"CrateDB answered an unexpected row count {inserted!r}")
            failed = rows - inserted
            error = f"{failed} of {rows} rows not inserted (UNNEST reports no per-row errors)" if failed else None
            return InsertOutcome(inserted, failed, 0, error=error)
        results = answer["results"]
        if len(results) != rows:
            return InsertOutcome(0, 0, rows, error=f"CrateDB answered {len(results)} results for {rows} rows")
        failed = sum(1 for result in results if result.get("rowcount", -2) < 0)
        if not failed:
            return InsertOutcome(rows, 0, 0)
        first = next((r["error"] for r in results if r.get("rowcount", -2) < 0 and "error" in r), None)
        reason = f": {_one_line(first.get('message', ''))} (code {first.get('code')})" if first else ""
        return InsertOutcome(rows - failed, failed, 0, error=f"{failed} of {rows} rows rejected{reason}")

    # --- transport ---

    def _exchange(self, body: bytes) -> _Answer:
        """POST to the next server; move on to another server only when nothing was sent."""
        answer = _Answer(server="")
        for _ in range(len(self.servers)):
            url = self.servers[self._next % len(self.servers)]
            self._next += 1
            answer = self._send(url, "POST", SQL_PATH, body)
            if answer.sent:
                return answer
        return answer

    def _send(self, url: str, method: str, path: str, body: bytes | None) -> _Answer:
        pool = self._pools[url].pool
        # A hard deadline on top of urllib3's socket timeouts, so nothing below can loop or hang forever.
        deadline = gevent.Timeout(self.timeout * 2 + 5)
        deadline.start()
        try:
            response = pool.urlopen(
                method,
                path,
                body=body,
                headers=self._headers,
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=True,
            )
            return _Answer(server=url, status=response.status, body=response.data)
        except (NewConnectionError, ConnectTimeoutError) as error:
            return _Answer(server=url, sent=False, problem=f"cannot connect to {url}: {_reason(error)}")
        except ReadTimeoutError:
            return _Answer(server=url, timed_out=True, problem=f"no answer from {url} within {self.timeout:g} s")
        except (ProtocolError, HTTPError, OSError) as error:
            return _Answer(server=url, problem=f"connection to {url} broke: {_reason(error)}")
        except gevent.Timeout as error:
            if error is not deadline:
                raise
            return _Answer(server=url, timed_out=True, problem=f"no answer from {url} within {self.timeout:g} s")
        finally:
            deadline.close()

    def _describe(self, answer: _Answer) -> tuple[int, int, str]:
        """Status, CrateDB error code and a one-line message for an answer that is not a success."""
        if not answer.status:
            return 0, 0, answer.problem
        code, message = 0, ""
        try:
            error = orjson.loads(answer.body).get("error", {})
            if isinstance(error, dict):
                code, message = int(error.get("code", 0) or 0), str(error.get("message", ""))
            else:
                message = str(error)
        except (orjson.JSONDecodeError, AttributeError, ValueError, TypeError):
            message = answer.body.decode("utf-8", "replace")
        if answer.status in AUTH_STATUSES:
            user = self.username or "(no user)"
            detail = _one_line(message) or "not authorised"
            return answer.status, code, f"CrateDB at {answer.server} refused user {user!r}: {detail}"
        text = _one_line(message) or f"HTTP {answer.status} with an empty body"
        return answer.status, code, f"HTTP {answer.status} from {answer.server}: {text}"


def _with_retries(outcome: InsertOutcome, retries: int) -> InsertOutcome:
    return InsertOutcome(
        outcome.inserted,
        outcome.failed,
        outcome.in_doubt,
        retries=retries,
        error=outcome.error,
        overload=outcome.overload,
        fatal=outcome.fatal,
    )


def _reason(error: Exception) -> str:
    text = str(getattr(error, "reason", None) or error)
    # urllib3 repeats the connection object's repr in its messages; keep the part a person can act on.
    return _one_line(text.split(": ", 1)[-1] if "object at 0x" in text else text)


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def monotonic_ms() -> float:
    return time.perf_counter() * 1000
