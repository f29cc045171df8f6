"""A batch of rows and its encodings: CrateDB ``/_sql`` request bodies, and the parameters of the pg path.

Two HTTP encodings, both plain JSON (never gzipped: compressing costs more CPU than the transfer it saves on a LAN):

- ``bulk``: ``{"stmt": INSERT ... VALUES (?, ...), "bulk_args": [[row], ...]}``, row-major; CrateDB answers one
  result per row, so rejected rows are counted exactly.
- ``unnest``: ``{"stmt": INSERT ... (SELECT * FROM UNNEST(?, ...)), "args": [[col], ...]}``, column-major; one
  statement, one row count, cheaper to encode and to execute, but no per-row status.

And two for the PostgreSQL wire protocol (``pg_client``), in the form the driver takes them:

- ``pg``: the rows as a list of tuples of Python values, for a prepared INSERT executed once per row;
- ``pg-unnest``: one PostgreSQL array literal per column (``{1,2}``, ``{"a","b"}``), made from the same JSON array
  texts as the ``unnest`` body, each tagged with its array type (``PgArray`` subclasses) for one UNNEST INSERT.

A feed's batch (``RowLayout``) is rows ``first_row .. first_row + row_count - 1`` of a grid where row ``r`` is
sensor ``r % n`` at step ``r // n``. Only the field values differ from row to row; the timestamp is one per step
and the tags are one per sensor. So the layout encodes every sensor's tags once, and a body is spliced together
from those bytes, one timestamp text per step, and orjson's output for the field arrays (orjson writes numpy
arrays natively, with the same number text as for Python floats). No Python object is built per value except the
float texts of a bulk body. ``encode_bulk`` and ``encode_unnest`` are the straightforward reference encodings of
column arrays; the tests check that both ways give the same JSON.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_ROW_OK = b'{"rowcount":1}'
_RESULTS = b'"results":['


class Batch:
    """Rows of consecutive (step, sensor) pairs, in the table's column order.

    Either built from ``columns`` (one array or list per table column), or by a feed from its ``layout`` with
    ``first_row`` and the field arrays only; ``columns`` is then derived when someone asks for it."""

    __slots__ = ("row_count", "first_step", "last_step", "layout", "first_row", "fields", "_columns")

    def __init__(
        self,
        *,
        row_count: int,
        first_step: int,
        last_step: int,
        columns: tuple | None = None,
        layout: RowLayout | None = None,
        first_row: int = 0,
        fields: tuple = (),
    ):
        if columns is None and layout is None:
            raise ValueError("a Batch needs its columns or a layout")
        self.row_count = row_count
        self.first_step = first_step
        self.last_step = last_step
        self.layout = layout
        self.first_row = first_row
        self.fields = fields
        self._columns = columns

    @property
    def columns(self) -> tuple:
        if self._columns is None:
            self._columns = self.layout.columns(self.first_row, self.row_count, self.fields)
        return self._columns

    def encode(self, method: str, statement: str) -> bytes | PgInsert:
        """The batch as ``method`` sends it: an HTTP body (bulk, unnest), or the pg path's rows or arrays."""
        if method == "pg":
            return PgInsert(statement, self.rows())
        if method == "pg-unnest":
            return PgInsert(statement, self.pg_arrays())
        layout = self.layout
        if layout is not None and layout.fast and all(_fast_field(values) for values in self.fields):
            if method == "unnest":
                return layout.encode_unnest(statement, self.first_row, self.row_count, self.fields)
            return layout.encode_bulk(statement, self.first_row, self.row_count, self.fields)
        return encode_unnest(statement, self.columns) if method == "unnest" else encode_bulk(statement, self.columns)

    def rows(self) -> list[tuple]:
        """The rows as tuples of Python values in column order (``tolist`` converts each column in one C loop)."""
        return list(zip(*[_as_list(column) for column in self.columns], strict=True))

    def pg_arrays(self) -> list[PgArray]:
        """One PostgreSQL array literal per column, typed by the column's values."""
        layout = self.layout
        if layout is not None and layout.fast and layout.pg_text_safe and all(_fast_field(v) for v in self.fields):
            texts = layout.unnest_columns(self.first_row, self.row_count, self.fields)
            kinds = [*layout.pg_tag_kinds, *(_kind(values) for values in self.fields)]
            return [kind(b"{" + text[1:-1] + b"}") for text, kind in zip(texts, kinds, strict=True)]
        arrays = []
        for column in self.columns:
            kind = _kind(column)
            text = orjson.dumps(column if _orjson_native(column) else _as_list(column), option=_NUMPY)
            if kind is TextArray and not _json_text_is_pg_safe(text):
                arrays.append(TextArray(_pg_text_literal(_as_list(column))))
            else:
                arrays.append(kind(b"{" + text[1:-1] + b"}"))
        return arrays


@dataclass(frozen=True)
class PgInsert:
    """A batch for the pg path: the INSERT and its parameters (rows for pg, one array per column for pg-unnest)."""

    statement: str
    params: list


class PgArray(bytes):
    """A column as the text of a PostgreSQL array literal; ``oid`` is the array type the driver declares for it."""

    oid = 0


class Int8Array(PgArray):
    oid = 1016  # bigint[]: integer tags, and timestamps as epoch milliseconds (CrateDB casts them on insert)


class Float8Array(PgArray):
    oid = 1022  # double precision[]


class BoolArray(PgArray):
    oid = 1000  # boolean[]


class TextArray(PgArray):
    oid = 1009  # text[]


PG_ARRAY_TYPES = (Int8Array, Float8Array, BoolArray, TextArray)


def _kind(column) -> type[PgArray]:
    values = np.asarray(column)
    if values.dtype == np.bool_:
        return BoolArray
    if values.dtype.kind in "iu":
        return Int8Array
    if values.dtype.kind == "f":
        return Float8Array
    return TextArray


def _json_text_is_pg_safe(text: bytes) -> bool:
    """Whether a JSON array of strings reads the same as a PostgreSQL array literal: both quote elements with
    double quotes and escape ``"`` and ``\\`` with a backslash; JSON's other escapes (control characters) differ."""
    return b"\\" not in text.replace(b"\\\\", b"").replace(b'\\"', b"")


def _pg_text_literal(values: list) -> bytes:
    """A text[] literal built value by value (for texts JSON would escape differently)."""
    quoted = ("NULL" if v is None else '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return ("{" + ",".join(quoted) + "}").encode()


class RowLayout:
    """What all batches of one feed share: the column order, each sensor's tags (pre-encoded), the time grid.

    ``tags`` maps each tag column to its values per sensor (index = position of the sensor in the feed);
    ``base_ms`` and ``delta_ms`` give step k the timestamp ``base_ms + rint(k * delta_ms)``."""

    def __init__(
        self,
        column_names: Sequence[str],
        ts_column: str,
        tags: dict[str, np.ndarray],
        field_names: Sequence[str],
        *,
        base_ms: int,
        delta_ms: float,
    ):
        self.column_names = tuple(column_names)
        self.ts_column = ts_column
        self.tags = dict(tags)
        self.field_names = tuple(field_names)
        self.base_ms = base_ms
        self.delta_ms = delta_ms
        self.sensors = len(next(iter(self.tags.values()))) if self.tags else 0
        # The spliced encodings rely on the order ts, tags, fields (what schema.table_for_model builds); any other
        # order falls back to the reference encodings.
        self.fast = self.sensors > 0 and self.column_names == (ts_column, *self.tags, *self.field_names)
        # orjson's text of every tag value: the same bytes the reference encoders write for it.
        encoded = [[orjson.dumps(value) for value in values.tolist()] for values in self.tags.values()]
        self._bulk_tags = [b",".join(texts) for texts in zip(*encoded, strict=True)]  # "t1,t2,..." per sensor
        # Per tag column, one step's values each followed by a comma, and where each value's text starts.
        self._unnest_tags = []
        for texts in encoded:
            starts = np.zeros(len(texts) + 1, dtype=np.int64)
            np.cumsum([len(text) + 1 for text in texts], out=starts[1:])
            self._unnest_tags.append((b"".join(text + b"," for text in texts), starts.tolist()))
        self._prefixes: dict[tuple[str, str], bytes] = {}
        # The pg-unnest array types of the timestamp and tag columns, and whether every text tag's JSON text is
        # also its PostgreSQL array text (no control characters, which JSON escapes differently).
        self.pg_tag_kinds = [Int8Array, *(_kind(values) for values in self.tags.values())]
        self.pg_text_safe = all(
            _json_text_is_pg_safe(orjson.dumps(values.tolist()))
            for values in self.tags.values()
            if values.dtype.kind == "U"
        )

    def ts_ms(self, steps: np.ndarray) -> np.ndarray:
        """Epoch milliseconds of each step number (the one formula both encodings and ``columns`` use)."""
        return self.base_ms + np.rint(np.asarray(steps, dtype=np.int64) * self.delta_ms).astype(np.int64)

    def columns(self, first_row: int, count: int, fields: tuple) -> tuple:
        """The batch as one array per table column (for tests and the reference encodings)."""
        rows = np.arange(first_row, first_row + count, dtype=np.int64)
        sensor = rows % self.sensors
        by_name = {self.ts_column: self.ts_ms(rows // self.sensors)}
        by_name.update((name, values[sensor]) for name, values in self.tags.items())
        by_name.update(zip(self.field_names, fields, strict=True))
        return tuple(by_name[name] for name in self.column_names)

    def _prefix(self, method: str, statement: str) -> bytes:
        key = (method, statement)
        prefix = self._prefixes.get(key)
        if prefix is None:
            args = b',"args":[' if method == "unnest" else b',"bulk_args":['
            prefix = self._prefixes[key] = b'{"stmt":' + orjson.dumps(statement) + args
        return prefix

    def _step_counts(self, first_row: int, count: int) -> tuple[int, list[int]]:
        """The first step of the rows and how many of the rows fall in each step from there."""
        n = self.sensors
        first_step, position = divmod(first_row, n)
        head = min(count, n - position)
        full, tail = divmod(count - head, n)
        return first_step, [head] + [n] * full + ([tail] if tail else [])

    def encode_unnest(self, statement: str, first_row: int, count: int, fields: tuple) -> bytes:
        parts = [self._prefix("unnest", statement)]
        for column in self.unnest_columns(first_row, count, fields):
            parts += [column, b","]
        parts[-1] = b"]}"
        return b"".join(parts)

    def unnest_columns(self, first_row: int, count: int, fields: tuple) -> list[bytes]:
        """Each column of the rows as the text of a JSON array, in table column order."""
        first_step, counts = self._step_counts(first_row, count)
        stamps = self.ts_ms(np.arange(first_step, first_step + len(counts))).tolist()
        ts = [b"["]
        ts += [(b"%d," % stamp) * rows for stamp, rows in zip(stamps, counts, strict=True)]
        ts[-1] = ts[-1][:-1]  # no comma after the last timestamp
        ts.append(b"]")
        columns = [b"".join(ts)]
        position = first_row % self.sensors
        for template, starts in self._unnest_tags:
            columns.append(b"".join((b"[", _cycle(template, starts, position, count), b"]")))
        columns += [orjson.dumps(values, option=_NUMPY) for values in fields]
        return columns

    def encode_bulk(self, statement: str, first_row: int, count: int, fields: tuple) -> bytes:
        """Row-major body: ``b",".join`` of a few pieces per row, each piece a bytes object.

        A row ``[ts,t1,t2,f1,f2,b1]`` is cut at commas into: ``[ts`` (one shared object per step), ``t1,t2`` (one
        shared object per sensor), then one piece per run of consecutive fields: a run of floats is written by
        orjson as one 2-D array and split into one ``f1,f2`` text per row; a run of up to 4 bools is a lookup in
        the 2**k texts it can have. The last run's pieces end with ``]``. When the last run is bools, its texts
        also carry the next row's ``],[ts`` (a few per step), so the ``[ts`` pieces are not needed. Joining costs
        about 25 ns per piece, so the fewer pieces per row the better."""
        n = self.sensors
        first_step, counts = self._step_counts(first_row, count)
        stamps = self.ts_ms(np.arange(first_step, first_step + len(counts) + 1)).tolist()
        runs = _field_runs(fields)
        *middle, (last_kind, last_run) = runs
        merge_opens = last_kind == "bool" and (len(counts) + 1) << len(last_run) <= count
        slots: list[list[bytes]] = []
        if not merge_opens:
            opens: list[bytes] = []
            for stamp, rows in zip(stamps, counts, strict=False):
                opens += [b"[%d" % stamp] * rows
            slots.append(opens)
        position = first_row % n
        slots.append((self._bulk_tags * len(counts))[position : position + count])
        slots += [_run_texts(kind, run, b"") for kind, run in middle]
        if merge_opens:
            # Row i ends with its bools, "],[" and the timestamp of row i + 1 (row i's step, but at a step's end).
            texts = _bool_texts(len(last_run))
            closers = np.array([[text + b"],[%d" % stamp for text in texts] for stamp in stamps], dtype=object)
            next_step = np.arange(first_row + 1, first_row + count + 1, dtype=np.int64) // n - first_step
            code = _bool_code(last_run)
            closing = closers.ravel()[(next_step << len(last_run)) + code].tolist()
            closing[-1] = texts[int(code[-1])] + b"]"
            slots.append(closing)
            head = b"[%d," % stamps[0]
        else:
            slots.append(_run_texts(last_kind, last_run, b"]"))
            head = b""
        per_row = len(slots)
        pieces: list = [None] * (count * per_row)
        for slot, texts in enumerate(slots):
            pieces[slot::per_row] = texts
        # The statement and the end go into the first and last piece, so the body is copied only once, by the join.
        pieces[0] = self._prefix("bulk", statement) + head + pieces[0]
        pieces[-1] += b"]}"
        return b",".join(pieces)


def _cycle(template: bytes, starts: list[int], position: int, count: int) -> bytes:
    """``count`` comma-separated values from a one-step ``template`` (each value followed by a comma), starting at
    value ``position`` and wrapping around to value 0 at each new step; without the final comma."""
    n = len(starts) - 1
    if position + count <= n:
        return template[starts[position] : starts[position + count] - 1]
    full, tail = divmod(count - (n - position), n)
    return b"".join((template[starts[position] :], template * full, template[: starts[tail]]))[:-1]


def _field_runs(fields: tuple) -> list[tuple[str, list[np.ndarray]]]:
    """Consecutive fields grouped by kind ("float" or "bool"); a bool run has at most 4 fields (16 texts)."""
    runs: list[tuple[str, list[np.ndarray]]] = []
    for values in fields:
        kind = "bool" if values.dtype == np.bool_ else "float"
        if runs and runs[-1][0] == kind and (kind == "float" or len(runs[-1][1]) < 4):
            runs[-1][1].append(values)
        else:
            runs.append((kind, [values]))
    return runs


def _run_texts(kind: str, run: list[np.ndarray], end: bytes) -> list[bytes]:
    """One text per row for a run of fields: the values comma-separated, followed by ``end`` ("" or "]")."""
    if kind == "bool":
        texts = np.array([text + end for text in _bool_texts(len(run))], dtype=object)
        return texts[_bool_code(run)].tolist()
    if len(run) == 1 and not end:
        return _split(orjson.dumps(run[0], option=_NUMPY), b",", 1, 1)
    # A (rows, k) array comes out as [[a,b],[c,d],...]: cut at "],[" (or at ",[" to keep each row's "]").
    text = orjson.dumps(np.column_stack(run), option=_NUMPY)
    return _split(text, b",[", 2, 1) if end else _split(text, b"],[", 2, 2)


def _split(text: bytes, separator: bytes, lead: int, trail: int) -> list[bytes]:
    """``text[lead:-trail].split(separator)`` without first copying the whole text for the slice."""
    parts = text.split(separator)
    parts[0] = parts[0][lead:]
    parts[-1] = parts[-1][:-trail]
    return parts


@functools.lru_cache(maxsize=8)
def _bool_texts(k: int) -> tuple[bytes, ...]:
    """The JSON text of k bools for each code 0 .. 2**k - 1 (bit j of the code is bool j)."""
    return tuple(b",".join(b"true" if code >> j & 1 else b"false" for j in range(k)) for code in range(1 << k))


def _bool_code(run: list[np.ndarray]) -> np.ndarray:
    code = run[0].astype(np.intp)
    for j, values in enumerate(run[1:], start=1):
        code |= values.astype(np.intp) << j
    return code


def _fast_field(values) -> bool:
    # float64 and bool arrays are written by orjson exactly as their Python values would be (float32 is not:
    # orjson writes its shortest float32 text, tolist() the float64 one).
    return (
        isinstance(values, np.ndarray)
        and values.ndim == 1
        and values.dtype in (np.float64, np.bool_)
        and values.flags.c_contiguous
    )


def encode_bulk(statement: str, columns) -> bytes:
    """Reference row-major ``bulk_args`` body from column arrays. ``tolist`` turns each column into Python values
    in one C loop and zip pairs them into row tuples, which orjson writes as arrays."""
    as_lists = [column.tolist() if isinstance(column, np.ndarray) else column for column in columns]
    return orjson.dumps({"stmt": statement, "bulk_args": list(zip(*as_lists, strict=True))})


def encode_unnest(statement: str, columns) -> bytes:
    """Reference column-major UNNEST body; orjson writes numeric and bool numpy arrays natively."""
    args = [column if _orjson_native(column) else _as_list(column) for column in columns]
    return orjson.dumps({"stmt": statement, "args": args}, option=_NUMPY)


def all_rows_inserted(body: bytes, rows: int) -> bool:
    """Whether a bulk answer says that each of ``rows`` rows was inserted, checked without building 10k dicts.

    True only when ``body`` is a JSON object whose one ``"results"`` key holds exactly ``rows`` entries, each the
    exact text ``{"rowcount":1}``: the results array is compared byte for byte, and the rest of the body is parsed
    (with the array cut out) to check it is valid JSON. Anything else, including every answer with a failed row,
    is False, and the caller parses the whole answer."""
    if rows <= 0 or body.count(_RESULTS) != 1:
        return False
    start = body.find(_RESULTS) + len(_RESULTS)
    end = start + rows * (len(_ROW_OK) + 1) - 1
    if body[end : end + 1] != b"]" or body[start:end] != _ROW_OK + (b"," + _ROW_OK) * (rows - 1):
        return False
    try:
        rest = orjson.loads(body[:start] + body[end:])
    except orjson.JSONDecodeError:
        return False
    return isinstance(rest, dict) and rest.get("results") == []


def _as_list(column) -> list:
    return column.tolist() if isinstance(column, np.ndarray) else list(column)


def _orjson_native(column) -> bool:
    return isinstance(column, np.ndarray) and column.dtype.kind in "biuf" and column.flags.c_contiguous
