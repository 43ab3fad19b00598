"""Chat rules between two in-process nodes over real TCP on 127.0.0.1:
message requests, read receipts and typing, and what each may send to whom."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import trio

from p2pdm import envelope
from p2pdm.envelope import MessageKind
from p2pdm.identity import Identity
from p2pdm.node import BatchContext, IncomingPush, Node
from p2pdm.settings import AcceptPolicy, ChatSettings
from p2pdm.store import OutboxState

from .nodes import make_node, next_event

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

DEADLINE = 30
Events = trio.MemoryReceiveChannel[tuple[str, dict[str, Any]]]


class Pair:
    """a and b connected (b dialled a); each with its event stream."""

    def __init__(self, a: Node, b: Node, a_events: Events, b_events: Events) -> None:
        self.a, self.b, self.a_events, self.b_events = a, b, a_events, b_events
        self.a_id, self.b_id = a.identity.node_id, b.identity.node_id

    async def a_writes(self, text: str) -> bytes:
        """a sends b a text; returns its id once b has it."""
        [mid] = await self.a.send_texts(self.b_id, [text])
        while (await next_event(self.b_events, "message"))["id"] != mid.hex():
            pass
        return mid

    async def a_flushes(self) -> None:
        """Returns once b has taken every frame a sent before: a text sent
        after them is acked (stored or dropped), and b reads in order."""
        [mid] = await self.a.send_texts(self.b_id, ["flush"])
        # "sent" at the ACK, or "delivered" alone when b's receipt was
        # committed before the ACK's outcome (it then moved straight there).
        async for name, data in self.a_events:
            if name in ("sent", "delivered") and data["id"] == mid.hex():
                return


@contextlib.asynccontextmanager
async def connected_pair(tmp_path: Path) -> AsyncIterator[Pair]:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            a = make_node(tmp_path, "a")
            await nursery.start(a.run)
            b = make_node(tmp_path, "b", bootstrap=(a.bound[0],))
            a_events, b_events = a.events.subscribe(), b.events.subscribe()
            await nursery.start(b.run)
            await next_event(a_events, "peer")
            await next_event(b_events, "peer")
            yield Pair(a, b, a_events, b_events)
            nursery.cancel_scope.cancel()


def read_receipts(node: Node) -> list[Any]:
    return [r for r in node.store.outbox() if r.kind == MessageKind.READ]


async def test_a_strangers_message_is_a_request_and_gets_no_read_receipt(tmp_path: Path) -> None:
    async with connected_pair(tmp_path) as p:
        [m1] = await p.a.send_texts(p.b_id, ["first"])
        message = await next_event(p.b_events, "message")
        assert (message["id"], message["request"]) == (m1.hex(), True)
        assert p.a.store.is_accepted(p.b_id)  # writing first accepts the recipient
        assert not p.b.store.is_accepted(p.a_id)
        assert await p.b.mark_read([m1]) == [m1]
        assert read_receipts(p.b) == []  # a request is read in silence

        assert await p.b.accept_peer(p.a_id)
        [m2] = await p.a.send_texts(p.b_id, ["second"])
        message = await next_event(p.b_events, "message")
        assert (message["id"], message["request"]) == (m2.hex(), False)
        assert await p.b.mark_read([], p.a_id) == [m2]
        assert await next_event(p.a_events, "read") == {"id": m2.hex(), "by": str(p.b_id)}
        assert p.a.store.outbox_message(m2).state is OutboxState.READ  # type: ignore[union-attr]
        assert p.a.store.outbox_message(m1).state is OutboxState.DELIVERED  # type: ignore[union-attr]
        # A read receipt is the end of its chain: a sends no receipt for it.
        assert [r for r in p.a.store.outbox() if r.kind != MessageKind.TEXT] == []


async def test_read_receipts_stop_when_turned_off_or_the_sender_is_blocked(
    tmp_path: Path,
) -> None:
    async with connected_pair(tmp_path) as p:
        await p.b.accept_peer(p.a_id)
        m1 = await p.a_writes("one")
        await p.b.change_settings({"read_receipts": False})
        assert ChatSettings.load(p.b.store).read_receipts is False  # kept across restarts
        assert await p.b.mark_read([m1]) == [m1]
        assert read_receipts(p.b) == []

        await p.b.change_settings({"read_receipts": True})
        m2 = await p.a_writes("two")
        await p.b.store_call(p.b.store.set_blocked, p.a_id, True, p.b.now_ms())
        assert await p.b.mark_read([m2]) == [m2]
        assert read_receipts(p.b) == []

        await p.b.store_call(p.b.store.set_blocked, p.a_id, False, p.b.now_ms())
        assert await p.b.mark_read([m1, m2]) == []  # already read: no second receipt
        assert read_receipts(p.b) == []


async def test_read_receipts_not_yet_sent_are_dropped_on_block_or_receipts_off(
    tmp_path: Path,
) -> None:
    # b read a's messages while a was away: the receipts wait in b's outbox.
    b = make_node(tmp_path, "b", relay=False)
    a, c = Identity.generate(), Identity.generate()
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(b.run)
            ids = []
            for sender in (a, a, c):
                sealed = envelope.seal(
                    sender,
                    b.identity.node_id,
                    MessageKind.TEXT,
                    "hello",
                    timestamp_ms=b.now_ms(),
                    expires_ms=b.now_ms() + 3_600_000,
                )
                op = await b.committer.submit(IncomingPush(sender.node_id, 0, sealed))
                await op.done.wait()
                assert op.message is not None
                ids.append(op.message.message_id)
                await b.accept_peer(sender.node_id)
            await b.mark_read(ids)

            def states() -> list[tuple[str, OutboxState]]:
                who = {a.node_id: "a", c.node_id: "c"}
                return sorted((who[r.recipient], r.state) for r in read_receipts(b))

            assert states() == [("a", OutboxState.QUEUED), ("c", OutboxState.QUEUED)]
            # Blocking a drops what would still tell a; c's waits.
            await b.set_blocked(a.node_id, True)
            assert states() == [("a", OutboxState.EXPIRED), ("c", OutboxState.QUEUED)]
            pending = b.store.pending_for(a.node_id, b.now_ms())
            assert {r.kind for r in pending} == {MessageKind.RECEIPT}  # delivery, not read
            # Turning receipts off drops the rest.
            await b.change_settings({"read_receipts": False})
            assert states() == [("a", OutboxState.EXPIRED), ("c", OutboxState.EXPIRED)]
            nursery.cancel_scope.cancel()


async def test_typing_reaches_an_accepted_peer_and_never_enters_a_store(tmp_path: Path) -> None:
    async with connected_pair(tmp_path) as p:
        await p.a_writes("hello")
        await p.b.accept_peer(p.a_id)
        assert await p.a.send_typing(p.b_id, True) is None
        typing = await next_event(p.b_events, "typing")
        assert (typing["from"], typing["active"]) == (str(p.a_id), True)
        assert await p.b.send_typing(p.a_id, True) is None
        assert (await next_event(p.a_events, "typing"))["active"] is True
        assert await p.a.send_typing(p.b_id, False) is None
        assert (await next_event(p.b_events, "typing"))["active"] is False
        for node in (p.a, p.b):
            kinds = {r.kind for r in node.store.inbox()} | {r.kind for r in node.store.outbox()}
            assert MessageKind.TYPING not in kinds
            assert node.store.relay_usage() == (0, 0)
        assert (p.b.typing_received, p.a.typing_received) == (2, 1)


async def test_no_typing_to_or_from_a_request_or_a_blocked_peer(tmp_path: Path) -> None:
    async with connected_pair(tmp_path) as p:
        await p.a_writes("hello")  # a accepts b by writing; b has not accepted a
        assert await p.b.send_typing(p.a_id, True) == (
            "not an accepted contact (blocked, or a request not accepted)"
        )
        assert await p.a.send_typing(p.b_id, True) is None  # sent, and dropped by b
        await p.a_flushes()
        await p.b.accept_peer(p.a_id)
        assert await p.a.send_typing(p.b_id, False) is None
        # Frames on a link are taken in order: the first event is the second signal.
        assert (await next_event(p.b_events, "typing"))["active"] is False
        assert p.b.ephemeral_ignored == 1

        await p.b.store_call(p.b.store.set_blocked, p.a_id, True, p.b.now_ms())
        assert (await p.b.send_typing(p.a_id, True)) is not None
        assert await p.a.send_typing(p.b_id, True) is None  # b drops it
        await p.a_flushes()
        await p.b.store_call(p.b.store.set_blocked, p.a_id, False, p.b.now_ms())
        assert await p.a.send_typing(p.b_id, False) is None
        assert (await next_event(p.b_events, "typing"))["active"] is False
        assert p.b.ephemeral_ignored == 2


async def test_stale_forwarded_or_misfiled_ephemeral_envelopes_are_ignored(
    tmp_path: Path,
) -> None:
    async with connected_pair(tmp_path) as p:
        await p.a_writes("hello")
        await p.b.accept_peer(p.a_id)
        link = p.a.links[p.b_id]
        now = p.a.now_ms()

        def typing(sender: Identity, ts: int, kind: int = MessageKind.TYPING) -> bytes:
            body: Any = {"active": True} if kind == MessageKind.TYPING else "not typing"
            return envelope.seal(
                sender, p.b_id, kind, body, timestamp_ms=ts, expires_ms=now + 30_000
            )

        carol = Identity.generate()
        await p.b.accept_peer(carol.node_id)
        for data in (
            typing(p.a.identity, now - 60_000),  # stale
            typing(p.a.identity, now + 60_000),  # from the future
            typing(carol, now),  # someone else's, passed on by a
            typing(p.a.identity, now, MessageKind.TEXT),  # not a typing signal
            b"\x00not an envelope",
        ):
            await link.conn.send(link.session.ephemeral_frame(data))
        assert await p.a.send_typing(p.b_id, False) is None
        assert (await next_event(p.b_events, "typing"))["active"] is False
        assert p.b.ephemeral_ignored == 5
        assert [r.body for r in p.b.store.inbox()] == ["hello"]


async def test_a_typing_envelope_pushed_as_mail_is_refused(tmp_path: Path) -> None:
    b = make_node(tmp_path, "b")
    a = Identity.generate()
    now = b.now_ms()
    data = envelope.seal(
        a,
        b.identity.node_id,
        MessageKind.TYPING,
        {"active": True},
        timestamp_ms=now,
        expires_ms=now + 30_000,
    )
    op = IncomingPush(a.node_id, 0, data)
    op.prepare(b, now)
    assert op.message is None
    assert op.reason == "typing is ephemeral: it is never stored or relayed"
    b.store.close()


async def test_with_contacts_only_a_strangers_message_is_dropped(tmp_path: Path) -> None:
    async with connected_pair(tmp_path) as p:
        settings = await p.b.change_settings({"accept": "contacts"})
        assert settings.accept is AcceptPolicy.CONTACTS
        [m1] = await p.a.send_texts(p.b_id, ["let me in"])
        assert await next_event(p.a_events, "sent") == {"id": m1.hex(), "to": str(p.b_id)}
        assert p.b.store.inbox() == []
        assert p.b.store.is_seen(m1)  # dropped for good, not asked again
        await p.b.accept_peer(p.a_id)
        m2 = await p.a_writes("now a contact")
        assert [r.message_id for r in p.b.store.inbox()] == [m2]


async def test_a_dropped_strangers_message_gets_no_receipt_even_when_it_comes_again(
    tmp_path: Path,
) -> None:
    b = make_node(tmp_path, "b")
    stranger = Identity.generate()
    await b.change_settings({"accept": "contacts"})
    now = b.now_ms()
    data = envelope.seal(
        stranger,
        b.identity.node_id,
        MessageKind.TEXT,
        "let me in",
        timestamp_ms=now,
        expires_ms=now + 60_000,
    )
    for copy in range(2):  # the first push, then a copy (a resend, or via a relay)
        op = IncomingPush(stranger.node_id, copy, data)
        op.prepare(b, now)
        ctx = BatchContext(b, now)
        with b.store.transaction():
            op.apply(b.store, ctx)
        assert ctx.receipts == {}
        assert not op.holding
    assert b.store.inbox() == []
    b.store.close()
