"""What a server does when it starts, before the first laptop arrives."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from caresync.server import SyncServer

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


async def test_serve_opens_the_commit_lock_before_the_first_laptop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first push after a start waited for what it opened lazily (the commit lock's
    connection on PostgreSQL; pycrdt's first document): serve takes the lock once, and
    lets it go, before it listens."""
    server = await SyncServer.open(tmp_path / "server.db", password_hasher=CHEAP)
    taken: list[str] = []
    exclusive = server.store.exclusive_commits

    def counted() -> Any:
        taken.append("lock")
        return exclusive()

    monkeypatch.setattr(server.store, "exclusive_commits", counted)
    try:
        await server.serve("127.0.0.1", 0)
        assert taken == ["lock"]
        async with asyncio.timeout(5):  # let go: a push can take it at once
            async with exclusive():
                pass
    finally:
        await server.close()
