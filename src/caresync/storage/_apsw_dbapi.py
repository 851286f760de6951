"""The part of the ``sqlite3`` DB-API the store uses, over APSW and its own SQLite.

Why
---
Encrypted databases are read and written by SQLite3 Multiple Ciphers. The
maintained Python binding of it with wheels for every CPython we support is
``apsw-sqlite3mc`` (APSW, "Another Python SQLite Wrapper", built with SQLite3
Multiple Ciphers; :mod:`caresync.storage._cipher` says why not the others).
APSW is not a DB-API module: the store's statements (and aiosqlite) expect
``sqlite3.Connection``'s surface. This module gives them that surface, for
exactly what they use, and nothing else:

* :func:`connect` returns a :class:`Connection`: ``execute``, ``executemany``,
  ``executescript``, ``cursor``, ``commit``, ``rollback``, ``close``,
  ``backup``, ``interrupt``, ``in_transaction``, ``total_changes``, and
  ``isolation_level``, ``row_factory`` and ``text_factory`` at the values the
  store uses (``None``, ``None``, ``str``; any other value raises
  ``sqlite3.NotSupportedError``).
* :class:`Cursor`: ``execute``, ``executemany``, ``fetchone``, ``fetchmany``,
  ``fetchall``, iteration, ``rowcount``, ``lastrowid``, ``description``,
  ``arraysize`` and ``close``.
* Every error is raised as the standard library's ``sqlite3`` exception of the
  same kind (a constraint as ``sqlite3.IntegrityError``, a damaged or foreign
  file as ``sqlite3.DatabaseError``, a busy database as
  ``sqlite3.OperationalError``...) with SQLite's message, so the store's
  translation of errors needs no second set of classes.

Differences from ``sqlite3`` that the store does not meet
---------------------------------------------------------
* Only autocommit mode (``isolation_level=None``): the store runs its own
  ``BEGIN``. ``commit`` and ``rollback`` end a transaction the caller began.
* ``rowcount`` is the number of rows the statement (or every run of an
  ``executemany``) changed, counted by ``total_changes``: 0, not -1, for a
  ``SELECT``, and rows a trigger changed are counted too. A statement that
  returns rows (``RETURNING``) is counted as far as it ran when ``execute``
  returned: up to its first row.
* ``description`` is there while a ``SELECT`` has rows left to give; once the
  statement has run to its end it raises ``sqlite3.NotSupportedError`` (APSW
  keeps no column names of a finished statement). Ask ``pragma_table_info``
  for a table's columns.
* ``execute`` runs every statement of its string, where ``sqlite3`` refuses
  more than one.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeAlias

import apsw

__all__ = ["Connection", "Cursor", "connect", "sqlite3mc_version", "translate"]

Parameters: TypeAlias = Sequence[Any] | Mapping[str, Any]
Row: TypeAlias = tuple[Any, ...]

# APSW's exception classes by the sqlite3 class the standard module raises for the
# same SQLite result code (CPython's Modules/_sqlite/util.c); the rest are
# OperationalError, as there.
_SQLITE3_CLASS: Final[dict[type[BaseException], type[sqlite3.Error]]] = {
    apsw.ConstraintError: sqlite3.IntegrityError,
    apsw.MismatchError: sqlite3.IntegrityError,
    apsw.NotADBError: sqlite3.DatabaseError,
    apsw.CorruptError: sqlite3.DatabaseError,
    apsw.InternalError: sqlite3.InternalError,
    apsw.TooBigError: sqlite3.DataError,
    apsw.MisuseError: sqlite3.ProgrammingError,
    apsw.RangeError: sqlite3.InterfaceError,
    apsw.BindingsError: sqlite3.ProgrammingError,
    apsw.ConnectionClosedError: sqlite3.ProgrammingError,
    apsw.CursorClosedError: sqlite3.ProgrammingError,
    apsw.ExecutionCompleteError: sqlite3.ProgrammingError,
    apsw.ThreadingViolationError: sqlite3.ProgrammingError,
}


def translate(exc: apsw.Error) -> sqlite3.Error:
    """The ``sqlite3`` exception for an APSW one: same kind, same message.

    The SQLite result code, when APSW gives one, is kept in ``sqlite_errorcode``
    as ``sqlite3`` does.
    """
    kind = _SQLITE3_CLASS.get(type(exc), sqlite3.OperationalError)
    error = kind(str(exc))
    code = getattr(exc, "extendedresult", None)
    if isinstance(code, int):
        error.sqlite_errorcode = code
    return error


def sqlite3mc_version() -> str:
    """The version of SQLite3 Multiple Ciphers inside APSW, e.g. ``2.6.1``.

    ``sqlite3.OperationalError`` if this APSW's SQLite has no ciphers (a plain
    ``apsw`` installed in its place).
    """
    probe = connect(":memory:")
    try:
        row = probe.execute("SELECT sqlite3mc_version()").fetchone()
    finally:
        probe.close()
    return str(row[0]).removeprefix("SQLite3 Multiple Ciphers ").strip() if row else ""


class Cursor:
    """One statement at a time on a :class:`Connection`, as ``sqlite3.Cursor``."""

    __slots__ = ("_apsw", "_cursor", "arraysize", "connection", "lastrowid", "rowcount")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._apsw = connection._apsw
        self._cursor: apsw.Cursor | None = None
        self.rowcount = -1
        """Rows changed by the last ``execute`` or ``executemany`` (see the module)."""
        self.lastrowid: int | None = None
        """The rowid of the last row inserted on the connection, after a statement."""
        self.arraysize = 1
        """How many rows ``fetchmany()`` returns when no size is given."""

    def execute(self, sql: str, parameters: Parameters = ()) -> Self:
        """Run ``sql`` with ``parameters``; its rows are this cursor's to fetch."""
        conn = self._apsw
        before = conn.total_changes()
        try:
            self._cursor = conn.execute(sql, parameters)
        except apsw.Error as exc:
            raise translate(exc) from exc
        self.rowcount = conn.total_changes() - before
        self.lastrowid = conn.last_insert_rowid()
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterable[Parameters]) -> Self:
        """Run ``sql`` once for each set of parameters."""
        conn = self._apsw
        before = conn.total_changes()
        try:
            self._cursor = conn.executemany(sql, seq_of_parameters)
        except apsw.Error as exc:
            raise translate(exc) from exc
        self.rowcount = conn.total_changes() - before
        self.lastrowid = conn.last_insert_rowid()
        return self

    def fetchone(self) -> Any:
        """The next row, or None when there is none."""
        if self._cursor is None:
            return None
        try:
            return self._cursor.fetchone()
        except apsw.Error as exc:
            raise translate(exc) from exc

    def fetchall(self) -> list[Any]:
        """Every row left."""
        if self._cursor is None:
            return []
        try:
            return self._cursor.fetchall()
        except apsw.Error as exc:
            raise translate(exc) from exc

    def fetchmany(self, size: int | None = None) -> list[Any]:
        """Up to ``size`` (default :attr:`arraysize`) more rows."""
        wanted = self.arraysize if size is None else size
        rows: list[Any] = []
        while len(rows) < wanted:
            row = self.fetchone()
            if row is None:
                break
            rows.append(row)
        return rows

    def __iter__(self) -> Iterator[Any]:
        if self._cursor is None:
            return iter(())
        return self._rows(self._cursor)

    @staticmethod
    def _rows(cursor: apsw.Cursor) -> Iterator[Any]:
        try:
            yield from cursor
        except apsw.Error as exc:
            raise translate(exc) from exc

    @property
    def description(self) -> tuple[tuple[str, None, None, None, None, None, None], ...] | None:
        """The columns of the rows being fetched (see the module for its limit)."""
        if self._cursor is None:
            return None
        try:
            columns = self._cursor.description
        except apsw.ExecutionCompleteError as exc:
            raise sqlite3.NotSupportedError(
                "the column description of a statement that has run to its end is not kept "
                "by APSW; ask pragma_table_info for a table's columns"
            ) from exc
        return tuple((str(c[0]), None, None, None, None, None, None) for c in columns)

    def close(self) -> None:
        """Finish the statement (its rows are dropped)."""
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            try:
                cursor.close(force=True)
            except apsw.Error as exc:
                raise translate(exc) from exc


class Connection:
    """An APSW connection with the part of ``sqlite3.Connection``'s surface the store uses."""

    def __init__(self, connection: apsw.Connection) -> None:
        self._apsw = connection

    # -- statements

    def cursor(self) -> Cursor:
        """A new cursor on this connection."""
        return Cursor(self)

    def execute(self, sql: str, parameters: Parameters = ()) -> Cursor:
        """``cursor().execute(sql, parameters)``."""
        return Cursor(self).execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Parameters]) -> Cursor:
        """``cursor().executemany(sql, seq_of_parameters)``."""
        return Cursor(self).executemany(sql, seq_of_parameters)

    def executescript(self, sql_script: str) -> Cursor:
        """Run every statement of ``sql_script``, to its end."""
        cursor = Cursor(self).execute(sql_script)
        cursor.fetchall()
        return cursor

    # -- transactions

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open (autocommit is off)."""
        return bool(self._apsw.in_transaction)

    def commit(self) -> None:
        """Commit the open transaction, if any (autocommit mode: there may be none)."""
        if self._apsw.in_transaction:
            self.execute("COMMIT")

    def rollback(self) -> None:
        """Roll the open transaction back, if any."""
        if self._apsw.in_transaction:
            self.execute("ROLLBACK")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.rollback()

    # -- settings the store keeps at sqlite3's values

    @property
    def isolation_level(self) -> None:
        """Always None: autocommit, the store's own ``BEGIN``."""
        return None

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        if value is not None:
            raise sqlite3.NotSupportedError(
                "an encrypted connection runs in autocommit mode only (isolation_level=None)"
            )

    @property
    def row_factory(self) -> None:
        """Always None: rows are tuples."""
        return None

    @row_factory.setter
    def row_factory(self, factory: object) -> None:
        if factory is not None:
            raise sqlite3.NotSupportedError("an encrypted connection gives rows as tuples only")

    @property
    def text_factory(self) -> type[str]:
        """Always ``str``."""
        return str

    @text_factory.setter
    def text_factory(self, factory: object) -> None:
        if factory is not str:
            raise sqlite3.NotSupportedError("an encrypted connection gives text as str only")

    @property
    def total_changes(self) -> int:
        """Rows changed since the connection was opened."""
        return int(self._apsw.total_changes())

    # -- the rest

    def backup(
        self,
        target: Connection,
        *,
        pages: int = -1,
        progress: object = None,
        name: str = "main",
        sleep: float = 0.25,
    ) -> None:
        """Copy this database into ``target`` (another connection of this module), whole.

        As ``sqlite3.Connection.backup`` with its defaults: one step, so the copy is
        one consistent snapshot. ``pages``, ``progress`` and ``sleep`` other than
        their defaults raise ``sqlite3.NotSupportedError``.
        """
        if not isinstance(target, Connection):
            raise TypeError("backup's target must be a connection of caresync's APSW adapter")
        if pages != -1 or progress is not None:
            raise sqlite3.NotSupportedError("backup copies in one step only (pages=-1)")
        try:
            with target._apsw.backup("main", self._apsw, name) as job:
                job.step(-1)
        except apsw.Error as exc:
            raise translate(exc) from exc

    def interrupt(self) -> None:
        """Abort the statement running on this connection (from another thread)."""
        self._apsw.interrupt()

    def close(self) -> None:
        """Close the connection; its open statements are finished first."""
        try:
            self._apsw.close(True)
        except apsw.Error as exc:
            raise translate(exc) from exc


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def connect(
    database: str | Path,
    *,
    uri: bool = False,
    timeout: float = 5.0,
    isolation_level: None = None,
) -> Connection:
    """Open ``database`` (created if missing, unless a URI says ``mode=ro``).

    ``timeout`` is how long a statement waits for another connection's lock,
    in seconds. ``isolation_level`` must be None (autocommit; see the module).
    """
    if isolation_level is not None:
        raise sqlite3.NotSupportedError(
            "an encrypted connection runs in autocommit mode only (isolation_level=None)"
        )
    flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    if uri:
        flags |= apsw.SQLITE_OPEN_URI
    path = os.fspath(database)
    if not uri and not _is_utf8(path):
        # APSW takes the name as UTF-8 text where sqlite3 takes the file system's bytes:
        # a name holding bytes that are not UTF-8 (a lone surrogate in Python) goes as a
        # URI whose %XX escapes SQLite turns back into those very bytes.
        path = "file:" + urllib.parse.quote(os.fsencode(os.path.abspath(path)))
        flags |= apsw.SQLITE_OPEN_URI
    try:
        conn = apsw.Connection(path, flags=flags)
    except apsw.Error as exc:
        raise translate(exc) from exc
    try:
        conn.set_busy_timeout(int(timeout * 1000))
    except BaseException:
        conn.close()
        raise
    return Connection(conn)
