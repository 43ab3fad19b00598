"""Hostile peers that speak the real protocol, against a running node.

Each test runs one misbehaviour from tests/hostile.py against node A while
the honest peer B keeps exchanging messages with A (every one must be
receipted), then checks that A cut the attacker off where the protocol
says so and that its limits held. Limits are checked by counts (rows
stored, pushes taken, connections held), not by time or memory; the
memory figures come from scripts/hostile_bench.py.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
import trio

from p2pdm.session import DEFAULT_WINDOW

from .hostile import (
    Harness,
    HostilePeer,
    attacker_source,
    harness_nodes,
    seal_text,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from p2pdm.identity import Identity, NodeId

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
