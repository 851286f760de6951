"""Opening databases for commands, by the rules of the command line.

* Only ``serve``, ``user add`` and ``enrol`` create a database; every other
  command given a missing path fails with DatabaseNotFoundError and creates
  nothing.
* Commands that only read (``status``, ``record show``, ``conflicts list``,
  ``replicas``) open the store read-only, so they work on a database whose
  writer is running (a live server) and can never write to it.
* Commands that change accounts (``user add`` on an existing database,
  ``user passwd``, ``replica revoke``) open it for accounts only, so they
  work while the server runs and can change nothing else.
* Each command says which kind of database it needs: a laptop's, a server's,
  or either; the other kind is refused before anything is read or written.
* A server's database may be a PostgreSQL database, named by its URL
  (``postgresql://HOST:PORT/DATABASE``): the server-side commands open it through
  :func:`caresync.storage.servers.open_server_database`. Any number of processes
  may write one, so "read-only" is PostgreSQL's and "accounts only" only means
  that the command never creates or migrates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caresync.audit import AuditAction, AuditEvent, attempted_name
from caresync.cli.errors import CliError
from caresync.cli.password import read_password
from caresync.conflicts import (
    DEFAULT_RULEBOOK,
    Conflict,
    RecordView,
    Rulebook,
    SubstanceTable,
)
from caresync.exceptions import InvalidInputError, StorageError
from caresync.listing import ConflictListing
from caresync.replica import Replica
from caresync.replication.pool import RecordPool
from caresync.storage import ConflictRow, Identity, ServerStore, SQLiteStore, server_database_key
from caresync.storage.laptop_key import LaptopKey, is_encrypted, unlock_laptop_key
from caresync.storage.schema import SQLITE_MAGIC
from caresync.storage.servers import is_database_url, open_server_database, shown_database

__all__ = [
    "LaptopReader",
    "rulebook",
    "use_substances",
    "Reader",
    "ServerReader",
    "open_laptop",
    "open_reader",
    "is_plain_sqlite",
    "laptop_key",
    "laptop_path",
    "open_server_store",
    "server_key_for",
    "store_key",
    "remove_if_new",
    "files_before",
]

# Files SQLite and the store keep beside a database.
_SIDE_FILES = ("-wal", "-shm", "-journal", "-writer.lock", ".keys")


def files_before(db: Path) -> dict[str, bool]:
    """Which of the database's files exist now (see :func:`remove_if_new`)."""
    return {suffix: Path(f"{db}{suffix}").exists() for suffix in ("", *_SIDE_FILES)}


def remove_if_new(db: Path, before: Mapping[str, bool]) -> None:
    """After a command that creates a database failed, remove the one it created.

    Only a database that did not exist before the command (``before``, from
    :func:`files_before`), and that the command never got to use, is removed:
    it holds nothing anyone wrote.
    """
    if before[""]:
        return
    for suffix, existed in before.items():
        if not existed:
            with contextlib.suppress(FileNotFoundError):
                Path(f"{db}{suffix}").unlink()


_rulebook: Rulebook = DEFAULT_RULEBOOK


def use_substances(path: str | None) -> None:
    """Compute conflicts with the substance table in ``path`` (None: the bundled one).

    Read once, before the command opens any database; a file that is not a table
    is a CliError naming what is wrong.
    """
    global _rulebook
    if path is None:
        _rulebook = DEFAULT_RULEBOOK
        return
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read the substance table {path}: {exc.strerror}") from None
    try:
        _rulebook = Rulebook(substances=SubstanceTable.from_json(text))
    except InvalidInputError as exc:
        raise CliError(f"{path}: {exc}") from None


def rulebook() -> Rulebook:
    """The rulebook every command of this run computes conflicts with."""
    return _rulebook


def laptop_path(db: str | Path) -> Path:
    """A laptop database's path; StorageError for a PostgreSQL URL (a server's, only)."""
    if is_database_url(db):
        raise StorageError(
            f"{shown_database(db)} is a PostgreSQL database, which only a server keeps; "
            "this command needs a laptop's SQLite file"
        )
    return Path(db)


async def open_laptop(
    path: str | Path,
    *,
    create: bool = False,
    username: str | None = None,
    password: str | None = None,
    encrypt: bool = True,
) -> Replica:
    """A laptop's replica for writing (created only with ``create``).

    An encrypted laptop database opens with the password of a user who logged in
    on it (``password``, else from CARESYNC_PASSWORD or a prompt); a new one is
    made encrypted for ``username`` when ``password`` is given (unless
    ``encrypt=False``).
    """
    path = laptop_path(path)
    if password is None:
        password = await database_password(path)
    return await Replica.open(
        path,
        create=create,
        rulebook=_rulebook,
        username=username,
        password=password,
        encrypt=encrypt,
    )


async def server_key_for(path: str | Path) -> bytes | None:
    """The key a server's database opens (or is created) with: from
    CARESYNC_DATABASE_KEY when it is set and the file is not a plain SQLite one
    (a plain file, such as a laptop's, opens without it)."""
    key = server_database_key()
    if key is None or await asyncio.to_thread(is_plain_sqlite, Path(path)):
        return None
    return key


def is_plain_sqlite(path: Path) -> bool:
    """True when ``path`` starts as a plain SQLite file does (an encrypted one does not)."""
    try:
        with path.open("rb") as file:
            return file.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except FileNotFoundError:
        return False  # a new database: made with the key, if one is set
    except OSError:
        return True  # unreadable: let the store say why


async def database_password(path: str | Path) -> str | None:
    """The password that opens ``path`` if it is an encrypted laptop's (asked, or from
    the environment), None otherwise."""
    if not await asyncio.to_thread(is_encrypted, path):
        return None
    return read_password(f"Password to open {path} (a user who logged in there): ")


async def laptop_key(path: str | Path) -> LaptopKey | None:
    """An encrypted laptop database's key, unlocked by a user's password; None otherwise."""
    password = await database_password(path)
    if password is None:
        return None
    return await asyncio.to_thread(unlock_laptop_key, path, password)


async def store_key(path: str | Path) -> bytes | None:
    """The key ``path`` opens with: an encrypted laptop's (a password unlocks it), an
    encrypted server's (CARESYNC_DATABASE_KEY), or None for a plain database."""
    key = await laptop_key(path)
    return key.key if key is not None else await server_key_for(path)


async def open_server_store(
    path: str | Path, *, read_only: bool = False, accounts_only: bool = False
) -> ServerStore:
    """An existing server database's store (StorageError for a laptop's).

    ``path`` is an SQLite file or a PostgreSQL URL. ``read_only`` and
    ``accounts_only`` open it beside a running server (see
    :meth:`caresync.storage.SQLiteStore.open`).
    """
    store = await open_server_database(
        path,
        create=False,
        read_only=read_only,
        accounts_only=accounts_only,
        key=None if is_database_url(path) else await server_key_for(path),
    )
    try:
        identity = await _identity(store, path)
        if identity.role != "server":
            raise StorageError(
                f"{shown_database(path)} is a laptop's database; this command needs a server's"
            )
    except BaseException:
        await store.close()
        raise
    return store


@dataclass
class LaptopReader:
    """Read access to a laptop's database, through a read-only :class:`Replica`."""

    replica: Replica
    role: str = "laptop"

    async def view(self, record_id: str, *, audited: bool = True) -> RecordView:
        return await self.replica.record(record_id, audited=audited)

    async def audit(self, action: AuditAction, record_id: str | None, detail: str | None) -> None:
        """Record in the laptop's audit trail what this command did (as whoever is logged in)."""
        await self.replica.audit(action, record_id, detail)

    async def conflicts(self, record_id: str | None = None) -> list[Conflict]:
        return await self.replica.conflicts(record_id)

    async def linked_records(self, record_id: str) -> list[str]:
        return await self.replica.linked_records(record_id)

    async def record_ids(self) -> list[str]:
        return await self.replica.record_ids()

    async def conflict_rows(self) -> list[ConflictRow]:
        return await self.replica.store.conflicts()

    async def author_names(self, record_ids: Iterable[str]) -> dict[str, Mapping[str, str]]:
        """Each record's authors' display names: the names the server last sent."""
        names = self.replica.logins.names
        return dict.fromkeys(record_ids, names)

    async def close(self) -> None:
        await self.replica.close()


@dataclass
class ServerReader:
    """Read access to a server's database: its records loaded on demand, nothing cached."""

    store: ServerStore
    identity: Identity
    role: str = "server"
    _pool: RecordPool | None = field(default=None, repr=False)

    @property
    def pool(self) -> RecordPool:
        if self._pool is None:
            self._pool = RecordPool(
                self.store, replica=self.identity.replica_id, rulebook=_rulebook
            )
        return self._pool

    async def view(self, record_id: str, *, audited: bool = True) -> RecordView:
        view = RecordView(await self.pool.get(record_id))
        if audited:
            await self.audit("read", record_id, None)
        return view

    async def conflicts(self, record_id: str | None = None) -> list[Conflict]:
        # Derived afresh, exactly as a laptop derives them (same ids, same candidates).
        listing = ConflictListing(self.store, self.pool)
        if record_id is None:
            listed = await listing.all()
            await self.audit("list", None, "conflicts")
            return listed
        found = await listing.of_record(record_id)
        await self.audit("read", record_id, "conflicts")
        return found

    async def audit(self, action: AuditAction, record_id: str | None, detail: str | None) -> None:
        """Record in the server's own audit trail what this command did, as the
        operating-system account that ran it (the server's commands have no login)."""
        await self.store.append_audit([AuditEvent(operator(), action, record_id, detail)])

    async def linked_records(self, record_id: str) -> list[str]:
        return await ConflictListing(self.store, self.pool).linked(record_id)

    async def count_conflicts(self) -> int:
        return await ConflictListing(self.store, self.pool).count()

    async def record_ids(self) -> list[str]:
        return await self.store.record_ids()

    async def conflict_rows(self) -> list[ConflictRow]:
        return await self.store.conflicts()

    async def author_names(self, record_ids: Iterable[str]) -> dict[str, Mapping[str, str]]:
        """Each record's authors' display names: its organisation's accounts."""
        wanted = sorted(set(record_ids))
        organisations = await self.store.record_organisations(wanted) if wanted else {}
        by_org: dict[str, Mapping[str, str]] = {}
        for org in {o for o in organisations.values() if o is not None}:
            by_org[org] = await self.store.organisation_accounts(org)
        return {rid: by_org.get(organisations.get(rid) or "", {}) for rid in wanted}

    async def close(self) -> None:
        await self.store.close()


Reader = LaptopReader | ServerReader


def operator() -> str:
    """Who runs a command on the server's machine: ``os:`` and the system account."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no such account in the password database, no $USER
        name = "unknown"
    return attempted_name(f"os:{name}")


async def open_reader(path: str | Path) -> Reader:
    """Read access to a laptop's or a server's database (works while its writer runs).

    Nothing but the audit trail is written: each record read through it is an entry.
    A PostgreSQL URL names a server's database.
    """
    if is_database_url(path):
        return ServerReader(
            server := await open_server_store(path, accounts_only=True),
            await _identity(server, path),
        )
    password = await database_password(path)
    key = None
    if password is not None:
        key = await asyncio.to_thread(unlock_laptop_key, path, password)
    store = await SQLiteStore.open(
        path,
        create=False,
        accounts_only=True,
        key=key.key if key is not None else await server_key_for(path),
    )
    try:
        identity = await _identity(store, path)
        if identity.role == "server":
            return ServerReader(store, identity)
        # With the password: the login kept is the reader's only if it opens that
        # user's copy of the key (see LaptopLogins.load).
        replica = await Replica.from_store(
            store, identity, rulebook=_rulebook, database_key=key, password=password
        )
        return LaptopReader(replica)
    except BaseException:
        await store.close()
        raise


async def _identity(store: Any, path: str | Path) -> Identity:
    identity: Identity | None = await store.get_identity()
    if identity is None:
        raise StorageError(
            f"{shown_database(path)} is a caresync database that holds no replica yet "
            "(create one with `caresync enrol` or `caresync serve`)"
        )
    return identity
