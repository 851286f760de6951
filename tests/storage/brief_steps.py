"""What tests of brief reads share: SQLite steps counted per thread, and the outbox's
figures by plain queries (the oracle of the brief outbox reads)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from caresync.storage import OutboxSummary, SQLiteStore


class Steps:
    """SQLite steps run on each thread, while counting."""

    def __init__(self) -> None:
        self.by_thread: dict[int, int] = {}

    def __call__(self) -> int:
        here = threading.get_ident()
        self.by_thread[here] = self.by_thread.get(here, 0) + 1
        return 0  # go on

    @property
    def on_loop(self) -> int:
        return self.by_thread.get(threading.get_ident(), 0)  # the test runs on the loop

    @property
    def elsewhere(self) -> int:
        return sum(self.by_thread.values()) - self.on_loop


@contextmanager
def counted(store: SQLiteStore) -> Iterator[Steps]:
    """The steps of ``store``'s connection while in the block (set while the connection's
    thread is idle: no job of the store is handed over)."""
    steps = Steps()
    store._conn._raw.set_progress_handler(steps, 1)
    try:
        yield steps
    finally:
        store._conn._raw.set_progress_handler(None, 1)


def full_summary(path: Path) -> OutboxSummary:
    """The outbox's figures by plain queries on a connection of its own."""
    raw = sqlite3.connect(path)
    try:
        count, low, oldest = raw.execute(
            "SELECT COUNT(*), MIN(seq), (SELECT created_ms FROM outbox ORDER BY seq LIMIT 1)"
            " FROM outbox"
        ).fetchone()
        head = raw.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return OutboxSummary(count, oldest, low, 0 if head is None else head[0])
    finally:
        raw.close()
