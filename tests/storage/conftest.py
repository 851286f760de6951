"""Fixtures for the store tests: one conformance suite, run against every store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from caresync.storage import MemoryStore, SQLiteStore, Store


class FakeClock:
    """Milliseconds that move only when a test says so."""

    def __init__(self, start: int = 1_700_000_000_000) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


StoreFactory = Callable[[], "AsyncIterator[Store]"]


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


@pytest.fixture
def store_kind(store: Store) -> str:
    return "sqlite" if isinstance(store, SQLiteStore) else "memory"
