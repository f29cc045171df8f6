"""CrateDB's PostgreSQL port as a test double: the wire protocol in front of the HTTP double's SQL, storage and faults.

This module owns ``PgDouble``: an asyncio server that speaks enough of the PostgreSQL wire protocol (v3) for
dg-locust's pg path and answers as CrateDB 6.4.3 does (``tests/fixtures/cratedb-6.4.3/pg-probe.json`` holds the
real node's answers; ``tests/test_pg_conformance.py`` compares):

- startup: ``N`` to SSL and GSS encryption requests; cleartext password authentication when users are configured
  (``FATAL`` / ``28000`` for a wrong password or an unknown user), trust otherwise; the parameters CrateDB reports;
- the simple query protocol (``Query``) and the extended one (``Parse``, ``Bind``, ``Describe``, ``Execute``,
  ``Sync``, ``Flush``, ``Close``), parameters in text or binary format;
- executions deferred to ``Sync`` as CrateDB defers them: executions of one prepared statement between two Syncs run
  as one bulk request (each gets its ``INSERT 0 n``; a row refused answers ``INSERT 0 -3``, JDBC's "failed"), and
  an error before the Sync drops every execution queued since the last one;
- errors as ``ErrorResponse`` with CrateDB's SQLSTATE for the error (``42P01`` unknown table, ``42601`` syntax,
  ``XX000`` for most others) and ``ReadyForQuery`` status ``E`` after an error before the Sync, as CrateDB sends.

Every statement is executed by a ``cratedb_double.CrateDouble`` in the same process (as a JSON ``/_sql`` request),
so rows land in the same SQLite file (``count_rows`` / ``fetch_rows`` read them), and the HTTP double's latency
model and faults apply: ``reset_before_response`` / ``reset_mid_response`` reset the pg connection (before any
answer of the Sync, or half-way through it), ``slow`` delays the answers, ``row_rejections`` refuses rows,
``circuit_breaker`` / ``http_503`` answer an error. The HTTP double's own port serves ``/_double/config`` and
``/_double/stats`` (and ``/_sql``), so tests configure faults at run time as for HTTP.

Run it as ``python tests/pg_double.py --port 0 --pg-port 0 --db /tmp/x.sqlite [--user dg:dgpass]``; it prints one line,
``listening on http://127.0.0.1:PORT postgresql://127.0.0.1:PGPORT``. ``PgDoubleProcess`` runs it for a test.
Only the standard library is used (plus orjson when installed, through the HTTP double).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import random
import re
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cratedb_double import (  # noqa: E402
    CRATE_VERSION,
    HOST,
    CrateDouble,
    DoubleConfig,
    DoubleProcess,
    Insert,
    Select,
    build_arg_parser,
    parse_fault_arg,
    parse_statement,
)
from cratedb_double import CrateError as DoubleError  # noqa: E402
from pg_wire import FrontendReader, encode_backend  # noqa: E402

LOG = logging.getLogger("pg_double")

# What CrateDB 6.4.3 reports after authentication, in its order (the versions are the double's)
SERVER_PARAMETERS = (
    ("crate_version", CRATE_VERSION["number"]),
    ("server_version", "14.0"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("datestyle", "ISO"),
    ("TimeZone", "UTC"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
)
AUTH_OK, AUTH_CLEARTEXT = 0, 3

# PostgreSQL type OIDs the double decodes parameters of: scalars, and their arrays (element oid)
BOOL, INT8, INT2, INT4, TEXT, FLOAT4, FLOAT8, VARCHAR, TIMESTAMP, TIMESTAMPTZ, NUMERIC = (
    16, 20, 21, 23, 25, 700, 701, 1043, 1114, 1184, 1700)  # fmt: skip
ARRAY_ELEMENTS = {1000: BOOL, 1005: INT2, 1007: INT4, 1016: INT8, 1021: FLOAT4, 1022: FLOAT8, 1009: TEXT,
                  1015: VARCHAR, 1115: TIMESTAMP, 1185: TIMESTAMPTZ, 1231: NUMERIC}  # fmt: skip
_INTS = (INT2, INT4, INT8)
_FLOATS = (FLOAT4, FLOAT8, NUMERIC)
# CrateDB's col_types ids (HTTP ?types) -> (PostgreSQL oid, type size) for RowDescription
COLUMN_TYPES = {3: (BOOL, 1), 4: (VARCHAR, -1), 6: (FLOAT8, 8), 7: (FLOAT4, 4), 8: (INT2, 2), 9: (INT4, 4),
                10: (INT8, 8), 11: (TIMESTAMPTZ, 8), 15: (TIMESTAMP, 8)}  # fmt: skip
# CrateDB error codes (HTTP) -> SQLSTATE on the PostgreSQL port (PGError.fromThrowable and pgErrorStatus())
SQLSTATES = {4041: "42P01", 4043: "42703", 4045: "3F000", 4091: "23505", 4093: "42P07", 4004: "0A000"}
# Statements CrateDB accepts and ignores (transactions do not exist in CrateDB), with their command tags
NO_OPS = {"BEGIN": "BEGIN", "START TRANSACTION": "BEGIN", "COMMIT": "COMMIT", "END": "COMMIT", "ROLLBACK": "ROLLBACK",
          "DEALLOCATE ALL": "DEALLOCATE 0"}  # fmt: skip
_CONSTANT_SELECT = re.compile(r"\s*SELECT\s+(\d+)\s*;?\s*", re.I)
_WRAPPED = re.compile(r"^\w+\[(.*)\]$", re.S)


class PgError(Exception):
    """An error to answer as ``ErrorResponse``: SQLSTATE and message (severity ERROR unless FATAL)."""

    def __init__(self, sqlstate: str, message: str, severity: str = "ERROR"):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.severity = severity

    def answer(self) -> dict[str, Any]:
        return {"type": "ErrorResponse", "fields": {"S": self.severity, "C": self.sqlstate, "M": self.message}}


def from_double_error(code: int, message: str) -> PgError:
    """The pg form of an error the HTTP double answered: its SQLSTATE, and the message without the exception name."""
    match = _WRAPPED.match(message)
    text = match.group(1) if match else message
    sqlstate = SQLSTATES.get(code, "XX000")
    if code == 4000 and message.startswith(("ParsingException[line ", "SQLParseException[line ")):
        sqlstate = "42601"  # CrateDB's parser errors; other SQLParseExceptions (bad values) are XX000
    return PgError(sqlstate, text)


# --- parameter values ---


def _text_value(raw: str, oid: int) -> Any:
    if oid == BOOL:
        lowered = raw.strip().lower()
        if lowered in ("t", "true", "y", "yes", "on", "1"):
            return True
        if lowered in ("f", "false", "n", "no", "off", "0"):
            return False
        raise PgError("XX000", "illegal syntax")
    if oid in _INTS:
        try:
            return int(raw)
        except ValueError:
            raise PgError("XX000", "illegal syntax") from None
    if oid in _FLOATS:
        try:
            return float(raw)
        except ValueError:
            raise PgError("XX000", "illegal syntax") from None
    return raw  # text, unknown (0) and timestamps as text: CrateDB casts them to the column type


def _binary_value(raw: bytes, oid: int) -> Any:
    try:
        if oid == BOOL:
            return raw != b"\x00"
        if oid == INT2:
            return struct.unpack("!h", raw)[0]
        if oid == INT4:
            return struct.unpack("!i", raw)[0]
        if oid == INT8:
            return struct.unpack("!q", raw)[0]
        if oid == FLOAT4:
            return struct.unpack("!f", raw)[0]
        if oid == FLOAT8:
            return struct.unpack("!d", raw)[0]
        if oid in ARRAY_ELEMENTS:
            return _binary_array(raw)
        if oid in (0, TEXT, VARCHAR):
            return raw.decode()
    except (struct.error, UnicodeDecodeError):
        raise PgError("XX000", "illegal syntax") from None
    raise PgError("0A000", f"the pg test double does not decode binary parameters of type oid {oid}")


def _binary_array(raw: bytes) -> list:
    ndim, _flags, element = struct.unpack_from("!iiI", raw, 0)
    if ndim == 0:
        return []
    if ndim != 1:
        raise PgError("0A000", "the pg test double decodes one-dimensional arrays only")
    count, _lower = struct.unpack_from("!ii", raw, 12)
    pos, values = 20, []
    for _ in range(count):
        (length,) = struct.unpack_from("!i", raw, pos)
        pos += 4
        if length < 0:
            values.append(None)
            continue
        values.append(_binary_value(raw[pos : pos + length], element))
        pos += length
    return values


def parse_array_literal(text: str, element_oid: int) -> list:
    """A one-dimensional PostgreSQL array literal (``{1,2}``, ``{"a b","c\\"d"}``, ``NULL`` elements) as a list."""
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")):
        raise PgError("XX000", "illegal syntax")
    body, values, pos = text[1:-1], [], 0
    if not body.strip():
        return []
    while pos <= len(body):
        while pos < len(body) and body[pos] == " ":
            pos += 1
        if pos < len(body) and body[pos] == '"':
            pos += 1
            chars = []
            while pos < len(body) and body[pos] != '"':
                if body[pos] == "\\":
                    pos += 1
                chars.append(body[pos])
                pos += 1
            pos += 1
            values.append(
                "".join(chars) if element_oid in (0, TEXT, VARCHAR) else _text_value("".join(chars), element_oid)
            )
            end = body.find(",", pos)
        else:
            end = body.find(",", pos)
            item = body[pos : len(body) if end < 0 else end].strip()
            if item.startswith("{"):
                raise PgError("0A000", "the pg test double decodes one-dimensional arrays only")
            values.append(None if item.upper() == "NULL" else _text_value(item, element_oid))
        if end < 0:
            break
        pos = end + 1
    return values


def decode_param(raw: bytes | None, oid: int, binary: bool) -> Any:
    if raw is None:
        return None
    if binary:
        return _binary_value(raw, oid)
    text = raw.decode()
    if oid in ARRAY_ELEMENTS:
        return parse_array_literal(text, ARRAY_ELEMENTS[oid])
    return _text_value(text, oid)


def _text_output(value: Any, oid: int) -> str | None:
    if value is None:
        return None
    if oid in (TIMESTAMP, TIMESTAMPTZ) and isinstance(value, int):
        stamp = dt.datetime.fromtimestamp(value / 1000, tz=dt.timezone.utc)
        return stamp.isoformat(sep=" ") if oid == TIMESTAMPTZ else stamp.replace(tzinfo=None).isoformat(sep=" ")
    if oid == BOOL:
        return "t" if value else "f"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else {math.inf: "Infinity", -math.inf: "-Infinity"}.get(value, "NaN")
    return str(value)


# --- one session ---


@dataclass
class _Prepared:
    query: str
    oids: list[int]
    is_select: bool


@dataclass
class _Portal:
    statement: str  # the prepared statement's name
    prepared: _Prepared
    params: list[Any]
    result: dict[str, Any] | None = None  # a SELECT's answer, run early to describe its columns


class _Slot(list):
    """The place in the answer stream where one deferred execution's messages go, filled at the Sync: CrateDB holds
    back what follows an Execute until that execution is done, so each answer stays in order."""


@dataclass
class _Session:
    """One client connection's state: its prepared statements and portals, what waits for the next Sync."""

    statements: dict[str, _Prepared] = field(default_factory=dict)
    portals: dict[str, _Portal] = field(default_factory=dict)
    deferred: list[tuple[_Portal, _Slot]] = field(default_factory=list)
    outbox: list[dict[str, Any] | _Slot] = field(default_factory=list)
    failed: bool = False  # an error before the Sync: skip messages up to it

    def take_output(self) -> bytes:
        """The outbox as bytes (filled slots in place), emptied."""
        data = b"".join(
            b"".join(encode_backend(m) for m in item) if isinstance(item, _Slot) else encode_backend(item)
            for item in self.outbox
        )
        self.outbox.clear()
        return data


@dataclass
class _Outcome:
    """What the HTTP double did with one request: the answer, or an error, plus its fault actions."""

    answer: dict[str, Any] | None = None
    error: PgError | None = None
    action: str | None = None
    delay: float = 0.0
    pause: float = 0.0


class PgDouble:
    """The PostgreSQL port of one ``CrateDouble`` node: authentication here, SQL, storage and faults there."""

    def __init__(self, crate: CrateDouble, *, users: dict[str, str] | None = None, seed: int | None = None):
        self.crate = crate
        self.users = dict(users or {})
        self.rng = random.Random(seed)
        self.port: int | None = None
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._connection, HOST, port, reuse_address=True, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        frontend = FrontendReader()
        session = _Session()
        try:
            if not await self._startup(reader, writer, frontend):
                return
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    return
                frontend.feed(data)
                for message in frontend.messages():
                    if not await self._handle(message, session, writer):
                        return
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass  # the client went away
        except Exception:
            LOG.exception("unexpected error while serving a pg connection")
        finally:
            if not writer.transport.is_closing():
                writer.close()

    async def _next_message(self, reader: asyncio.StreamReader, frontend: FrontendReader) -> dict[str, Any] | None:
        while True:
            for message in frontend.messages():
                return message
            data = await reader.read(65536)
            if not data:
                return None
            frontend.feed(data)

    async def _startup(self, reader, writer, frontend: FrontendReader) -> bool:
        """Encryption requests, the startup message and authentication; False when the session ends."""
        while True:
            message = await self._next_message(reader, frontend)
            if message is None:
                return False
            if message["type"] in ("SSLRequest", "GSSENCRequest"):
                writer.write(b"N")
                continue
            if message["type"] == "CancelRequest":
                return False
            break
        user = message["params"].get("user", "crate")
        if self.users:
            writer.write(encode_backend({"type": "Authentication", "code": AUTH_CLEARTEXT}))
            await writer.drain()
            answer = await self._next_message(reader, frontend)
            if answer is None or answer["type"] != "Password":
                return False
            if self.users.get(user) != answer["password"]:
                self.crate.stats.auth_failures += 1
                refusal = PgError("28000", f'password authentication failed for user "{user}"', severity="FATAL")
                writer.write(encode_backend(refusal.answer()))
                await writer.drain()
                return False
        out = [{"type": "Authentication", "code": AUTH_OK}]
        out += [{"type": "ParameterStatus", "name": name, "value": value} for name, value in SERVER_PARAMETERS]
        out.append({"type": "BackendKeyData", "pid": self.rng.getrandbits(31), "secret": self.rng.getrandbits(31)})
        out.append({"type": "ReadyForQuery", "status": "I"})
        writer.write(b"".join(encode_backend(m) for m in out))
        await writer.drain()
        return True

    # -- messages

    async def _handle(self, message: dict[str, Any], session: _Session, writer) -> bool:
        kind = message["type"]
        if kind == "Terminate":
            return False
        if kind == "Query":
            return await self._simple_query(message["sql"], session, writer)
        if kind == "Sync":
            return await self._sync(session, writer)
        if kind == "Flush":
            return await self._flush(session, writer)
        if session.failed:
            return True  # after an error, everything up to the Sync is ignored
        try:
            if kind == "Parse":
                self._parse(message, session)
            elif kind == "Bind":
                self._bind(message, session)
            elif kind == "Describe":
                await self._describe(message, session)
            elif kind == "Execute":
                portal = session.portals.get(message["portal"])
                if portal is None:
                    raise PgError("XX000", f"No portal found with name: {message['portal']}")
                slot = _Slot()
                session.deferred.append((portal, slot))
                session.outbox.append(slot)
            elif kind == "Close":
                (session.statements if message["kind"] == "S" else session.portals).pop(message["name"], None)
                session.outbox.append({"type": "CloseComplete"})
            else:
                raise PgError("08P01", f"the pg test double does not handle {kind} messages")
        except PgError as error:
            session.outbox.append(error.answer())
            session.failed = True
            session.deferred.clear()  # CrateDB drops the executions queued before an error
        return True

    def _parse(self, message: dict[str, Any], session: _Session) -> None:
        query = message["query"]
        if query.strip().upper() in NO_OPS or _CONSTANT_SELECT.fullmatch(query):
            prepared = _Prepared(query, message["oids"], is_select=bool(_CONSTANT_SELECT.fullmatch(query)))
        else:
            try:
                node = parse_statement(query)
                if isinstance(node, Insert):
                    self.crate.store.sync()
                    self.crate.store.table(node.table[0] or "doc", node.table[1])  # CrateDB analyzes it at Parse
            except DoubleError as error:
                raise from_double_error(error.code, error.message) from None
            prepared = _Prepared(query, message["oids"], is_select=isinstance(node, Select))
        session.statements[message["name"]] = prepared
        session.outbox.append({"type": "ParseComplete"})

    def _bind(self, message: dict[str, Any], session: _Session) -> None:
        prepared = session.statements.get(message["statement"])
        if prepared is None:
            raise PgError("XX000", f"No statement found with name: {message['statement']}")
        raw = message["params"]
        formats = message["formats"] or [0]
        if len(formats) == 1:
            formats = formats * len(raw)
        oids = prepared.oids + [0] * (len(raw) - len(prepared.oids))
        params = [decode_param(value, oid, fmt == 1) for value, oid, fmt in zip(raw, oids, formats, strict=False)]
        session.portals[message["portal"]] = _Portal(message["statement"], prepared, params)
        session.outbox.append({"type": "BindComplete"})

    async def _describe(self, message: dict[str, Any], session: _Session) -> None:
        if message["kind"] == "S":
            prepared = session.statements.get(message["name"])
            if prepared is None:
                raise PgError("XX000", f"No statement found with name: {message['name']}")
            session.outbox.append({"type": "ParameterDescription", "oids": [oid or VARCHAR for oid in prepared.oids]})
            if prepared.is_select:
                raise PgError("0A000", "the pg test double does not describe the columns of a prepared SELECT")
            session.outbox.append({"type": "NoData"})
            return
        portal = session.portals.get(message["name"])
        if portal is None:
            raise PgError("XX000", f"No portal found with name: {message['name']}")
        if not portal.prepared.is_select:
            session.outbox.append({"type": "NoData"})
            return
        # The columns of a SELECT are known once it ran: run it now (it only reads), answer at its Execute.
        outcome = await self._run(portal.prepared.query, [portal.params])
        if outcome.error is not None:
            raise outcome.error
        portal.result = outcome.answer
        session.outbox.append(self._row_description(outcome.answer))

    # -- execution

    async def _simple_query(self, sql: str, session: _Session, writer) -> bool:
        session.outbox.clear()
        session.failed = False
        try:
            is_select = bool(_CONSTANT_SELECT.fullmatch(sql)) or isinstance(parse_statement(sql), Select)
        except DoubleError:
            is_select = False  # the HTTP double refuses it again when it runs, with its error
        portal = _Portal("", _Prepared(sql, [], is_select=is_select), [])
        outcome = await self._execute_group([portal], describe=True)
        session.outbox += outcome.answer["per_execution"][0]
        return await self._answer(session, writer, outcome, status="I")

    async def _sync(self, session: _Session, writer) -> bool:
        if session.failed:
            session.failed = False
            session.deferred.clear()
            session.outbox.append({"type": "ReadyForQuery", "status": "E"})
            writer.write(session.take_output())
            await writer.drain()
            return True
        faults = await self._run_deferred(session)
        return await self._answer(session, writer, faults, status="I")

    async def _flush(self, session: _Session, writer) -> bool:
        """Flush: CrateDB runs the deferred executions here too (psycopg flushes before it reads the results of an
        executemany), then sends everything so far; the Sync that follows only ends the pipeline."""
        if session.failed:
            data = b"".join(encode_backend(m) for m in session.outbox if not isinstance(m, _Slot))
            session.outbox.clear()
            writer.write(data)
            await writer.drain()
            return True
        faults = await self._run_deferred(session)
        return await self._answer(session, writer, faults, status=None)

    async def _run_deferred(self, session: _Session) -> _Outcome:
        """Run the executions queued since the last Sync or Flush into their slots; the outcome carries faults."""
        # CrateDB runs the executions of one statement as one bulk, statement after statement
        groups: dict[str, list[tuple[_Portal, _Slot]]] = {}
        for portal, slot in session.deferred:
            key = portal.statement if not portal.prepared.is_select else f"select {id(portal)}"
            groups.setdefault(key, []).append((portal, slot))
        session.deferred.clear()
        faults = _Outcome()
        for group in groups.values():
            done = await self._execute_group([portal for portal, _ in group])
            for (_, slot), messages in zip(group, done.answer["per_execution"], strict=True):
                slot.extend(messages)
            if done.action or done.delay:
                faults = done
        return faults

    async def _answer(self, session: _Session, writer, outcome: _Outcome, status: str | None) -> bool:
        """Send what the Sync, Flush or simple query produced (in the outbox, then ReadyForQuery with ``status``
        unless None), as the faults of its requests say (the outcome's action, delay and pause); False when the
        connection was reset."""
        if outcome.delay > 0:
            await asyncio.sleep(outcome.delay)
        if status is not None:
            session.outbox.append({"type": "ReadyForQuery", "status": status})
        data = session.take_output()
        if outcome.action == "reset_before":
            self._reset(writer)
            return False
        if outcome.action == "reset_mid":
            writer.write(data[: len(data) // 2])
            await writer.drain()
            await asyncio.sleep(outcome.pause)
            self._reset(writer)
            return False
        writer.write(data)
        await writer.drain()
        return True

    def _reset(self, writer) -> None:
        """Close with a TCP RST, as a crashing node does."""
        self.crate.stats.resets += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _execute_group(self, group: list[_Portal], describe: bool = False) -> _Outcome:
        """Run the executions of one statement (a bulk when there are several); ``answer["per_execution"]`` holds
        each execution's messages. An error fails every execution of the group, each with the ErrorResponse."""
        prepared = group[0].prepared
        query = prepared.query.strip()
        word = query.upper().rstrip(";").strip()
        if word in NO_OPS:
            return _Outcome({"per_execution": [[{"type": "CommandComplete", "tag": NO_OPS[word]}] for _ in group]})
        constant = _CONSTANT_SELECT.fullmatch(query)
        if constant:
            answer = {"cols": [constant.group(1)], "col_types": [9], "rows": [[int(constant.group(1))]], "rowcount": 1}
            return _Outcome({"per_execution": [self._select_messages(answer, describe)]})
        if prepared.is_select and group[0].result is not None:
            return _Outcome({"per_execution": [self._select_messages(group[0].result, describe)]})
        outcome = await self._run(prepared.query, [portal.params for portal in group])
        if outcome.action == "reset_before":
            return _Outcome({"per_execution": [[] for _ in group]}, action=outcome.action, delay=outcome.delay)
        if outcome.error is not None:
            failed = [[outcome.error.answer()] for _ in group]
            return _Outcome({"per_execution": failed}, action=outcome.action, delay=outcome.delay, pause=outcome.pause)
        answer = outcome.answer
        if prepared.is_select:
            per_execution = [self._select_messages(answer, describe)]
        elif "results" in answer:
            per_execution = [[{"type": "CommandComplete", "tag": _tag(query, _jdbc_count(r.get("rowcount")))}]
                             for r in answer["results"]]  # fmt: skip
        else:
            per_execution = [[{"type": "CommandComplete", "tag": _tag(query, _jdbc_count(answer.get("rowcount")))}]]
        outcome.answer = {"per_execution": per_execution}
        return outcome

    def _select_messages(self, answer: dict[str, Any], describe: bool) -> list[dict[str, Any]]:
        oids = [COLUMN_TYPES.get(t, (VARCHAR, -1))[0] for t in answer.get("col_types", [])]
        messages = [self._row_description(answer)] if describe else []
        messages += [{"type": "DataRow", "values": [_text_output(v, o) for v, o in zip(row, oids, strict=False)]}
                     for row in answer["rows"]]  # fmt: skip
        return [*messages, {"type": "CommandComplete", "tag": f"SELECT {len(answer['rows'])}"}]

    @staticmethod
    def _row_description(answer: dict[str, Any]) -> dict[str, Any]:
        columns = []
        for name, type_id in zip(answer["cols"], answer.get("col_types", []), strict=False):
            oid, size = COLUMN_TYPES.get(type_id, (VARCHAR, -1))
            columns.append({"name": name, "oid": oid, "size": size})
        return {"type": "RowDescription", "columns": columns}

    async def _run(self, query: str, param_sets: list[list[Any]]) -> _Outcome:
        """One request to the HTTP double: ``args`` for one execution, ``bulk_args`` for several."""
        if len(param_sets) == 1:
            payload = {"stmt": query, "args": param_sets[0]}
        else:
            payload = {"stmt": query, "bulk_args": param_sets}
        response = await self.crate._sql("types", {}, json.dumps(payload).encode())
        outcome = _Outcome(action=response.action, delay=response.delay, pause=response.pause)
        if response.action == "reset_before":
            return outcome  # nothing to read: the connection is reset before any answer
        try:
            answer = json.loads(response.body)
        except ValueError:
            answer = {"error": {"code": 5000, "message": response.body.decode(errors="replace")}}
        if response.status == 200:
            outcome.answer = answer
        else:
            error = answer.get("error") if isinstance(answer, dict) else None
            if not isinstance(error, dict):
                error = {"code": 5000, "message": str(error or f"HTTP {response.status}")}
            outcome.error = from_double_error(int(error.get("code") or 0), str(error.get("message", "")))
        return outcome


def _jdbc_count(rowcount: Any) -> int:
    """CrateDB's row count as its PostgreSQL port reports it: -1 (unknown) becomes -2, -2 (failed) becomes -3."""
    count = int(rowcount if isinstance(rowcount, int) else -1)
    return count - 1 if count < 0 else count


def _tag(query: str, count: int) -> str:
    word = query.split(None, 1)[0].upper() if query.split() else ""
    if word == "INSERT":
        return f"INSERT 0 {count}"
    if word in ("CREATE", "DROP", "REFRESH", "UPDATE", "DELETE", "ALTER", "SELECT"):
        return f"{word} {count}"
    return f"{word} {count}".strip()


# --------------------------------------------------------------------------------------------------------------------
# Command line and test helper


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_arg_parser()
    parser.description = "CrateDB test double with its PostgreSQL port (and the HTTP port for control and /_sql)."
    parser.add_argument("--pg-port", type=int, default=0, help="PostgreSQL port on 127.0.0.1; 0 picks a free one")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    if not args.db:
        print("--db is required", file=sys.stderr)
        return 2
    config = DoubleConfig()
    try:
        config.update(
            {
                "overhead_ms": args.overhead_ms,
                "per_row_us": args.per_row_us,
                "max_concurrency": args.max_concurrency,
                "overload_rows": args.overload_rows,
                "overload_response": args.overload_response,
                "faults": dict(parse_fault_arg(f) for f in args.fault),
            }
        )
        users = dict(u.split(":", 1) for u in args.user)
    except ValueError as exc:
        print(f"bad option: {exc}", file=sys.stderr)
        return 2
    # The HTTP side stays open (control endpoint, /_sql for reading back) and trusts everyone: the pg side checks
    # passwords, and tests read through HTTP without credentials.
    crate = CrateDouble(args.db, config, seed=args.seed, node_name=args.node_name, cluster_name=args.cluster_name)
    pg = PgDouble(crate, users=users, seed=args.seed)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        http_port = await crate.start(args.port)
        pg_port = await pg.start(args.pg_port)
        print(f"listening on http://{HOST}:{http_port} postgresql://{HOST}:{pg_port}", flush=True)
        await crate.serve_until(stop)

    asyncio.run(run())
    return 0


class PgDoubleProcess(DoubleProcess):
    """Runs the pg double as a subprocess: ``url`` is its HTTP side (control, /_sql), ``pg_url`` its PostgreSQL
    port (``postgresql://127.0.0.1:PORT``). Options as for ``DoubleProcess``, plus ``pg_port``."""

    _LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+) postgresql://127\.0\.0\.1:(\d+)")

    def __init__(self, *args: Any, pg_port: int = 0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pg_port = pg_port

    @property
    def pg_url(self) -> str:
        return f"postgresql://{HOST}:{self.pg_port}"

    def command(self) -> list[str]:
        command = super().command()
        command[1] = str(Path(__file__).resolve())
        return [*command, "--pg-port", str(self.pg_port)]

    def start(self) -> PgDoubleProcess:
        if self.proc is not None and self.proc.poll() is None:
            return self
        import subprocess

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self._read_line(self.proc.stdout.fileno(), time.monotonic() + self.startup_timeout)
        self.proc.stdout.close()
        found = self._LISTENING.fullmatch(line.strip())
        if found is None:
            self.stop()
            raise RuntimeError(f"pg double did not start (got {line!r}); log:\n{self.log_text()[-3000:]}")
        self.port, self.pg_port = int(found.group(1)), int(found.group(2))
        return self


if __name__ == "__main__":
    sys.exit(main())
