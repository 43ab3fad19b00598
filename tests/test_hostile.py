"""Hostile peers that speak the real protocol, against a running node.

Each test runs one misbehaviour from tests/hostile.py against node A while
the honest peer B keeps exchanging messages with A (every one must be
receipted), then checks that A cut the attacker off where the protocol
says so and that its limits held. Limits are checked by counts (rows
stored, pushes taken, connections held), not by time or memory; the
memory figures come from scripts/hostile_bench.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import resource
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from p2pdm import envelope, wire
from p2pdm.envelope import MessageKind
from p2pdm.handshake import Handshake
from p2pdm.identity import Identity
from p2pdm.node import MAX_LINK_QUEUE, RESEND_AFTER_MS
from p2pdm.notice import NOTICE_CONTEXT, DeliveryNotice
from p2pdm.session import DEFAULT_WINDOW, AckReceived, AckStatus, PongReceived
from p2pdm.store import OutboxState

from .hostile import (
    HOSTILE_WINDOW,
    LIMITS,
    Harness,
    HostilePeer,
    attacker_source,
    attacker_stream,
    closed_by_node,
    forge_envelope,
    harness_nodes,
    junk_for_relay,
    seal_text,
)
from .nodes import make_node, next_event

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from p2pdm.identity import NodeId

DEADLINE = 30
# Far more PUSH frames than fit in both ends' socket buffers (~700 bytes each).
FLOOD = 20_000


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness_nodes(tmp_path) as h:
        yield h


def disconnect_reasons(caplog: pytest.LogCaptureFixture, peer: NodeId) -> list[str]:
    """Why the node ended its links to `peer`, from its log."""
    prefix = f"disconnected {peer}: "
    return [
        r.getMessage()[len(prefix) :]
        for r in caplog.records
        if r.name == "p2pdm.node" and r.getMessage().startswith(prefix)
    ]


async def test_a_push_flood_is_cut_off_at_the_window(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Attackers, one after another, write 20,000 PUSH frames each without
    waiting for an ACK; each is disconnected once it is a window of pushes
    ahead of A's ACKs (so A never holds more than a window of a peer's
    pushes), long before it wrote them all, and B's mail flows."""
    caplog.set_level(logging.INFO, logger="p2pdm.node")
    a = harness.a
    stop = trio.Event()
    attackers: list[tuple[Identity, int]] = []

    async def flood_until_stopped() -> None:
        while not stop.is_set():
            peer = await HostilePeer.connect(harness.port, source=attacker_source(len(attackers)))
            spam = seal_text(peer.me, a.identity.node_id, "flood", a.now_ms())
            written = await peer.flood(spam, FLOOD)
            await peer.aclose()
            attackers.append((peer.me, written))

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood_until_stopped)
            # B's traffic while the floods go on, until two attackers were cut off.
            while len(attackers) < 2:
                await harness.legit_exchange(5)
            stop.set()
        await harness.legit_exchange()

    for me, written in attackers:
        reasons = disconnect_reasons(caplog, me.node_id)
        assert reasons == [
            f"protocol error: peer exceeded the flow-control window of {DEFAULT_WINDOW} pushes"
        ], reasons
        assert written < FLOOD  # A stopped reading long before
        assert [r.body for r in a.store.inbox() if r.sender == me.node_id] == ["flood"]
    assert set(a.links) == {harness.b.identity.node_id}


async def test_a_replayed_envelope_is_stored_once(harness: Harness) -> None:
    """A captured envelope from B to A, pushed 600 times by two attackers:
    A keeps one copy, every replay is a duplicate, and A does not answer
    each replay with a new receipt to B."""
    a, b = harness.a, harness.b
    with trio.fail_after(DEADLINE):
        events = b.events.subscribe()
        [mid] = await b.send_texts(a.identity.node_id, ["the original"])
        while (await next_event(events, "delivered"))["id"] != mid.hex():
            pass
        row = b.store.outbox_message(mid)
        assert row is not None
        captured = row.envelope
        outbox_before = len(a.store.outbox())
        statuses: list[AckStatus] = []

        async def replay(n: int) -> None:
            peer = await HostilePeer.connect(harness.port, source=attacker_source(n))
            statuses.extend(ack.status for ack in await peer.push_all([captured] * 300))
            await peer.aclose()

        async with harness.exchanging(), trio.open_nursery() as replays:
            for n in range(2):
                replays.start_soon(replay, n)

    assert statuses == [AckStatus.DUPLICATE] * 600
    assert [r.body for r in a.store.inbox() if r.sender == b.identity.node_id].count(
        "the original"
    ) == 1
    # A's outbox grew by B's exchanges' receipts, not by one per replay.
    receipts_to_b = [
        r
        for r in a.store.outbox()[outbox_before:]
        if r.recipient == b.identity.node_id and r.kind == MessageKind.RECEIPT
    ]
    replayed = [r for r in receipts_to_b if mid in r.body["ids"]]  # type: ignore[index,operator]
    assert len(replayed) <= 1, f"{len(replayed)} receipts for one replayed message"
    # The sender's own resend comes a resend delay later: that copy gets one.
    later = a.now_ms() + RESEND_AFTER_MS
    assert a.store.receipt_again(mid, later, RESEND_AFTER_MS)
    assert not a.store.receipt_again(mid, later, RESEND_AFTER_MS)


async def test_forged_envelopes_receipts_and_notices_change_nothing(harness: Harness) -> None:
    """A holds messages for C, who is away. An attacker tries to pass off
    messages as B's and to mark A's messages to C delivered: receipts and
    notices signed by itself (for messages it never received) and ones that
    claim to be C's but carry its own signature. Forged envelopes are
    refused with a reason, the attacker's own receipt is stored but moves
    nothing, notices move nothing, and A's outbox to C stays pending."""
    a, b = harness.a, harness.b
    carol = Identity.generate()
    mallory = Identity.generate()
    ids = await a.send_texts(carol.node_id, [f"for carol {i}" for i in range(5)])

    def undelivered_to_carol() -> list[bytes]:
        """A's messages to C not delivered (B, a relay, may have taken copies)."""
        rows = [r for r in a.store.outbox() if r.recipient == carol.node_id]
        waiting = (OutboxState.QUEUED, OutboxState.SENT)
        return [r.message_id for r in rows if r.state in waiting and r.delivered_ms is None]

    assert undelivered_to_carol() == ids
    me, now = a.identity.node_id, a.now_ms()
    receipt: dict[str, wire.Value] = {"ids": list(ids)}
    forged = {
        "text in B's name": forge_envelope(
            mallory, b.identity.node_id, me, MessageKind.TEXT, "hi", now
        ),
        "receipt in C's name": forge_envelope(
            mallory, carol.node_id, me, MessageKind.RECEIPT, receipt, now
        ),
        "read receipt in C's name": forge_envelope(
            mallory, carol.node_id, me, MessageKind.READ, receipt, now
        ),
    }
    own_receipt = envelope.seal(
        mallory, me, MessageKind.RECEIPT, receipt, timestamp_ms=now, expires_ms=now + 60_000
    )
    own_notice = DeliveryNotice.create(mallory, ids, now).data
    body = wire.encode({"by": carol.node_id.public_key, "ids": list(ids), "ts": now})
    carol_notice = wire.encode({"notice": body, "sig": mallory.sign(NOTICE_CONTEXT + body)})

    with trio.fail_after(DEADLINE):
        async with harness.exchanging():
            peer = await HostilePeer.connect(harness.port, mallory)
            acks = await peer.push_all(list(forged.values()))
            own = await peer.push(own_receipt)
            for notice in (own_notice, carol_notice):
                await peer.send_notice(notice)
            # A ping answered means A has read (and handled) the notices.
            await peer.conn.send(peer.session.ping_frame(7))
            while not isinstance(peer.session.receive(await peer.conn.receive()), PongReceived):
                pass
        await peer.aclose()

    for what, ack in zip(forged, acks, strict=True):
        assert ack.status is AckStatus.REFUSED, what
        assert "bad signature" in ack.reason, (what, ack.reason)
    assert own.status is AckStatus.STORED  # a receipt it may send: about its own mail
    assert undelivered_to_carol() == ids
    assert all(r.sender != b.identity.node_id or r.body != "hi" for r in a.store.inbox())
    assert a.notices_taken == 0


RELAY_LIMITS = dataclasses.replace(LIMITS, relay_peer_bytes=48 << 10, relay_max_bytes=100 << 10)


async def test_a_relay_past_its_quotas_stores_at_most_them(tmp_path: Path) -> None:
    """Three attackers push 2 KiB envelopes for strangers, 100 each (600 KiB
    in all), to a relay allowing 48 KiB per uploader and 100 KiB in all: it
    holds at most that, refuses the rest with the reason, and B's mail flows."""
    size, per_attacker = 2048, 100
    async with harness_nodes(tmp_path, RELAY_LIMITS) as harness:
        a = harness.a
        verdicts: dict[NodeId, list[AckReceived]] = {}

        async def upload(n: int) -> None:
            peer = await HostilePeer.connect(harness.port, source=attacker_source(n))
            now = a.now_ms()
            junk = [
                junk_for_relay(Identity.generate().node_id, size, now, salt=n * 1000 + i)
                for i in range(per_attacker)
            ]
            verdicts[peer.node_id] = await peer.push_all(junk)
            await peer.aclose()

        with trio.fail_after(DEADLINE):
            async with harness.exchanging(), trio.open_nursery() as uploads:
                for n in range(3):
                    uploads.start_soon(upload, n)

        held_total = a.store.relay_usage()[1]
        assert held_total <= RELAY_LIMITS.relay_max_bytes
        for uploader, acks in verdicts.items():
            stored = [ack for ack in acks if ack.status is AckStatus.STORED]
            refused = [ack for ack in acks if ack.status is AckStatus.REFUSED]
            assert len(stored) + len(refused) == per_attacker
            assert a.store.relay_usage(uploader)[1] <= RELAY_LIMITS.relay_peer_bytes
            assert stored, "each attacker gets its fair share first"
            assert {ack.reason for ack in refused} <= {
                f"relay quota for this peer is full ({RELAY_LIMITS.relay_peer_bytes} bytes)",
                f"relay storage is full ({RELAY_LIMITS.relay_max_bytes} bytes)",
            }
        # Filled to within one envelope of the total: the quotas, not luck, refused.
        assert held_total > RELAY_LIMITS.relay_max_bytes - 2 * size


@contextlib.contextmanager
def open_files(wanted: int) -> Iterator[None]:
    """Let this process have `wanted` descriptors open (the soft limit is often
    1,024), or skip if the hard limit does not allow it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"needs {wanted} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_1000_half_open_connections(harness: Harness, tmp_path: Path) -> None:
    """1,000 connections that send nothing or half a handshake, from 125
    addresses (8 each: within the per-address burst, so the cap on
    handshakes in progress is what must hold). While they are open, B keeps
    exchanging and a new peer C connects and delivers."""
    a = harness.a
    half_handshake = wire.encode_frame(Handshake(Identity.generate(), initiator=True).start())
    with open_files(4096), trio.fail_after(DEADLINE):
        streams = []
        peak = 0
        for i in range(1000):
            stream = await attacker_stream(harness.port, attacker_source(i // 8))
            if i % 2:
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(half_handshake)
            streams.append(stream)
            peak = max(peak, a._admission.half_open)
        await harness.legit_exchange()
        events = a.events.subscribe()
        c = make_node(tmp_path, "c", bootstrap=(a.bound[0],), limits=LIMITS)
        try:
            await harness.nursery.start(c.run)
            while (await next_event(events, "peer"))["id"] != str(c.identity.node_id):
                peak = max(peak, a._admission.half_open)
            [mid] = await c.send_texts(a.identity.node_id, ["through the crowd"])
            c_events = c.events.subscribe()
            while (await next_event(c_events, "delivered"))["id"] != mid.hex():
                pass
            assert peak <= LIMITS.max_half_open
            async with trio.open_nursery() as nursery:
                for stream in streams:
                    nursery.start_soon(closed_by_node, stream)
            assert a._admission.half_open == 0
            assert set(a.links) == {harness.b.identity.node_id, c.identity.node_id}
            await harness.legit_exchange()
        finally:
            with trio.CancelScope(shield=True):
                await c.shutdown()
            c.store.close()


@contextlib.contextmanager
def _closing(streams: list[trio.SocketStream]) -> Iterator[None]:
    """Close the attacker's sockets however the test ends."""
    try:
        yield
    finally:
        for stream in streams:
            stream.socket.close()


async def test_stalled_handshakes_cannot_keep_a_new_peer_out(tmp_path: Path) -> None:
    """Every handshake slot is held by a connection that sends nothing, with
    a deadline far off: a new peer still gets in, by ending a stalled
    handshake past the grace for each of its dials that is let in; the
    others stay."""
    limits = dataclasses.replace(LIMITS, handshake_timeout=600.0, max_half_open=8)
    async with harness_nodes(tmp_path, limits) as harness:
        a = harness.a
        stalled: list[trio.SocketStream] = []
        with trio.fail_after(DEADLINE), _closing(stalled):
            for i in range(8):
                stalled.append(await attacker_stream(harness.port, attacker_source(i)))
            await trio.testing.wait_all_tasks_blocked()  # the node took them all
            assert a._admission.half_open == 8
            events = a.events.subscribe()
            c = make_node(tmp_path, "c", bootstrap=(a.bound[0],), limits=limits)
            try:
                await harness.nursery.start(c.run)
                while (await next_event(events, "peer"))["id"] != str(c.identity.node_id):
                    pass
                [mid] = await c.send_texts(a.identity.node_id, ["past the stalled ones"])
                c_events = c.events.subscribe()
                while (await next_event(c_events, "delivered"))["id"] != mid.hex():
                    pass
            finally:
                with trio.CancelScope(shield=True):
                    await c.shutdown()
                c.store.close()
            # C's dials ended a stalled handshake each (a refused one ends
            # none); the rest are still held, far from their deadline.
            ended = 0
            for stream in stalled:
                with trio.move_on_after(0.2):
                    await closed_by_node(stream)
                    ended += 1
            assert 1 <= ended < 8
            await harness.legit_exchange()


async def test_a_peer_that_reads_nothing_is_dropped_and_its_mail_kept(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A has 3,000 messages for a peer that reads and sends nothing: its link
    holds at most MAX_LINK_QUEUE of them and a window in flight, the peer is
    dropped, every message stays in the outbox, and B's mail flows."""
    caplog.set_level(logging.INFO, logger="p2pdm.node")
    a = harness.a
    with trio.fail_after(DEADLINE):
        events = a.events.subscribe()
        lazy = await HostilePeer.connect(harness.port)
        link = a.links[lazy.node_id]
        await a.send_texts(lazy.node_id, [f"{i:04d} " + "x" * 2000 for i in range(3000)])
        await harness.legit_exchange()
        while True:
            event = await next_event(events, "peer")
            if event["id"] == str(lazy.node_id) and not event["connected"]:
                break
        await lazy.aclose()
        await harness.legit_exchange()
    assert len(link.queue) <= MAX_LINK_QUEUE
    assert link.session.in_flight <= HOSTILE_WINDOW
    [reason] = disconnect_reasons(caplog, lazy.node_id)
    assert reason.startswith(("no frame for", "send failed", "peer read nothing")), reason
    queued = [r for r in a.store.outbox() if r.recipient == lazy.node_id]
    assert len(queued) == 3000
    # None lost; once the peer is away, A may hand copies to B (a relay).
    assert all(r.state in (OutboxState.QUEUED, OutboxState.SENT) for r in queued)
