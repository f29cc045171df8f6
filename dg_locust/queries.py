"""The query workload's statements: the time-series queries shipped for any model, and people's own from a file.

A ``QuerySpec`` is one named SELECT with its weight, the parameters it takes and the fewest rows its answer must
have. ``shipped_queries(model, table)`` derives the shipped set from the model alone (its id tag, first other tag,
fields and their min..max), so no model needs hand-written SQL; ``load_query_file(path, model, table)`` reads a
YAML or JSON file of people's own statements (and shipped ones by name, re-weighted) and raises ``QueryFileError``
with one line on anything it cannot use.

Parameters are drawn at run time from the data the run wrote (``bind``): a ``DataFront`` is the latest timestamp
the database showed for each sensor, so a query about one sensor (``sensor_id``, or a tag's value) takes a sensor
with data and the window ending at that sensor's latest row, and every other query takes the window ending at the
newest row of all. Since rows are only ever added, each answer must hold at least the rows the front proves exist
(``Expectation``): a query that returns less where data must exist is a failure. Pure logic: no I/O beyond reading
the file.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from dg_locust.errors import DgError
from dg_locust.model import FloatField, Model
from dg_locust.schema import TS_COLUMN, TableSchema, quote

# Windows of data time (not wall time: in fast mode the data runs far ahead of the clock)
LATEST_WINDOW_MS = 60_000
RECENT_WINDOW_MS = 5 * 60_000
DOWNSAMPLE_WINDOW_MS = 15 * 60_000
DOWNSAMPLE_BIN = "1 minute"
TOP_N = 10
PERCENTILE = 0.95
DEFAULT_WINDOW_MS = RECENT_WINDOW_MS
TABLE_PLACEHOLDER = "{table}"
SENSOR_PARAM = "sensor_id"  # in a query file: the id tag, whatever the model calls it
FIELD_STATS = ("min", "max", "mean", "stdev")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,80}")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_FILE_KEYS = {"name", "shipped", "sql", "params", "window", "weight", "min_rows", "description"}


class QueryFileError(DgError):
    """A --queries file that cannot be used; the message names the file, the entry and the fix."""


@dataclass(frozen=True)
class Literal:
    """A parameter given as a value in the query file, sent as it is."""

    value: Any


@dataclass(frozen=True)
class WindowBound:
    """The start or the end of the query's window, epoch ms (both inclusive)."""

    end: bool


@dataclass(frozen=True)
class TagValue:
    """The value of a tag (the id tag: the sensor id) of the sensor the query is about."""

    tag: str


@dataclass(frozen=True)
class FieldStat:
    """A number the model gives a FLOAT field: its min, max, mean or stdev."""

    column: str
    stat: str


Param = Literal | WindowBound | TagValue | FieldStat
WINDOW = (WindowBound(end=False), WindowBound(end=True))


@dataclass(frozen=True)
class Expectation:
    """The fewest rows an answer must have: ``minimum``, or what the data front proves exists in the window.

    ``kind`` is ``rows`` (just ``minimum``), ``sensors`` (one row per sensor whose latest row lies in the window,
    at most ``cap``) or ``tag_values`` (one row per value of ``tag`` among those sensors)."""

    kind: str = "rows"
    minimum: int = 1
    cap: int | None = None
    tag: str | None = None


@dataclass(frozen=True)
class QuerySpec:
    """One query of the workload: a request named ``name`` in Locust's statistics."""

    name: str
    statement: str
    params: tuple[Param, ...] = ()
    weight: float = 1.0
    window_ms: int = DEFAULT_WINDOW_MS
    expect: Expectation = field(default_factory=Expectation)
    description: str = ""

    @property
    def about_one_sensor(self) -> bool:
        """Whether its parameters pick a sensor (its id or a tag value): then the window ends at that sensor's
        latest row, so its rows must be there whatever the other sensors' progress."""
        return any(isinstance(p, TagValue) for p in self.params)


@dataclass(frozen=True)
class BoundQuery:
    """A spec with its parameters drawn: the args to send and the fewest rows the answer must have."""

    spec: QuerySpec
    args: list
    min_rows: int


class DataFront:
    """The latest timestamp (epoch ms) the database showed for each sensor, as one snapshot."""

    def __init__(self, model: Model, latest: dict[int, int]):
        self.model = model
        self.sensor_ids = np.array(sorted(latest), dtype=np.int64)
        self.latest_ms = np.array([latest[i] for i in self.sensor_ids], dtype=np.int64)
        self._tags: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.sensor_ids.size)

    @property
    def newest_ms(self) -> int:
        return int(self.latest_ms.max())

    @property
    def oldest_ms(self) -> int:
        return int(self.latest_ms.min())

    def tags(self) -> dict[str, np.ndarray]:
        if self._tags is None:
            self._tags = self.model.tag_values(self.sensor_ids)
        return self._tags

    def sensors_since(self, start_ms: int) -> np.ndarray:
        """The positions of the sensors whose latest row is at or after ``start_ms``."""
        return np.flatnonzero(self.latest_ms >= start_ms)


def bind(spec: QuerySpec, front: DataFront, model: Model, rng: random.Random) -> BoundQuery:
    """Draw the parameters of ``spec`` from the data front; see the module docstring for the windows."""
    position = rng.randrange(len(front))
    end = int(front.latest_ms[position]) if spec.about_one_sensor else front.newest_ms
    start = end - spec.window_ms
    fields = {f.column: f for f in model.fields if isinstance(f, FloatField)}
    args = []
    for param in spec.params:
        if isinstance(param, Literal):
            args.append(param.value)
        elif isinstance(param, WindowBound):
            args.append(end if param.end else start)
        elif isinstance(param, FieldStat):
            args.append(getattr(fields[param.column], param.stat))
        else:
            args.append(front.tags()[param.tag][position].item())  # numpy scalar -> int or str for JSON
    return BoundQuery(spec, args, _min_rows(spec.expect, front, start))


def _min_rows(expect: Expectation, front: DataFront, start_ms: int) -> int:
    if expect.kind == "rows":
        return expect.minimum
    present = front.sensors_since(start_ms)
    # each such sensor has a row in the window (its latest): one answer row per sensor, or per its tag value
    tags = front.tags()[expect.tag][present] if expect.kind == "tag_values" else present
    count = int(np.unique(tags).size)
    count = max(count, expect.minimum)
    return min(count, expect.cap) if expect.cap is not None else count


def pick(specs: tuple[QuerySpec, ...], rng: random.Random) -> QuerySpec:
    """One spec, chosen by weight."""
    return rng.choices(specs, weights=[s.weight for s in specs])[0]


# --- the data front's own statement ---

FRONT_QUERY_NAME = "data_front"  # its request name; no query of a file may take it


def front_sql(model: Model, table: TableSchema) -> str:
    """The latest ts of each sensor of an id range since a time (args: since ms, first id, last id)."""
    sensor = quote(model.id_tag.name)
    ts = quote(TS_COLUMN)
    return (
        f'SELECT {sensor}, max({ts}) AS "latest_ts" FROM {table.qualified} '
        f"WHERE {ts} >= ? AND {sensor} BETWEEN ? AND ? GROUP BY {sensor}"
    )


# --- the shipped queries ---


def shipped_queries(model: Model, table: TableSchema) -> tuple[QuerySpec, ...]:
    """The time-series queries every model gets; those that need a FLOAT field are left out when it has none."""
    t = table.qualified
    ts = quote(TS_COLUMN)
    sensor_name = model.id_tag.name
    sensor = quote(sensor_name)
    group_tag = next((tag.name for tag in model.tags if not tag.is_id), sensor_name)
    group = quote(group_tag)
    floats = [f for f in model.fields if isinstance(f, FloatField)]
    window = f"{ts} >= ? AND {ts} <= ?"
    latest_values = ", ".join(f"max_by({quote(f.column)}, {ts}) AS {quote(f.column)}" for f in model.fields)
    columns = ", ".join(quote(f.column) for f in model.fields)
    specs = [
        QuerySpec(
            "latest_per_sensor",
            f'SELECT {sensor}, max({ts}) AS "latest_ts", {latest_values} FROM {t} '
            f"WHERE {window} GROUP BY {sensor} ORDER BY {sensor}",
            WINDOW,
            weight=2,
            window_ms=LATEST_WINDOW_MS,
            expect=Expectation("sensors"),
            description="the latest row of every sensor (a status panel)",
        ),
        QuerySpec(
            "sensor_last_5m",
            f"SELECT {ts}, {columns} FROM {t} WHERE {sensor} = ? AND {window} ORDER BY {ts}",
            (TagValue(sensor_name), *WINDOW),
            weight=4,
            window_ms=RECENT_WINDOW_MS,
            description="one sensor's rows of the last 5 minutes (a drill-down chart)",
        ),
    ]
    if not floats:
        return tuple(specs)
    first = floats[0]
    value = quote(first.column)
    specs.append(
        QuerySpec(
            f"downsample_1m_by_{group_tag}",
            f'SELECT date_bin(INTERVAL \'{DOWNSAMPLE_BIN}\', {ts}, 0) AS "bucket", {group}, count(*) AS "rows", '
            f'avg({value}) AS "avg_{first.column}", min({value}) AS "min_{first.column}", '
            f'max({value}) AS "max_{first.column}" FROM {t} WHERE {window} '
            f'GROUP BY "bucket", {group} ORDER BY "bucket", {group}',
            WINDOW,
            weight=1,
            window_ms=DOWNSAMPLE_WINDOW_MS,
            expect=Expectation("tag_values", tag=group_tag),
            description=f"{first.column} per {DOWNSAMPLE_BIN} and {group_tag} over the last 15 minutes",
        )
    )
    stats = ", ".join(
        f'avg({quote(f.column)}) AS "avg_{f.column}", min({quote(f.column)}) AS "min_{f.column}", '
        f'max({quote(f.column)}) AS "max_{f.column}", '
        f'percentile({quote(f.column)}, {PERCENTILE}) AS "p{round(PERCENTILE * 100)}_{f.column}"'
        for f in floats
    )
    specs.append(
        QuerySpec(
            f"stats_5m_one_{group_tag}",
            f'SELECT {group}, count(*) AS "rows", {stats} FROM {t} WHERE {group} = ? AND {window} GROUP BY {group}',
            (TagValue(group_tag), *WINDOW),
            weight=2,
            window_ms=RECENT_WINDOW_MS,
            description=f"avg, min, max and p95 of every FLOAT field for one {group_tag}, last 5 minutes",
        )
    )
    out_of_range = ", ".join(
        f'count(*) FILTER (WHERE {quote(f.column)} < ? OR {quote(f.column)} > ?) AS "{f.column}_out_of_range"'
        for f in floats
    )
    bounds = tuple(FieldStat(f.column, stat) for f in floats for stat in ("min", "max"))
    specs.append(
        QuerySpec(
            "out_of_range_5m",
            f'SELECT count(*) AS "rows", {out_of_range} FROM {t} WHERE {window}',
            (*bounds, *WINDOW),
            weight=1,
            window_ms=RECENT_WINDOW_MS,
            description="rows of the last 5 minutes, and those with a value outside the model's min..max",
        )
    )
    specs.append(
        QuerySpec(
            f"top{TOP_N}_{first.column}_5m",
            f'SELECT {sensor}, max({value}) AS "max_{first.column}" FROM {t} WHERE {window} '
            f'GROUP BY {sensor} ORDER BY "max_{first.column}" DESC, {sensor} LIMIT {TOP_N}',
            WINDOW,
            weight=1,
            window_ms=RECENT_WINDOW_MS,
            expect=Expectation("sensors", cap=TOP_N),
            description=f"the {TOP_N} sensors with the highest {first.column} of the last 5 minutes",
        )
    )
    return tuple(specs)


# --- people's own queries ---


def load_query_file(path: str | Path, model: Model, table: TableSchema) -> tuple[QuerySpec, ...]:
    """Read a YAML or JSON file of queries (see README, "Queries under ingest"); raise QueryFileError."""
    source = str(path)
    try:
        text = Path(path).expanduser().read_bytes()
    except FileNotFoundError:
        raise QueryFileError(f"--queries {source}: file not found; check the path") from None
    except OSError as error:
        raise QueryFileError(f"--queries {source}: cannot read the file ({error.strerror})") from None
    return parse_queries(_decode(text, source), source, model, table)


def _decode(text: bytes, source: str) -> Any:
    if source.lower().endswith(".json"):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as error:
            raise QueryFileError(f"--queries {source}: not valid JSON ({_one_line(str(error))})") from None
    import yaml  # only a --queries file needs it

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise QueryFileError(f"--queries {source}: not valid YAML ({_one_line(str(error))})") from None


def parse_queries(obj: Any, source: str, model: Model, table: TableSchema) -> tuple[QuerySpec, ...]:
    """Validate a decoded query file: ``{"queries": [...]}``, each entry a statement or a shipped query by name."""
    if not isinstance(obj, dict) or not isinstance(obj.get("queries"), list) or set(obj) - {"queries"}:
        raise QueryFileError(f'--queries {source}: expected a mapping with one key, "queries", holding a list')
    if not obj["queries"]:
        raise QueryFileError(f'--queries {source}: "queries" is empty; list at least one query')
    parser = _EntryParser(source, model, table)
    specs = tuple(parser.entry(index, entry) for index, entry in enumerate(obj["queries"]))
    names = [spec.name for spec in specs]
    for name in names:
        if names.count(name) > 1:
            raise QueryFileError(f"--queries {source}: the name {name!r} is used twice; give each query its own")
    if not any(spec.weight > 0 for spec in specs):
        raise QueryFileError(f"--queries {source}: every weight is 0; give at least one query a weight above 0")
    return specs


class _EntryParser:
    def __init__(self, source: str, model: Model, table: TableSchema):
        self.source = source
        self.model = model
        self.table = table
        self.shipped = {spec.name: spec for spec in shipped_queries(model, table)}
        self.tags = [tag.name for tag in model.tags]
        self.floats = {f.column for f in model.fields if isinstance(f, FloatField)}

    def fail(self, where: str, problem: str) -> QueryFileError:
        return QueryFileError(_one_line(f"--queries {self.source}: {where}: {problem}"))

    def entry(self, index: int, entry: Any) -> QuerySpec:
        where = f"queries[{index}]"
        if not isinstance(entry, dict):
            raise self.fail(where, 'expected a mapping with "name" and "sql" (or "shipped")')
        if isinstance(entry.get("name"), str) or isinstance(entry.get("shipped"), str):
            where += f" ({entry.get('name') or entry.get('shipped')})"
        unknown = sorted(set(entry) - _FILE_KEYS, key=str)
        if unknown:
            raise self.fail(where, f"unknown key {unknown[0]!r}; use {', '.join(sorted(_FILE_KEYS))}")
        weight = self.weight(where, entry.get("weight", 1))
        if "shipped" in entry:
            return self.shipped_entry(where, entry, weight)
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise self.fail(where, 'needs a "name" of letters, digits, "_", "." or "-" (it names the request)')
        if name == FRONT_QUERY_NAME:
            raise self.fail(where, f"{FRONT_QUERY_NAME!r} names the data front's own statement; choose another name")
        sql = entry.get("sql")
        if not isinstance(sql, str) or not sql.strip():
            raise self.fail(where, 'needs "sql", the SELECT statement')
        statement = sql.strip().rstrip(";").strip().replace(TABLE_PLACEHOLDER, self.table.qualified)
        if not re.match(r"(?is)^(\s|--[^\n]*\n|/\*.*?\*/)*(select|with)\b", statement):
            raise self.fail(where, "only SELECT statements can be queries (the workload must not change data)")
        params = self.param_list(where, entry.get("params", []))
        wanted = placeholder_count(statement)
        if wanted != len(params):
            raise self.fail(where, f"the statement has {wanted} placeholders but {len(params)} params are listed")
        min_rows = entry.get("min_rows", 1)
        if not _is_int(min_rows) or min_rows < 0:
            raise self.fail(where, f"min_rows {min_rows!r} is not a whole number >= 0")
        description = entry.get("description", "")
        return QuerySpec(
            name,
            statement,
            params,
            weight=weight,
            window_ms=self.window(where, entry.get("window", "5m")),
            expect=Expectation(minimum=min_rows),
            description=description if isinstance(description, str) else "",
        )

    def shipped_entry(self, where: str, entry: dict, weight: float) -> QuerySpec:
        name = entry["shipped"]
        if name not in self.shipped:
            known = ", ".join(self.shipped)
            raise self.fail(where, f"{name!r} is not a shipped query of this model; use one of {known}")
        extra = sorted(set(entry) - {"shipped", "weight"})
        if extra:
            raise self.fail(where, f"a shipped query takes only a weight, not {extra[0]!r}")
        spec = self.shipped[name]
        return QuerySpec(spec.name, spec.statement, spec.params, weight, spec.window_ms, spec.expect, spec.description)

    def weight(self, where: str, value: Any) -> float:
        if not _is_number(value) or value < 0:
            raise self.fail(where, f"weight {value!r} is not a number >= 0")
        return float(value)

    def window(self, where: str, value: Any) -> int:
        if _is_number(value) and value > 0:
            return round(value * 1000)
        if isinstance(value, str):
            duration = _parse_duration(value)
            if duration:
                return duration
        raise self.fail(where, f"window {value!r} is not a duration such as 30s, 5m, 2h or a number of seconds")

    def param_list(self, where: str, value: Any) -> tuple[Param, ...]:
        if not isinstance(value, list):
            raise self.fail(where, "params must be a list, e.g. [sensor_id, window_start, window_end]")
        return tuple(self.param(where, item) for item in value)

    def param(self, where: str, item: Any) -> Param:
        if isinstance(item, dict) and set(item) == {"value"}:
            return Literal(item["value"])
        if isinstance(item, bool) or _is_number(item):
            return Literal(item)
        if item in ("window_start", "window_end"):
            return WindowBound(end=item == "window_end")
        if item == SENSOR_PARAM:
            return TagValue(self.model.id_tag.name)
        if item in self.tags:
            return TagValue(item)
        if isinstance(item, str) and "." in item:
            column, stat = item.rsplit(".", 1)
            if column in self.floats and stat in FIELD_STATS:
                return FieldStat(column, stat)
        known = ", ".join(
            ["window_start", "window_end", SENSOR_PARAM, *self.tags, "<FLOAT column>.min/.max/.mean/.stdev"]
        )
        raise self.fail(where, f"unknown param {item!r}; use {known}, a number or {{value: ...}}")


def placeholder_count(statement: str) -> int:
    """How many parameters a statement takes: its ``?`` marks, or the highest ``$n``, outside quotes and comments."""
    bare = re.sub(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/", " ", statement, flags=re.S)
    numbered = [int(n) for n in re.findall(r"\$(\d+)", bare)]
    return max(numbered) if numbered else bare.count("?")


def _parse_duration(text: str) -> int:
    found = _DURATION.fullmatch(text.strip().lower())
    return round(float(found.group(1)) * _DURATION_MS[found.group(2)]) if found else 0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())
