"""``caresync keys remove-user`` and ``caresync keys rotate``: who opens an encrypted laptop,
and its key, changed from the command line; their exit codes and messages.

Real parts: an encrypted laptop database (AEGIS-256) with records, and its key file
holding a copy for three users (argon2id at its cheapest for those copies; the copy
`keys rotate` makes is at the default cost, as the command makes it).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from tests.cli.clitools import PASSWORD, digest, inproc, sh
from tests.cli.conftest import Clinic
from tests.cli.test_cli_commands import new_record, refused, status

from caresync.cli.errors import ExitCode
from caresync.replica import Replica
from caresync.storage import KdfParams, key_file_for
from caresync.storage import _cipher as cipher_module
from caresync.storage.laptop_key import unlock_laptop_key

pytestmark = pytest.mark.skipif(
    cipher_module.NEW_DATABASE_CIPHER != cipher_module.AEGIS,
    reason="SQLite3 Multiple Ciphers (apsw-sqlite3mc) is not installed here",
)

CHEAP = KdfParams(time_cost=1, memory_kib=8, parallelism=1)
PASSWORDS = {"dr.a": PASSWORD, "dr.b": "pw of dr.b", "nurse.c": "pw of nurse.c"}
NAME = "Zanele Okonkwo-Testname"


@pytest.fixture
def laptop(tmp_path: Path) -> Path:
    """An encrypted laptop with records; dr.a, dr.b and nurse.c each hold a copy of its key."""
    db = tmp_path / "laptop.db"

    async def make() -> None:
        hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        replica = await Replica.open(
            db, username="dr.a", password=PASSWORD, kdf=CHEAP, password_hasher=hasher
        )
        try:
            await replica.logins.logged_in_online("dr.a", PASSWORD)
            for n in range(5):
                record_id = await replica.create_record()
                await replica.set(record_id, "name", f"{NAME} {n}", author="dr.a")
        finally:
            await replica.close()

    asyncio.run(make())
    unlocked = unlock_laptop_key(db, PASSWORD, "dr.a", params=CHEAP)
    for user in ("dr.b", "nurse.c"):
        unlocked.remember(user, PASSWORDS[user])
    return db


def records(db: Path, user: str) -> Any:
    """Every record's display row, read with ``user``'s password."""
    return inproc("record list --db {db} --json", db=db, password=PASSWORDS[user]).ok().json()


def key_users(db: Path) -> list[str]:
    return sorted(json.loads(key_file_for(db).read_text())["users"])


def failures(db: Path) -> int:
    count: int = json.loads(key_file_for(db).read_text())["attempts"]["failures"]
    return count


def opens_with(db: Path, key: bytes) -> bool:
    try:
        cipher_module.connect(db, key=key).close()
    except cipher_module.DatabaseKeyError:
        return False
    return True


def test_remove_user_stops_that_password_and_keeps_the_others(laptop: Path) -> None:
    before = records(laptop, "dr.b")
    assert len(before["records"]) == 5
    data = digest(laptop)
    done = inproc("keys remove-user dr.b --db {db} --json", db=laptop).ok().json()
    assert done == {
        "database": str(laptop),
        "removed": "dr.b",
        "users": ["dr.a", "nurse.c"],
        "key_file": f"{laptop}.keys",
    }
    assert digest(laptop) == data
    refused(
        inproc("record list --db {db}", db=laptop, password=PASSWORDS["dr.b"]),
        ExitCode.REFUSED,
        "this password does not open the database",
    )
    assert records(laptop, "dr.a") == before
    assert records(laptop, "nurse.c") == before

    text = inproc("keys remove-user nurse.c --db {db} --by dr.a", db=laptop, password=PASSWORD).ok()
    assert "nurse.c's copy of the key is removed" in text.stdout
    assert "The key itself is unchanged" in text.stdout
    assert "caresync keys rotate" in text.stdout
    assert key_users(laptop) == ["dr.a"]


def test_remove_user_refusals(laptop: Path, tmp_path: Path) -> None:
    keys = key_file_for(laptop)
    users = json.loads(keys.read_text())["users"]
    remove = "keys remove-user {user} --db {db}"

    def attempt(user: str, password: str | None, extra: str = "") -> Any:
        return inproc(remove + extra, db=laptop, user=user, password=password)

    refused(attempt("dr.z", PASSWORD), ExitCode.NOT_FOUND, "'dr.z' has no copy")
    # Their own password is not another user's.
    refused(attempt("dr.b", PASSWORDS["dr.b"]), ExitCode.REFUSED, "does not open")
    refused(attempt("dr.b", PASSWORDS["dr.b"], " --by dr.b"), ExitCode.USAGE, "another user")
    refused(attempt("dr.b", "a guess", " --by dr.a"), ExitCode.REFUSED, "does not open")
    refused(attempt("dr.b", None), ExitCode.USAGE, "CARESYNC_PASSWORD")
    assert json.loads(keys.read_text())["users"] == users
    assert failures(laptop) == 2  # the two wrong passwords tried, as any unlock counts them

    inproc(remove, db=laptop, user="dr.b").ok()
    inproc(remove, db=laptop, user="nurse.c").ok()
    refused(
        attempt("dr.a", PASSWORD),
        ExitCode.USAGE,
        "holds the last copy",
        "nobody could unlock the database any more",
    )
    assert key_users(laptop) == ["dr.a"]

    plain = tmp_path / "plain.db"
    inproc("user add --db {db} --org clinic-a --username dr.b", db=plain).ok()
    before = digest(plain)
    refused(inproc(remove, db=plain, user="dr.b"), ExitCode.DATABASE, "plain (unencrypted)")
    assert digest(plain) == before
    refused(inproc(remove, db=tmp_path / "none.db", user="dr.b"), ExitCode.NOT_FOUND, "no database")


def test_rotate_leaves_only_the_acting_users_copy_of_a_new_key(laptop: Path) -> None:
    before = records(laptop, "dr.a")
    old_key = unlock_laptop_key(laptop, PASSWORD, params=CHEAP).key

    done = inproc(
        "keys rotate --db {db} --username nurse.c --json",
        db=laptop,
        password=PASSWORDS["nurse.c"],
    ).ok()
    assert done.json() == {
        "database": str(laptop),
        "username": "nurse.c",
        "dropped": ["dr.a", "dr.b"],
        "key_file": f"{laptop}.keys",
    }
    assert not opens_with(laptop, old_key)
    assert key_users(laptop) == ["nurse.c"]
    assert records(laptop, "nurse.c") == before
    for user in ("dr.a", "dr.b"):
        refused(
            inproc("record list --db {db}", db=laptop, password=PASSWORDS[user]),
            ExitCode.REFUSED,
            "this password does not open the database",
        )
    assert NAME.encode() not in laptop.read_bytes()

    # In a real process, as text: who opens it now, and how the others get a copy again.
    text = sh("keys rotate --db {db}", db=laptop, password=PASSWORDS["nurse.c"]).ok().stdout
    assert "rewritten under a new key" in text
    assert "Only nurse.c's password opens it now" in text
    assert records(laptop, "nurse.c") == before


def test_rotate_names_who_lost_their_copy_and_how_they_get_one_again(laptop: Path) -> None:
    text = inproc("keys rotate --db {db}", db=laptop).ok().stdout
    assert "Only dr.a's password opens it now" in text
    assert "dr.b, nurse.c no longer can" in text
    assert "--unlock" in text
    assert "next online login on this laptop" in text


def test_rotate_refusals(laptop: Path, tmp_path: Path) -> None:
    data, users = digest(laptop), key_users(laptop)
    refused(
        inproc("keys rotate --db {db}", db=laptop, password="a guess"),
        ExitCode.REFUSED,
        "does not open",
    )
    assert failures(laptop) == 1
    refused(inproc("keys rotate --db {db}", db=laptop, password=None), ExitCode.USAGE, "password")
    assert (digest(laptop), key_users(laptop)) == (data, users)

    async def while_open() -> None:
        async with await Replica.open(
            laptop, create=False, username="dr.a", password=PASSWORD, kdf=CHEAP
        ):
            counted = failures(laptop)
            refused(sh("keys rotate --db {db}", db=laptop), ExitCode.DATABASE, "in use")
            assert failures(laptop) == counted  # refused before a password was tried

    asyncio.run(while_open())
    assert key_users(laptop) == users

    plain = tmp_path / "plain.db"
    inproc("user add --db {db} --org clinic-a --username dr.b", db=plain).ok()
    before = digest(plain)
    refused(inproc("keys rotate --db {db}", db=plain), ExitCode.DATABASE, "plain (unencrypted)")
    assert digest(plain) == before
    assert not key_file_for(plain).exists()
    refused(
        inproc("keys rotate --db {db}", db=tmp_path / "none.db"),
        ExitCode.NOT_FOUND,
        "no database",
    )


def test_after_a_rotation_a_colleague_gets_a_copy_again_at_an_online_login(
    clinic: Clinic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole story on a real server: a colleague's copy is dropped by a rotation, and
    their next online login on the laptop, opened with the rotating user's password, gives
    them a copy of the new key; a removed user's password stays refused."""
    sh("user add --db {db} --org clinic-a --username nurse.r", db=clinic.db, password="nurse-r-pw")
    sh("user add --db {db} --org clinic-a --username nurse.x", db=clinic.db, password="nurse-x-pw")
    laptop = clinic.enrol("rotated", encrypted=True)
    record_id = new_record(laptop)
    inproc("record set --db {db} {r} name {v}", db=laptop, r=record_id, v=NAME).ok()
    monkeypatch.setenv("CARESYNC_UNLOCK_PASSWORD", PASSWORD)
    for nurse, password in (("nurse.r", "nurse-r-pw"), ("nurse.x", "nurse-x-pw")):
        login = "sync --db {db} --username {u} --unlock"
        inproc(login, db=laptop, u=nurse, password=password).ok()
    monkeypatch.delenv("CARESYNC_UNLOCK_PASSWORD")
    assert key_users(laptop) == ["dr.a", "nurse.r", "nurse.x"]

    # nurse.x leaves: removed on nurse.r's word, then the key is rotated by nurse.r.
    inproc("keys remove-user nurse.x --db {db}", db=laptop, password="nurse-r-pw").ok()
    show = "record show --db {db} {r} --json"
    refused(
        inproc(show, db=laptop, r=record_id, password="nurse-x-pw"),
        ExitCode.REFUSED,
        "does not open",
    )
    done = inproc("keys rotate --db {db} --json", db=laptop, password="nurse-r-pw").ok().json()
    assert (done["username"], done["dropped"]) == ("nurse.r", ["dr.a"])
    refused(inproc(show, db=laptop, r=record_id), ExitCode.REFUSED, "does not open")

    # dr.a logs in online, the laptop opened with nurse.r's password: a copy again.
    monkeypatch.setenv("CARESYNC_UNLOCK_PASSWORD", "nurse-r-pw")
    inproc("sync --db {db} --username dr.a --unlock", db=laptop).ok()
    monkeypatch.delenv("CARESYNC_UNLOCK_PASSWORD")
    assert key_users(laptop) == ["dr.a", "nurse.r"]
    assert inproc(show, db=laptop, r=record_id).ok().json()["fields"]["name"] == NAME
    refused(
        inproc(show, db=laptop, r=record_id, password="nurse-x-pw"),
        ExitCode.REFUSED,
        "does not open",
    )
    assert status(laptop)["pending"] == 0  # it syncs as before: the same replica
