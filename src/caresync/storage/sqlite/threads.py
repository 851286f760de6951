"""The database threads the SQLite stores of a process share.

Theory of operation
-------------------
A store's connection lives on one database thread, where it is made, used and
closed; the one exception is a brief read, run on the caller's thread while
nothing of the connection is on its database thread (:meth:`DatabaseConnection.run`;
a plain connection is made with ``check_same_thread=False`` for it). Every call
of a store is one **job**, a plain function of the connection that runs a whole
transaction; the store awaits it.

A process has at most :data:`THREADS` database threads, however many stores it
holds open (aiosqlite gives each connection a thread of its own: fifty laptops
in one process were fifty threads handing the GIL to each other, and a good
part of the process's time went to the kernel). A store is pinned, when
it opens, to the thread with the fewest stores (a new one while there are fewer
than :data:`THREADS`); each thread runs its jobs from one queue, first come
first served, so the jobs of a store keep their order and never run at once.
A thread with no store left stops; the next store to open starts one.

Sharing a thread is safe because **no job leaves a transaction open**: each
begins and ends its own (``BEGIN IMMEDIATE ... COMMIT``, or ``BEGIN ... COMMIT``
for a snapshot of reads), so a job never waits, on SQLite's busy timeout, for a
lock that another store's transaction queued behind it on the same thread
holds. The thread checks it after every job: a job that left one open is
rolled back and fails (StorageError), rather than holding the database for the
jobs after it.

Results go back to the event loop of the coroutine that awaits them, whichever
loop that is (a store opened under one loop may be used under the next, as
pytest-asyncio makes one a test). Each loop has a mailbox: a thread that
finishes a job puts the result in it and wakes the loop only if no wake-up is
pending already, so results that finish while the loop is busy cost one
``call_soon_threadsafe``, not one each (none is held back waiting for others).

The threads are daemon threads: a store left open when the interpreter exits is
left as after a crash, which SQLite's write-ahead log makes whole at the next
open (a non-daemon thread would instead keep the process alive for ever). A
store that is garbage-collected unclosed has its connection closed on its
thread. A child made by ``os.fork`` has none of its parent's threads: a store
the parent opened raises StorageError there; stores the child opens get
threads of its own.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, Final, TypeVar

from caresync.exceptions import InvalidInputError, StorageError

__all__ = ["THREADS", "DatabaseConnection", "database_threads"]

T = TypeVar("T")

THREADS: Final = 4
"""Database threads per process, at most (``docs/storage.md``, Database threads, has the
measurements). A process with fewer stores has fewer threads. More than one, so that a
store's wait for the disk (an fsync, a read) does not hold up every other store of the
process; four had the lowest p99 of 1, 2, 4 and 8 with 50 stores; eight only took the
GIL from each other more."""

_STOP: Final = None


class _Mailbox:
    """Results on their way to one event loop: one wake-up for all that wait there."""

    __slots__ = ("__weakref__", "_items", "_lock", "_loop", "_waking")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # A weak reference: the mailboxes are kept by loop, and a loop that is gone
        # has nobody to hand a result to.
        self._loop = weakref.ref(loop)
        self._items: list[tuple[asyncio.Future[Any], bool, Any]] = []
        self._lock = threading.Lock()
        self._waking = False

    def post(self, future: asyncio.Future[Any], ok: bool, result: Any) -> None:
        """Hand ``result`` (or the exception, if not ``ok``) to ``future`` (any thread)."""
        with self._lock:
            self._items.append((future, ok, result))
            if self._waking:
                return  # the loop will take this one with the others
            self._waking = True
        loop = self._loop()
        try:
            if loop is None:
                raise RuntimeError("the event loop is gone")
            loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # closed or gone: nobody is waiting for these any more
            with self._lock:
                self._items.clear()
                self._waking = False

    def _deliver(self) -> None:
        """Settle every future posted so far (on the loop)."""
        with self._lock:
            items, self._items = self._items, []
            self._waking = False
        for future, ok, result in items:
            if future.done():  # cancelled while its job ran
                continue
            if ok:
                future.set_result(result)
            else:
                future.set_exception(result)


_Job = Callable[[Any], Any]
# (job, its connection or None, the future to settle or None, the mailbox of its loop)
_Item = tuple[
    _Job,
    sqlite3.Connection | None,
    asyncio.Future[Any] | None,
    _Mailbox | None,
    "DatabaseConnection | None",  # whose finished jobs to count (brief reads wait on it)
]

_mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = (
    weakref.WeakKeyDictionary()
)
_mailboxes_lock = threading.Lock()


def _mailbox(loop: asyncio.AbstractEventLoop) -> _Mailbox:
    """The mailbox of ``loop`` (one per loop, shared by every store and thread)."""
    with _mailboxes_lock:
        box = _mailboxes.get(loop)
        if box is None:
            box = _mailboxes[loop] = _Mailbox(loop)
        return box


def _rollback_left_open(raw: sqlite3.Connection) -> BaseException | None:
    """Roll back what a job left open; the error to fail it with, if it did."""
    try:
        if not raw.in_transaction:
            return None
        raw.execute("ROLLBACK")
    except Exception as exc:  # noqa: BLE001 - the job's caller gets it; the thread serves on
        return exc
    return StorageError("a database job left its transaction open; it was rolled back")


class _Thread:
    """One database thread: its queue of jobs and the number of stores pinned to it."""

    def __init__(self, pool: DatabaseThreads, number: int) -> None:
        self.pool = pool
        self.queue: SimpleQueue[_Item | None] = SimpleQueue()
        self.stores = 0  # changed under the pool's lock
        self.forked = False  # set in a child process, which has no such thread
        self.thread = threading.Thread(
            target=self._serve, name=f"caresync-db-{number}", daemon=True
        )

    def put(self, item: _Item) -> None:
        if self.forked:
            raise StorageError(
                "this SQLite store was opened before the process forked, and its database "
                "thread is in the parent: open the store again in this process"
            )
        self.queue.put(item)

    def _serve(self) -> None:
        get = self.queue.get
        while (item := get()) is not _STOP:
            job, raw, future, mailbox, owner = item
            try:
                result, ok = job(raw), True
            except BaseException as exc:  # noqa: BLE001 - the caller gets it, as its job's error
                result, ok = exc, False
            if raw is not None:
                left_open = _rollback_left_open(raw)
                if left_open is not None and ok:
                    result, ok = left_open, False
            if owner is not None:
                # Done with the connection: from here a brief read may run elsewhere
                # (counted here, not by the caller, who may have stopped waiting).
                owner.finished += 1
            if future is not None and mailbox is not None:
                mailbox.post(future, ok, result)
            # Drop the references before waiting, so that what the job held (a
            # store, a connection) may be collected while the thread is idle.
            del item, job, raw, future, mailbox, result, owner


class DatabaseThreads:
    """The process's database threads (one instance, :func:`database_threads`)."""

    def __init__(self, size: int = THREADS) -> None:
        if type(size) is not int or size < 1:
            raise InvalidInputError(f"a process needs at least one database thread, not {size!r}")
        self.size = size
        """How many threads at most."""
        self._lock = threading.Lock()
        self._threads: list[_Thread] = []
        self._started = 0
        _pools.add(self)

    def pin(self) -> _Thread:
        """The thread a new store runs on: the least loaded, or a new one while there
        are fewer than :attr:`size`."""
        with self._lock:
            chosen = min(self._threads, key=lambda t: t.stores, default=None)
            if chosen is None or (chosen.stores > 0 and len(self._threads) < self.size):
                self._started += 1
                chosen = _Thread(self, self._started)
                chosen.thread.start()
                self._threads.append(chosen)
            chosen.stores += 1
            return chosen

    def unpin(self, thread: _Thread) -> None:
        """A store of ``thread`` is closed; the thread stops once it has none (any thread)."""
        with self._lock:
            thread.stores -= 1
            if thread.stores > 0 or thread.forked:
                return
            self._threads.remove(thread)
        thread.queue.put(_STOP)  # after every job already queued

    def threads(self) -> list[threading.Thread]:
        """The running database threads (for tests and diagnostics)."""
        with self._lock:
            return [t.thread for t in self._threads]

    def _after_fork(self) -> None:
        """In a forked child: the parent's threads are not here; forget them."""
        self._lock = threading.Lock()  # it may have been held by a thread that is gone
        for thread in self._threads:
            thread.forked = True
        self._threads = []


_pools: weakref.WeakSet[DatabaseThreads] = weakref.WeakSet()
_POOL = DatabaseThreads()


def _after_fork() -> None:
    global _mailboxes_lock
    _mailboxes_lock = threading.Lock()
    for pool in list(_pools):
        pool._after_fork()


os.register_at_fork(after_in_child=_after_fork)


def database_threads() -> DatabaseThreads:
    """The process's database threads."""
    return _POOL


class DatabaseConnection:
    """A SQLite connection living on one of the process's database threads.

    Made by :meth:`open` (the connection is created on its thread), used by
    :meth:`run` (one job at a time, in the order asked), ended by :meth:`close`
    (after every job queued before it).
    """

    def __init__(self, thread: _Thread, raw: sqlite3.Connection) -> None:
        self._thread: _Thread | None = thread
        self._raw = raw
        # Jobs handed to the thread, and jobs it is done with (each count written by
        # one thread only: handed by the caller's, finished by the database thread's):
        # while they are equal, nothing of this connection is on its thread.
        self._handed = 0
        self.finished = 0
        self.reads_here = False
        """True if brief reads may run on the caller's thread (see :meth:`run`): set
        by the store for a connection made with ``check_same_thread=False``."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._box: _Mailbox | None = None
        # Closed on its thread if dropped unclosed (the store was never closed).
        self._finalizer = weakref.finalize(self, _close_dropped, thread, raw)
        self._finalizer.atexit = False  # at exit, an open store is left as after a crash

    @classmethod
    async def open(cls, connect: Callable[[], sqlite3.Connection]) -> DatabaseConnection:
        """A connection made by ``connect()`` on a database thread; its errors raised here."""
        thread = _POOL.pin()
        made: list[sqlite3.Connection] = []

        def job(_: None) -> sqlite3.Connection:
            made.append(connect())
            return made[0]

        try:
            raw = await _submit(thread, job, None)
        except BaseException:
            # Failed, or the caller gave up waiting (the job may still make the
            # connection): close what it made and let the thread go, after it.
            thread.queue.put((_release_made(thread, made), None, None, None, None))
            raise
        return cls(thread, raw)

    async def run(self, job: Callable[[sqlite3.Connection], T], *, brief: bool = False) -> T:
        """``job(connection)`` on the connection's thread, after the jobs asked before.

        ``brief``: a read of a few rows by key, run here, on the caller's thread, when
        nothing of this connection is on its thread (every job handed over is done:
        the hop there and back, two thread wake-ups, costs more than such a read);
        else handed over like any job. Jobs stay one at a time either way: nothing is
        handed over while a read runs here (the caller's thread is busy with it)."""
        thread = self._thread
        if thread is None:
            raise StorageError("the database connection is closed")
        if brief and self.brief_runs_here:
            return job(self._raw)
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._box = loop, _mailbox(loop)
        future: asyncio.Future[T] = loop.create_future()
        thread.put((job, self._raw, future, self._box, self))
        self._handed += 1  # once queued (a refused put hands nothing over)
        return await future

    @property
    def brief_runs_here(self) -> bool:
        """True if a brief read asked now runs on the caller's thread (see :meth:`run`):
        brief reads may run here and nothing of this connection is on its thread."""
        thread = self._thread
        return (
            thread is not None
            and self.reads_here
            and self._handed == self.finished
            and not thread.forked
        )

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._thread is None

    async def close(self) -> None:
        """Close the connection once the jobs queued before have run; closing twice is
        harmless. sqlite3's errors in closing are raised (the connection is closed and
        its thread released all the same)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._finalizer.detach()
        if thread.forked:  # its thread is in the parent, which closes its own
            return
        await _submit(thread, _release_made(thread, [self._raw]), None)


async def _submit(thread: _Thread, job: Callable[[Any], T], raw: sqlite3.Connection | None) -> T:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    thread.put((job, raw, future, _mailbox(loop), None))
    return await future


def _release_made(thread: _Thread, made: list[sqlite3.Connection]) -> Callable[[None], None]:
    """A job that closes these connections, then lets their thread go."""

    def job(_: None) -> None:
        try:
            for raw in made:
                raw.close()
        finally:
            thread.pool.unpin(thread)

    return job


def _close_dropped(thread: _Thread, raw: sqlite3.Connection) -> None:
    """Close a connection whose store was dropped unclosed, on its thread (called by the
    garbage collector, on any thread: a queue put is all it does)."""
    if thread.forked:
        return
    thread.queue.put((_release_made(thread, [raw]), None, None, None, None))
