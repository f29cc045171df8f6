import locust  # noqa: F401

import numpy as np
import orjson
import pytest

from dg_locust.batch import encode_bulk, encode_unnest
from dg_locust.model import parse_model
from dg_locust.options import OptionError
from dg_locust.schema import check_table_name, quote, table_for_model

MODEL = {
    "sensors": {
        "tags": {"site": ["north", "south"], "line": 3, "sensor_id": "id"},
        "fields": {
            "temperature": {
                "key": {"value": "value"},
                "type": {"value": "FLOAT"},
                "min": {"value": 1.0},
                "max": {"value": 3.0},
                "mean": {"value": 2.0},
                "stdev": {"value": 0.2},
                "variance": {"value": 0.05},
                "error_rate": {"value": 0.01},
                "error_length": {"value": 2.0},
            },
            "door": {"key": {"value": "door_open"}, "type": {"value": "BOOL"}, "true_ratio": {"value": 0.1}},
        },
    }
}


def make_table(**overrides):
    options = {"table_option": "", "partition": "week", "shards": 4, "replicas": "0-1"} | overrides
    return table_for_model(parse_model(MODEL, "inline"), **options)


def test_create_table_has_typed_quoted_columns_and_partitioning():
    sql = make_table().create_sql()
    assert sql.startswith('CREATE TABLE IF NOT EXISTS "doc"."sensors" ("ts" TIMESTAMP WITH TIME ZONE, ')
    assert '"site" TEXT' in sql and '"line" INTEGER' in sql and '"sensor_id" INTEGER' in sql
    assert '"value" DOUBLE PRECISION' in sql and '"door_open" BOOLEAN' in sql
    assert "GENERATED ALWAYS AS date_trunc('week', \"ts\")" in sql
    assert 'CLUSTERED INTO 4 SHARDS PARTITIONED BY ("g_ts_week")' in sql
    assert "number_of_replicas = '0-1'" in sql
    assert "DROP" not in sql


def test_no_partition_and_table_override():
    table = make_table(partition="none", table_option="metrics.readings", shards=28)
    sql = table.create_sql()
    assert "PARTITIONED" not in sql and "GENERATED" not in sql
    assert '"metrics"."readings"' in sql and "CLUSTERED INTO 28 SHARDS" in sql


def test_insert_statements_use_placeholders_only():
    table = make_table()
    bulk = table.insert_sql("bulk")
    assert bulk == (
        'INSERT INTO "doc"."sensors" ("ts", "site", "line", "sensor_id", "value", "door_open") '
        "VALUES (?, ?, ?, ?, ?, ?)"
    )
    assert table.insert_sql("unnest").endswith("(SELECT * FROM UNNEST(?, ?, ?, ?, ?, ?))")


@pytest.mark.parametrize("name", ["a b", "x;drop", "_hidden", "a.b.c", 'q"uote', "", "1abc"])
def test_invalid_table_names_are_refused(name):
    with pytest.raises(OptionError):
        check_table_name(name)


def test_quote_doubles_embedded_quotes():
    assert quote('we"ird') == '"we""ird"'


def test_encodings_carry_the_same_rows():
    columns = (
        np.array([1000, 1500], dtype=np.int64),
        np.array(["north", "south"]),
        np.array([0, 2], dtype=np.int64),
        np.array([1, 2], dtype=np.int64),
        np.array([2.5, 1.25]),
        np.array([True, False]),
    )
    bulk = orjson.loads(encode_bulk("S", columns))
    assert bulk == {"stmt": "S", "bulk_args": [[1000, "north", 0, 1, 2.5, True], [1500, "south", 2, 2, 1.25, False]]}
    unnest = orjson.loads(encode_unnest("S", columns))
    assert unnest["args"] == [list(map(lambda v: v.item(), c)) if c.dtype.kind != "U" else c.tolist() for c in columns]
