"""In-process nodes over real TCP on 127.0.0.1, for tests that need no subprocess."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from p2pdm.identity import Identity
from p2pdm.node import Node, NodeConfig
from p2pdm.store import Store
from p2pdm.transport import TransportLimits

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import trio


def make_node(
    tmp_path: Path,
    name: str,
    bootstrap: tuple[tuple[str, int], ...] = (),
    limits: TransportLimits | None = None,
    *,
    relay: bool = True,
    wrap_stream: Callable[[trio.abc.Stream], trio.abc.Stream] | None = None,
) -> Node:
    home = tmp_path / name
    home.mkdir()
    config = NodeConfig(
        home=home,
        listen=(("127.0.0.1", 0),),
        bootstrap=bootstrap,
        mdns=False,
        relay=relay,
        limits=limits or TransportLimits(),
    )
    store = Store.open(home / "store.db")
    return Node(config, Identity.generate(), store, wrap_stream=wrap_stream)


async def next_event(
    channel: trio.MemoryReceiveChannel[tuple[str, dict[str, Any]]], name: str
) -> dict[str, Any]:
    """The next event called `name` from a node's event hub."""
    async for event, data in channel:
        if event == name:
            return data
    raise AssertionError("event stream ended")
