"""Brief reads in the SQLite store: run on the caller's thread while the connection's
thread has nothing of the store's, never beside a job of it.

A read of a few rows by key costs less than the hop to the connection's thread and back
(``SQLiteCore._run(..., brief=True)``); jobs of one store must still run one at a time,
or a read would see a write's transaction half done.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from caresync.exceptions import StorageError
from caresync.storage import Identity, SQLiteStore
from caresync.storage import _cipher as cipher_module
from caresync.testing.store_data import Patient
from caresync.testing.store_suite import remote

LIMIT_S = 10.0


def _where(ran: list[tuple[str, int]], name: str):  # type: ignore[no-untyped-def]
    def job(raw: sqlite3.Connection) -> int:
        ran.append((name, threading.get_ident()))
        return int(raw.execute("SELECT COUNT(*) FROM meta").fetchone()[0])

    return job


async def _one_turn() -> None:
    """One turn of the event loop: a task created before takes its first step (a brief
    read run here finishes in it; one handed to the connection's thread waits there)."""
    await asyncio.sleep(0)


class _Blocker:
    """A job that holds the connection's thread until released."""

    def __init__(self, ran: list[tuple[str, int]]) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.ran = ran

    def __call__(self, raw: sqlite3.Connection) -> str:
        self.started.set()
        self.release.wait(LIMIT_S)
        self.ran.append(("blocker", threading.get_ident()))
        return "done"

    async def running(self) -> None:
        if not await asyncio.to_thread(self.started.wait, LIMIT_S):
            raise AssertionError("the blocking job never started")


async def test_a_brief_read_runs_on_the_callers_thread_when_the_connection_is_idle(
    tmp_path: Path,
) -> None:
    ran: list[tuple[str, int]] = []
    async with SQLiteStore.open(tmp_path / "a.db") as store:
        await store._run("reading", _where(ran, "brief"), brief=True)
        await store._run("reading", _where(ran, "handed"))
    here = threading.get_ident()
    assert ran[0] == ("brief", here)
    assert ran[1][0] == "handed"
    assert ran[1][1] != here  # not brief: the connection's thread


async def test_a_brief_read_waits_behind_a_job_handed_over_and_runs_after_it(
    tmp_path: Path,
) -> None:
    ran: list[tuple[str, int]] = []
    blocker = _Blocker(ran)
    async with SQLiteStore.open(tmp_path / "a.db") as store:
        blocked = asyncio.create_task(store._run("holding", blocker))
        await blocker.running()
        read = asyncio.create_task(store._run("reading", _where(ran, "brief"), brief=True))
        await _one_turn()
        assert not read.done()  # not run beside the job on the connection's thread
        blocker.release.set()
        async with asyncio.timeout(LIMIT_S):
            assert await blocked == "done"
            await read
        # Once nothing is handed over, brief reads run here again.
        await store._run("reading", _where(ran, "after"), brief=True)
    [(first, thread), (second, thread_2), (third, thread_3)] = ran
    assert (first, second, third) == ("blocker", "brief", "after")
    assert thread == thread_2 != threading.get_ident()
    assert thread_3 == threading.get_ident()


async def test_a_job_whose_caller_was_cancelled_still_keeps_brief_reads_off_the_connection(
    tmp_path: Path,
) -> None:
    """A cancelled caller stops waiting, but its job runs on: until it ends, a brief
    read must not run beside it (it would see its transaction half done)."""
    ran: list[tuple[str, int]] = []
    blocker = _Blocker(ran)
    async with SQLiteStore.open(tmp_path / "a.db") as store:
        blocked = asyncio.create_task(store._run("holding", blocker))
        await blocker.running()
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        read = asyncio.create_task(store._run("reading", _where(ran, "brief"), brief=True))
        await _one_turn()
        assert not read.done()
        blocker.release.set()
        async with asyncio.timeout(LIMIT_S):
            await read
    assert [name for name, _thread in ran] == ["blocker", "brief"]
    assert ran[1][1] == ran[0][1] != threading.get_ident()


async def test_a_brief_read_of_a_closed_store_is_refused(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "a.db")
    await store.close()
    with pytest.raises(StorageError, match="closed"):
        await store.get_meta("sync.checkpoint")


async def test_a_brief_read_sees_what_the_writes_before_it_committed(tmp_path: Path) -> None:
    """A write handed over, then a brief read of what it wrote: the read waits for it."""
    async with SQLiteStore.open(tmp_path / "a.db") as store:
        await store.set_identity(Identity("laptop-1", "laptop"))
        patient = Patient("laptop-2")
        write = asyncio.create_task(
            store.write_remote(
                [remote(patient, patient.created)], checkpoint=("sync.checkpoint", "7")
            )
        )
        states = asyncio.create_task(store.held_states([patient.id]))
        meta = asyncio.create_task(store.get_meta("sync.checkpoint"))
        async with asyncio.timeout(LIMIT_S):
            await write
            assert (await states).keys() == {patient.id}
            assert await meta == "7"


@pytest.mark.skipif(not cipher_module.AVAILABLE, reason="no encrypting SQLite is installed here")
async def test_an_encrypted_store_reads_only_on_its_connections_thread(tmp_path: Path) -> None:
    ran: list[tuple[str, int]] = []
    async with SQLiteStore.open(tmp_path / "a.db", key=os.urandom(32)) as store:
        await store._run("reading", _where(ran, "brief"), brief=True)
    assert ran[0][1] != threading.get_ident()
