"""A plain laptop database made encrypted in place (``caresync encrypt``), losing nothing,
whatever step an error or a crash stops it at.

Real SQLite files in tmp_path. A crash is a child process that ends itself
(``os._exit``) right after a step; an error is an exception raised there.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

import caresync.storage.encrypt_in_place as conversion
from caresync import (
    AlreadyEncryptedError,
    AuthenticationError,
    DatabaseNotFoundError,
    NotLoggedInError,
    PasswordNeededError,
    StorageError,
)
from caresync.convert import encrypt_laptop
from caresync.replica import Replica
from caresync.server import SyncServer
from caresync.storage import KdfParams, key_file_for
from caresync.storage import _cipher as cipher_module
from caresync.storage.encrypt_in_place import STEPS
from caresync.storage.schema import SQLITE_MAGIC

if not cipher_module.AVAILABLE:
    pytest.skip("no encrypting SQLite is installed here", allow_module_level=True)

CHEAP = KdfParams(time_cost=1, memory_kib=8, parallelism=1)
HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "correct horse"
NAME = "Zanele Okonkwo-Testname"


async def plain_laptop(db: Path, *, log_in: bool = True) -> dict[str, Any]:
    """A plain laptop with records (one unsynced change each), dr.a logged in as after an
    online login; returns what it holds."""
    laptop = await Replica.open(db, password_hasher=HASHER)
    try:
        if log_in:
            await laptop.logins.logged_in_online("dr.a", PASSWORD)
        for n in range(30):
            record_id = await laptop.create_record()
            await laptop.set(record_id, "name", f"{NAME} {n}", author="dr.a")
            await laptop.add_entry(
                record_id, "allergies", {"substance": "penicillin"}, author="dr.a"
            )
        return await holdings(laptop)
    finally:
        await laptop.close()


async def holdings(laptop: Replica) -> dict[str, Any]:
    records = {rid: await laptop.fields(rid) for rid in await laptop.record_ids()}
    status = await laptop.status()
    return {"records": records, "pending": status.pending, "user": laptop.user}


async def opened(db: Path, password: str | None = None) -> dict[str, Any]:
    user = "dr.a" if password else None
    async with await Replica.open(db, create=False, username=user, password=password) as laptop:
        return await holdings(laptop)


def is_plain(db: Path) -> bool:
    return db.read_bytes()[: len(SQLITE_MAGIC)] == SQLITE_MAGIC


def beside(db: Path) -> list[str]:
    return sorted(p.name for p in db.parent.iterdir() if p.name != db.name + "-writer.lock")


def holds_name(directory: Path) -> list[str]:
    return sorted(
        p.name for p in directory.iterdir() if p.is_file() and NAME.encode() in p.read_bytes()
    )


async def test_a_plain_laptop_becomes_encrypted_losing_nothing(tmp_path: Path) -> None:
    db = tmp_path / "laptop.db"
    before = await plain_laptop(db)
    assert holds_name(tmp_path) != []  # the control: in clear before

    assert await encrypt_laptop(db, PASSWORD, kdf=CHEAP) == "dr.a"
    assert not is_plain(db)
    assert beside(db) == ["laptop.db", "laptop.db.keys"]  # no -wal, -shm or copy left
    assert oct(db.stat().st_mode & 0o777) == "0o600"
    assert holds_name(tmp_path) == []
    assert await opened(db, PASSWORD) == before  # every record, field and unsynced change
    with pytest.raises(PasswordNeededError):
        await opened(db)
    with pytest.raises(AlreadyEncryptedError, match="encrypted already"):
        await encrypt_laptop(db, PASSWORD, kdf=CHEAP)


async def test_refusals_change_nothing(tmp_path: Path) -> None:
    with pytest.raises(DatabaseNotFoundError):
        await encrypt_laptop(tmp_path / "missing.db", PASSWORD)
    assert beside(tmp_path / "missing.db") == []  # nothing was created

    nobody = tmp_path / "nobody.db"
    await plain_laptop(nobody, log_in=False)
    with pytest.raises(NotLoggedInError, match="caresync login"):
        await encrypt_laptop(nobody, PASSWORD, kdf=CHEAP)
    assert is_plain(nobody)
    assert not key_file_for(nobody).exists()

    db = tmp_path / "laptop.db"
    before = await plain_laptop(db)
    with pytest.raises(AuthenticationError, match="wrong password"):
        await encrypt_laptop(db, "not the password", kdf=CHEAP)
    assert is_plain(db)
    assert not key_file_for(db).exists()
    assert await opened(db) == before

    # Another process has it open for writing: refused before anything is written.
    async with await Replica.open(db):
        with pytest.raises(StorageError, match="in use"):
            await encrypt_laptop(db, PASSWORD, kdf=CHEAP)
    assert is_plain(db)
    assert not key_file_for(db).exists()

    server_db = tmp_path / "server.db"
    await (await SyncServer.open(server_db)).close()
    with pytest.raises(StorageError, match="server's database"):
        await encrypt_laptop(server_db, PASSWORD, kdf=CHEAP)
    assert is_plain(server_db)


@pytest.mark.parametrize("step", STEPS)
async def test_an_error_at_any_step_leaves_one_database_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    db = tmp_path / "laptop.db"
    before = await plain_laptop(db)

    def fail(reached: str) -> None:
        if reached == step:
            raise OSError(5, f"failed after {step}")

    monkeypatch.setattr(conversion, "_reached", fail)
    with pytest.raises((StorageError, OSError)):
        await encrypt_laptop(db, PASSWORD, kdf=CHEAP)
    if STEPS.index(step) < STEPS.index("replaced"):
        # Still plain, whole, with nothing beside it that makes it look encrypted.
        assert is_plain(db)
        assert beside(db) == ["laptop.db"]
        assert await opened(db) == before
    else:
        assert not is_plain(db)
        assert await opened(db, PASSWORD) == before
    monkeypatch.setattr(conversion, "_reached", lambda reached: None)
    if is_plain(db):
        await encrypt_laptop(db, PASSWORD, kdf=CHEAP)  # and it can be done again
    assert await opened(db, PASSWORD) == before


_CHILD = textwrap.dedent(
    """
    import asyncio, os, sys
    import caresync.storage.encrypt_in_place as conversion
    from caresync.convert import encrypt_laptop
    from caresync.storage import KdfParams

    db, step = sys.argv[1], sys.argv[2]

    def crash(reached):
        if reached == step:
            os._exit(70)  # no cleanup, no flush: as if the power went

    conversion._reached = crash
    asyncio.run(encrypt_laptop(db, "correct horse", kdf=KdfParams(1, 8, 1)))
    """
)


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_any_step_leaves_one_database_whole(tmp_path: Path, step: str) -> None:
    db = tmp_path / "laptop.db"
    before = asyncio.run(plain_laptop(db))
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(db), step],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert child.returncode == 70, child.stderr
    if is_plain(db):
        # The plain database is whole (read without the key file, which a crash after
        # "keyed" leaves beside it: opening then says to finish the conversion).
        keys = key_file_for(db)
        if keys.exists():
            assert STEPS.index(step) >= STEPS.index("keyed")
            with pytest.raises(StorageError, match=r"caresync encrypt --db .* again"):
                asyncio.run(opened(db, PASSWORD))
            keys.rename(tmp_path / "aside.keys")
            assert asyncio.run(opened(db)) == before
            (tmp_path / "aside.keys").rename(keys)
        else:
            assert asyncio.run(opened(db)) == before
        asyncio.run(encrypt_laptop(db, PASSWORD, kdf=CHEAP))  # run again: finished
    else:
        assert STEPS.index(step) >= STEPS.index("replaced")
    assert not is_plain(db)
    assert asyncio.run(opened(db, PASSWORD)) == before
    assert holds_name(tmp_path) == []
    assert beside(db) == ["laptop.db", "laptop.db.keys"]  # a partial copy was cleared too
