"""Offline login resists guessing: five failures in a row lock the laptop for a time that
doubles with each further failure, kept in the database (a plain laptop) or in the key
file (an encrypted one, whose database a wrong password cannot open); a right password
resets it.

Real parts: a server on 127.0.0.1 (a laptop keeps a password hash only from an online
login) and SQLite files; the wall clock the lock is timed by is set by the test.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.cli.clitools import digest, inproc
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server

import caresync.logins as logins_module
import caresync.storage.laptop_key as laptop_key_module
from caresync.cli.errors import ExitCode
from caresync.exceptions import (
    AuthenticationError,
    LoginLockedError,
    PasswordNeededError,
    WrongPasswordError,
)
from caresync.logins import OFFLINE_LOCK_FIRST_S, OFFLINE_LOCK_MAX_S, OFFLINE_LOGIN_ATTEMPTS
from caresync.replica import Replica
from caresync.storage import KdfParams

CHEAP = KdfParams(time_cost=1, memory_kib=8, parallelism=1)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    now = [1_800_000_000_000]
    monkeypatch.setattr(logins_module, "_wall_ms", lambda: now[0])
    return now


async def test_five_failures_lock_and_each_further_one_doubles_the_lock(
    tmp_path: Path, clock: list[int]
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    await server.close()  # offline from here on
    for guess in ("guess-1", "guess-2", "guess-3"):
        with pytest.raises(AuthenticationError) as raised:
            await laptop.login_offline("dr.a", guess)
        assert not isinstance(raised.value, LoginLockedError)
    with pytest.raises(AuthenticationError, match="never logged in online"):
        await laptop.login_offline("dr.nobody", "guess-4")  # an unknown name counts too
    with pytest.raises(LoginLockedError) as locked:
        await laptop.login_offline("dr.a", "guess-5")
    assert locked.value.retry_after_s == OFFLINE_LOCK_FIRST_S
    # While locked, not even the right password is checked.
    clock[0] += 29_000
    with pytest.raises(LoginLockedError, match="try again in 1 s"):
        await laptop.login_offline("dr.a", PASSWORD)
    # Closing the program does not reset the count.
    await laptop.close()
    laptop = await Replica.open(tmp_path / "laptop.db")
    with pytest.raises(LoginLockedError):
        await laptop.login_offline("dr.a", PASSWORD)
    clock[0] += 1_000
    with pytest.raises(LoginLockedError) as again:
        await laptop.login_offline("dr.a", "guess-6")
    assert again.value.retry_after_s == 2 * OFFLINE_LOCK_FIRST_S
    for _ in range(20):  # many more failures: the lock stops growing at the maximum
        clock[0] += int(OFFLINE_LOCK_MAX_S * 1000)
        with pytest.raises(LoginLockedError) as longest:
            await laptop.login_offline("dr.a", "guess")
    assert longest.value.retry_after_s == OFFLINE_LOCK_MAX_S
    clock[0] += int(OFFLINE_LOCK_MAX_S * 1000)
    await laptop.login_offline("dr.a", PASSWORD)  # the right password, once unlocked
    with pytest.raises(AuthenticationError) as fresh:  # and the count starts again
        await laptop.login_offline("dr.a", "guess")
    assert not isinstance(fresh.value, LoginLockedError)
    await laptop.close()


def test_caresync_login_checks_offline_and_says_how_long_it_is_locked(
    tmp_path: Path, clock: list[int]
) -> None:
    async def enrol_then_go_offline() -> None:
        server = await start_server(tmp_path)
        laptop = await enrolled(tmp_path, server, "laptop")
        await laptop.close()
        await server.close()

    asyncio.run(enrol_then_go_offline())
    db = tmp_path / "laptop.db"
    ok = inproc("login --db {db} --username dr.a --json", db=db, password=PASSWORD).ok().json()
    assert ok["username"] == "dr.a"
    for _ in range(4):
        wrong = inproc("login --db {db} --username dr.a", db=db, password="not it")
        assert wrong.code == ExitCode.REFUSED
        assert "wrong password for dr.a" in wrong.error_line()
    locked = inproc("login --db {db} --username dr.a --json", db=db, password="not it")
    assert locked.code == ExitCode.REFUSED
    assert "checks no password for 30 s" in locked.json()["error"]["message"]
    still = inproc("login --db {db} --username dr.a", db=db, password=PASSWORD)
    assert still.code == ExitCode.REFUSED
    assert "try again in 30 s" in still.error_line()


@pytest.fixture
def unlock_clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The wall clock of an encrypted laptop's guessing lock (kept in its key file)."""
    now = [1_800_000_000_000]
    monkeypatch.setattr(laptop_key_module, "_wall_ms", lambda: now[0])
    return now


async def test_an_encrypted_laptop_counts_wrong_passwords_in_its_key_file(
    tmp_path: Path, unlock_clock: list[int]
) -> None:
    # The bug: the count lived in the database, which a wrong password cannot open, so
    # an encrypted laptop never locked (every guess cost one argon2id derivation only).
    db = tmp_path / "laptop.db"
    laptop = await Replica.open(db, username="dr.a", password=PASSWORD, kdf=CHEAP)
    assert laptop.encrypted
    assert laptop.pending_failed_logins == ()
    await laptop.close()
    before = digest(db)
    for n in range(1, OFFLINE_LOGIN_ATTEMPTS):
        with pytest.raises(WrongPasswordError):
            await Replica.open(db, username="dr.a", password=f"guess-{n}")
    with pytest.raises(LoginLockedError) as locked:
        await Replica.open(db, password="guess-5")  # no name: still one attempt
    assert locked.value.retry_after_s == OFFLINE_LOCK_FIRST_S
    with pytest.raises(LoginLockedError, match="try again in 30 s"):
        await Replica.open(db, username="dr.a", password=PASSWORD)
    assert digest(db) == before  # the database itself was never opened

    unlock_clock[0] += int(OFFLINE_LOCK_FIRST_S * 1000)
    laptop = await Replica.open(db, username="dr.a", password=PASSWORD)
    try:
        # Opening recorded them in the audit trail, then cleared them from the key file.
        failed = [e for e in await laptop.store.audit_entries() if e.action == "login-failed"]
        assert [e.actor for e in failed] == ["dr.a"] * 4 + ["(no name given)"]
        assert all(e.detail == "unlock at 2027-01-15T08:00:00Z" for e in failed)
        assert laptop.pending_failed_logins == ()
    finally:
        await laptop.close()
    laptop = await Replica.open(db, username="dr.a", password=PASSWORD)
    assert laptop.pending_failed_logins == ()  # cleared for good
    await laptop.close()


async def test_a_plain_laptop_has_no_failed_unlocks_to_record(tmp_path: Path) -> None:
    laptop = await Replica.open(tmp_path / "plain.db")
    assert not laptop.encrypted
    assert laptop.pending_failed_logins == ()
    await laptop._clear_failed_logins()  # nothing to clear, nothing written
    assert not (tmp_path / "plain.db.keys").exists()
    await laptop.close()


async def test_an_encrypted_laptop_opened_without_a_password_says_one_is_needed(
    tmp_path: Path,
) -> None:
    db = tmp_path / "laptop.db"
    await (await Replica.open(db, username="dr.a", password=PASSWORD, kdf=CHEAP)).close()
    with pytest.raises(PasswordNeededError, match="a password is needed"):
        await Replica.open(db)
    # Without a password a new database is plain, by design (documented on open).
    plain = await Replica.open(tmp_path / "new.db")
    assert not plain.encrypted
    await plain.close()


def test_caresync_login_on_an_encrypted_laptop_locks_too(
    tmp_path: Path, clock: list[int], unlock_clock: list[int]
) -> None:
    async def enrol_then_go_offline() -> None:
        server = await start_server(tmp_path)
        laptop = await enrolled(
            tmp_path, server, "laptop", username="dr.a", password=PASSWORD, kdf=CHEAP
        )
        assert laptop.encrypted
        await laptop.close()
        await server.close()

    asyncio.run(enrol_then_go_offline())
    db = tmp_path / "laptop.db"
    for _ in range(OFFLINE_LOGIN_ATTEMPTS - 1):
        wrong = inproc("login --db {db} --username dr.a", db=db, password="not it")
        assert wrong.code == ExitCode.REFUSED
        assert "does not open the database" in wrong.error_line()
    locked = inproc("login --db {db} --username dr.a --json", db=db, password="not it")
    assert locked.code == ExitCode.REFUSED
    assert "tries no password for 30 s" in locked.json()["error"]["message"]
    for command in ("login --db {db} --username dr.a", "status --db {db}"):
        still = inproc(command, db=db, password=PASSWORD)
        assert still.code == ExitCode.REFUSED
        assert "try again in 30 s" in still.error_line()
    unlock_clock[0] += int(OFFLINE_LOCK_FIRST_S * 1000)
    ok = inproc("login --db {db} --username dr.a --json", db=db, password=PASSWORD).ok().json()
    assert ok["username"] == "dr.a"
