"""Which server gets the next request: round-robin over a run's servers, skipping those that cool down.

Owns `CoolDown` (one server's strikes in a row and the time before which it gets no request) and `ServerRotation`
(the round-robin pick). The HTTP client and the PostgreSQL-wire client both use them, so a node that refuses
connections or leaves requests without an answer is treated the same whichever protocol the run speaks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

# Cool-down of a server after a refused connection, a 429/503 or no answer: it doubles with every strike in a row,
# so a node that is down for long is probed rarely, and one that comes back is used again within a second or so.
COOL_DOWN_FIRST_S = 0.25
COOL_DOWN_MAX_S = 30.0
# When every server cools down, a request probes the one due first at least this often, so that a single node
# that restarts is found again quickly (throughput must recover within seconds, not after a 30 s cool-down).
PROBE_INTERVAL_S = 1.0


class CoolDown:
    """One server's strikes (refusals, overload answers, requests left without an answer) in a row."""

    def __init__(self) -> None:
        self.strikes = 0
        self.cool_until = 0.0  # monotonic time before which this server gets no request

    def cool_down(self, now: float) -> None:
        self.strikes += 1
        self.cool_until = now + min(COOL_DOWN_FIRST_S * 2 ** (self.strikes - 1), COOL_DOWN_MAX_S)

    def answered(self) -> None:
        self.strikes = 0
        self.cool_until = 0.0


class _Cooling(Protocol):
    cooling: CoolDown


Node = TypeVar("Node", bound=_Cooling)


class ServerRotation(Generic[Node]):
    """The servers of one client, each with its `CoolDown`, handed out round-robin."""

    def __init__(self, nodes: Sequence[Node], clock: Callable[[], float]) -> None:
        self.nodes = list(nodes)
        self._clock = clock
        self._next = 0

    def pick(self) -> tuple[Node, float]:
        """The next server round-robin that is not cooling down, or else the one due first and how long to wait."""
        now = self._clock()
        count = len(self.nodes)
        for offset in range(count):
            node = self.nodes[(self._next + offset) % count]
            if node.cooling.cool_until <= now:
                self._next = (self._next + offset + 1) % count
                return node, 0.0
        node = min(self.nodes, key=lambda n: n.cooling.cool_until)
        return node, min(node.cooling.cool_until - now, PROBE_INTERVAL_S)

    def strike(self, node: Node) -> None:
        """`node` refused, was overloaded or left a request without an answer: it cools down for longer."""
        node.cooling.cool_down(self._clock())
