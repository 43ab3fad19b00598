"""Store-and-forward between in-process nodes over real TCP on 127.0.0.1."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from p2pdm import node as node_module
from p2pdm.identity import Identity
from p2pdm.node import Node, NodeConfig
from p2pdm.notice import DeliveryNotice
from p2pdm.store import OutboxState, Store
from p2pdm.transport import TransportLimits
from tests.nodes import next_event

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

DEADLINE = 30


class Home:
    """A node's identity and store path, so the same node can stop and start again."""

    def __init__(self, tmp_path: Path, name: str, **limits: Any) -> None:
        self.dir = tmp_path / name
        self.dir.mkdir()
        self.identity = Identity.generate()
        self.limits = TransportLimits(**limits)

    @property
    def id(self) -> Any:
        return self.identity.node_id

    def node(self, *bootstrap: tuple[str, int], relay: bool = True) -> Node:
        config = NodeConfig(
            home=self.dir,
            listen=(("127.0.0.1", 0),),
            bootstrap=bootstrap,
            mdns=False,
            relay=relay,
            limits=self.limits,
        )
        return Node(config, self.identity, Store.open(self.dir / "store.db"))


Events = trio.MemoryReceiveChannel[tuple[str, dict[str, Any]]]


async def until(events: Events, *wanted: tuple[str, dict[str, str]]) -> None:
    """Read events until each (name, fields) has been seen, in any order."""
    left = list(wanted)
    async for name, data in events:
        for want in left:
            if want[0] == name and all(data.get(k) == v for k, v in want[1].items()):
                left.remove(want)
                break
        if not left:
            return


async def run_until_cancelled(node: Node, task_status: trio.TaskStatus[None]) -> None:
    try:
        await node.run(task_status=task_status)
    finally:
        node.store.close()


async def test_a_message_reaches_a_peer_that_was_never_online_with_the_sender(
    tmp_path: Path,
) -> None:
    a_home, r_home, b_home = (Home(tmp_path, n) for n in ("a", "r", "b"))
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            r = r_home.node()
            r_events = r.events.subscribe()
            await nursery.start(run_until_cancelled, r)

            # a is online with r only; b is away.
            async with trio.open_nursery() as a_scope:
                a = a_home.node(r.bound[0])
                a_events = a.events.subscribe()
                await a_scope.start(run_until_cancelled, a)
                [mid] = await a.send_texts(b_home.id, ["while you were away"])
                relayed = await next_event(a_events, "relayed")
                assert relayed == {"id": mid.hex(), "to": str(r_home.id)}
                [row] = a.store.outbox()
                assert (row.state, row.relayed_to) == (OutboxState.SENT, 1)
                a_scope.cancel_scope.cancel()
            assert r.store.relay_usage()[0] == 1

            # b comes up knowing only r, and gets the message from it.
            async with trio.open_nursery() as b_scope:
                b = b_home.node(r.bound[0])
                b_events = b.events.subscribe()
                await b_scope.start(run_until_cancelled, b)
                message = await next_event(b_events, "message")
                assert (message["id"], message["text"]) == (mid.hex(), "while you were away")
                # r drops its copy once b has it; b's receipt waits at r
                # for a, since a is away too.
                await until(
                    r_events,
                    ("released", {"id": mid.hex(), "to": str(b_home.id)}),
                    ("held", {"for": str(a_home.id)}),
                )
                b_scope.cancel_scope.cancel()
            assert r.store.relay_for(b_home.id, r.now_ms()) == []
            assert r.store.relay_recipients(r.now_ms()) == [a_home.id]
            assert r.store.is_delivered(mid)

            # a comes back: the receipt reaches it through r.
            a = a_home.node(r.bound[0])
            a_events = a.events.subscribe()
            await nursery.start(run_until_cancelled, a)
            delivered = await next_event(a_events, "delivered")
            assert delivered == {"id": mid.hex(), "by": str(b_home.id)}
            await until(r_events, ("released", {"to": str(a_home.id)}))
            assert r.store.relay_usage() == (0, 0)
            nursery.cancel_scope.cancel()


async def test_a_peer_past_its_quota_is_refused_and_others_still_relay(tmp_path: Path) -> None:
    # r takes about two small envelopes from each uploader.
    r_home = Home(tmp_path, "r", relay_peer_bytes=900)
    a_home, c_home, b_home = (Home(tmp_path, n) for n in ("a", "c", "b"))
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            r = r_home.node()
            await nursery.start(run_until_cancelled, r)
            a = a_home.node(r.bound[0])
            c = c_home.node(r.bound[0])
            a_events = a.events.subscribe()
            c_events = c.events.subscribe()
            await nursery.start(run_until_cancelled, a)
            await nursery.start(run_until_cancelled, c)
            await until(a_events, ("peer", {"id": str(r_home.id)}))
            await until(c_events, ("peer", {"id": str(r_home.id)}))

            ids = await a.send_texts(b_home.id, [f"a{i}" for i in range(5)])
            relayed, refused = set(), set()
            async for name, data in a_events:
                if name == "relayed":
                    relayed.add(data["id"])
                elif name == "refused":
                    assert "relay quota for this peer is full" in data["reason"]
                    refused.add(data["id"])
                if len(relayed) + len(refused) == len(ids):
                    break
            assert len(relayed) == 2
            count, used = r.store.relay_usage(a_home.id)
            assert count == 2 < len(ids)
            assert used <= 900
            # a keeps the rest queued, to try elsewhere or later.
            states = {row.message_id.hex(): row.state for row in a.store.outbox()}
            assert sum(s is OutboxState.QUEUED for s in states.values()) == 3
            assert all(states[m] is OutboxState.SENT for m in relayed)

            # Another uploader's mail is still taken.
            [cid] = await c.send_texts(b_home.id, ["from c"])
            assert (await next_event(c_events, "relayed"))["id"] == cid.hex()
            nursery.cancel_scope.cancel()


async def test_a_notice_not_signed_by_the_recipient_deletes_nothing(tmp_path: Path) -> None:
    a_home, r_home, b_home, m_home = (Home(tmp_path, n) for n in ("a", "r", "b", "m"))
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            r = r_home.node()
            await nursery.start(run_until_cancelled, r)
            a = a_home.node(r.bound[0])
            a_events = a.events.subscribe()
            await nursery.start(run_until_cancelled, a)
            [mid] = await a.send_texts(b_home.id, ["keep me"])
            await next_event(a_events, "relayed")

            forged = DeliveryNotice.create(m_home.identity, [mid], r.now_ms())
            await r.take_notice(m_home.id, forged.data)
            assert r.store.relay_usage()[0] == 1
            assert not r.store.is_delivered(mid)
            await r.take_notice(m_home.id, b"\x00not a notice")
            assert r.store.relay_usage()[0] == 1

            genuine = DeliveryNotice.create(b_home.identity, [mid], r.now_ms())
            await r.take_notice(m_home.id, genuine.data)  # passed on by anyone: still b's word
            assert r.store.relay_usage()[0] == 0
            assert r.store.is_delivered(mid)
            nursery.cancel_scope.cancel()


async def test_relay_off_refuses_mail_for_others(tmp_path: Path) -> None:
    a_home, r_home, b_home = (Home(tmp_path, n) for n in ("a", "r", "b"))
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            r = r_home.node(relay=False)
            await nursery.start(run_until_cancelled, r)
            a = a_home.node(r.bound[0])
            a_events = a.events.subscribe()
            await nursery.start(run_until_cancelled, a)
            await until(a_events, ("peer", {"id": str(r_home.id)}))
            link = a.links[r_home.id]
            await link.opened.wait()
            assert not link.peer_relays
            await a.send_texts(b_home.id, ["nobody will carry this"])
            # a never hands mail to a peer that said it does not relay (the
            # committer offers a message before the send returns).
            assert not link.queue
            assert not link.in_flight
            assert r.store.relay_usage() == (0, 0)
            [row] = a.store.outbox()
            assert (row.state, row.relayed_to) == (OutboxState.QUEUED, 0)
            nursery.cancel_scope.cancel()


async def test_two_relays_that_meet_end_up_holding_the_union(tmp_path: Path) -> None:
    a_home, r1_home, r2_home, b_home, c_home = (
        Home(tmp_path, n) for n in ("a", "r1", "r2", "b", "c")
    )
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            r1 = r1_home.node()
            r1_events = r1.events.subscribe()
            await nursery.start(run_until_cancelled, r1)
            # a uploads to r1 and c to r2, while r1 and r2 are apart.
            async with trio.open_nursery() as apart:
                r2 = r2_home.node()
                await apart.start(run_until_cancelled, r2)
                a, c = a_home.node(r1.bound[0]), c_home.node(r2.bound[0])
                a_events, c_events = a.events.subscribe(), c.events.subscribe()
                await apart.start(run_until_cancelled, a)
                await apart.start(run_until_cancelled, c)
                a_ids = await a.send_texts(b_home.id, [f"a{i}" for i in range(30)])
                c_ids = await c.send_texts(b_home.id, [f"c{i}" for i in range(20)])
                await until(a_events, *[("relayed", {"id": m.hex()}) for m in a_ids])
                await until(c_events, *[("relayed", {"id": m.hex()}) for m in c_ids])
                apart.cancel_scope.cancel()

            # r2 comes back and dials r1: they reconcile, and each pushes the
            # envelopes the other lacks.
            r2 = r2_home.node(r1.bound[0])
            r2_events = r2.events.subscribe()
            await nursery.start(run_until_cancelled, r2)
            await until(r1_events, *[("held", {"id": m.hex()}) for m in c_ids])
            await until(r2_events, *[("held", {"id": m.hex()}) for m in a_ids])
            everything = sorted(a_ids + c_ids)
            assert r1.store.relay_ids(r1.now_ms()) == everything
            assert r2.store.relay_ids(r2.now_ms()) == everything
            assert r2.reconciliations == 1

            # b, meeting r2 only, gets every message once.
            b = b_home.node(r2.bound[0])
            b_events = b.events.subscribe()
            await nursery.start(run_until_cancelled, b)
            await until(b_events, *[("message", {"id": m.hex()}) for m in everything])
            assert sorted(r.message_id for r in b.store.inbox()) == everything
            nursery.cancel_scope.cancel()


async def test_a_relay_that_was_dialled_passes_on_new_mail_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not only the dialling side starts reconciliation: r1 accepts r2's
    # connection, gets new mail afterwards, and r2 learns of it by r1's run.
    monkeypatch.setattr(node_module, "RECONCILE_MIN_GAP", 0.05)
    a_home, r1_home, r2_home, b_home = (Home(tmp_path, n) for n in ("a", "r1", "r2", "b"))
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            r1 = r1_home.node()
            await nursery.start(run_until_cancelled, r1)
            r2 = r2_home.node(r1.bound[0])
            r2_events = r2.events.subscribe()
            await nursery.start(run_until_cancelled, r2)
            await until(r2_events, ("peer", {"id": str(r1_home.id)}))
            a = a_home.node(r1.bound[0])
            await nursery.start(run_until_cancelled, a)
            ids = await a.send_texts(b_home.id, ["one", "two"])
            await until(r2_events, *[("held", {"id": m.hex()}) for m in ids])
            assert r1.reconciliations >= 1  # r1 started a run although r2 dialled
            nursery.cancel_scope.cancel()
