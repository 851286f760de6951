"""An encrypted laptop's key file changed by hand: one user's copy removed
(:meth:`KeyRing.remove_user`, :func:`remove_laptop_user`), and the key rotated
(:func:`rotate_laptop_key`), whatever step an error or a crash stops it at.

Real SQLite files and key files in tmp_path; argon2id at its cheapest (these tests
check who opens what, not the cost). A crash is a child process that ends itself
(``os._exit``) right after a step; an error is an exception raised there.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

import caresync.storage.encrypt_in_place as conversion
from caresync import (
    DatabaseKeyError,
    DatabaseNotFoundError,
    InvalidInputError,
    KeyFileError,
    StorageError,
    UnknownKeyUserError,
    WrongPasswordError,
)
from caresync.replica import Replica
from caresync.storage import KdfParams, KeyRing, key_file_for
from caresync.storage import _cipher as cipher_module
from caresync.storage.encrypt_in_place import REKEY_STEPS
from caresync.storage.laptop_key import (
    remove_laptop_user,
    rotate_laptop_key,
    rotated_key_file_for,
    unlock_laptop_key,
)

if cipher_module.NEW_DATABASE_CIPHER != cipher_module.AEGIS:
    pytest.skip("SQLite3 Multiple Ciphers is not installed here", allow_module_level=True)

CHEAP = KdfParams(time_cost=1, memory_kib=8, parallelism=1)
HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORDS = {"dr.a": "pw of dr.a", "dr.b": "pw of dr.b", "nurse.c": "pw of nurse.c"}
NAME = "Zanele Okonkwo-Testname"


# ------------------------------------------------------------------ KeyRing.remove_user


def ring_of(path: Path, *users: str) -> tuple[KeyRing, bytes]:
    ring, key = KeyRing.create(path, users[0], PASSWORDS[users[0]], params=CHEAP)
    for user in users[1:]:
        ring.add_user(user, PASSWORDS[user], key, params=CHEAP)
    return ring, key


def test_remove_user_leaves_the_others_copies(tmp_path: Path) -> None:
    path = tmp_path / "laptop.db.keys"
    ring, key = ring_of(path, "dr.a", "dr.b", "nurse.c")
    entries = json.loads(path.read_text())["users"]
    ring.remove_user("dr.b")
    assert ring.users() == ["dr.a", "nurse.c"]
    again = KeyRing.load(path)
    assert again.users() == ["dr.a", "nurse.c"]
    with pytest.raises(WrongPasswordError):
        again.unlock("dr.b", PASSWORDS["dr.b"])
    assert again.unlock("dr.a", PASSWORDS["dr.a"]) == key
    assert again.unlock("nurse.c", PASSWORDS["nurse.c"]) == key
    left = json.loads(path.read_text())["users"]
    assert left == {name: entries[name] for name in ("dr.a", "nurse.c")}  # untouched
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["laptop.db.keys"]  # no temp left


def test_remove_user_refuses_an_unknown_user_naming_them(tmp_path: Path) -> None:
    path = tmp_path / "k.keys"
    ring, _ = ring_of(path, "dr.a", "dr.b")
    before = path.read_bytes()
    with pytest.raises(UnknownKeyUserError, match=r"'dr\.z' has no copy .*dr\.a, dr\.b"):
        ring.remove_user("dr.z")
    assert isinstance(UnknownKeyUserError("x"), InvalidInputError)
    assert path.read_bytes() == before
    assert ring.users() == ["dr.a", "dr.b"]


def test_remove_user_refuses_the_last_copy(tmp_path: Path) -> None:
    path = tmp_path / "k.keys"
    ring, key = ring_of(path, "dr.a", "dr.b")
    ring.remove_user("dr.a")
    before = path.read_bytes()
    with pytest.raises(InvalidInputError, match=r"last copy.*nobody could unlock"):
        ring.remove_user("dr.b")
    assert path.read_bytes() == before
    assert KeyRing.load(path).unlock("dr.b", PASSWORDS["dr.b"]) == key


def test_remove_user_works_on_the_file_as_it_is_now(tmp_path: Path) -> None:
    """Another process added a copy after this ring was read: it is kept, and a copy
    another process removed meanwhile is reported as gone."""
    path = tmp_path / "k.keys"
    ring, key = ring_of(path, "dr.a", "dr.b")
    KeyRing.load(path).add_user("nurse.c", PASSWORDS["nurse.c"], key, params=CHEAP)
    ring.remove_user("dr.b")
    assert KeyRing.load(path).users() == ["dr.a", "nurse.c"]

    stale = KeyRing.load(path)
    KeyRing.load(path).remove_user("nurse.c")
    with pytest.raises(UnknownKeyUserError, match=r"nurse\.c"):
        stale.remove_user("nurse.c")
    with pytest.raises(InvalidInputError, match="last copy"):
        stale.remove_user("dr.a")  # the only one left now, though this ring read two
    assert KeyRing.load(path).users() == ["dr.a"]


def test_remove_user_keeps_the_unlock_attempts(tmp_path: Path) -> None:
    path = tmp_path / "laptop.db.keys"
    ring_of(path, "dr.a", "dr.b")
    with pytest.raises(WrongPasswordError):
        unlock_laptop_key(tmp_path / "laptop.db", "a guess", "dr.a", params=CHEAP)
    before = json.loads(path.read_text())["attempts"]
    assert before["failures"] == 1
    KeyRing.load(path).remove_user("dr.b")
    assert json.loads(path.read_text())["attempts"] == before


def test_a_new_key_file_beside_no_database_creates_none(tmp_path: Path) -> None:
    """Unlocking checks which key opens the database only when there is one: it never
    makes a database file where there was none."""
    db = tmp_path / "laptop.db"
    _, key = ring_of(key_file_for(db), "dr.a")
    ring_of(rotated_key_file_for(db), "dr.a")
    assert unlock_laptop_key(db, PASSWORDS["dr.a"], params=CHEAP).key == key
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "laptop.db.keys",
        "laptop.db.keys.rotated",
    ]


# ------------------------------------------------------------- a real encrypted laptop


async def encrypted_laptop(db: Path) -> dict[str, Any]:
    """An encrypted laptop with records (each with an unsynced change), dr.a logged in,
    and a copy of the key for every user of PASSWORDS; returns what it holds."""
    laptop = await Replica.open(
        db, username="dr.a", password=PASSWORDS["dr.a"], kdf=CHEAP, password_hasher=HASHER
    )
    try:
        await laptop.logins.logged_in_online("dr.a", PASSWORDS["dr.a"])
        for n in range(20):
            record_id = await laptop.create_record()
            await laptop.set(record_id, "name", f"{NAME} {n}", author="dr.a")
            await laptop.add_entry(
                record_id, "allergies", {"substance": "penicillin"}, author="dr.a"
            )
        held = await holdings(laptop)
    finally:
        await laptop.close()
    unlocked = unlock_laptop_key(db, PASSWORDS["dr.a"], "dr.a", params=CHEAP)
    for user in ("dr.b", "nurse.c"):
        unlocked.remember(user, PASSWORDS[user])
    return held


async def holdings(laptop: Replica) -> dict[str, Any]:
    records = {rid: await laptop.fields(rid) for rid in await laptop.record_ids()}
    status = await laptop.status()
    return {"records": records, "pending": status.pending, "replica": status.replica_id}


async def opened(db: Path, user: str) -> dict[str, Any]:
    """What the laptop holds, opened with ``user``'s password (and only theirs tried)."""
    async with await Replica.open(
        db, create=False, username=user, password=PASSWORDS[user], kdf=CHEAP
    ) as laptop:
        return await holdings(laptop)


def opens_with(db: Path, key: bytes) -> bool:
    try:
        cipher_module.connect(db, key=key).close()
    except DatabaseKeyError:
        return False
    return True


def key_users(db: Path) -> list[str]:
    return sorted(json.loads(key_file_for(db).read_text())["users"])


def beside(db: Path) -> list[str]:
    return sorted(p.name for p in db.parent.iterdir() if p.name != db.name + "-writer.lock")


@pytest.fixture
def laptop(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    db = tmp_path / "laptop.db"
    return db, asyncio.run(encrypted_laptop(db))


def test_a_removed_user_no_longer_opens_the_laptop_and_the_others_do(
    laptop: tuple[Path, dict[str, Any]],
) -> None:
    db, before = laptop
    data = db.read_bytes()
    assert remove_laptop_user(db, "dr.b", PASSWORDS["nurse.c"], params=CHEAP) == [
        "dr.a",
        "nurse.c",
    ]
    assert db.read_bytes() == data  # the database itself is not touched
    assert key_users(db) == ["dr.a", "nurse.c"]
    with pytest.raises(WrongPasswordError):
        asyncio.run(opened(db, "dr.b"))
    with pytest.raises(WrongPasswordError):
        unlock_laptop_key(db, PASSWORDS["dr.b"], params=CHEAP)  # no name: every copy tried
    assert asyncio.run(opened(db, "dr.a")) == before
    assert asyncio.run(opened(db, "nurse.c")) == before


def test_removing_needs_another_users_password(laptop: tuple[Path, dict[str, Any]]) -> None:
    db, before = laptop
    keys = key_file_for(db)
    users = json.loads(keys.read_text())["users"]

    # The user's own password is not another's: their copy is not even tried.
    with pytest.raises(WrongPasswordError):
        remove_laptop_user(db, "dr.b", PASSWORDS["dr.b"], params=CHEAP)
    with pytest.raises(InvalidInputError, match="another user"):
        remove_laptop_user(db, "dr.b", PASSWORDS["dr.b"], "dr.b", params=CHEAP)
    # A wrong password is counted as every failed unlock is.
    with pytest.raises(WrongPasswordError):
        remove_laptop_user(db, "dr.b", "a guess", "dr.a", params=CHEAP)
    # Another user's password, but --by names someone else.
    with pytest.raises(WrongPasswordError):
        remove_laptop_user(db, "dr.b", PASSWORDS["nurse.c"], "dr.a", params=CHEAP)
    stored = json.loads(keys.read_text())
    assert stored["users"] == users
    assert stored["attempts"]["failures"] == 3
    assert [f["username"] for f in stored["attempts"]["failed"]] == ["", "dr.a", "dr.a"]

    # Unknown users and the last copy are refused before any password is tried.
    with pytest.raises(UnknownKeyUserError, match=r"dr\.z"):
        remove_laptop_user(db, "dr.z", "not tried", params=CHEAP)
    assert json.loads(keys.read_text())["attempts"]["failures"] == 3
    remove_laptop_user(db, "dr.b", PASSWORDS["dr.a"], "dr.a", params=CHEAP)
    remove_laptop_user(db, "nurse.c", PASSWORDS["dr.a"], params=CHEAP)
    with pytest.raises(InvalidInputError, match=r"last copy.*nobody could unlock"):
        remove_laptop_user(db, "dr.a", PASSWORDS["dr.a"], params=CHEAP)
    assert key_users(db) == ["dr.a"]
    assert asyncio.run(opened(db, "dr.a")) == before


def test_remove_and_rotate_refuse_a_database_with_no_key_file(tmp_path: Path) -> None:
    with pytest.raises(DatabaseNotFoundError):
        remove_laptop_user(tmp_path / "none.db", "dr.b", "pw", params=CHEAP)
    with pytest.raises(DatabaseNotFoundError):
        rotate_laptop_key(tmp_path / "none.db", "pw", params=CHEAP)

    async def plain() -> None:
        await (await Replica.open(tmp_path / "plain.db")).close()

    asyncio.run(plain())
    data = (tmp_path / "plain.db").read_bytes()
    with pytest.raises(KeyFileError, match="plain"):
        remove_laptop_user(tmp_path / "plain.db", "dr.b", "pw", params=CHEAP)
    with pytest.raises(KeyFileError, match="plain"):
        rotate_laptop_key(tmp_path / "plain.db", "pw", params=CHEAP)
    assert (tmp_path / "plain.db").read_bytes() == data
    assert not key_file_for(tmp_path / "plain.db").exists()


def test_rotate_makes_a_new_key_that_only_the_acting_user_holds(
    laptop: tuple[Path, dict[str, Any]],
) -> None:
    db, before = laptop
    old_key = unlock_laptop_key(db, PASSWORDS["dr.a"], params=CHEAP).key
    with pytest.raises(WrongPasswordError):  # a failed attempt, kept across the rotation
        unlock_laptop_key(db, "a guess", "dr.b", params=CHEAP)
    attempts = json.loads(key_file_for(db).read_text())["attempts"]
    assert [f["username"] for f in attempts["failed"]] == ["dr.b"]

    done = rotate_laptop_key(db, PASSWORDS["nurse.c"], params=CHEAP)
    assert (done.username, done.dropped) == ("nurse.c", ("dr.a", "dr.b"))
    assert not opens_with(db, old_key)
    new_key = unlock_laptop_key(db, PASSWORDS["nurse.c"], params=CHEAP).key
    assert new_key != old_key
    assert opens_with(db, new_key)
    assert key_users(db) == ["nurse.c"]
    assert json.loads(key_file_for(db).read_text())["attempts"]["failed"] == attempts["failed"]
    assert beside(db) == ["laptop.db", "laptop.db.keys"]
    assert stat.S_IMODE(key_file_for(db).stat().st_mode) == 0o600
    assert asyncio.run(opened(db, "nurse.c")) == before  # every record, field, unsynced change
    assert NAME.encode() not in db.read_bytes()
    for user in ("dr.a", "dr.b"):
        with pytest.raises(WrongPasswordError):
            asyncio.run(opened(db, user))

    # A colleague gets a copy of the new key again from someone who can open it.
    unlock_laptop_key(db, PASSWORDS["nurse.c"], params=CHEAP).remember("dr.a", PASSWORDS["dr.a"])
    assert asyncio.run(opened(db, "dr.a")) == before
    with pytest.raises(WrongPasswordError):
        asyncio.run(opened(db, "dr.b"))


def test_rotate_refuses_a_wrong_password_and_a_database_in_use(
    laptop: tuple[Path, dict[str, Any]],
) -> None:
    db, before = laptop
    data, keys = db.read_bytes(), key_file_for(db).read_bytes()
    with pytest.raises(WrongPasswordError):
        rotate_laptop_key(db, "a guess", params=CHEAP)
    assert db.read_bytes() == data
    assert json.loads(key_file_for(db).read_text())["users"] == json.loads(keys)["users"]
    assert json.loads(key_file_for(db).read_text())["attempts"]["failures"] == 1

    async def while_open() -> None:
        async with await Replica.open(
            db, create=False, username="dr.a", password=PASSWORDS["dr.a"], kdf=CHEAP
        ):
            failures = json.loads(key_file_for(db).read_text())["attempts"]["failures"]
            with pytest.raises(StorageError, match="in use"):
                rotate_laptop_key(db, PASSWORDS["dr.a"], params=CHEAP)
            # Refused before any password was tried: nothing counted.
            after = json.loads(key_file_for(db).read_text())["attempts"]["failures"]
            assert after == failures

    asyncio.run(while_open())
    assert key_users(db) == ["dr.a", "dr.b", "nurse.c"]
    assert beside(db) == ["laptop.db", "laptop.db.keys"]
    assert asyncio.run(opened(db, "dr.b")) == before


def check_after_interruption(db: Path, step: str, old_key: bytes, before: Any) -> None:
    """A rotation stopped right after ``step``: the database opens with the old key file
    (before it was replaced) or with the new one (after); then it can be finished."""
    pending = rotated_key_file_for(db)
    if REKEY_STEPS.index(step) < REKEY_STEPS.index("replaced"):
        assert opens_with(db, old_key)
        assert KeyRing.load(key_file_for(db)).unlock("dr.b", PASSWORDS["dr.b"]) == old_key
        for user in PASSWORDS:  # everyone still opens it, a stale new key file or not
            assert asyncio.run(opened(db, user)) == before
        done = rotate_laptop_key(db, PASSWORDS["dr.a"], params=CHEAP)  # and it can be done
        assert done.dropped == ("dr.b", "nurse.c")
    elif step == "replaced":
        # The database is under the new key; the new key file beside the old one opens it.
        assert not opens_with(db, old_key)
        new_key = KeyRing.load(pending).unlock("dr.a", PASSWORDS["dr.a"])
        assert opens_with(db, new_key)
        with pytest.raises(WrongPasswordError, match=r"interrupted.*only dr\.a's password"):
            asyncio.run(opened(db, "dr.b"))  # nothing changed by that
        assert pending.exists()
        assert asyncio.run(opened(db, "dr.a")) == before  # which finishes the rotation
        assert not pending.exists()
        assert KeyRing.load(key_file_for(db)).unlock("dr.a", PASSWORDS["dr.a"]) == new_key
    else:
        assert not opens_with(db, old_key)
    assert not opens_with(db, old_key)
    assert key_users(db) == ["dr.a"]
    assert asyncio.run(opened(db, "dr.a")) == before
    with pytest.raises(WrongPasswordError):
        asyncio.run(opened(db, "dr.b"))
    assert beside(db) == ["laptop.db", "laptop.db.keys"]


@pytest.mark.parametrize("step", REKEY_STEPS)
def test_an_error_at_any_step_of_a_rotation_leaves_a_database_that_opens(
    laptop: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    db, before = laptop
    old_key = unlock_laptop_key(db, PASSWORDS["dr.a"], params=CHEAP).key

    def fail(reached: str) -> None:
        if reached == step:
            raise OSError(5, f"failed after {step}")

    monkeypatch.setattr(conversion, "_reached", fail)
    with pytest.raises((StorageError, OSError)) as raised:
        rotate_laptop_key(db, PASSWORDS["dr.a"], params=CHEAP)
    if step == "replaced":  # the one state a key file beside the database cannot open
        assert "open the database once with that password" in str(raised.value)
        assert "dr.a's password" in str(raised.value)
    monkeypatch.setattr(conversion, "_reached", lambda reached: None)
    if REKEY_STEPS.index(step) < REKEY_STEPS.index("replaced"):
        # An error (not a crash) removes what it wrote: nothing is left beside the database.
        assert beside(db) == ["laptop.db", "laptop.db.keys"]
    check_after_interruption(db, step, old_key, before)


_CHILD = textwrap.dedent(
    """
    import os, sys
    import caresync.storage.encrypt_in_place as conversion
    from caresync.storage import KdfParams
    from caresync.storage.laptop_key import rotate_laptop_key

    db, step = sys.argv[1], sys.argv[2]

    def crash(reached):
        if reached == step:
            os._exit(70)  # no cleanup, no flush: as if the power went

    conversion._reached = crash
    rotate_laptop_key(db, "pw of dr.a", params=KdfParams(1, 8, 1))
    """
)


@pytest.mark.parametrize("step", REKEY_STEPS)
def test_a_crash_at_any_step_of_a_rotation_leaves_a_database_that_opens(
    laptop: tuple[Path, dict[str, Any]], step: str
) -> None:
    db, before = laptop
    old_key = unlock_laptop_key(db, PASSWORDS["dr.a"], params=CHEAP).key
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(db), step],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert child.returncode == 70, child.stderr
    check_after_interruption(db, step, old_key, before)


def test_a_rotation_does_not_undo_a_removal_of_the_rotating_user_made_meanwhile(
    laptop: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """dr.a starts a rotation; while the copy is made, dr.b removes dr.a's copy. The
    rotation must not then leave dr.a the only user of a new key (dr.b's removal
    silently undone, dr.b and nurse.c locked out): it is refused, nothing changed."""
    db, before = laptop
    old_key = unlock_laptop_key(db, PASSWORDS["dr.a"], params=CHEAP).key

    def remove_meanwhile(reached: str) -> None:
        if reached == "verified":
            remove_laptop_user(db, "dr.a", PASSWORDS["dr.b"], "dr.b", params=CHEAP)

    monkeypatch.setattr(conversion, "_reached", remove_meanwhile)
    with pytest.raises(UnknownKeyUserError, match=r"'dr\.a'.*removed.*meanwhile"):
        rotate_laptop_key(db, PASSWORDS["dr.a"], "dr.a", params=CHEAP)
    monkeypatch.setattr(conversion, "_reached", lambda reached: None)
    assert opens_with(db, old_key)
    assert key_users(db) == ["dr.b", "nurse.c"]
    assert beside(db) == ["laptop.db", "laptop.db.keys"]
    assert asyncio.run(opened(db, "dr.b")) == before
    with pytest.raises(WrongPasswordError):
        asyncio.run(opened(db, "dr.a"))


@pytest.mark.parametrize("step", ["keyed", "replaced"])
def test_the_old_key_file_stays_locked_from_the_new_one_written_until_installed(
    laptop: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """No removal (nor any other change of the key file) can slip in between the check
    that the rotating user still has a copy and the new key file replacing the old."""
    fcntl = pytest.importorskip("fcntl")
    db, _ = laptop
    held: list[bool] = []

    def try_lock(reached: str) -> None:
        if reached == step:
            fd = os.open(key_file_for(db), os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
            finally:
                os.close(fd)

    monkeypatch.setattr(conversion, "_reached", try_lock)
    rotate_laptop_key(db, PASSWORDS["dr.a"], params=CHEAP)
    assert held == [True]
    assert key_users(db) == ["dr.a"]


def test_an_unlock_that_meets_a_rotation_says_so_not_that_the_file_is_read_only(
    laptop: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key file read, then replaced by a rotation's before the attempt is counted."""
    db, _ = laptop
    rotated = db.with_name("other.db.keys")
    KeyRing.create(rotated, "dr.a", PASSWORDS["dr.a"], params=CHEAP)
    load = KeyRing.load

    def load_then_rotated(path: Any) -> KeyRing:
        ring = load(path)
        if rotated.exists():  # once: the rotation's file is there from then on
            os.replace(rotated, key_file_for(db))
        return ring

    monkeypatch.setattr(KeyRing, "load", staticmethod(load_then_rotated))
    with pytest.raises(KeyFileError, match=r"changed meanwhile.*try again") as raised:
        unlock_laptop_key(db, PASSWORDS["dr.b"], params=CHEAP)
    assert "writable" not in str(raised.value)
