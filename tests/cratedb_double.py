"""CrateDB HTTP test double: a stand-in for one CrateDB 6.4.3 node's HTTP endpoint, for tests where no CrateDB runs.

It is held to answers recorded from a real CrateDB 6.4.3 node (``tests/fixtures/cratedb-6.4.3/probe.json``, replayed
by ``tests/test_conformance.py``; ``tests/fixtures/README.md`` says where they come from and lists what differs).
What could not be recorded (overload, circuit breaker, 503, 429, a node dying mid-request) is modelled on CrateDB's
source at tag 6.4.3 (github.com/crate/crate) and its documentation; each such place names its reference.

This module owns:

* ``CrateDouble``, an asyncio server with its own minimal HTTP/1.1 handling (keep-alive, Content-Length bodies,
  gzip request bodies as the ``crate`` client sends them, a body limit) that answers ``GET /`` and ``POST /_sql``
  with CrateDB's response and error shapes, HTTP statuses and bytes;
* a small SQL front end for what this project and its tests send: CREATE TABLE (with a generated date_trunc column
  and simple CHECK constraints), DROP TABLE, REFRESH TABLE, INSERT with VALUES or UNNEST, and SELECT (count(*),
  columns, WHERE, GROUP BY, HAVING count(*), ORDER BY, LIMIT, one subquery, ``information_schema.tables`` and
  ``.columns``); rows are stored in SQLite so tests can read them, also from another process. Anything else is
  refused with an ``UnsupportedFeatureException`` that says the double does not implement it;
* a latency model (per-request overhead, per-row cost, limited concurrency with a queue, an overload threshold);
* injectable faults, chosen by CLI flags or at runtime through ``POST /_double/config``, counted in
  ``GET /_double/stats``;
* a count-only mode for benchmarks that counts rows per table from the raw request bytes instead of storing them;
* test helpers: ``DoubleProcess`` runs the double as a subprocess, and ``count_rows``, ``duplicate_keys`` and
  ``fetch_rows`` read its SQLite file.

Run it as ``python tests/cratedb_double.py --port 0 --db /tmp/x.sqlite``; once it accepts connections it prints one
line, ``listening on http://127.0.0.1:PORT``. It uses only the standard library (plus orjson when installed, for
speed) and never imports locust.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import bisect
import datetime as dt
import decimal
import itertools
import json
import logging
import math
import os
import random
import re
import select
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import double_queries

try:
    import orjson
except ImportError:  # the double must also run where only the standard library is installed
    orjson = None

LOG = logging.getLogger("cratedb_double")

# What GET / reports: the recorded node's version. build_hash is the commit of tag 6.4.3 in github.com/crate/crate,
# lucene_version the one its pom.xml names (versions.lucene), build_timestamp that commit's time; the real values
# depend on the build and are masked in the recording.
CRATE_VERSION = {
    "number": "6.4.3",
    "build_hash": "d3b321359b2ad9697232b74d7d12ba2a6c756daf",
    "build_timestamp": "2026-08-19T11:14:53Z",
    "build_snapshot": False,
    "lucene_version": "10.4.0",
}
HOST = "127.0.0.1"
DEFAULT_MAX_BODY_BYTES = 100 * 1024 * 1024  # CrateDB's http.max_content_length
# Session.parse refuses longer statements (the statement_max_length session setting, default 256 KiB).
STATEMENT_MAX_LENGTH = 262_144
# The StreamReader buffer limit. It is also the point where asyncio pauses reading a socket, so it is set well above a
# typical 10k-row body to avoid pause/resume churn while a body arrives.
STREAM_LIMIT = 4 * 1024 * 1024
SQLITE_BUSY_TIMEOUT_S = 30.0
# docs/interfaces/http.rst, "Bulk errors": only the first 10 errors on each shard carry an error object. The double
# has no shards, so it counts per request.
MAX_ROW_ERRORS = 10
JSON_CT = "application/json; charset=UTF-8"  # what /_sql answers carry (recorded)
NODE_INFO_CT = "application/json"  # what GET / carries (recorded)
TEXT_CT = "text/plain; charset=UTF-8"
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Request Entity Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
# Schemas that exist without a table in them; a query on any other schema without tables fails as
# SchemaUnknownException (recorded: missing_schema_select, drop_missing_table_no_if).
BUILTIN_SCHEMAS = ("doc", "information_schema", "sys", "pg_catalog", "blob")

if orjson is not None:
    _loads = orjson.loads

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

else:
    _loads = json.loads

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# --------------------------------------------------------------------------------------------------------------------
# Errors in CrateDB's shape


class CrateError(Exception):
    """An error CrateDB reports as ``{"error": {"message": ..., "code": ...}}`` with an HTTP status.

    ``message`` is ``ExceptionClass[text]``, as CrateDB's HttpError writes it (Exceptions.userFriendlyMessage)."""

    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def as_row_error(self) -> dict[str, Any]:
        # A bulk result's error object: code first (recorded: bulk_check_violation_some).
        return {"code": self.code, "message": self.message}

    def response(self) -> _Response:
        return _Response(self.status, _dumps({"error": {"message": self.message, "code": self.code}}))


# Statuses and codes from io.crate.rest.action.HttpErrorStatus (6.4.3); IllegalArgumentException reaches the client
# as SQLParseException (recorded: bulk_check_violation_some).
def _parse_error(msg: str) -> CrateError:
    return CrateError(400, 4000, f"SQLParseException[{msg}]")


def _parsing_error(stmt: str, pos: int, msg: str) -> CrateError:
    """io.crate.sql.parser.ParsingException: ``line L:C: msg``, C counted from 1."""
    line = stmt.count("\n", 0, pos) + 1
    col = pos - (stmt.rfind("\n", 0, pos) + 1) + 1
    return CrateError(400, 4000, f"ParsingException[line {line}:{col}: {msg}]")


def _unsupported(msg: str) -> CrateError:
    return CrateError(400, 4004, f"UnsupportedFeatureException[{msg}]")


def _not_in_double(what: str) -> CrateError:
    """Something CrateDB may well accept but this double does not implement: said as such, never faked."""
    return _unsupported(f"the CrateDB test double does not implement {what}")


def _relation_unknown(schema: str, name: str) -> CrateError:
    return CrateError(404, 4041, f"RelationUnknown[Relation '{schema}.{name}' unknown]")


def _schema_unknown(schema: str) -> CrateError:
    return CrateError(404, 4045, f"SchemaUnknownException[Schema '{schema}' unknown]")


def _column_unknown(name: str) -> CrateError:
    return CrateError(404, 4043, f"ColumnUnknownException[Column {name} unknown]")


def _cast_error(value: Any, type_name: str) -> CrateError:
    return _parse_error(f"Cannot cast value `{_java_text(value)}` to type `{type_name}`")


def _placeholder_error(index: int, given: int) -> CrateError:
    # The first placeholder without a value is named (recorded: bulk_wrong_arity).
    return _parse_error(
        f"The query contains a parameter placeholder ${index}, but there are only {given} parameter values"
    )


# What a row failed by the row_rejections fault reports: the shape of a real CHECK refusal (code 4000,
# SQLParseException, "Failed CONSTRAINT ...", recorded: bulk_check_violation_some), naming the fault as its cause.
_ROW_REJECTED = CrateError(
    400, 4000, "SQLParseException[Failed CONSTRAINT row_rejections_fault CHECK (a fault of the test double)]"
)


def _java_double(value: float) -> str:
    """A double as Java's Double.toString writes it (JDK 19+: shortest digits), as CrateDB's messages show it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    if 1e-3 <= abs(value) < 1e7:
        return repr(value)  # Python's repr is fixed-point and shortest in this range, as Java's is
    exact = decimal.Decimal(repr(abs(value)))
    digits = "".join(map(str, exact.as_tuple().digits)).rstrip("0") or "0"
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[0]}.{digits[1:] or '0'}E{exact.adjusted()}"


def _java_text(value: Any) -> str:
    """A value as Java's toString shows it in CrateDB's messages (lists as ``[a, b]``, null as ``null``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _java_double(value)
    if isinstance(value, list):
        return "[" + ", ".join(_java_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_java_text(v)}" for k, v in value.items()) + "}"
    return str(value)


# --------------------------------------------------------------------------------------------------------------------
# Column types: the ones dg-locust creates (integer and bigint tags, text tags, double precision and boolean
# fields, timestamp with time zone)


class _CastError(ValueError):
    pass


_INT_TEXT = re.compile(r"\s*[+-]?\d+\s*")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MS = dt.timedelta(milliseconds=1)


def _int_converter(bits: int) -> Callable[[Any], int]:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def convert(value: Any) -> int:
        kind = type(value)
        if kind is int:
            result = value
        elif kind is float and math.isfinite(value):
            result = math.floor(value + 0.5)
        elif kind is str and _INT_TEXT.fullmatch(value):
            result = int(value)
        else:
            raise _CastError
        if not lo <= result <= hi:
            raise _CastError
        return result

    return convert


def _to_double(value: Any) -> float:
    kind = type(value)
    if kind is float or kind is int:
        return float(value)
    if kind is str:
        try:
            return float(value)
        except ValueError:
            raise _CastError from None
    raise _CastError


def _to_text(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return value
    if kind is int or kind is float:
        return str(value)
    raise _CastError


_TRUE = {"true", "t", "yes", "y", "on", "1"}
_FALSE = {"false", "f", "no", "n", "off", "0"}


def _to_bool(value: Any) -> int:
    if type(value) is bool:
        return int(value)
    if type(value) is str:
        text = value.strip().lower()
        if text in _TRUE:
            return 1
        if text in _FALSE:
            return 0
    raise _CastError


def _to_timestamp(value: Any) -> int:
    """Epoch milliseconds from epoch milliseconds (number or numeric text) or an ISO 8601 string."""
    kind = type(value)
    if kind is int:
        return value
    if kind is float and math.isfinite(value):
        return int(value)
    if kind is str:
        if _INT_TEXT.fullmatch(value):
            return int(value)
        text = value.strip()
        if text[-1:] in ("Z", "z"):
            text = text[:-1] + "+00:00"  # Python 3.10's fromisoformat does not know "Z"
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise _CastError from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.timezone.utc)
        return (parsed - _EPOCH) // _MS
    raise _CastError


def _not_castable(value: Any) -> Any:
    raise _CastError


@dataclass(frozen=True)
class CrateType:
    """A CrateDB type: its name in messages and information_schema, its ``col_types`` id, its SQLite storage."""

    name: str
    type_id: int | list[int]
    sqlite: str
    convert: Callable[[Any], Any]
    is_bool: bool = False
    is_array: bool = False  # stored as JSON text


# Type ids from io.crate.types.DataTypes (the ``col_types`` of ``?types``; recorded: select_ts_types for 11, 6, 3).
TYPES = {
    t.name: t
    for t in (
        CrateType("integer", 9, "INTEGER", _int_converter(32)),
        CrateType("bigint", 10, "INTEGER", _int_converter(64)),
        CrateType("double precision", 6, "REAL", _to_double),
        CrateType("text", 4, "TEXT", _to_text),
        CrateType("boolean", 3, "INTEGER", _to_bool, is_bool=True),
        CrateType("timestamp with time zone", 11, "INTEGER", _to_timestamp),
    )
}
# Output-only types: information_schema's text arrays, and the type of a NULL literal.
TEXT_ARRAY = CrateType("text_array", [100, 4], "TEXT", _not_castable, is_array=True)
UNDEFINED = CrateType("undefined", 0, "TEXT", _not_castable)

DATE_TRUNC_UNITS = ("second", "minute", "hour", "day", "week", "month", "quarter", "year")
_TRUNC_MS = {"second": 1000, "minute": 60_000, "hour": 3_600_000, "day": 86_400_000}


def date_trunc(unit: str, ms: int | None) -> int | None:
    """CrateDB's ``date_trunc(unit, ts)`` in UTC on epoch milliseconds; weeks start on Monday."""
    if ms is None:
        return None
    step = _TRUNC_MS.get(unit)
    if step is not None:
        return ms - ms % step
    if unit == "week":
        day = ms // 86_400_000
        return (day - (day + 3) % 7) * 86_400_000  # day 0, 1970-01-01, was a Thursday
    moment = _EPOCH + dt.timedelta(milliseconds=ms)
    if unit == "month":
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    elif unit == "quarter":
        start = moment.replace(
            month=3 * ((moment.month - 1) // 3) + 1, day=1, hour=0, minute=0, second=0, microsecond=0
        )
    else:
        start = moment.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    return (start - _EPOCH) // _MS


# --------------------------------------------------------------------------------------------------------------------
# SQL front end: tokenizer, statements, parser


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Key words the parser refuses as unquoted identifiers: the lexer's key words that SqlBaseParser.g4's nonReserved rule
# does not list (tag 6.4.3, libs/sql-parser). docs/sql/general/lexical-structure.rst lists the same words plus
# current_date, current_time and current_timestamp, which the parser does accept as identifiers.
RESERVED_WORDS = frozenset(
    _words(
        "add all alter and any array as asc between by called case cast column constraint costs create cross "
        "current_catalog current_role current_user default delete deny desc describe directory distinct drop else "
        "end escape except exists extract false first for from full function grant group having if in index inner "
        "input insert intersect into is join last left like limit match natural not null nulls object offset on or "
        "order outer persistent recursive reset returns revoke right select session_user set some stratify table "
        "then transient true try_cast unbounded union update user using when where with"
    )
)
# The tokens a statement can start with, in token-type order (the order of SqlBaseLexer.g4's rules), as ANTLR lists
# them after "expecting" when the first word is none of them (recorded: syntax_error). <EOF> and ';' because
# singleStatement is ``statement? SEMICOLON? EOF``.
STATEMENT_START = _words(
    "SELECT DEALLOCATE FETCH END WITH CREATE ALTER KILL CLOSE BEGIN START COMMIT ANALYZE DISCARD EXPLAIN SHOW "
    "OPTIMIZE REFRESH RESTORE DROP INSERT VALUES DELETE UPDATE SET RESET COPY GRANT DENY REVOKE DECLARE"
)
_EXPECTED_AT_START = "{" + ", ".join(["<EOF>", *(f"'{w}'" for w in STATEMENT_START), "';'"]) + "}"

_TOKEN_RE = re.compile(
    r"""\s+|--[^\n]*|/\*.*?\*/
    |(?P<qident>"(?:[^"]|"")*")
    |(?P<string>'(?:[^']|'')*')
    |(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
    |(?P<param>\?|\$\d+)
    |(?P<word>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op><=|>=|<>|!=|::|[(),.=<>*;\[\]+-])""",
    re.X | re.S,
)


@dataclass(frozen=True)
class _Tok:
    kind: str  # qident, string, number, param, word, op
    text: str  # unescaped text; words keep their spelling, compare them lower-cased
    pos: int
    end: int


def _tokenize(stmt: str) -> list[_Tok]:
    tokens = []
    pos = 0
    while pos < len(stmt):
        m = _TOKEN_RE.match(stmt, pos)
        if m is None:
            raise _parsing_error(stmt, pos, f"token recognition error at: '{stmt[pos]}'")
        kind = m.lastgroup
        if kind is not None:
            text = m.group(kind)
            if kind == "qident":
                text = text[1:-1].replace('""', '"')
            elif kind == "string":
                text = text[1:-1].replace("''", "'")
            tokens.append(_Tok(kind, text, pos, m.end()))
        pos = m.end()
    return tokens


# An expression in VALUES, UNNEST, WHERE, HAVING, LIMIT or a select list: a placeholder (index into args) or a literal.
@dataclass(frozen=True)
class Param:
    index: int


@dataclass(frozen=True)
class Literal:
    value: Any
    text: str  # as CrateDB prints it in a column label or a CHECK expression


Expr = Param | Literal


@dataclass(frozen=True)
class Check:
    """A column CHECK constraint of the form ``column op literal``; CrateDB names it ``<schema>_<table>_<column>
    _check_<12 hex digits of a random UUID>`` (TableElementsAnalyzer.genUniqueConstraintName)."""

    column: str
    op: str
    value: Any
    text: str  # the expression as CrateDB prints it in its message: "temperature" < 10
    name: str = ""


@dataclass
class ColumnDef:
    name: str
    type: CrateType
    generated: tuple[str, str] | None = None  # (date_trunc unit, source column)
    check: Check | None = None

    def to_json(self) -> dict[str, Any]:
        check = self.check
        return {
            "name": self.name,
            "type": self.type.name,
            "generated": list(self.generated) if self.generated else None,
            "check": None if check is None else [check.column, check.op, check.value, check.text, check.name],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ColumnDef:
        gen, check = data.get("generated"), data.get("check")
        return cls(
            name=data["name"],
            type=TYPES[data["type"]],
            generated=(gen[0], gen[1]) if gen else None,
            check=Check(*check) if check else None,
        )


@dataclass
class CreateTable:
    table: tuple[str | None, str]
    if_not_exists: bool
    columns: list[ColumnDef]
    shards: int | None
    partitioned_by: list[str]
    options: dict[str, Any]


@dataclass
class DropTable:
    table: tuple[str | None, str]
    if_exists: bool


@dataclass
class RefreshTable:
    tables: list[tuple[str | None, str]]


@dataclass
class Insert:
    table: tuple[str | None, str]
    columns: list[str] | None
    values: list[list[Expr]] | None  # VALUES (...), (...)
    unnest: list[Expr] | None  # SELECT * FROM UNNEST(...)
    n_params: int


@dataclass(frozen=True)
class SelectItem:
    kind: str  # "count" (count(*)), "column" or "value"
    column: str | None = None
    expr: Expr | None = None
    alias: str | None = None

    @property
    def label(self) -> str:
        """The output column name; count(*) is named ``count`` (recorded: count_window)."""
        if self.alias:
            return self.alias
        if self.kind == "count":
            return "count"
        if self.kind == "column":
            assert self.column is not None
            return self.column
        return self.expr.text if isinstance(self.expr, Literal) else f"${self.expr.index + 1}"  # type: ignore[union-attr]


@dataclass(frozen=True)
class Condition:
    column: str
    op: str  # = != < > <= >= between
    values: list[Expr]


@dataclass
class Select:
    items: list[SelectItem] | None  # None means *
    table: tuple[str | None, str] | None  # FROM a table, or
    subquery: tuple[Select, str] | None  # FROM (SELECT ...) alias, or neither
    where: list[Condition]
    group_by: list[int | str]  # output ordinals (1-based) or column names
    having: tuple[str, Expr] | None  # count(*) <op> <expr>
    order_by: list[tuple[str, bool]]  # (column, descending)
    limit: Expr | None
    n_params: int


Statement = CreateTable | DropTable | RefreshTable | Insert | Select
_COMPARISONS = {"=": "=", "!=": "!=", "<>": "!=", "<": "<", ">": ">", "<=": "<=", ">=": ">="}


class _Parser:
    """Recursive descent over tokens for the handful of statements the double understands."""

    def __init__(self, stmt: str):
        self.stmt = stmt
        self.toks = _tokenize(stmt)
        self.i = 0
        self.next_param = 0  # the index the next ``?`` gets
        self.n_params = 0

    # -- token helpers
    def peek(self, offset: int = 0) -> _Tok | None:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else None

    def error(self, expected: str) -> CrateError:
        tok = self.peek()
        pos = tok.pos if tok else len(self.stmt)
        text = self.stmt[tok.pos : tok.end] if tok else "<EOF>"
        return _parsing_error(self.stmt, pos, f"mismatched input '{text}' expecting {expected}")

    def at_word(self, *words: str) -> bool:
        for k, word in enumerate(words):
            tok = self.peek(k)
            if tok is None or tok.kind != "word" or tok.text.lower() != word:
                return False
        return True

    def accept_word(self, *words: str) -> bool:
        if self.at_word(*words):
            self.i += len(words)
            return True
        return False

    def expect_word(self, *words: str) -> None:
        if not self.accept_word(*words):
            raise self.error("'" + " ".join(words).upper() + "'")

    def at_op(self, op: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "op" and tok.text == op

    def accept_op(self, op: str) -> bool:
        if self.at_op(op):
            self.i += 1
            return True
        return False

    def expect_op(self, op: str) -> None:
        if not self.accept_op(op):
            raise self.error(f"'{op}'")

    def at_identifier(self) -> bool:
        tok = self.peek()
        return tok is not None and (
            tok.kind == "qident" or (tok.kind == "word" and tok.text.lower() not in RESERVED_WORDS)
        )

    def ident(self) -> str:
        tok = self.peek()
        if tok is None or tok.kind not in ("word", "qident"):
            raise self.error("an identifier")
        if tok.kind == "word" and tok.text.lower() in RESERVED_WORDS:
            # ANTLR cannot choose an alternative and shows the input from the statement's first token on
            # (recorded: unquoted_reserved_word).
            start = self.toks[0].pos
            raise _parsing_error(self.stmt, tok.pos, f"no viable alternative at input '{self.stmt[start : tok.end]}'")
        self.i += 1
        return tok.text if tok.kind == "qident" else tok.text.lower()

    def table_ref(self) -> tuple[str | None, str]:
        first = self.ident()
        if self.accept_op("."):
            return first, self.ident()
        return None, first

    def integer(self) -> int:
        tok = self.peek()
        if tok is None or tok.kind != "number" or not tok.text.isdigit():
            raise self.error("an integer")
        self.i += 1
        return int(tok.text)

    def literal_or_param(self) -> Expr | None:
        """A placeholder or a literal, or None (nothing consumed) when the next tokens are neither."""
        tok = self.peek()
        if tok is None:
            return None
        if tok.kind == "param":
            self.i += 1
            if tok.text == "?":
                index = self.next_param
                self.next_param += 1
            else:
                index = int(tok.text[1:]) - 1
                if index < 0:
                    raise _parse_error(f"Invalid parameter placeholder {tok.text}")
            self.n_params = max(self.n_params, index + 1)
            return Param(index)
        if tok.kind == "string":
            self.i += 1
            return Literal(tok.text, "'" + tok.text.replace("'", "''") + "'")
        sign, nxt = "", tok
        if tok.kind == "op" and tok.text in "+-" and (after := self.peek(1)) is not None and after.kind == "number":
            sign, nxt = ("-" if tok.text == "-" else ""), after
        if nxt.kind == "number":
            self.i += 2 if nxt is not tok else 1
            text = nxt.text
            value: Any = int(text) if text.isdigit() else float(text)
            return Literal(-value if sign else value, sign + text)
        if tok.kind == "word" and tok.text.lower() in ("null", "true", "false"):
            self.i += 1
            word = tok.text.lower()
            return Literal({"null": None, "true": True, "false": False}[word], "NULL" if word == "null" else word)
        return None

    def expr(self) -> Expr:
        value = self.literal_or_param()
        if value is None:
            raise self.error("a literal or a parameter placeholder")
        return value

    def end(self) -> None:
        self.accept_op(";")
        if self.peek() is not None:
            raise self.error("<EOF>")

    # -- statements
    def statement(self) -> Statement:
        tok = self.peek()
        word = tok.text.lower() if tok is not None and tok.kind == "word" else None
        if tok is None or word is None or word.upper() not in STATEMENT_START:
            if tok is None:
                raise _not_in_double("empty statements")
            raise self.error(_EXPECTED_AT_START)
        node: Statement
        if self.accept_word("create", "table"):
            node = self.create_table()
        elif self.accept_word("drop", "table"):
            if_exists = self.accept_word("if", "exists")
            node = DropTable(self.table_ref(), if_exists)
        elif self.accept_word("refresh", "table"):
            tables = [self.table_ref()]
            while self.accept_op(","):
                tables.append(self.table_ref())
            node = RefreshTable(tables)
        elif self.accept_word("insert", "into"):
            node = self.insert()
        elif self.accept_word("select"):
            node = self.select()
        else:
            words = [t.text.upper() for t in self.toks[:2] if t.kind == "word"]
            if words[0] not in ("CREATE", "DROP", "ALTER", "SHOW"):
                words = words[:1]
            raise _not_in_double(f"{' '.join(words)} statements")
        self.end()
        return node

    def column_type(self) -> CrateType:
        start = self.peek()
        word = self.ident()
        if word == "timestamp" and self.accept_word("with", "time", "zone"):
            word = "timestamp with time zone"
        elif word == "double" and self.accept_word("precision"):
            word = "double precision"
        ctype = TYPES.get(word)
        if ctype is None:
            spelled = self.stmt[start.pos : start.end] if start else word
            raise _not_in_double(f"the type {spelled} (it knows {', '.join(TYPES)})")
        return ctype

    def generated_expr(self) -> tuple[str, str]:
        parens = 0
        while self.accept_op("("):
            parens += 1
        if not self.accept_word("date_trunc"):
            raise _not_in_double("generated columns other than date_trunc(unit, column)")
        self.expect_op("(")
        unit_tok = self.peek()
        if unit_tok is None or unit_tok.kind != "string" or unit_tok.text.lower() not in DATE_TRUNC_UNITS:
            raise self.error("a date_trunc unit")
        self.i += 1
        self.expect_op(",")
        source = self.ident()
        self.expect_op(")")
        for _ in range(parens):
            self.expect_op(")")
        return unit_tok.text.lower(), source

    def check(self, column: str) -> Check:
        self.expect_op("(")
        name = self.ident()
        tok = self.peek()
        if tok is None or tok.kind != "op" or tok.text not in _COMPARISONS:
            raise _not_in_double("CHECK constraints other than (column <comparison> literal)")
        self.i += 1
        value = self.expr()
        if not isinstance(value, Literal) or name != column:
            raise _not_in_double("CHECK constraints other than (column <comparison> literal) on their own column")
        self.expect_op(")")
        op = _COMPARISONS[tok.text]
        # CrateDB prints the analysed expression: the column quoted, the operator between spaces.
        return Check(column, op, value.value, f"{_quote(column)} {'<>' if op == '!=' else op} {value.text}")

    def create_table(self) -> CreateTable:
        if_not_exists = self.accept_word("if", "not", "exists")
        table = self.table_ref()
        self.expect_op("(")
        columns: list[ColumnDef] = []
        while True:
            col = ColumnDef(self.ident(), self.column_type())
            while True:
                if self.accept_word("generated", "always", "as"):
                    col.generated = self.generated_expr()
                elif self.accept_word("check"):
                    if col.check is not None:
                        raise _not_in_double("more than one CHECK constraint per column")
                    col.check = self.check(col.name)
                elif self.at_op(",") or self.at_op(")"):
                    break
                else:
                    tok = self.peek()
                    raise _not_in_double(f"the column option {tok.text if tok else '<EOF>'!r}")
            columns.append(col)
            if not self.accept_op(","):
                break
        self.expect_op(")")
        shards = None
        partitioned_by: list[str] = []
        options: dict[str, Any] = {}
        while True:
            if self.accept_word("clustered", "into"):
                shards = self.integer()
                self.expect_word("shards")
            elif self.accept_word("partitioned", "by"):
                self.expect_op("(")
                partitioned_by.append(self.ident())
                while self.accept_op(","):
                    partitioned_by.append(self.ident())
                self.expect_op(")")
            elif self.accept_word("with"):
                self.expect_op("(")
                while True:
                    key = self.ident()
                    while self.accept_op("."):
                        key += "." + self.ident()
                    self.expect_op("=")
                    value = self.expr()
                    if not isinstance(value, Literal):
                        raise _not_in_double("placeholders in WITH (...)")
                    options[key] = value.value
                    if not self.accept_op(","):
                        break
                self.expect_op(")")
            else:
                break
        return CreateTable(table, if_not_exists, columns, shards, partitioned_by, options)

    def insert(self) -> Insert:
        table = self.table_ref()
        columns = None
        values = None
        unnest = None
        # "(" opens either the column list or a parenthesised query.
        if self.accept_op("("):
            if self.at_word("select"):
                self.i -= 1
            else:
                columns = [self.ident()]
                while self.accept_op(","):
                    columns.append(self.ident())
                self.expect_op(")")
        if self.accept_word("values"):
            values = []
            while True:
                self.expect_op("(")
                row = [self.expr()]
                while self.accept_op(","):
                    row.append(self.expr())
                self.expect_op(")")
                values.append(row)
                if not self.accept_op(","):
                    break
        else:
            parens = 0
            while self.accept_op("("):
                parens += 1
            self.expect_word("select")
            self.expect_op("*")
            self.expect_word("from")
            self.expect_word("unnest")
            self.expect_op("(")
            unnest = [self.expr()]
            while self.accept_op(","):
                unnest.append(self.expr())
            self.expect_op(")")
            for _ in range(parens):
                self.expect_op(")")
        if self.at_word("on") or self.at_word("returning"):
            raise _not_in_double("ON CONFLICT and RETURNING")
        return Insert(table, columns, values, unnest, self.n_params)

    def select_item(self) -> SelectItem:
        if self.at_word("count") and (nxt := self.peek(1)) is not None and nxt.text == "(":
            self.i += 2
            if not self.accept_op("*"):
                raise _not_in_double("aggregates other than count(*)")
            self.expect_op(")")
            item = SelectItem("count")
        elif (value := self.literal_or_param()) is not None:
            item = SelectItem("value", expr=value)
        else:
            item = SelectItem("column", column=self.ident())
            if self.at_op("(") or self.at_op("."):
                raise _not_in_double("functions and qualified columns in a select list")
        if self.accept_word("as") or self.at_identifier():
            item = SelectItem(item.kind, item.column, item.expr, self.ident())
        return item

    def select(self) -> Select:
        items: list[SelectItem] | None = None
        if not self.accept_op("*"):
            items = [self.select_item()]
            while self.accept_op(","):
                items.append(self.select_item())
        table = None
        subquery = None
        if self.accept_word("from"):
            if self.accept_op("("):
                self.expect_word("select")
                inner = self.select()
                self.expect_op(")")
                self.accept_word("as")
                subquery = (inner, self.ident())
            else:
                table = self.table_ref()
                if self.accept_word("as") or self.at_identifier():
                    raise _not_in_double("table aliases")
        where: list[Condition] = []
        if self.accept_word("where"):
            while True:
                where.append(self.condition())
                if not self.accept_word("and"):
                    break
        group_by: list[int | str] = []
        if self.accept_word("group", "by"):
            while True:
                tok = self.peek()
                group_by.append(self.integer() if tok is not None and tok.kind == "number" else self.ident())
                if not self.accept_op(","):
                    break
        having = None
        if self.accept_word("having"):
            if not (self.accept_word("count") and self.accept_op("(") and self.accept_op("*") and self.accept_op(")")):
                raise _not_in_double("HAVING conditions other than count(*) <comparison> value")
            tok = self.peek()
            if tok is None or tok.kind != "op" or tok.text not in _COMPARISONS:
                raise self.error("a comparison operator")
            self.i += 1
            having = (_COMPARISONS[tok.text], self.expr())
        order_by: list[tuple[str, bool]] = []
        if self.accept_word("order", "by"):
            while True:
                column = self.ident()
                desc = self.accept_word("desc")
                if not desc:
                    self.accept_word("asc")
                order_by.append((column, desc))
                if not self.accept_op(","):
                    break
        limit = self.expr() if self.accept_word("limit") else None
        return Select(items, table, subquery, where, group_by, having, order_by, limit, self.n_params)

    def condition(self) -> Condition:
        column = self.ident()
        if self.accept_word("between"):
            low = self.expr()
            self.expect_word("and")
            return Condition(column, "between", [low, self.expr()])
        tok = self.peek()
        if tok is None or tok.kind != "op" or tok.text not in _COMPARISONS:
            raise _not_in_double("WHERE conditions other than column <comparison> value and BETWEEN")
        self.i += 1
        return Condition(column, _COMPARISONS[tok.text], [self.expr()])


def parse_statement(stmt: str) -> Statement:
    """Parse one SQL statement; CrateDB's own errors for bad SQL, UnsupportedFeatureException for what the double
    does not implement."""
    return _Parser(stmt).statement()


def split_table_name(table: str, default_schema: str = "doc") -> tuple[str, str]:
    """``"doc"."t"``, ``doc.t`` or ``t`` -> (schema, table), with CrateDB's identifier rules."""
    p = _Parser(table)
    schema, name = p.table_ref()
    p.end()
    return schema or default_schema, name


def storage_table(schema: str, name: str) -> str:
    """The SQLite table that holds CrateDB table ``schema.name``."""
    return f"{schema}__{name}"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


_q = _quote


def _resolve(expr: Expr, args: Sequence[Any]) -> Any:
    if isinstance(expr, Literal):
        return expr.value
    if expr.index >= len(args):
        raise _placeholder_error(len(args) + 1, len(args))
    return args[expr.index]


def _check_arity(n_params: int, args: Sequence[Any]) -> None:
    if len(args) < n_params:
        raise _placeholder_error(len(args) + 1, len(args))


# --------------------------------------------------------------------------------------------------------------------
# Tables and storage


@dataclass
class TableDef:
    schema: str
    name: str
    columns: list[ColumnDef]
    shards: int
    replicas: str
    partitioned_by: list[str]

    def __post_init__(self) -> None:
        self.by_name = {c.name: c for c in self.columns}

    @property
    def fqn(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def storage(self) -> str:
        return storage_table(self.schema, self.name)

    def column(self, name: str) -> ColumnDef:
        col = self.by_name.get(name)
        if col is None:
            raise _column_unknown(name)
        return col

    def to_json(self) -> str:
        return json.dumps(
            {
                "columns": [c.to_json() for c in self.columns],
                "shards": self.shards,
                "replicas": self.replicas,
                "partitioned_by": self.partitioned_by,
            }
        )

    @classmethod
    def from_json(cls, schema: str, name: str, text: str) -> TableDef:
        data = json.loads(text)
        return cls(
            schema=schema,
            name=name,
            columns=[ColumnDef.from_json(c) for c in data["columns"]],
            shards=data["shards"],
            replicas=data["replicas"],
            partitioned_by=data["partitioned_by"],
        )

    @classmethod
    def from_statement(cls, node: CreateTable, schema: str) -> TableDef:
        if schema in BUILTIN_SCHEMAS[1:]:
            raise _not_in_double(f"tables in the system schema {schema}")
        name = node.table[1]
        columns = []
        for parsed in node.columns:  # the parsed statement is cached: copy, never mutate it
            check = parsed.check
            if check is not None:
                try:
                    limit = parsed.type.convert(check.value)  # compared in the column's type
                except _CastError:
                    raise _cast_error(check.value, parsed.type.name) from None
                # genUniqueConstraintName: <schema>_<table>_<column>_check_<last group of a random UUID>
                suffix = str(uuid.uuid4()).rsplit("-", 1)[1]
                check = Check(
                    check.column, check.op, limit, check.text, f"{schema}_{name}_{check.column}_check_{suffix}"
                )
            columns.append(ColumnDef(parsed.name, parsed.type, parsed.generated, check))
        names = [c.name for c in columns]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise _parse_error(f'Column "{sorted(dupes)[0]}" specified more than once')
        by_name = {c.name: c for c in columns}
        for col in columns:
            if col.generated:
                source = by_name.get(col.generated[1])
                if source is None:
                    raise _column_unknown(col.generated[1])
                if source.type.type_id != 11 or col.type.type_id != 11:
                    raise _not_in_double("date_trunc generated columns other than timestamp with time zone")
        for partition in node.partitioned_by:
            if partition not in by_name:
                raise _column_unknown(partition)
        return cls(
            schema=schema,
            name=name,
            columns=columns,
            shards=node.shards or 4,
            replicas=str(node.options.get("number_of_replicas", "0-1")),
            partitioned_by=node.partitioned_by,
        )


# The information_schema tables the double answers, with the columns it fills (a real node has many more columns,
# and rows for the system tables too). The names and types are CrateDB's (recorded: information_schema_table,
# information_schema_columns).
_INFO_SCHEMA: dict[str, list[tuple[str, CrateType]]] = {
    "tables": [
        ("table_schema", TYPES["text"]),
        ("table_name", TYPES["text"]),
        ("number_of_shards", TYPES["integer"]),
        ("number_of_replicas", TYPES["text"]),
        ("partitioned_by", TEXT_ARRAY),
    ],
    "columns": [
        ("table_schema", TYPES["text"]),
        ("table_name", TYPES["text"]),
        ("column_name", TYPES["text"]),
        ("data_type", TYPES["text"]),
        ("ordinal_position", TYPES["integer"]),
    ],
}


class Store:
    """Tables in one SQLite file: a catalog of CrateDB table definitions plus one SQLite table per CrateDB table.

    WAL mode and a busy timeout let two double processes share one file (two nodes of one cluster) and let tests read
    it while the double runs. Every request is its own transaction, committed before the response is sent.
    """

    def __init__(self, path: str | None):
        self.path = path or ":memory:"
        self.conn = sqlite3.connect(self.path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None)
        self.conn.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        if path:
            self.conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL is durable against a killed process (only an OS crash can lose the last commits), and much faster.
        self.conn.execute("PRAGMA synchronous = NORMAL")
        with self.transaction():
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS _double_catalog "
                "(schema_name TEXT, table_name TEXT, definition TEXT, PRIMARY KEY (schema_name, table_name))"
            )
            self.conn.execute("CREATE TABLE IF NOT EXISTS _double_meta (key TEXT PRIMARY KEY, value INTEGER)")
            self.conn.execute("INSERT OR IGNORE INTO _double_meta VALUES ('catalog_version', 0)")
        self._tables: dict[tuple[str, str], TableDef] = {}
        self._version = -1
        self.sync()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so two processes never both pass an existence check.
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def sync(self) -> None:
        """Reload the catalog when any process changed it (CREATE or DROP bump catalog_version)."""
        version = self.conn.execute("SELECT value FROM _double_meta WHERE key = 'catalog_version'").fetchone()[0]
        if version != self._version:
            rows = self.conn.execute("SELECT schema_name, table_name, definition FROM _double_catalog").fetchall()
            self._tables = {(s, n): TableDef.from_json(s, n, d) for s, n, d in rows}
            self._version = version

    def _missing(self, schema: str, name: str) -> CrateError:
        """What CrateDB says about a table that does not exist: the schema is unknown when no table is in it."""
        if schema in BUILTIN_SCHEMAS or any(s == schema for s, _ in self._tables):
            return _relation_unknown(schema, name)
        return _schema_unknown(schema)

    def table(self, schema: str, name: str) -> TableDef:
        tdef = self._tables.get((schema, name))
        if tdef is not None:
            return tdef
        if schema == "information_schema" and name in _INFO_SCHEMA:
            return self._information_schema(name)
        if schema in BUILTIN_SCHEMAS[1:]:
            raise _not_in_double(f"the system table {schema}.{name}")
        raise self._missing(schema, name)

    def _information_schema(self, name: str) -> TableDef:
        """information_schema.tables or .columns, filled into a TEMP table from the catalog for this query."""
        spec = _INFO_SCHEMA[name]
        if name == "tables":
            rows = [
                (t.schema, t.name, t.shards, t.replicas, json.dumps(t.partitioned_by) if t.partitioned_by else None)
                for t in self._tables.values()
            ]
        else:
            rows = [
                (t.schema, t.name, c.name, c.type.name, position)
                for t in self._tables.values()
                for position, c in enumerate(t.columns, start=1)
            ]
        tdef = TableDef("information_schema", name, [ColumnDef(n, ctype) for n, ctype in spec], 1, "0", [])
        # A TEMP table belongs to this connection only and takes no lock on the shared file.
        self.conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_q(tdef.storage)} ({', '.join(_q(n) for n, _ in spec)})")
        self.conn.execute(f"DELETE FROM temp.{_q(tdef.storage)}")
        self.conn.executemany(f"INSERT INTO temp.{_q(tdef.storage)} VALUES ({', '.join('?' * len(spec))})", rows)
        return tdef

    def create_table(self, tdef: TableDef, if_not_exists: bool) -> int:
        cols = [f"{_q(c.name)} {c.type.sqlite}" for c in tdef.columns]
        with self.transaction() as conn:
            exists = conn.execute(
                "SELECT 1 FROM _double_catalog WHERE schema_name = ? AND table_name = ?", (tdef.schema, tdef.name)
            ).fetchone()
            if exists:
                if if_not_exists:
                    return 0
                raise CrateError(409, 4093, f"RelationAlreadyExists[Relation '{tdef.fqn}' already exists.]")
            conn.execute(f"DROP TABLE IF EXISTS main.{_q(tdef.storage)}")
            conn.execute(f"CREATE TABLE main.{_q(tdef.storage)} ({', '.join(cols)})")
            conn.execute("INSERT INTO _double_catalog VALUES (?, ?, ?)", (tdef.schema, tdef.name, tdef.to_json()))
            conn.execute("UPDATE _double_meta SET value = value + 1 WHERE key = 'catalog_version'")
        self.sync()
        return 1

    def drop_table(self, schema: str, name: str, if_exists: bool) -> int:
        with self.transaction() as conn:
            gone = conn.execute(
                "DELETE FROM _double_catalog WHERE schema_name = ? AND table_name = ?", (schema, name)
            ).rowcount
            if gone:
                conn.execute(f"DROP TABLE IF EXISTS main.{_q(storage_table(schema, name))}")
                conn.execute("UPDATE _double_meta SET value = value + 1 WHERE key = 'catalog_version'")
        self.sync()
        if not gone and not if_exists:
            raise self._missing(schema, name)
        return 1 if gone else 0

    def refresh(self, tdef: TableDef) -> int:
        """CrateDB answers the number of refreshed tables or partitions (recorded: refresh, refresh_check)."""
        if not tdef.partitioned_by:
            return 1
        cols = ", ".join(_q(c) for c in tdef.partitioned_by)
        sql = f"SELECT count(*) FROM (SELECT DISTINCT {cols} FROM main.{_q(tdef.storage)})"
        return self.conn.execute(sql).fetchone()[0]

    def insert(self, tdef: TableDef, columns: list[str], rows: list[tuple]) -> None:
        """Insert rows in one transaction."""
        if not rows:
            return
        names = ", ".join(_q(c) for c in columns)
        marks = ", ".join("?" * len(columns))
        try:
            with self.transaction() as conn:
                conn.executemany(f"INSERT INTO main.{_q(tdef.storage)} ({names}) VALUES ({marks})", rows)
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            self.sync()  # another process dropped it
            raise self._missing(tdef.schema, tdef.name) from None

    def select(self, sql: str, params: list[Any]) -> list[tuple]:
        return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------------------------------------------------
# Count-only mode: shapes of JSON arrays from bytes

_SCAN_PREFIX = re.compile(rb'\s*\{\s*"stmt"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(bulk_args|args)"\s*:\s*', re.S)
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
# Everything but quotes, brackets, braces and commas: numbers, literals, whitespace and string contents go away.
_NON_STRUCTURE = bytes(c for c in range(256) if c not in b'"[]{},')


def scan_request(body: bytes) -> tuple[str, str, bytes] | None:
    """Split ``{"stmt": ..., "bulk_args"|"args": [...]}`` into (stmt, key, array bytes) without parsing the array.

    Only the layout the crate client and orjson produce (stmt first, one array after it) is recognised; anything else
    gives None and the caller parses the body fully.
    """
    m = _SCAN_PREFIX.match(body)
    if m is None:
        return None
    end = len(body)
    while end and body[end - 1] in b" \t\r\n":
        end -= 1
    if end == 0 or body[end - 1] != 0x7D:  # "}"
        return None
    raw_stmt = m.group(1)
    try:
        stmt = json.loads(b'"' + raw_stmt + b'"') if b"\\" in raw_stmt else raw_stmt.decode()
    except ValueError:
        return None
    return stmt, m.group(2).decode(), body[m.end() : end - 1]


def scan_matrix(array: bytes) -> tuple[int, int] | None:
    """Shape (outer, inner) of a JSON array of equally long, flat arrays, read from its bytes; None when unsure.

    String contents are blanked, everything except ``"[]{},`` is deleted (C speed), and what is left must be exactly
    ``[[,,,],[,,,],...]``. Nested arrays, objects, ragged rows, top-level scalars, and strings containing brackets or
    commas make it None. A one-element or empty inner array both reduce to ``[]``, so inner arrays of length <= 1 are
    "unsure" too. Values are not validated: this counts, it does not parse.
    """
    if b"\\" in array:
        array = _JSON_STRING.sub(b'""', array)  # escaped quotes would confuse the quote pairing below
    shape = array.translate(None, _NON_STRUCTURE)
    if b'"' in shape:
        # With no escapes left, a string whose contents had no structural byte is now exactly `""`. Any other
        # string leaves an unpaired quote behind, so the scan gives up rather than miscount.
        shape = shape.replace(b'""', b"")
        if b'"' in shape:
            return None
    if len(shape) < 2 or shape[0] != 0x5B or shape[-1] != 0x5D or b"{" in shape:
        return None
    if shape == b"[]":
        return (0, 0) if array.strip() == b"[]" else None
    first = shape[1 : shape.find(b"]") + 1]
    if not first.startswith(b"["):
        return None
    inner = first.count(b",") + 1
    if inner == 1:
        return None
    outer = shape.count(b"],[") + 1
    if shape != b"[" + b",".join([first] * outer) + b"]":
        return None
    return outer, inner


# --------------------------------------------------------------------------------------------------------------------
# Configuration: latency model and faults
#
# None of this could be recorded from a real node (overload did not happen on demand, see tests/fixtures/README.md),
# so every shape here is taken from CrateDB's source at tag 6.4.3 or its documentation, named where it is used:
#
# - http_401: a refused login, as recorded (wrong_password): HttpAuthUpstreamHandler.sendUnauthorized.
# - http_503 (codes 5031..5035): io.crate.rest.action.HttpErrorStatus; the messages are those of the exceptions
#   that carry these codes (see _503_MESSAGES). No 6.4.3 exception answers 5030, so the double does not either.
# - http_429_empty: a rejected execution (EsRejectedExecutionException) answered by
#   io.crate.protocols.http.MainAndStaticFileHandler.exceptionCaught: a bare 429, then the connection is closed.
# - circuit_breaker: org.elasticsearch.common.breaker.CircuitBreakingException, answered 500 / 5000 (HttpError
#   .fromThrowable: ElasticsearchException.httpErrorStatus() is UNHANDLED_SERVER_ERROR).
# - reset_before_response, reset_mid_response: a node killed during a request; on 6.4.3 such batches were seen
#   partly stored (tests/fixtures/README.md), so "store" may be true.
# - slow: an answer later than the client's timeout (a long GC pause or an overloaded node).
# - row_rejections: rows refused by the table, with the per-row result shape of a CHECK refusal (recorded:
#   bulk_check_violation_some, unnest_check_violation_some), on random rows so a test needs no table of its own.
# - drop_acknowledged: rows acknowledged but not kept, the loss CrateDB's docs describe for network partitions
#   (docs/appendices/resiliency.rst, "Loss of rows due to network partition"); it exists to test --verify.
# - the latency model: max_concurrency with a FIFO queue stands for the write thread pool and its queue
#   (docs/config/cluster.rst: thread_pool.<name>.queue_size, overload_protection.dml.*); overload_rows makes a big
#   insert trip the circuit breaker, as the request breaker does for a request that needs too much memory (the
#   fixtures README: a 256 MB heap node answered 500 to 100,000-row inserts).

FAULT_KINDS = (
    "http_401",
    "http_503",
    "http_429_empty",
    "circuit_breaker",
    "reset_before_response",
    "reset_mid_response",
    "slow",
    "row_rejections",
    "drop_acknowledged",
)
# Faults that end the request without storing anything, in the order they win when several fire at once.
TERMINAL_FAULTS = ("http_401", "http_503", "http_429_empty", "circuit_breaker")
FAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "http_401": {},
    "http_503": {"code": 5031},
    "http_429_empty": {},
    "circuit_breaker": {},
    "reset_before_response": {"store": True},
    "reset_mid_response": {"pause_ms": 50.0},
    "slow": {"seconds": 1.0},
    "row_rejections": {"fraction": 0.1},
    "drop_acknowledged": {"keep": 0.5},
}
# Messages as 6.4.3 builds them: ClusterBlockException.buildMessage with NoMasterBlockService.NO_MASTER_BLOCK_* and
# GatewayService.STATE_NOT_RECOVERED_BLOCK; NoNodeAvailableException from TransportReplicationAction;
# NoShardAvailableActionException(shardId) has no message; ProcessClusterEventTimeoutException's own text.
_503_MESSAGES = {
    5031: "ClusterBlockException[blocked by: [MASTER_NOT_DISCOVERED/2/no master];]",
    5032: "NoNodeAvailableException[unknown node [double]]",
    5033: "NoShardAvailableActionException[null]",
    5034: "ProcessClusterEventTimeoutException[failed to process cluster event (put-mapping) within 30s]",
    5035: "ClusterBlockException[blocked by: [STATE_NOT_RECOVERED/1/state not recovered / initialized];]",
}
OVERLOAD_RESPONSES = ("circuit_breaker", "429_empty")


@dataclass
class FaultSpec:
    """When a fault fires (probability ``rate`` or every ``every``-th eligible request, at most ``times`` times) and
    its kind-specific options. ``scope`` is ``insert`` (default: INSERT requests only) or ``sql`` (every /_sql)."""

    kind: str
    rate: float | None = None
    every: int | None = None
    times: int | None = None
    scope: str = "insert"
    options: dict[str, Any] = field(default_factory=dict)
    seen: int = 0
    fired: int = 0

    @classmethod
    def from_dict(cls, kind: str, data: dict[str, Any]) -> FaultSpec:
        if kind not in FAULT_OPTIONS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        data = dict(data)
        spec = cls(kind)
        if "rate" in data:
            spec.rate = float(data.pop("rate"))
            if not 0.0 <= spec.rate <= 1.0:
                raise ValueError(f"{kind}: rate must be within 0..1")
        if "every" in data:
            spec.every = int(data.pop("every"))
            if spec.every < 1:
                raise ValueError(f"{kind}: every must be >= 1")
        if spec.rate is None and spec.every is None:
            spec.rate = 1.0
        if "times" in data:
            times = data.pop("times")
            spec.times = None if times is None else int(times)
        spec.scope = str(data.pop("scope", "insert"))
        if spec.scope not in ("insert", "sql"):
            raise ValueError(f"{kind}: scope must be 'insert' or 'sql'")
        defaults = FAULT_OPTIONS[kind]
        unknown = set(data) - set(defaults)
        if unknown:
            raise ValueError(f"{kind}: unknown option(s) {sorted(unknown)}; known: {sorted(defaults)}")
        spec.options = {**defaults, **data}
        if kind == "http_503" and int(spec.options["code"]) not in _503_MESSAGES:
            raise ValueError(f"http_503: code must be one of {sorted(_503_MESSAGES)}")
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "every": self.every,
            "times": self.times,
            "scope": self.scope,
            **self.options,
            "fired": self.fired,
        }

    def triggers(self, rng: random.Random) -> bool:
        self.seen += 1
        if self.times is not None and self.fired >= self.times:
            return False
        if self.every is not None:
            return self.seen % self.every == 0
        return self.rate is not None and (self.rate >= 1.0 or rng.random() < self.rate)


def parse_fault_arg(text: str) -> tuple[str, dict[str, Any]]:
    """``kind[:key=value,...]`` (the --fault flag) -> (kind, options)."""
    kind, _, rest = text.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--fault {text}: expected key=value, got {item!r}")
        options[key.strip()] = _cli_value(value.strip())
    return kind.strip(), options


def _cli_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass
class DoubleConfig:
    """Runtime settings, changed by CLI flags at start and by ``POST /_double/config`` later."""

    overhead_ms: float = 0.0  # per /_sql request
    per_row_us: float = 0.0  # per inserted row
    max_concurrency: int = 0  # /_sql requests processed at once, 0 = unlimited; the rest wait in a FIFO queue
    overload_rows: int = 0  # an INSERT with more rows than this fails as overload, 0 = never
    overload_response: str = "circuit_breaker"  # or "429_empty" (bare 429, connection closed)
    verify_every: int = 100  # count-only: fully parse every Nth insert request to check the byte count, 0 = never
    faults: dict[str, FaultSpec] = field(default_factory=dict)

    SETTINGS = ("overhead_ms", "per_row_us", "max_concurrency", "overload_rows", "overload_response", "verify_every")

    def update(self, data: dict[str, Any]) -> None:
        """Apply a partial update; unknown keys or bad values raise ValueError and change nothing."""
        unknown = set(data) - set(self.SETTINGS) - {"faults", "clear_faults"}
        if unknown:
            known = [*self.SETTINGS, "faults", "clear_faults"]
            raise ValueError(f"unknown setting(s) {sorted(unknown)}; known: {known}")
        values = {}
        for key in ("overhead_ms", "per_row_us"):
            if key in data:
                values[key] = float(data[key])
                if values[key] < 0:
                    raise ValueError(f"{key} must be >= 0")
        for key in ("max_concurrency", "overload_rows", "verify_every"):
            if key in data:
                values[key] = int(data[key])
                if values[key] < 0:
                    raise ValueError(f"{key} must be >= 0")
        if "overload_response" in data:
            values["overload_response"] = str(data["overload_response"])
            if values["overload_response"] not in OVERLOAD_RESPONSES:
                raise ValueError(f"overload_response must be one of {OVERLOAD_RESPONSES}")
        faults = {} if data.get("clear_faults") else dict(self.faults)
        for kind, spec in (data.get("faults") or {}).items():
            if spec is None or spec is False:
                faults.pop(kind, None)
            else:
                faults[kind] = FaultSpec.from_dict(kind, {} if spec is True else spec)
        for key, value in values.items():
            setattr(self, key, value)
        self.faults = faults

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {key: getattr(self, key) for key in self.SETTINGS}
        out["faults"] = {kind: spec.to_dict() for kind, spec in self.faults.items()}
        return out


class Stats:
    """Counters served by ``GET /_double/stats``."""

    COUNTERS = (
        "insert_requests",
        "rows_stored",
        "rows_rejected",
        "rows_dropped",
        "rows_acknowledged",
        "overloads",
        "auth_failures",
        "count_checks",
        "count_mismatches",
        "count_fallbacks",
        "max_queued",
    )

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        for name in self.COUNTERS:
            setattr(self, name, 0)
        self.faults: dict[str, int] = {}
        self.status: dict[str, int] = {}
        self.rows_counted: dict[str, int] = {}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in self.COUNTERS}
        out.update(
            faults=dict(self.faults),
            status=dict(self.status),
            rows_counted=dict(self.rows_counted),
            rows_counted_total=sum(self.rows_counted.values()),
        )
        return out


class ConcurrencyGate:
    """A FIFO semaphore whose limit can change at runtime (0 = unlimited)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def _room(self) -> bool:
        return self.limit <= 0 or self.active < self.limit

    async def acquire(self) -> None:
        if self._room() and not self._waiters:
            self.active += 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # the releaser counted us in already
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()
            else:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.active -= 1
        self._wake()

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._room():
            fut = self._waiters.popleft()
            if not fut.done():
                self.active += 1
                fut.set_result(None)


# --------------------------------------------------------------------------------------------------------------------
# The server


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str | None = JSON_CT
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False
    action: str | None = None  # "reset_before" or "reset_mid": abort the connection instead of answering normally
    delay: float = 0.0  # seconds to wait before answering (after the concurrency slot is released)
    pause: float = 0.0  # reset_mid: seconds between the partial response and the reset


@dataclass
class _SqlRequest:
    """A decoded /_sql body. In count-only mode the args array may still be raw bytes (``raw_key``/``raw_array``)."""

    stmt: str
    args: list[Any] | None = None
    bulk_args: list[Any] | None = None
    raw_key: str | None = None
    raw_array: bytes | None = None

    @property
    def bulk(self) -> bool:
        if self.raw_key is not None:
            return self.raw_key == "bulk_args"
        # SqlHttpHandler.handleSQLRequest: any "args" (even empty) or no "bulk_args" runs one statement
        # (recorded: args_and_bulk_args).
        return self.args is None and self.bulk_args is not None


_REQUEST_FIELDS = ("stmt", "args", "bulk_args")


def _decode_body(body: bytes) -> _SqlRequest:
    """The /_sql body as io.crate.session.parser.SQLRequestParser reads it, with its errors."""
    if not body:
        raise _parse_error("Missing request body")
    try:
        data = _loads(body)
    except ValueError:
        data = None
    stmt = data.get("stmt") if isinstance(data, dict) else None
    args = data.get("args") if isinstance(data, dict) else None
    bulk_args = data.get("bulk_args") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or any(key not in _REQUEST_FIELDS for key in data)
        or not isinstance(stmt, str | None)
        or not isinstance(args, list | None)
        or not isinstance(bulk_args, list | None)
        or (bulk_args is not None and not all(isinstance(row, list) for row in bulk_args))
    ):
        # Recorded: not_json. CrateDB repeats the whole body in the message.
        raise _parse_error(
            f"Can't parse [{body.decode('utf-8', 'replace')}]. "
            "Expecting payload with `stmt` string and `args` or `bulk_args` arrays"
        )
    if stmt is None:
        # A 500 although it is the client's fault (recorded: no_stmt).
        raise CrateError(500, 5000, "SQLParseSourceException[Field [stmt] is missing]")
    if args and bulk_args:
        raise _parse_error("request body contains args and bulk_args. It's forbidden to provide both")
    return _SqlRequest(stmt, args, bulk_args)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """gzip bodies, as the crate client sends them (it compresses bodies over 8 KiB by default)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise _not_in_double(f"the Content-Encoding {encoding}")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        out = b""
    if len(out) > limit:
        raise _BodyTooLarge
    if not inflater.eof:
        raise _parse_error("the gzip request body is not complete")
    return out


class _BodyTooLarge(Exception):
    pass


class _BadRequest(Exception):
    pass


def _flag(params: dict[str, list[str]], name: str) -> bool:
    # SqlHttpHandler.paramContainFlag: "?types" or "?types=true"
    values = params.get(name)
    return values is not None and values in ([""], ["true"])


def _byte_size(n: float) -> str:
    """A byte count as ByteSizeValue.toString writes it: the largest unit, one decimal cut off (not rounded),
    dropped when it is 0 (Strings.format1Decimals)."""
    for unit, size in (("pb", 2**50), ("tb", 2**40), ("gb", 2**30), ("mb", 2**20), ("kb", 2**10)):
        if n >= size:
            value, suffix = n / size, unit
            break
    else:
        value, suffix = float(n), "b"
    whole, _, fraction = repr(float(value)).partition(".")
    return f"{whole}{suffix}" if fraction[:1] in ("", "0") else f"{whole}.{fraction[0]}{suffix}"


def _value_type(value: Any) -> CrateType:
    """The type CrateDB gives a literal or parameter value in a select list."""
    if value is None:
        return UNDEFINED
    if isinstance(value, bool):
        return TYPES["boolean"]
    if isinstance(value, int):
        return TYPES["integer"] if -(2**31) <= value < 2**31 else TYPES["bigint"]
    if isinstance(value, float):
        return TYPES["double precision"]
    if isinstance(value, str):
        return TYPES["text"]
    raise _not_in_double("arrays and objects in a select list")


def _output(value: Any, ctype: CrateType) -> Any:
    if value is None:
        return None
    if ctype.is_bool:
        return bool(value)
    if ctype.is_array:
        return json.loads(value)
    return value


_CHECK_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
}


class CrateDouble:
    """One fake CrateDB node: HTTP server, SQL over SQLite, latency model, faults, counters. All state lives here."""

    def __init__(
        self,
        db_path: str | None,
        config: DoubleConfig | None = None,
        *,
        users: dict[str, str] | None = None,
        count_only: bool = False,
        seed: int | None = None,
        node_name: str | None = None,
        cluster_name: str = "crate",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ):
        self.store = Store(db_path)
        self.config = config or DoubleConfig()
        self.users = dict(users or {})
        self.count_only = count_only
        self.rng = random.Random(seed)
        self.node_name = node_name
        self.cluster_name = cluster_name
        self.max_body_bytes = max_body_bytes
        self.stats = Stats()
        self.gate = ConcurrencyGate(self.config.max_concurrency)
        self.port: int | None = None
        self._server: asyncio.base_events.Server | None = None
        self._statements: dict[str, Statement | CrateError] = {}
        self._count_only_inserts = 0

    # -- lifecycle
    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(
            self._connection, HOST, port, limit=STREAM_LIMIT, reuse_address=True, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def serve_until(self, stop: asyncio.Event) -> None:
        assert self._server is not None
        async with self._server:
            await stop.wait()
        self.store.close()

    # -- HTTP
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass  # the client went away; CrateDB does not care either
        except Exception:
            LOG.exception("unexpected error while serving a connection")
        finally:
            if not writer.transport.is_closing():
                writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection must be closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        except asyncio.LimitOverrunError:
            await self._write(writer, _Response(431, b"request head too large", TEXT_CT, close=True), False, False)
            return False
        try:
            method, target, http10, headers = self._parse_head(head)
            conn_header = headers.get("connection", "").lower()
            keep_alive = "close" not in conn_header and (not http10 or "keep-alive" in conn_header)
            body = await self._read_body(reader, headers)
        except _BodyTooLarge:
            # Netty's HttpObjectAggregator: 413 with no body, then the connection is closed.
            await self._write(writer, _Response(413, b"", None, close=True), False, False)
            await self._discard_input(reader)
            return False
        except _BadRequest as exc:
            await self._write(writer, _Response(400, str(exc).encode(), TEXT_CT, close=True), False, False)
            return False
        response = await self._dispatch(method, target, headers, body)
        return await self._write(writer, response, keep_alive, http10)

    @staticmethod
    async def _discard_input(reader: asyncio.StreamReader) -> None:
        """Read what the client still sends, briefly: closing with unread bytes would make the kernel send an RST
        that can destroy the response before the client reads it."""

        async def drain() -> None:
            while await reader.read(STREAM_LIMIT):
                pass

        with suppress(asyncio.TimeoutError, ConnectionError, OSError):
            await asyncio.wait_for(drain(), 2.0)

    @staticmethod
    def _parse_head(head: bytes) -> tuple[str, str, bool, dict[str, str]]:
        lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(f"bad request line {lines[0]!r}")
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return parts[0].upper(), parts[1], parts[2] == "HTTP/1.0", headers

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise _BadRequest("the CrateDB test double does not read chunked request bodies")
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            raise _BadRequest("bad Content-Length") from None
        if length > self.max_body_bytes:
            raise _BodyTooLarge
        if length <= 0:
            return b""
        return await reader.readexactly(length)

    async def _write(self, writer: asyncio.StreamWriter, resp: _Response, keep_alive: bool, http10: bool) -> bool:
        if resp.delay > 0:
            await asyncio.sleep(resp.delay)
        if resp.action == "reset_before":
            self._reset(writer)
            return False
        self.stats.status[str(resp.status)] = self.stats.status.get(str(resp.status), 0) + 1
        close = resp.close or not keep_alive
        lines = [f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Unknown')}"]
        if resp.content_type:
            lines.append(f"content-type: {resp.content_type}")
        lines.append(f"content-length: {len(resp.body)}")
        lines.extend(f"{name}: {value}" for name, value in resp.headers)
        if close:
            lines.append("connection: close")
        elif http10:
            lines.append("connection: keep-alive")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if resp.action == "reset_mid":
            writer.write(head + resp.body[: len(resp.body) // 2])
            await writer.drain()
            # Give the partial response time to reach the client before the reset discards what is still queued.
            await asyncio.sleep(resp.pause)
            self._reset(writer)
            return False
        if len(resp.body) > 65536:
            writer.writelines((head, resp.body))  # avoids copying a large body just to prepend the head
        else:
            writer.write(head + resp.body)
        await writer.drain()
        if close:
            if writer.can_write_eof():
                writer.write_eof()  # half-close: the client sees the end while unread input can still be drained
            return False
        return True

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        """Close with a TCP RST instead of a FIN, as a node that dies mid-request does."""
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    # -- routing
    async def _dispatch(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Response:
        path, _, query = target.partition("?")
        if path.startswith("/_double/"):
            return self._control(method, path, body)
        if self.users:
            denied = self._authenticate(headers)
            if denied is not None:
                return denied
        if path == "/":
            if method != "GET":
                return _Response(405, b"method not allowed", TEXT_CT)
            return _Response(200, self._node_info(), NODE_INFO_CT)
        if path.startswith("/_sql"):  # SqlHttpHandler: request.uri().startsWith("/_sql")
            if method != "POST":
                return _Response(405, b"method not allowed", TEXT_CT)
            return await self._sql(query, headers, body)
        return _Response(404, f"No handler found for uri [{path}] and method [{method}]".encode(), TEXT_CT)

    def _node_info(self) -> bytes:
        """MainAndStaticFileHandler.writeJSON: pretty-printed (Jackson's `"key" : value`), a newline at the end."""
        info = {
            "ok": True,
            "status": 200,
            "name": self.node_name or f"double-{self.port}",
            "cluster_name": self.cluster_name,
            "version": CRATE_VERSION,
        }
        return (json.dumps(info, indent=2, separators=(",", " : ")) + "\n").encode()

    @staticmethod
    def _user_from(headers: dict[str, str]) -> tuple[str, str | None]:
        auth = headers.get("authorization", "")
        if auth[:6].lower() != "basic ":
            return "crate", None  # CrateDB's default user when no credentials are sent
        try:
            decoded = base64.b64decode(auth[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return "crate", None
        user, _, password = decoded.partition(":")
        return user or "crate", password or None

    def _unauthorized(self, headers: dict[str, str]) -> _Response:
        """HttpAuthUpstreamHandler.sendUnauthorized: the message plus a newline as plain bytes without a
        content type, the Basic realm header, then the connection is closed (recorded: wrong_password)."""
        user, password = self._user_from(headers)
        method = "password" if password is not None or user in self.users else "trust"
        return _Response(
            401,
            f'{method} authentication failed for user "{user}"\n'.encode(),
            None,
            headers=(("www-authenticate", 'Basic realm="CrateDB Authenticator"'),),
            close=True,
        )

    def _authenticate(self, headers: dict[str, str]) -> _Response | None:
        """With users configured, every request needs one of them with its password (no trusted user)."""
        user, password = self._user_from(headers)
        if password is not None and self.users.get(user) == password:
            return None
        self.stats.auth_failures += 1
        return self._unauthorized(headers)

    # -- control endpoint
    def _control(self, method: str, path: str, body: bytes) -> _Response:
        try:
            if path == "/_double/stats" and method == "GET":
                stats = self.stats.to_dict()
                stats.update(in_flight=self.gate.active, queued=self.gate.queued, count_only=self.count_only)
                return _Response(200, _dumps(stats))
            if path == "/_double/stats/reset" and method == "POST":
                self.stats.reset()
                return _Response(200, b"{}")
            if path == "/_double/config" and method == "POST":
                data = json.loads(body or b"{}")
                if not isinstance(data, dict):
                    raise ValueError("the config body must be a JSON object")
                self.config.update(data)
                self.gate.set_limit(self.config.max_concurrency)
                return _Response(200, _dumps({**self.config.to_dict(), "count_only": self.count_only}))
        except (ValueError, TypeError) as exc:
            return _Response(400, _dumps({"error": str(exc)}))
        return _Response(404, _dumps({"error": f"no control endpoint {method} {path}"}))

    # -- /_sql
    async def _sql(self, query: str, headers: dict[str, str], body: bytes) -> _Response:
        started = time.perf_counter()
        params = urllib.parse.parse_qs(query, keep_blank_values=True) if query else {}
        await self._acquire()
        try:
            try:
                body = _decompress(body, headers.get("content-encoding", ""), self.max_body_bytes)
                return await self._execute(body, headers, _flag(params, "types"), started)
            except _BodyTooLarge:
                return _Response(413, b"", None, close=True)
            except CrateError as exc:
                return exc.response()
        finally:
            self.gate.release()

    async def _acquire(self) -> None:
        if self.gate.limit > 0 and (self.gate.active >= self.gate.limit or self.gate.queued):
            self.stats.max_queued = max(self.stats.max_queued, self.gate.queued + 1)
        await self.gate.acquire()

    def _statement(self, stmt: str) -> Statement:
        if len(stmt) > STATEMENT_MAX_LENGTH:  # Session.parse, before parsing (recorded: long_statement_300k)
            raise _parse_error(
                f"Statement exceeds `statement_max_length` ({STATEMENT_MAX_LENGTH} allowed, {len(stmt)} provided). "
                "Try replacing inline values with parameter placeholders (`?`)"
            )
        cached = self._statements.get(stmt)
        if cached is None:
            try:
                cached = parse_statement(stmt)
            except CrateError as exc:
                cached = exc
            if len(self._statements) > 1000:
                self._statements.clear()  # a crude bound; the project sends a handful of distinct statements
            self._statements[stmt] = cached
        if isinstance(cached, CrateError):
            raise cached
        return cached

    async def _execute(self, body: bytes, headers: dict[str, str], types: bool, started: float) -> _Response:
        self.store.sync()
        request = None
        if self.count_only:
            scanned = scan_request(body)
            if scanned is not None:
                request = _SqlRequest(scanned[0], raw_key=scanned[1], raw_array=scanned[2])
        if request is None:
            request = _decode_body(body)
        query = double_queries.handles(request.stmt)  # the query workload's SELECTs: tests/double_queries.py
        node = None if query else self._statement(request.stmt)
        schema = "doc"
        if isinstance(node, Insert):
            return await self._insert(node, request, body, schema, headers, types, started)
        if request.raw_key is not None:
            request = _decode_body(body)  # statements other than INSERT are never hot; parse them properly
        if request.bulk:
            if not request.bulk_args:
                # executeBulkRequest: with no bulk args nothing is executed or described.
                return _Response(200, b'{"cols":[],"duration":' + _dumps(_elapsed_ms(started)) + b',"results":[]}')
            if isinstance(node, Select):
                # executeBulkRequest (recorded: select_in_bulk)
                raise _unsupported("Bulk operations for statements that return result sets is not supported")
            raise _not_in_double("bulk operations for statements other than INSERT")
        fault = self._draw_faults(headers)
        await self._sleep(self.config.overhead_ms / 1000)
        if fault is not None:
            return fault
        args = request.args or []
        if query:
            out = double_queries.answer(self.store, request.stmt, args, schema, types, CrateError)
            return _Response(200, _dumps({**out, "duration": _elapsed_ms(started)}))
        if isinstance(node, CreateTable):
            tdef = TableDef.from_statement(node, node.table[0] or schema)
            return self._rowcount_response(self.store.create_table(tdef, node.if_not_exists), types, started)
        if isinstance(node, DropTable):
            rowcount = self.store.drop_table(node.table[0] or schema, node.table[1], node.if_exists)
            return self._rowcount_response(rowcount, types, started)
        if isinstance(node, RefreshTable):
            tables = [self.store.table(s or schema, n) for s, n in node.tables]
            refreshed = sum(1 if self.count_only else self.store.refresh(t) for t in tables)
            return self._rowcount_response(refreshed, types, started)
        return self._select(node, args, schema, types, started)

    @staticmethod
    def _rowcount_response(rowcount: int, types: bool, started: float) -> _Response:
        out: dict[str, Any] = {"cols": []}
        if types:
            out["col_types"] = []
        out.update(rows=[[]], rowcount=rowcount, duration=_elapsed_ms(started))
        return _Response(200, _dumps(out))

    # -- faults and latency
    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)

    def _draw_faults(self, headers: dict[str, str]) -> _Response | None:
        """For statements other than INSERT: only faults with scope "sql" apply, and only the terminal ones."""
        fired = self._fired(is_insert=False)
        for kind in TERMINAL_FAULTS:
            if kind in fired:
                return self._apply_terminal(fired[kind], headers)
        return None

    def _fired(self, is_insert: bool) -> dict[str, FaultSpec]:
        fired = {}
        for kind, spec in self.config.faults.items():
            if (is_insert or spec.scope == "sql") and spec.triggers(self.rng):
                fired[kind] = spec
        return fired

    def _count_fault(self, spec: FaultSpec) -> None:
        spec.fired += 1
        self.stats.faults[spec.kind] = self.stats.faults.get(spec.kind, 0) + 1

    def _apply_terminal(self, spec: FaultSpec, headers: dict[str, str]) -> _Response:
        self._count_fault(spec)
        if spec.kind == "http_401":
            return self._unauthorized(headers)
        if spec.kind == "http_503":
            code = int(spec.options["code"])
            return _Response(503, _dumps({"error": {"message": _503_MESSAGES[code], "code": code}}))
        if spec.kind == "http_429_empty":
            return _Response(429, b"", None, close=True)
        return self._circuit_breaker(0)

    @staticmethod
    def _circuit_breaker(rows: int) -> _Response:
        """HierarchyCircuitBreakerService.checkParentLimit -> circuitBreak("parent: " + label, ...): the
        CircuitBreakingException(bytesAdded, bytesUsed, limit, component) message, for TransportShardAction's
        "upsert request" label; the parent limit is 95 % of a 1 GiB heap, the request's size ~512 bytes a row."""
        limit = int(0.95 * 2**30)
        added = 1024 + rows * 512
        message = (
            f"CircuitBreakingException[Allocating {_byte_size(added)} for 'parent: upsert request' failed, breaker "
            f"would use {_byte_size(limit + added)} in total. Limit is {_byte_size(limit)}. Either increase memory "
            "and limit, change the query or reduce concurrent query load]"
        )
        return _Response(500, _dumps({"error": {"message": message, "code": 5000}}))

    def _overload(self, rows: int) -> _Response:
        self.stats.overloads += 1
        if self.config.overload_response == "429_empty":
            return _Response(429, b"", None, close=True)
        return self._circuit_breaker(rows)

    def _pick(self, n: int, fraction: float) -> list[int]:
        """About ``fraction`` of ``range(n)``, chosen at random; the count is rounded randomly so its mean is exact."""
        exact = n * min(max(fraction, 0.0), 1.0)
        k = int(exact) + (1 if self.rng.random() < exact - int(exact) else 0)
        return sorted(self.rng.sample(range(n), min(k, n)))

    # -- INSERT
    def _insert_columns(self, table: TableDef, node: Insert) -> list[ColumnDef]:
        if node.columns is None:
            cols = [c for c in table.columns if c.generated is None]
        else:
            cols = [table.column(name) for name in node.columns]  # recorded: unknown_column
        if any(c.generated is not None for c in cols):
            raise _not_in_double("values for generated columns")
        width = len(node.values[0]) if node.values is not None else len(node.unnest or [])
        if node.values is not None and any(len(row) != width for row in node.values):
            raise _parse_error("VALUES lists must all be the same length")
        if width != len(cols):
            raise _parse_error(
                f"Number of target columns ({len(cols)}) of insert statement doesn't match "
                f"number of source columns ({width})"
            )
        return cols

    async def _insert(
        self,
        node: Insert,
        request: _SqlRequest,
        body: bytes,
        schema: str,
        headers: dict[str, str],
        types: bool,
        started: float,
    ) -> _Response:
        table = self.store.table(node.table[0] or schema, node.table[1])
        cols = self._insert_columns(table, node)
        bulk = request.bulk
        self.stats.insert_requests += 1
        units: list[list[tuple]] | None = None
        if self.count_only:
            sizes = self._count_units(node, request, body)
        else:
            if request.raw_key is not None:
                request = _decode_body(body)
            units = self._converted_units(table, node, cols, request)
            sizes = [len(u) for u in units]
        n_rows = sum(sizes)

        fired = self._fired(is_insert=True)
        terminal = next((kind for kind in TERMINAL_FAULTS if kind in fired), None)
        reset_before = fired.get("reset_before_response")
        overloaded = 0 < self.config.overload_rows < n_rows
        if terminal or overloaded or (reset_before and not reset_before.options["store"]):
            await self._sleep(self.config.overhead_ms / 1000)
            if terminal:
                return self._apply_terminal(fired[terminal], headers)
            if reset_before and not reset_before.options["store"]:
                self._count_fault(reset_before)
                return _Response(200, action="reset_before")
            return self._overload(n_rows)
        await self._sleep(self.config.overhead_ms / 1000 + n_rows * self.config.per_row_us / 1e6)

        rejected: list[int] = []
        if "row_rejections" in fired and n_rows:
            self._count_fault(fired["row_rejections"])
            rejected = self._pick(n_rows, float(fired["row_rejections"].options["fraction"]))
            if rejected and not bulk and node.values is not None:
                raise _ROW_REJECTED  # a plain INSERT ... VALUES fails as a whole
        drop = fired.get("drop_acknowledged")
        keep = float(drop.options["keep"]) if drop else 1.0
        if drop:
            self._count_fault(drop)
        if units is None:
            results = self._count_rows(table, sizes, rejected, keep)
        else:
            results = self._store_rows(table, node, cols, units, bulk, rejected, keep)
        if results is None and bulk and sizes.count(1) == len(sizes):
            response = self._all_ok_response(len(sizes), started)
        else:
            response = self._insert_response(results or [[n, 0, None] for n in sizes], bulk, types, started)

        if reset_before:
            self._count_fault(reset_before)
            response.action = "reset_before"
        elif "reset_mid_response" in fired:
            spec = fired["reset_mid_response"]
            self._count_fault(spec)
            response.action = "reset_mid"
            response.pause = float(spec.options["pause_ms"]) / 1000
        if "slow" in fired:
            self._count_fault(fired["slow"])
            response.delay = float(fired["slow"].options["seconds"])
        return response

    @staticmethod
    def _converted_units(
        table: TableDef, node: Insert, cols: list[ColumnDef], request: _SqlRequest
    ) -> list[list[tuple]]:
        """The rows to store per result unit (one per bulk arg, or one for a single statement), converted to their
        column types, with the generated columns appended.

        A value that cannot be cast, in any row, fails the whole request and nothing is stored (recorded:
        bulk_type_error_one_row, unnest_type_error); so does a missing parameter value (bulk_wrong_arity)."""
        arg_sets = request.bulk_args if request.bulk else [request.args or []]
        assert arg_sets is not None
        index = {c.name: i for i, c in enumerate(cols)}
        generated = [(g.generated[0], index.get(g.generated[1])) for g in table.columns if g.generated is not None]

        def stored(values: list[Any]) -> tuple:
            extra = [date_trunc(unit, None if source is None else values[source]) for unit, source in generated]
            return (*values, *extra)

        def cast(col: ColumnDef, value: Any) -> Any:
            if value is None:
                return None
            try:
                return col.type.convert(value)
            except _CastError:
                raise _cast_error(value, col.type.name) from None

        def unnest_column(col: ColumnDef, value: Any) -> list[Any]:
            if value is None:
                return []
            if not isinstance(value, list):
                raise _cast_error(value, f"{col.type.name}_array")
            try:
                return [None if v is None else col.type.convert(v) for v in value]
            except _CastError:
                # The whole array is cast at once, and named in the message (recorded: unnest_type_error).
                raise _cast_error(value, f"{col.type.name}_array") from None

        units = []
        for args in arg_sets:
            _check_arity(node.n_params, args)
            if node.values is not None:
                units.append(
                    [
                        stored([cast(c, _resolve(e, args)) for c, e in zip(cols, row, strict=True)])
                        for row in node.values
                    ]
                )
                continue
            arrays = [unnest_column(c, _resolve(e, args)) for c, e in zip(cols, node.unnest or [], strict=True)]
            # Shorter arrays are padded with NULL (recorded: unnest_ragged_arrays).
            units.append([stored(list(row)) for row in itertools.zip_longest(*arrays)])
        return units

    def _count_units(self, node: Insert, request: _SqlRequest, body: bytes) -> list[int]:
        """Rows per result unit in count-only mode, from the raw bytes where possible."""
        if node.values is not None and not request.bulk:
            return [len(node.values)]
        sizes = None
        if request.raw_array is not None:
            shape = scan_matrix(request.raw_array)
            if shape is not None:
                outer, inner = shape
                if request.bulk and node.values is not None and inner >= node.n_params:
                    sizes = [len(node.values)] * outer
                elif not request.bulk and node.unnest is not None and outer >= node.n_params:
                    sizes = [inner]
        if sizes is None:
            self.stats.count_fallbacks += 1
            return self._parsed_sizes(node, _decode_body(body))
        self._count_only_inserts += 1
        every = self.config.verify_every
        if every and self._count_only_inserts % every == 0:
            self.stats.count_checks += 1
            full = self._parsed_sizes(node, _decode_body(body))
            if full != sizes:
                self.stats.count_mismatches += 1
                LOG.warning("count-only byte count %d != full parse %d for %.80r", sum(sizes), sum(full), request.stmt)
                return full
        return sizes

    @staticmethod
    def _parsed_sizes(node: Insert, request: _SqlRequest) -> list[int]:
        """Rows per result unit from a parsed body (count-only: the values are not checked)."""
        arg_sets = request.bulk_args if request.bulk else [request.args or []]
        assert arg_sets is not None
        sizes = []
        for args in arg_sets:
            _check_arity(node.n_params, args)
            if node.values is not None:
                sizes.append(len(node.values))
            else:
                arrays = [_resolve(e, args) for e in node.unnest or []]
                sizes.append(max((len(a) for a in arrays if isinstance(a, list)), default=0))
        return sizes

    def _count_rows(
        self, table: TableDef, sizes: list[int], rejected: list[int], keep: float
    ) -> list[list[Any]] | None:
        """Count-only: nothing is stored. Per unit [acknowledged rows, failed rows, first error], or None when no row
        failed (the hot path: no per-unit lists for a 10k-row bulk request)."""
        results = None
        if rejected:
            results = [[n, 0, None] for n in sizes]
            if sizes.count(1) == len(sizes):
                owners = rejected
            else:
                bounds = list(itertools.accumulate(sizes))
                owners = [bisect.bisect_right(bounds, pos) for pos in rejected]
            for owner in owners:
                results[owner][0] -= 1
                results[owner][1] += 1
                results[owner][2] = _ROW_REJECTED
        accepted = sum(sizes) - len(rejected)
        dropped = len(self._pick(accepted, 1.0 - keep)) if keep < 1.0 else 0
        counted = self.stats.rows_counted
        counted[table.fqn] = counted.get(table.fqn, 0) + accepted - dropped
        self.stats.rows_rejected += len(rejected)
        self.stats.rows_dropped += dropped
        self.stats.rows_acknowledged += accepted
        return results

    @staticmethod
    def _check_failure(cols: list[ColumnDef], row: tuple) -> CrateError | None:
        """The first CHECK constraint the row fails, as Indexer.TableCheckConstraint reports it; NULL passes."""
        for i, col in enumerate(cols):
            check = col.check
            if check is None or row[i] is None or _CHECK_OPS[check.op](row[i], check.value):
                continue
            shown = [bool(v) if c.type.is_bool and v is not None else v for c, v in zip(cols, row, strict=False)]
            return _parse_error(f"Failed CONSTRAINT {check.name} CHECK ({check.text}) for values: {_java_text(shown)}")
        return None

    def _store_rows(
        self,
        table: TableDef,
        node: Insert,
        cols: list[ColumnDef],
        units: list[list[tuple]],
        bulk: bool,
        rejected: list[int],
        keep: float,
    ) -> list[list[Any]] | None:
        """Store what the table accepts; per unit [acknowledged rows, failed rows, first error], or None when every
        row went in. Rows a CHECK refuses fail on their own: a -2 result in a bulk, missing from an UNNEST's
        rowcount (recorded: bulk_check_violation_some, unnest_check_violation_some); a plain INSERT ... VALUES fails
        as a whole."""
        single_values = not bulk and node.values is not None
        checked = [c for c in cols if c.check is not None]
        results: list[list[Any]] = [[0, 0, None] for _ in units]
        rejected_set = set(rejected)
        good: list[tuple] = []
        owners: list[int] = []
        pos = 0
        for ui, unit in enumerate(units):
            for row in unit:
                error = _ROW_REJECTED if pos in rejected_set else None
                pos += 1
                if error is None and checked:
                    error = self._check_failure(cols, row)
                if error is None:
                    good.append(row)
                    owners.append(ui)
                    continue
                if single_values:
                    raise error
                results[ui][1] += 1
                results[ui][2] = results[ui][2] or error
        failed = sum(r[1] for r in results)
        dropped = set(self._pick(len(good), 1.0 - keep)) if keep < 1.0 else set()
        names = [c.name for c in cols] + [g.name for g in table.columns if g.generated is not None]
        self.store.insert(table, names, [row for i, row in enumerate(good) if i not in dropped])
        for owner in owners:
            results[owner][0] += 1  # acknowledged, also when dropped behind the client's back
        self.stats.rows_rejected += failed
        self.stats.rows_stored += len(good) - len(dropped)
        self.stats.rows_dropped += len(dropped)
        self.stats.rows_acknowledged += len(good)
        return None if not failed else results

    @staticmethod
    def _all_ok_response(n: int, started: float) -> _Response:
        """The hot bulk answer, built from bytes: for 10k rows it is 150 KB of identical entries."""
        entries = b",".join([b'{"rowcount":1}'] * n)
        return _Response(
            200, b'{"cols":[],"duration":' + _dumps(_elapsed_ms(started)) + b',"results":[' + entries + b"]}"
        )

    def _insert_response(self, results: list[list[Any]], bulk: bool, types: bool, started: float) -> _Response:
        if not bulk:
            return self._rowcount_response(sum(r[0] for r in results), types, started)
        out = []
        errors = 0
        for ok, failed, error in results:
            if failed and not ok:
                entry: dict[str, Any] = {"rowcount": -2}
                errors += 1
                if errors <= MAX_ROW_ERRORS:
                    entry["error"] = (error or _ROW_REJECTED).as_row_error()
                out.append(entry)
            else:
                out.append({"rowcount": ok})
        return _Response(200, _dumps({"cols": [], "duration": _elapsed_ms(started), "results": out}))

    # -- SELECT
    def _select(self, node: Select, args: list[Any], schema: str, types: bool, started: float) -> _Response:
        _check_arity(node.n_params, args)
        if self.count_only:
            rows: list[list[Any]] = [[self._counted(node, schema)]]
            labels, ctypes = ["count"], [TYPES["bigint"]]
        elif node.table is None and node.subquery is None:
            labels, ctypes, rows = self._values_only(node, args)
        else:
            sql, params, labels, ctypes = self._compile(node, args, schema)
            rows = [[_output(v, t) for v, t in zip(row, ctypes, strict=True)] for row in self.store.select(sql, params)]
        out: dict[str, Any] = {"cols": labels}
        if types:
            out["col_types"] = [t.type_id for t in ctypes]
        out.update(rows=rows, rowcount=len(rows), duration=_elapsed_ms(started))
        return _Response(200, _dumps(out))

    def _counted(self, node: Select, schema: str) -> int:
        table = self.store.table(node.table[0] or schema, node.table[1]) if node.table else None
        only_count = node.items is not None and [i.kind for i in node.items] == ["count"]
        if table is None or not only_count or node.where or node.group_by or node.having:
            raise _not_in_double("in count-only mode, SELECTs other than SELECT count(*) FROM <table>")
        return self.stats.rows_counted.get(table.fqn, 0)

    @staticmethod
    def _values_only(node: Select, args: list[Any]) -> tuple[list[str], list[CrateType], list[list[Any]]]:
        """SELECT <values> without FROM: one row (recorded: args_and_bulk_args)."""
        items = node.items or []
        if not items or any(i.kind != "value" for i in items) or node.where or node.group_by or node.having:
            raise _not_in_double("SELECT without FROM other than a list of values")
        values = [_resolve(i.expr, args) for i in items]  # type: ignore[arg-type]
        return [i.label for i in items], [_value_type(v) for v in values], [values]

    def _compile(self, node: Select, args: list[Any], schema: str) -> tuple[str, list[Any], list[str], list[CrateType]]:
        """The SQLite query for a SELECT over a table or a subquery: (sql, params, output labels, output types)."""
        if node.table is not None:
            tdef = self.store.table(node.table[0] or schema, node.table[1])
            source = {c.name: c.type for c in tdef.columns}
            from_sql, from_params = _q(tdef.storage), []
        elif node.subquery is not None:
            inner, alias = node.subquery
            if inner.table is None and inner.subquery is None:
                raise _not_in_double("subqueries without FROM")
            inner_sql, from_params, inner_labels, inner_types = self._compile(inner, args, schema)
            source = dict(zip(inner_labels, inner_types, strict=True))
            from_sql = f"({inner_sql}) AS {_q(alias)}"
        else:
            raise _not_in_double("SELECT without FROM here")

        def column(name: str) -> CrateType:
            ctype = source.get(name)
            if ctype is None:
                raise _column_unknown(name)
            return ctype

        items = node.items or [SelectItem("column", column=name) for name in source]
        exprs, labels, ctypes, item_params = [], [], [], []
        for item in items:
            if item.kind == "count":
                exprs.append("count(*)")
                ctypes.append(TYPES["bigint"])
            elif item.kind == "column":
                assert item.column is not None
                ctypes.append(column(item.column))
                exprs.append(_q(item.column))
            else:
                value = _resolve(item.expr, args)  # type: ignore[arg-type]
                ctypes.append(_value_type(value))
                exprs.append("?")
                item_params.append(value)
            labels.append(item.label)
        grouped = []
        for key in node.group_by:
            if isinstance(key, int):
                if not 1 <= key <= len(items) or items[key - 1].kind != "column":
                    raise _not_in_double("GROUP BY ordinals other than those of plain columns")
                key = items[key - 1].column  # type: ignore[assignment]
            column(key)  # type: ignore[arg-type]
            grouped.append(key)
        if grouped or node.having is not None or any(i.kind == "count" for i in items):
            for item in items:
                if item.kind == "column" and item.column not in grouped:
                    raise _parse_error(
                        f"'{item.column}' must appear in the GROUP BY clause or be used in an aggregation function"
                    )
        clauses, where_params = [], []
        for cond in node.where:
            ctype = column(cond.column)
            if ctype.is_array:
                raise _not_in_double("conditions on arrays")
            for expr in cond.values:
                value = _resolve(expr, args)
                try:
                    where_params.append(None if value is None else ctype.convert(value))
                except _CastError:
                    raise _cast_error(value, ctype.name) from None
            name = _q(cond.column)
            clauses.append(f"{name} BETWEEN ? AND ?" if cond.op == "between" else f"{name} {cond.op} ?")
        sql = (
            f"SELECT {', '.join(f'{e} AS {_q(label)}' for e, label in zip(exprs, labels, strict=True))} FROM {from_sql}"
        )
        params = [*item_params, *from_params, *where_params]
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        if grouped:
            sql += " GROUP BY " + ", ".join(_q(key) for key in grouped)  # type: ignore[arg-type]
        if node.having is not None:
            op, expr = node.having
            sql += f" HAVING count(*) {op} ?"
            params.append(_resolve(expr, args))
        if node.order_by:
            for name, _ in node.order_by:
                column(name)
            # CrateDB sorts NULL last ascending and first descending, as PostgreSQL does.
            sql += " ORDER BY " + ", ".join(
                f"{_q(name)} {'DESC NULLS FIRST' if desc else 'ASC NULLS LAST'}" for name, desc in node.order_by
            )
        if node.limit is not None:
            sql += " LIMIT ?"
            params.append(int(_resolve(node.limit, args)))
        return sql, params, labels, ctypes


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


# --------------------------------------------------------------------------------------------------------------------
# Command line


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="CrateDB HTTP test double (GET /, POST /_sql) backed by SQLite.")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1; 0 picks a free one")
    p.add_argument("--db", help="SQLite file (shared by processes that act as nodes of one cluster)")
    p.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD", help="turns Basic auth on")
    p.add_argument("--node-name")
    p.add_argument("--cluster-name", default="crate")
    p.add_argument("--overhead-ms", type=float, default=0.0, help="latency added to every /_sql request")
    p.add_argument("--per-row-us", type=float, default=0.0, help="latency added per inserted row")
    p.add_argument("--max-concurrency", type=int, default=0, help="/_sql requests processed at once (0: no limit)")
    p.add_argument("--overload-rows", type=int, default=0, help="INSERTs with more rows fail as overload (0: never)")
    p.add_argument("--overload-response", choices=OVERLOAD_RESPONSES, default="circuit_breaker")
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND[:key=value,...]",
        help=f"inject a fault; kinds: {', '.join(FAULT_KINDS)}; keys: rate, every, times, scope and per-kind options",
    )
    p.add_argument("--seed", type=int, help="seed for fault and rejection randomness")
    p.add_argument("--count-only", action="store_true", help="count inserted rows per table instead of storing them")
    p.add_argument("--verify-every", type=int, default=100, help="count-only: full-parse every Nth insert to check")
    p.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_BYTES / 2**20)
    p.add_argument("--log-level", default="WARNING")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    if not args.db and not args.count_only:
        print("--db is required unless --count-only is given", file=sys.stderr)
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
                "verify_every": args.verify_every,
                "faults": dict(parse_fault_arg(f) for f in args.fault),
            }
        )
        users = dict(u.split(":", 1) for u in args.user)
    except ValueError as exc:
        print(f"bad option: {exc}", file=sys.stderr)
        return 2
    double = CrateDouble(
        args.db,
        config,
        users=users,
        count_only=args.count_only,
        seed=args.seed,
        node_name=args.node_name,
        cluster_name=args.cluster_name,
        max_body_bytes=int(args.max_body_mb * 2**20),
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        port = await double.start(args.port)
        print(f"listening on http://{HOST}:{port}", flush=True)
        await double.serve_until(stop)

    asyncio.run(run())
    return 0


# --------------------------------------------------------------------------------------------------------------------
# Test helpers


class DoubleProcess:
    """Runs the double as a subprocess for a test.

    ``DoubleProcess(db_path, count_only=False, users={"u": "pw"}, faults={"http_503": {"every": 2}}, overhead_ms=5)``;
    other keyword options become CLI flags (``max_concurrency=4`` -> ``--max-concurrency 4``). Without ``db_path`` (and
    not count-only) a fresh temporary file is used. ``start()`` (or ``with``) waits for the listening line.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str] | None = None,
        *,
        port: int = 0,
        count_only: bool = False,
        users: dict[str, str] | None = None,
        faults: dict[str, dict[str, Any]] | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 15.0,
        **options: Any,
    ):
        if db_path is None and not count_only:
            db_path = os.path.join(tempfile.mkdtemp(prefix="cratedb_double_"), "double.sqlite")
        self.db_path = None if db_path is None else str(db_path)
        self.port = port
        self.count_only = count_only
        self.users = dict(users or {})
        self.faults = dict(faults or {})
        self.options = options
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        log_dir = os.path.dirname(self.db_path) if self.db_path else tempfile.mkdtemp(prefix="cratedb_double_")
        self.log_path = os.path.join(log_dir, f"double-{id(self):x}.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--port", str(self.port)]
        if self.db_path:
            cmd += ["--db", self.db_path]
        if self.count_only:
            cmd.append("--count-only")
        for name, password in self.users.items():
            cmd += ["--user", f"{name}:{password}"]
        for kind, spec in self.faults.items():
            opts = ",".join(f"{k}={v}" for k, v in (spec or {}).items())
            cmd += ["--fault", f"{kind}:{opts}" if opts else kind]
        for key, value in self.options.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                cmd.append(flag)
            elif value not in (None, False):
                cmd += [flag, str(value)]
        return cmd + self.extra_args

    def start(self) -> DoubleProcess:
        if self.proc is not None and self.proc.poll() is None:
            return self
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self._read_line(self.proc.stdout.fileno(), time.monotonic() + self.startup_timeout)
        self.proc.stdout.close()
        m = re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)", line.strip())
        if m is None:
            self.stop()
            raise RuntimeError(f"double did not start (got {line!r}); log:\n{self.log_text()[-3000:]}")
        self.port = int(m.group(1))
        return self

    def _read_line(self, fd: int, deadline: float) -> str:
        data = b""
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break  # the process exited
                data += chunk
        return data.decode(errors="replace")

    def stop(self) -> None:
        """Kill the process (SIGKILL: no goodbye, like a crashed node)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> DoubleProcess:
        """Kill, then start again on the same port with the same database file and options."""
        self.stop()
        return self.start()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def _control(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise ValueError(f"{method} {path} failed: {exc.code} {exc.read().decode(errors='replace')}") from None

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change settings at runtime. Fault kinds may be given directly: ``configure(http_503={"every": 2})``,
        ``configure(slow=None)`` removes one; other keys (``overhead_ms=5``, ``clear_faults=True``, ``faults={...}``)
        go as they are. Returns the new config."""
        payload: dict[str, Any] = {}
        faults = dict(settings.pop("faults", None) or {})
        for key, value in settings.items():
            if key in FAULT_OPTIONS:
                faults[key] = value
            else:
                payload[key] = value
        if faults:
            payload["faults"] = faults
        return self._control("POST", "/_double/config", payload)

    def stats(self) -> dict[str, Any]:
        return self._control("GET", "/_double/stats")

    def reset_stats(self) -> None:
        self._control("POST", "/_double/stats/reset", {})

    def __enter__(self) -> DoubleProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _open_db(db_path: str | os.PathLike[str]) -> sqlite3.Connection:
    conn = sqlite3.connect(str(db_path), timeout=SQLITE_BUSY_TIMEOUT_S)
    conn.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    return conn


def _storage_name(conn: sqlite3.Connection, table: str) -> str | None:
    schema, name = split_table_name(table)
    storage = storage_table(schema, name)
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (storage,)).fetchone()
    return storage if found else None


def count_rows(db_path: str | os.PathLike[str], table: str) -> int:
    """Rows stored in CrateDB table ``table`` (``doc.t``, ``"doc"."t"`` or ``t``); 0 when the table does not exist."""
    conn = _open_db(db_path)
    try:
        storage = _storage_name(conn, table)
        return 0 if storage is None else conn.execute(f"SELECT count(*) FROM {_q(storage)}").fetchone()[0]
    finally:
        conn.close()


def duplicate_keys(db_path: str | os.PathLike[str], table: str, key_columns: Sequence[str]) -> int:
    """Number of key values (combinations of ``key_columns``) stored more than once."""
    conn = _open_db(db_path)
    try:
        storage = _storage_name(conn, table)
        if storage is None:
            return 0
        keys = ", ".join(_q(c) for c in key_columns)
        sql = f"SELECT count(*) FROM (SELECT 1 FROM {_q(storage)} GROUP BY {keys} HAVING count(*) > 1)"
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def fetch_rows(db_path: str | os.PathLike[str], table: str) -> list[dict[str, Any]]:
    """All stored rows as dicts in insertion order; timestamps are epoch ms, booleans 0/1 as SQLite stores them."""
    conn = _open_db(db_path)
    try:
        storage = _storage_name(conn, table)
        if storage is None:
            return []
        cur = conn.execute(f"SELECT * FROM {_q(storage)} ORDER BY rowid")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
