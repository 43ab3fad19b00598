"""Two in-process nodes over real TCP on 127.0.0.1 (no API, no subprocess)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from p2pdm.node import BatchContext, EventHub, MarkRead, Node, Op, PeerLink, peer_fault
from p2pdm.session import SessionError, SessionUsageError
from p2pdm.store import OutboxState, Store, StoreError
from p2pdm.transport import ConnectionClosed

from .nodes import make_node, next_event

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

DEADLINE = 30


async def test_two_nodes_exchange_messages_and_receipts(tmp_path: Path) -> None:
    a = make_node(tmp_path, "a")
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            b = make_node(tmp_path, "b", bootstrap=(a.bound[0],))
            a_events = a.events.subscribe()
            await nursery.start(b.run)
            await next_event(a_events, "peer")
            b_events = b.events.subscribe()

            ids = await b.send_texts(a.identity.node_id, [f"hello {i}" for i in range(300)])
            delivered: set[str] = set()
            while len(delivered) < len(ids):
                delivered.add((await next_event(b_events, "delivered"))["id"])
            assert delivered == {i.hex() for i in ids}
            # Bookkeeping of acked pushes stays near one window, not per message.
            link = b.links[a.identity.node_id]
            assert len(link.settling) <= 3 * b.config.window
            assert not link.in_flight

            inbox = a.store.inbox()
            assert [r.body for r in inbox] == [f"hello {i}" for i in range(300)]
            assert {r.sender for r in inbox} == {b.identity.node_id}
            states = {r.state for r in b.store.outbox() if r.kind == 1}
            assert states == {OutboxState.DELIVERED}
            # Receipts B got were stored once each; none are shown as messages.
            assert all(r.kind == 1 for r in a.store.inbox())
            # Traffic counts every envelope pushed, with its framing.
            pushed = sum(len(r.envelope) for r in b.store.outbox() if r.kind == 1)
            assert b.traffic()[0] > pushed
            assert a.traffic()[1] > pushed
            nursery.cancel_scope.cancel()


async def test_simultaneous_dials_end_with_one_connection(tmp_path: Path) -> None:
    a = make_node(tmp_path, "a")
    b = make_node(tmp_path, "b")
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            a_events, b_events = a.events.subscribe(), b.events.subscribe()
            conn_ab = await a.dial(*b.bound[0])
            conn_ba = await b.dial(*a.bound[0])
            for node, conn in ((a, conn_ab), (b, conn_ba)):
                nursery.start_soon(node._run_link, conn)
            await next_event(a_events, "peer")
            await next_event(b_events, "peer")
            # Both sides settle on the connection dialled by the lower id.
            lower = min(a.identity.node_id, b.identity.node_id)
            while True:
                links = (a.links.get(b.identity.node_id), b.links.get(a.identity.node_id))
                if all(link is not None and link.opened.is_set() for link in links):
                    dialers = {
                        (node.identity.node_id if link.conn.initiator else link.peer)
                        for node, link in zip((a, b), links, strict=True)
                        if link is not None
                    }
                    if dialers == {lower}:
                        break
                await trio.testing.wait_all_tasks_blocked()
            ids = await a.send_texts(b.identity.node_id, ["after the race"])
            while (await next_event(a_events, "delivered"))["id"] != ids[0].hex():
                pass
            nursery.cancel_scope.cancel()


async def test_backlog_larger_than_the_link_queue_arrives_once(tmp_path: Path) -> None:
    """More mail than a link holds in memory: the link reloads from the store
    while acks are still being committed, and must not push anything twice."""
    from p2pdm.node import MAX_LINK_QUEUE

    b = make_node(tmp_path, "b")
    with trio.fail_after(DEADLINE * 2):
        async with trio.open_nursery() as nursery:
            await nursery.start(b.run)
            a = make_node(tmp_path, "a", bootstrap=(b.bound[0],))
            count = MAX_LINK_QUEUE + 200
            ids = await b.send_texts(a.identity.node_id, [f"backlog {i}" for i in range(count)])
            b_events = b.events.subscribe()
            await nursery.start(a.run)
            delivered: set[str] = set()
            while len(delivered) < count:
                delivered.add((await next_event(b_events, "delivered"))["id"])
            assert delivered == {i.hex() for i in ids}
            assert len(a.store.inbox()) == count
            assert a.duplicates_received == 0
            nursery.cancel_scope.cancel()


async def test_a_peer_is_last_seen_when_its_connection_ended(tmp_path: Path) -> None:
    # Peer exchange at the next visit sends what arrived after this time.
    now = [1_800_000_000_000]
    a = make_node(tmp_path, "a")
    a.now_ms = lambda: now[0]
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            events = a.events.subscribe()
            b = make_node(tmp_path, "b", bootstrap=(a.bound[0],))
            async with trio.open_nursery() as b_nursery:
                await b_nursery.start(b.run)
                assert (await next_event(events, "peer"))["connected"] is True
                now[0] += 60_000  # a minute connected
                b_nursery.cancel_scope.cancel()
            assert (await next_event(events, "peer"))["connected"] is False
            [row] = [p for p in a.store.peers() if p.node_id == b.identity.node_id]
            assert row.last_seen_ms == now[0]
            nursery.cancel_scope.cancel()


async def test_a_node_stopped_before_its_new_link_ran_closes_that_connection(
    tmp_path: Path,
) -> None:
    a = make_node(tmp_path, "a")
    with trio.fail_after(DEADLINE):  # well under the 90 s idle timeout
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            events = a.events.subscribe()
            b = make_node(tmp_path, "b", bootstrap=(a.bound[0],))
            writing = trio.Event()
            real_store_call = b.store_call

            async def stuck_bootstrap_note(fn: Any, *args: Any) -> Any:
                if getattr(fn, "func", None) == b.store.note_peer_address:
                    writing.set()
                    await trio.sleep_forever()  # b stops right here
                return await real_store_call(fn, *args)

            b.store_call = stuck_bootstrap_note  # type: ignore[method-assign]
            async with trio.open_nursery() as b_nursery:
                await b_nursery.start(b.run)
                await writing.wait()  # connected and handshaken, link not started
                b_nursery.cancel_scope.cancel()
            assert (await next_event(events, "peer"))["connected"] is True
            assert (await next_event(events, "peer"))["connected"] is False
            nursery.cancel_scope.cancel()


async def test_a_node_learns_a_peer_by_exchange_and_dials_it_for_mail(tmp_path: Path) -> None:
    # a <- b <- d: d knows only b, and has mail for a.
    a = make_node(tmp_path, "a")
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            # b does not relay, so the mail can only go by d dialling a.
            b = make_node(tmp_path, "b", bootstrap=(a.bound[0],), relay=False)
            await nursery.start(b.run)
            d = make_node(tmp_path, "d", bootstrap=(b.bound[0],))
            d_events = d.events.subscribe()
            await nursery.start(d.run)
            [mid] = await d.send_texts(a.identity.node_id, ["found you through b"])
            assert (await next_event(d_events, "delivered"))["id"] == mid.hex()

            assert [r.body for r in a.store.inbox()] == ["found you through b"]
            # d holds a's record as b passed it on, with a's listening address.
            [a_row] = [p for p in d.store.peers() if p.node_id == a.identity.node_id]
            assert (a_row.addresses[0].host, a_row.addresses[0].port) == a.bound[0]
            assert a.identity.node_id in d.connected()
            # b, which a dialled... no: b dialled a; a learned b's address from b's record.
            assert [(x.host, x.port) for x in a.store.addresses_for(b.identity.node_id)] == [
                b.bound[0]
            ]
            nursery.cancel_scope.cancel()


async def test_a_relay_off_node_passes_news_to_a_peer_that_asked(tmp_path: Path) -> None:
    # d connects to b (relay off) while b knows no one else, so b's first
    # PEERS to d holds b alone. Then a connects to b: b passes a's record
    # on to d, which asked for records, and d dials a for its mail.
    b = make_node(tmp_path, "b", relay=False)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(b.run)
            d = make_node(tmp_path, "d", bootstrap=(b.bound[0],))
            d_events = d.events.subscribe()
            await nursery.start(d.run)
            await next_event(d_events, "peer")  # connected to b
            a = make_node(tmp_path, "a", bootstrap=(b.bound[0],))
            [mid] = await d.send_texts(a.identity.node_id, ["you came later"])
            await nursery.start(a.run)
            while (await next_event(d_events, "delivered"))["id"] != mid.hex():
                pass
            nursery.cancel_scope.cancel()


async def test_event_subscribers_that_closed_are_forgotten_without_any_event() -> None:
    hub = EventHub()
    for _ in range(100):
        hub.subscribe().close()
    kept = hub.subscribe()
    assert hub.subscribers == 1
    hub.publish("x", {})
    assert kept.receive_nowait() == ("x", {})


def test_peer_fault_looks_inside_exception_groups() -> None:
    closed = ConnectionClosed("gone")
    assert peer_fault(closed) is closed
    assert peer_fault(ExceptionGroup("g", [closed, SessionError("bad")])) is closed
    nested = BaseExceptionGroup("outer", [ExceptionGroup("inner", [closed])])
    assert peer_fault(nested) is closed
    assert peer_fault(ExceptionGroup("g", [closed, ValueError("a bug")])) is None
    assert peer_fault(ValueError("a bug")) is None
    assert peer_fault(KeyboardInterrupt()) is None
    # Using a session that has closed is the link ending, not a bug, only then.
    late = SessionUsageError("session is closed, not open")
    assert peer_fault(ExceptionGroup("g", [late]), closed=True) is late
    assert peer_fault(late) is None
    # The link was being closed as the fault happened: still the peer's fault.
    cancelled = trio.Cancelled._create()
    assert peer_fault(BaseExceptionGroup("g", [closed, cancelled])) is closed
    assert peer_fault(cancelled) is None
    assert peer_fault(BaseExceptionGroup("g", [cancelled])) is None


async def test_a_task_that_sends_after_the_peer_said_goodbye_ends_only_the_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def late_sender(self: PeerLink) -> None:
        await self.opened.wait()
        async with trio.open_nursery():
            self.session.bye_frame("closing")  # as when the reader got a BYE
            await self.conn.send(self.session.ping_frame(1))  # raises SessionUsageError

    monkeypatch.setattr(PeerLink, "_notifier", late_sender)
    await link_ends_and_node_runs_on(tmp_path)


async def test_a_peer_fault_inside_a_task_with_its_own_nursery_ends_only_the_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing_notifier(self: PeerLink) -> None:
        await self.opened.wait()
        async with trio.open_nursery():  # the fault arrives wrapped in a group
            raise ConnectionClosed("send failed: broken pipe")

    monkeypatch.setattr(PeerLink, "_notifier", failing_notifier)
    await link_ends_and_node_runs_on(tmp_path)


async def test_a_peer_fault_while_the_link_is_being_closed_ends_only_the_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing_while_closing(self: PeerLink) -> None:
        await self.opened.wait()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            await trio.lowlevel.checkpoint()  # the child runs
            # Another task closes the link as this one fails: the group holds
            # the fault and the child's Cancelled, which the link scope owns.
            self.cancel_scope.cancel()
            raise ConnectionClosed("send failed: broken pipe")

    monkeypatch.setattr(PeerLink, "_notifier", failing_while_closing)
    await link_ends_and_node_runs_on(tmp_path)


async def link_ends_and_node_runs_on(tmp_path: Path) -> None:
    """Connect b to a, wait for the link to open and then end; a must still run."""
    a = make_node(tmp_path, "a")
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            b = make_node(tmp_path, "b", bootstrap=(a.bound[0],))
            events = a.events.subscribe()
            await nursery.start(b.run)
            assert (await next_event(events, "peer"))["connected"] is True
            while (await next_event(events, "peer"))["connected"]:
                pass
            assert a._nursery is not None
            assert not a._nursery.cancel_scope.cancel_called
            nursery.cancel_scope.cancel()


async def test_a_send_waiting_when_the_node_stops_is_told_it_was_not_stored(
    tmp_path: Path,
) -> None:
    node = make_node(tmp_path, "a")
    started, release = threading.Event(), threading.Event()

    class Busy(Op):  # holds the committer in a worker thread until released
        needs_prepare = True

        def prepare(self, node: Node, now_ms: int) -> None:
            started.set()
            release.wait(DEADLINE)

        def apply(self, store: Store, ctx: BatchContext) -> None:
            pass

    outcome: list[BaseException | list[bytes]] = []

    async def send() -> None:
        try:
            outcome.append(await node.send_texts(node.identity.node_id, ["never stored"]))
        except StoreError as exc:
            outcome.append(exc)

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as outer, trio.open_nursery() as running:
            await running.start(node.run)
            await node.committer.submit(Busy())
            await trio.to_thread.run_sync(started.wait, DEADLINE)
            outer.start_soon(send)
            await trio.testing.wait_all_tasks_blocked()  # the send is queued
            running.cancel_scope.cancel()
            release.set()
    [result] = outcome
    assert isinstance(result, StoreError)
    assert "stopped before this was stored" in str(result)
    assert node.store.outbox() == []


async def test_a_cancelled_submit_leaves_nothing_waiting(tmp_path: Path) -> None:
    """A submit cancelled while the committer's queue is full queued nothing:
    the committer must not keep the op (and its envelope) until the node stops."""
    node = make_node(tmp_path, "a")  # not running: its committer's queue only fills
    committer = node.committer
    queue = committer._send.statistics()
    for _ in range(queue.max_buffer_size):
        await committer.submit(MarkRead([], None))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(committer.submit, MarkRead([], None))
        await trio.testing.wait_all_tasks_blocked()  # that submit waits for room
        nursery.cancel_scope.cancel()
    assert len(committer._waiting) == queue.max_buffer_size
