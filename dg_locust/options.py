"""Command-line options: registration with Locust, the seed's environment variables, and validation.

Every option is registered through Locust's ``init_command_line_parser`` event, so it works on the command line,
in ``locust.conf``, in the web UI (except the password) and through the environment variable named in
``OPTIONS``. Precedence is Locust's (configargparse's): command line, then environment variable, then config
file, then the default. ``Settings.from_options`` turns the parsed values into one validated, typed object and
raises ``OptionError`` with one line naming the option and what to change.

Options are read where Locust guarantees they have arrived: on the master or a local runner at ``init`` (to fail
fast on bad input), and on workers at ``test_start`` (the master ships its values with each spawn message).
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from dg_locust.errors import OptionError
from dg_locust.schema import check_table_name

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = "models/temperature.json"  # inside the package: see resolve_model_path

INGEST_MODES = {"fast": "fast", "1": "fast", "consecutive": "consecutive", "0": "consecutive"}
PARTITIONS = ("day", "week", "month", "none")
INSERT_METHODS = ("bulk", "unnest", "pg", "pg-unnest")
PG_METHODS = ("pg", "pg-unnest")  # through CrateDB's PostgreSQL port (pg_client) instead of HTTP
DEFAULT_PG_PORT = 5432

# Batch-size bounds that no setting may cross: CrateDB refuses request bodies over 100 MB, and a row of a wide
# model is a few hundred bytes of JSON, so 200k rows keeps every body well below that limit.
HARD_BATCH_MIN = 1
HARD_BATCH_MAX = 200_000
# A capacity stage is measured over its last half, and a master hears from its workers every 3 s: shorter stages
# would measure too few reports to mean anything.
MIN_CAPACITY_STAGE_S = 4.0


@dataclass(frozen=True)
class OptionSpec:
    """One option: its flag, the environment variable that also sets it, its default and help."""

    flag: str
    env_var: str
    default: object
    help: str
    in_web_ui: bool = True
    is_flag: bool = False

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "--model",
        "MODEL_PATH",
        DEFAULT_MODEL,
        "Model file (tsperf JSON format): a path, or the name of a shipped model (temperature, factory, power_plant)",
    ),
    OptionSpec(
        "--table",
        "TABLE_NAME",
        "",
        "Table to insert into, as name or schema.name (default: the model's table in schema doc)",
    ),
    OptionSpec("--shards", "SHARDS", 4, "CLUSTERED INTO <n> SHARDS when the table is created"),
    OptionSpec(
        "--replicas",
        "REPLICAS",
        "0-1",
        "number_of_replicas when the table is created (a number or a range such as 0-1)",
    ),
    OptionSpec("--partition", "PARTITION", "week", "Partition the table by day, week or month of ts, or none"),
    OptionSpec(
        "--drop-table",
        "DROP_TABLE",
        False,
        "Drop the table before the test (destructive; off by default)",
        is_flag=True,
    ),
    OptionSpec("--id-start", "ID_START", 1, "First sensor id (inclusive)"),
    OptionSpec("--id-end", "ID_END", 500, "Last sensor id (inclusive)"),
    OptionSpec(
        "--ingest-mode",
        "INGEST_MODE",
        "fast",
        "fast (as fast as the database takes rows) or consecutive "
        "(one row per sensor every --ingest-delta seconds of wall clock); 1 and 0 also work",
    ),
    OptionSpec("--ingest-size", "INGEST_SIZE", 0, "Rows per sensor, after which the test ends (0 = endless)"),
    OptionSpec("--ingest-delta", "INGEST_DELTA", 0.5, "Seconds between two rows of one sensor"),
    OptionSpec(
        "--ingest-ts",
        "INGEST_TS",
        "now",
        "Timestamp of each sensor's first row, epoch seconds (e.g. 1600163743.5) or now",
    ),
    OptionSpec("--batch-size", "BATCH_SIZE", "auto", "Rows per insert: auto (adaptive) or a fixed number"),
    OptionSpec("--batch-size-min", "BATCH_SIZE_MIN", 100, "Smallest batch the adaptive sizer uses"),
    OptionSpec("--batch-size-max", "BATCH_SIZE_MAX", 100_000, "Largest batch the adaptive sizer uses"),
    OptionSpec(
        "--insert-method",
        "INSERT_METHOD",
        "bulk",
        "bulk (bulk_args, one result per row) or unnest (one INSERT ... SELECT * FROM UNNEST statement per batch) "
        "over HTTP; pg (a prepared INSERT, one execution per row in pipeline mode) or pg-unnest (one UNNEST INSERT "
        "with array parameters) over the PostgreSQL wire protocol",
    ),
    OptionSpec(
        "--pg-port",
        "PG_PORT",
        DEFAULT_PG_PORT,
        "PostgreSQL port of the hosts given as http(s)://HOST:4200, for --insert-method pg / pg-unnest "
        "(a postgresql://HOST:PORT host names its own port)",
    ),
    OptionSpec("--seed", "SEED", "random", "Random seed for reproducible data, or random"),
    OptionSpec("--timeout", "TIMEOUT", 30.0, "Client timeout in seconds for connecting and for each request"),
    OptionSpec(
        "--max-retries",
        "MAX_RETRIES",
        2,
        "Retries of a batch the database refused before executing it "
        "(HTTP 429/503), with back-off; batches with an unknown outcome are never re-sent",
    ),
    OptionSpec("--username", "USERNAME", "", "CrateDB user (default: none, or crate when a password is given)"),
    OptionSpec(
        "--password", "PASSWORD", "", "CrateDB password (never shown in the web UI, logs or reports)", in_web_ui=False
    ),
    OptionSpec(
        "--prometheus-port",
        "PROMETHEUS_PORT",
        8000,
        "Port of the Prometheus /metrics endpoint (0 = off); "
        "with several processes on one host, worker i uses this port + 1 + i",
    ),
    OptionSpec(
        "--verify",
        "VERIFY",
        False,
        "At the end, count the rows of this run in the table and compare with the rows acknowledged",
        is_flag=True,
    ),
    OptionSpec(
        "--min-rows-per-sec",
        "MIN_ROWS_PER_SEC",
        0.0,
        "Exit with code 3 if the run's mean rows/s is below this (0 = no threshold)",
    ),
    OptionSpec(
        "--max-fail-ratio",
        "MAX_FAIL_RATIO",
        1.0,
        "Exit with code 3 if the share of rows not acknowledged because of errors (failed, or in doubt from a timeout, "
        "reset or 5xx; not the rows cut off by the stop) is above this (1 = no threshold)",
    ),
    OptionSpec(
        "--query-users",
        "QUERY_USERS",
        0,
        "Of the -u users, this many run queries against the table the ingest users write (0 = ingest only)",
    ),
    OptionSpec("--query-rate", "QUERY_RATE", 1.0, "Queries per second of each query user (0 = no pause)"),
    OptionSpec("--queries", "QUERIES_FILE", "", "YAML or JSON file of the queries to run (default: the shipped ones)"),
    OptionSpec(
        "--rows-report",
        "ROWS_REPORT",
        "",
        "At the end of each test, write a self-contained HTML report of the rows (charts, summary, thresholds) to "
        "this file, and its main chart as a PNG beside it",
        in_web_ui=False,
    ),
    OptionSpec(
        "--summary-json",
        "SUMMARY_JSON",
        "",
        "At the end of each test, write the run's summary (the dg summary line and more) as JSON to this file",
        in_web_ui=False,
    ),
    OptionSpec(
        "--find-capacity",
        "FIND_CAPACITY",
        False,
        "Find the capacity: step the users up in stages (1, 2, 4, ... per worker; -u and -r are ignored) until rows/s "
        "no longer rise by more than --capacity-margin or a stage breaks the SLO, and report the best stage",
        is_flag=True,
    ),
    OptionSpec(
        "--capacity-stage-s",
        "CAPACITY_STAGE_S",
        30.0,
        "Seconds each capacity stage holds its users (the first twice as long with --batch-size auto, as the sizer "
        "starts from scratch); each stage is measured over its last half",
    ),
    OptionSpec(
        "--capacity-margin",
        "CAPACITY_MARGIN",
        0.05,
        "The capacity finder stops when a stage raises rows/s by no more than this share over the best stage",
    ),
    OptionSpec("--capacity-max-users", "CAPACITY_MAX_USERS", 1024, "Most users (over all workers) the finder tries"),
    OptionSpec(
        "--slo-p99-ms",
        "SLO_P99_MS",
        0.0,
        "A capacity stage whose p99 insert latency is above this many milliseconds breaks the SLO (0 = no limit)",
    ),
    OptionSpec(
        "--slo-max-error-ratio",
        "SLO_MAX_ERROR_RATIO",
        0.05,
        "A capacity stage whose share of rows not acknowledged because of errors is above this breaks the SLO",
    ),
    OptionSpec("--ca-cert", "CA_CERT", "", "CA bundle to verify the server certificate with (https)"),
    OptionSpec("--no-verify-ssl", "NO_VERIFY_SSL", False, "Do not verify the server certificate (https)", is_flag=True),
)

OPTION_ENV_VARS = frozenset(spec.env_var for spec in OPTIONS)
# HOST is the seed's name for Locust's -H/--host; dg-locust maps it at init (see listeners.apply_host_env).
SEED_HOST_ENV_VAR = "HOST"


def add_options(parser) -> None:
    """Register every option on Locust's argument parser (an ``init_command_line_parser`` listener)."""
    # Straight on the parser, not a group: only LocustArgumentParser.add_argument knows include_in_web_ui.
    group = parser
    for spec in OPTIONS:
        help_text = f"{spec.help}. Env: {spec.env_var}. Default: {spec.default!r}"
        if spec.is_flag:
            group.add_argument(
                spec.flag,
                action="store_true",
                default=spec.default,
                env_var=spec.env_var,
                help=help_text,
                include_in_web_ui=spec.in_web_ui,
            )
        else:
            group.add_argument(
                spec.flag,
                type=type(spec.default),
                default=spec.default,
                env_var=spec.env_var,
                help=help_text,
                include_in_web_ui=spec.in_web_ui,
            )


def parse_hosts(host: str | None) -> tuple[str, ...]:
    """Split Locust's host value into CrateDB server URLs (comma- or space-separated; http:// assumed).

    ``postgresql://HOST[:PORT]`` (or ``postgres://``) names a server's PostgreSQL port directly; only the pg insert
    methods can use it (see ``check_hosts_for_method``)."""
    if not host or not host.strip():
        raise OptionError(
            "no CrateDB host: pass -H http://HOST:4200 (several: -H http://a:4200,http://b:4200) or set HOST"
        )
    servers = []
    for part in re.split(r"[,\s]+", host.strip()):
        if not part:
            continue
        url = part if re.match(r"^(https?|postgres(ql)?)://", part) else f"http://{part}"
        if "@" in url:
            # Never echo it: the part before the @ may hold a password, and this message goes to logs.
            raise OptionError("a host holds credentials (user:password@host); pass --username and --password instead")
        if not re.match(r"^(https?|postgres(ql)?)://[^/\s:]+(:\d+)?/?$", url):
            raise OptionError(f"host {part!r} is not a CrateDB URL such as http://localhost:4200")
        servers.append(url.rstrip("/"))
    return tuple(servers)


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def check_hosts_for_method(servers: tuple[str, ...], insert_method: str) -> None:
    """A postgresql:// host only works with the pg insert methods: say so in one line instead of failing later."""
    if insert_method not in PG_METHODS:
        for url in servers:
            if is_postgres_url(url):
                raise OptionError(
                    f"host {url} is a PostgreSQL URL: use it with --insert-method pg or pg-unnest, "
                    "or give CrateDB's HTTP URL (http://HOST:4200)"
                )


@dataclass(frozen=True)
class Settings:
    """Validated, typed settings of one run; built from Locust's parsed options."""

    model_path: Path
    table: str
    shards: int
    replicas: str
    partition: str
    drop_table: bool
    id_start: int
    id_end: int
    ingest_mode: str
    ingest_size: int
    ingest_delta: float
    ingest_ts: float
    batch_size: int | None
    batch_size_min: int
    batch_size_max: int
    insert_method: str
    pg_port: int
    seed: int | None
    timeout: float
    max_retries: int
    prometheus_port: int
    verify: bool
    min_rows_per_sec: float
    max_fail_ratio: float
    username: str
    password: str = field(repr=False)
    ca_cert: str
    verify_ssl: bool
    query_users: int
    query_rate: float
    queries_file: str
    find_capacity: bool
    capacity_stage_s: float
    capacity_margin: float
    capacity_max_users: int
    slo_p99_ms: float  # 0: no latency limit
    slo_max_error_ratio: float
    rows_report: str = ""  # file paths; empty: not written
    summary_json: str = ""

    @property
    def sensor_count(self) -> int:
        return self.id_end - self.id_start + 1

    @classmethod
    def from_options(cls, options, *, now: float | None = None) -> Settings:
        """Validate Locust's parsed options; raise OptionError with one line on the first bad value."""

        def value(dest: str):
            return getattr(options, dest)

        id_start = _as_int(value("id_start"), "--id-start / ID_START")
        id_end = _as_int(value("id_end"), "--id-end / ID_END")
        if id_start < 1:
            raise OptionError(f"--id-start / ID_START must be 1 or more, got {id_start}")
        if id_end < id_start:
            raise OptionError(f"--id-end / ID_END ({id_end}) is smaller than --id-start / ID_START ({id_start})")

        mode_text = str(value("ingest_mode")).strip().lower()
        if mode_text not in INGEST_MODES:
            raise OptionError(
                f"--ingest-mode / INGEST_MODE must be fast or consecutive (or 1 / 0), got {value('ingest_mode')!r}"
            )

        ingest_size = _as_int(value("ingest_size"), "--ingest-size / INGEST_SIZE")
        if ingest_size < 0:
            raise OptionError(f"--ingest-size / INGEST_SIZE must be 0 (endless) or more, got {ingest_size}")
        ingest_delta = _as_float(value("ingest_delta"), "--ingest-delta / INGEST_DELTA")
        if not ingest_delta > 0:
            raise OptionError(f"--ingest-delta / INGEST_DELTA must be more than 0 seconds, got {ingest_delta}")
        ingest_ts = _parse_ingest_ts(value("ingest_ts"), ingest_delta, now)

        batch_min = _as_int(value("batch_size_min"), "--batch-size-min / BATCH_SIZE_MIN")
        batch_max = _as_int(value("batch_size_max"), "--batch-size-max / BATCH_SIZE_MAX")
        for name, number in (
            ("--batch-size-min / BATCH_SIZE_MIN", batch_min),
            ("--batch-size-max / BATCH_SIZE_MAX", batch_max),
        ):
            if not HARD_BATCH_MIN <= number <= HARD_BATCH_MAX:
                raise OptionError(f"{name} must be between {HARD_BATCH_MIN} and {HARD_BATCH_MAX} rows, got {number}")
        if batch_min > batch_max:
            raise OptionError(f"--batch-size-min ({batch_min}) is larger than --batch-size-max ({batch_max})")
        batch_size = _parse_batch_size(value("batch_size"))

        partition = str(value("partition")).strip().lower()
        if partition not in PARTITIONS:
            raise OptionError(f"--partition / PARTITION must be one of {', '.join(PARTITIONS)}, got {partition!r}")
        insert_method = str(value("insert_method")).strip().lower()
        if insert_method not in INSERT_METHODS:
            raise OptionError(
                f"--insert-method / INSERT_METHOD must be bulk, unnest, pg or pg-unnest, got {insert_method!r}"
            )
        pg_port = _as_int(value("pg_port"), "--pg-port / PG_PORT")
        if not 1 <= pg_port <= 65535:
            raise OptionError(f"--pg-port / PG_PORT must be between 1 and 65535, got {pg_port}")

        shards = _as_int(value("shards"), "--shards / SHARDS")
        if not 1 <= shards <= 1000:
            raise OptionError(f"--shards / SHARDS must be between 1 and 1000, got {shards}")
        replicas = str(value("replicas")).strip()
        if not re.fullmatch(r"\d+|\d+-(\d+|all)", replicas):
            raise OptionError(f"--replicas / REPLICAS must be a number or a range such as 0-1, got {replicas!r}")

        timeout = _as_float(value("timeout"), "--timeout / TIMEOUT")
        if not 0 < timeout <= 3600:
            raise OptionError(f"--timeout / TIMEOUT must be between 0 and 3600 seconds, got {timeout}")
        max_retries = _as_int(value("max_retries"), "--max-retries / MAX_RETRIES")
        if not 0 <= max_retries <= 10:
            raise OptionError(f"--max-retries / MAX_RETRIES must be between 0 and 10, got {max_retries}")

        prometheus_port = _as_int(value("prometheus_port"), "--prometheus-port / PROMETHEUS_PORT")
        if not 0 <= prometheus_port <= 65535:
            raise OptionError(f"--prometheus-port / PROMETHEUS_PORT must be between 0 and 65535, got {prometheus_port}")
        min_rows_per_sec = _as_float(value("min_rows_per_sec"), "--min-rows-per-sec / MIN_ROWS_PER_SEC")
        if min_rows_per_sec < 0:
            raise OptionError(f"--min-rows-per-sec / MIN_ROWS_PER_SEC must be 0 or more, got {min_rows_per_sec}")
        max_fail_ratio = _as_float(value("max_fail_ratio"), "--max-fail-ratio / MAX_FAIL_RATIO")
        if not 0 <= max_fail_ratio <= 1:
            raise OptionError(f"--max-fail-ratio / MAX_FAIL_RATIO must be between 0 and 1, got {max_fail_ratio}")

        query_users = _as_int(value("query_users"), "--query-users / QUERY_USERS")
        if query_users < 0:
            raise OptionError(f"--query-users / QUERY_USERS must be 0 or more, got {query_users}")
        query_rate = _as_float(value("query_rate"), "--query-rate / QUERY_RATE")
        if query_rate < 0:
            raise OptionError(
                f"--query-rate / QUERY_RATE must be 0 (no pause) or more queries per second, got {query_rate}"
            )
        queries_file = str(value("queries") or "").strip()

        seed_text = str(value("seed")).strip().lower()
        seed = None if seed_text in ("", "random", "none") else _as_int(seed_text, "--seed / SEED")

        table = str(value("table") or "").strip()
        if table:
            check_table_name(table)

        username = str(value("username") or "")
        password = str(value("password") or "")
        if password and not username:
            username = "crate"

        ca_cert = str(value("ca_cert") or "")
        if ca_cert and not Path(ca_cert).expanduser().is_file():
            raise OptionError(f"--ca-cert / CA_CERT: no such file {ca_cert!r}; give a PEM file of CA certificates")

        rows_report = _output_file(value("rows_report"), "--rows-report / ROWS_REPORT")
        summary_json = _output_file(value("summary_json"), "--summary-json / SUMMARY_JSON")
        capacity_stage_s = _as_float(value("capacity_stage_s"), "--capacity-stage-s / CAPACITY_STAGE_S")
        if not MIN_CAPACITY_STAGE_S <= capacity_stage_s <= 86400:
            raise OptionError(
                f"--capacity-stage-s / CAPACITY_STAGE_S must be between {MIN_CAPACITY_STAGE_S:g} and 86400 seconds, "
                f"got {capacity_stage_s:g}"
            )
        capacity_margin = _as_float(value("capacity_margin"), "--capacity-margin / CAPACITY_MARGIN")
        if not 0 <= capacity_margin <= 1:
            raise OptionError(f"--capacity-margin / CAPACITY_MARGIN must be between 0 and 1, got {capacity_margin:g}")
        capacity_max_users = _as_int(value("capacity_max_users"), "--capacity-max-users / CAPACITY_MAX_USERS")
        if capacity_max_users < 1:
            raise OptionError(f"--capacity-max-users / CAPACITY_MAX_USERS must be 1 or more, got {capacity_max_users}")
        slo_p99_ms = _as_float(value("slo_p99_ms"), "--slo-p99-ms / SLO_P99_MS")
        if slo_p99_ms < 0:
            raise OptionError(f"--slo-p99-ms / SLO_P99_MS must be 0 (no limit) or more, got {slo_p99_ms:g}")
        slo_max_error_ratio = _as_float(value("slo_max_error_ratio"), "--slo-max-error-ratio / SLO_MAX_ERROR_RATIO")
        if not 0 <= slo_max_error_ratio <= 1:
            raise OptionError(
                f"--slo-max-error-ratio / SLO_MAX_ERROR_RATIO must be between 0 and 1, got {slo_max_error_ratio:g}"
            )

        return cls(
            model_path=resolve_model_path(str(value("model"))),
            table=table,
            shards=shards,
            replicas=replicas,
            partition=partition,
            drop_table=bool(value("drop_table")),
            id_start=id_start,
            id_end=id_end,
            ingest_mode=INGEST_MODES[mode_text],
            ingest_size=ingest_size,
            ingest_delta=ingest_delta,
            ingest_ts=ingest_ts,
            batch_size=batch_size,
            batch_size_min=batch_min,
            batch_size_max=batch_max,
            insert_method=insert_method,
            pg_port=pg_port,
            seed=seed,
            timeout=timeout,
            max_retries=max_retries,
            prometheus_port=prometheus_port,
            verify=bool(value("verify")),
            min_rows_per_sec=min_rows_per_sec,
            max_fail_ratio=max_fail_ratio,
            username=username,
            password=password,
            ca_cert=str(Path(ca_cert).expanduser()) if ca_cert else "",
            verify_ssl=not bool(value("no_verify_ssl")),
            query_users=query_users,
            query_rate=query_rate,
            queries_file=str(Path(queries_file).expanduser()) if queries_file else "",
            rows_report=rows_report,
            summary_json=summary_json,
            find_capacity=bool(value("find_capacity")),
            capacity_stage_s=capacity_stage_s,
            capacity_margin=capacity_margin,
            capacity_max_users=capacity_max_users,
            slo_p99_ms=slo_p99_ms,
            slo_max_error_ratio=slo_max_error_ratio,
        )


def resolve_model_path(text: str) -> Path:
    """A model path as given (from the working directory), else one of the models shipped in the package:
    ``models/factory.json`` (the package's folder) and a bare ``factory`` both find it from anywhere."""
    path = Path(os.path.expanduser(text))
    if path.is_absolute() or path.exists():
        return path
    for shipped in (PACKAGE_DIR / path, PACKAGE_DIR / "models" / path.name, PACKAGE_DIR / "models" / f"{text}.json"):
        if shipped.is_file():
            return shipped
    return path


def _output_file(raw, name: str) -> str:
    """A file a report is written to ("" for none); never a directory."""
    text = str(raw or "").strip()
    if text and Path(text).expanduser().is_dir():
        raise OptionError(f"{name} is a directory ({text!r}); give a file name such as out/report.html")
    return str(Path(text).expanduser()) if text else ""


def _parse_batch_size(raw) -> int | None:
    text = str(raw).strip().lower()
    if text == "auto":
        return None
    size = _as_int(text, "--batch-size / BATCH_SIZE", expected="auto or a number of rows")
    if not HARD_BATCH_MIN <= size <= HARD_BATCH_MAX:
        raise OptionError(
            f"--batch-size / BATCH_SIZE must be auto or between {HARD_BATCH_MIN} and {HARD_BATCH_MAX}, got {size}"
        )
    return size


def _parse_ingest_ts(raw, delta: float, now: float | None) -> float:
    text = str(raw).strip().lower()
    if text in ("", "now"):
        # Snap "now" to the delta grid, as the reference generator does, so timestamps are round numbers.
        current = time.time() if now is None else now
        return math.floor(current / delta) * delta
    stamp = _as_float(text, "--ingest-ts / INGEST_TS", expected="epoch seconds such as 1600163743.5, or now")
    if not 0 <= stamp < 32503680000:  # year 3000
        raise OptionError(f"--ingest-ts / INGEST_TS must be epoch seconds between 1970 and 3000, got {raw!r}")
    return stamp


def _as_int(raw, name: str, expected: str = "a whole number") -> int:
    try:
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        return int(str(raw).strip())
    except (TypeError, ValueError):
        raise OptionError(f"{name} must be {expected}, got {raw!r}") from None


def _as_float(raw, name: str, expected: str = "a number") -> float:
    try:
        number = float(str(raw).strip())
    except (TypeError, ValueError):
        raise OptionError(f"{name} must be {expected}, got {raw!r}") from None
    if not math.isfinite(number):
        raise OptionError(f"{name} must be {expected}, got {raw!r}")
    return number
