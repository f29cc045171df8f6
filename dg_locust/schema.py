"""The SQL text dg-locust sends: CREATE TABLE, the INSERT for each method, REFRESH and the verify count.

Identifiers are always validated and double-quoted, never spliced into SQL as given, and values always travel as
parameters (``args`` / ``bulk_args``), never inline: CrateDB 6 refuses statements over 256 KiB anyway.
The column order of a table is: ``ts``, the tags in model order, the fields in model order, then the generated
partition column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dg_locust.errors import OptionError
from dg_locust.model import BoolField

# CrateDB refuses table names with whitespace or any of \ / * ? " < > | , # and names starting with an underscore;
# we accept the plain identifier subset so a name never needs escaping inside the quotes.
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,254}")
DEFAULT_SCHEMA = "doc"
TS_COLUMN = "ts"


def check_table_name(name: str) -> tuple[str, str]:
    """Split ``name`` or ``schema.name`` into (schema, table); raise OptionError if it is not a valid identifier."""
    parts = name.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(part) for part in parts):
        raise OptionError(
            f"table name {name!r} is not valid: use letters, digits and underscores, as name or schema.name"
        )
    return (DEFAULT_SCHEMA, parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def quote(identifier: str) -> str:
    """Double-quote one identifier (embedded quotes doubled, as SQL requires)."""
    return '"' + identifier.replace('"', '""') + '"'


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str


@dataclass(frozen=True)
class TableSchema:
    """A table's name and typed columns, and the statements that create, fill, refresh and count it."""

    schema: str
    name: str
    columns: tuple[Column, ...]
    partition: str  # day, week, month or none
    shards: int
    replicas: str

    @property
    def qualified(self) -> str:
        return f"{quote(self.schema)}.{quote(self.name)}"

    @property
    def display_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    @property
    def partition_column(self) -> str | None:
        return None if self.partition == "none" else f"g_{TS_COLUMN}_{self.partition}"

    def create_sql(self) -> str:
        definitions = [f"{quote(c.name)} {c.sql_type}" for c in self.columns]
        tail = f" CLUSTERED INTO {int(self.shards)} SHARDS"
        if self.partition_column:
            definitions.append(
                f"{quote(self.partition_column)} TIMESTAMP WITH TIME ZONE GENERATED ALWAYS AS "
                f"date_trunc('{self.partition}', {quote(TS_COLUMN)})"
            )
            tail += f" PARTITIONED BY ({quote(self.partition_column)})"
        tail += f" WITH (number_of_replicas = '{self.replicas}')"
        return f"CREATE TABLE IF NOT EXISTS {self.qualified} ({', '.join(definitions)}){tail}"

    def drop_sql(self) -> str:
        return f"DROP TABLE IF EXISTS {self.qualified}"

    def refresh_sql(self) -> str:
        return f"REFRESH TABLE {self.qualified}"

    def insert_sql(self, method: str) -> str:
        """The INSERT of an insert method: UNNEST of one array per column (unnest, pg-unnest) or one row of
        placeholders (bulk, pg); ``?`` placeholders, which the pg client numbers ($1, $2, ...)."""
        names = ", ".join(quote(name) for name in self.column_names)
        if method in ("unnest", "pg-unnest"):
            placeholders = ", ".join("?" for _ in self.columns)
            return f"INSERT INTO {self.qualified} ({names}) (SELECT * FROM UNNEST({placeholders}))"
        placeholders = ", ".join("?" for _ in self.columns)
        return f"INSERT INTO {self.qualified} ({names}) VALUES ({placeholders})"

    def count_sql(self, id_column: str) -> str:
        """Rows of a sensor-id range and a ts window (args: first id, last id, first ts ms, last ts ms)."""
        return (
            f"SELECT count(*) FROM {self.qualified} WHERE {quote(id_column)} BETWEEN ? AND ? "
            f"AND {quote(TS_COLUMN)} >= ? AND {quote(TS_COLUMN)} <= ?"
        )


def table_for_model(model, *, table_option: str, partition: str, shards: int, replicas: str) -> TableSchema:
    """The table of a model: ``ts``, one typed column per tag and per field; ``--table`` overrides the name."""
    schema, name = check_table_name(table_option or model.table)
    columns = [Column(TS_COLUMN, "TIMESTAMP WITH TIME ZONE")]
    columns += [Column(tag.name, tag.sql_type) for tag in model.tags]
    columns += [Column(f.column, "BOOLEAN" if isinstance(f, BoolField) else "DOUBLE PRECISION") for f in model.fields]
    return TableSchema(schema, name, tuple(columns), partition, shards, replicas)
