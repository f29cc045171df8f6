"""The server rotation both clients share: round-robin, cool-downs that double per strike, probes when all cool."""

import locust  # noqa: F401

from dataclasses import dataclass, field

from dg_locust.servers import COOL_DOWN_FIRST_S, COOL_DOWN_MAX_S, PROBE_INTERVAL_S, CoolDown, ServerRotation


@dataclass
class FakeNode:
    url: str
    cooling: CoolDown = field(default_factory=CoolDown)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_servers_take_turns_and_a_struck_one_is_skipped_until_its_cool_down_ends():
    clock = FakeClock()
    a, b, c = FakeNode("a"), FakeNode("b"), FakeNode("c")
    rotation = ServerRotation([a, b, c], clock)
    assert [rotation.pick()[0].url for _ in range(4)] == ["a", "b", "c", "a"]
    rotation.strike(c)
    assert [rotation.pick()[0].url for _ in range(4)] == ["b", "a", "b", "a"]
    clock.now += COOL_DOWN_FIRST_S
    assert {rotation.pick()[0].url for _ in range(3)} == {"a", "b", "c"}


def test_cool_down_doubles_with_every_strike_in_a_row_up_to_the_maximum_and_an_answer_clears_it():
    cooling = CoolDown()
    for strikes in range(1, 12):
        cooling.cool_down(0.0)
        assert cooling.cool_until == min(COOL_DOWN_FIRST_S * 2 ** (strikes - 1), COOL_DOWN_MAX_S)
    assert cooling.cool_until == COOL_DOWN_MAX_S
    cooling.answered()
    assert (cooling.strikes, cooling.cool_until) == (0, 0.0)


def test_when_every_server_cools_down_the_one_due_first_is_probed_within_the_probe_interval():
    clock = FakeClock()
    a, b = FakeNode("a"), FakeNode("b")
    rotation = ServerRotation([a, b], clock)
    for _ in range(8):
        rotation.strike(a)  # 30 s
    rotation.strike(b)  # 0.25 s
    node, wait = rotation.pick()
    assert (node.url, wait) == ("b", COOL_DOWN_FIRST_S)
    rotation.strike(b)
    rotation.strike(b)
    rotation.strike(b)  # 2 s: longer than a probe interval
    node, wait = rotation.pick()
    assert (node.url, wait) == ("b", PROBE_INTERVAL_S)
