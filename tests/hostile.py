"""A scriptable hostile peer that speaks the real protocol, then misbehaves.

`HostilePeer` dials a node over real TCP, runs the real Noise handshake
and HELLO with an identity of its own, and then does what the test says:
pushes within the window or far past it, replays, forged envelopes and
notices, or nothing at all. `Harness` is a target node A with an honest
peer B connected to it, whose traffic must keep flowing whatever the
attacker does.

Attackers connect from 127.0.0.3 and up (Linux routes all of 127/8 to
loopback), so the per-source limits that stop them do not also stop the
honest peer on 127.0.0.1. Used by tests/test_adversarial.py,
tests/test_hostile.py and scripts/hostile_bench.py.
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING

import trio

from p2pdm import envelope, wire
from p2pdm.envelope import SIGN_CONTEXT, MessageKind
from p2pdm.handshake import NoiseStatic
from p2pdm.identity import Identity
from p2pdm.session import AckReceived, ByeReceived, FrameType, Hello, Session
from p2pdm.transport import Connection, ConnectionClosed, TransportLimits, run_handshake

from .nodes import make_node, next_event

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from p2pdm.identity import NodeId
    from p2pdm.node import Node

ATTACKER = "127.0.0.3"
# Short timeouts keep the suites quick; the limits' defaults are far longer.
LIMITS = TransportLimits(
    handshake_timeout=1.0,
    max_half_open=16,
    handshake_burst=8,
    handshake_rate=1.0,
    idle_timeout=2.0,
    keepalive_interval=0.5,
    send_timeout=2.0,
)
TTL_MS = 60_000
# The window a hostile peer grants in its HELLO: what a node may have in flight to it.
HOSTILE_WINDOW = 64


def attacker_source(n: int) -> str:
    """The n-th attacker address (0 is ATTACKER), all distinct, all in 127/8."""
    n += 3
    return f"127.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


async def attacker_stream(port: int, source: str = ATTACKER) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
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


def seal_text(sender: Identity, to: NodeId, text: str, now_ms: int) -> bytes:
    return envelope.seal(
        sender, to, MessageKind.TEXT, text, timestamp_ms=now_ms, expires_ms=now_ms + TTL_MS
    )


def forge_envelope(
    signer: Identity,
    claimed: NodeId,
    to: NodeId,
    kind: MessageKind,
    body: wire.Value,
    now_ms: int,
) -> bytes:
    """A well-formed envelope to `to` that says it is from `claimed` but is
    signed by `signer`: everything checks out except the signature."""
    expires = now_ms + TTL_MS
    msg = wire.encode(
        {
            "from": claimed.public_key,
            "to": to.public_key,
            "ts": now_ms,
            "exp": expires,
            "kind": int(kind),
            "body": body,
        }
    )
    inner = wire.encode(
        {"from": claimed.public_key, "sig": signer.sign(SIGN_CONTEXT + msg), "msg": msg}
    )
    ciphertext = envelope._seal_box(to).encrypt(inner)
    version = envelope.ENVELOPE_VERSION
    message_id = envelope.compute_message_id(version, to.public_key, expires, ciphertext)
    return wire.encode(
        {"v": version, "to": to.public_key, "exp": expires, "ct": ciphertext, "id": message_id}
    )


def junk_for_relay(to: NodeId, size: int, now_ms: int, salt: int) -> bytes:
    """An envelope a relay must take on its outer form alone (it cannot open
    it): `size` bytes of ciphertext nobody can read, for `to`."""
    expires = now_ms + TTL_MS
    ciphertext = salt.to_bytes(8, "big") * (size // 8)
    version = envelope.ENVELOPE_VERSION
    message_id = envelope.compute_message_id(version, to.public_key, expires, ciphertext)
    return wire.encode(
        {"v": version, "to": to.public_key, "exp": expires, "ct": ciphertext, "id": message_id}
    )


class HostilePeer:
    """A peer with a real identity and session, driven by hand.

    The polite methods (`push`, `push_all`) keep to the protocol so that
    the node answers; the others break it on purpose.
    """

    def __init__(self, conn: Connection, session: Session, me: Identity) -> None:
        self.conn, self.session, self.me = conn, session, me
        self.bye_reason: str | None = None
        """What the node said in its BYE, if we read one."""

    @classmethod
    async def connect(
        cls,
        port: int,
        me: Identity | None = None,
        *,
        source: str = ATTACKER,
        limits: TransportLimits = LIMITS,
        relay: bool = False,
    ) -> HostilePeer:
        """Dial, run the handshake and exchange HELLOs."""
        me = me or Identity.generate()
        stream = await attacker_stream(port, source)
        try:
            conn = await run_handshake(
                stream,
                me,
                NoiseStatic.generate(me),
                initiator=True,
                remote="target",
                limits=limits,
            )
        except BaseException:
            await stream.aclose()
            raise
        session = Session(Hello(HOSTILE_WINDOW, relay, (), "hostile"))
        await conn.send(session.hello_frame())
        while session.peer_hello is None:
            session.receive(await conn.receive())
        return cls(conn, session, me)

    @property
    def node_id(self) -> NodeId:
        return self.me.node_id

    async def push(self, data: bytes) -> AckReceived:
        """Push one envelope and return the node's ACK for it."""
        return (await self.push_all([data]))[0]

    async def push_all(self, envelopes: Sequence[bytes]) -> list[AckReceived]:
        """Push each envelope within the node's window; one ACK per envelope
        (ranges expanded), in order."""
        acks: list[AckReceived] = []
        waiting = 0
        todo = list(envelopes)
        while todo or waiting:
            frames = []
            while todo and self.session.can_push(todo[0]):
                frames.append(self.session.push_frame(todo.pop(0))[1])
                waiting += 1
            if frames:
                await self.conn.send_many(frames)
            event = self.session.receive(await self.conn.receive())
            if isinstance(event, AckReceived):
                acks += [event] * event.count
                waiting -= event.count
            elif isinstance(event, ByeReceived):
                raise ConnectionClosed(f"node said goodbye: {event.reason}")
        return acks

    async def flood(self, data: bytes, count: int) -> int:
        """Write `count` PUSH frames of `data` without waiting for any ACK (the
        session would not let us: the frames are built by hand). Returns how
        many were written before the node closed the connection."""
        seq = 0
        with contextlib.suppress(ConnectionClosed):
            while seq < count:
                batch = [
                    wire.encode({"t": FrameType.PUSH, "n": n, "env": data})
                    for n in range(seq, min(count, seq + 64))
                ]
                await self.conn.send_many(batch)
                seq += len(batch)
        return seq

    async def send_notice(self, data: bytes) -> None:
        await self.conn.send(self.session.notice_frame(data))

    async def until_closed(self) -> int:
        """Read (and drop) frames until the node closes the connection;
        returns how many were read. Keeps the BYE reason if one came."""
        frames = 0
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = await self.conn.receive()
                frames += 1
                with contextlib.suppress(Exception):
                    doc = wire.decode(frame)
                    if isinstance(doc, dict) and doc.get("t") == FrameType.BYE:
                        self.bye_reason = str(doc.get("r"))
        return frames

    async def aclose(self) -> None:
        await self.conn.aclose()


class Harness:
    """Target node A, with honest peer B connected to it."""

    def __init__(self, a: Node, b: Node, nursery: trio.Nursery) -> None:
        self.a, self.b, self.nursery = a, b, nursery
        self.port = a.bound[0][1]
        self.delivered = 0
        """B's messages to A receipted so far."""

    async def legit_exchange(self, count: int = 20) -> None:
        """B's messages still reach A, receipts come back."""
        events = self.b.events.subscribe()
        ids = await self.b.send_texts(
            self.a.identity.node_id, [f"still here {i}" for i in range(count)]
        )
        pending = {i.hex() for i in ids}
        while pending:
            mid = (await next_event(events, "delivered"))["id"]
            if mid in pending:
                pending.discard(mid)
                self.delivered += 1

    @contextlib.asynccontextmanager
    async def exchanging(self) -> AsyncIterator[None]:
        """B exchanges with A while the body runs (a round at least), and
        once more after it: honest traffic during and after an attack."""
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.exchange_until, stop)
            yield
            stop.set()
        await self.legit_exchange()

    async def exchange_until(self, done: trio.Event, count: int = 5) -> int:
        """Exchange rounds of `count` until `done` is set (at least one round);
        returns how many rounds went through."""
        rounds = 0
        while True:
            await self.legit_exchange(count)
            rounds += 1
            if done.is_set():
                return rounds


@contextlib.asynccontextmanager
async def harness_nodes(tmp_path: Path, limits: TransportLimits = LIMITS) -> AsyncIterator[Harness]:
    a = make_node(tmp_path, "a", limits=limits)
    b = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            b = make_node(tmp_path, "b", bootstrap=(a.bound[0],), limits=limits)
            events = a.events.subscribe()
            await nursery.start(b.run)
            while (await next_event(events, "peer"))["id"] != str(b.identity.node_id):
                pass
            yield Harness(a, b, nursery)
            nursery.cancel_scope.cancel()
    finally:
        a.store.close()
        if b is not None:
            b.store.close()
