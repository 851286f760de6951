"""``caresync reencrypt``: a laptop database in SQLCipher's format (as caresync wrote them
before AEGIS-256) rewritten in AEGIS-256 with the same key, its data intact.

Real parts: the laptop database is a file SQLCipher 4.12 wrote (tests/storage/data), with
a key file wrapping its key for a user, as `enrol` makes one.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from tests.cli.clitools import PASSWORD, digest, inproc
from tests.cli.test_cli_commands import refused

from caresync import Record
from caresync.cli.errors import ExitCode
from caresync.storage import SQLiteStore
from caresync.storage import _cipher as cipher_module
from caresync.storage.laptop_key import create_laptop_key

LEGACY = Path(__file__).parents[1] / "storage" / "data" / "sqlcipher-v4-laptop.db"
"""Written by caresync through SQLCipher 4.12 (HMAC-SHA256, 4 KiB pages), raw key LEGACY_KEY,
with one patient named NAME (tests/storage/test_encryption.py)."""
LEGACY_KEY = bytes(range(32))
LEGACY_RECORD = "0beca4f2-699c-4a45-8e79-14c24b5139ea"
NAME = "Zanele Okonkwo-Testname"

pytestmark = pytest.mark.skipif(
    cipher_module.NEW_DATABASE_CIPHER != cipher_module.AEGIS,
    reason="SQLite3 Multiple Ciphers (apsw-sqlite3mc) is not installed here",
)


def cipher_of(path: Path) -> str:
    conn = cipher_module.connect(path, key=LEGACY_KEY)
    try:
        return cipher_module.cipher_of(conn)
    finally:
        conn.close()


def name_stored(laptop: Path) -> object:
    """The patient's name, read back through the store with the key."""

    async def read() -> object:
        async with SQLiteStore.open(laptop, key=LEGACY_KEY, create=False) as store:
            data = await store.load(LEGACY_RECORD)
            assert data is not None
            assert await store.check() == []
            return Record.from_update(LEGACY_RECORD, data, replica="reader").value("name")

    return asyncio.run(read())


def every_row(laptop: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, in order, and the header's marks."""
    conn = cipher_module.connect(laptop, key=LEGACY_KEY)
    try:
        tables = [
            str(row[0])
            for row in conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name"
            ).fetchall()
        ]
        found = {
            table: sorted(conn.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
            for table in tables
        }
        for mark in ("user_version", "application_id"):
            found[mark] = conn.execute(f"PRAGMA {mark}").fetchall()
        return found
    finally:
        conn.close()


@pytest.fixture
def laptop(tmp_path: Path) -> Path:
    """The SQLCipher-format laptop, its key wrapped for dr.a's password."""
    path = tmp_path / "laptop.db"
    shutil.copyfile(LEGACY, path)
    create_laptop_key(path, "dr.a", PASSWORD, key=LEGACY_KEY)
    return path


def test_reencrypt_rewrites_a_sqlcipher_laptop_in_aegis_with_its_data(laptop: Path) -> None:
    assert cipher_of(laptop) == cipher_module.SQLCIPHER
    rows = every_row(laptop)
    assert len(rows) > 10
    before = digest(laptop)

    done = inproc("reencrypt --db {db} --json", db=laptop).ok().json()
    assert done == {"database": str(laptop), "cipher": "aegis", "rewritten": True}
    assert digest(laptop) != before
    assert cipher_of(laptop) == cipher_module.AEGIS
    assert every_row(laptop) == rows
    assert name_stored(laptop) == NAME
    assert sorted(p.name for p in laptop.parent.iterdir() if "encrypting" in p.name) == []
    assert NAME.encode() not in laptop.read_bytes()

    again = inproc("reencrypt --db {db} --json", db=laptop).ok().json()
    assert again["rewritten"] is False
    text = inproc("reencrypt --db {db}", db=laptop).ok().stdout
    assert "already" in text


def test_a_wrong_password_leaves_the_file_untouched(laptop: Path) -> None:
    before = digest(laptop)
    wrong = inproc("reencrypt --db {db}", db=laptop, password="not the password")
    refused(wrong, ExitCode.REFUSED, "this password does not open the database")
    assert digest(laptop) == before
    assert cipher_of(laptop) == cipher_module.SQLCIPHER
    assert json.loads(Path(f"{laptop}.keys").read_text())["attempts"]["failures"] == 1
    assert name_stored(laptop) == NAME


def test_a_plain_or_missing_database_is_refused(laptop: Path, tmp_path: Path) -> None:
    refused(
        inproc("reencrypt --db {db}", db=tmp_path / "none.db"),
        ExitCode.NOT_FOUND,
        "there is no database",
    )
    plain = tmp_path / "plain.db"
    inproc("user add --db {db} --org clinic-a --username dr.b", db=plain).ok()
    before = digest(plain)
    refused(inproc("reencrypt --db {db}", db=plain), ExitCode.DATABASE, "is not encrypted")
    assert digest(plain) == before


def test_a_servers_database_is_rewritten_with_its_key_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = tmp_path / "clinic.db"
    key = bytes(range(1, 33))
    monkeypatch.setenv("CARESYNC_DATABASE_KEY", key.hex())
    with monkeypatch.context() as older:  # made as caresync made them before AEGIS
        older.setattr(cipher_module, "NEW_DATABASE_CIPHER", cipher_module.SQLCIPHER)
        inproc("user add --db {db} --org clinic-a --username dr.b", db=server).ok()
    conn = cipher_module.connect(server, key=key)
    try:
        assert cipher_module.cipher_of(conn) == cipher_module.SQLCIPHER
    finally:
        conn.close()

    monkeypatch.setenv("CARESYNC_DATABASE_KEY", bytes(32).hex())
    before = digest(server)
    refused(inproc("reencrypt --db {db}", db=server), ExitCode.DATABASE, "does not open")
    assert digest(server) == before

    monkeypatch.setenv("CARESYNC_DATABASE_KEY", key.hex())
    done = inproc("reencrypt --db {db} --json", db=server).ok().json()
    assert done["rewritten"] is True
    conn = cipher_module.connect(server, key=key)
    try:
        assert cipher_module.cipher_of(conn) == cipher_module.AEGIS
        assert conn.execute("SELECT username FROM users").fetchall() == [("dr.b",)]
    finally:
        conn.close()
