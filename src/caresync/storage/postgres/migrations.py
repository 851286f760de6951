"""Recognising a caresync PostgreSQL schema, creating one, and migrating it forward.

Theory of operation
-------------------
Opening takes the migration lock (a transaction-scoped advisory lock), so two
server processes starting together do not both create or migrate; then it
reads the ``caresync_schema`` row. No such table in a schema that holds other
tables: another application's, refused (NotACaresyncDatabaseError) before
anything is written. A version newer than this code's: DatabaseTooNewError.
An older one is brought forward by the missing steps of
:data:`~caresync.storage.postgres.schema.SCHEMA_STEPS`, in the same
transaction as the version row's update (PostgreSQL's DDL is transactional): a
crash mid-migration leaves the old version, whole.
"""

from __future__ import annotations

from caresync.exceptions import (
    DatabaseNotFoundError,
    DatabaseTooNewError,
    NotACaresyncDatabaseError,
    StorageError,
)
from caresync.storage.postgres._sql import Conn
from caresync.storage.postgres.schema import (
    FORMAT_VALUE,
    MIGRATION_LOCK,
    SCHEMA_STEPS,
    SCHEMA_VERSION,
)

__all__ = ["check_current", "prepare", "read_version"]


def read_version(raw: Conn, where: str) -> int | None:
    """The schema version, or None when the schema holds no caresync tables at all.

    NotACaresyncDatabaseError for a schema of another application;
    DatabaseTooNewError for a version newer than this code's.
    """
    row = raw.execute("SELECT to_regclass('caresync_schema') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        others = raw.execute(
            "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema()"
        ).fetchone()
        if others is not None and others[0]:
            raise NotACaresyncDatabaseError(
                f"{where} holds tables of another application; give caresync a database "
                "(or a schema, with options=-csearch_path=...) of its own. Nothing was written"
            )
        return None
    mark = raw.execute("SELECT format, version FROM caresync_schema").fetchone()
    if mark is None or mark[0] != FORMAT_VALUE:
        raise NotACaresyncDatabaseError(f"{where} is not a caresync server's database")
    version = int(mark[1])
    if version > SCHEMA_VERSION:
        raise DatabaseTooNewError(
            f"{where} has schema version {version}; this caresync knows up to "
            f"{SCHEMA_VERSION}. Upgrade caresync"
        )
    return version


def prepare(raw: Conn, where: str, *, create: bool) -> int | None:
    """Recognise the schema, create it (with ``create``) or migrate it, in one transaction.

    Returns the version it had when a migration ran, else None.
    """
    with raw.transaction():
        raw.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        version = read_version(raw, where)
        if version is None:
            if not create:
                raise DatabaseNotFoundError(
                    f"{where} holds no caresync server yet (create it with `caresync serve`)"
                )
            if raw.execute("SELECT current_schema()").fetchone() in (None, (None,)):
                raise StorageError(
                    f"{where}: no schema to create the tables in; check the search_path"
                )
            version = 0
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in SCHEMA_STEPS[step]:
                raw.execute(statement)
        if version == 0:
            raw.execute(
                "INSERT INTO caresync_schema (singleton, format, version) VALUES (1, %s, %s)",
                (FORMAT_VALUE, SCHEMA_VERSION),
            )
            return None
        if version != SCHEMA_VERSION:
            raw.execute("UPDATE caresync_schema SET version = %s", (SCHEMA_VERSION,))
            return version
        return None


def check_current(raw: Conn, where: str) -> None:
    """For a store that never writes: the schema must exist at this code's version."""
    version = read_version(raw, where)
    if version is None:
        raise DatabaseNotFoundError(
            f"{where} holds no caresync server yet (create it with `caresync serve`)"
        )
    if version != SCHEMA_VERSION:
        raise StorageError(
            f"{where} has schema version {version}; this caresync reads version "
            f"{SCHEMA_VERSION}. Open it once for writing (it migrates forward), then read it"
        )
