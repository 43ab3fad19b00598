"""Reactions, edits, unsends and disappearing texts between nodes over real TCP."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import trio

from p2pdm import envelope
from p2pdm.envelope import MessageKind
from p2pdm.node import IncomingPush, MarkRead
from tests.test_files import start, start_pair
from tests.test_relay import Home, until

if TYPE_CHECKING:
    from pathlib import Path

    from p2pdm.identity import NodeId
    from p2pdm.node import Node

DEADLINE = 30


def view(node: Node, peer: NodeId) -> dict[str, Any]:
    """The conversation as the API shows it, by text id."""
    rows = node.store.conversation(peer, 50)
    reactions = node.store.reactions([r.message_id for r in rows])
    return {
        r.message_id: (
            None if r.deleted else r.text,
            r.edited_ms is not None,
            {str(who): e for who, e in reactions.get(r.message_id, [])},
        )
        for r in rows
    }


async def test_edit_react_and_unsend_reach_the_other_side(tmp_path: Path) -> None:
    a_home, b_home = Home(tmp_path, "a"), Home(tmp_path, "b")
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, a_home, b_home, accept=False)
            b_events = b.events.subscribe()
            a_events = a.events.subscribe()
            [typo, other] = await a.send_texts(b_home.id, ["helo", "see you"])
            await until(b_events, ("message", {"text": "helo"}), ("message", {"text": "see you"}))

            await a.change_own_text(typo, "hello")
            await until(b_events, ("edited", {"id": typo.hex(), "text": "hello"}))
            assert view(b, a_home.id)[typo] == ("hello", True, {})
            assert [h.text for h in b.store.search("hello", 10)] == ["hello"]
            assert b.store.search("helo", 10) == []

            await b.react(typo, "👍")
            await until(a_events, ("reaction", {"id": typo.hex(), "by": str(b_home.id)}))
            assert view(a, b_home.id)[typo] == ("hello", True, {str(b_home.id): "👍"})
            await b.react(typo, "")
            await until(a_events, ("reaction", {"id": typo.hex(), "emoji": ""}))
            assert view(a, b_home.id)[typo][2] == {}

            await a.change_own_text(other, None)
            await until(b_events, ("deleted", {"id": other.hex()}))
            assert view(b, a_home.id)[other] == (None, False, {})
            assert view(a, b_home.id)[other] == (None, False, {})
            assert b.store.search("see", 10) == []
            # Only the sender changes its texts, and an unsent one stays unsent.
            with pytest.raises(ValueError, match="only your own"):
                await b.change_own_text(typo, "mine now")
            with pytest.raises(ValueError, match="no such message"):
                await a.change_own_text(other, "back again")
            nursery.cancel_scope.cancel()


async def test_a_node_offline_at_the_edit_gets_it_through_a_relay(tmp_path: Path) -> None:
    a_home, r_home, b_home = (Home(tmp_path, n) for n in "arb")
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            r = await start(nursery, r_home)
            a = await start(nursery, a_home, r.bound[0], relay=False)
            async with trio.open_nursery() as b_scope:
                b = await start(b_scope, b_home, r.bound[0], relay=False)
                b_events = b.events.subscribe()
                [mid] = await a.send_texts(b_home.id, ["meet at 5"])
                await until(b_events, ("message", {"text": "meet at 5"}))
                b_scope.cancel_scope.cancel()
            a_events = a.events.subscribe()
            await a.change_own_text(mid, "meet at 6")
            await a.react(mid, "⏰")
            await until(a_events, ("relayed", {}), ("relayed", {}))
            b = await start(nursery, b_home, r.bound[0], relay=False)
            b_events = b.events.subscribe()
            await until(b_events, ("edited", {"id": mid.hex()}), ("reaction", {"id": mid.hex()}))
            assert view(b, a_home.id)[mid] == ("meet at 6", True, {str(a_home.id): "⏰"})
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("batching", ["two batches", "one batch", "one batch, two runs"])
@pytest.mark.parametrize(
    "order",
    [(MessageKind.EDIT, MessageKind.TEXT), (MessageKind.TEXT, MessageKind.EDIT)],
    ids=["edit first", "text first"],
)
async def test_an_edit_applies_whichever_of_it_and_its_text_comes_first(
    tmp_path: Path, order: tuple[MessageKind, MessageKind], batching: str
) -> None:
    """Relays may deliver out of order. Two batches: each push is committed
    before the next. One batch: both are queued before the committer runs;
    with another kind of op between them, they make two runs of it."""
    a_home, b_home = Home(tmp_path, "a"), Home(tmp_path, "b")
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            a = await start(nursery, a_home)
            [mid] = await a.send_texts(b_home.id, ["first draft"])
            await a.change_own_text(mid, "final")
            by_kind = {row.kind: row.envelope for row in a.store.outbox()}
            b = await start(nursery, b_home)
            b_events = b.events.subscribe()
            ops = []
            for seq, kind in enumerate(order):
                op = IncomingPush(a_home.id, seq, by_kind[kind])
                await b.committer.submit(op)
                ops.append(op)
                if batching == "two batches":
                    await op.done.wait()
                elif batching == "one batch, two runs" and seq == 0:
                    await b.committer.submit(MarkRead([], None))
            for op in ops:
                await op.done.wait()
            await until(b_events, ("message", {"id": mid.hex()}), ("edited", {"text": "final"}))
            assert view(b, a_home.id)[mid] == ("final", True, {})
            nursery.cancel_scope.cancel()


async def test_disappearing_texts_vanish_from_both_sides(tmp_path: Path) -> None:
    a_home, b_home = Home(tmp_path, "a"), Home(tmp_path, "b")
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, a_home, b_home, accept=False)
            b_events = b.events.subscribe()
            a_events = a.events.subscribe()
            [before] = await a.send_texts(b_home.id, ["this one stays"])
            # b sends before the timer too: it must not keep the timer it read then.
            [b_before] = await b.send_texts(a_home.id, ["so does this one"])
            await a.set_timer(b_home.id, 5_000)
            await until(b_events, ("timer", {"after": 5.0}))
            assert b.store.timer(a_home.id) == 5_000  # both sides now send them
            [poof] = await a.send_texts(b_home.id, ["this one vanishes"])
            [back] = await b.send_texts(a_home.id, ["so does this"])
            [row] = [r for r in a.store.outbox() if r.message_id == poof]
            assert row.expires_ms <= a.now_ms() + 5_000  # relays drop it as soon
            await a.change_own_text(poof, "this one vanishes too")
            [edit] = [r for r in a.store.outbox() if r.kind == MessageKind.EDIT]
            [shown] = [r for r in a.store.conversation(b_home.id, 10) if r.message_id == poof]
            assert shown.vanish_ms is not None
            assert edit.expires_ms <= shown.vanish_ms  # the new text goes no later
            for events in (a_events, b_events):
                await until(
                    events, ("vanished", {"id": poof.hex()}), ("vanished", {"id": back.hex()})
                )
            for node, peer in ((a, b_home.id), (b, a_home.id)):
                kept = {r.message_id for r in node.store.conversation(peer, 10)}
                assert kept == {before, b_before}
                assert node.store.search("vanishes", 10) == []
            await b.set_timer(a_home.id, 0)
            await until(a_events, ("timer", {"after": 0.0}))
            assert a.store.timer(b_home.id) == 0
            [stays] = await a.send_texts(b_home.id, ["off again: this one stays"])
            [shown] = [r for r in a.store.conversation(b_home.id, 10) if r.message_id == stays]
            assert shown.vanish_ms is None
            nursery.cancel_scope.cancel()


async def test_a_reaction_from_a_third_party_never_shows(tmp_path: Path) -> None:
    """M learns message ids (a relay sees them) and reacts to a message of
    the A-B conversation: before it arrives, after, and on a file."""
    a_home, b_home, m_home = (Home(tmp_path, n) for n in "abm")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8" + b"x" * 1000)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            b = await start(nursery, b_home)  # nobody to deliver to: b's outbox holds them
            [early_text, text] = await b.send_texts(a_home.id, ["first", "second"])
            file_id, _ = await b.send_file(a_home.id, photo)
            by_id = {row.message_id: row.envelope for row in b.store.outbox()}
            a = await start(nursery, a_home)
            a_events = a.events.subscribe()
            seq = 0

            async def push(sender: NodeId, data: bytes) -> None:
                nonlocal seq
                op = IncomingPush(sender, seq, data)
                seq += 1
                await a.committer.submit(op)
                await op.done.wait()

            def reaction(target: bytes, emoji: str) -> bytes:
                now = a.now_ms()
                body = {"ref": target, "e": emoji}
                kind = MessageKind.REACTION
                return envelope.seal(
                    m_home.identity,
                    a_home.id,
                    kind,
                    body,
                    timestamp_ms=now,
                    expires_ms=now + 60_000,
                )

            await push(m_home.id, reaction(early_text, "💩"))  # before its target
            for mid in (early_text, text, file_id):
                await push(b_home.id, by_id[mid])
            await push(m_home.id, reaction(text, "💩"))  # after it
            await push(m_home.id, reaction(file_id, "💩"))  # on a file
            # The sender's own reaction on its file does count.
            b_reacts = envelope.seal(
                b_home.identity,
                a_home.id,
                MessageKind.REACTION,
                {"ref": file_id, "e": "📷"},
                timestamp_ms=a.now_ms(),
                expires_ms=a.now_ms() + 60_000,
            )
            await push(b_home.id, b_reacts)
            await until(a_events, ("reaction", {"id": file_id.hex(), "emoji": "📷"}))
            held = a.store.reactions([early_text, text, file_id])
            assert held == {file_id: [(b_home.id, "📷")]}
            nursery.cancel_scope.cancel()
