"""Fixtures shared by the test modules."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from p2pdm.identity import Identity
from tests.netns import NetnsLab, netns_available
from tests.nodeproc import NodeProcess, init_home, wait_event

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(scope="module")
def alice() -> Identity:
    return Identity.generate()


@pytest.fixture(scope="module")
def bob() -> Identity:
    return Identity.generate()


@pytest.fixture
def lab_factory() -> type[NetnsLab]:
    """NetnsLab (tests/netns.py), or a skip saying why namespaces cannot be made here."""
    reason = netns_available()
    if reason is not None:
        pytest.skip(reason)
    return NetnsLab


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[NodeProcess, NodeProcess, str, str]]:
    """Real `p2pdm run` processes alice (a) and bob (b, bootstrapped to a),
    connected: (a, b, a's id, b's id)."""
    a_id = init_home(tmp_path / "a", "alice")
    b_id = init_home(tmp_path / "b", "bob")
    a = NodeProcess(tmp_path / "a").start()
    b = None
    try:
        events = a.api.events("/v1/events")
        try:
            b = NodeProcess(tmp_path / "b", "--bootstrap", a.address).start()
            wait_event(events, "peer", lambda d: d["id"] == b_id and d["connected"])
        finally:
            events.close()
        yield a, b, a_id, b_id
    finally:
        a.close()
        if b is not None:
            b.close()
