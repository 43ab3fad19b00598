"""The chaos workload through links that drop, duplicate, reorder and delay frames.

Three in-process nodes over real TCP on 127.0.0.1; every connection's
frames pass through `tests/faulty.py` with a seed. Each fault ends the
connection where it lands (Noise numbers the frames), so the nodes keep
redialling and resuming mid-stream; every acknowledged copy must still
arrive exactly once.
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from typing import TYPE_CHECKING, Any

import trio

from p2pdm.store import text_of_body

from .chaos import workload
from .faulty import Faults, faulty_links
from .nodes import make_node

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from p2pdm.node import Node

NODES = 3
TEXTS = 60
DEADLINE = 120.0


async def drained(nodes: list[Node]) -> bool:
    """No node has mail waiting for a receipt."""
    for n in nodes:
        if await n.store_call(n.store.outbox_pending_count, n.now_ms()):
            return False
    return True


async def wait_until(nodes: list[Node], check: Callable[[], Awaitable[bool]]) -> None:
    """Return once `check()` holds; looks again on any node's event."""
    send, recv = trio.open_memory_channel[Any](64)

    async def forward(node: Node) -> None:
        async for event in node.events.subscribe():
            with contextlib.suppress(trio.WouldBlock):  # a wake-up is already waiting
                send.send_nowait(event)

    async with trio.open_nursery() as nursery:
        for node in nodes:
            nursery.start_soon(forward, node)
        while not await check():
            # Not every step raises an event (a receipt settling): look again
            # after a second without one.
            with trio.move_on_after(1.0):
                await recv.receive()
        nursery.cancel_scope.cancel()


async def test_the_chaos_workload_arrives_once_through_faulty_links(tmp_path: Path) -> None:
    faults = Faults(drop=0.01, duplicate=0.01, reorder=0.01, delay=0.1, seed=5)
    nodes: list[Node] = []
    try:
        async with trio.open_nursery() as nursery:
            for i in range(NODES):
                bootstrap = tuple(n.bound[0] for n in nodes)
                node = make_node(tmp_path, f"n{i}", bootstrap, wrap_stream=faulty_links(faults, i))
                nodes.append(node)
                await nursery.start(node.run)
            with trio.fail_after(DEADLINE):
                for node in nodes:
                    for other in nodes:
                        if other is not node:
                            await node.store_call(
                                node.store.add_contact, other.identity.node_id, None, node.now_ms()
                            )
                ids = [n.identity.node_id for n in nodes]
                group = await nodes[0].create_group("faulty", ids[1:])

                async def everyone_has_the_group() -> bool:
                    held = [await n.store_call(n.store.group, group.group_id) for n in nodes]
                    return all(held)

                await wait_until(nodes, everyone_has_the_group)
                expected: list[tuple[int, bytes, str]] = []
                for send in workload(random.Random(5), NODES, TEXTS):
                    sender = nodes[send.sender]
                    if send.to is None:
                        _, copies = await sender.send_group_texts(group.group_id, [send.text])
                        assert set(copies) == set(ids) - {sender.identity.node_id}
                        expected += [(ids.index(p), c[0], send.text) for p, c in copies.items()]
                    else:
                        (mid,) = await sender.send_texts(ids[send.to], [send.text])
                        expected.append((send.to, mid, send.text))
                    await trio.sleep(0.02)  # spread the sends over many connections
                await wait_until(nodes, lambda: drained(nodes))
            nursery.cancel_scope.cancel()
        for i, node in enumerate(nodes):
            rows = node.store.inbox()
            held = {r.message_id for r in rows}
            assert all(mid in held for to, mid, _ in expected if to == i)
            texts = Counter(t for r in rows if (t := text_of_body(r.body)) is not None)
            assert max(texts.values()) == 1, texts.most_common(3)
            assert node.store.integrity_check() == []
    finally:
        for node in nodes:
            node.store.close()
    # The faults happened, and each cut a connection: the nodes redialled.
    cuts = faults.counts["dropped"] + faults.counts["duplicated"] + faults.counts["reordered"]
    assert cuts >= 5, faults.counts
    assert faults.counts["delayed"] > 0
    assert faults.counts["connections"] >= 2 * (NODES - 1) + cuts // 2, faults.counts
