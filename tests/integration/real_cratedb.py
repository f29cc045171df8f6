"""The real CrateDB the integration suite runs against: where it is, who logs in, and SQL over its HTTP endpoint.

``RealCrateDB.from_environment()`` reads ``DG_CRATEDB_URL`` (the node the suite queries and loads), the optional
``DG_CRATEDB_URLS`` (comma-separated, several nodes of one cluster, for the several-hosts test) and
``DG_CRATEDB_USER`` / ``DG_CRATEDB_PASSWORD``. ``sql()`` posts one statement to ``/_sql`` with plain urllib, so the
checks do not go through any code of the product they check. Table names are made per test
(``doc.it_<test>_<random>``) and only those are ever dropped: the database may be shared.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass


class SqlError(Exception):
    """A statement CrateDB answered with an error: the HTTP status and CrateDB's error code and message."""

    def __init__(self, status: int, code: int, message: str):
        super().__init__(f"HTTP {status}, code {code}: {message}")
        self.status = status
        self.code = code


@dataclass(frozen=True)
class RealCrateDB:
    url: str
    urls: tuple[str, ...]  # every node the several-hosts test may use (just ``url`` unless DG_CRATEDB_URLS is set)
    user: str | None
    password: str | None

    @classmethod
    def from_environment(cls) -> RealCrateDB:
        url = os.environ["DG_CRATEDB_URL"].rstrip("/")
        urls = tuple(u.strip().rstrip("/") for u in os.environ.get("DG_CRATEDB_URLS", "").split(",") if u.strip())
        return cls(
            url=url,
            urls=urls or (url,),
            user=os.environ.get("DG_CRATEDB_USER") or None,
            password=os.environ.get("DG_CRATEDB_PASSWORD") or None,
        )

    def product_environment(self) -> dict[str, str]:
        """The environment variables that give dg-locust this database's credentials (the password never on the
        command line, as the README advises)."""
        environment = {}
        if self.user:
            environment["USERNAME"] = self.user
        if self.password:
            environment["PASSWORD"] = self.password
        return environment

    def sql(self, stmt: str, args: list | None = None, *, user: str | None = None, password: str | None = None):
        """Run one statement as the suite's user (or ``user`` / ``password``); return the parsed answer."""
        body = {"stmt": stmt, **({"args": args} if args is not None else {})}
        request = urllib.request.Request(
            f"{self.url}/_sql", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        user, password = (user, password) if user else (self.user, self.password)
        if user:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            try:
                problem = json.loads(text)["error"]
                raise SqlError(error.code, problem.get("code", 0), problem.get("message", "")) from None
            except (ValueError, KeyError, TypeError):
                raise SqlError(error.code, 0, text) from None

    def rows(self, stmt: str, args: list | None = None) -> list[list]:
        return self.sql(stmt, args)["rows"]

    def value(self, stmt: str, args: list | None = None):
        """The single value a one-row, one-column query returns."""
        (row,) = self.rows(stmt, args)
        (value,) = row
        return value

    def version(self) -> str:
        return self.value("SELECT version['number'] FROM sys.nodes ORDER BY name LIMIT 1")

    def node_count(self) -> int:
        return self.value("SELECT count(*) FROM sys.nodes")


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


@dataclass(frozen=True)
class TestTable:
    """A table of one test: ``schema.name`` as dg-locust's ``--table`` takes it, and the checks run on it."""

    __test__ = False  # not a pytest test class, despite its name

    db: RealCrateDB
    schema: str
    name: str

    @classmethod
    def unique(cls, db: RealCrateDB, test: str, *, schema: str = "doc", name: str | None = None) -> TestTable:
        suffix = secrets.token_hex(3)
        return cls(db, schema, name or f"it_{test}_{suffix}")

    @property
    def option(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def qualified(self) -> str:
        return f"{quote(self.schema)}.{quote(self.name)}"

    def exists(self) -> bool:
        found = "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?"
        return self.db.value(found, [self.schema, self.name]) == 1

    def drop(self) -> None:
        self.db.sql(f"DROP TABLE IF EXISTS {self.qualified}")

    def refresh(self) -> None:
        self.db.sql(f"REFRESH TABLE {self.qualified}")

    def count(self) -> int:
        self.refresh()
        return self.db.value(f"SELECT count(*) FROM {self.qualified}")

    def column_types(self) -> dict[str, str]:
        """Top-level column name -> CrateDB's data_type, from information_schema.columns."""
        stmt = (
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position"
        )
        return dict(self.db.rows(stmt, [self.schema, self.name]))

    def duplicates(self, key: tuple[str, ...]) -> int:
        """How many values of ``key`` occur more than once."""
        columns = ", ".join(quote(c) for c in key)
        grouped = f"SELECT {columns} FROM {self.qualified} GROUP BY {columns} HAVING count(*) > 1"
        return self.db.value(f"SELECT count(*) FROM ({grouped}) d")

    def tag_combinations(self, id_column: str, tags: tuple[str, ...]) -> dict[int, list[tuple]]:
        """Sensor id -> the distinct tag combinations its rows carry (one each when the mapping is right)."""
        columns = ", ".join(quote(c) for c in (id_column, *tags))
        found: dict[int, list[tuple]] = {}
        for sensor, *combination in self.db.rows(f"SELECT DISTINCT {columns} FROM {self.qualified} LIMIT 1000000"):
            found.setdefault(sensor, []).append(tuple(combination))
        return found

    def rows_per_sensor(self, id_column: str) -> dict[int, int]:
        stmt = f"SELECT {quote(id_column)}, count(*) FROM {self.qualified} GROUP BY 1 LIMIT 1000000"
        return dict(self.db.rows(stmt))
