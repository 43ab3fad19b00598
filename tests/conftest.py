"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest

from p2pdm.identity import Identity
from tests.netns import NetnsLab, netns_available


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
