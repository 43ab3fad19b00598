"""Hostile peers against a running node over real TCP on 127.0.0.1.

The hostile peer and the harness live in tests/hostile.py. Attackers
connect from 127.0.0.3 (Linux routes all of 127/8 to loopback), so the
per-source limits that stop them do not also stop the legitimate peer on
127.0.0.1. Every check waits on something observable with a
deadline; the node's own timeouts are set short so the suite stays quick.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
import trio

from p2pdm import wire
from p2pdm.handshake import Handshake
from p2pdm.identity import Identity
from p2pdm.session import AckStatus

from .hostile import (
    LIMITS,
    Harness,
    HostilePeer,
    attacker_stream,
    closed_by_node,
    harness_nodes,
    seal_text,
)
from .nodes import next_event

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

DEADLINE = 20


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness_nodes(tmp_path) as h:
        yield h


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


async def test_bad_signature_and_replay_are_refused(harness: Harness) -> None:
    a = harness.a
    mallory = Identity.generate()
    with trio.fail_after(DEADLINE):
        peer = await HostilePeer.connect(harness.port, mallory)
        good = seal_text(mallory, a.identity.node_id, "once", a.now_ms())
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
        lazy_peer = await HostilePeer.connect(harness.port, lazy)
        # Mail for the lazy peer: A pushes at most its window, then waits.
        await a.send_texts(lazy.node_id, ["x" * 16_000 for _ in range(40)])
        while True:
            event = await next_event(events, "peer")
            if event["id"] == str(lazy.node_id) and not event["connected"]:
                break
        assert lazy.node_id not in a.links
        await lazy_peer.aclose()
        await harness.legit_exchange()


async def test_blocked_sender_gets_no_receipt_even_on_resend(harness: Harness) -> None:
    a = harness.a
    mallory = Identity.generate()
    a.store.set_blocked(mallory.node_id, True, a.now_ms())
    with trio.fail_after(DEADLINE):
        peer = await HostilePeer.connect(harness.port, mallory)
        spam = seal_text(mallory, a.identity.node_id, "spam", a.now_ms())
        statuses = [(await peer.push(spam)).status for _ in range(2)]
        await peer.conn.aclose()
    assert statuses == [AckStatus.STORED, AckStatus.DUPLICATE]
    assert all(r.sender != mallory.node_id for r in a.store.inbox())
    assert a.store.pending_for(mallory.node_id, a.now_ms()) == []
