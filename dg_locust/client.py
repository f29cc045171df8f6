"""Talks to CrateDB over HTTP and sorts every insert into rows inserted, failed or in doubt.

It uses the ``crate`` client's HTTP layer (``crate.client.http.Server``: one urllib3 pool per server, with the
client's TLS and path handling) but sends each request itself, because the client's high-level ``sql()`` has
traps a load tool must not fall into: it gzips every body (CPU-bound and
slow), re-sends a request without end when a connection is reset, re-sends it to the next server after a timeout
(so rows can be inserted twice), and drops the HTTP status and CrateDB error code. Here:

- bodies are sent uncompressed and as given (pre-encoded by ``batch``);
- a request is sent once; only when CrateDB refused it before executing it (HTTP 429, 503) is it sent again, at
  most ``max_retries`` times, and each retry counts in ``InsertOutcome.retries``;
- a timeout, a reset connection or an HTTP 500 (which may have executed part of a bulk) makes the batch
  "in doubt": it is never re-sent and never counted as inserted;
- several servers are used round-robin, one per request. A server that refuses a connection, answers 429 or 503,
  or leaves a request without an answer (reset, timeout) cools down (0.25 s, doubling with each such strike in a
  row, at most 30 s; ``servers``) and gets no requests meanwhile; when
  every server cools down, requests wait (at most 1 s between two probes) instead of hammering. A request that
  could not be sent anywhere (nothing left the client, so this is safe) keeps looking for a server for up to
  ``timeout`` seconds, so a restarting node loses no rows; after that its rows fail, flagged ``unreachable``.

Outcomes carry whether the database signalled overload (for the batch sizer), whether no server could be reached,
and whether the error is fatal for the run (authentication), so callers never parse messages. Messages and
exceptions never contain the password or the Authorization header.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from dataclasses import dataclass, replace

import gevent
import orjson
import urllib3
from crate.client.http import Server
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    InsecureRequestWarning,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from dg_locust.batch import all_rows_inserted
from dg_locust.servers import CoolDown, ServerRotation

SQL_PATH = "/_sql"
# The request_type of every insert in Locust's statistics and request events (a request is one batch)
REQUEST_TYPE = "CrateDB"
OVERLOAD_STATUSES = (429, 503)
AUTH_STATUSES = (401, 403)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InsertOutcome:
    """What became of one batch: every row is in exactly one of inserted, failed or in_doubt."""

    inserted: int
    failed: int
    in_doubt: int
    retries: int = 0  # times the batch was sent again after a 429/503 (each row still counts once, here)
    error: str | None = None  # one line, never containing credentials
    overload: bool = False  # the database signalled overload: back off
    fatal: bool = False  # the run cannot go on (e.g. wrong credentials)
    unreachable: bool = False  # no server accepted a connection: nothing was sent, says nothing about batch size

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


class _Node:
    """One server: its connection pool and its cool-down after strikes (refusals, no answer)."""

    def __init__(self, url: str, server: Server):
        self.url = url
        self.server = server
        self.cooling = CoolDown()  # refused connections, 429/503 answers and requests left without an answer


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
        clock=time.monotonic,
    ):
        self.servers = servers
        self.username = username
        self.timeout = timeout
        self.max_retries = max_retries
        self._clock = clock
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if username:
            token = base64.b64encode(f"{username}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._servers = ServerRotation(
            [_Node(url, Server(url, **self.pool_options(url, pool_size, ca_cert, verify_ssl))) for url in servers],
            clock,
        )
        if not verify_ssl and any(url.startswith("https://") for url in servers):
            # urllib3 warns on every request to an unverified https server; say it once instead of flooding the log.
            urllib3.disable_warnings(InsecureRequestWarning)
            logger.warning("dg-locust: --no-verify-ssl: the CrateDB server certificate is not verified")

    @classmethod
    def for_settings(cls, settings, host: str | None, *, pool_size: int = 32) -> CrateHttpClient:
        """A client for the run's options: Locust's host value (one or more servers), credentials, timeout, TLS."""
        from dg_locust.options import check_hosts_for_method, parse_hosts  # options imports nothing from here

        servers = parse_hosts(host)
        check_hosts_for_method(servers, settings.insert_method)
        return cls(
            servers,
            username=settings.username,
            password=settings.password,
            timeout=settings.timeout,
            max_retries=settings.max_retries,
            ca_cert=settings.ca_cert,
            verify_ssl=settings.verify_ssl,
            pool_size=pool_size,
        )

    def __repr__(self) -> str:
        # Never show the headers: they hold the Basic token.
        return f"CrateHttpClient(servers={self.servers!r}, username={self.username!r})"

    def pool_options(self, url: str, pool_size: int, ca_cert: str = "", verify_ssl: bool = True) -> dict:
        """The urllib3 pool settings of one server (TLS ones only for https)."""
        options = {
            "timeout": urllib3.Timeout(connect=self.timeout, read=self.timeout),
            "maxsize": pool_size,
            "block": False,
        }
        if url.startswith("https://"):
            options["cert_reqs"] = "CERT_REQUIRED" if verify_ssl else "CERT_NONE"
            if ca_cert and verify_ssl:
                options["ca_certs"] = ca_cert
        return options

    def pool(self, url: str):
        """The urllib3 connection pool of one server."""
        return next(node.server.pool for node in self._servers.nodes if node.url == url)

    def close(self) -> None:
        for node in self._servers.nodes:
            node.server.close()

    # --- statements (DDL, refresh, counts) ---

    def execute(self, statement: str, args: list | None = None) -> dict:
        """Run one statement and return CrateDB's JSON answer; raise CrateError with a one-line message."""
        payload = {"stmt": statement} if args is None else {"stmt": statement, "args": args}
        answer = self._exchange(orjson.dumps(payload))
        if answer.status == 200:
            return orjson.loads(answer.body)
        status, code, message = self._describe(answer)
        raise CrateError(message, status=status, code=code, server=answer.server)

    def check_reachable(self) -> list[str]:
        """``GET /`` on every server, as the crate client does on connect.

        Raises CrateError when no server answers, or when one refuses the credentials (wrong credentials stay wrong);
        otherwise returns one line per server that did not answer (those start cooled down)."""
        problems = []
        for node in self._servers.nodes:
            answer = self._send(node, "GET", "/", None)
            if answer.status == 200:
                node.cooling.answered()
                continue
            status, code, message = self._describe(answer)
            if status in AUTH_STATUSES:
                raise CrateError(message, status=status, code=code, server=node.url)
            self._servers.strike(node)
            problems.append((status, code, message))
        if len(problems) == len(self._servers.nodes):
            status, code, message = problems[0]
            if len(self._servers.nodes) > 1:
                message = f"no CrateDB server answers (first: {message})"
            raise CrateError(message, status=status, code=code, server=self._servers.nodes[0].url)
        return [message for _, _, message in problems]

    # --- inserts ---

    def insert(self, body: bytes, row_count: int, method: str) -> InsertOutcome:
        """Send one pre-encoded insert and sort its rows into inserted, failed or in doubt."""
        retries = 0
        while True:
            answer = self._exchange(body)
            if answer.status in OVERLOAD_STATUSES and retries < self.max_retries:
                # Refused before execution, so sending again cannot duplicate rows. The refusing server cools down,
                # and _exchange waits when every server does: that is the back-off.
                retries += 1
                continue
            outcome = self._classify(answer, row_count, method)
            return replace(outcome, retries=retries) if retries else outcome

    def _classify(self, answer: _Answer, rows: int, method: str) -> InsertOutcome:
        if answer.status == 200:
            return self._classify_success(answer.body, rows, method)
        status, code, message = self._describe(answer)
        if not answer.sent:
            return InsertOutcome(0, rows, 0, error=message, unreachable=True)
        if status in (400, 404, 409, 413) or status in OVERLOAD_STATUSES:
            overload = status in OVERLOAD_STATUSES
            return InsertOutcome(0, rows, 0, error=message, overload=overload)
        if status in AUTH_STATUSES:
            return InsertOutcome(0, rows, 0, error=message, fatal=True)
        # No answer (timeout, reset) or a 5xx that may have executed part of the batch: the outcome is unknown.
        overload = answer.timed_out or code == 5000 or "CircuitBreakingException" in message
        return InsertOutcome(0, 0, rows, error=message, overload=overload)

    def _classify_success(self, body: bytes, rows: int, method: str) -> InsertOutcome:
        if method != "unnest" and all_rows_inserted(body, rows):
            # The usual bulk answer, checked byte for byte: parsing 20k result dicts cost a quarter of the CPU.
            return InsertOutcome(rows, 0, 0)
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            return InsertOutcome(0, 0, rows, error="CrateDB answered 200 with a body that is not JSON")
        if not isinstance(answer, dict):
            return InsertOutcome(0, 0, rows, error="CrateDB answered 200 with a body that is not a JSON object")
        if method == "unnest" or "results" not in answer:
            inserted = answer.get("rowcount", 0)
            if not isinstance(inserted, int) or not 0 <= inserted <= rows:
                return InsertOutcome(0, 0, rows, error=f"CrateDB answered an unexpected row count {inserted!r}")
            failed = rows - inserted
            error = f"{failed} of {rows} rows not inserted (UNNEST reports no per-row errors)" if failed else None
            return InsertOutcome(inserted, failed, 0, error=error)
        results = answer["results"]
        if not isinstance(results, list) or len(results) != rows:
            count = len(results) if isinstance(results, list) else "no list of"
            return InsertOutcome(0, 0, rows, error=f"CrateDB answered {count} results for {rows} rows")
        failed = sum(1 for result in results if _row_count(result) < 0)
        if not failed:
            return InsertOutcome(rows, 0, 0)
        first = next((r["error"] for r in results if _row_count(r) < 0 and isinstance(r.get("error"), dict)), None)
        reason = f": {_one_line(first.get('message', ''))} (code {first.get('code')})" if first else ""
        return InsertOutcome(rows - failed, failed, 0, error=f"{failed} of {rows} rows rejected{reason}")

    # --- transport ---

    def _exchange(self, body: bytes) -> _Answer:
        """POST to the next server that is not cooling down; try others only while nothing was sent.

        A request nobody accepted keeps looking for a server, waiting while all cool down, for at most ``timeout``
        seconds: re-trying a connection re-sends nothing, and a node that restarts within that time loses no rows."""
        give_up = self._clock() + self.timeout
        while True:
            node, wait = self._servers.pick()
            if wait > 0:
                gevent.sleep(wait)
            answer = self._send(node, "POST", SQL_PATH, body)
            if answer.status and answer.status not in OVERLOAD_STATUSES:
                node.cooling.answered()
            else:
                # Refused, or left without an answer (reset, timeout): a sick or overloaded node gets a rest, so
                # requests go to the other servers, or wait, instead of hammering it. The request itself is only
                # sent again below when it never left.
                self._servers.strike(node)
            if answer.sent:
                return answer
            if self._clock() >= give_up:
                return answer

    def _send(self, node: _Node, method: str, path: str, body: bytes | None) -> _Answer:
        url = node.url
        # A hard deadline on top of urllib3's socket timeouts, so nothing below can loop or hang forever.
        deadline = gevent.Timeout(self.timeout * 2 + 5)
        deadline.start()
        try:
            response = node.server.pool.urlopen(
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
            return _Answer(server=url, sent=False, problem=f"cannot reach CrateDB at {url}: {_reason(error)}")
        except SSLError as error:
            # A failed TLS handshake happens before the request is sent.
            return _Answer(server=url, sent=False, problem=f"TLS with {url} failed: {_reason(error)}")
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
            user = self.username or "crate (no --username given)"
            detail = _one_line(message) or "not authorised"
            return answer.status, code, f"CrateDB at {answer.server} refused user {user!r}: {detail}"
        text = _one_line(message) or f"HTTP {answer.status} with an empty body"
        return answer.status, code, f"HTTP {answer.status} from {answer.server}: {text}"


def _row_count(result) -> int:
    count = result.get("rowcount", -2) if isinstance(result, dict) else -2
    return count if isinstance(count, int) else -2


# urllib3 prefixes the reason with the connection object's description and errno; keep what a person can act on.
_NOISE = re.compile(r"^\w*Connection\w*\(host=[^)]*\): |Failed to establish a new connection: |\[Errno -?\d+\] ")


def _reason(error: Exception) -> str:
    text = str(getattr(error, "reason", None) or error)
    return _one_line(_NOISE.sub("", text)) or type(error).__name__


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def monotonic_ms() -> float:
    return time.perf_counter() * 1000
