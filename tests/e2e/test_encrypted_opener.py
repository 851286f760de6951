"""On an encrypted laptop, the password that opens it says who is at the keyboard: a
login kept in the database carries over to an opening only when that password opens
the logged-in user's copy of the key too.

The defect these tests hold: a login survives closing the program, and was taken over
by whoever opened the laptop next. A colleague who opened it with their *own* password
within the first user's 30 minutes wrote entries in the first user's name (the server
takes them: that account logged in on this laptop), and what they read was recorded as
read by the first user.

Real parts: a server on 127.0.0.1 and encrypted SQLite files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server

from caresync.exceptions import NotLoggedInError
from caresync.replica import Replica
from caresync.storage import KdfParams

CHEAP = KdfParams(time_cost=1, memory_kib=8, parallelism=1)
NURSE_PASSWORD = "nurse's own password"


async def _shared_laptop(tmp_path: Path) -> tuple[Path, str]:
    """An encrypted laptop dr.a enrolled, where nurse.c (her own password) and dr.b (the
    same password as dr.a's) logged in online once; dr.a is logged in again at the end."""
    server = await start_server(tmp_path)
    await server.add_user("clinic-a", "nurse.c", NURSE_PASSWORD)
    laptop = await enrolled(
        tmp_path, server, "laptop", username="dr.a", password=PASSWORD, kdf=CHEAP
    )
    try:
        assert laptop.encrypted
        record_id = await laptop.create_record()
        await laptop.sync(username="nurse.c", password=NURSE_PASSWORD, organisation="clinic-a")
        await laptop.sync(username="dr.b", password=PASSWORD, organisation="clinic-a")
        await laptop.login_offline("dr.a", PASSWORD)  # dr.a at the keyboard again
        assert laptop.user == "dr.a"
    finally:
        await laptop.close()
        await server.close()
    return tmp_path / "laptop.db", record_id


def _actors(entries: list[object], action: str) -> list[str]:
    return [e.actor for e in entries if e.action == action]  # type: ignore[attr-defined]


async def test_a_colleagues_password_does_not_take_over_the_login_kept_here(
    tmp_path: Path,
) -> None:
    db, record_id = await _shared_laptop(tmp_path)
    # nurse.c opens the laptop with her own password while dr.a's login is current.
    laptop = await Replica.open(db, password=NURSE_PASSWORD, kdf=CHEAP)
    try:
        assert laptop.logins.database_key is not None
        assert laptop.logins.database_key.unlocked_by == "nurse.c"
        assert laptop.user is None  # dr.a's login is not hers
        before = (await laptop.status()).pending
        with pytest.raises(NotLoggedInError, match=r"nurse\.c's password opened"):
            await laptop.set(record_id, "weightKg", 70)
        assert (await laptop.status()).pending == before  # nothing written as dr.a

        # What she reads is recorded as read by her, whose password opened it.
        await laptop.record(record_id)
        assert _actors(await laptop.store.audit_entries(), "read")[-1] == "nurse.c"

        # Logged in, she writes as herself.
        await laptop.login_offline("nurse.c", NURSE_PASSWORD)
        assert (await laptop.set(record_id, "weightKg", 70)).author == "nurse.c"
    finally:
        await laptop.close()

    # Her own password again (no name given): her login carries over.
    laptop = await Replica.open(db, password=NURSE_PASSWORD, kdf=CHEAP)
    try:
        assert laptop.user == "nurse.c"
    finally:
        await laptop.close()
    # dr.a's password: nurse.c's login is not dr.a's.
    laptop = await Replica.open(db, username="dr.a", password=PASSWORD, kdf=CHEAP)
    try:
        assert laptop.user is None
        with pytest.raises(NotLoggedInError, match=r"log in as dr\.a"):
            await laptop.create_record()
    finally:
        await laptop.close()


async def test_a_login_carries_over_when_the_password_opens_that_users_copy(
    tmp_path: Path,
) -> None:
    db, record_id = await _shared_laptop(tmp_path)
    # dr.b and dr.a share a password: opened with it, the login kept (dr.a's) stands,
    # whichever of the two copies opened the key first.
    laptop = await Replica.open(db, username="dr.b", password=PASSWORD, kdf=CHEAP)
    try:
        assert laptop.logins.database_key is not None
        assert laptop.logins.database_key.unlocked_by == "dr.b"
        assert laptop.user == "dr.a"
        assert (await laptop.set(record_id, "weightKg", 75)).author == "dr.a"
    finally:
        await laptop.close()
