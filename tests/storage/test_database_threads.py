"""The database threads SQLite stores share (caresync.storage.sqlite.threads): order and
isolation of jobs, no transaction left open across jobs, closing, errors, event loops,
forks, and a bounded number of threads that all stop when their stores close."""

from __future__ import annotations

import asyncio
import gc
import os
import sqlite3
import sys
import threading
import warnings
from pathlib import Path

import pytest
from store_helpers import Patient

from caresync import CorruptDatabaseError, StorageError
from caresync.storage import IncomingUpdate, SQLiteStore
from caresync.storage import _cipher as cipher_module
from caresync.storage.sqlite import core as core_module
from caresync.storage.sqlite import threads as threads_module
from caresync.storage.sqlite.threads import THREADS, DatabaseThreads

JOIN_S = 10.0  # a bound on waiting for a thread to stop (it stops at once)


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> DatabaseThreads:
    """A pool of its own for the test (one thread, as the process's), so that stores other
    tests left to the garbage collector share none of its threads."""
    fresh = DatabaseThreads(1)
    monkeypatch.setattr(threads_module, "_POOL", fresh)
    return fresh


@pytest.fixture
def process_pool(monkeypatch: pytest.MonkeyPatch) -> DatabaseThreads:
    """A pool of its own the size of the process's (THREADS)."""
    fresh = DatabaseThreads()
    monkeypatch.setattr(threads_module, "_POOL", fresh)
    return fresh


@pytest.fixture
def pool_of_four(monkeypatch: pytest.MonkeyPatch) -> DatabaseThreads:
    fresh = DatabaseThreads(4)
    monkeypatch.setattr(threads_module, "_POOL", fresh)
    return fresh


def thread_of(store: SQLiteStore) -> threading.Thread:
    conn = store._conn
    assert conn is not None
    assert conn._thread is not None
    return conn._thread.thread


def join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(JOIN_S)
    assert [t.name for t in threads if t.is_alive()] == []


# -------------------------------------------------------------- order and isolation


async def test_a_stores_jobs_run_in_order_one_at_a_time_on_one_thread(
    tmp_path: Path, pool_of_four: DatabaseThreads
) -> None:
    stores = [await SQLiteStore.open(tmp_path / f"{n}.db") for n in range(4)]
    try:
        # Four threads, four stores: each store on a thread of its own (least loaded).
        assert len({thread_of(s) for s in stores}) == 4
        ran: dict[int, list[int]] = {n: [] for n in range(4)}
        where: dict[int, set[str]] = {n: set() for n in range(4)}
        running = dict.fromkeys(range(4), 0)
        overlap: list[int] = []

        def job(n: int, i: int) -> object:
            def run(raw: sqlite3.Connection) -> int:
                running[n] += 1
                overlap.append(running[n])
                where[n].add(threading.current_thread().name)
                raw.execute("SELECT 1").fetchone()
                ran[n].append(i)
                running[n] -= 1
                return i

            return run

        calls = [s._run(f"job {i}", job(n, i)) for i in range(200) for n, s in enumerate(stores)]
        results = await asyncio.gather(*calls)
        assert results == [i for i in range(200) for _ in stores]
        assert all(ran[n] == list(range(200)) for n in range(4))
        assert all(len(names) == 1 for names in where.values())
        assert set(overlap) == {1}  # never two jobs of one store at once
    finally:
        for store in stores:
            await store.close()


async def test_stores_on_one_thread_stay_apart(tmp_path: Path, pool: DatabaseThreads) -> None:
    async with (
        SQLiteStore.open(tmp_path / "a.db") as a,
        SQLiteStore.open(tmp_path / "b.db") as b,
    ):
        assert thread_of(a) is thread_of(b)
        patient = Patient()

        def fails(raw: sqlite3.Connection) -> None:
            raw.execute("BEGIN IMMEDIATE")
            raw.execute("INSERT INTO meta (key, value) VALUES ('x', 'from a')")
            raise ValueError("the job's own error")

        # A's failing job between two of B's: B's jobs and A's next one run as if alone.
        results = await asyncio.gather(
            b.write_remote([IncomingUpdate(patient.id, patient.created, None)]),
            a._run("failing", fails),
            b.load(patient.id),
            a.load_many([patient.id]),
            return_exceptions=True,
        )
        assert isinstance(results[1], ValueError)
        assert results[2] == patient.created
        assert results[3] == {}  # B's record is B's alone
        assert await a.get_meta("x") is None  # A's half-done write was rolled back


async def test_a_job_that_leaves_its_transaction_open_fails_and_is_rolled_back(
    tmp_path: Path, pool: DatabaseThreads
) -> None:
    path = tmp_path / "replica.db"
    async with (
        SQLiteStore.open(path) as store,
        SQLiteStore.open(path, accounts_only=True) as side_door,
    ):

        def leaves_open(raw: sqlite3.Connection) -> None:
            raw.execute("BEGIN IMMEDIATE")
            raw.execute("INSERT INTO meta (key, value) VALUES ('x', 'left open')")

        with pytest.raises(StorageError, match="left its transaction open"):
            await store._run("a faulty job", leaves_open)
        # The write lock is free for the next job on the thread (held, this write would
        # wait out the busy timeout and fail "in use"), and nothing of it was kept.
        await side_door.add_user("org-1", "ada", "$argon2id$one")
        assert await store.get_meta("x") is None
        assert (await store.get_user("org-1", "ada")) is not None


@pytest.mark.parametrize(
    "encrypted",
    [
        False,
        pytest.param(
            True,
            marks=pytest.mark.skipif(
                cipher_module._mc is None and cipher_module._sqlcipher is None,
                reason="no encrypting SQLite installed here",
            ),
        ),
    ],
)
async def test_a_writer_and_its_side_doors_interleave_on_one_thread(
    tmp_path: Path, pool: DatabaseThreads, encrypted: bool
) -> None:
    """Three connections to one file on one thread, their jobs interleaved: every job
    ends its transaction, so none waits for a lock another holds (which, on one thread,
    would wait out SQLite's busy timeout and fail)."""
    key = os.urandom(32) if encrypted else None
    path = tmp_path / "replica.db"
    async with (
        SQLiteStore.open(path, key=key) as writer,
        SQLiteStore.open(path, key=key, accounts_only=True) as accounts,
        SQLiteStore.open(path, key=key, read_only=True) as reader,
    ):
        assert thread_of(writer) is thread_of(accounts) is thread_of(reader)
        patients = [Patient() for _ in range(40)]
        calls = []
        for n, patient in enumerate(patients):
            calls.append(writer.write_remote([IncomingUpdate(patient.id, patient.created, None)]))
            calls.append(accounts.add_user("org-1", f"user{n}", "$argon2id$x"))
            calls.append(reader.load_many([p.id for p in patients]))
            calls.append(writer.add_user("org-2", f"user{n}", "$argon2id$y"))
        results = await asyncio.gather(*calls)
        # Each read saw a whole number of the writer's commits, in order.
        seen = [len(r) for r in results[2::4]]
        assert seen == sorted(seen)
        assert seen[-1] == len(patients)
        assert len(await reader.organisation_accounts("org-1")) == 40
        assert len(await accounts.organisation_accounts("org-2")) == 40


# ------------------------------------------------------------------ closing


async def test_closing_waits_for_the_jobs_queued_before(
    tmp_path: Path, pool: DatabaseThreads
) -> None:
    path = tmp_path / "replica.db"
    store = await SQLiteStore.open(path)
    release = threading.Event()
    patients = [Patient() for _ in range(50)]
    # The thread held by a first job, so that the writes and the close all wait in its
    # queue; tasks take their first step in the order made, so each write is queued (its
    # first step ends awaiting its job) before the close is, and the gate opens last.
    gate = asyncio.ensure_future(store._run("gate", lambda raw: release.wait(JOIN_S)))
    writes = [
        asyncio.ensure_future(store.write_remote([IncomingUpdate(p.id, p.created, None)]))
        for p in patients
    ]

    async def close_and_look() -> list[bool]:
        await store.close()
        return [w.done() for w in writes]

    closing = asyncio.ensure_future(close_and_look())

    async def open_gate() -> None:
        assert not closing.done()
        release.set()

    *_, done_when_closed, _ = await asyncio.gather(gate, *writes, closing, open_gate())
    assert done_when_closed == [True] * 50
    assert all(w.exception() is None for w in writes)
    with pytest.raises(StorageError, match="closed"):
        await store.load(patients[0].id)
    await store.close()  # twice: harmless
    async with SQLiteStore.open(path) as again:
        assert len(await again.load_many([p.id for p in patients])) == 50


# ------------------------------------------------------------------ errors


async def test_errors_are_translated_as_before(tmp_path: Path, pool: DatabaseThreads) -> None:
    async with SQLiteStore.open(tmp_path / "replica.db") as store:

        def duplicate(raw: sqlite3.Connection) -> None:
            raw.execute("INSERT INTO meta (key, value) VALUES ('y', '1')")
            raw.execute("INSERT INTO meta (key, value) VALUES ('y', '2')")

        with pytest.raises(StorageError, match="inserting twice: UNIQUE") as caught:
            await store._run("inserting twice", duplicate)
        assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)

        def malformed(raw: sqlite3.Connection) -> None:
            raise sqlite3.DatabaseError("database disk image is malformed")

        with pytest.raises(CorruptDatabaseError, match="damaged"):
            await store._run("reading", malformed)
        assert store.damaged is not None

        def foreign(raw: sqlite3.Connection) -> None:
            raise LookupError("not sqlite's")

        with pytest.raises(LookupError):  # not the database's: passed on as it is
            await store._run("reading", foreign)
        assert await store._run("still there", lambda raw: 1) == 1


# ------------------------------------------------------------------ event loops


def test_a_store_serves_one_event_loop_after_another(tmp_path: Path) -> None:
    """As pytest-asyncio runs each test in a loop of its own: a store opened in one loop
    is used and closed in the next (results go to the loop of whoever awaits them)."""
    patient = Patient()
    first = asyncio.new_event_loop()
    try:
        store = first.run_until_complete(SQLiteStore.open(tmp_path / "replica.db"))
        first.run_until_complete(
            store.write_remote([IncomingUpdate(patient.id, patient.created, None)])
        )
    finally:
        first.close()
    second = asyncio.new_event_loop()
    try:
        assert second.run_until_complete(store.load(patient.id)) == patient.created
        second.run_until_complete(store.close())
    finally:
        second.close()


async def test_a_loop_that_closes_while_its_job_runs_leaves_the_thread_serving(
    tmp_path: Path, pool: DatabaseThreads
) -> None:
    async with SQLiteStore.open(tmp_path / "replica.db") as store:
        started, release = threading.Event(), threading.Event()

        def slow(raw: sqlite3.Connection) -> int:
            started.set()
            assert release.wait(JOIN_S)
            return 1

        def in_another_loop() -> None:
            loop = asyncio.new_event_loop()
            task = loop.create_task(store._run("slow", slow))
            loop.run_until_complete(asyncio.to_thread(started.wait, JOIN_S))
            task.cancel()
            loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
            loop.close()  # its job's result now has no loop to go to

        await asyncio.to_thread(in_another_loop)
        release.set()
        assert await store._run("after", lambda raw: raw.execute("SELECT 2").fetchone()[0]) == 2


async def test_two_loops_at_once_share_a_thread(tmp_path: Path, pool: DatabaseThreads) -> None:
    """A store awaited in another thread's loop while this loop awaits its own store."""
    async with (
        SQLiteStore.open(tmp_path / "a.db") as a,
        SQLiteStore.open(tmp_path / "b.db") as b,
    ):
        assert thread_of(a) is thread_of(b)
        patients = [Patient() for _ in range(30)]

        async def fill(store: SQLiteStore) -> None:
            for p in patients:
                await store.write_remote([IncomingUpdate(p.id, p.created, None)])

        await asyncio.gather(asyncio.to_thread(asyncio.run, fill(a)), fill(b))
        ids = [p.id for p in patients]
        assert len(await a.load_many(ids)) == len(await b.load_many(ids)) == 30


# ------------------------------------------------------------------ threads


@pytest.mark.slow
async def test_two_hundred_stores_use_at_most_the_pools_threads_and_none_after(
    tmp_path: Path, process_pool: DatabaseThreads
) -> None:
    pool = process_pool
    before = threading.active_count()
    stores = []
    try:
        for n in range(200):
            stores.append(await SQLiteStore.open(tmp_path / f"{n}.db"))
        threads = pool.threads()
        assert len(threads) == THREADS
        assert {thread_of(s) for s in stores} == set(threads)
        assert all(t.is_alive() for t in threads)
        # Least loaded: the stores are spread evenly.
        per_thread = [sum(thread_of(s) is t for s in stores) for t in threads]
        assert max(per_thread) - min(per_thread) <= 1
        # Besides the pool's: asyncio's default executor (opening checks the file there).
        assert threading.active_count() <= before + THREADS + min(32, (os.cpu_count() or 1) + 4)
        await asyncio.gather(*(s.count_conflicts() for s in stores))
    finally:
        for store in stores:
            await store.close()
    assert pool.threads() == []
    join_all(threads)


async def test_a_store_dropped_unclosed_lets_its_thread_go(
    tmp_path: Path, pool: DatabaseThreads
) -> None:
    store = await SQLiteStore.open(tmp_path / "replica.db", read_only=False)
    await store.count_conflicts()
    (thread,) = pool.threads()
    store._release_lock()  # what closing would do; the connection is left to the collector
    del store
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    join_all([thread])
    assert pool.threads() == []


async def test_a_failed_open_lets_its_thread_go(
    tmp_path: Path, pool: DatabaseThreads, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteStore.open(tmp_path / "replica.db"):
        pass
    ran_on: list[threading.Thread] = []

    def connection(target: object, *, key: bytes | None, uri: bool) -> sqlite3.Connection:
        ran_on.append(threading.current_thread())
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(core_module, "_connection", connection)
    with pytest.raises(StorageError, match="unable to open"):
        await SQLiteStore.open(tmp_path / "replica.db")
    join_all(ran_on)
    assert pool.threads() == []


@pytest.mark.skipif(sys.platform == "win32", reason="os.fork")
async def test_a_forked_child_refuses_its_parents_store_and_opens_its_own(
    tmp_path: Path, pool: DatabaseThreads
) -> None:
    patient = Patient()
    async with SQLiteStore.open(tmp_path / "parent.db") as store:
        await store.write_remote([IncomingUpdate(patient.id, patient.created, None)])

        def in_child() -> int:
            async def child() -> int:
                try:
                    await store.load(patient.id)
                except StorageError as exc:
                    if "forked" not in str(exc):
                        return 2
                else:
                    return 3
                await store.close()  # the parent's to close: nothing to do here
                async with SQLiteStore.open(tmp_path / "child.db") as own:
                    await own.write_remote([IncomingUpdate(patient.id, patient.created, None)])
                    if await own.load(patient.id) != patient.created:
                        return 4
                return 0 if pool.threads() == [] else 5

            return asyncio.run(child())

        def fork() -> int:
            # From a thread of its own: the child's only thread then runs no event loop.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork beside threads
                pid = os.fork()
            if pid == 0:  # pragma: no cover - the child reports by its exit status only
                code = 1
                try:
                    code = in_child()
                finally:
                    os._exit(code)
            return pid

        pid = await asyncio.to_thread(fork)
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's store is untouched by it.
        assert await store.load(patient.id) == patient.created
