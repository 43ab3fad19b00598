"""The store's chat views: conversations, history pages, requests, search."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import pytest

from p2pdm import envelope, store
from p2pdm.envelope import MessageKind
from p2pdm.identity import Identity
from p2pdm.store import AcceptResult, OutboxState, Store, StoreError
from tests.test_store import LATER, NOW, incoming, queue_text

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

ME = Identity.generate()
ANN, BOB, EVE = (Identity.generate() for _ in range(3))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "node.db") as s:
        yield s


def receive(s: Store, sender: Identity, text: str, at: int, **kw: bool) -> bytes:
    msg, sealed = incoming(sender, ME, text, ts=at)
    assert s.accept_incoming(msg, sealed, at, **kw) is AcceptResult.STORED
    return msg.message_id


def test_text_kind_matches_envelope() -> None:
    assert store.TEXT_KIND == MessageKind.TEXT
    assert store.READ_KIND == MessageKind.READ
    assert store.GROUP_TEXT_KIND == MessageKind.GROUP_TEXT
    assert store.FILE_KIND == MessageKind.FILE
    assert store.FILE_PART_KIND == MessageKind.FILE_PART
    assert (store.REACTION_KIND, store.EDIT_KIND, store.DELETE_KIND) == (
        MessageKind.REACTION,
        MessageKind.EDIT,
        MessageKind.DELETE,
    )


def test_conversations_list_contacts_and_correspondents_latest_first(db: Store) -> None:
    db.add_contact(ANN.node_id, "ann", NOW)
    receive(db, BOB, "hi from bob", NOW + 1)
    receive(db, BOB, "still bob", NOW + 2)
    queue_text(db, ME, EVE.node_id, "to eve")  # created at NOW
    rows = {r.peer: r for r in db.conversations()}
    assert [r.peer for r in db.conversations()] == [BOB.node_id, EVE.node_id, ANN.node_id]
    bob = rows[BOB.node_id]
    assert (bob.contact, bob.unread, bob.received, bob.last_text, bob.last_mine) == (
        False,
        2,
        2,
        "still bob",
        False,
    )
    assert (rows[EVE.node_id].last_text, rows[EVE.node_id].last_mine) == ("to eve", True)
    assert (rows[ANN.node_id].name, rows[ANN.node_id].last_ms) == ("ann", None)
    db.mark_read_by_sender(peer=BOB.node_id)
    assert {r.peer: r for r in db.conversations()}[BOB.node_id].unread == 0


def test_accepting_a_peer_makes_it_a_contact_but_never_unblocks(db: Store) -> None:
    assert not db.is_accepted(BOB.node_id)
    assert db.accept_peer(BOB.node_id, NOW)
    assert not db.accept_peer(BOB.node_id, NOW)
    assert db.is_accepted(BOB.node_id)
    db.set_blocked(EVE.node_id, True, NOW)
    assert not db.accept_peer(EVE.node_id, NOW)
    assert not db.is_accepted(EVE.node_id)


def test_without_strangers_a_non_contact_is_dropped_and_its_id_remembered(db: Store) -> None:
    msg, sealed = incoming(BOB, ME, "hello?")
    assert db.accept_incoming(msg, sealed, NOW, strangers=False) is AcceptResult.BLOCKED
    assert db.inbox() == []
    assert db.is_seen(msg.message_id)
    db.add_contact(ANN.node_id, None, NOW)
    receive(db, ANN, "a contact gets through", NOW, strangers=False)
    assert [r.body for r in db.inbox()] == ["a contact gets through"]


def test_mark_read_by_sender_groups_and_reports_only_changes(db: Store) -> None:
    a1 = receive(db, ANN, "one", NOW)
    b1 = receive(db, BOB, "two", NOW)
    a2 = receive(db, ANN, "three", NOW)
    assert db.mark_read_by_sender([a1, b1]) == {ANN.node_id: [a1], BOB.node_id: [b1]}
    assert db.mark_read_by_sender([a1], peer=ANN.node_id) == {ANN.node_id: [a2]}
    assert db.mark_read_by_sender([a1, b1], peer=ANN.node_id) == {}


def test_conversation_pages_cover_history_once_in_order(db: Store) -> None:
    expected = []
    for i in range(23):
        if i % 3:
            receive(db, BOB, f"in {i}", NOW + i * 10)
            expected.append(f"in {i}")
        else:
            # Sent at the same local millisecond as nothing else: order by time.
            sealed = envelope.seal(
                ME, BOB.node_id, MessageKind.TEXT, f"out {i}", timestamp_ms=NOW, expires_ms=LATER
            )
            outer = envelope.parse_outer(sealed)
            db.enqueue(
                message_id=outer.message_id,
                recipient=BOB.node_id,
                envelope=sealed,
                kind=MessageKind.TEXT,
                body=f"out {i}",
                expires_ms=LATER,
                now_ms=NOW + i * 10,
            )
            expected.append(f"out {i}")
    receive(db, ANN, "someone else", NOW + 5)
    pages, before = [], None
    while True:
        page = db.conversation(BOB.node_id, 5, before)
        pages.insert(0, [r.text for r in page])
        if len(page) < 5:
            break
        before = page[0].cursor
    assert [t for p in pages for t in p] == expected
    latest = db.conversation(BOB.node_id, 2)
    assert [(r.text, r.mine, r.state) for r in latest] == [
        ("out 21", True, OutboxState.QUEUED),
        ("in 22", False, None),
    ]


def test_messages_at_the_same_millisecond_are_not_lost_between_pages(db: Store) -> None:
    texts = [f"burst {i}" for i in range(7)]
    for text in texts:
        receive(db, BOB, text, NOW)
    first = db.conversation(BOB.node_id, 4)
    rest = db.conversation(BOB.node_id, 4, first[0].cursor)
    assert [r.text for r in rest + first] == texts


@pytest.mark.parametrize(
    "cursor",
    ["", "1.2", "a.b.c", "1.0.-3", "9" * 30 + ".0.1", "1.0.1.2", "9" * 19 + ".0.0", "1.3.0"],
)
def test_a_bad_cursor_is_a_clear_error(db: Store, cursor: str) -> None:
    with pytest.raises(StoreError, match="cursor"):
        db.conversation(BOB.node_id, 5, cursor)


def test_search_finds_words_by_prefix_both_ways_ignoring_case_and_accents(db: Store) -> None:
    receive(db, BOB, "Meet at the Café tomorrow", NOW)
    queue_text(db, ME, BOB.node_id, "see you at the cafe")
    receive(db, ANN, "coffee is better", NOW + 1)
    hits = db.search("CAF", 10)
    assert [(h.text, h.mine) for h in hits] == [
        ("see you at the cafe", True),
        ("Meet at the Café tomorrow", False),
    ]
    assert "[Café]" in hits[1].snippet
    assert [h.text for h in db.search("cafe tomorrow", 10)] == ["Meet at the Café tomorrow"]
    assert [h.text for h in db.search("co", 10, ANN.node_id)] == ["coffee is better"]
    assert db.search("co", 10, BOB.node_id) == []
    assert [h.text for h in db.search("the", 1)] == ["see you at the cafe"]


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ("AND", 1),  # the word "and", not an operator
        ("cafe OR", 0),  # both words, and there is no "or"
        ("NEAR(cafe b", 0),
        ('cafe" OR "zzz', 0),
        ("col:cafe", 0),  # "col" is a word here, not a column filter
        ("^cafe", 1),
        ("cafe -b", 1),
        ("😀 cafe", 1),
    ],
)
def test_search_takes_any_typed_text_as_words(db: Store, query: str, found: int) -> None:
    receive(db, BOB, "the cafe and b", NOW)
    receive(db, BOB, "near col or", NOW)
    hits = db.search(query, 10)  # no FTS5 syntax error, whatever was typed
    assert [h.text for h in hits] == ["the cafe and b"] * found


@pytest.mark.parametrize("query", ["", "   ", "!!", "*", '"'])
def test_search_with_no_words_is_a_clear_error(db: Store, query: str) -> None:
    with pytest.raises(StoreError, match="at least one word"):
        db.search(query, 10)


def test_receipts_are_not_listed_as_a_conversation_nor_marked_read(db: Store) -> None:
    sealed = envelope.seal(
        BOB, ME.node_id, MessageKind.READ, {"ids": [bytes(32)]}, timestamp_ms=NOW, expires_ms=LATER
    )
    msg = envelope.open_envelope(ME, sealed)
    assert db.accept_incoming(msg, sealed, NOW) is AcceptResult.STORED
    assert db.conversations() == []
    assert db.conversation(BOB.node_id, 10) == []
    text = receive(db, BOB, "a text", NOW)
    # Reading a peer's conversation reads its texts, not its receipts.
    assert db.mark_read_by_sender(peer=BOB.node_id) == {BOB.node_id: [text]}


UNDO_SCHEMA_5 = (
    " DROP TABLE groups; DROP TABLE group_pending; DROP TABLE group_states;"
    " DROP INDEX inbox_by_group; DROP INDEX outbox_by_group; DROP INDEX inbox_by_shared_id;"
    " ALTER TABLE inbox DROP COLUMN gm;"
    " ALTER TABLE inbox DROP COLUMN grp; ALTER TABLE outbox DROP COLUMN grp;"
    " ALTER TABLE outbox DROP COLUMN gm;"
    " DROP TABLE files_out; DROP TABLE files_in;"
    " DROP TABLE reactions; DROP TABLE timers; DROP TABLE search_ids;"
    " DROP INDEX inbox_by_ref; DROP INDEX inbox_vanish; DROP INDEX outbox_vanish;"
    " DROP INDEX inbox_file_part; ALTER TABLE inbox DROP COLUMN part;"
    " ALTER TABLE inbox DROP COLUMN ref; ALTER TABLE inbox DROP COLUMN edited_ms;"
    " ALTER TABLE inbox DROP COLUMN deleted; ALTER TABLE inbox DROP COLUMN vanish_ms;"
    " ALTER TABLE outbox DROP COLUMN edited_ms; ALTER TABLE outbox DROP COLUMN deleted;"
    " ALTER TABLE outbox DROP COLUMN vanish_ms;"
)
UNDO_SCHEMA_6 = " ALTER TABLE inbox DROP COLUMN receipted_again_ms;"


def test_upgrading_a_store_indexes_the_messages_it_already_holds(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with Store.open(path) as s:
        receive(s, BOB, "written before search existed", NOW)
        queue_text(s, ME, BOB.node_id, "mine before search existed")
    # Back to the schema before search, with the rows in place.
    conn = sqlite3.connect(path)
    conn.executescript(
        "DROP TABLE search; DROP INDEX inbox_by_sender_time; DROP INDEX outbox_by_recipient_time;"
        " DROP INDEX inbox_unread;"
        # and what schemas 5 and 6 added (groups, attachments; receipts for copies)
        f"{UNDO_SCHEMA_6}{UNDO_SCHEMA_5}"
        " PRAGMA user_version = 3;"  # schema 3: the one before search
    )
    conn.close()
    with Store.open(path) as new:
        # Writing to someone accepts them: bob, written to before, is a contact.
        assert new.is_accepted(BOB.node_id)
        assert sorted(h.text for h in new.search("before existed", 10)) == [
            "mine before search existed",
            "written before search existed",
        ]
        assert len(new.conversation(BOB.node_id, 10)) == 2
