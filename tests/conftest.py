"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest

from p2pdm.identity import Identity


@pytest.fixture(scope="module")
def alice() -> Identity:
    return Identity.generate()


@pytest.fixture(scope="module")
def bob() -> Identity:
    return Identity.generate()
