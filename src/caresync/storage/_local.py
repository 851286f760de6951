"""What a store one process writes (SQLite, memory) does for the multi-process part of
:class:`~caresync.storage.base.ServerStore`: a process-local commit lock, and a feed
signal fired by its own commits. Nobody else commits, so nothing more is needed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from caresync.exceptions import InvalidInputError

__all__ = ["LocalCommits", "check_timeout", "claim"]


@asynccontextmanager
async def claim(held: set[str], key: str) -> AsyncIterator[bool]:
    """True inside (and ``key`` in ``held`` until the end) if ``key`` was not in ``held``;
    False, changing nothing, if it was."""
    if key in held:
        yield False
        return
    held.add(key)
    try:
        yield True
    finally:
        held.discard(key)


def check_timeout(timeout_s: object) -> float:
    """A wait in seconds: a positive number of at most an hour."""
    if (
        not isinstance(timeout_s, int | float)
        or isinstance(timeout_s, bool)
        or not 0 < timeout_s <= 3600
    ):
        raise InvalidInputError(f"timeout_s must be in (0, 3600] seconds, not {timeout_s!r}")
    return float(timeout_s)


class LocalCommits:
    """A lock for exclusive commits and a feed signal, both within one process."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._fed = asyncio.Event()
        self._sending: set[str] = set()

    def hub_sending(self, record_id: str) -> AbstractAsyncContextManager[bool]:
        """A claim on sending one record's hub summary within this process (see
        ``ServerStore.hub_sending``): True inside if nobody else here holds it."""
        return claim(self._sending, record_id)

    def exclusive(self) -> AbstractAsyncContextManager[None]:
        """The process-local commit lock (see ``ServerStore.exclusive_commits``)."""
        return self._held()

    @asynccontextmanager
    async def _held(self) -> AsyncIterator[None]:
        async with self._lock:
            yield

    def fed(self) -> None:
        """A feed entry was committed: wake a waiter (remembered until one wakes)."""
        self._fed.set()

    async def wait(self, timeout_s: float) -> bool:
        """Until a feed entry was committed since the last wait returned, or the timeout."""
        timeout = check_timeout(timeout_s)
        try:
            async with asyncio.timeout(timeout):
                await self._fed.wait()
        except TimeoutError:
            return False
        self._fed.clear()
        return True
