"""Set reconciliation between relays: exact differences, bounded cost, hostile input refused."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pdm import wire
from p2pdm.reconcile import (
    LEAF_IDS,
    MAX_MESSAGE_BYTES,
    MAX_ROUNDS,
    ReconcileError,
    Reconciler,
    is_start,
    run_in_memory,
)
from p2pdm.session import MAX_FRAME_PLAINTEXT


def ids(n: int, rng: random.Random) -> list[bytes]:
    return [rng.randbytes(32) for _ in range(n)]


def check(a: set[bytes], b: set[bytes]) -> tuple[Reconciler, Reconciler]:
    left, right = run_in_memory(a, b)
    assert left.done
    assert left.pop_give() == a - b
    assert right.pop_give() == b - a
    # What each learned it lacks is at most the true difference.
    assert left.pop_need() <= b - a
    assert right.pop_need() <= a - b
    return left, right


def test_identical_sets_take_one_exchange_of_a_few_bytes() -> None:
    same = set(ids(5000, random.Random(1)))
    left, right = check(same, same)
    assert left.rounds == right.rounds == 1
    assert left.bytes_sent + right.bytes_sent < 100


@pytest.mark.parametrize(("n_a", "n_b"), [(0, 0), (0, 3000), (3000, 0), (1, 1), (17, 0)])
def test_empty_and_disjoint_sets(n_a: int, n_b: int) -> None:
    rng = random.Random(n_a * 7 + n_b)
    check(set(ids(n_a, rng)), set(ids(n_b, rng)))


def test_a_small_difference_in_a_large_set_costs_little() -> None:
    rng = random.Random(2)
    common = ids(20_000, rng)
    a_only, b_only = ids(10, rng), ids(10, rng)
    left, right = check(set(common + a_only), set(common + b_only))
    # 20 differences: a few round trips and a few KiB, not the 640 KB of ids.
    assert left.rounds + right.rounds <= 12
    assert left.bytes_sent + right.bytes_sent < 16 * 1024


def test_ids_that_share_long_prefixes_still_reconcile() -> None:
    # Ids equal in their first 31 bytes put many in one deep node.
    base = os.urandom(31)
    a = {base + bytes([i]) for i in range(0, 200, 2)}
    b = {base + bytes([i]) for i in range(0, 200, 3)}
    check(a, b)


def test_every_message_fits_one_session_frame() -> None:
    rng = random.Random(3)
    left = Reconciler(sorted(ids(20_000, rng)), initiator=True)
    right = Reconciler(sorted(ids(20_000, rng)), initiator=False)
    message = left.initiate()
    while message is not None:
        assert len(wire.encode({"t": 8, "m": message})) <= MAX_FRAME_PLAINTEXT
        answer = right.receive(message)
        assert len(wire.encode({"t": 8, "m": answer})) <= MAX_FRAME_PLAINTEXT
        message = left.receive(answer)
    assert len(left.pop_give()) == len(right.pop_give()) == 20_000


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.binary(min_size=32, max_size=32), max_size=200),
    st.lists(st.booleans(), max_size=200),
    st.lists(st.binary(min_size=32, max_size=32), max_size=40),
)
def test_any_two_sets_reconcile_exactly(
    pool: list[bytes], in_b: list[bool], b_extra: list[bytes]
) -> None:
    a = set(pool)
    b = {x for x, keep in zip(pool, in_b, strict=False) if keep} | set(b_extra)
    check(a, b)


# --- a hostile peer ---------------------------------------------------------


def responder() -> Reconciler:
    return Reconciler(sorted(ids(100, random.Random(4))), initiator=False)


def message(**fields: wire.Value) -> dict[wire.Key, wire.Value]:
    base: dict[wire.Key, wire.Value] = {"fp": b"", "split": b"", "ids": b"", "want": b""}
    base.update(fields)
    return base


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("not a map", "is a map"),
        ({"fp": b""}, "RECON"),
        (message(s=True, fp=bytes([65, 0, 0])), "depth"),
        (message(s=True, fp=bytes([1, 0x10, 1]) + bytes(8)), "prefix out of range"),
        (message(s=True, fp=bytes([0, 5])), "cut short"),
        (message(s=True, fp=bytes([0, 0, 0, 0])), "named twice"),
        (message(s=True, fp=bytes([0, 0x80, 0x00])), "shortest"),
        (message(s=True, ids=bytes([0, LEAF_IDS + 1])), "at most"),
        (message(s=True, ids=bytes([1, 0x0F, 1]) + bytes(32)), "outside its node"),
        (message(s=True, want=bytes(31)), "32-byte"),
        (message(s=True, want=bytes(MAX_MESSAGE_BYTES + 32)), "over"),
        (message(s=True, want=bytes(40_000), ids=bytes(40_000)), "at most"),
        (message(s=False), "true when present"),
        (message(), "start marker"),
        (message(fp=b"", s=1), "s"),
    ],
)
def test_malformed_messages_are_refused(bad: wire.Value, why: str) -> None:
    with pytest.raises(ReconcileError, match=why):
        responder().receive(bad)


def test_a_second_start_or_a_message_after_the_end_is_refused() -> None:
    r = responder()
    r.receive(message(s=True))
    with pytest.raises(ReconcileError, match="start marker"):
        r.receive(message(s=True))
    left, _ = run_in_memory([], [])
    with pytest.raises(ReconcileError, match="ended"):
        left.receive(message())


def test_a_peer_that_never_stops_talking_is_cut_off() -> None:
    r = responder()
    r.receive(message(s=True))
    rounds = 1
    with pytest.raises(ReconcileError, match="messages"):  # noqa: PT012
        while rounds < 10_000:
            r.receive(message())
            rounds += 1
    assert rounds == MAX_ROUNDS


def test_is_start_marks_only_a_first_message() -> None:
    first = Reconciler([], initiator=True).initiate()
    assert is_start(first)
    assert not is_start(message())
