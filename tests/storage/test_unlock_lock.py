"""An encrypted laptop resists guessing: every unlock attempt is counted in its key file
before any password is tried, five failures in a row lock it for a time that doubles,
and the failed attempts are kept until a caller records them.

Real key files in tmp_path; argon2id at its cheapest (these tests check the counting,
not the cost); the wall clock the lock is timed by is set by the test; every argon2
derivation is counted, to show a locked laptop tries none.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import caresync.storage.keyring as keyring_module
import caresync.storage.laptop_key as laptop_key_module
from caresync import (
    AuthenticationError,
    DatabaseKeyError,
    KeyFileError,
    LoginLockedError,
    PasswordNeededError,
    WrongPasswordError,
)
from caresync.lockout import (
    MAX_FAILED_KEPT,
    MAX_NAME_CHARS,
    NAME_WITHOUT_KEY,
    OFFLINE_LOCK_FIRST_S,
    OFFLINE_LOCK_MAX_S,
    OFFLINE_LOGIN_ATTEMPTS,
    FailedLogin,
)
from caresync.storage import KdfParams, KeyRing, key_file_for
from caresync.storage.laptop_key import create_laptop_key, unlock_laptop_key

CHEAP = KdfParams(time_cost=1, memory_kib=8, parallelism=1)
PASSWORD = "correct horse"
START_MS = 1_800_000_000_000


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    now = [START_MS]
    monkeypatch.setattr(laptop_key_module, "_wall_ms", lambda: now[0])
    return now


@pytest.fixture
def derivations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many argon2id derivations ran (each one is a password tried)."""
    count = [0]
    real: Callable[..., bytes] = keyring_module._derive

    def counted(*args: Any) -> bytes:
        count[0] += 1
        return real(*args)

    monkeypatch.setattr(keyring_module, "_derive", counted)
    return count


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """An encrypted laptop's database path whose key file holds dr.a's copy (no database
    file: unlocking reads the key file only)."""
    path = tmp_path / "laptop.db"
    create_laptop_key(path, "dr.a", PASSWORD, params=CHEAP)
    return path


def attempts_in(db: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(key_file_for(db).read_text())["attempts"]
    return data


def fail(db: Path, username: str | None = "dr.a", password: str = "a guess") -> Exception:
    with pytest.raises(AuthenticationError) as raised:
        unlock_laptop_key(db, password, username)
    return raised.value


def test_five_failures_lock_and_each_further_one_doubles_the_lock(
    db: Path, wall: list[int], derivations: list[int]
) -> None:
    for n in range(1, OFFLINE_LOGIN_ATTEMPTS):
        error = fail(db)
        assert type(error) is WrongPasswordError
        assert attempts_in(db)["failures"] == n
    locking = fail(db)
    assert isinstance(locking, LoginLockedError)
    assert locking.retry_after_s == OFFLINE_LOCK_FIRST_S
    assert "5 failed attempts in a row" in str(locking)
    assert "does not open the database" in str(locking)
    assert derivations[0] == OFFLINE_LOGIN_ATTEMPTS

    # While locked no password is tried, not even the right one: no derivation.
    wall[0] += 29_000
    with pytest.raises(LoginLockedError, match="try again in 1 s") as still:
        unlock_laptop_key(db, PASSWORD, "dr.a")
    assert still.value.retry_after_s == 1.0
    assert derivations[0] == OFFLINE_LOGIN_ATTEMPTS
    assert attempts_in(db)["failures"] == OFFLINE_LOGIN_ATTEMPTS  # a refusal is not counted

    wall[0] += 1_000
    again = fail(db)
    assert isinstance(again, LoginLockedError)
    assert again.retry_after_s == 2 * OFFLINE_LOCK_FIRST_S
    for _ in range(12):  # many more: the lock stops growing at the maximum
        wall[0] += int(OFFLINE_LOCK_MAX_S * 1000)
        longest = fail(db)
    assert isinstance(longest, LoginLockedError)
    assert longest.retry_after_s == OFFLINE_LOCK_MAX_S

    wall[0] += int(OFFLINE_LOCK_MAX_S * 1000)
    assert unlock_laptop_key(db, PASSWORD, "dr.a").unlocked_by == "dr.a"
    assert attempts_in(db)["failures"] == 0  # a right password resets the count
    assert attempts_in(db)["locked_until_ms"] == 0
    assert type(fail(db)) is WrongPasswordError


def test_an_unknown_user_and_no_name_count_too(db: Path, wall: list[int]) -> None:
    assert type(fail(db, "dr.nobody")) is WrongPasswordError
    assert type(fail(db, None)) is WrongPasswordError  # every user's copy tried: one attempt
    assert attempts_in(db)["failures"] == 2


def test_failed_attempts_are_kept_until_a_caller_recorded_them(db: Path, wall: list[int]) -> None:
    fail(db, "dr.a")
    wall[0] += 5
    fail(db, None)
    wall[0] += 5
    fail(db, "evil\x1b[31m" + "x" * 200)
    wall[0] += 5
    key = unlock_laptop_key(db, PASSWORD, "dr.a")
    assert key.failed_logins == (
        FailedLogin("dr.a", START_MS),
        FailedLogin("", START_MS + 5),
        FailedLogin(NAME_WITHOUT_KEY, START_MS + 10),  # a name with no copy: not kept
    )
    assert key.failed_logins_dropped == 0
    assert all(f.username.isprintable() for f in key.failed_logins)

    # Not recorded yet: the next unlock returns them again.
    assert unlock_laptop_key(db, PASSWORD).failed_logins == key.failed_logins
    # A failure after this key was unlocked, then the first three are recorded: only
    # those three are cleared.
    wall[0] += 5
    fail(db, "dr.b")
    key.failures_recorded()
    assert key.failed_logins == ()
    assert unlock_laptop_key(db, PASSWORD).failed_logins == (
        FailedLogin(NAME_WITHOUT_KEY, START_MS + 20),
    )


def test_a_password_typed_as_the_name_is_not_kept_in_the_key_file(
    db: Path, wall: list[int]
) -> None:
    """Reproduced: the key file, plain text beside the database, kept every name typed at
    a failed unlock, so a password typed in the name's field (a common slip) could be
    read off a lost laptop's disk. Only a name that holds a copy of the key is kept."""
    fail(db, "Tr0ub4dor&3")
    assert "Tr0ub4dor" not in key_file_for(db).read_text()
    assert [f["username"] for f in attempts_in(db)["failed"]] == [NAME_WITHOUT_KEY]
    fail(db, "dr.a")  # an account of this laptop: kept, as before
    assert [f["username"] for f in attempts_in(db)["failed"]] == [NAME_WITHOUT_KEY, "dr.a"]


def test_at_most_the_latest_hundred_are_kept_and_the_rest_counted(
    db: Path, wall: list[int]
) -> None:
    for n in range(MAX_FAILED_KEPT + 7):
        wall[0] = START_MS + n * int(OFFLINE_LOCK_MAX_S * 1000)  # past any lock
        fail(db)
    wall[0] += int(OFFLINE_LOCK_MAX_S * 1000)
    key = unlock_laptop_key(db, PASSWORD, "dr.a")
    assert len(key.failed_logins) == MAX_FAILED_KEPT
    assert key.failed_logins_dropped == 7
    assert key.failed_logins[0].at_ms == START_MS + 7 * int(OFFLINE_LOCK_MAX_S * 1000)
    key.failures_recorded()
    again = unlock_laptop_key(db, PASSWORD, "dr.a")
    assert (again.failed_logins, again.failed_logins_dropped) == ((), 0)


def test_adding_a_user_keeps_the_count_another_process_wrote(db: Path, wall: list[int]) -> None:
    # The writer holds a key ring loaded earlier; a reader counts a failure meanwhile.
    writer = unlock_laptop_key(db, PASSWORD, "dr.a")
    fail(db, "dr.b")
    writer.remember("dr.b", "nurse password")
    assert attempts_in(db)["failures"] == 1
    assert [f["username"] for f in attempts_in(db)["failed"]] == [NAME_WITHOUT_KEY]
    assert KeyRing.load(key_file_for(db)).users() == ["dr.a", "dr.b"]
    # And a count written after the new copy keeps the copy.
    fail(db, "dr.c")
    assert unlock_laptop_key(db, "nurse password", "dr.b").unlocked_by == "dr.b"


def test_an_attempt_that_cannot_be_counted_tries_no_password(
    db: Path, wall: list[int], derivations: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = key_file_for(db).read_bytes()

    def full_disk(*args: object, **kwargs: object) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keyring_module.tempfile, "mkstemp", full_disk)
    for password in ("a guess", PASSWORD):
        with pytest.raises(KeyFileError, match="no password was tried"):
            unlock_laptop_key(db, password, "dr.a")
    assert derivations[0] == 0
    assert key_file_for(db).read_bytes() == before


def test_a_key_file_on_read_only_media_is_refused_untried(
    db: Path, wall: list[int], derivations: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(*args: object, **kwargs: object) -> Any:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(keyring_module.os, "replace", read_only)
    with pytest.raises(KeyFileError, match="copy a read-only one somewhere writable"):
        unlock_laptop_key(db, PASSWORD, "dr.a")
    assert derivations[0] == 0
    assert [p.name for p in db.parent.iterdir()] == ["laptop.db.keys"]  # no temporary left


def _edit_attempts(obj: dict[str, Any], change: str) -> None:
    attempts = obj["attempts"]
    entry = {"username": "dr.a", "at_ms": START_MS}
    if change == "not-object":
        obj["attempts"] = [1]
    elif change == "negative":
        attempts["failures"] = -1
    elif change == "bool":
        attempts["failures"] = True
    elif change == "huge":
        attempts["locked_until_ms"] = 2**70
    elif change == "float":
        attempts["dropped"] = 1.5
    elif change == "missing":
        del attempts["locked_until_ms"]
    elif change == "failed-not-list":
        attempts["failed"] = {"dr.a": 1}
    elif change == "too-many":
        attempts["failed"] = [entry] * (MAX_FAILED_KEPT + 2)
    elif change == "control-name":
        attempts["failed"] = [{"username": "dr.a\n", "at_ms": START_MS}]
    elif change == "long-name":
        attempts["failed"] = [{"username": "a" * (MAX_NAME_CHARS + 1), "at_ms": START_MS}]
    elif change == "string-time":
        attempts["failed"] = [{"username": "dr.a", "at_ms": "yesterday"}]
    elif change == "entry-list":
        attempts["failed"] = [["dr.a", START_MS]]
    else:  # pragma: no cover - a typo in the parameters
        raise AssertionError(change)


@pytest.mark.parametrize(
    "change",
    [
        "not-object",
        "negative",
        "bool",
        "huge",
        "float",
        "missing",
        "failed-not-list",
        "too-many",
        "control-name",
        "long-name",
        "string-time",
        "entry-list",
    ],
)
def test_a_hostile_count_is_a_key_file_error_and_tries_nothing(
    db: Path, wall: list[int], derivations: list[int], change: str
) -> None:
    path = key_file_for(db)
    obj = json.loads(path.read_text())
    _edit_attempts(obj, change)
    path.write_text(json.dumps(obj))
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match=str(path)):
        unlock_laptop_key(db, PASSWORD, "dr.a")
    assert path.read_bytes() == before
    assert derivations[0] == 0


def test_a_key_file_without_a_count_is_read_as_none_yet(db: Path, wall: list[int]) -> None:
    path = key_file_for(db)
    obj = json.loads(path.read_text())
    del obj["attempts"]  # as caresync wrote it before the lock
    path.write_text(json.dumps(obj))
    fail(db)
    assert attempts_in(db)["failures"] == 1


def test_no_password_is_a_typed_error_saying_one_is_needed(db: Path) -> None:
    with pytest.raises(PasswordNeededError, match="CARESYNC_PASSWORD") as raised:
        unlock_laptop_key(db, "", "dr.a")
    assert isinstance(raised.value, DatabaseKeyError)
    assert attempts_in(db)["failures"] == 0


def test_a_wrong_password_says_how_a_user_gets_a_copy(db: Path, wall: list[int]) -> None:
    message = str(fail(db, "nurse.k"))
    assert f"caresync sync --db {db} --username nurse.k --unlock" in message
    assert "CARESYNC_UNLOCK_PASSWORD" in message
    assert "--username USER --unlock" in str(fail(db, None))


def test_a_plain_database_beside_a_key_file_names_the_interrupted_conversion(
    db: Path, wall: list[int]
) -> None:
    import sqlite3

    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(DatabaseKeyError, match=r"caresync encrypt --db .* again"):
        unlock_laptop_key(db, PASSWORD, "dr.a")
    assert attempts_in(db)["failures"] == 0
    assert os.path.exists(db)
