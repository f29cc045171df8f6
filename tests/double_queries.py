"""Query support for the CrateDB test double: the SELECT shapes dg-locust's query workload sends, run on SQLite.

The double's own SQL front end (``cratedb_double``) parses what ingest, ``--verify`` and its conformance tests
send: SELECTs of columns and count(*) with AND-ed conditions, GROUP BY, HAVING count(*) and one subquery. The query
workload (``dg_locust/queries.py``) sends more: avg, min, max, ``percentile``, ``max_by``, ``date_bin``, aggregates
with FILTER, and OR. ``handles(stmt)`` says whether a SELECT uses any of that (``QUERY_FUNCTIONS``,
``QUERY_WORDS``), and ``answer(store, ...)`` runs it on the double's SQLite store and returns CrateDB's answer
(``cols``, ``col_types`` when asked, ``rows``, ``rowcount``), with CrateDB's errors for unknown tables and columns
and unknown functions.

How a statement is translated: it is tokenised; the table after FROM becomes the SQLite table that holds it;
``date_bin(INTERVAL '<n> <unit>', ts, origin)`` becomes a Python function of integer epoch milliseconds (timestamps
are stored as such), floor-dividing as CrateDB does; ``percentile(x, fraction)`` (linear interpolation between the
closest ranks, which CrateDB's t-digest approximates), ``max_by`` and ``min_by`` are Python aggregates; every
double-quoted identifier must name a column of the table or an alias the statement defines (SQLite would take an
unknown "name" for a string); booleans come back as true/false. Everything else is SQL both dialects share.

It imports nothing from the double (which runs as ``__main__`` in its own process): errors are raised through the
``error(status, code, message)`` factory the caller passes in.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

_TOKEN = re.compile(
    r"""\s+|--[^\n]*|/\*.*?\*/
    |(?P<qident>"(?:[^"]|"")*")
    |(?P<string>'(?:[^']|'')*')
    |(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
    |(?P<param>\?|\$\d+)
    |(?P<word>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op><=|>=|<>|!=|::|\|\||[(),.=<>*;+/%-])""",
    re.X | re.S,
)
# What only the query workload's statements use (the double's own front end has count(*) as its one aggregate, and
# AND as its one connective); a SELECT with none of them, GROUP BY and HAVING count(*) included, is left to it.
QUERY_FUNCTIONS = frozenset({"date_bin", "percentile", "max_by", "min_by", "avg", "min", "max", "sum"})
QUERY_WORDS = frozenset({"filter", "or", "case"})
_INTERVAL_MS = {
    "millisecond": 1,
    "second": 1000,
    "minute": 60_000,
    "hour": 3_600_000,
    "day": 86_400_000,
    "week": 7 * 86_400_000,
}
_TYPE_IDS = {bool: 3, int: 10, float: 6, str: 4}  # CrateDB's wire type ids: boolean, bigint, double, text

ErrorFactory = Callable[[int, int, str], Exception]


def _tokens(stmt: str, error: ErrorFactory) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(stmt):
        found = _TOKEN.match(stmt, pos)
        if found is None:
            raise error(400, 4000, f"SQLParseException[line 1:{pos + 1}: token recognition error at: '{stmt[pos]}']")
        if found.lastgroup:
            tokens.append((found.lastgroup, found.group(found.lastgroup)))
        pos = found.end()
    return tokens


def handles(stmt: str) -> bool:
    """Whether ``stmt`` is a SELECT that uses what only the query workload sends (see QUERY_WORDS)."""
    try:
        tokens = _tokens(stmt, lambda *_: ValueError())
    except ValueError:
        return False
    words = [text.lower() for kind, text in tokens if kind == "word"]
    if not words or words[0] != "select":
        return False
    functions = {
        text.lower()
        for (kind, text), after in zip(tokens, tokens[1:], strict=False)
        if kind == "word" and after == ("op", "(")
    }
    return not QUERY_WORDS.isdisjoint(words) or not QUERY_FUNCTIONS.isdisjoint(functions)


def answer(store, stmt: str, args: Sequence[Any], schema: str, types: bool, error: ErrorFactory) -> dict[str, Any]:
    """Run one handled SELECT on the double's ``store``; CrateDB's answer without ``duration``."""
    tokens = _tokens(stmt, error)
    table, tokens = _resolve_table(store, tokens, schema, error)
    sql = _translate(tokens, table, error)
    conn = store.conn
    _register_functions(conn)
    try:
        cursor = conn.execute(sql, list(args))
        rows = cursor.fetchall()
    except sqlite3.Error as failure:
        raise _crate_error(str(failure), error) from None
    cols = [description[0] for description in cursor.description]
    columns = {column.name: column for column in table.columns}
    booleans = [name in columns and columns[name].type.is_bool for name in cols]
    out_rows = [[bool(v) if b and v is not None else v for v, b in zip(row, booleans, strict=True)] for row in rows]
    out: dict[str, Any] = {"cols": cols}
    if types:
        out["col_types"] = [_type_id(name, index, columns, out_rows) for index, name in enumerate(cols)]
    out.update(rows=out_rows, rowcount=len(out_rows))
    return out


def _resolve_table(store, tokens: list[tuple[str, str]], schema: str, error: ErrorFactory):
    """The table after the top-level FROM, and the tokens with its reference replaced by its SQLite table."""
    depth = 0
    for index, (kind, text) in enumerate(tokens):
        if kind == "op" and text == "(":
            depth += 1
        elif kind == "op" and text == ")":
            depth -= 1
        elif kind == "word" and text.lower() == "from" and depth == 0:
            parts, end = [], index + 1
            while end < len(tokens) and tokens[end][0] in ("qident", "word") and len(parts) < 2:
                parts.append(_identifier(*tokens[end]))
                if end + 1 < len(tokens) and tokens[end + 1] == ("op", "."):
                    end += 2
                else:
                    end += 1
                    break
            if not parts:
                raise error(400, 4000, "SQLParseException[the double answers queries on one table only]")
            name_schema, name = (schema, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
            table = store.table(name_schema, name)  # raises the double's RelationUnknown
            return table, [*tokens[: index + 1], ("storage", table.storage), *tokens[end:]]
    raise error(400, 4000, "SQLParseException[a query needs FROM <table>]")


def _translate(tokens: list[tuple[str, str]], table, error: ErrorFactory) -> str:
    aliases = {_identifier(*tokens[i + 1]) for i, (kind, text) in enumerate(tokens[:-1]) if text.lower() == "as"}
    columns = {column.name for column in table.columns}
    out: list[str] = []
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        if (
            kind == "word"
            and text.lower() == "interval"
            and index + 1 < len(tokens)
            and tokens[index + 1][0] == "string"
        ):
            out.append(str(_interval_ms(tokens[index + 1][1], error)))
            index += 2
            continue
        if kind == "op" and text == "::":
            raise error(400, 4004, "UnsupportedFeatureException[the double does not cast with ::]")
        if kind == "qident":
            name = _identifier(kind, text)
            if name not in columns and name not in aliases:
                raise error(404, 4043, f"ColumnUnknownException[Column {name} unknown]")
            out.append(text)
        elif kind == "storage":
            out.append('"' + text.replace('"', '""') + '"')
        elif kind == "param" and text.startswith("$"):
            out.append("?" + text[1:])
        else:
            out.append(text)
        index += 1
    return " ".join(out)


def _identifier(kind: str, text: str) -> str:
    return text[1:-1].replace('""', '"') if kind == "qident" else text.lower()


def _interval_ms(literal: str, error: ErrorFactory) -> int:
    found = re.fullmatch(r"'\s*(\d+)\s+([a-z]+?)s?\s*'", literal.lower())
    if not found or found.group(2) not in _INTERVAL_MS:
        raise error(400, 4000, f"SQLParseException[the double reads intervals such as '5 minutes', not {literal}]")
    return int(found.group(1)) * _INTERVAL_MS[found.group(2)]


def _crate_error(message: str, error: ErrorFactory) -> Exception:
    unknown_function = re.match(r"no such function: (\w+)", message)
    if unknown_function:
        return error(400, 4004, f"UnsupportedFunctionException[Unknown function: {unknown_function.group(1)}]")
    unknown_column = re.match(r"no such column: (.+)", message)
    if unknown_column:
        return error(404, 4043, f"ColumnUnknownException[Column {unknown_column.group(1)} unknown]")
    return error(400, 4000, f"SQLParseException[{message}]")


def _type_id(name: str, index: int, columns: dict, rows: list[list[Any]]) -> int:
    if name in columns:
        return columns[name].type.type_id
    value = next((row[index] for row in rows if row[index] is not None), None)
    return _TYPE_IDS.get(type(value), 6)


# --- CrateDB's functions, in Python ---


def _date_bin(interval_ms: int, ts: int | None, origin: int) -> int | None:
    if ts is None:
        return None
    return origin + ((ts - origin) // interval_ms) * interval_ms


class _Percentile:
    """``percentile(x, fraction)``: linear interpolation between the closest ranks (numpy's default)."""

    def __init__(self):
        self.values: list[float] = []
        self.fraction = 0.5

    def step(self, value, fraction) -> None:
        if value is not None:
            self.values.append(float(value))
        self.fraction = float(fraction)

    def finalize(self) -> float | None:
        if not self.values:
            return None
        ordered = sorted(self.values)
        position = (len(ordered) - 1) * self.fraction
        low, high = math.floor(position), math.ceil(position)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class _MaxBy:
    """``max_by(value, key)``: the value of the row with the largest key."""

    prefer_larger = True

    def __init__(self):
        self.key = None
        self.value = None

    def step(self, value, key) -> None:
        if key is not None and (self.key is None or (key > self.key if self.prefer_larger else key < self.key)):
            self.key, self.value = key, value

    def finalize(self):
        return self.value


class _MinBy(_MaxBy):
    prefer_larger = False


def _register_functions(conn: sqlite3.Connection) -> None:
    conn.create_function("date_bin", 3, _date_bin, deterministic=True)
    conn.create_aggregate("percentile", 2, _Percentile)
    conn.create_aggregate("max_by", 2, _MaxBy)
    conn.create_aggregate("min_by", 2, _MinBy)
