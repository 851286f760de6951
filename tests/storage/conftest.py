"""Fixtures for the store tests that are not the conformance suite's: each store kind, empty.

The suite (:mod:`caresync.testing.store_suite`) opens its own stores.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from store_helpers import FakeClock

from caresync.storage import MemoryStore, SQLiteStore, Store


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Store]:
    """Each store kind, empty, with a fake clock."""
    if request.param == "memory":
        async with MemoryStore.open(clock=clock) as memory:
            yield memory
    else:
        async with SQLiteStore.open(tmp_path / "replica.db", clock=clock) as sqlite:
            yield sqlite
