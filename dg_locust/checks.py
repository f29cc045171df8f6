"""End-of-run checks on the master or local runner: ``--verify`` (what the database kept) and the CI thresholds.

``RunChecks.register(environment)`` (from an ``init`` listener) runs both once a run's counters are final, prints one
line for each, and sets ``environment.process_exit_code`` (which Locust's exit code then is) when one fails:

- ``--min-rows-per-sec R`` / ``--max-fail-ratio F``: exit code ``EXIT_THRESHOLD`` (3) when the run's mean rows/s
  (inserted rows over the run's wall time; with ``--find-capacity``, the capacity found) is below R, or when the
  share of rows an error kept from being acknowledged (failed, and in doubt from timeouts, resets and 5xx) is above
  F; rows the stop cut off in flight count on neither side of that ratio;
- ``--verify``: refreshes each table and counts the rows of this run's sensor range (``--id-start``..``--id-end``)
  and time window (from the first to the last step any sensor sent, as the ledger reports them); exit code
  ``EXIT_VERIFY`` (4) when the table holds fewer rows than acknowledged or more than acknowledged + in doubt.
  Rows an earlier run left in the same sensor range and time window are counted too: give each run its own table,
  ``--drop-table`` or its own ``INGEST_TS`` when the count must be exact.

Both run at ``test_stop``, where the counters are final (on a master, the run context has collected every worker's
final counters at ``test_stopping``). An exit code set earlier (bad input or an aborted run, 2) is left as it is.
"""

from __future__ import annotations

from locust.runners import WorkerRunner

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from dg_locust.capacity import CapacityResult
from dg_locust.client import CrateError
from dg_locust.errors import EXIT_BAD_INPUT, EXIT_THRESHOLD, EXIT_VERIFY, OptionError
from dg_locust.ledger import RunLedger
from dg_locust.options import Settings
from dg_locust.pipeline import client_for_settings
from dg_locust.run import RunContext
from dg_locust.schema import TableSchema, check_table_name

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check: passed or not, and the one line that says so."""

    passed: bool
    line: str


def threshold_verdict(
    ledger: RunLedger, min_rows_per_sec: float, max_fail_ratio: float, capacity: CapacityResult | None = None
) -> Verdict | None:
    """The CI thresholds against the run's totals; None when no threshold is set. When the capacity finder ran
    (``capacity``), --min-rows-per-sec judges the capacity it found instead of the run's mean, which its lower
    stages pull down."""
    checks = []
    totals = ledger.totals()
    if min_rows_per_sec > 0:
        if capacity is not None:
            rows_per_s, what = capacity.rows_per_s, "capacity"
            if capacity.best is None:
                what = "capacity (none found within the SLO)"
        else:
            rows_per_s, what = ledger.rows_per_s(), "mean"
        ok = rows_per_s >= min_rows_per_sec
        relation = ">=" if ok else "is below"
        checks.append((ok, f"{what} {rows_per_s:.1f} rows/s {relation} --min-rows-per-sec {min_rows_per_sec:g}"))
    if max_fail_ratio < 1:
        # Rows cut off by the stop are left out of both sides: the database never got to answer for them.
        errors, finished = totals.not_acknowledged_by_error, totals.finished
        ratio = errors / finished if finished else 0.0
        ok = ratio <= max_fail_ratio
        relation = "<=" if ok else "is above"
        checks.append(
            (
                ok,
                "rows not acknowledged because of errors (failed + in doubt, not counting "
                f"{totals.cut_off} cut off by the stop) {errors}/{finished} = {ratio:.4f} {relation} "
                f"--max-fail-ratio {max_fail_ratio:g}",
            )
        )
    if not checks:
        return None
    passed = all(ok for ok, _ in checks)
    shown = [text for ok, text in checks if not ok] if not passed else [text for _, text in checks]
    return Verdict(passed, f"dg thresholds: {'passed' if passed else 'FAILED'}: {'; '.join(shown)}")


@dataclass(frozen=True)
class CountTarget:
    """The rows of this run in one table: sensor ids, time window, and what the ledger says became of them."""

    table: str  # schema.name
    id_column: str
    first_id: int
    last_id: int
    first_ts_ms: int
    last_ts_ms: int
    acknowledged: int
    in_doubt: int

    def schema(self) -> TableSchema:
        """The table as far as counting needs it (schema.py owns the SQL text)."""
        schema, name = check_table_name(self.table)
        return TableSchema(schema, name, columns=(), partition="none", shards=1, replicas="0")

    def count_args(self) -> list[int]:
        return [self.first_id, self.last_id, self.first_ts_ms, self.last_ts_ms]

    def describe(self) -> str:
        return f"{self.id_column} {self.first_id}..{self.last_id}, ts {_iso(self.first_ts_ms)}..{_iso(self.last_ts_ms)}"


def count_targets(ledger: RunLedger, first_id: int, last_id: int) -> list[CountTarget]:
    """One target per table the run sent rows to (user classes sharing a table are counted together)."""
    grouped: dict[tuple[str, str], dict] = {}
    for counters in ledger.per_class().values():
        if not counters.get("table") or counters.get("first_ts_ms") is None:
            continue  # this class sent no rows
        group = grouped.setdefault(
            (counters["table"], counters["id_column"]),
            {"first": counters["first_ts_ms"], "last": counters["last_ts_ms"], "inserted": 0, "in_doubt": 0},
        )
        group["first"] = min(group["first"], counters["first_ts_ms"])
        group["last"] = max(group["last"], counters["last_ts_ms"])
        group["inserted"] += int(counters.get("inserted", 0))
        group["in_doubt"] += int(counters.get("in_doubt", 0))
    return [
        CountTarget(table, id_column, first_id, last_id, g["first"], g["last"], g["inserted"], g["in_doubt"])
        for (table, id_column), g in sorted(grouped.items())
    ]


def verify_verdict(target: CountTarget, stored: int) -> Verdict:
    """Compare the rows a table holds with what the run acknowledged and left in doubt."""
    where = f"{target.table} holds {stored} rows of this run ({target.describe()})"
    ack, doubt = target.acknowledged, target.in_doubt
    if stored < ack:
        return Verdict(False, f"dg verify: FAILED: {where}, {ack - stored} fewer than the {ack} acknowledged")
    if stored > ack + doubt:
        return Verdict(
            False,
            f"dg verify: FAILED: {where}, more than acknowledged + in doubt ({ack} + {doubt}); "
            "an earlier run may have left rows in this range and window",
        )
    return Verdict(True, f"dg verify: passed: {where}; acknowledged {ack}, in doubt {doubt}")


class RunChecks:
    """Runs the threshold and verify checks at the end of each test, on the master or local runner."""

    def __init__(self, environment, context: RunContext):
        self.environment = environment
        self.context = context

    @classmethod
    def register(cls, environment, context: RunContext) -> RunChecks | None:
        if isinstance(environment.runner, WorkerRunner):
            return None
        checks = cls(environment, context)
        # After the context's test_stop listener (registered first): the summary line comes before the checks'.
        environment.events.test_stop.add_listener(checks.on_test_stop)
        return checks

    def on_test_stop(self, environment, **_kwargs) -> None:
        self.run_checks()

    def run_checks(self) -> int | None:
        """Run the checks of the run that just ended; print their lines; return the exit code they call for."""
        ledger: RunLedger = self.context.ledger
        settings = self.context.settings
        if ledger.started_at is None or settings is None:
            return None  # no test ran, or its options were bad (the context has said so)
        wanted = settings.verify or settings.min_rows_per_sec > 0 or settings.max_fail_ratio < 1
        if wanted and self.environment.process_exit_code == EXIT_BAD_INPUT:
            # The run was stopped by an error (credentials, unreachable database): its numbers prove nothing, and
            # counting would only wait for the same database again.
            _say(f"dg checks: skipped: the run was stopped by an error (exit code {EXIT_BAD_INPUT})")
            return None
        codes = []
        capacity = self.context.capacity.result() if self.context.capacity is not None else None
        verdict = threshold_verdict(ledger, settings.min_rows_per_sec, settings.max_fail_ratio, capacity)
        if verdict is not None:
            _say(verdict.line)
            if not verdict.passed:
                codes.append(EXIT_THRESHOLD)
        if settings.verify:
            for verdict in self.verify(settings, ledger):
                _say(verdict.line)
                if not verdict.passed:
                    codes.append(EXIT_VERIFY)
        code = max(codes, default=None)
        if code is not None and not self.environment.process_exit_code:
            self.environment.process_exit_code = code
        return code

    def verify(self, settings: Settings, ledger: RunLedger) -> list[Verdict]:
        targets = count_targets(ledger, settings.id_start, settings.id_end)
        if not targets:
            return [Verdict(True, "dg verify: passed: no rows were sent, so there is nothing to count")]
        try:
            client = client_for_settings(settings, self.environment.host)
        except OptionError as error:
            return [Verdict(False, f"dg verify: FAILED: cannot connect to count the rows: {error}")]
        verdicts = []
        try:
            for target in targets:
                try:
                    table = target.schema()
                    client.execute(table.refresh_sql())
                    stored = int(client.execute(table.count_sql(target.id_column), target.count_args())["rows"][0][0])
                except (CrateError, KeyError, IndexError, TypeError, ValueError) as error:
                    verdicts.append(
                        Verdict(False, f"dg verify: FAILED: could not count the rows of {target.table}: {error}")
                    )
                    continue
                verdicts.append(verify_verdict(target, stored))
        finally:
            client.close()
        return verdicts


def _say(line: str) -> None:
    print(line, flush=True)
    logger.debug(line)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
