"""Talks to CrateDB over the PostgreSQL wire protocol (psycopg 3) and sorts every insert into inserted, failed or
in doubt, with the same interface and outcomes as the HTTP client (``client.CrateHttpClient``).

psycopg cooperates with gevent: imported after Locust's monkey patching (locust is always imported first), it waits
on sockets through the patched ``select`` module instead of its C wait function, so a query blocks only its own
greenlet. Pipeline mode waits once per row, though, and a trip through the gevent hub each time tripled the client's
CPU per row; so our connections (``_Connection``) first look at the socket without blocking and go through the hub
only when it is not ready (and every few hundred looks, so one long batch does not starve the other greenlets).
Each greenlet that inserts takes a connection of its own from a small pool per server (a connection runs one
query at a time); connections are opened on demand, kept while they work, and dropped after any error.

Two insert methods (the batch encodes the rows for each, see ``batch``):

- ``pg``: one prepared ``INSERT ... VALUES ($1, ...)``, executed once per row in pipeline mode (psycopg's
  ``executemany``: one Parse, a Bind/Execute per row, one Sync). CrateDB runs the executions of a Sync as one bulk
  and answers one command tag per row: ``INSERT 0 1`` stored, ``INSERT 0 -3`` refused (failed), ``INSERT 0 -2``
  count unknown (in doubt). So refused rows are counted exactly, as with HTTP ``bulk_args``.
- ``pg-unnest``: one prepared ``INSERT ... (SELECT * FROM UNNEST($1, ...))`` with one array parameter per column;
  ``INSERT 0 n`` says how many rows were stored, the rest failed (CrateDB reports no per-row errors).

Outcomes, as for HTTP: an ``ErrorResponse`` refusing the statement (SQLSTATE classes 22, 23, 42, 0A, 3F: bad
values, constraints, unknown tables, syntax, unsupported) fails the batch, and CrateDB then executed nothing (it
drops the executions of a Sync on an error); any other error (``XX000`` internal errors, resources, a circuit
breaker) may have come after part of a bulk ran: in doubt. A broken connection or no answer within ``timeout``
leaves the batch in doubt and the connection is closed. Nothing is ever re-sent after it was sent (``max_retries``
is for HTTP's 429/503, which have no pg counterpart). A server that refuses connections, breaks one or leaves a
request unanswered cools down as in the HTTP client; a batch no server accepted a connection for keeps looking for
up to ``timeout`` seconds, then fails flagged ``unreachable``. A server that refuses the credentials (or the
session) is fatal for the run.

Hosts: ``http(s)://HOST[:4200]`` maps to ``HOST:--pg-port`` (5432, CrateDB's default ``psql.port``);
``postgresql://HOST[:PORT]`` names the port (5432 when omitted). TLS (``sslmode``): ``--no-verify-ssl`` requires TLS
without verifying the certificate (``require``); ``--ca-cert FILE`` verifies it against FILE (``verify-full``), an
``https://`` host against the system's CAs (``verify-full``, ``sslrootcert=system``); otherwise TLS is used when
the server offers it (``prefer``, libpq's default). Messages never contain the password.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

import gevent
import gevent.select
import psycopg
from gevent import GreenletExit
from gevent.monkey import get_original
from psycopg.adapt import Dumper
from psycopg.types.numeric import Int8BinaryDumper
from psycopg.types.string import StrDumper

from dg_locust.batch import PG_ARRAY_TYPES, PgInsert
from dg_locust.client import CrateError, InsertOutcome
from dg_locust.options import DEFAULT_PG_PORT, is_postgres_url, parse_hosts
from dg_locust.servers import CoolDown, ServerRotation

logger = logging.getLogger(__name__)

DATABASE = "doc"  # CrateDB's default schema; the database name is otherwise ignored
# SQLSTATE classes of errors that refuse a statement before anything was stored (CrateDB analyses and binds before it
# executes, and drops every execution of a Sync on such an error): data exceptions, constraints, syntax or access
# rules, unsupported features, unknown schemas.
REFUSED_CLASSES = ("22", "23", "42", "0A", "3F")
FATAL_STATES = ("28000", "28P01", "42501")  # credentials refused, privileges missing: the run cannot go on
# HTTP-like statuses of CrateErrors from statements, so callers treat both clients' errors alike (409: exists)
_STATUS_OF_STATE = {"42P07": 409, "42P01": 404, "3F000": 404, "28000": 401, "28P01": 401, "42501": 403}
# Signs of overload in an error's message or its Java stack trace (CrateDB sends the exception's message, without
# its class name, and the stack in the context field): a circuit breaker, a full thread pool queue
_OVERLOAD_WORDS = (
    "Data too large",  # the circuit breaker as CrateDB 5.x words it
    "breaker would use",  # ... and as 6.4 does: "Allocating N for 'parent: ...' failed, breaker would use M in total"
    "CircuitBreakingException",
    "EsRejectedExecutionException",
    "rejected execution",
)


# The unpatched select(): with a zero timeout it never blocks, so it is safe under gevent and costs one system call.
_select_now = get_original("select", "select")
_YIELD_EVERY = 256  # ready looks in a row before a greenlet lets the others run
_WAIT_TIMEOUT = getattr(psycopg.errors, "_WaitTimeout", psycopg.OperationalError)


def _wait_ready(gen, fileno: int, interval: float, timeout: float | None = None):
    """Run a psycopg generator on a socket: ``psycopg.waiting.Wait`` flags in, ``Ready`` flags out. Looks first,
    waits through gevent (so other greenlets run) only when the socket is not ready, for at most ``interval``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    looks = 0
    try:
        wanted = next(gen)
        while True:
            reads = (fileno,) if wanted & psycopg.waiting.Wait.R else ()
            writes = (fileno,) if wanted & psycopg.waiting.Wait.W else ()
            readable, writable, _ = _select_now(reads, writes, (), 0)
            looks += 1
            if not (readable or writable) or looks % _YIELD_EVERY == 0:
                readable, writable, _ = gevent.select.select(reads, writes, (), interval)
            ready = (psycopg.waiting.Ready.R if readable else 0) | (psycopg.waiting.Ready.W if writable else 0)
            if not ready and deadline is not None and time.monotonic() >= deadline:
                raise _WAIT_TIMEOUT("wait timeout expired")
            wanted = gen.send(ready)
    except StopIteration as done:
        return done.value


class _Connection(psycopg.Connection):
    """psycopg's connection, waiting with ``_wait_ready`` (see the module's docstring)."""

    def wait(self, gen, interval: float = 0.1, timeout: float | None = None):
        return _wait_ready(gen, self.pgconn.socket, interval, timeout)


class _ArrayLiteralDumper(Dumper):
    """Sends a ``batch.PgArray`` (the text of an array literal) as it is, typed by its class's ``oid``."""

    def dump(self, obj):
        return obj


def _dumpers() -> list[tuple[type, type[Dumper]]]:
    """How row values and arrays go on the wire: integers always as bigint (one parameter type for every row, so
    the prepared statement never changes within a batch), strings as text, arrays as their literal's text."""
    array_dumpers = [
        (kind, type(f"{kind.__name__}Dumper", (_ArrayLiteralDumper,), {"oid": kind.oid})) for kind in PG_ARRAY_TYPES
    ]
    return [(int, Int8BinaryDumper), (str, StrDumper), *array_dumpers]


@dataclass(frozen=True)
class PgServer:
    """Where one server's PostgreSQL port is and how to reach it."""

    host: str
    port: int
    sslmode: str
    sslrootcert: str = ""

    @property
    def url(self) -> str:
        return f"postgresql://{self.host}:{self.port}"


def pg_servers(host_value: str | None, *, pg_port: int, ca_cert: str = "", verify_ssl: bool = True) -> tuple:
    """The PostgreSQL servers of Locust's host value (``http(s)://`` hosts map to ``pg_port``)."""
    servers = []
    for url in parse_hosts(host_value):
        scheme, _, rest = url.partition("://")
        host, _, port = rest.rstrip("/").partition(":")
        # a postgresql:// URL names its port (CrateDB's default when omitted); an HTTP URL's port is the HTTP one
        port_number = (int(port) if port else DEFAULT_PG_PORT) if is_postgres_url(url) else pg_port
        if not verify_ssl:
            sslmode, root = "require", ""
        elif ca_cert:
            sslmode, root = "verify-full", ca_cert
        elif scheme == "https":
            sslmode, root = "verify-full", "system"
        else:
            sslmode, root = "prefer", ""
        servers.append(PgServer(host, port_number, sslmode, root))
    return tuple(servers)


class _Node:
    """One server: its idle connections and its cool-down after strikes (refused connections, no answer)."""

    def __init__(self, server: PgServer):
        self.server = server
        self.url = server.url
        self.idle: list[psycopg.Connection] = []
        self.cooling = CoolDown()


class _Unreachable(Exception):
    """No connection could be opened to a server (nothing was sent)."""


class _Refused(Exception):
    """The server answered the connection attempt and refused the session (credentials, no such user)."""


class CratePgClient:
    """CrateDB through its PostgreSQL port, for a load test: pooled connections, no re-sends of unknown outcomes."""

    def __init__(
        self,
        servers: tuple[PgServer, ...],
        *,
        username: str = "",
        password: str = "",
        timeout: float = 30.0,
        pool_size: int = 32,
        clock=time.monotonic,
    ):
        self.servers = servers
        self.username = username or "crate"
        self._password = password
        self.timeout = timeout
        self.pool_size = pool_size
        self._clock = clock
        self._servers = ServerRotation([_Node(server) for server in servers], clock)
        self._prepared: dict[str, str] = {}  # statement with ? placeholders -> with $1, $2, ...
        if any(server.sslmode == "require" for server in servers):
            logger.warning("dg-locust: --no-verify-ssl: the CrateDB server certificate is not verified")

    @classmethod
    def for_settings(cls, settings, host: str | None, *, pool_size: int = 32) -> CratePgClient:
        """A client for the run's options: Locust's host value, --pg-port, credentials, timeout, TLS."""
        servers = pg_servers(host, pg_port=settings.pg_port, ca_cert=settings.ca_cert, verify_ssl=settings.verify_ssl)
        return cls(
            servers,
            username=settings.username,
            password=settings.password,
            timeout=settings.timeout,
            pool_size=pool_size,
        )

    def __repr__(self) -> str:
        return f"CratePgClient(servers={[s.url for s in self.servers]!r}, username={self.username!r})"

    def close(self) -> None:
        for node in self._servers.nodes:
            while node.idle:
                node.idle.pop().close()

    # --- statements (DDL, refresh, counts) ---

    def execute(self, statement: str, args: list | None = None) -> dict:
        """Run one statement; answer as CrateDB's HTTP endpoint does (``cols``, ``rows``, ``rowcount``) or raise
        CrateError with a one-line message."""
        node, conn = self._connection_or_raise()
        try:
            with gevent.Timeout(self.timeout, _NoAnswer):
                cursor = psycopg.RawCursor(conn)
                cursor.execute(self._numbered(statement), args)
                if cursor.description is None:
                    answer = {"cols": [], "rows": [[]], "rowcount": cursor.rowcount}
                else:
                    rows = [list(row) for row in cursor.fetchall()]
                    answer = {"cols": [c.name for c in cursor.description], "rows": rows, "rowcount": len(rows)}
        except psycopg.Error as error:
            self._discard(node, conn, cool=_broken(conn))
            state = getattr(error, "sqlstate", None) or ""
            status = _STATUS_OF_STATE.get(state, 400 if state[:2] in REFUSED_CLASSES else 0 if not state else 500)
            raise CrateError(self._describe(node, error, _broken(conn)), status=status, server=node.url) from None
        except _NoAnswer:
            self._discard(node, conn, cool=True)
            raise CrateError(f"no answer from {node.url} within {self.timeout:g} s", server=node.url) from None
        node.idle.append(conn)
        return answer

    def check_reachable(self) -> list[str]:
        """Open a connection to every server (kept for the run). Raises CrateError when no server can be reached or
        one refuses the credentials; otherwise returns one line per server that could not be reached."""
        problems = []
        for node in self._servers.nodes:
            try:
                node.idle.append(self._connect(node))
                node.cooling.answered()
            except _Refused as refused:
                raise CrateError(str(refused), status=401, server=node.url) from None
            except _Unreachable as unreachable:
                self._servers.strike(node)
                problems.append(str(unreachable))
        if len(problems) == len(self._servers.nodes):
            message = problems[0] if len(problems) == 1 else f"no CrateDB server answers (first: {problems[0]})"
            raise CrateError(message, server=self._servers.nodes[0].url)
        return problems

    # --- inserts ---

    def insert(self, body: PgInsert, row_count: int, method: str) -> InsertOutcome:
        """Insert one batch (``batch.encode``'s statement with its rows for pg, its arrays for pg-unnest)."""
        try:
            node, conn = self._connection()
        except _Refused as refused:
            return InsertOutcome(0, row_count, 0, error=str(refused), fatal=True)
        except _Unreachable as unreachable:
            return InsertOutcome(0, row_count, 0, error=str(unreachable), unreachable=True)
        statement = self._numbered(body.statement)
        try:
            with gevent.Timeout(self.timeout, _NoAnswer):
                cursor = psycopg.RawCursor(conn)
                if method == "pg":
                    cursor.executemany(statement, body.params, returning=True)
                    outcome = _count_tags(cursor, row_count)
                else:
                    cursor.execute(statement, body.params, prepare=True)
                    outcome = _count_unnest(cursor.statusmessage or "", row_count)
        except GreenletExit:
            self._discard(node, conn, cool=False)  # the run stopped mid-batch: the caller counts its rows in doubt
            raise
        except _NoAnswer:
            self._discard(node, conn, cool=True)
            return InsertOutcome(
                0, 0, row_count, error=f"no answer from {node.url} within {self.timeout:g} s", overload=True
            )
        except psycopg.Error as error:
            broken = _broken(conn)
            self._discard(node, conn, cool=broken)
            return self._classify_error(node, error, row_count, broken)
        node.cooling.answered()
        node.idle.append(conn)
        return outcome

    def _classify_error(self, node: _Node, error: psycopg.Error, rows: int, broken: bool) -> InsertOutcome:
        message = self._describe(node, error, broken)
        state = getattr(error, "sqlstate", None) or ""
        if broken or not state:
            return InsertOutcome(0, 0, rows, error=message)
        if state in FATAL_STATES:
            return InsertOutcome(0, rows, 0, error=message, fatal=True)
        if state[:2] in REFUSED_CLASSES:
            return InsertOutcome(0, rows, 0, error=message)
        diag = getattr(error, "diag", None)
        context = f"{message} {getattr(diag, 'context', None) or ''}"
        overload = state.startswith("53") or any(word in context for word in _OVERLOAD_WORDS)
        return InsertOutcome(0, 0, rows, error=message, overload=overload)

    # --- connections ---

    def _connection_or_raise(self) -> tuple[_Node, psycopg.Connection]:
        try:
            return self._connection()
        except _Refused as refused:
            raise CrateError(str(refused), status=401) from None
        except _Unreachable as unreachable:
            raise CrateError(str(unreachable)) from None

    def _connection(self) -> tuple[_Node, psycopg.Connection]:
        """An idle connection of the next server that is not cooling down, or a new one; servers that cannot be
        reached cool down and the next is tried, waiting while all cool down, for at most ``timeout`` seconds."""
        give_up = self._clock() + self.timeout
        while True:
            node, wait = self._servers.pick()
            if wait > 0:
                gevent.sleep(wait)
            while node.idle:
                conn = node.idle.pop()
                if not conn.closed:
                    return node, conn
            try:
                return node, self._connect(node)
            except _Unreachable:
                self._servers.strike(node)
                if self._clock() >= give_up:
                    raise

    def _connect(self, node: _Node) -> psycopg.Connection:
        server = node.server
        options = {"sslmode": server.sslmode, "gssencmode": "disable"}
        if server.sslrootcert:
            options["sslrootcert"] = server.sslrootcert
        try:
            with gevent.Timeout(self.timeout, _NoAnswer):
                conn = _Connection.connect(
                    host=server.host,
                    port=server.port,
                    user=self.username,
                    password=self._password or None,
                    dbname=DATABASE,
                    autocommit=True,
                    connect_timeout=max(2, round(self.timeout)),
                    **options,
                )
        except _NoAnswer:
            raise _Unreachable(f"cannot reach CrateDB at {node.url}: no answer within {self.timeout:g} s") from None
        except psycopg.OperationalError as error:
            reason = _connect_reason(error)
            if _session_refused(reason):
                user = self.username
                raise _Refused(f"CrateDB at {node.url} refused user {user!r}: {reason}") from None
            hint = ""
            if "SSL negotiation" in reason or "invalid" in reason:
                hint = " (is it CrateDB's PostgreSQL port? http://HOST:4200 hosts map to --pg-port, default 5432)"
            raise _Unreachable(f"cannot reach CrateDB at {node.url}: {reason}{hint}") from None
        for kind, dumper in _dumpers():
            conn.adapters.register_dumper(kind, dumper)
        return conn

    def _discard(self, node: _Node, conn: psycopg.Connection, *, cool: bool) -> None:
        """Close a connection after an error (its protocol state is unknown); a broken one cools its server down."""
        try:
            conn.close()
        except Exception:  # closing a broken connection can fail in many ways; it is gone either way
            logger.debug("closing a broken connection to %s failed", node.url)
        if cool:
            self._servers.strike(node)

    def _numbered(self, statement: str) -> str:
        numbered = self._prepared.get(statement)
        if numbered is None:
            numbered = self._prepared[statement] = number_placeholders(statement)
        return numbered

    def _describe(self, node: _Node, error: psycopg.Error, broken: bool) -> str:
        state = getattr(error, "sqlstate", None)
        diag = getattr(error, "diag", None)
        text = (diag.message_primary if diag is not None and diag.message_primary else None) or str(error)
        text = _one_line(text)
        if state:
            return f"{node.url} answered {state}: {text}"
        if broken:
            return f"connection to {node.url} broke: {text}"
        return f"the answer of {node.url} could not be read: {text}"


class _NoAnswer(Exception):
    """A deadline passed without an answer (raised in the waiting greenlet by gevent.Timeout)."""


def _count_tags(cursor, rows: int) -> InsertOutcome:
    """Inserted, failed and in doubt from the command tag of every row of an executemany."""
    inserted = failed = unknown = 0
    while True:
        tag = cursor.statusmessage or ""
        count = tag.rsplit(" ", 1)[-1]
        if count == "1":
            inserted += 1
        elif count == "-2" or not count.lstrip("-").isdigit():
            unknown += 1
        else:
            failed += 1  # -3: refused (CrateDB's bulk -2); 0: not inserted
        if not cursor.nextset():
            break
    answered = inserted + failed + unknown
    unknown += rows - answered  # rows without a tag: never seen on CrateDB, so not known to be stored or not
    if not failed and not unknown:
        return InsertOutcome(rows, 0, 0)
    parts = [f"{failed} of {rows} rows refused"] if failed else []
    if unknown:
        parts.append(f"{unknown} of {rows} rows with an unknown row count")
    return InsertOutcome(inserted, failed, unknown, error="; ".join(parts))


def _count_unnest(tag: str, rows: int) -> InsertOutcome:
    count = tag.rsplit(" ", 1)[-1]
    if not tag.startswith("INSERT") or not count.isdigit() or int(count) > rows:
        return InsertOutcome(0, 0, rows, error=f"CrateDB answered an unexpected command tag {tag!r}")
    inserted = int(count)
    failed = rows - inserted
    error = f"{failed} of {rows} rows not inserted (UNNEST reports no per-row errors)" if failed else None
    return InsertOutcome(inserted, failed, 0, error=error)


def _broken(conn: psycopg.Connection) -> bool:
    """The connection itself failed (reset, closed), as opposed to an error the server sent or psycopg raised."""
    return conn.broken or conn.closed


# libpq prefixes the reason with the connection it was for; keep what a person can act on.
_CONNECT_NOISE = re.compile(r'^(connection failed: )?connection to server at "[^"]*"(?: \([^)]*\))?, port \d+ failed: ')


def _connect_reason(error: Exception) -> str:
    text = _CONNECT_NOISE.sub("", " ".join(str(error).split()))
    text = text.replace("FATAL: ", "").replace("FATAL:  ", "")
    return _one_line(text.split(" Is the server running")[0]) or type(error).__name__


def _session_refused(reason: str) -> bool:
    return "authentication failed" in reason or "no password supplied" in reason or "fe_sendauth" in reason


def number_placeholders(statement: str) -> str:
    """``?`` placeholders as ``$1, $2, ...`` (those outside quoted identifiers and string literals)."""
    out, number, quote = [], 0, ""
    for char in statement:
        if quote:
            if char == quote:
                quote = ""
        elif char in ("'", '"'):
            quote = char
        elif char == "?":
            number += 1
            out.append(f"${number}")
            continue
        out.append(char)
    return "".join(out)


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
