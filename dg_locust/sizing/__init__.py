"""Adaptive batch size: how many rows each INSERT batch carries.

Public API: `BatchSizer` (adaptive), `FixedBatchSize` (``--batch-size N``), the `Sizer` protocol both satisfy,
`SizerSettings`, `SizerState` and `Phase`. Pure decision objects: no I/O, no Locust, no sleeping; the clock and the log
sink are injected, so tests drive them with a fake clock and simulated servers.

What it optimises
    Acknowledged rows per second of wall time for the whole user class in this process, not the latency of one batch.
    Rows refused or in doubt count as zero, so a batch that fails fast can never look like a fast batch.

Two parts
    Measurement (`meter`): rows/s of one size per window, straggler-aware: a window starts once the batches of the
    previous size drained, ends at now minus the longest latency, spreads each batch's rows over its time in flight,
    and spans at least ``window_s`` seconds and ``min_batches`` batches. `evidence` keeps each size's recent windows
    and learns the noise: how much one window's rate varies at a fixed size (a real node: +-30 % with refreshes and
    merges).

    Policy (`policy`, `backpressure`), on a grid of 8 sizes per doubling (`grid`):

    growing     x2 per window while the larger size wins; if the very first doubling does not, x0.5 ("shrinking")
                while the smaller size wins or costs nothing.
    narrowing   pattern search around the best size with steps of x1.41, x1.19, x1.09.
    holding     stay at the best size, re-measuring it every window; every ``probe_every`` windows probe one size
                ~19 % away, alternately above and below ("probing"). A winning probe starts a climb in its direction.
                A window far off the best size's mean (more than ``change`` and three standard errors) means the
                cluster changed: the other sizes are forgotten and both neighbours probed; beyond 2x either way the
                search restarts with x2 steps.
    backoff     overload sets a ceiling at the failing size that decays (one grid step per ``ceiling_decay_s``,
                slower each time it is hit again, and after a slow failure such as a timeout no faster than one step
                per 20x the time it took). A larger size being tried (a probe or a climb) that fails sends
                the size back to the best size, which worked a window ago; otherwise overload halves the size at
                once, and after one window the sizer returns to the best size it knows below the ceiling or climbs
                back with x1.41 steps. Overload that went on although the size was halved did not depend on the
                size: once it stops, the sizer returns to its size from before (at most once per
                ``ceiling_decay_s``).

    A challenger wins only by more than ``margin`` and ``confidence`` standard errors of the measured noise; a
    smaller one also wins if it costs at most ``margin`` as far as the noise lets one tell (so on a plateau the sizer
    settles near the smallest size within the margin of the best); close calls are measured again, up to
    ``confirm_windows`` windows (``lead_windows`` while the challenger leads by more than the margin), and then the
    incumbent stays. Failures never pull the size up: while a batch of the current size or smaller failed in the
    last window, nothing is decided. Windows older than ``stale_windows`` windows no longer count.

Defaults (`SizerSettings()`)
    start 1_000 rows      small enough not to overload a cold single node; x2 growth reaches 64k in six windows.
    minimum 100 rows      below this, per-request overhead dominates any cluster.
    maximum 100_000 rows  a temperature row is ~60 bytes of JSON, so ~6 MB per request: far below CrateDB's 100 MB
                          ``http.max_content_length``, and it bounds the CPU time a gevent worker spends on one batch.
    window_s 2.0 s, min_batches 8: a window is short, yet averages dozens of batches at typical concurrency 8-32.

Observability: `snapshot()` returns a `SizerState`; the optional ``log`` callable receives one line when the size has
changed, at most one line per ``log_interval_s`` seconds of the injected clock (changes in between are folded into the
next line), e.g. ``batch size 4000 -> 8000 (growing; 123456 rows/s at 4000)``.
"""

from dg_locust.sizing.settings import Phase, SizerSettings, SizerState
from dg_locust.sizing.sizer import BatchSizer, FixedBatchSize, Sizer

__all__ = ["BatchSizer", "FixedBatchSize", "Phase", "Sizer", "SizerSettings", "SizerState"]
