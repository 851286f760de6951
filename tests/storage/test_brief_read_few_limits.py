"""What the outbox's and the unsent audit's reads that are brief when few
(``SQLiteCore._read_few``) may cost: a review of them (issue 18).

* A large update is not read on the event loop, not even in part. The outbox's
  ``created_ms`` column comes after its ``data``: SQLite reaches it through every
  overflow page of the update (one page read per 4 KiB), so reading a large update's
  time on the loop costs as much as reading its bytes. These tests count the bytes the
  event loop's thread reads from files (Linux's per-thread I/O account) while the
  store's page cache is cold: that count depends on the pages read, not on time.
* A store whose brief reads cannot run on the caller's thread (an encrypted one, or one
  with a job on its thread) reads the outbox once, as before: not a short read handed
  over and then the whole read handed over again.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path

import pytest
from tests.storage.brief_steps import full_summary

from caresync.audit import AuditEvent
from caresync.records.crdt import merge
from caresync.storage import SQLiteStore
from caresync.storage import _cipher as cipher_module
from caresync.storage.sqlite.core import BRIEF_ROWS
from caresync.storage.sqlite.outbox import BRIEF_UPDATE_BYTES
from caresync.testing.store_data import Patient, set_laptop_identity

PROC_IO = Path(f"/proc/self/task/{threading.get_native_id()}/io")
needs_thread_io = pytest.mark.skipif(
    not PROC_IO.exists(), reason="no per-thread I/O account (Linux's /proc) here"
)
LIMIT_S = 10.0
BIG_PARTS = 12  # values of 200 KiB: an update of some 2.4 MB, 600 overflow pages


def _read_here() -> int:
    """Bytes this thread (the event loop's: the test runs on it) has read from files."""
    path = f"/proc/self/task/{threading.get_native_id()}/io"
    with open(path, encoding="ascii") as account:
        for line in account:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError(f"no rchar in {path}")


class _Blocker:
    """A job that holds the connection's thread until released."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, raw: sqlite3.Connection) -> None:
        self.started.set()
        self.release.wait(LIMIT_S)

    async def running(self) -> None:
        if not await asyncio.to_thread(self.started.wait, LIMIT_S):
            raise AssertionError("the blocking job never started")


def _big(patient: Patient) -> bytes:
    """One update of many large values (what a batch of edits makes: an attachment)."""
    parts = [patient.edit("note", f"{n}" + "x" * (200 * 1024)) for n in range(BIG_PARTS)]
    update = merge(parts, record_id=patient.id)
    assert len(update) > 8 * BRIEF_UPDATE_BYTES
    return update


async def _laptop_with(path: Path, big_at: int, small: int) -> bytes:
    """A laptop's store at ``path`` whose outbox holds ``small`` small updates and a
    large one at index ``big_at``; returns the large one. Closed: the next open starts
    with a cold page cache."""
    store = await SQLiteStore.open(path)
    try:
        await set_laptop_identity(store)
        big = b""
        for index in range(small + 1):
            patient = Patient()
            if index == big_at:
                big = _big(patient)
                await store.write_local(patient.id, big, conflicts=None)
            else:
                await store.write_local(patient.id, patient.created, conflicts=None)
        return big
    finally:
        await store.close()


@needs_thread_io
@pytest.mark.parametrize("big_at", [0, 1, 3])
async def test_a_large_update_is_not_read_on_the_loop_for_the_outbox_summary(
    tmp_path: Path, big_at: int
) -> None:
    path = tmp_path / "laptop.db"
    big = await _laptop_with(path, big_at, 3)
    async with SQLiteStore.open(path, quick_check=False) as store:  # a cold page cache
        before = _read_here()
        summary = await store.outbox_summary()
        on_loop = _read_here() - before
    assert summary == full_summary(path)
    assert summary.pending == 4
    # A few pages of the table, not the large update's hundreds (before: all of them).
    size = len(big)
    assert on_loop < size // 8


@needs_thread_io
@pytest.mark.parametrize("big_at", [0, 1, 3])
async def test_a_large_update_is_not_read_on_the_loop_for_an_outbox_page(
    tmp_path: Path, big_at: int
) -> None:
    path = tmp_path / "laptop.db"
    big = await _laptop_with(path, big_at, 3)
    async with SQLiteStore.open(path, quick_check=False) as store:
        before = _read_here()
        page = await store.pending(1000)
        on_loop = _read_here() - before
        assert [item.update for item in page][big_at] == big
        assert len(page) == 4
        size = len(big)
        assert on_loop < size // 8
        # A page that ends before the large update is read here, whole and the same.
        if big_at:
            before = _read_here()
            assert await store.pending(big_at) == page[:big_at]
            assert _read_here() - before < size // 8


async def _hops(store: SQLiteStore) -> list[int]:
    """The jobs handed to the connection's thread by one read of the whole outbox, one
    of its summary and one of the unsent audit entries (each read whole, once)."""
    conn = store._conn
    assert conn is not None
    hops = []
    for read, wanted in (
        (lambda: store.pending(1000), 3 * BRIEF_ROWS),
        (lambda: store.outbox_summary(), None),
        (lambda: store.audit_entries(replica_id="laptop-7", after_seq=1, limit=1000), None),
    ):
        handed = conn._handed
        found = await read()
        if wanted is not None:
            assert len(found) == wanted  # type: ignore[arg-type]
        hops.append(conn._handed - handed)
    return hops


async def _fill(store: SQLiteStore) -> None:
    await set_laptop_identity(store)
    for _ in range(3 * BRIEF_ROWS):
        patient = Patient()
        await store.write_local(patient.id, patient.created, conflicts=None)
    events = [AuditEvent("dr.a", "read", f"rec-{n}") for n in range(3 * BRIEF_ROWS)]
    await store.append_audit(events)


async def test_a_store_that_reads_on_its_thread_alone_reads_a_long_outbox_once(
    tmp_path: Path,
) -> None:
    """Brief reads never run here on an encrypted store: the short read is no saving
    there, only a second hop and a second read."""
    if not cipher_module.AVAILABLE:
        pytest.skip("no encrypting SQLite is installed here")
    async with SQLiteStore.open(tmp_path / "laptop.db", key=os.urandom(32)) as store:
        await _fill(store)
        assert await _hops(store) == [1, 1, 1]


async def test_a_read_behind_a_job_on_the_connections_thread_reads_a_long_outbox_once(
    tmp_path: Path,
) -> None:
    """A job of the store is on its thread: the outbox's page is handed over once,
    whole, not a short read first and the whole one after it."""
    async with SQLiteStore.open(tmp_path / "laptop.db") as store:
        await _fill(store)
        blocker = _Blocker()
        blocked = asyncio.create_task(store._run("holding", blocker))
        await blocker.running()
        conn = store._conn
        assert conn is not None
        handed = conn._handed
        page = asyncio.create_task(store.pending(1000))
        await asyncio.sleep(0)  # one turn: the page's read goes behind the job (no wait)
        blocker.release.set()
        async with asyncio.timeout(LIMIT_S):
            await blocked
            assert len(await page) == 3 * BRIEF_ROWS
        assert conn._handed - handed == 1
