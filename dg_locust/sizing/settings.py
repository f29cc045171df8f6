"""The sizer's settings (`SizerSettings`), its phases (`Phase`) and what it reports (`SizerState`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class SizerSettings:
    """Tuning of `BatchSizer`; the defaults are explained in the package docstring."""

    start: int = 1_000
    minimum: int = 100
    maximum: int = 100_000
    window_s: float = 2.0  # minimum wall time of one measurement window
    min_batches: int = 8  # minimum number of batches of the measured size in one window
    margin: float = 0.02  # smallest relative gain that counts, however quiet the measurements
    confidence: float = 2.0  # standard errors a difference must exceed to count
    confirm_windows: int = 3  # most windows a challenger is measured for before a close call counts as no gain
    lead_windows: int = 8  # most windows for a challenger that leads by more than the margin, not yet by the noise
    probe_every: int = 4  # holding windows between two probes
    change: float = 0.15  # smallest move of the incumbent's rate that means "the cluster changed"
    fail_share_rise: float = 0.05  # rise of the refused-row share over its recent level that counts as overload
    ceiling_decay_s: float = 30.0  # seconds per grid step (~9 %) that the overload ceiling rises
    stale_windows: int = 20  # windows older than this many windows no longer count
    log_interval_s: float = 5.0  # at most one log line per this many seconds

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.start <= self.maximum:
            raise ValueError(f"need 1 <= minimum <= start <= maximum, got {self.minimum}, {self.start}, {self.maximum}")
        if self.window_s <= 0 or self.min_batches < 1 or self.probe_every < 1 or self.confirm_windows < 1:
            raise ValueError("window_s must be > 0, min_batches, probe_every and confirm_windows >= 1")
        if self.lead_windows < self.confirm_windows:
            raise ValueError("lead_windows must be >= confirm_windows")
        if self.margin < 0 or self.confidence < 0 or self.change <= 0 or self.fail_share_rise <= 0:
            raise ValueError("margin and confidence must be >= 0, change and fail_share_rise > 0")
        if self.ceiling_decay_s <= 0 or self.stale_windows < 1 or self.log_interval_s < 0:
            raise ValueError("ceiling_decay_s must be > 0, stale_windows >= 1, log_interval_s >= 0")


class Phase(StrEnum):
    """What the sizer is doing; the values appear in log lines and `SizerState.phase`."""

    GROWING = "growing"  # climbing to larger sizes while they win
    SHRINKING = "shrinking"  # climbing to smaller sizes while they win or cost nothing
    NARROWING = "narrowing"  # pattern search around the incumbent with halving steps
    HOLDING = "holding"  # at the incumbent, re-measuring it every window
    PROBING = "probing"  # one size next to the incumbent, for a window or a few
    BACKOFF = "backoff"  # one window at the halved size after an overload
    FIXED = "fixed"  # ``--batch-size N``: never changes


@dataclass(frozen=True)
class SizerState:
    """What a sizer is doing, for reports and metrics."""

    current: int  # the size handed out now
    best_size: int  # the incumbent: the best size known
    best_rows_per_s: float  # its mean rate over its recent windows, 0.0 if not measured yet
    phase: Phase
    windows: int  # measurement windows closed so far
    backoffs: int  # times the size was cut because of overload (not counting overloads at the minimum)
    last_window_rows_per_s: float  # rate of the last closed window, 0.0 before the first
    ceiling: int | None = None  # sizes at or above this are avoided after overload; None if no ceiling
    noise: float = 0.0  # the relative spread of one window's rate the sizer has measured (0.1 is +-10 %)
