"""The sensor model: which table a fleet fills, which tags identify each sensor and how each field behaves.

A model file uses crate/tsperf's JSON format, so its model files load unchanged: an optional ``description`` and
one key naming the table, holding ``tags`` (integer N, list of values, or ``"id"``) and ``fields`` (FLOAT or BOOL,
each parameter written as ``{"value": x}``). A FLOAT field may also declare ``"precision": {"value": 2}`` (or
``"precision": 2``): the decimal places its values are rounded to, as a real sensor reports them; tsperf ignores
it. ``load_model()`` reads a file and ``parse_model()`` an already decoded object; both return a frozen ``Model``
or raise ``ModelError`` with one line that names the file, the offending key and what to change.
``Model.tag_values()`` derives the tag columns of any sensor ids with a true mixed-radix mapping, so ids
1..product(cardinalities) each get their own tag combination; ``Model.tag_codes()`` gives the same mapping in
compact form (a small code per sensor and tag, see ``TagCodes``), for fleets of millions of sensors. This module
does no I/O beyond reading the file.

    model = load_model("models/temperature.json")   # or load_model("temperature") for a shipped model
    model.tag_values(np.arange(1, 501))             # {"plant": ..., "line": ..., "sensor_id": ...}
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from dg_locust.errors import ModelError

# The models shipped inside the package (package data), so that a bare name such as "temperature" finds
# dg_locust/models/temperature.json whatever the working directory is, also after `pip install`.
MODELS_DIR = Path(__file__).resolve().parent / "models"

_INT32_MAX = 2**31 - 1
_FLOAT_PARAMS = ("min", "max", "mean", "stdev", "variance", "error_rate", "error_length")
MAX_PRECISION = 15  # a double holds 15-17 significant digits; more decimal places than that mean nothing


@dataclass(frozen=True)
class TagSpec:
    """One tag column. ``values`` is ``range(N)`` for an integer tag, the listed values for a list tag, and None
    for the id tag, whose value is the sensor id itself."""

    name: str
    values: Sequence[int | str] | None
    is_id: bool

    @property
    def cardinality(self) -> int | None:
        return None if self.values is None else len(self.values)

    @property
    def sql_type(self) -> str:
        if self.values is None:
            return "INTEGER"
        if isinstance(self.values, range):
            return "INTEGER" if len(self.values) - 1 <= _INT32_MAX else "BIGINT"
        if all(isinstance(v, str) for v in self.values):
            return "TEXT"
        return "INTEGER" if all(-_INT32_MAX - 1 <= v <= _INT32_MAX for v in self.values) else "BIGINT"

    def value_array(self) -> np.ndarray:
        """The tag's values as a numpy array (str or int64), indexable by a digit of the mixed-radix mapping."""
        if self.values is None:
            raise ValueError(f"tag {self.name!r} carries the sensor id and has no value list")
        if isinstance(self.values, range):
            return np.arange(self.values.start, self.values.stop, dtype=np.int64)
        if self.sql_type == "TEXT":
            return np.array(self.values, dtype=str)
        return np.array(self.values, dtype=np.int64)


@dataclass(frozen=True)
class FloatField:
    """A FLOAT measurement: a bounded random walk around ``mean`` with error excursions (see generator.py)."""

    name: str
    column: str
    min: float
    max: float
    mean: float
    stdev: float
    variance: float
    error_rate: float
    error_length: float
    precision: int | None = None  # decimal places values are rounded to (None: full doubles)

    sql_type = "DOUBLE PRECISION"


@dataclass(frozen=True)
class BoolField:
    """A BOOL measurement, true with probability ``true_ratio`` at every step."""

    name: str
    column: str
    true_ratio: float

    sql_type = "BOOLEAN"


@dataclass(frozen=True)
class Model:
    """A validated model: the table, its tags in file order and its fields in file order."""

    table: str
    description: str | None
    tags: tuple[TagSpec, ...]
    fields: tuple[FloatField | BoolField, ...]
    source: str
    # The value arrays of the non-id tags, built once because tag_values() indexes them for every fleet.
    _digits: tuple[tuple[str, np.ndarray], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        digits = tuple((tag.name, tag.value_array()) for tag in self.tags if not tag.is_id)
        object.__setattr__(self, "_digits", digits)

    @property
    def id_tag(self) -> TagSpec:
        return next(tag for tag in self.tags if tag.is_id)

    @property
    def combinations(self) -> int:
        """How many distinct tag combinations the non-id tags give; ids cycle through them after that many."""
        return math.prod(len(values) for _, values in self._digits)

    def tag_columns(self) -> list[str]:
        return [tag.name for tag in self.tags]

    def field_columns(self) -> list[str]:
        return [f.column for f in self.fields]

    def columns(self) -> list[tuple[str, str]]:
        """(column name, CrateDB type) of every tag and then every field, in file order."""
        return [(tag.name, tag.sql_type) for tag in self.tags] + [(f.column, f.sql_type) for f in self.fields]

    def tag_values(self, sensor_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Column name -> tag values for each of ``sensor_ids`` (ids count from 1), in tag order.

        Mixed radix: with index = id - 1, the last non-id tag is the fastest digit, values[index % c_k], the one
        before it values[(index // c_k) % c_(k-1)], and so on. Every id up to the product of the cardinalities gets
        its own combination; after that the combinations repeat.
        """
        ids = np.asarray(sensor_ids, dtype=np.int64)
        return {name: tag.decoded() for name, tag in self.tag_codes(ids.copy()).items()}

    def tag_codes(self, sensor_ids: np.ndarray) -> dict[str, TagCodes]:
        """Column name -> the tag column of ``sensor_ids`` in compact form (see ``TagCodes``), in tag order.

        The same mapping as ``tag_values``, without materialising the values: a non-id tag costs one small integer
        per sensor (its mixed-radix digit), and the id tag holds ``sensor_ids`` itself (not a copy)."""
        ids = np.asarray(sensor_ids, dtype=np.int64)
        if ids.size and ids.min() < 1:
            raise ValueError(f"sensor ids count from 1, got {int(ids.min())}")
        remaining = ids - 1
        by_name: dict[str, TagCodes] = {}
        for name, values in reversed(self._digits):
            remaining, digit = np.divmod(remaining, len(values))
            by_name[name] = TagCodes(digit.astype(np.min_scalar_type(len(values) - 1)), values)
        return {tag.name: TagCodes(ids, None) if tag.is_id else by_name[tag.name] for tag in self.tags}


@dataclass(frozen=True)
class TagCodes:
    """One tag column for a set of sensors: a code per sensor, and the tag value each code stands for.

    ``values[codes[i]]`` is the tag value of sensor i; when ``values`` is None (the id tag) the code is the value.
    Non-id tags have a handful of distinct values, so their codes fit in one or two bytes per sensor and their
    encodings can be prepared once per distinct value."""

    codes: np.ndarray
    values: np.ndarray | None

    def decoded(self, positions=slice(None)) -> np.ndarray:
        """The tag values of the sensors at ``positions`` (a slice or an index array)."""
        codes = self.codes[positions]
        return codes if self.values is None else self.values[codes]


def load_model(path: str | os.PathLike[str]) -> Model:
    """Read and validate a model file. A bare name without directory or suffix (``"temperature"``) that is not a
    file in the working directory means the shipped ``models/<name>.json``."""
    source = os.fspath(path)
    file = Path(source)
    bare_name = file.name == source and not file.suffix
    if bare_name and not file.exists():
        file = MODELS_DIR / f"{source}.json"
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        shipped = ", ".join(sorted(p.stem for p in MODELS_DIR.glob("*.json")))
        hint = f"check the path or use a shipped model ({shipped})" if bare_name else "check the path"
        raise ModelError(f"model {source}: file not found; {hint}") from None
    except OSError as error:
        raise ModelError(f"model {source}: cannot read the file ({error.strerror}); check the path") from None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise ModelError(f"model {source}: not valid JSON ({_one_line(str(error))}); fix the syntax") from None
    return parse_model(obj, source=source)


def parse_model(obj: Any, source: str = "<model>") -> Model:
    """Validate a decoded model object (as from ``json.loads``); ``source`` names it in error messages."""
    return _Parser(source).model(obj)


class _Parser:
    """Validation with the source at hand, so that every error names the file and the key it is about."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> ModelError:
        place = f"model {self.source}: {where}: " if where else f"model {self.source}: "
        return ModelError(_one_line(place + problem))

    def model(self, obj: Any) -> Model:
        if not isinstance(obj, dict):
            raise self.fail("", f'the top level is {_kind(obj)}, not an object; write {{"<table>": {{...}}}}')
        description = obj.get("description")
        tables = [key for key in obj if key != "description"]
        if not tables:
            raise self.fail("", 'no table key; add one key naming the table and holding "tags" and "fields"')
        if len(tables) > 1:
            names = ", ".join(f'"{t}"' for t in tables)
            raise self.fail("", f"more than one table key ({names}); keep exactly one besides description")
        table = tables[0]
        body = obj[table]
        where = f'table "{table}"'
        if not isinstance(body, dict):
            raise self.fail(where, f'expected an object, got {_kind(body)}; give it "tags" and "fields"')
        if "tags" not in body:
            raise self.fail(where, 'no "tags"; add "tags" with at least the id tag, e.g. {"sensor_id": "id"}')
        # Older tsperf releases called the fields "metrics"; accept those files unchanged.
        fields_key = "fields" if "fields" in body or "metrics" not in body else "metrics"
        if fields_key not in body:
            raise self.fail(where, 'no "fields"; add "fields" with at least one FLOAT or BOOL field')
        tags = self.tags(body["tags"])
        fields = self.fields(body[fields_key], fields_key)
        self.unique_columns(tags, fields)
        return Model(
            table=table,
            description=description if isinstance(description, str) else None,
            tags=tags,
            fields=fields,
            source=self.source,
        )

    def tags(self, obj: Any) -> tuple[TagSpec, ...]:
        if not isinstance(obj, dict):
            raise self.fail(
                '"tags"', f'expected an object, got {_kind(obj)}; write e.g. {{"plant": 10, "sensor_id": "id"}}'
            )
        tags = tuple(self.tag(name, value) for name, value in obj.items() if name != "description")
        id_tags = [tag.name for tag in tags if tag.is_id]
        if not id_tags:
            raise self.fail('"tags"', 'no tag is "id"; add one, e.g. "sensor_id": "id", to carry the sensor id')
        if len(id_tags) > 1:
            names = ", ".join(f'"{t}"' for t in id_tags)
            raise self.fail('"tags"', f'more than one tag is "id" ({names}); keep one')
        return tags

    def tag(self, name: str, value: Any) -> TagSpec:
        where = f'tag "{name}"'
        if value == "id":
            return TagSpec(name, None, True)
        if _is_int(value):
            if value < 1:
                raise self.fail(where, f"{value} is not a count of values; use an integer >= 1")
            return TagSpec(name, range(value), False)
        if isinstance(value, list):
            if not value:
                raise self.fail(where, "the value list is empty; list at least one value")
            if not (all(isinstance(v, str) for v in value) or all(_is_int(v) for v in value)):
                raise self.fail(where, f"{_show(value)} mixes kinds of values; list only strings or only integers")
            seen: set[int | str] = set()
            for v in value:
                if v in seen:
                    raise self.fail(where, f"value {_show(v)} is listed twice; list each value once")
                seen.add(v)
            return TagSpec(name, tuple(value), False)
        raise self.fail(where, f'{_show(value)} is not a tag kind; use a count (e.g. 10), a list of values, or "id"')

    def fields(self, obj: Any, key: str) -> tuple[FloatField | BoolField, ...]:
        if not isinstance(obj, dict):
            raise self.fail(f'"{key}"', f"expected an object of fields, got {_kind(obj)}")
        fields = tuple(self.field(name, spec) for name, spec in obj.items() if name != "description")
        if not fields:
            raise self.fail(f'"{key}"', "no fields; add at least one FLOAT or BOOL field")
        return fields

    def field(self, name: str, spec: Any) -> FloatField | BoolField:
        where = f'field "{name}"'
        if not isinstance(spec, dict):
            raise self.fail(where, f'expected an object with "key", "type" and parameters, got {_kind(spec)}')
        column = self.value(where, spec, "key", 'add "key": {"value": "<column name>"}')
        if not isinstance(column, str) or not column:
            raise self.fail(where, f'key {_show(column)} is not a column name; write "key": {{"value": "<name>"}}')
        kind = self.value(where, spec, "type", 'add "type": {"value": "FLOAT"} or {"value": "BOOL"}')
        kind = kind.upper() if isinstance(kind, str) else kind
        if kind == "FLOAT":
            return self.float_field(where, name, column, spec)
        if kind == "BOOL":
            if "precision" in spec:
                raise self.fail(where, '"precision" applies to FLOAT fields; remove it from this BOOL field')
            ratio = self.number(where, spec, "true_ratio")
            if not 0 <= ratio <= 1:
                raise self.fail(where, f"true_ratio ({ratio}) is outside 0..1; use a probability between 0 and 1")
            return BoolField(name, column, ratio)
        raise self.fail(where, f"type {_show(kind)} is not supported; use FLOAT or BOOL")

    def float_field(self, where: str, name: str, column: str, spec: dict) -> FloatField:
        p = {param: self.number(where, spec, param) for param in _FLOAT_PARAMS}
        lo, hi, mean, stdev = p["min"], p["max"], p["mean"], p["stdev"]
        rate, length = p["error_rate"], p["error_length"]
        if lo > hi:
            raise self.fail(where, f"min ({lo}) is greater than max ({hi}); make min <= max")
        if not lo <= mean <= hi:
            raise self.fail(where, f"mean ({mean}) is outside min..max ({lo}..{hi}); put mean between min and max")
        if stdev < 0:
            raise self.fail(where, f"stdev ({stdev}) is negative; use a value >= 0")
        if p["variance"] < 0:
            raise self.fail(where, f"variance ({p['variance']}) is negative; use a step size >= 0")
        if not 0 <= rate <= 1:
            raise self.fail(where, f"error_rate ({rate}) is outside 0..1; use a share of values between 0 and 1")
        if rate > 0:
            if length < 1:
                raise self.fail(where, f"error_length ({length}) is below 1 step; use a value >= 1")
            # Error runs are separated by at least one normal value, so runs averaging L steps cover at most
            # L / (L + 1) of the values.
            if rate > length / (length + 1):
                raise self.fail(
                    where,
                    f"error_rate ({rate}) is unreachable with error_length ({length}): runs of that length "
                    f"cover at most {length / (length + 1):.4g} of the values; lower error_rate or raise error_length",
                )
            if not (lo < mean - stdev or mean + stdev < hi):
                raise self.fail(
                    where,
                    f"error_rate is above 0 but min..max ({lo}..{hi}) leaves no room outside mean ± stdev "
                    f"({mean} ± {stdev}) for error values; widen min..max, lower stdev or set error_rate to 0",
                )
        return FloatField(name, column, **p, precision=self.precision(where, spec))

    def precision(self, where: str, spec: dict) -> int | None:
        if "precision" not in spec:
            return None
        entry = spec["precision"]
        value = entry.get("value") if isinstance(entry, dict) else entry
        if not _is_int(value) or not 0 <= value <= MAX_PRECISION:
            raise self.fail(
                where,
                f"precision {_show(value)} is not a number of decimal places; "
                f'write "precision": {{"value": n}} with n from 0 to {MAX_PRECISION}',
            )
        return value

    def value(self, where: str, spec: dict, param: str, fix: str) -> Any:
        entry = spec.get(param)
        if not isinstance(entry, dict) or "value" not in entry:
            raise self.fail(where, f'"{param}" is missing or has no "value"; {fix}')
        return entry["value"]

    def number(self, where: str, spec: dict, param: str) -> float:
        value = self.value(where, spec, param, f'add "{param}": {{"value": <number>}}')
        if not _is_number(value):
            raise self.fail(where, f"{param} {_show(value)} is not a number; write a plain number such as 0.5")
        return float(value)

    def unique_columns(self, tags: tuple[TagSpec, ...], fields: tuple[FloatField | BoolField, ...]) -> None:
        owners: dict[str, str] = {}
        for column, owner in [(t.name, f'tag "{t.name}"') for t in tags] + [
            (f.column, f'field "{f.name}"') for f in fields
        ]:
            if column in owners:
                raise self.fail(f'column "{column}"', f"used by both {owners[column]} and {owner}; rename one of them")
            owners[column] = owner


def _is_int(value: Any) -> bool:
    # JSON true/false arrive as bool, which Python counts as int; they are not counts or numbers here.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if _is_number(value) else type(value).__name__)


def _show(value: Any, limit: int = 60) -> str:
    """A value as it would appear in the JSON file, shortened to keep the message on one readable line."""
    if isinstance(value, float) and not math.isfinite(value):
        text = repr(value)  # orjson would write null
    else:
        try:
            text = orjson.dumps(value).decode()
        except TypeError:
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())
