"""The integration suite runs only against a real CrateDB named by ``DG_CRATEDB_URL``; without it, one skip line.

Without the variable the suite's modules are not even collected: a single placeholder item stands for the whole
folder and skips with one reason, so ``pytest -q`` (and ``-ra``) print one line for it, not one per test, and CI
stays green. With it, ``db`` is the database, ``new_table`` makes a table name of the test's own that is dropped
at the end, whatever the test left, and ``record_run`` notes what a run counted and what the database kept.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_cratedb import RealCrateDB, TestTable  # noqa: E402

NO_DATABASE = "integration suite: set DG_CRATEDB_URL (and DG_CRATEDB_USER / DG_CRATEDB_PASSWORD) to run it"
HERE = Path(__file__).resolve()

if not os.environ.get("DG_CRATEDB_URL"):
    collect_ignore_glob = ["test_*.py"]


class _NoDatabase(pytest.File):
    def collect(self):
        yield _NoDatabaseItem.from_parent(self, name="real_cratedb")


class _NoDatabaseItem(pytest.Item):
    def runtest(self):
        pytest.skip(NO_DATABASE)

    def reportinfo(self):
        return self.path, None, "integration suite against a real CrateDB"


def pytest_collect_file(file_path, parent):
    if file_path == HERE and not os.environ.get("DG_CRATEDB_URL"):
        return _NoDatabase.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def db() -> RealCrateDB:
    if not os.environ.get("DG_CRATEDB_URL"):  # a test module named on the command line is collected anyway
        pytest.skip(NO_DATABASE)
    return RealCrateDB.from_environment()


@pytest.fixture
def record_run(record_property):
    """``record_run(label, result, stored, **extra)``: the run's summary and the rows the database holds, as
    properties of the test in a ``--junitxml`` report (how bench/RESULTS.md's integration figures were collected)."""

    def record(label: str, result, stored: int, **extra) -> None:
        summary = result.summary
        counts = {k: summary[k] for k in ("inserted", "failed", "in_doubt")}
        record_property(label, {**counts, "stored": stored, "exit_code": result.exit_code, **extra})

    return record


@pytest.fixture
def new_table(db, request):
    """``new_table(schema=..., name=...)``: a table name for this test; every one made is dropped at the end."""
    made: list[TestTable] = []
    test = request.node.originalname.removeprefix("test_")[:24]

    def make(**names) -> TestTable:
        table = TestTable.unique(db, test, **names)
        made.append(table)
        return table

    yield make
    for table in made:
        table.drop()
