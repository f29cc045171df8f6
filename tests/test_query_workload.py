"""The query workload's data front against the CrateDB test double, on a clock of the test's own: queries wait for
rows, use a front only once it is old enough, and start over when the table was dropped and written anew."""

import locust  # noqa: F401
from locust.argument_parser import get_parser
from locust.event import Events

import orjson
import pytest
from cratedb_double import DoubleProcess

from dg_locust.client import CrateHttpClient
from dg_locust.model import load_model
from dg_locust.options import Settings, add_options
from dg_locust.queries import shipped_queries
from dg_locust.query_ledger import QueryLedger
from dg_locust.query_workload import DROP_WAIT_S, FRONT_REFRESH_S, VISIBILITY_LAG_S, QueryWorkload, workload_table

MODEL = load_model("temperature")
INGEST_TS = 1_600_000_000


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def double(tmp_path):
    with DoubleProcess(tmp_path / "crate.sqlite") as server:
        yield server


def _settings(*args: str) -> Settings:
    parser = get_parser()
    add_options(parser)
    options = parser.parse_args(["--ingest-ts", str(INGEST_TS), "--id-end", "5", "--seed", "1", *args])
    return Settings.from_options(options)


def _write(client, table, steps: range) -> None:
    tags = MODEL.tag_values(range(1, 6))
    rows = [
        [INGEST_TS * 1000 + step * 500, int(tags["plant"][s]), int(tags["line"][s]), s + 1, 6.5, False]
        for step in steps
        for s in range(5)
    ]
    body = orjson.dumps({"stmt": table.insert_sql("bulk"), "bulk_args": rows})
    assert client.insert(body, len(rows), "bulk").inserted == len(rows)


def _workload(double, settings, clock, **extra):
    ledger, events = QueryLedger(), Events()
    client = CrateHttpClient((double.url,))
    workload = QueryWorkload(
        class_name="QueryUser",
        settings=settings,
        model=MODEL,
        specs=shipped_queries(MODEL, workload_table(MODEL, settings)),
        client=client,
        ledger=ledger,
        request_event=events.request,
        clock=clock,
        **extra,
    )
    return workload, ledger, client


def _sent(ledger) -> dict[str, tuple[int, int]]:
    return {t.query: (t.requests, t.failures) for t in ledger.per_query()}


def test_queries_wait_for_rows_and_for_the_front_to_be_visible_everywhere(double):
    clock = Clock()
    settings = _settings()
    workload, ledger, client = _workload(double, settings, clock)
    assert workload.run_next().wait_s > 0  # no table yet: the front read answers "no data", nothing else is sent
    assert _sent(ledger) == {"data_front": (1, 0)}
    client.execute(workload.table.create_sql())
    _write(client, workload.table, range(100))
    clock.now += 1
    assert workload.run_next().wait_s > 0  # rows found, but the front is too young to use
    clock.now += VISIBILITY_LAG_S
    for _ in range(30):
        workload.run_next()
    sent = _sent(ledger)
    assert sent.pop("data_front") == (3, 0)  # the third, due with the promotion, replaces the front to use next
    assert sum(requests for requests, _ in sent.values()) == 30 and all(failed == 0 for _, failed in sent.values())
    client.close()


def test_a_table_dropped_and_written_anew_makes_the_front_start_over(double):
    clock = Clock()
    settings = _settings()
    workload, ledger, client = _workload(double, settings, clock)
    client.execute(workload.table.create_sql())
    _write(client, workload.table, range(1000))
    workload.run_next()
    clock.now += VISIBILITY_LAG_S
    workload.run_next()
    assert workload.front is not None and workload.front.newest_ms == INGEST_TS * 1000 + 999 * 500
    # Another run drops the table and writes fewer rows: the old front's windows would find nothing there.
    client.execute(workload.table.drop_sql())
    client.execute(workload.table.create_sql())
    _write(client, workload.table, range(10))
    clock.now += FRONT_REFRESH_S
    workload.run_next()
    assert workload.front is None  # the sensors it knew are missing from the answer: forgotten
    clock.now += 1
    workload.run_next()
    clock.now += VISIBILITY_LAG_S
    for _ in range(30):
        workload.run_next()
    assert workload.front.newest_ms == INGEST_TS * 1000 + 9 * 500
    failures = {query: failed for query, (_, failed) in _sent(ledger).items() if failed}
    assert not failures
    client.close()


def test_with_drop_table_queries_wait_until_the_ingest_users_prepared_the_table(double):
    clock = Clock()
    prepared = []
    workload, ledger, client = _workload(
        double, _settings("--drop-table"), clock, ingest_prepared=lambda: bool(prepared)
    )
    assert workload.run_next().wait_s > 0 and _sent(ledger) == {}
    prepared.append(True)
    workload.run_next()
    assert _sent(ledger) == {"data_front": (1, 0)}
    # Where no ingest user of the process prepares it (a worker that only queries), they stop waiting in time.
    other, other_ledger, other_client = _workload(
        double, _settings("--drop-table"), clock, ingest_prepared=lambda: False
    )
    other.run_next()
    assert _sent(other_ledger) == {}
    clock.now += DROP_WAIT_S
    other.run_next()
    assert _sent(other_ledger) == {"data_front": (1, 0)}
    client.close()
    other_client.close()
