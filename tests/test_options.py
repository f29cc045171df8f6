import locust  # noqa: F401
from locust.argument_parser import get_parser

import math

import pytest

from dg_locust.options import OPTIONS, OptionError, Settings, add_options, parse_hosts


def parse(*args: str, env: dict | None = None, monkeypatch=None) -> Settings:
    parser = get_parser()
    add_options(parser)
    return Settings.from_options(parser.parse_args(list(args)), now=1_700_000_000.3)


def test_defaults_are_documented_values():
    settings = parse()
    assert (settings.id_start, settings.id_end) == (1, 500)
    assert settings.ingest_delta == 0.5
    assert settings.timeout == 30.0
    assert settings.ingest_mode == "fast"
    assert settings.batch_size is None  # auto
    assert settings.ingest_ts == 1_700_000_000.0  # now, snapped to the delta grid
    assert settings.model_path.name == "temperature.json"


def test_seed_environment_variables_are_read(monkeypatch):
    env = {
        "ID_START": "11",
        "ID_END": "20",
        "INGEST_MODE": "0",
        "INGEST_SIZE": "2400000",
        "INGEST_DELTA": "0.25",
        "INGEST_TS": "1600163743.500",
        "TABLE_NAME": "doc.timeseries2",
        "SHARDS": "28",
        "USERNAME": "alice",
        "PASSWORD": "s3cret",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = parse()
    assert (settings.id_start, settings.id_end) == (11, 20)
    assert settings.ingest_mode == "consecutive"
    assert settings.ingest_size == 2_400_000
    assert settings.ingest_delta == 0.25
    assert settings.ingest_ts == 1600163743.5
    assert settings.table == "doc.timeseries2"
    assert settings.shards == 28
    assert (settings.username, settings.password) == ("alice", "s3cret")
    assert "s3cret" not in repr(settings)


def test_command_line_wins_over_environment(monkeypatch):
    monkeypatch.setenv("ID_END", "99")
    assert parse("--id-end", "42").id_end == 42


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--id-start", "10", "--id-end", "5"], "smaller than --id-start"),
        (["--ingest-mode", "turbo"], "must be fast or consecutive"),
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "lots"], "auto or a number"),
        (["--batch-size-min", "5000", "--batch-size-max", "100"], "larger than --batch-size-max"),
        (["--table", "drop table x;"], "is not valid"),
        (["--table", 'a"b'], "is not valid"),
        (["--ingest-delta", "0"], "more than 0"),
        (["--ingest-ts", "yesterday"], "epoch seconds"),
        (["--partition", "year"], "--partition"),
        (["--insert-method", "copy"], "bulk, unnest, pg or pg-unnest"),
        (["--pg-port", "0"], "--pg-port / PG_PORT must be between 1 and 65535"),
        (["--timeout", "-1"], "--timeout"),
        (["--max-fail-ratio", "2"], "--max-fail-ratio"),
    ],
)
def test_bad_values_give_one_line_naming_the_option(args, fragment):
    with pytest.raises(OptionError) as caught:
        parse(*args)
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message


def test_every_option_has_an_env_var_and_password_is_hidden_from_web_ui():
    parser = get_parser()
    add_options(parser)
    web_ui = parser.args_included_in_web_ui
    assert "password" not in web_ui
    assert "username" in web_ui
    env_vars = {spec.env_var for spec in OPTIONS}
    assert len(env_vars) == len(OPTIONS)
    assert {"ID_START", "ID_END", "INGEST_MODE", "INGEST_SIZE", "MODEL_PATH", "INGEST_DELTA", "INGEST_TS"} <= env_vars
    assert {"TABLE_NAME", "SHARDS", "USERNAME", "PASSWORD"} <= env_vars


def test_hosts_are_split_and_normalised():
    assert parse_hosts("http://a:4200,b:4200 https://c") == ("http://a:4200", "http://b:4200", "https://c")
    with pytest.raises(OptionError, match="no CrateDB host"):
        parse_hosts("")
    with pytest.raises(OptionError, match="is not a CrateDB URL"):
        parse_hosts("http://a:4200/some/path?x")


def test_ingest_ts_is_kept_as_given_when_set():
    assert math.isclose(parse("--ingest-ts", "1600163743.5").ingest_ts, 1600163743.5)
