"""The PostgreSQL store's core: the URL, the connection and the one thread every call
runs on, opening (recognition, creation, migration), and one transaction per write."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Self, cast

import psycopg
from psycopg import IsolationLevel
from psycopg.conninfo import conninfo_to_dict

from caresync.exceptions import InvalidInputError, NotImplementedFeatureError, StorageError
from caresync.storage._writes import WriteLike
from caresync.storage.base import StoreOpener, StrPath
from caresync.storage.cache import CachedRecord
from caresync.storage.postgres._sql import (
    Conn,
    Job,
    T,
    feed_head,
    put_meta,
    read_identity,
    translate,
)
from caresync.storage.postgres.migrations import check_current, prepare
from caresync.storage.postgres.schema import FEED_LOCK

_SYNCED_AT = "durable.synced_ms"  # written by make_durable: a commit that flushes the log

__all__ = ["POSTGRES_SCHEMES", "PostgresCore", "describe_url", "is_postgres_url"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
"""How a PostgreSQL database's URL starts (libpq's two spellings)."""

_CONNECT_TIMEOUT_S = 10


def _one_line(exc: BaseException) -> str:
    """An error's message on one line (libpq's run over several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def is_postgres_url(value: object) -> bool:
    """True when ``value`` is a string naming a PostgreSQL database by URL."""
    return isinstance(value, str) and value.lower().startswith(POSTGRES_SCHEMES)


def describe_url(url: str) -> str:
    """The URL as it may be shown: host, port, database and user, never a password.

    InvalidInputError for a string that is not a PostgreSQL URL libpq reads.
    """
    if not is_postgres_url(url):
        raise InvalidInputError(
            f"a PostgreSQL database is named by a postgresql://HOST:PORT/DATABASE URL, "
            f"not {url!r:.80}"
        )
    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error:
        # libpq's own message quotes the URL, password and all: not shown.
        raise InvalidInputError(
            "not a PostgreSQL URL libpq can read; write it as "
            "postgresql://USER@HOST:PORT/DATABASE (with any reserved character of the "
            "password percent-encoded)"
        ) from None
    port_text = str(parts.get("port") or "")
    if not all(p.strip().isdigit() for p in port_text.split(",") if port_text):
        raise InvalidInputError(
            f"the port of a PostgreSQL URL is a number, not {port_text!r:.20}; write it as "
            "postgresql://USER@HOST:PORT/DATABASE"
        )
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = parts.get("host") or "localhost"
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname') or ''}"


def _connect(url: str, read_only: bool) -> Conn:
    """A new connection in autocommit mode (each transaction is opened explicitly)."""
    conn: Conn = psycopg.connect(url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S)
    # Whatever the database's defaults: feed order relies on READ COMMITTED (a writer
    # sees the rows committed before it took the feed lock; reproduced: under REPEATABLE
    # READ half of concurrent writes failed), and "committed before it returns" on a
    # synchronous commit.
    conn.isolation_level = IsolationLevel.READ_COMMITTED
    conn.execute("SET synchronous_commit = on")
    if read_only:
        conn.execute("SET default_transaction_read_only = on")
    return conn


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class PostgresCore:
    """The connection every part runs on: one psycopg connection, used by one thread.

    Every call is one job on that thread (as the SQLite store's calls are on
    its database thread): a transaction is a plain function, so statements of two
    coroutines never interleave inside one. Several processes may open one
    database: PostgreSQL isolates them, and writes of records serialise on the
    feed lock (:data:`~caresync.storage.postgres.schema.FEED_LOCK`). Nothing of
    a record is cached here: another process may have written it since.
    """

    def __init__(
        self,
        conn: Conn,
        url: str,
        where: str,
        executor: ThreadPoolExecutor,
        clock: Callable[[], int],
    ) -> None:
        self._conn: Conn | None = conn
        self._url = url  # may hold a password: never shown (``where`` is)
        self.where = where
        """The database, as it may be shown (no password)."""
        self._executor = executor
        self._now_ms = clock
        self.migrated_from: int | None = None
        """The schema version the database had, if opening migrated it; else None."""
        self.read_only = False
        """True for a store opened with ``read_only=True``: it refuses every write."""
        self.accounts_only = False
        """True for a store opened with ``accounts_only=True`` (see :meth:`open`)."""
        self.damaged: str | None = None
        """Always None here: PostgreSQL checks its own pages (kept for the SQLite store's API)."""
        self._own_replica_id: str | None = None
        # Several processes (see .shared): the lock's and the listener's connections,
        # this process's gate to the lock, and the feed head the held section began at.
        self._lock_conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self._listen_conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self._gate: asyncio.Lock | None = None
        self._section_head: int | None = None
        # The hub sender's claims (see .shared.hub_sending): this process's, and the
        # connection holding their advisory locks.
        self._hub_conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self._sending: set[str] = set()
        # A commit made with synchronous_commit off (append_audit(durable=False)) that
        # no make_durable has followed yet. Touched on the store's thread only.
        self._unsynced = False

    @classmethod
    def open(
        cls,
        url: str,
        *,
        create: bool = True,
        read_only: bool = False,
        accounts_only: bool = False,
        clock: Callable[[], int] | None = None,
    ) -> StoreOpener[Self]:
        """Open (or, with ``create``, create) the caresync server in the database at ``url``.

        ``await PostgresStore.open(url)`` or ``async with PostgresStore.open(url) as store``.
        ``url`` is libpq's: ``postgresql://USER:PASSWORD@HOST:PORT/DATABASE``, with
        ``?options=-csearch_path%3DSCHEMA`` to keep caresync's tables in a schema of
        their own. The database must exist; its caresync tables are created in one
        transaction on the first open (``create=False``: DatabaseNotFoundError
        instead), an older schema is migrated forward. A database holding another
        application's tables raises NotACaresyncDatabaseError, one from a newer
        caresync DatabaseTooNewError, with nothing written.

        ``read_only`` refuses every write (PostgreSQL's read-only transactions);
        ``accounts_only`` is accepted for the SQLite store's callers and means
        "never creates or migrates": any number of processes may write one
        PostgreSQL database, so no side door is needed. ``clock`` returns
        milliseconds (for record, account and session times).

        An unreachable server, a refused login or a missing database raise
        StorageError saying what to check.
        """
        where = describe_url(url)
        if read_only and accounts_only:
            raise InvalidInputError("open a store read_only or accounts_only, not both")

        async def factory() -> Self:
            return await cls._open(
                url,
                where,
                create=create and not (read_only or accounts_only),
                read_only=read_only,
                accounts_only=accounts_only,
                clock=clock or _wall_ms,
            )

        return StoreOpener(factory)

    @classmethod
    async def _open(
        cls,
        url: str,
        where: str,
        *,
        create: bool,
        read_only: bool,
        accounts_only: bool,
        clock: Callable[[], int],
    ) -> Self:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="caresync-postgres")
        loop = asyncio.get_running_loop()

        try:
            conn = await loop.run_in_executor(executor, _connect, url, read_only)
        except psycopg.Error as exc:
            executor.shutdown(wait=False)
            raise StorageError(
                f"cannot open the PostgreSQL database {where} ({_one_line(exc)}); check "
                "that the server runs and listens there, that the database exists, and the "
                "user and password"
            ) from None
        except BaseException:
            executor.shutdown(wait=False)
            raise
        store = cls(conn, url, where, executor, clock)
        store.read_only = read_only
        store.accounts_only = accounts_only

        def ready(raw: Conn) -> int | None:
            if read_only or accounts_only:
                check_current(raw, where)
                return None
            return prepare(raw, where, create=create)

        try:
            store.migrated_from = await store._run(f"opening {where}", ready)
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        """Close the store's connections. Closing twice is harmless."""
        hub = self._hub_conn
        if hub is not None and not hub.closed and not hub.broken:
            # Let go of the hub claims before the connection goes: the server frees a
            # closed session's locks only once its backend has exited, a moment after
            # close() returns, so another process could still find a claim held.
            with contextlib.suppress(psycopg.Error, TimeoutError):
                async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                    await hub.execute("SELECT pg_advisory_unlock_all()")
        for extra in (self._lock_conn, self._listen_conn, self._hub_conn):
            if extra is not None:
                with contextlib.suppress(psycopg.Error):
                    await extra.close()
        self._lock_conn = self._listen_conn = self._hub_conn = None
        conn, self._conn = self._conn, None
        if conn is None:
            return
        loop = asyncio.get_running_loop()
        try:
            with contextlib.suppress(psycopg.Error):
                await loop.run_in_executor(self._executor, conn.close)
        finally:
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._conn is None

    @property
    def encrypted(self) -> bool:
        """Always False: PostgreSQL's own encryption (disk, TLS) is the operator's."""
        return False

    async def backup(self, target: StrPath) -> None:
        """Not done here: a PostgreSQL database is backed up by ``pg_dump``.

        Raises NotImplementedFeatureError saying so (see docs/operations.md).
        """
        raise NotImplementedFeatureError(
            f"caresync does not back up a PostgreSQL server; run "
            f"`pg_dump --format=custom --file=... {self.where}` (and pg_restore to restore)"
        )

    async def _run(self, what: str, job: Job[T]) -> T:
        """Run ``job(connection)`` on the store's thread; translate psycopg's errors.

        A connection found broken (the database server restarted, a network cut) is
        replaced before the job runs: the call that met the break failed whole (its
        transaction rolled back, StorageError), and the next one reconnects.
        """
        if self._conn is None:
            raise StorageError(f"{what}: the store at {self.where} is closed")
        loop = asyncio.get_running_loop()
        try:
            return cast(T, await loop.run_in_executor(self._executor, self._call, what, job))
        except psycopg.Error as exc:
            raise translate(exc, what, self.where) from None

    def _call(self, what: str, job: Job[T]) -> T:
        """On the store's thread: the job, on a live connection."""
        conn = self._conn
        if conn is None:  # closed while the job waited its turn
            raise StorageError(f"{what}: the store at {self.where} is closed")
        if conn.broken or conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.close()
            conn = self._conn = _connect(self._url, self.read_only)
        return job(conn)

    def _write(self, raw: Conn, body: Callable[[], T], *, records: bool = False) -> T:
        """Run ``body`` in one transaction, committed before returning.

        ``records``: the transaction writes records (or the feed), so it first
        takes the feed lock, held until it commits: writers of records follow
        one another, in every process, and feed numbers are given in commit order.
        """
        if self.read_only:
            raise StorageError(f"{self.where} was opened read-only; nothing was written")
        with raw.transaction():
            if records:
                raw.execute("SELECT pg_advisory_xact_lock(%s)", (FEED_LOCK,))
                expected = self._section_head
                if expected is not None and feed_head(raw) != expected:
                    # Inside exclusive_commits, another process committed (its lock was
                    # lost with a broken connection): records loaded here may be stale.
                    raise StorageError(
                        f"another process committed to {self.where} during this commit; "
                        "nothing was stored: try again"
                    )
            return body()

    async def make_durable(self) -> None:
        """Return once every commit this process made so far is on disk: a commit that
        waits for its write-ahead log flushes the log up to it, the lazy commits
        before it included (PostgreSQL's asynchronous commit)."""

        def job(raw: Conn) -> None:
            if self._unsynced:
                with raw.transaction():
                    raw.execute("SET LOCAL synchronous_commit = on")
                    # A row written: PostgreSQL flushes the log at a commit only if the
                    # transaction wrote some (an xid alone commits asynchronously).
                    put_meta(raw, _SYNCED_AT, str(self._now_ms()))
                self._unsynced = False

        await self._run("making the last commits durable", job)

    def _known(self, raw: Conn, writes: Sequence[WriteLike]) -> dict[str, CachedRecord]:
        """What is stored of the records among those written (one query)."""
        ids = list(dict.fromkeys(w.record_id for w in writes))
        known: dict[str, CachedRecord] = {}
        for record_id, vector, organisation, pending, key in raw.execute(
            "SELECT record_id, state_vector, organisation, pending, rk FROM records"
            " WHERE record_id = ANY(%s)",
            (ids,),
        ):
            known[record_id] = CachedRecord(bytes(vector), organisation, bool(pending), key=key)
        return known

    def _own_id(self, raw: Conn) -> str:
        """This replica's id, whose audit chain is its own (read once: it never changes)."""
        if self._own_replica_id is None:
            identity = read_identity(raw)
            if identity is None:
                raise StorageError(
                    f"{self.where} holds no replica yet: it has no audit trail of its own"
                )
            self._own_replica_id = identity.replica_id
        return self._own_replica_id
