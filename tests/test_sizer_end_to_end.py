import locust  # noqa: F401

# The adaptive batch sizer end to end (issue 3): the Locust CLI with `--batch-size auto` (the default) against the
# CrateDB double configured with a latency model that has an optimum batch size, and the batch size the run settles on
# is read from what the double received (not from the sizer's own report).
#
# The double's model: every INSERT costs OVERHEAD_MS + rows * PER_ROW_US (asyncio sleeps, so CPU noise from other
# tests on the machine barely matters); at most MAX_CONCURRENCY inserts run at once and the rest queue; an INSERT with
# more than OVERLOAD_ROWS rows fails after OVERHEAD_MS with a circuit-breaker error. With more users than slots the
# double's queue never runs dry, so the double sets the pace and the cluster's rows/s at batch size s is
#     rows_per_s(s) = MAX_CONCURRENCY * s / (overhead + s * per_row)   for s <= OVERLOAD_ROWS, 0 above:
# rising in s up to the cliff, so the optimum is the cliff. Overhead dominates the latency at the cliff, so the curve
# is steep enough to discriminate: 30 % below the optimum gives ~16 % fewer rows/s, the sizer's x2 growth from 1000
# ends on 4000 (-26 % rows/s, outside the band) and only its finer search below the cliff gets into the band.
#
# How long the sizer takes to settle depends on where the cliff sits between two sizes of its grid (1000 * 2^(k/8),
# two significant digits): each overload it needs to locate the cliff costs a few failed batches and a window.
# `python bench/sizer.py --simulate` replays this double's model with the real sizer on a fake clock: for cliffs from
# 2000 to 33000 rows the size in use settles within +-30 % after 5-59 s; this cliff, between grid sizes 6700 and 7300,
# after 18 s, so the last 10 s of a 40 s run are settled with room to spare.
import statistics
import threading
import time

from cratedb_double import DoubleProcess
from support import run_locust

OVERHEAD_MS = 60.0
PER_ROW_US = 10.0
MAX_CONCURRENCY = 2
OVERLOAD_ROWS = 7_000
USERS = 8
BATCH_SIZE_MIN, BATCH_SIZE_MAX = 100, 100_000  # the sizer's defaults: the range the optimum is searched in
RUN_S = 40  # see above: settled after ~21-31 s
TAIL_S = 10  # "settled on": the last seconds of the run
TOLERANCE = 0.30


def model_rows_per_s(size: int) -> float:
    """The double's throughput at a fixed batch size, from its latency model (see the module comment)."""
    if size > OVERLOAD_ROWS:
        return 0.0
    return MAX_CONCURRENCY * size / (OVERHEAD_MS / 1e3 + size * PER_ROW_US / 1e6)


OPTIMUM = max(range(BATCH_SIZE_MIN, BATCH_SIZE_MAX + 1), key=model_rows_per_s)


class StatsPoller:
    """Samples the double's counters every `interval` seconds while a run goes on (a greenlet under gevent)."""

    def __init__(self, double: DoubleProcess, interval: float = 0.5) -> None:
        self.double = double
        self.interval = interval
        self.samples: list[tuple[float, int, int, int]] = []  # (time, 200 responses, acknowledged rows, overloads)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            stats = self.double.stats()
            ok = int(stats["status"].get("200", 0))
            self.samples.append((time.monotonic(), ok, stats["rows_acknowledged"], stats["overloads"]))
            self._stop.wait(self.interval)

    def __enter__(self) -> "StatsPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def tail(self, seconds: float) -> list[tuple[float, int, int, int]]:
        """The samples of the last `seconds` before the last acknowledged row."""
        final_rows = self.samples[-1][2]
        end = next(t for t, _, rows, _ in self.samples if rows == final_rows)
        return [s for s in self.samples if end - seconds <= s[0] <= end]


def per_second_sizes(samples: list[tuple[float, int, int, int]]) -> list[float]:
    """Mean acknowledged batch size in each ~1 s step between samples (steps without a finished insert skipped).

    Both counters count at completion. The 200 responses include the poller's own stats requests: one per sample."""
    sizes = []
    i = 0
    for j in range(1, len(samples)):
        if samples[j][0] - samples[i][0] < 0.99:
            continue
        batches, rows = samples[j][1] - samples[i][1] - (j - i), samples[j][2] - samples[i][2]
        if batches > 0:
            sizes.append(rows / batches)
        i = j
    return sizes


def test_auto_batch_size_settles_within_30_percent_of_the_doubles_optimum(tmp_path):
    # The premises: the optimum is the cliff, and the band excludes 4000, where x2 growth from 1000 and one halving
    # at the cliff would leave a sizer without a finer search.
    assert OPTIMUM == OVERLOAD_ROWS
    assert (1 - TOLERANCE) * OPTIMUM > 4_000
    with DoubleProcess(
        count_only=True,
        overhead_ms=OVERHEAD_MS,
        per_row_us=PER_ROW_US,
        max_concurrency=MAX_CONCURRENCY,
        overload_rows=OVERLOAD_ROWS,
        overload_response="circuit_breaker",
    ) as double:
        args = ["--headless", "-u", str(USERS), "-r", str(USERS), "-t", f"{RUN_S}s", "--stop-timeout", "5"]
        with StatsPoller(double) as poller:
            result = run_locust([*args, "-H", double.url, "--seed", "3"], tmp_path, timeout=RUN_S + 60)
        summary = result.summary  # asserts the run printed its summary line
        changes = [line[line.index("batch size") :] for line in result.stderr.splitlines() if "batch size " in line]
        assert summary["inserted"] > 0, result.output[-3000:]

        tail = poller.tail(TAIL_S)
        sizes = per_second_sizes(tail)
        assert len(sizes) >= TAIL_S - 2, poller.samples
        settled = statistics.median(sizes)
        seconds = tail[-1][0] - tail[0][0]
        tail_rows_per_s = (tail[-1][2] - tail[0][2]) / seconds
        tail_overloads = tail[-1][3] - tail[0][3]
        report = (
            f"optimum {OPTIMUM} ({model_rows_per_s(OPTIMUM):.0f} rows/s); last {seconds:.1f} s: median batch "
            f"{settled:.0f}, per second {[round(s) for s in sizes]}, {tail_rows_per_s:.0f} rows/s, "
            f"{tail_overloads} overloads; summary {summary}; sizer log:\n" + "\n".join(changes)
        )
        assert abs(settled - OPTIMUM) <= TOLERANCE * OPTIMUM, report
        # The sizes above only count acknowledged batches: settled also means it is not hammering the cliff.
        tail_batches = tail[-1][1] - tail[0][1] - (len(tail) - 1) + tail_overloads
        assert tail_overloads <= 0.1 * tail_batches, report
        assert changes and changes[0].startswith("batch size 1000 -> "), report
