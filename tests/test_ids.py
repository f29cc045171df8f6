"""Sensor ownership: range splitting, the master's slice book (claims, leases, takeovers), a worker's lease keeper."""

import locust  # noqa: F401

import random
from types import SimpleNamespace

import pytest

from dg_locust.ids import (
    INITIAL_LEASE_ROWS,
    LEASE_AHEAD_S,
    RESEND_S,
    LeaseKeeper,
    SliceBook,
    initial_lease_steps,
    split_range,
)


def always_live(_client_id):
    return True


@pytest.mark.parametrize(("first", "last", "parts"), [(1, 500, 2), (1, 10, 3), (5, 5, 1), (1, 7, 7), (3, 1000, 16)])
def test_split_range_covers_every_id_once_in_even_contiguous_slices(first, last, parts):
    slices = split_range(first, last, parts)
    ids = [i for a, b in slices for i in range(a, b + 1)]
    assert ids == list(range(first, last + 1))
    sizes = [b - a + 1 for a, b in slices]
    assert max(sizes) - min(sizes) <= 1


def test_workers_get_different_slices_each_from_step_zero_with_a_first_lease():
    book = SliceBook(1, 100, 2, lease_steps=50)
    a, b = book.claim("a", always_live), book.claim("b", always_live)
    assert (a.piece.first, a.piece.last, b.piece.first, b.piece.last) == (1, 50, 51, 100)
    assert a.start == b.start == 0 and a.new and b.new
    assert a.piece.granted == b.piece.granted == 50


def test_a_worker_claiming_twice_keeps_its_slice_and_start():
    book = SliceBook(1, 100, 2, lease_steps=50)
    first = book.claim("a", always_live)
    book.extend("a", first.piece.index, 400)
    again = book.claim("a", always_live)
    assert again.piece is first.piece and again.start == 0 and not again.new


def test_no_slice_is_free_while_every_owner_is_live():
    book = SliceBook(1, 100, 2, lease_steps=50)
    book.claim("a", always_live)
    book.claim("b", always_live)
    assert book.claim("c", always_live) is None


def test_a_missing_workers_slice_is_taken_over_at_the_highest_step_ever_granted():
    book = SliceBook(1, 100, 2, lease_steps=50)
    dead = book.claim("a", always_live).piece
    book.claim("b", always_live)
    book.extend("a", dead.index, 700)
    book.extend("a", dead.index, 300)  # a late, smaller request never lowers what was granted
    takeover = book.claim("c", lambda client: client != "a")
    assert takeover.piece is dead and takeover.previous == "a"
    assert takeover.start == 700
    assert dead.granted == 750


def test_the_old_owner_cannot_extend_a_slice_taken_over_and_the_new_owner_can():
    book = SliceBook(1, 100, 1, lease_steps=10)
    piece = book.claim("a", always_live).piece
    book.claim("c", lambda client: client != "a")
    assert book.extend("a", piece.index, 1000) is None  # the master answers with a revoke
    assert piece.granted == 20
    assert book.extend("c", piece.index, 60) is piece and piece.granted == 60


def test_leases_never_go_past_ingest_size_and_a_taken_over_finished_slice_starts_at_its_end():
    book = SliceBook(1, 10, 1, lease_steps=500, ingest_size=300)
    piece = book.claim("a", always_live).piece
    assert piece.granted == 300
    assert book.extend("a", piece.index, 10_000).granted == 300
    takeover = book.claim("b", lambda client: client != "a")
    assert takeover.start == 300 and piece.granted == 300


def test_the_run_is_done_when_every_slice_is_and_done_slices_are_not_handed_out():
    book = SliceBook(1, 100, 2, lease_steps=50)
    a, b = book.claim("a", always_live).piece, book.claim("b", always_live).piece
    assert not book.mark_done("a", a.index)
    assert not book.mark_done("x", b.index)  # only the owner can finish a slice
    assert book.claim("c", lambda client: client == "b") is None  # a's slice is done, not free
    assert book.mark_done("b", b.index)


def test_no_step_of_a_sensor_is_ever_leased_to_two_workers():
    """Random claims, extensions, deaths and heals; every lease a worker ever held is recorded as it saw it."""
    rng = random.Random(4)
    for _ in range(200):
        book = SliceBook(1, 30, rng.randint(1, 4), lease_steps=rng.randint(1, 20), ingest_size=rng.choice([0, 150]))
        live: set[str] = set()
        workers = [f"w{i}" for i in range(8)]
        held: dict[str, tuple[int, int, int]] = {}  # worker -> (slice, start, limit it may generate up to)
        leases: dict[int, list[tuple[str, int, int]]] = {}
        for _ in range(60):
            worker = rng.choice(workers)
            action = rng.random()
            if action < 0.2:
                live.discard(worker)  # goes missing; it may keep generating what it holds
            elif action < 0.3:
                live.add(worker)  # comes back (it never claims again once it holds a grant)
            elif action < 0.55 and worker not in held:
                live.add(worker)
                claim = book.claim(worker, live.__contains__)
                if claim is not None:
                    held[worker] = (claim.piece.index, claim.start, claim.piece.granted)
            elif worker in held:
                index, start, limit = held[worker]
                piece = book.extend(worker, index, limit + rng.randint(1, 40))
                if piece is not None:
                    held[worker] = (index, start, piece.granted)
            for owner, (index, start, limit) in held.items():
                spans = [s for s in leases.setdefault(index, []) if s[0] != owner]
                leases[index] = spans + [(owner, start, limit)]
        for spans in leases.values():
            ordered = sorted((start, limit) for _, start, limit in spans if limit > start)
            for (_, end), (start, _) in zip(ordered, ordered[1:], strict=False):
                assert start >= end


def test_initial_lease_is_a_few_seconds_when_consecutive_and_a_row_budget_when_fast():
    consecutive = SimpleNamespace(ingest_mode="consecutive", ingest_delta=0.5)
    fast = SimpleNamespace(ingest_mode="fast", ingest_delta=0.5)
    assert initial_lease_steps(consecutive, 250) * 0.5 >= LEASE_AHEAD_S
    assert initial_lease_steps(fast, 250) == INITIAL_LEASE_ROWS // 250
    assert initial_lease_steps(fast, 10**9) >= 1


def test_a_worker_progressing_steadily_never_runs_out_of_lease():
    keeper = LeaseKeeper(limit=20, base_steps=20)
    progress, now, reply = 0, 0.0, None
    for _ in range(600):  # one minute in ticks of 0.1 s, at 150 steps/s; the master answers by the next tick
        if reply is not None:
            keeper.granted(reply)
        reply = keeper.wanted(progress, now)
        now += 0.1
        progress = min(progress + 15, keeper.limit)
        assert progress < keeper.limit or now < 0.5  # only the first ticks may wait, while the rate is measured
    assert keeper.limit - progress <= 150 * (LEASE_AHEAD_S + 1)  # and it never holds much more than it needs


def test_an_unanswered_request_is_repeated_only_after_a_while_and_never_past_ingest_size():
    keeper = LeaseKeeper(limit=10, base_steps=10, cap=25)
    assert keeper.wanted(9, 0.0) == 19
    assert keeper.wanted(9, RESEND_S / 2) is None
    assert keeper.wanted(9, RESEND_S + 0.1) == 19
    keeper.granted(19)
    assert keeper.wanted(18, RESEND_S + 0.2) == 25
    keeper.granted(25)
    assert keeper.wanted(24, RESEND_S + 0.3) is None
