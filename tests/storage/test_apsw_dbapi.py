"""The store's DB-API adapter over APSW (caresync.storage._apsw_dbapi): the part of
sqlite3's surface the store and aiosqlite use, with sqlite3's own exceptions."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import aiosqlite
import pytest

dbapi = pytest.importorskip("caresync.storage._apsw_dbapi", reason="apsw-sqlite3mc not installed")


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[dbapi.Connection]:
    connection = dbapi.connect(tmp_path / "t.db")
    connection.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, x TEXT UNIQUE, b BLOB)")
    yield connection
    connection.close()


def test_its_sqlite_is_sqlite3_multiple_ciphers() -> None:
    major, minor, *_ = (int(part) for part in dbapi.sqlite3mc_version().split("."))
    assert (major, minor) >= (2, 0)


def test_rows_are_tuples_of_python_values(conn: dbapi.Connection) -> None:
    conn.executemany("INSERT INTO t (x, b) VALUES (?, ?)", [("a", b"\x00\x01"), ("b", None)])
    assert conn.execute("SELECT n, x, b FROM t ORDER BY n").fetchall() == [
        (1, "a", b"\x00\x01"),
        (2, "b", None),
    ]
    assert list(conn.execute("SELECT x FROM t WHERE n = :n", {"n": 2})) == [("b",)]
    assert conn.execute("SELECT x FROM t WHERE n = 99").fetchone() is None
    cursor = conn.execute("SELECT x FROM t ORDER BY n")
    assert cursor.fetchmany(1) == [("a",)]
    assert cursor.fetchmany(5) == [("b",)]


def test_rowcount_and_lastrowid_are_those_of_the_statement(conn: dbapi.Connection) -> None:
    inserted = conn.execute("INSERT INTO t (x) VALUES ('a')")
    assert (inserted.rowcount, inserted.lastrowid) == (1, 1)
    many = conn.executemany("INSERT INTO t (x) VALUES (?)", [("b",), ("c",), ("d",)])
    assert (many.rowcount, many.lastrowid) == (3, 4)
    assert conn.execute("UPDATE t SET b = x'00' WHERE n > 1").rowcount == 3
    assert conn.execute("UPDATE t SET b = NULL WHERE n > 99").rowcount == 0
    assert conn.execute("DELETE FROM t").rowcount == 4
    assert conn.total_changes == 11


def test_errors_are_sqlite3_exceptions_of_the_same_kind(
    conn: dbapi.Connection, tmp_path: Path
) -> None:
    conn.execute("INSERT INTO t (x) VALUES ('a')")
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed"):
        conn.execute("INSERT INTO t (x) VALUES ('a')")
    with pytest.raises(sqlite3.IntegrityError):
        conn.executemany("INSERT INTO t (x) VALUES (?)", [("z",), ("a",)])
    with pytest.raises(sqlite3.OperationalError, match="syntax error"):
        conn.execute("SELEC 1")
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT ?", ())
    not_a_database = tmp_path / "text.db"
    not_a_database.write_bytes(b"hello, this is not SQLite" * 200)
    other = dbapi.connect(not_a_database)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="not a database"):
            other.execute("SELECT * FROM sqlite_schema")
    finally:
        other.close()
    with pytest.raises(sqlite3.OperationalError, match="unable to open"):
        dbapi.connect(tmp_path / "missing" / "t.db")


def test_an_error_while_iterating_is_a_sqlite3_exception(conn: dbapi.Connection) -> None:
    conn.executemany("INSERT INTO t (x) VALUES (?)", [(str(n),) for n in range(3)])
    rows = iter(
        conn.execute(
            "SELECT CASE WHEN n < 3 THEN n ELSE abs(-9223372036854775807 - 1 - (n - 3)) END FROM t"
        )
    )
    assert next(rows) == (1,)
    assert next(rows) == (2,)
    with pytest.raises(sqlite3.OperationalError, match="integer overflow"):
        next(rows)


def test_a_busy_database_is_an_operational_error_after_the_timeout(tmp_path: Path) -> None:
    first = dbapi.connect(tmp_path / "t.db")
    second = dbapi.connect(tmp_path / "t.db", timeout=0.0)
    try:
        first.execute("CREATE TABLE t (n)")
        first.execute("BEGIN IMMEDIATE")
        assert first.in_transaction
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            second.execute("BEGIN IMMEDIATE")
        assert not second.in_transaction
        first.rollback()
        assert not first.in_transaction
    finally:
        second.close()
        first.close()


def test_commit_and_rollback_end_the_callers_transaction(conn: dbapi.Connection) -> None:
    conn.commit()  # autocommit: nothing open, nothing to do
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t (x) VALUES ('gone')")
    conn.rollback()
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t (x) VALUES ('kept')")
    conn.commit()
    assert conn.execute("SELECT x FROM t").fetchall() == [("kept",)]

    def failing_transaction() -> None:
        with conn:  # as sqlite3's: rolled back on an error
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t (x) VALUES ('again')")
            conn.execute("INSERT INTO t (x) VALUES ('kept')")

    with pytest.raises(sqlite3.IntegrityError):
        failing_transaction()
    assert not conn.in_transaction
    assert conn.execute("SELECT x FROM t").fetchall() == [("kept",)]


def test_what_it_does_not_do_is_refused_clearly(conn: dbapi.Connection) -> None:
    with pytest.raises(sqlite3.NotSupportedError, match="autocommit"):
        conn.isolation_level = "DEFERRED"
    with pytest.raises(sqlite3.NotSupportedError, match="autocommit"):
        dbapi.connect(":memory:", isolation_level="DEFERRED")  # type: ignore[arg-type]
    with pytest.raises(sqlite3.NotSupportedError, match="tuples"):
        conn.row_factory = sqlite3.Row
    assert conn.isolation_level is None
    assert conn.row_factory is None
    running = conn.execute("SELECT n, x FROM t UNION ALL SELECT 1, 'a'")
    assert [column[0] for column in running.description or ()] == ["n", "x"]
    running.fetchall()
    with pytest.raises(sqlite3.NotSupportedError, match="pragma_table_info"):
        _ = running.description


def test_backup_copies_the_whole_database(conn: dbapi.Connection, tmp_path: Path) -> None:
    conn.executemany("INSERT INTO t (x) VALUES (?)", [(str(n),) for n in range(500)])
    copy = dbapi.connect(tmp_path / "copy.db")
    try:
        conn.backup(copy)
        assert copy.execute("SELECT count(*), max(x) FROM t").fetchone() == (500, "99")
    finally:
        copy.close()
    with pytest.raises(TypeError):
        conn.backup(sqlite3.connect(":memory:"))  # type: ignore[arg-type]


def test_a_uri_opens_read_only(conn: dbapi.Connection, tmp_path: Path) -> None:
    conn.execute("INSERT INTO t (x) VALUES ('a')")
    reader = dbapi.connect((tmp_path / "t.db").as_uri() + "?mode=ro", uri=True)
    try:
        assert reader.execute("SELECT x FROM t").fetchall() == [("a",)]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.execute("INSERT INTO t (x) VALUES ('b')")
    finally:
        reader.close()


async def test_aiosqlite_runs_on_it(tmp_path: Path) -> None:
    async with aiosqlite.Connection(
        lambda: dbapi.connect(tmp_path / "t.db"),  # type: ignore[arg-type,return-value]
        iter_chunk_size=64,
    ) as db:
        await db.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, x TEXT)")
        await db.executemany("INSERT INTO t (x) VALUES (?)", [("a",), ("b",)])
        await db.commit()
        async with db.execute("SELECT x FROM t ORDER BY n") as cursor:
            assert [row async for row in cursor] == [("a",), ("b",)]
        assert not db.in_transaction


def test_a_file_name_that_is_not_utf8_opens_as_sqlite3_would(tmp_path: Path) -> None:
    # sqlite3 opens the file system's bytes; APSW takes UTF-8 text: the name must still
    # be that very name (a lone surrogate here is the byte 0xff on disk).
    path = tmp_path / "copy-\udcff.db"
    first = dbapi.connect(path)
    first.execute("CREATE TABLE t (x TEXT)")
    first.execute("INSERT INTO t VALUES ('kept')")
    first.close()
    assert b"copy-\xff.db" in os.listdir(os.fsencode(tmp_path))
    again = dbapi.connect(path)
    try:
        assert again.execute("SELECT x FROM t").fetchall() == [("kept",)]
    finally:
        again.close()
