from __future__ import annotations

import os
import queue
import signal
import stat
import subprocess
import sys
import threading
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from p2pdm import envelope, store
from p2pdm.envelope import MessageKind
from p2pdm.identity import Identity, NodeId
from p2pdm.store import (
    MAX_ADDRESSES_PER_PEER,
    MAX_FUTURE_SKEW_MS,
    MIGRATIONS,
    SCHEMA_VERSION,
    SEEN_GRACE_MS,
    AcceptResult,
    AddressSource,
    OutboxState,
    Queued,
    Store,
    StoreError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

NOW = 1_700_000_000_000
HOUR = 3600 * 1000
LATER = NOW + 7 * 24 * HOUR


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "node.db") as s:
        yield s


def incoming(
    sender: Identity,
    me: Identity,
    text: str = "hello",
    *,
    ts: int = NOW,
    exp: int = LATER,
) -> tuple[envelope.Message, bytes]:
    sealed = envelope.seal(
        sender, me.node_id, MessageKind.TEXT, text, timestamp_ms=ts, expires_ms=exp
    )
    return envelope.open_envelope(me, sealed), sealed


def queue_text(s: Store, sender: Identity, to: NodeId, text: str, exp: int = LATER) -> bytes:
    sealed = envelope.seal(sender, to, MessageKind.TEXT, text, timestamp_ms=NOW, expires_ms=exp)
    outer = envelope.parse_outer(sealed)
    assert s.enqueue(
        message_id=outer.message_id,
        recipient=to,
        envelope=sealed,
        kind=MessageKind.TEXT,
        body=text,
        expires_ms=exp,
        now_ms=NOW,
    )
    return outer.message_id


def fake_id(prefix: bytes) -> NodeId:
    """A node id whose key starts with `prefix` (the store never needs the point)."""
    return NodeId(prefix + bytes(32 - len(prefix)))


def test_message_id_length_matches_envelope() -> None:
    assert store.MESSAGE_ID_LEN == envelope.MESSAGE_ID_LEN


# --- accept once per id -----------------------------------------------------


def test_same_envelope_is_stored_once(tmp_path: Path, alice: Identity, bob: Identity) -> None:
    msg, sealed = incoming(alice, bob, "once")
    with Store.open(tmp_path / "n.db") as s:
        assert s.accept_incoming(msg, sealed, NOW) is AcceptResult.STORED
        assert s.accept_incoming(msg, sealed, NOW + 1) is AcceptResult.DUPLICATE
        assert s.inbox_count() == 1
        [row] = s.inbox()
        assert row.message_id == msg.message_id
        assert row.sender == alice.node_id
        assert row.recipient == bob.node_id
        assert row.body == "once"
        assert row.kind == MessageKind.TEXT
        assert (row.timestamp_ms, row.expires_ms, row.received_ms) == (NOW, LATER, NOW)
        assert not row.read
        assert s.inbox_envelope(msg.message_id) == sealed
    # A replay after a restart is still a duplicate.
    with Store.open(tmp_path / "n.db") as s:
        assert s.accept_incoming(msg, sealed, NOW + 2) is AcceptResult.DUPLICATE
        assert s.inbox_count() == 1


def test_a_copy_gets_another_receipt_at_most_once_per_interval(
    tmp_path: Path, alice: Identity, bob: Identity
) -> None:
    minute = 60_000
    msgs = [incoming(alice, bob, f"m{i}") for i in range(5000)]
    with Store.open(tmp_path / "n.db") as s:
        with s.transaction():
            for msg, sealed in msgs:
                s.accept_incoming(msg, sealed, NOW)
        first = msgs[0][0].message_id
        assert s.receipt_again(first, NOW, minute)  # the first copy: its receipt may be lost
        assert not s.receipt_again(first, NOW + minute - 1, minute)
        # Many different ids replayed in turn: none gets a second receipt
        # within the interval (nothing is forgotten to make room).
        assert all(s.receipt_again(m.message_id, NOW + 1, minute) for m, _ in msgs[1:])
        assert not any(s.receipt_again(m.message_id, NOW + 2, minute) for m, _ in msgs)
        assert not s.receipt_again(b"\x00" * 32, NOW, minute)  # not held: none
    # Remembered across a restart; due again a resend interval later, and at
    # once after the clock was set back past the last one.
    with Store.open(tmp_path / "n.db") as s:
        assert not s.receipt_again(first, NOW + minute - 1, minute)
        assert s.receipt_again(first, NOW + minute, minute)
        assert s.receipt_again(first, NOW, minute)


def test_expired_and_future_messages_are_refused_and_not_remembered(
    db: Store, alice: Identity, bob: Identity
) -> None:
    msg, sealed = incoming(alice, bob, exp=NOW + 1000)
    assert db.accept_incoming(msg, sealed, NOW + 1000) is AcceptResult.EXPIRED
    assert db.accept_incoming(msg, sealed, NOW + 5000) is AcceptResult.EXPIRED
    assert not db.is_seen(msg.message_id)

    ahead = NOW + MAX_FUTURE_SKEW_MS + 1
    msg, sealed = incoming(alice, bob, ts=ahead, exp=ahead + HOUR)
    assert db.accept_incoming(msg, sealed, NOW) is AcceptResult.FUTURE
    assert not db.is_seen(msg.message_id)
    assert db.inbox_count() == 0
    # Exactly at the limit is accepted; the sender's clock is allowed that far ahead.
    assert db.accept_incoming(msg, sealed, NOW + 1) is AcceptResult.STORED


def test_many_messages_are_taken_in_order_as_one_after_the_other(
    db: Store, alice: Identity, bob: Identity
) -> None:
    carol = Identity.generate()
    db.set_blocked(carol.node_id, True, NOW)
    first, again, blocked = (
        incoming(alice, bob, "one"),
        incoming(alice, bob, "two"),
        incoming(carol, bob, "from a blocked sender"),
    )
    expired = incoming(alice, bob, "late", exp=NOW)
    future = incoming(alice, bob, "ahead", ts=NOW + MAX_FUTURE_SKEW_MS + 1)
    assert db.accept_incoming(*first, NOW) is AcceptResult.STORED
    batch = [first, again, again, blocked, blocked, expired, future]
    assert db.accept_incoming_many(batch, NOW) == [
        AcceptResult.DUPLICATE,  # stored before
        AcceptResult.STORED,
        AcceptResult.DUPLICATE,  # the same id earlier in this call
        AcceptResult.BLOCKED,
        AcceptResult.DUPLICATE,  # its id is remembered though it was dropped
        AcceptResult.EXPIRED,
        AcceptResult.FUTURE,
    ]
    assert [r.body for r in db.inbox()] == ["one", "two"]
    assert [h.message_id for h in db.search("two", 10)] == [again[0].message_id]
    # Strangers refused: a contact's message is still taken.
    db.add_contact(alice.node_id, "alice", NOW)
    dave = incoming(Identity.generate(), bob, "hi")
    more = incoming(alice, bob, "three")
    assert db.accept_incoming_many([dave, more], NOW, strangers=False) == [
        AcceptResult.BLOCKED,
        AcceptResult.STORED,
    ]


def test_blocked_sender_is_dropped_but_remembered(
    db: Store, alice: Identity, bob: Identity
) -> None:
    db.set_blocked(alice.node_id, True, NOW)
    assert db.is_blocked(alice.node_id)
    msg, sealed = incoming(alice, bob, "spam")
    assert db.accept_incoming(msg, sealed, NOW) is AcceptResult.BLOCKED
    assert db.inbox() == []
    assert db.is_seen(msg.message_id)
    db.set_blocked(alice.node_id, False, NOW)
    assert db.accept_incoming(msg, sealed, NOW) is AcceptResult.DUPLICATE
    assert db.inbox() == []
    fresh, fresh_sealed = incoming(alice, bob, "hello again")
    assert db.accept_incoming(fresh, fresh_sealed, NOW) is AcceptResult.STORED


def test_seen_ids_are_purged_only_after_expiry_plus_grace(
    db: Store, alice: Identity, bob: Identity
) -> None:
    msg, sealed = incoming(alice, bob, exp=NOW + HOUR)
    assert db.accept_incoming(msg, sealed, NOW) is AcceptResult.STORED
    assert db.purge_expired(NOW + HOUR + SEEN_GRACE_MS - 1) == 0
    assert db.is_seen(msg.message_id)
    assert db.purge_expired(NOW + HOUR + SEEN_GRACE_MS) == 1
    assert not db.is_seen(msg.message_id)
    # The inbox keeps the message; a replay now is refused by its expiry.
    assert db.inbox_count() == 1
    assert db.accept_incoming(msg, sealed, NOW + HOUR + SEEN_GRACE_MS) is AcceptResult.EXPIRED


def test_inbox_filters_follow_and_read_flags(db: Store, alice: Identity, bob: Identity) -> None:
    carol = Identity.generate()
    ids = []
    for i, sender in enumerate([alice, carol, alice, alice]):
        msg, sealed = incoming(sender, bob, f"m{i}")
        assert db.accept_incoming(msg, sealed, NOW + i) is AcceptResult.STORED
        ids.append(msg.message_id)
    rows = db.inbox()
    assert [r.body for r in rows] == ["m0", "m1", "m2", "m3"]
    assert [r.body for r in db.inbox(alice.node_id)] == ["m0", "m2", "m3"]
    assert [r.body for r in db.inbox(limit=2)] == ["m2", "m3"]
    assert [r.body for r in db.inbox(after_seq=rows[1].seq)] == ["m2", "m3"]
    assert [r.body for r in db.inbox(after_seq=rows[0].seq, limit=1)] == ["m1"]
    assert db.inbox(after_seq=rows[-1].seq) == []

    assert db.mark_read([ids[0], ids[1]]) == [ids[0], ids[1]]
    assert db.mark_read([ids[0], ids[2], bytes(32)]) == [ids[2]]
    assert db.inbox_count() == 4
    assert db.inbox_count(unread_only=True) == 1
    assert [r.read for r in db.inbox()] == [True, True, True, False]
    with pytest.raises(StoreError, match="32 bytes"):
        db.mark_read([b"short"])


# --- outbox -----------------------------------------------------------------


def queued(sender: Identity, to: NodeId, text: str, exp: int = LATER) -> Queued:
    sealed, outer = envelope.seal_with_outer(
        sender, to, MessageKind.TEXT, text, timestamp_ms=NOW, expires_ms=exp
    )
    return Queued(outer.message_id, to, sealed, MessageKind.TEXT, text, exp)


def test_many_envelopes_queue_at_once_each_id_once(
    db: Store, alice: Identity, bob: Identity
) -> None:
    old = queued(alice, bob.node_id, "queued before")
    assert db.enqueue_many([old], NOW) == [True]
    items = [queued(alice, bob.node_id, f"note {i}") for i in range(1200)]
    # Already queued, or twice in the same call: only the first copy is new.
    answer = db.enqueue_many([items[0], old, *items, items[5]], NOW)
    assert answer == [True, False, False, *[True] * 1199, False]
    assert [r.message_id for r in db.pending_for(bob.node_id, NOW, 2000)] == [
        old.message_id,
        *[i.message_id for i in items],
    ]
    assert len(db.search("note", 2000)) == 1200
    # One invalid item: nothing of the call is queued.
    late = queued(alice, bob.node_id, "one more")
    with pytest.raises(StoreError, match="already expired"):
        db.enqueue_many([late, queued(alice, bob.node_id, "expired", exp=NOW)], NOW)
    assert db.outbox_message(late.message_id) is None
    # A receipt for all of them moves each once, in the order given.
    ids = [i.message_id for i in reversed(items)]
    assert db.mark_delivered([*ids, ids[0]], NOW + 1, recipient=bob.node_id) == ids
    assert db.mark_delivered(ids, NOW + 2, recipient=bob.node_id) == []


def state_of(s: Store, mid: bytes) -> OutboxState:
    row = s.outbox_message(mid)
    assert row is not None
    return row.state


def test_outbox_lifecycle_moves_forward_only(db: Store, alice: Identity, bob: Identity) -> None:
    mid = queue_text(db, alice, bob.node_id, "hi bob")
    row = db.outbox_message(mid)
    assert row is not None
    assert row.state is OutboxState.QUEUED
    assert row.body == "hi bob"
    assert envelope.open_envelope(bob, row.envelope).body == "hi bob"
    # The same envelope queued twice is one row.
    assert not db.enqueue(
        message_id=mid,
        recipient=bob.node_id,
        envelope=row.envelope,
        kind=MessageKind.TEXT,
        body="hi bob",
        expires_ms=LATER,
        now_ms=NOW,
    )
    assert [r.message_id for r in db.pending_for(bob.node_id, NOW)] == [mid]
    assert db.pending_recipients(NOW) == [bob.node_id]

    assert db.mark_sent(mid, NOW + 1)
    assert not db.mark_sent(mid, NOW + 2)
    assert state_of(db, mid) is OutboxState.SENT
    assert [r.message_id for r in db.pending_for(bob.node_id, NOW)] == [mid]

    # A receipt signed by anyone but the recipient moves nothing.
    assert db.mark_delivered([mid], NOW + 3, recipient=alice.node_id) == []
    assert db.mark_delivered([mid, bytes(32)], NOW + 3, recipient=bob.node_id) == [mid]
    assert db.mark_delivered([mid], NOW + 4, recipient=bob.node_id) == []
    row = db.outbox_message(mid)
    assert row is not None
    assert (row.state, row.delivered_ms) == (OutboxState.DELIVERED, NOW + 3)
    assert db.pending_for(bob.node_id, NOW) == []
    assert db.outbox_pending_count(NOW) == 0

    # Backward moves are ignored.
    assert not db.mark_sent(mid, NOW + 5)
    assert db.expire_outbox(LATER + 1) == 0
    assert state_of(db, mid) is OutboxState.DELIVERED
    assert db.mark_outbox_read([mid], NOW + 6, recipient=bob.node_id) == [mid]
    assert db.mark_delivered([mid], NOW + 7, recipient=bob.node_id) == []
    assert not db.mark_sent(mid, NOW + 8)
    assert state_of(db, mid) is OutboxState.READ


def test_mark_sent_many_moves_only_pending_messages(
    db: Store, alice: Identity, bob: Identity
) -> None:
    queued, sent, done = (queue_text(db, alice, bob.node_id, t) for t in ("a", "b", "c"))
    assert db.mark_sent(sent, NOW + 1)
    assert db.mark_delivered([done], NOW + 1, recipient=bob.node_id) == [done]
    assert db.mark_sent_many([queued, sent, done, bytes(32)], NOW + 9) == [queued]
    rows = {m: db.outbox_message(m) for m in (queued, sent, done)}
    assert {m: (r.state, r.last_attempt_ms) for m, r in rows.items() if r} == {
        queued: (OutboxState.SENT, NOW + 9),
        sent: (OutboxState.SENT, NOW + 9),
        done: (OutboxState.DELIVERED, None),
    }
    with pytest.raises(StoreError):
        db.mark_sent_many([b"short"], NOW)


def test_outbox_expiry(db: Store, alice: Identity, bob: Identity) -> None:
    queued = queue_text(db, alice, bob.node_id, "q", exp=NOW + HOUR)
    sent = queue_text(db, alice, bob.node_id, "s", exp=NOW + HOUR)
    later = queue_text(db, alice, bob.node_id, "l", exp=NOW + 2 * HOUR)
    assert db.mark_sent(sent, NOW)
    assert db.outbox_pending_count(NOW) == 3
    # Past its expiry a message is no longer offered, even before expire_outbox.
    assert [r.message_id for r in db.pending_for(bob.node_id, NOW + HOUR)] == [later]
    assert db.outbox_pending_count(NOW + HOUR) == 1
    assert db.expire_outbox(NOW + HOUR) == 2
    assert db.expire_outbox(NOW + HOUR) == 0
    assert [r.state for r in db.outbox()] == [
        OutboxState.EXPIRED,
        OutboxState.EXPIRED,
        OutboxState.QUEUED,
    ]
    # A late receipt does not revive an expired message.
    assert db.mark_delivered([queued, sent], NOW + HOUR, recipient=bob.node_id) == []
    assert [r.body for r in db.outbox(limit=1)] == ["l"]
    assert db.pending_recipients(NOW + 2 * HOUR) == []
    with pytest.raises(StoreError, match="already expired"):
        queue_text(db, alice, bob.node_id, "too late", exp=NOW)


def test_attempts_retry_and_relays(db: Store, alice: Identity, bob: Identity) -> None:
    relay1, relay2 = fake_id(b"\x01"), fake_id(b"\x02")
    mid = queue_text(db, alice, bob.node_id, "via relays")
    assert db.note_attempt(mid, NOW)
    assert not db.note_attempt(bytes(32), NOW)
    assert db.pending_for(bob.node_id, NOW + 10, retry_after_ms=1000) == []
    assert len(db.pending_for(bob.node_id, NOW + 1000, retry_after_ms=1000)) == 1
    assert db.mark_sent(mid, NOW + 2000, relay=relay1)
    assert not db.mark_sent(mid, NOW + 2001, relay=relay1)
    assert not db.mark_sent(mid, NOW + 2002, relay=relay2)
    row = db.outbox_message(mid)
    assert row is not None
    assert (row.attempts, row.last_attempt_ms, row.relayed_to) == (1, NOW, 2)
    assert db.relays_for(mid) == [relay1, relay2]
    # Relays holding copies do not hold back a push straight to the recipient...
    assert len(db.pending_for(bob.node_id, NOW + 2500, retry_after_ms=1000)) == 1
    # ...but the recipient's own acknowledgement counts as the latest attempt.
    assert not db.mark_sent(mid, NOW + 3000)
    assert db.pending_for(bob.node_id, NOW + 3500, retry_after_ms=1000) == []


# --- contacts and resolve_peer ----------------------------------------------


def test_contacts_names_and_blocking(db: Store, alice: Identity, bob: Identity) -> None:
    row = db.add_contact(alice.node_id, "  Alice ", NOW)
    assert (row.name, row.blocked, row.added_ms) == ("Alice", False, NOW)
    with pytest.raises(StoreError, match="already used"):
        db.add_contact(bob.node_id, "alice", NOW)
    db.add_contact(bob.node_id, "Bob", NOW + 1)
    db.set_blocked(bob.node_id, True, NOW + 2)
    renamed = db.add_contact(bob.node_id, "Robert", NOW + 3)
    assert (renamed.name, renamed.blocked, renamed.added_ms) == ("Robert", True, NOW + 1)
    assert [(c.name, c.blocked) for c in db.contacts()] == [("Alice", False), ("Robert", True)]
    for bad in ["", "   ", "x" * 65, "tab\there", str(alice.node_id)]:
        with pytest.raises(StoreError):
            db.add_contact(bob.node_id, bad, NOW)
    assert db.remove_contact(bob.node_id)
    assert not db.remove_contact(bob.node_id)
    assert not db.is_blocked(bob.node_id)


def test_resolve_peer(db: Store, alice: Identity, bob: Identity) -> None:
    # Keys starting 0x0000 encode to "aaaa...": two such ids share a prefix.
    twin1, twin2 = fake_id(b"\x00\x00\x01"), fake_id(b"\x00\x00\x02")
    lone = Identity.generate().node_id  # random: shares no 4-character prefix (p = 2^-20)
    db.peer_seen(twin1, NOW)
    db.note_peer_address(twin2, "10.0.0.2", 7707, "mdns", NOW)
    db.add_contact(alice.node_id, "alice", NOW)
    queue_text(db, bob, lone, "to lone")
    assert str(twin1)[:4] == str(twin2)[:4] == "aaaa"

    unknown = Identity.generate().node_id
    assert db.resolve_peer(str(unknown)) == unknown
    assert db.resolve_peer(f" {str(unknown).upper()} ") == unknown
    assert db.resolve_peer("ALICE") == alice.node_id
    assert db.resolve_peer(str(lone)[:4]) == lone
    assert db.resolve_peer(str(twin1)[:12]) == twin1
    with pytest.raises(StoreError, match="matches 2 node ids") as err:
        db.resolve_peer("aaaa")
    assert str(twin1) in str(err.value)
    assert str(twin2) in str(err.value)
    with pytest.raises(StoreError, match="at least 4"):
        db.resolve_peer("aaa")
    with pytest.raises(StoreError, match="no known node id"):
        db.resolve_peer("zzzz7")
    with pytest.raises(StoreError, match="no contact is named"):
        db.resolve_peer("Nobody Here")
    with pytest.raises(StoreError, match="not a valid node id"):
        db.resolve_peer(str(unknown)[:-1] + ("a" if str(unknown)[-1] != "a" else "b"))
    # A name wins over a prefix it happens to be.
    db.add_contact(bob.node_id, "aaaa", NOW)
    assert db.resolve_peer("aaaa") == bob.node_id


# --- peers and addresses ----------------------------------------------------


def test_addresses_per_peer_are_bounded(db: Store) -> None:
    peer = fake_id(b"\x07")
    db.note_peer_address(peer, "192.168.1.1", 7707, AddressSource.BOOTSTRAP, NOW)
    db.note_dial_result(peer, "192.168.1.1", 7707, True, NOW)
    for i in range(40):
        db.note_peer_address(peer, f"10.0.0.{i}", 7707, "mdns", NOW + 1 + i)
    addrs = db.addresses_for(peer)
    assert len(addrs) == MAX_ADDRESSES_PER_PEER
    # The proven address survived the flood; of the others the newest are kept.
    assert addrs[0].host == "192.168.1.1"
    assert addrs[0].last_ok_ms == NOW
    kept = {a.host for a in addrs[1:]}
    assert kept == {f"10.0.0.{i}" for i in range(40 - MAX_ADDRESSES_PER_PEER + 1, 40)}


def test_peer_addresses_and_sources(db: Store) -> None:
    peer = fake_id(b"\x08")
    db.note_peer_address(peer, "Host.Example", 7707, "manual", NOW)
    db.note_peer_address(peer, "host.example", 7707, "mdns", NOW + 5)
    db.note_peer_address(peer, "10.0.0.9", 7000, "pex", NOW + 1)
    db.note_dial_result(peer, "10.0.0.9", 7000, False, NOW + 2)
    [row] = db.peers()
    assert row.node_id == peer
    assert (row.first_seen_ms, row.last_seen_ms) == (NOW, None)
    by_host = {a.host: a for a in row.addresses}
    assert by_host["host.example"].source is AddressSource.MANUAL
    assert by_host["host.example"].last_seen_ms == NOW + 5
    assert by_host["10.0.0.9"].failures == 1
    assert [a.host for a in db.addresses_for(peer)] == ["host.example", "10.0.0.9"]
    db.peer_seen(peer, NOW + 10)
    assert db.peers()[0].last_seen_ms == NOW + 10
    for host, port, source in [
        ("", 1, "mdns"),
        ("a b", 1, "mdns"),
        ("h", 0, "mdns"),
        ("h", 65536, "mdns"),
        ("h", 1, "carrier pigeon"),
    ]:
        with pytest.raises(StoreError):
            db.note_peer_address(peer, host, port, source, NOW)


def test_number_of_peers_is_bounded(db: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "MAX_PEERS", 3)
    friend, talked = fake_id(b"\x01"), fake_id(b"\x02")
    db.add_contact(friend, "friend", NOW)
    db.note_peer_address(friend, "10.0.0.1", 1, "manual", NOW)
    db.peer_seen(talked, NOW)
    for i in range(10):
        db.note_peer_address(fake_id(bytes([0x10 + i])), "10.9.9.9", 1, "pex", NOW + i)
    kept = {p.node_id for p in db.peers()}
    assert kept == {friend, talked, fake_id(bytes([0x19]))}


# --- schema and opening -----------------------------------------------------


def test_fresh_database_has_current_version_and_private_mode(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    with Store.open(path) as s:
        assert s.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
        s.set_meta("k", b"v")
        for p in [path, path.with_name("node.db-wal")]:
            assert stat.S_IMODE(p.stat().st_mode) == 0o600
    with Store.open(path) as s:
        assert s.get_meta("k") == b"v"
        s.set_meta("k", None)
        assert s.get_meta("k") is None
        assert s.integrity_check() == []


def test_memory_store(alice: Identity, bob: Identity) -> None:
    msg, sealed = incoming(alice, bob)
    with Store.memory() as s:
        assert s.schema_version == SCHEMA_VERSION
        with s.transaction():
            assert s.accept_incoming(msg, sealed, NOW) is AcceptResult.STORED
        assert s.accept_incoming(msg, sealed, NOW) is AcceptResult.DUPLICATE
        with pytest.raises(StoreError, match="after_seq"):
            s.inbox(after_seq=-1)


def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    with Store.open(path, migrations=(*MIGRATIONS, "CREATE TABLE later (x);")) as s:
        assert s.schema_version == SCHEMA_VERSION + 1
    with pytest.raises(StoreError, match="newer than this p2pdm"):
        Store.open(path)


def test_upgrade_keeps_data_and_a_failed_migration_changes_nothing(
    tmp_path: Path, alice: Identity
) -> None:
    path = tmp_path / "node.db"
    with Store.open(path) as s:
        s.add_contact(alice.node_id, "alice", NOW)
    broken = "CREATE TABLE extra (x); INSERT INTO no_such_table VALUES (1);"
    with pytest.raises(StoreError, match="rolled back"):
        Store.open(path, migrations=(*MIGRATIONS, broken))
    # Had the broken one left `extra` behind, this would fail on it.
    with Store.open(path, migrations=(*MIGRATIONS, "CREATE TABLE extra (x);")) as s:
        assert s.schema_version == SCHEMA_VERSION + 1
        assert s.resolve_peer("alice") == alice.node_id


def test_garbage_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not an SQLite database, not even close\n" * 100)
    with pytest.raises(StoreError, match=r"garbage\.db"):
        Store.open(path)
    with pytest.raises(StoreError, match="cannot create"):
        Store.open(tmp_path / "missing-dir" / "node.db")


def test_closed_store_is_an_error(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "node.db")
    s.close()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.inbox_count()


# --- transactions -----------------------------------------------------------


class Boom(Exception):
    pass


def fail_inside_transaction(s: Store, work: Callable[[], None]) -> None:
    with s.transaction():
        work()
        raise Boom


def test_exception_in_transaction_rolls_everything_back(
    tmp_path: Path, alice: Identity, bob: Identity
) -> None:
    path = tmp_path / "node.db"
    msg, sealed = incoming(alice, bob)
    with Store.open(path) as s:

        def work() -> None:
            assert s.accept_incoming(msg, sealed, NOW) is AcceptResult.STORED
            s.add_contact(alice.node_id, "alice", NOW)
            queue_text(s, bob, alice.node_id, "reply")
            assert s.inbox_count() == 1  # visible inside the transaction

        with pytest.raises(Boom):
            fail_inside_transaction(s, work)
        assert not s.in_transaction
        assert s.inbox_count() == 0
        assert s.contacts() == []
        assert s.outbox() == []
        # The same message is new again: its seen id was rolled back too.
        assert s.accept_incoming(msg, sealed, NOW) is AcceptResult.STORED
    with Store.open(path) as s:
        assert s.inbox_count() == 1


def test_transaction_commits_as_one_and_failed_calls_inside_are_atomic(
    tmp_path: Path, alice: Identity, bob: Identity
) -> None:
    path = tmp_path / "node.db"
    with Store.open(path) as s:
        s.add_contact(bob.node_id, "bob", NOW)
        with s.transaction():
            s.add_contact(alice.node_id, "alice", NOW)
            with pytest.raises(StoreError, match="already used"):
                s.add_contact(fake_id(b"\x09"), "bob", NOW)
            with pytest.raises(StoreError, match="do not nest"), s.transaction():
                pass
            assert s.in_transaction
            msg, sealed = incoming(alice, bob)
            s.accept_incoming(msg, sealed, NOW)
    with Store.open(path) as s:
        assert [c.name for c in s.contacts()] == ["alice", "bob"]
        assert s.inbox_count() == 1


def test_an_all_or_nothing_transaction_refuses_to_commit_after_a_failed_call(
    tmp_path: Path, alice: Identity, bob: Identity
) -> None:
    path = tmp_path / "node.db"
    msg, sealed = incoming(alice, bob)
    with Store.open(path) as s:
        s.add_contact(bob.node_id, "bob", NOW)
        refused = pytest.raises(StoreError, match=r"failed part way.*nothing in it was stored")
        with refused, s.transaction(all_or_nothing=True):
            assert s.accept_incoming(msg, sealed, NOW) is AcceptResult.STORED
            with pytest.raises(StoreError, match="already used"):
                s.add_contact(fake_id(b"\x09"), "bob", NOW)
            # The caller carries on: the next call already refuses.
            with pytest.raises(StoreError, match="failed part way"):
                s.add_contact(alice.node_id, "alice", NOW)
        assert s.inbox_count() == 0
        # The next transaction has its savepoints again: a failed call inside
        # it is undone alone.
        with s.transaction():
            with pytest.raises(StoreError, match="already used"):
                s.add_contact(fake_id(b"\x09"), "bob", NOW)
            assert s.accept_incoming(msg, sealed, NOW) is AcceptResult.STORED
    with Store.open(path) as s:
        assert s.inbox_count() == 1
        assert [c.name for c in s.contacts()] == ["bob"]


def test_other_threads_wait_for_a_running_transaction(
    db: Store, alice: Identity, bob: Identity
) -> None:
    seen: list[int] = []
    reader = threading.Thread(target=lambda: seen.append(db.inbox_count()))
    msg, sealed = incoming(alice, bob)

    def work() -> None:
        db.accept_incoming(msg, sealed, NOW)
        reader.start()
        # The reader must block on the open batch, not read into it. (A
        # bounded wait for a thread that should not finish, not a sleep.)
        reader.join(timeout=0.5)
        assert reader.is_alive()

    with pytest.raises(Boom):
        fail_inside_transaction(db, work)
    reader.join(timeout=30)
    assert seen == [0]


# --- crash durability -------------------------------------------------------

CHILD = r"""
import sys
from pathlib import Path

from p2pdm import envelope
from p2pdm.envelope import MessageKind
from p2pdm.identity import Identity
from p2pdm.store import AcceptResult, Store

path, batch_size = Path(sys.argv[1]), int(sys.argv[2])
now = 1_700_000_000_000
alice, bob = Identity.generate(), Identity.generate()
store = Store.open(path)
previous = []
n = 0
while True:
    batch = []
    for _ in range(batch_size):
        n += 1
        sealed = envelope.seal(
            alice, bob.node_id, MessageKind.TEXT, f"message {n}",
            timestamp_ms=now, expires_ms=now + 10**9,
        )
        batch.append((envelope.open_envelope(bob, sealed), sealed))
    with store.transaction():
        for msg, sealed in previous:  # replays of the last committed batch
            assert store.accept_incoming(msg, sealed, now) is AcceptResult.DUPLICATE
        for msg, sealed in batch:
            assert store.accept_incoming(msg, sealed, now) is AcceptResult.STORED
    # Committed: only now may the ids be reported.
    sys.stdout.write("".join(msg.message_id.hex() + "\n" for msg, _ in batch))
    sys.stdout.flush()
    previous = batch
"""
# Generous: the child needs a second or so to start; a stuck one fails the test.
LINE_TIMEOUT_S = 60


def run_and_kill(path: Path, wanted: int) -> list[str]:
    """Run the writer until it has reported `wanted` ids, SIGKILL it, return all it reported."""
    lines: queue.Queue[str | None] = queue.Queue()
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), "16"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=path.parent,
    ) as proc:
        assert proc.stdout is not None
        out = proc.stdout

        def pump() -> None:
            for line in out:
                lines.put(line.strip())
            lines.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        printed: list[str] = []
        try:
            while len(printed) < wanted:
                line = lines.get(timeout=LINE_TIMEOUT_S)
                if line is None:
                    _, err = proc.communicate(timeout=LINE_TIMEOUT_S)
                    pytest.fail(f"writer exited early ({proc.returncode}): {err}")
                printed.append(line)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=LINE_TIMEOUT_S)
        assert proc.returncode == -signal.SIGKILL
        # Whatever it printed before dying was committed too.
        while (line := lines.get(timeout=LINE_TIMEOUT_S)) is not None:
            printed.append(line)
        reader.join(timeout=LINE_TIMEOUT_S)
    return printed


@pytest.mark.slow
def test_committed_messages_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    printed: list[str] = []
    for round_ in range(3):
        printed += run_and_kill(path, wanted=200 * (round_ + 1))
        with Store.open(path) as s:
            assert s.integrity_check() == []
            stored = Counter(r.message_id.hex() for r in s.inbox())
            assert all(stored[mid] == 1 for mid in printed)
            assert max(stored.values()) == 1
            assert len(stored) >= len(printed)
