"""The sizes an adaptive sizer may use: a log grid of 8 steps per doubling (~9 % apart), two significant digits.

Finer steps could not be told apart through measurement noise; two significant digits make sizes read well in logs
(1000, 1100, 1200, 1300, 1400, 1500, 1700, 1800, 2000, ...). The policy works on grid indexes: one index step is
~9 %, `OCTAVE` steps are a doubling.
"""

from __future__ import annotations

import math
from bisect import bisect_right

OCTAVE = 8  # grid steps per doubling


def round2(x: float) -> int:
    """Two significant digits (1414 -> 1400); exact below 100."""
    if x < 100:
        return max(1, round(x))
    unit = 10 ** (int(math.log10(x)) - 1)
    return int(round(x / unit) * unit)


class SizeGrid:
    """Sizes from `minimum` to `maximum` through `start`, ~9 % apart; `start` is at index `start_index`."""

    def __init__(self, start: int, minimum: int, maximum: int) -> None:
        sizes = {start, minimum, maximum}
        for sign in (1, -1):
            k = 1
            while minimum < (x := start * 2 ** (sign * k / OCTAVE)) < maximum:
                sizes.add(round2(x))
                k += 1
        self.sizes: tuple[int, ...] = tuple(sorted(s for s in sizes if minimum <= s <= maximum))
        self.start_index: int = self.sizes.index(start)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, index: int) -> int:
        return self.sizes[index]

    @property
    def top(self) -> int:
        """The index of the largest size."""
        return len(self.sizes) - 1

    def index_at_or_below(self, size: int) -> int:
        """The index of the largest grid size <= `size` (0 for sizes below the grid)."""
        return max(0, bisect_right(self.sizes, size) - 1)
