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

Memory per sensor: the tags come as ``model.TagCodes`` (the id itself, and a one- or two-byte code per other tag).
Their JSON texts are built with numpy, without a Python object per sensor, at the first body of each kind: for
``unnest`` one buffer of every sensor's text per tag plus an offset array (about the text's length + 5 bytes per
sensor and tag), for ``bulk`` one fixed-width array of each sensor's ``t1,t2,...`` (the width of the longest, e.g.
12 bytes for the temperature model). A batch takes its part of them, so a batch of a large fleet costs what its
own rows cost.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from dg_locust.model import TagCodes

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
# Fleets up to this many sensors keep each sensor's bulk tag text as a Python bytes object too (at most ~4 MB):
# their batches span whole steps, and making the objects again for every step would cost ~30 ns per row.
_BULK_OBJECTS_MAX_SENSORS = 1 << 16
# Tag texts are built this many sensors at a time, so the temporary arrays stay small for any fleet.
_TEXT_BLOCK = 1 << 18
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


def _distinct_values(tag: TagCodes) -> np.ndarray:
    """A tag column's distinct values (the id tag has none of its own: its codes are its values)."""
    return np.asarray(tag.codes[:1] if tag.values is None else tag.values)


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

    ``tags`` maps each tag column to its sensors' values (index = position of the sensor in the feed): a
    ``TagCodes``, or an array of the values themselves; ``base_ms`` and ``delta_ms`` give step k the timestamp
    ``base_ms + rint(k * delta_ms)``."""

    def __init__(
        self,
        column_names: Sequence[str],
        ts_column: str,
        tags: Mapping[str, TagCodes | np.ndarray],
        field_names: Sequence[str],
        *,
        base_ms: int,
        delta_ms: float,
    ):
        self.column_names = tuple(column_names)
        self.ts_column = ts_column
        self.tags = {name: _as_codes(values) for name, values in tags.items()}
        self.field_names = tuple(field_names)
        self.base_ms = base_ms
        self.delta_ms = delta_ms
        self.sensors = len(next(iter(self.tags.values())).codes) if self.tags else 0
        # The spliced encodings rely on the order ts, tags, fields (what schema.table_for_model builds); any other
        # order falls back to the reference encodings.
        self.fast = self.sensors > 0 and self.column_names == (ts_column, *self.tags, *self.field_names)
        # orjson's text of each distinct value of a coded tag: the same bytes the reference encoders write for it.
        self._value_texts = {name: _texts_of(tag.values) for name, tag in self.tags.items() if tag.values is not None}
        self._bulk: _BulkTags | None = None  # built at the first bulk body
        self._unnest: list[_TextColumn] | None = None  # built at the first unnest body
        self._prefixes: dict[tuple[str, str], bytes] = {}
        # The pg-unnest array types of the timestamp and tag columns, and whether every text tag's JSON text is
        # also its PostgreSQL array text (no control characters, which JSON escapes differently).
        # Only each tag's distinct values are looked at (the id tag's codes are its integer values).
        self.pg_tag_kinds = [Int8Array, *(_kind(_distinct_values(tag)) for tag in self.tags.values())]
        self.pg_text_safe = all(
            _json_text_is_pg_safe(orjson.dumps(_distinct_values(tag).tolist()))
            for tag in self.tags.values()
            if _distinct_values(tag).dtype.kind == "U"
        )

    def ts_ms(self, steps: np.ndarray) -> np.ndarray:
        """Epoch milliseconds of each step number (the one formula both encodings and ``columns`` use)."""
        return self.base_ms + np.rint(np.asarray(steps, dtype=np.int64) * self.delta_ms).astype(np.int64)

    def columns(self, first_row: int, count: int, fields: tuple) -> tuple:
        """The batch as one array per table column (for tests and the reference encodings)."""
        rows = np.arange(first_row, first_row + count, dtype=np.int64)
        sensor = rows % self.sensors
        by_name = {self.ts_column: self.ts_ms(rows // self.sensors)}
        by_name.update((name, tag.decoded(sensor)) for name, tag in self.tags.items())
        by_name.update(zip(self.field_names, fields, strict=True))
        return tuple(by_name[name] for name in self.column_names)

    def _prefix(self, method: str, statement: str) -> bytes:
        key = (method, statement)
        prefix = self._prefixes.get(key)
        if prefix is None:
            args = b',"args":[' if method == "unnest" else b',"bulk_args":['
            prefix = self._prefixes[key] = b'{"stmt":' + orjson.dumps(statement) + args
        return prefix

    def tag_texts(self, name: str, positions: slice) -> np.ndarray:
        """The JSON text of tag ``name`` for the sensors at ``positions``, as a fixed-width bytes array."""
        tag = self.tags[name]
        codes = tag.codes[positions]
        return _decimal_texts(codes) if tag.values is None else self._value_texts[name][codes]

    def _bulk_tags(self) -> _BulkTags:
        if self._bulk is None:
            blocks = []
            for start in range(0, self.sensors, _TEXT_BLOCK):
                part = slice(start, start + _TEXT_BLOCK)
                texts = [self.tag_texts(name, part) for name in self.tags]
                joined = texts[0]
                for more in texts[1:]:
                    joined = np.strings.add(np.strings.add(joined, b","), more)
                blocks.append(joined)
            width = max(block.dtype.itemsize for block in blocks)
            texts = np.concatenate([block.astype(f"S{width}") for block in blocks])
            objects = texts.tolist() if self.sensors <= _BULK_OBJECTS_MAX_SENSORS else None
            self._bulk = _BulkTags(texts, objects)
        return self._bulk

    def _unnest_tags(self) -> list[_TextColumn]:
        if self._unnest is None:
            self._unnest = [
                _TextColumn.of(
                    [
                        self.tag_texts(name, slice(start, start + _TEXT_BLOCK))
                        for start in range(0, self.sensors, _TEXT_BLOCK)
                    ]
                )
                for name in self.tags
            ]
        return self._unnest

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
        for column in self._unnest_tags():
            columns.append(b"".join((b"[", column.cycle(position, count), b"]")))
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
        slots.append(self._bulk_tags().pieces(position, count))
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


@dataclass(frozen=True)
class _TextColumn:
    """One tag column for unnest: every sensor's text followed by a comma, in one buffer, and where each starts."""

    template: bytes
    starts: np.ndarray  # n + 1 offsets into template (int32 while it is below 2 GB)

    @classmethod
    def of(cls, blocks: list[np.ndarray]) -> _TextColumn:
        """From fixed-width texts (in blocks of sensors): drop the padding, put a comma after each text."""
        buffers, lengths = [], []
        for texts in blocks:
            with_comma = np.strings.add(texts, b",")
            flat = with_comma.view(np.uint8)
            buffers.append(flat[flat != 0].tobytes())  # JSON texts hold no NUL byte, so only the padding goes
            lengths.append(np.strings.str_len(with_comma))
        size = sum(len(buffer) for buffer in buffers)
        starts = np.zeros(sum(len(part) for part in lengths) + 1, dtype=np.int32 if size < 2**31 else np.int64)
        if len(starts) > 1:
            np.cumsum(np.concatenate(lengths), out=starts[1:])
        return cls(b"".join(buffers), starts)

    def cycle(self, position: int, count: int) -> bytes:
        """``count`` comma-separated values starting at sensor ``position`` and wrapping around to sensor 0 at each
        new step; without the final comma."""
        n = len(self.starts) - 1
        template, starts = self.template, self.starts
        if position + count <= n:
            return template[int(starts[position]) : int(starts[position + count]) - 1]
        full, tail = divmod(count - (n - position), n)
        return b"".join((template[int(starts[position]) :], template * full, template[: int(starts[tail])]))[:-1]


@dataclass(frozen=True)
class _BulkTags:
    """Each sensor's ``t1,t2,...`` for bulk rows: a fixed-width array, and for small fleets its bytes objects."""

    texts: np.ndarray
    objects: list[bytes] | None

    def pieces(self, position: int, count: int) -> list[bytes]:
        """The texts of ``count`` rows from sensor ``position`` on, wrapping around to sensor 0 at each new step."""
        n = len(self.texts)
        if self.objects is not None:
            return (self.objects * -(-(position + count) // n))[position : position + count]
        if position + count <= n:
            return self.texts[position : position + count].tolist()
        full, tail = divmod(count - (n - position), n)
        return self.texts[position:].tolist() + self.texts.tolist() * full + self.texts[:tail].tolist()


def _as_codes(values: TagCodes | np.ndarray) -> TagCodes:
    """A tag column as codes: integers stand for themselves, any other values are numbered by their distinct values."""
    if isinstance(values, TagCodes):
        return values
    array = np.asarray(values)
    if array.dtype.kind in "iu":
        return TagCodes(array, None)
    distinct, codes = np.unique(array, return_inverse=True)
    return TagCodes(codes.reshape(-1), distinct)


def _texts_of(values: np.ndarray) -> np.ndarray:
    """orjson's text of each value, as a fixed-width bytes array (no JSON text ends in a NUL byte, which numpy
    would strip)."""
    if values.dtype.kind in "iu":
        return _decimal_texts(values)  # an integer tag may have many values ("n": 1000000)
    # bytes(memoryview(...)) keeps an exact-size copy: orjson's own result keeps a buffer of several KB alive.
    return np.array([bytes(memoryview(orjson.dumps(value))) for value in values.tolist()], dtype=bytes)


def _decimal_texts(values: np.ndarray) -> np.ndarray:
    """The decimal text of each integer (what orjson writes for it), as a fixed-width bytes array.

    Vectorised: the values are grouped by sign and number of digits (ids in a range fall into a few groups), and
    each group's digits are written column by column, one division by 10 per digit (numpy's own int-to-bytes
    conversion costs ~300 ns per value)."""
    values = np.asarray(values, dtype=np.int64)
    if not values.size:
        return np.zeros(0, dtype="S1")
    negative = values < 0
    magnitude = np.abs(values).astype(np.uint64)  # abs of the smallest int64 wraps to itself: 2**63 as uint64
    if magnitude.max() < 2**32:
        magnitude = magnitude.astype(np.uint32)  # divides several times faster
    digits = np.searchsorted(_POWERS_OF_TEN, magnitude, side="right").astype(np.int64) + 1
    key = digits * 2 + negative
    width = int((digits + negative).max())
    out = np.zeros((len(values), width), dtype=np.uint8)
    out[negative, 0] = ord("-")
    groups = np.flatnonzero(np.bincount(key)).tolist()  # at most 40 keys: cheaper than np.unique's hashing
    for group in groups:
        count, sign = divmod(group, 2)
        rows = np.flatnonzero(key == group) if len(groups) > 1 else slice(None)
        remaining = magnitude[rows]
        block = np.empty((len(remaining), count), dtype=np.uint8)
        for place in range(count - 1, -1, -1):
            remaining, digit = np.divmod(remaining, 10)
            block[:, place] = digit
        block += ord("0")
        out[rows, sign : sign + count] = block
    return out.view(f"S{width}").reshape(-1)


# 10**1 .. 10**19: the number of these a magnitude reaches, plus one, is its number of decimal digits
_POWERS_OF_TEN = np.array([10**k for k in range(1, 20)], dtype=np.uint64)


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
