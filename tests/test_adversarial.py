"""Hostile peers against a running node over real TCP on 127.0.0.1.

Attackers connect from 127.0.0.3 (Linux routes all of 127/8 to loopback),
so the per-source limits that stop them do not also stop the legitimate
peer on 127.0.0.1. Every check waits on something observable with a
deadline; the node's own timeouts are set short so the suite stays quick.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import pytest
import trio

from p2pdm import envelope, wire
from p2pdm.envelope import MessageKind
from p2pdm.handshake import Handshake, NoiseStatic
from p2pdm.identity import Identity
from p2pdm.session import AckReceived, AckStatus, Hello, Session
from p2pdm.transport import Connection, TransportLimits, run_handshake

from .nodes import make_node, next_event

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from p2pdm.node import Node

ATTACKER = "127.0.0.3"
LIMITS = TransportLimits(
    handshake_timeout=1.0,
    max_half_open=16,
    handshake_burst=8,
    handshake_rate=1.0,
    idle_timeout=2.0,
    keepalive_interval=0.5,
    send_timeout=2.0,
)
DEADLINE = 20


async def attacker_stream(port: int) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind((ATTACKER, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def closed_by_node(stream: trio.SocketStream) -> None:
    """Return once the node has closed this connection (EOF or reset)."""
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()


class Harness:
    def __init__(self, a: Node, b: Node, nursery: trio.Nursery) -> None:
        self.a, self.b, self.nursery = a, b, nursery
        self.port = a.bound[0][1]

    async def legit_exchange(self, count: int = 20) -> None:
        """B's messages still reach A, receipts come back."""
        events = self.b.events.subscribe()
        ids = await self.b.send_texts(
            self.a.identity.node_id, [f"still here {i}" for i in range(count)]
        )
        pending = {i.hex() for i in ids}
        while pending:
            pending.discard((await next_event(events, "delivered"))["id"])


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    a = make_node(tmp_path, "a", limits=LIMITS)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        b = make_node(tmp_path, "b", bootstrap=(a.bound[0],), limits=LIMITS)
        events = a.events.subscribe()
        await nursery.start(b.run)
        await next_event(events, "peer")
        yield Harness(a, b, nursery)
        nursery.cancel_scope.cancel()
    a.store.close()
    b.store.close()


async def test_random_bytes_are_closed(harness: Harness) -> None:
    with trio.fail_after(DEADLINE):
        stream = await attacker_stream(harness.port)
        await stream.send_all(os.urandom(20_000))
        await closed_by_node(stream)
        await harness.legit_exchange()


async def test_huge_length_prefix_is_bounded(harness: Harness) -> None:
    """A 4 GiB claim cannot be made: the prefix is 16 bits, so the node waits
    for at most 65,535 bytes, and the handshake deadline closes the socket."""
    with trio.fail_after(DEADLINE):
        stream = await attacker_stream(harness.port)
        await stream.send_all(b"\xff\xff\xff\xff" + b"\x00" * 100)
        start = trio.current_time()
        await closed_by_node(stream)
        assert trio.current_time() - start < LIMITS.handshake_timeout + 5
        await harness.legit_exchange()


async def test_half_handshake_is_dropped_at_the_deadline(harness: Harness) -> None:
    with trio.fail_after(DEADLINE):
        stream = await attacker_stream(harness.port)
        await stream.send_all(
            wire.encode_frame(Handshake(Identity.generate(), initiator=True).start())
        )
        await closed_by_node(stream)
        assert harness.a._admission.half_open == 0
        await harness.legit_exchange()


async def test_200_idle_connections(harness: Harness) -> None:
    with trio.fail_after(DEADLINE):
        streams = [await attacker_stream(harness.port) for _ in range(200)]
        # The legitimate peer is served while the idle ones are pending.
        await harness.legit_exchange()
        assert harness.a._admission.half_open <= LIMITS.max_half_open
        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(closed_by_node, stream)
        assert harness.a._admission.half_open == 0
        assert set(harness.a.links) == {harness.b.identity.node_id}


async def connect_raw(port: int, me: Identity) -> tuple[Connection, Session]:
    stream = await attacker_stream(port)
    conn = await run_handshake(
        stream, me, NoiseStatic.generate(me), initiator=True, remote="a", limits=LIMITS
    )
    session = Session(Hello(4, False, (), "attacker"))
    await conn.send(session.hello_frame())
    while session.peer_hello is None:
        session.receive(await conn.receive())
    return conn, session


class RawPeer:
    """A hand-driven peer: handshake and session done, pushes what it is told."""

    def __init__(self, conn: Connection, session: Session, me: Identity) -> None:
        self.conn, self.session, self.me = conn, session, me

    @classmethod
    async def connect(cls, port: int, me: Identity) -> RawPeer:
        return cls(*await connect_raw(port, me), me)

    def seal_text(self, to: Node, text: str) -> bytes:
        now = to.now_ms()
        return envelope.seal(
            self.me,
            to.identity.node_id,
            MessageKind.TEXT,
            text,
            timestamp_ms=now,
            expires_ms=now + 60_000,
        )

    async def push(self, data: bytes) -> AckReceived:
        """Push one envelope and return the node's ACK for it."""
        _, frame = self.session.push_frame(data)
        await self.conn.send(frame)
        while True:
            event = self.session.receive(await self.conn.receive())
            if isinstance(event, AckReceived):
                return event


async def test_bad_signature_and_replay_are_refused(harness: Harness) -> None:
    a = harness.a
    mallory = Identity.generate()
    with trio.fail_after(DEADLINE):
        peer = await RawPeer.connect(harness.port, mallory)
        good = peer.seal_text(a, "once")
        forged = bytearray(good)
        forged[-40] ^= 1  # inside the ciphertext: the id no longer matches
        assert (await peer.push(good)).status is AckStatus.STORED
        replay = await peer.push(good)
        assert replay.status is AckStatus.DUPLICATE
        refused = await peer.push(bytes(forged))
        assert refused.status is AckStatus.REFUSED
        assert refused.reason
        await peer.conn.aclose()
        inbox = a.store.inbox()
        assert [r.body for r in inbox if r.sender == mallory.node_id] == ["once"]
        await harness.legit_exchange()


async def test_peer_that_never_reads_is_dropped(harness: Harness) -> None:
    a = harness.a
    lazy = Identity.generate()
    with trio.fail_after(DEADLINE):
        events = a.events.subscribe()
        conn, _session = await connect_raw(harness.port, lazy)
        # Mail for the lazy peer: A pushes at most its window, then waits.
        await a.send_texts(lazy.node_id, ["x" * 16_000 for _ in range(40)])
        while True:
            event = await next_event(events, "peer")
            if event["id"] == str(lazy.node_id) and not event["connected"]:
                break
        assert lazy.node_id not in a.links
        await conn.aclose()
        await harness.legit_exchange()


async def test_blocked_sender_gets_no_receipt_even_on_resend(harness: Harness) -> None:
    a = harness.a
    mallory = Identity.generate()
    a.store.set_blocked(mallory.node_id, True, a.now_ms())
    with trio.fail_after(DEADLINE):
        peer = await RawPeer.connect(harness.port, mallory)
        spam = peer.seal_text(a, "spam")
        statuses = [(await peer.push(spam)).status for _ in range(2)]
        await peer.conn.aclose()
    assert statuses == [AckStatus.STORED, AckStatus.DUPLICATE]
    assert all(r.sender != mallory.node_id for r in a.store.inbox())
    assert a.store.pending_for(mallory.node_id, a.now_ms()) == []
