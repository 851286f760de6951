"""Brief reads never run beside a job of their
store, however calls interleave (writes, reads, cancelled callers, failing jobs, the
checkpoint, a backup, closing).

The store's raw connection is wrapped in a guard that every statement passes through:
a statement begun while another thread is inside one of the store's statements is an
overlap, recorded (and the suite fails). Each thread's statements are also timed into
one ordered log, so a read is checked to see everything written before it.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from caresync.exceptions import StorageError
from caresync.storage import SQLiteStore

LIMIT_S = 20.0
ROUNDS = 60  # bounded: each round some writes, brief reads and a cancelled call


class _Guard:
    """The raw connection, refusing (by recording) a statement begun beside another."""

    def __init__(self, raw: sqlite3.Connection) -> None:
        self._raw = raw
        self._inside = threading.Lock()
        self.overlaps: list[str] = []
        self.statements = 0

    def _guarded(self, name: str, *args: Any) -> Any:
        if not self._inside.acquire(blocking=False):
            self.overlaps.append(f"{name} {args[:1]!r} on thread {threading.get_ident()}")
            return getattr(self._raw, name)(*args)
        try:
            self.statements += 1
            result = getattr(self._raw, name)(*args)
            # Rows are read now, inside the guard (a cursor left open would step later).
            return _Rows(result.fetchall(), result) if name != "executemany" else result
        finally:
            self._inside.release()

    def execute(self, *args: Any) -> Any:
        return self._guarded("execute", *args)

    def executemany(self, *args: Any) -> Any:
        return self._guarded("executemany", *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _Rows:
    """A cursor's rows, read whole: iterable, fetchone, fetchall, rowcount."""

    def __init__(self, rows: list[Any], cursor: sqlite3.Cursor) -> None:
        self._rows = rows
        self.rowcount = cursor.rowcount
        self.lastrowid = cursor.lastrowid

    def __iter__(self) -> Any:
        return iter(self._rows)

    def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows


def _guarded(store: SQLiteStore) -> _Guard:
    guard = _Guard(store._conn._raw)
    store._conn._raw = guard  # type: ignore[assignment]
    return guard


async def test_brief_reads_never_run_beside_a_job_however_calls_interleave(
    tmp_path: Path,
) -> None:
    store = await SQLiteStore.open(tmp_path / "a.db")
    guard = _guarded(store)
    rng = random.Random(20)
    written: dict[str, str] = {}
    wrong: list[str] = []

    async def write(key: str, value: str) -> None:
        await store.set_meta(key, value)
        written[key] = value

    async def read(key: str) -> None:
        before = written.get(key)  # committed before this read was asked
        seen = await store.get_meta(key)
        if before is not None and seen is None:
            wrong.append(f"{key}: a brief read missed a committed write")

    try:
        async with asyncio.timeout(LIMIT_S):
            for round_ in range(ROUNDS):
                calls: list[Any] = []
                for n in range(rng.randint(1, 6)):
                    key = f"k{rng.randint(0, 4)}"
                    calls.append(write(key, f"{round_}.{n}") if rng.random() < 0.4 else read(key))
                calls.append(store.feed_head())
                calls.append(store.open_counts())
                if round_ % 10 == 3:
                    calls.append(store.checkpoint())
                if round_ % 20 == 7:
                    calls.append(store.backup(tmp_path / f"copy-{round_}.db"))
                tasks = [asyncio.create_task(call) for call in calls]
                # One more write, its caller cancelled after its job was handed over:
                # the job runs on, and the brief reads after it must wait for it.
                cancelled = asyncio.create_task(store.set_meta("cancelled", str(round_)))
                await asyncio.sleep(0)  # its first step: the job is handed over
                cancelled.cancel()
                tasks.append(asyncio.create_task(store.get_meta("cancelled")))
                await asyncio.gather(*tasks)
                with pytest.raises(asyncio.CancelledError):
                    await cancelled
        assert guard.overlaps == []
        assert wrong == []
        assert guard.statements > ROUNDS  # the guard saw the statements
        assert store._conn._handed == store._conn.finished
    finally:
        await store.close()


async def test_a_failing_job_still_counts_as_finished(tmp_path: Path) -> None:
    """A job that raises on the connection's thread ends there: brief reads run on the
    caller's thread again after it (and the error is the store's typed one)."""
    async with SQLiteStore.open(tmp_path / "a.db") as store:

        def failing(raw: sqlite3.Connection) -> None:
            raw.execute("SELECT * FROM no_such_table")

        with pytest.raises(StorageError):
            await store._run("failing", failing)
        assert store._conn._handed == store._conn.finished
        here: list[int] = []
        await store._run("reading", lambda raw: here.append(threading.get_ident()), brief=True)
        assert here == [threading.get_ident()]


async def test_a_brief_read_asked_while_the_store_closes_is_refused_not_run(
    tmp_path: Path,
) -> None:
    """close() lets go of the connection before aiosqlite's own (uncounted) close job
    runs: a brief read asked meanwhile is refused, never run beside that job."""
    store = await SQLiteStore.open(tmp_path / "a.db")
    await store.set_meta("k", "v")
    release = threading.Event()
    started = threading.Event()

    def holding(raw: sqlite3.Connection) -> None:
        started.set()
        release.wait(LIMIT_S)

    held = asyncio.create_task(store._run("holding", holding))
    try:
        async with asyncio.timeout(LIMIT_S):
            assert await asyncio.to_thread(started.wait, LIMIT_S)
            closing = asyncio.create_task(store.close())
            await asyncio.sleep(0)  # its first step: the connection let go of
            assert store.closed
            with pytest.raises(StorageError, match="closed"):
                await store.get_meta("k")
            release.set()
            await held
            await closing
    finally:
        release.set()
        await store.close()
