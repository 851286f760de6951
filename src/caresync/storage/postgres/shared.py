"""Several server processes on one database: exclusive commits and the feed's signal.

Theory of operation
-------------------
A server process keeps records loaded in memory and computes a push's conflict
rows, index and hub marks from them, so before it absorbs a push it must know
every record another process changed. :meth:`SharedPart.exclusive_commits`
takes :data:`~.schema.PUSH_LOCK`, a session advisory lock, on a connection of
its own (waiting for it never blocks the store's thread), then reads the feed
head. Inside, the server reads the feed from the last seq it saw (evicting what
others changed) and commits; the commit (``_write`` with ``records``) checks,
under the feed lock, that the head is still the one the section began with (or
the one its own commit left): if not (the lock connection broke and another
process got in), it refuses, storing nothing. A killed process's locks go with
its connections.

A feed write notifies :data:`~.schema.FEED_CHANNEL` in its transaction (so only a
commit is announced, in commit order). :meth:`SharedPart.wait_for_feed` listens
on another dedicated connection; a notification can be lost (that connection
dropped and reconnected), so callers read the feed from their last seq after
every return, woken or timed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import psycopg

from caresync.exceptions import StorageError
from caresync.storage._local import check_timeout, claim
from caresync.storage.base import check_text
from caresync.storage.postgres._sql import feed_head
from caresync.storage.postgres.core import PostgresCore
from caresync.storage.postgres.schema import FEED_CHANNEL, HUB_SENDING_LOCK, PUSH_LOCK

__all__ = ["LISTENER_NAME", "SharedPart"]

LISTENER_NAME = "caresync-listen"
"""The ``application_name`` of a store's listening connection."""
_LOCKER_NAME = "caresync-commit-lock"
_HUB_LOCKER_NAME = "caresync-hub-sending"
_CONNECT_TIMEOUT_S = 10

logger = logging.getLogger("caresync.storage.postgres")

AsyncConn = psycopg.AsyncConnection[tuple[Any, ...]]


class SharedPart(PostgresCore):
    """What lets several server processes share one database (see the module docstring)."""

    @property
    def shared(self) -> bool:
        """True: any number of processes may write one PostgreSQL database."""
        return True

    def exclusive_commits(self) -> AbstractAsyncContextManager[None]:
        """Hold the push lock, in this process and across every process on the database."""
        return self._exclusive()

    @asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        if self._gate is None:
            self._gate = asyncio.Lock()
        async with self._gate:  # a session lock is re-entrant: one holder per process
            locker = await self._locker()
            try:
                await locker.execute("SELECT pg_advisory_lock(%s)", (PUSH_LOCK,))
            except BaseException as exc:
                # Cancelled or failed while waiting: the lock may yet be granted to this
                # session, so the session goes (closing it releases whatever it holds).
                await self._drop_locker()
                if isinstance(exc, psycopg.Error):
                    why = " ".join(str(exc).split())
                    raise StorageError(
                        f"cannot take the commit lock on {self.where} ({why}); nothing was stored"
                    ) from None
                raise
            try:
                self._section_head = await self._run("reading the change feed", feed_head)
                yield
            finally:
                self._section_head = None
                try:
                    await locker.execute("SELECT pg_advisory_unlock(%s)", (PUSH_LOCK,))
                except psycopg.Error:
                    # The connection broke: its session, and the lock, are gone with it.
                    await self._drop_locker()
                except BaseException:
                    await self._drop_locker()  # cancelled: never leave the lock held
                    raise

    def hub_sending(self, record_id: str) -> AbstractAsyncContextManager[bool]:
        """A claim on sending one record's summary, across every process on the database
        (see ``ServerStore.hub_sending``): a session advisory lock, tried (never waited
        for), on a connection of its own; a process that dies releases it with it."""
        check_text(record_id, "record_id")
        return self._hub_claim(record_id)

    @asynccontextmanager
    async def _hub_claim(self, record_id: str) -> AsyncIterator[bool]:
        # This process's claims first: a session lock is re-entrant, so two senders of
        # one process would both get it.
        async with claim(self._sending, record_id) as mine:
            if not mine:
                yield False
                return
            conn = await self._hub_locker()
            key = (HUB_SENDING_LOCK, record_id)
            try:
                cursor = await conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", key)
                row = await cursor.fetchone()
            except BaseException as exc:
                await self._drop_hub_locker()  # whatever it may hold goes with its session
                if isinstance(exc, psycopg.Error):
                    raise StorageError(
                        f"cannot claim the hub summary of {record_id} on {self.where} "
                        f"({' '.join(str(exc).split())})"
                    ) from None
                raise
            if row is None or row[0] is not True:
                yield False  # another process is sending it
                return
            try:
                yield True
            finally:
                try:
                    await conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", key)
                except psycopg.Error:
                    await self._drop_hub_locker()  # the session, and the lock, are gone
                except BaseException:
                    await self._drop_hub_locker()  # cancelled: never leave the lock held
                    raise

    async def _hub_locker(self) -> AsyncConn:
        conn = self._hub_conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        await self._drop_hub_locker()
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._url,
                autocommit=True,
                connect_timeout=_CONNECT_TIMEOUT_S,
                application_name=_HUB_LOCKER_NAME,
            )
        except psycopg.Error as exc:
            raise StorageError(
                f"cannot connect to {self.where} to claim a hub summary "
                f"({' '.join(str(exc).split())})"
            ) from None
        self._hub_conn = conn
        return conn

    async def _drop_hub_locker(self) -> None:
        conn, self._hub_conn = self._hub_conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    async def _locker(self) -> AsyncConn:
        conn = self._lock_conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        await self._drop_locker()
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._url,
                autocommit=True,
                connect_timeout=_CONNECT_TIMEOUT_S,
                application_name=_LOCKER_NAME,
            )
        except psycopg.Error as exc:
            raise StorageError(
                f"cannot connect to {self.where} for the commit lock ({' '.join(str(exc).split())})"
            ) from None
        self._lock_conn = conn
        return conn

    async def _drop_locker(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    async def wait_for_feed(self, timeout_s: float) -> bool:
        """Until a feed write's notification arrives, or ``timeout_s``; True if woken.

        A (re)connected listener returns True at once: what was committed while it
        was not listening was never announced to it.
        """
        timeout = check_timeout(timeout_s)
        if self.closed:
            raise StorageError(f"waiting for the feed: the store at {self.where} is closed")
        conn = self._listen_conn
        if conn is None or conn.closed or conn.broken:
            await self._drop_listener()
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=_CONNECT_TIMEOUT_S,
                    application_name=LISTENER_NAME,
                )
                await conn.execute(f"LISTEN {FEED_CHANNEL}")
            except psycopg.Error as exc:
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        await conn.close()
                logger.warning("cannot listen on %s: %s", self.where, " ".join(str(exc).split()))
                await asyncio.sleep(timeout)  # retry at the caller's pace: its poll goes on
                return False
            self._listen_conn = conn
            return True
        try:
            async for _note in conn.notifies(timeout=timeout, stop_after=1):
                return True
        except psycopg.Error as exc:
            logger.warning("stopped listening on %s: %s", self.where, " ".join(str(exc).split()))
            await self._drop_listener()
            return True  # what was announced meanwhile is lost: the caller reads the feed
        return False

    async def _drop_listener(self) -> None:
        conn, self._listen_conn = self._listen_conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
