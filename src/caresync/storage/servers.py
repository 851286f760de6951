"""Opening a server's database by what names it: an SQLite file's path, or a
PostgreSQL database's URL (``postgresql://HOST:PORT/DATABASE``).

The one place that dispatches on the scheme: :class:`~caresync.server.SyncServer`
and the server-side commands open their store through :func:`open_server_database`.
The PostgreSQL store is imported only for a URL, so that psycopg stays an
optional extra (``pip install "caresync[postgres]"``).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from caresync.exceptions import InvalidInputError, MissingExtraError
from caresync.storage.base import ServerStore, StoreOpener, StrPath, new_feed_epoch
from caresync.storage.sqlite import SQLiteStore

__all__ = ["is_database_url", "open_server_database", "shown_database"]

_URL_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(target: object) -> bool:
    """True when ``target`` names a PostgreSQL database by URL (not a file)."""
    return isinstance(target, str) and target.lower().startswith(_URL_SCHEMES)


def shown_database(target: StrPath) -> str:
    """How a database may be named in messages: a path, or a URL without its password."""
    if not is_database_url(target):
        return os.fspath(target)
    try:
        parts = urlsplit(str(target))
        netloc = parts.netloc.rsplit("@", 1)[-1]
        user = f"{parts.username}@" if parts.username else ""
    except ValueError:  # a URL urllib cannot split: show nothing of it but its kind
        return "a postgresql:// URL"
    # The query is left out whole: libpq takes a password there too (?password=...).
    return urlunsplit(parts._replace(netloc=f"{user}{netloc}", query="", fragment=""))


def open_server_database(
    target: StrPath,
    *,
    create: bool = True,
    read_only: bool = False,
    accounts_only: bool = False,
    key: bytes | None = None,
) -> StoreOpener[ServerStore]:
    """Open a server's store: PostgreSQL for a ``postgresql://`` URL, else an SQLite file.

    ``create``, ``read_only`` and ``accounts_only`` mean what they mean to
    :meth:`SQLiteStore.open <caresync.storage.sqlite.core.SQLiteCore.open>`. ``key``
    encrypts an SQLite file at rest; a PostgreSQL database refuses one
    (InvalidInputError): its encryption at rest is the database server's. Without
    psycopg installed, a URL raises MissingExtraError naming the extra.

    Opened for writing (not ``read_only`` nor ``accounts_only``), the store begins a
    new feed epoch before it returns (:meth:`ServerStore.begin_feed_epoch`): whatever
    it writes into the change feed is labelled apart from what any earlier opening
    wrote, so a database restored from a backup is told apart by the laptops that
    read further (:mod:`caresync.replication.epochs`).
    """
    if is_database_url(target):
        url = str(target)
        if key is not None:
            raise InvalidInputError(
                "a database key encrypts an SQLite file; a PostgreSQL database is encrypted "
                "at rest by its server (disk encryption), so give no key with a postgresql:// URL"
            )
        try:
            from caresync.storage.postgres import PostgresStore  # only for a URL: an optional extra
        except ImportError as exc:
            raise MissingExtraError(
                f"a PostgreSQL database needs psycopg ({exc}); install it with "
                'pip install "caresync[postgres]"'
            ) from None

        async def postgres() -> ServerStore:
            store = await PostgresStore.open(
                url, create=create, read_only=read_only, accounts_only=accounts_only
            )
            return await _begun(store, read_only or accounts_only)

        return StoreOpener(postgres)

    async def sqlite() -> ServerStore:
        store = await SQLiteStore.open(
            Path(os.fspath(target)),
            create=create,
            read_only=read_only,
            accounts_only=accounts_only,
            key=key,
        )
        return await _begun(store, read_only or accounts_only)

    return StoreOpener(sqlite)


async def _begun(store: ServerStore, reading: bool) -> ServerStore:
    """``store``, with a new feed epoch begun unless it was opened only to read."""
    if reading:
        return store
    try:
        await store.begin_feed_epoch(new_feed_epoch())
    except BaseException:
        await store.close()
        raise
    return store
