import locust  # noqa: F401  (first: gevent monkey-patches sockets before anything else imports them)

import gevent
import numpy as np
import psycopg.waiting
import pytest
from cratedb_double import count_rows, fetch_rows
from pg_double import PgDoubleProcess, parse_array_literal
from support import free_port

from dg_locust.batch import Batch, PgInsert, RowLayout
from dg_locust.client import CrateError
from dg_locust.feed import FeedPlan, RowFeed
from dg_locust.model import load_model
from dg_locust.pg_client import CratePgClient, number_placeholders, pg_servers
from dg_locust.schema import table_for_model

USER, PASSWORD = "dg", "dgpass"
MODEL = load_model("temperature")
TABLE = table_for_model(MODEL, table_option="doc.pgrows", partition="week", shards=2, replicas="0")


@pytest.fixture(scope="module")
def double(tmp_path_factory):
    with PgDoubleProcess(tmp_path_factory.mktemp("pg") / "crate.sqlite", users={USER: PASSWORD}) as running:
        yield running


@pytest.fixture
def client(double):
    double.configure(clear_faults=True)
    pg = CratePgClient(pg_servers(double.pg_url, pg_port=5432), username=USER, password=PASSWORD, timeout=5)
    pg.execute(TABLE.drop_sql())
    pg.execute(TABLE.create_sql())
    yield pg
    pg.close()


def batches(rows: int, count: int, sensors: int = 50):
    feed = RowFeed(MODEL, TABLE, FeedPlan(np.arange(1, sensors + 1), 1_700_000_000.0, 0.5, "fast", 0, 7))
    return [feed.take(rows) for _ in range(count)]


def insert(client, batch: Batch, method: str):
    return client.insert(batch.encode(method, TABLE.insert_sql(method)), batch.row_count, method)


def test_psycopg_waits_cooperatively_under_gevent():
    # Its C wait function would block every greenlet of the process while one waits for CrateDB.
    assert psycopg.waiting.wait is not getattr(psycopg.waiting, "wait_c", None)


@pytest.mark.parametrize("method", ["pg", "pg-unnest"])
def test_rows_stored_are_the_rows_counted_inserted(client, double, method):
    outcomes = [insert(client, batch, method) for batch in batches(700, 3)]
    assert [(o.inserted, o.failed, o.in_doubt, o.error) for o in outcomes] == [(700, 0, 0, None)] * 3
    assert count_rows(double.db_path, TABLE.display_name) == 2100


@pytest.mark.parametrize("method", ["pg", "pg-unnest"])
def test_rows_arrive_with_their_values(client, double, method):
    [batch] = batches(120, 1, sensors=40)
    assert insert(client, batch, method).inserted == 120
    stored = fetch_rows(double.db_path, TABLE.display_name)
    columns = batch.columns
    for index, name in enumerate(TABLE.column_names):
        want = [int(v) if isinstance(v, np.bool_ | bool) else v for v in np.asarray(columns[index]).tolist()]
        assert [row[name] for row in stored] == want, name


def test_refused_rows_are_counted_failed_row_by_row_in_pipeline_mode(client, double):
    double.configure(row_rejections={"fraction": 0.25})
    outcome = insert(client, batches(400, 1)[0], "pg")
    assert outcome.failed == 100 and outcome.inserted == 300 and outcome.in_doubt == 0
    assert outcome.error == "100 of 400 rows refused"
    assert count_rows(double.db_path, TABLE.display_name) == 300


def test_rows_unnest_did_not_insert_are_counted_failed(client, double):
    double.configure(row_rejections={"fraction": 0.25})
    outcome = insert(client, batches(400, 1)[0], "pg-unnest")
    assert (outcome.inserted, outcome.failed, outcome.in_doubt) == (300, 100, 0)
    assert count_rows(double.db_path, TABLE.display_name) == 300


@pytest.mark.parametrize("fault", ["reset_before_response", "reset_mid_response"])
@pytest.mark.parametrize("method", ["pg", "pg-unnest"])
def test_a_connection_broken_before_the_answer_leaves_the_batch_in_doubt(client, double, fault, method):
    double.configure(**{fault: {"times": 1}})
    outcome = insert(client, batches(300, 1)[0], method)
    assert (outcome.inserted, outcome.failed, outcome.in_doubt) == (0, 0, 300)
    assert "broke" in outcome.error
    # the rows did land (the fault stores them): in doubt means exactly that
    assert count_rows(double.db_path, TABLE.display_name) == 300
    # the next batch gets a fresh connection and goes through
    assert insert(client, batches(300, 1)[0], method).inserted == 300


def test_no_answer_within_the_timeout_is_in_doubt_and_overload(client, double):
    double.configure(slow={"seconds": 4, "times": 1})
    short = CratePgClient(pg_servers(double.pg_url, pg_port=5432), username=USER, password=PASSWORD, timeout=1)
    try:
        outcome = insert(short, batches(200, 1)[0], "pg")
    finally:
        short.close()
    assert (outcome.inserted, outcome.failed, outcome.in_doubt, outcome.overload) == (0, 0, 200, True)
    assert "no answer" in outcome.error


@pytest.mark.parametrize("method", ["pg", "pg-unnest"])
def test_a_circuit_breaker_error_is_in_doubt_and_overload(client, double, method):
    double.configure(circuit_breaker={"times": 1})
    outcome = insert(client, batches(250, 1)[0], method)
    assert (outcome.inserted, outcome.failed, outcome.in_doubt, outcome.overload) == (0, 0, 250, True)
    assert "XX000" in outcome.error and "breaker would use" in outcome.error  # CrateDB 6.4's circuit breaker wording
    assert insert(client, batches(250, 1)[0], method).inserted == 250


def test_a_statement_refused_before_execution_fails_its_rows(client, double):
    missing = PgInsert('INSERT INTO "doc"."nosuch" ("a") VALUES (?)', [(1,), (2,)])
    outcome = client.insert(missing, 2, "pg")
    assert (outcome.inserted, outcome.failed, outcome.in_doubt, outcome.fatal) == (0, 2, 0, False)
    assert "42P01" in outcome.error


def test_a_greenlet_waiting_for_crate_lets_the_others_run(client, double):
    double.configure(slow={"seconds": 1.0, "times": 1})
    ticks = []

    def tick():
        while True:
            ticks.append(1)
            gevent.sleep(0.01)

    ticker = gevent.spawn(tick)
    try:
        outcome = insert(client, batches(100, 1)[0], "pg")
    finally:
        ticker.kill()
    assert outcome.inserted == 100
    assert len(ticks) > 20  # the ticker ran all along the second the insert waited


def test_a_wrong_password_is_refused_with_one_line_naming_the_user(double):
    wrong = CratePgClient(pg_servers(double.pg_url, pg_port=5432), username=USER, password="nope", timeout=3)
    with pytest.raises(CrateError) as refused:
        wrong.check_reachable()
    assert refused.value.is_auth
    assert str(refused.value) == (
        f"CrateDB at {double.pg_url} refused user 'dg': password authentication failed for user \"dg\""
    )
    assert "nope" not in str(refused.value)
    outcome = wrong.insert(batches(10, 1)[0].encode("pg", TABLE.insert_sql("pg")), 10, "pg")
    assert (outcome.failed, outcome.fatal) == (10, True)


def test_a_closed_port_is_unreachable_and_nothing_is_counted_sent():
    closed = CratePgClient(pg_servers(f"postgresql://127.0.0.1:{free_port()}", pg_port=5432), timeout=1)
    with pytest.raises(CrateError) as unreachable:
        closed.check_reachable()
    assert not unreachable.value.is_auth
    assert "cannot reach CrateDB at postgresql://127.0.0.1:" in str(unreachable.value)
    assert "Connection refused" in str(unreachable.value)
    outcome = closed.insert(batches(10, 1)[0].encode("pg", TABLE.insert_sql("pg")), 10, "pg")
    assert (outcome.inserted, outcome.failed, outcome.in_doubt, outcome.unreachable) == (0, 10, 0, True)


def test_statements_answer_as_the_http_client_does(client, double):
    insert(client, batches(100, 1)[0], "pg-unnest")
    client.execute(TABLE.refresh_sql())
    counted = client.execute(TABLE.count_sql("sensor_id"), [1, 500, 0, 2**62])
    assert counted["rows"] == [[100]]
    with pytest.raises(CrateError) as exists:
        client.execute(TABLE.create_sql().replace(" IF NOT EXISTS", ""))
    assert exists.value.status == 409  # what the pipeline takes as a lost CREATE race, as over HTTP


def test_hosts_map_to_the_postgresql_port_and_tls_options_to_sslmode():
    [http] = pg_servers("http://db:4200", pg_port=5432)
    assert (http.host, http.port, http.sslmode) == ("db", 5432, "prefer")
    [own] = pg_servers("postgresql://db:6432", pg_port=5432)
    assert (own.port, own.url) == (6432, "postgresql://db:6432")
    assert pg_servers("postgres://db", pg_port=7000)[0].port == 5432
    assert pg_servers("db:4200", pg_port=5433)[0].port == 5433
    [tls] = pg_servers("https://db:4200", pg_port=5432)
    assert (tls.sslmode, tls.sslrootcert) == ("verify-full", "system")
    assert pg_servers("http://db:4200", pg_port=5432, ca_cert="/ca.pem")[0].sslrootcert == "/ca.pem"
    assert pg_servers("https://db:4200", pg_port=5432, verify_ssl=False)[0].sslmode == "require"
    assert [s.host for s in pg_servers("http://a:4200,postgresql://b:5433", pg_port=5432)] == ["a", "b"]


def test_placeholders_are_numbered_outside_quotes():
    assert number_placeholders("INSERT INTO \"t?\" (a, b) VALUES (?, '?', ?)") == (
        "INSERT INTO \"t?\" (a, b) VALUES ($1, '?', $2)"
    )


def test_pg_arrays_hold_the_same_values_as_the_columns():
    layout = RowLayout(
        ["ts", "city", "id", "kwh", "on"],
        "ts",
        {"city": np.array(['say "hi"', "a,b", "back\\slash", "x}y"]), "id": np.arange(1, 5)},
        ["kwh", "on"],
        base_ms=1_600_000_000_000,
        delta_ms=500.0,
    )
    kwh, on = np.array([1.5, -2.25e-7, 3.0, 1e300, 0.1, 2.0]), np.array([True, False, True, True, False, True])
    batch = Batch(row_count=6, first_step=0, last_step=1, layout=layout, first_row=2, fields=(kwh, on))
    arrays = batch.pg_arrays()
    assert [type(a).__name__ for a in arrays] == ["Int8Array", "TextArray", "Int8Array", "Float8Array", "BoolArray"]
    assert arrays[0] == b"{1600000000000,1600000000000,1600000000500,1600000000500,1600000000500,1600000000500}"
    assert parse_array_literal(arrays[1].decode(), 25) == [
        "back\\slash",
        "x}y",
        'say "hi"',
        "a,b",
        "back\\slash",
        "x}y",
    ]
    assert parse_array_literal(arrays[3].decode(), 701) == kwh.tolist()
    assert parse_array_literal(arrays[4].decode(), 16) == on.tolist()


def test_text_tags_with_control_characters_are_quoted_for_postgresql():
    layout = RowLayout(
        ["ts", "note", "v"], "ts", {"note": np.array(["tab\there", "plain"])}, ["v"], base_ms=0, delta_ms=1000.0
    )
    assert not layout.pg_text_safe
    batch = Batch(row_count=2, first_step=0, last_step=0, layout=layout, first_row=0, fields=(np.array([1.0, 2.0]),))
    assert parse_array_literal(batch.pg_arrays()[1].decode(), 25) == ["tab\there", "plain"]
