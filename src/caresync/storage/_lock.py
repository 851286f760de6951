"""One writer per database file, across processes, while readers stay free to read.

The store caches what it knows of records and numbers outbox rows, so no second
process may write a replica behind its back. SQLite's own ``locking_mode =
EXCLUSIVE`` would guarantee that, but it also shuts out readers, and an
operator must be able to read a running server's database (``caresync status``,
``record show``, ``conflicts list``). So the writer holds an advisory lock on a
small file beside the database (``<name>-writer.lock``) for as long as it is
open; SQLite's locking stays normal and WAL readers see committed state.

The lock is released when the store closes or its process dies (the kernel
drops it), so a crash never leaves a stale lock. The file itself is left in
place: removing a lock file races with the next process taking it.
Where ``fcntl`` is missing (Windows), :data:`AVAILABLE` is False and the store
falls back to SQLite's exclusive locking mode.
"""

from __future__ import annotations

import os
from pathlib import Path

from caresync.exceptions import StorageError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["AVAILABLE", "WriterLock", "lock_path_for"]

AVAILABLE = fcntl is not None
"""True where the writer lock is an advisory file lock (POSIX)."""


def lock_path_for(database: Path) -> Path:
    """The lock file that guards ``database``."""
    return database.with_name(database.name + "-writer.lock")


class WriterLock:
    """An exclusive, non-blocking advisory lock held by the one writing process."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    @classmethod
    def acquire(cls, database: Path) -> WriterLock:
        """Take the lock for ``database``; StorageError if another writer holds it."""
        if fcntl is None:  # pragma: no cover - see the module docstring
            return cls(None)
        path = lock_path_for(database)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot take the writer lock {path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StorageError(
                f"{database}: the database is in use by another process (a caresync store "
                "has it open for writing); close that one first, or open this one read-only"
            ) from None
        return cls(fd)

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases it). Releasing twice is harmless."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
