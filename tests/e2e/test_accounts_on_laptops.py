"""Laptops learn of disabled accounts and changed passwords (protocol version 16).

The defect these tests hold: a laptop kept an offline login (and, encrypted, a copy of its
database key) for every user who ever logged in online there, and learnt nothing when the
server disabled that account or changed its password. A departed nurse's password still
opened the laptop and logged her in offline, and her entries synced through a colleague's
session; a leaked, changed password kept working offline on every laptop.

Now the server tells, at every login, whether each account of the organisation is
disabled and a mark of its password; the laptop ends the offline logins the server no
longer allows, and nothing written is lost: what those accounts wrote still syncs.

Real parts: a server on 127.0.0.1 (SQLite), laptops in plain and encrypted SQLite files.
"""

from __future__ import annotations

import asyncio
import functools
import re
from pathlib import Path
from typing import Any

import pytest
from tests.cli.clitools import inproc
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server

import caresync.replication.session
import caresync.server
from caresync.cli.errors import ExitCode
from caresync.exceptions import AuthenticationError, WrongPasswordError
from caresync.protocol import ServerProtocol
from caresync.records import Record
from caresync.replica import Replica
from caresync.replication import meta
from caresync.server import SyncServer
from caresync.storage import KdfParams, KeyRing, key_file_for

CHEAP = KdfParams(time_cost=1, memory_kib=8, parallelism=1)
NURSE = "nurse.c"
NURSE_PASSWORD = "the nurse's own password"
NEW_PASSWORD = "a new password after the leak"
ORG = "clinic-a"
V15 = tuple(range(4, 16))


async def _authors_on_server(server: SyncServer, record_id: str) -> list[str]:
    stored = await server.store.load(record_id)
    assert stored is not None
    record = Record.from_update(record_id, stored, replica="reader")
    return sorted({rev.author for rev in record.revisions()})


async def _nurse_writes_offline(laptop: Replica) -> str:
    """The nurse logs in online once, then dr.a logs in online (the session kept is
    dr.a's), then the nurse logs in offline and writes an entry that waits in the outbox.
    Returns the record's id."""
    await laptop.sync(username=NURSE, password=NURSE_PASSWORD, organisation=ORG)
    await laptop.sync(username="dr.a", password=PASSWORD, organisation=ORG)
    await laptop.login_offline(NURSE, NURSE_PASSWORD)
    record_id = await laptop.create_record()
    await laptop.set(record_id, "birthDate", "1980-02-03")
    assert (await laptop.status()).pending > 0
    return record_id


async def test_a_disabled_account_no_longer_logs_in_offline_and_its_work_still_syncs(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    await server.add_user(ORG, NURSE, NURSE_PASSWORD)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        record_id = await _nurse_writes_offline(laptop)
        assert laptop.user == NURSE
        await server.disable_user(ORG, NURSE)

        # A colleague's sync brings the news (a password login: the session kept here
        # is resumed only by its own account, and the nurse is at the laptop).
        report = await laptop.sync(username="dr.a", password=PASSWORD, organisation=ORG)
        assert report.uploaded > 0
        status = await laptop.status()
        assert status.pending == 0  # the nurse's entry reached the server
        assert await _authors_on_server(server, record_id) == [NURSE]
        assert laptop.user == "dr.a"  # the colleague's login; the nurse's is over
        assert status.offline_logins_ended == {NURSE: "disabled on the server"}
        with pytest.raises(AuthenticationError, match="disabled on the server"):
            await laptop.login_offline(NURSE, NURSE_PASSWORD)
        await laptop.login_offline("dr.a", PASSWORD)  # a colleague is not touched
        # What she wrote here may still be imported here (an export put back after a
        # restore): she logged in on this laptop, as the server knows.
        assert await laptop.logins.logged_in_here(NURSE)
        ended = [e for e in await laptop.store.audit_entries() if e.detail and "ended" in e.detail]
        assert [(e.actor, e.action, e.detail) for e in ended] == [
            (NURSE, "logout", "offline login ended: disabled on the server")
        ]

        # Enabled again: an online login gives the offline login back.
        await server.enable_user(ORG, NURSE)
        await laptop.sync()
        assert (await laptop.status()).offline_logins_ended == {
            NURSE: "disabled on the server, then enabled again: log in online"
        }
        with pytest.raises(AuthenticationError, match="enabled again: log in online once"):
            await laptop.login_offline(NURSE, NURSE_PASSWORD)
        await laptop.sync(username=NURSE, password=NURSE_PASSWORD, organisation=ORG)
        await laptop.logout()
        await laptop.login_offline(NURSE, NURSE_PASSWORD)
        assert laptop.user == NURSE
        assert (await laptop.status()).offline_logins_ended == {}
    finally:
        await laptop.close()
        await server.close()


async def test_a_changed_password_ends_the_offline_login_until_an_online_one(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    await server.add_user(ORG, NURSE, NURSE_PASSWORD)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        await _nurse_writes_offline(laptop)
        await server.set_password(ORG, NURSE, NEW_PASSWORD)
        # A colleague's sync.
        await laptop.sync(username="dr.a", password=PASSWORD, organisation=ORG)
        assert (await laptop.status()).pending == 0  # written before: still synced
        assert laptop.user == "dr.a"
        assert (await laptop.status()).offline_logins_ended == {
            NURSE: "password changed on the server: log in online"
        }
        for password in (NURSE_PASSWORD, NEW_PASSWORD):  # neither: she logs in online
            with pytest.raises(AuthenticationError, match="password was changed on the server"):
                await laptop.login_offline(NURSE, password)
        await laptop.login_offline("dr.a", PASSWORD)

        await laptop.sync(username=NURSE, password=NEW_PASSWORD, organisation=ORG)
        await laptop.logout()
        with pytest.raises(AuthenticationError, match="wrong password"):
            await laptop.login_offline(NURSE, NURSE_PASSWORD)
        await laptop.login_offline(NURSE, NEW_PASSWORD)
        assert (await laptop.status()).offline_logins_ended == {}
        # Another sync with nothing new changes nothing: the mark recorded is the new one.
        await laptop.sync()
        await laptop.logout()
        await laptop.login_offline(NURSE, NEW_PASSWORD)
    finally:
        await laptop.close()
        await server.close()


def test_caresync_status_and_login_say_why_an_offline_login_ended(tmp_path: Path) -> None:
    async def disable_the_nurse() -> None:
        server = await start_server(tmp_path)
        await server.add_user(ORG, NURSE, NURSE_PASSWORD)
        laptop = await enrolled(tmp_path, server, "laptop")
        try:
            await _nurse_writes_offline(laptop)
            await server.disable_user(ORG, NURSE)
            await server.set_password(ORG, "dr.b", NEW_PASSWORD)  # never logged in there
            await laptop.sync(username="dr.a", password=PASSWORD, organisation=ORG)
        finally:
            await laptop.close()
            await server.close()

    asyncio.run(disable_the_nurse())
    db = tmp_path / "laptop.db"
    status = inproc("status --db {db} --json", db=db).ok().json()
    assert status["offline_logins_ended"] == {NURSE: "disabled on the server"}
    assert status["pending"] == 0
    shown = inproc("status --db {db}", db=db).ok().stdout
    assert re.search(rf"no offline login +{NURSE}: disabled on the server", shown)
    refused = inproc(
        "login --db {db} --username {user}", db=db, user=NURSE, password=NURSE_PASSWORD
    )
    assert refused.code == ExitCode.REFUSED
    assert f"{NURSE}'s account is disabled on the server" in refused.error_line()
    assert inproc("login --db {db} --username dr.a --json", db=db).ok().json()["username"] == "dr.a"


async def _encrypted_shared_laptop(tmp_path: Path, server: SyncServer) -> Path:
    """An encrypted laptop enrolled by dr.a, where the nurse and dr.b logged in online."""
    laptop = await enrolled(
        tmp_path, server, "laptop", username="dr.a", password=PASSWORD, kdf=CHEAP
    )
    try:
        assert laptop.encrypted
        await laptop.sync(username=NURSE, password=NURSE_PASSWORD, organisation=ORG)
        await laptop.sync(username="dr.b", password=PASSWORD, organisation=ORG)
        await laptop.sync(username="dr.a", password=PASSWORD, organisation=ORG)
    finally:
        await laptop.close()
    db = tmp_path / "laptop.db"
    assert KeyRing.load(key_file_for(db)).users() == ["dr.a", "dr.b", NURSE]
    return db


async def test_an_encrypted_laptop_drops_the_key_copies_of_disabled_and_changed_accounts(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    await server.add_user(ORG, NURSE, NURSE_PASSWORD)
    db = await _encrypted_shared_laptop(tmp_path, server)
    await server.disable_user(ORG, NURSE)
    await server.set_password(ORG, "dr.b", NEW_PASSWORD)
    laptop = await Replica.open(db, username="dr.a", password=PASSWORD, kdf=CHEAP)
    try:
        await laptop.sync()
        assert KeyRing.load(key_file_for(db)).users() == ["dr.a"]
        assert (await laptop.status()).offline_logins_ended == {
            "dr.b": "password changed on the server: log in online",
            NURSE: "disabled on the server",
        }
        details = sorted(
            (e.actor, e.detail)
            for e in await laptop.store.audit_entries()
            if e.detail and e.detail.startswith("offline login ended")
        )
        assert details == [
            (
                "dr.b",
                "offline login ended: password changed on the server; copy of the key removed",
            ),
            (NURSE, "offline login ended: disabled on the server; copy of the key removed"),
        ]
    finally:
        await laptop.close()
    for user, password in ((NURSE, NURSE_PASSWORD), ("dr.b", PASSWORD)):
        with pytest.raises(WrongPasswordError):
            await Replica.open(db, username=user, password=password, kdf=CHEAP)
    # dr.b's remedy: an online login, with a password that opens the laptop now.
    laptop = await Replica.open(db, username="dr.a", password=PASSWORD, kdf=CHEAP)
    try:
        await laptop.sync(username="dr.b", password=NEW_PASSWORD, organisation=ORG)
    finally:
        await laptop.close()
    laptop = await Replica.open(db, username="dr.b", password=NEW_PASSWORD, kdf=CHEAP)
    await laptop.close()
    await server.close()


async def test_the_copy_that_opened_the_laptop_is_kept_and_rewrapped_at_the_online_login(
    tmp_path: Path,
) -> None:
    """A single user whose password changed elsewhere opens the laptop with the old one,
    logs in online with the new one, and from then on only the new one opens it."""
    server = await start_server(tmp_path)
    laptop = await enrolled(
        tmp_path, server, "laptop", username="dr.a", password=PASSWORD, kdf=CHEAP
    )
    await laptop.close()
    db = tmp_path / "laptop.db"
    await server.set_password(ORG, "dr.a", NEW_PASSWORD)
    await server.add_user(ORG, NURSE, NURSE_PASSWORD)
    laptop = await Replica.open(db, username="dr.a", password=PASSWORD, kdf=CHEAP)
    try:
        # A colleague's online login first: dr.a's offline login ends, her copy stays.
        await laptop.sync(username=NURSE, password=NURSE_PASSWORD, organisation=ORG)
        assert KeyRing.load(key_file_for(db)).users() == ["dr.a", NURSE]
        [detail] = [
            e.detail
            for e in await laptop.store.audit_entries()
            if e.detail and e.detail.startswith("offline login ended")
        ]
        assert detail.endswith("copy of the key kept: their password opened this laptop now")
        with pytest.raises(AuthenticationError, match="password was changed on the server"):
            await laptop.login_offline("dr.a", PASSWORD)
        await laptop.sync(username="dr.a", password=NEW_PASSWORD, organisation=ORG)
    finally:
        await laptop.close()
    with pytest.raises(WrongPasswordError):
        await Replica.open(db, username="dr.a", password=PASSWORD, kdf=CHEAP)
    laptop = await Replica.open(db, username="dr.a", password=NEW_PASSWORD, kdf=CHEAP)
    try:
        await laptop.logout()
        await laptop.login_offline("dr.a", NEW_PASSWORD)
    finally:
        await laptop.close()
        await server.close()


async def test_a_copy_kept_for_its_opener_goes_at_a_login_while_another_opened_it(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    await server.add_user(ORG, NURSE, NURSE_PASSWORD)
    laptop = await enrolled(
        tmp_path, server, "laptop", username="dr.a", password=PASSWORD, kdf=CHEAP
    )
    try:
        await laptop.sync(username=NURSE, password=NURSE_PASSWORD, organisation=ORG)
        await laptop.sync(username="dr.a", password=PASSWORD, organisation=ORG)
    finally:
        await laptop.close()
    db = tmp_path / "laptop.db"
    await server.disable_user(ORG, NURSE)
    # The nurse opens the laptop; dr.a's sync ends her offline login, her copy stays.
    laptop = await Replica.open(db, username=NURSE, password=NURSE_PASSWORD, kdf=CHEAP)
    try:
        await laptop.sync(username="dr.a", password=PASSWORD, organisation=ORG)
        assert KeyRing.load(key_file_for(db)).users() == ["dr.a", NURSE]
        with pytest.raises(AuthenticationError, match="disabled on the server"):
            await laptop.login_offline(NURSE, NURSE_PASSWORD)
    finally:
        await laptop.close()
    # dr.a opens it next: the next login takes the nurse's copy away, once.
    laptop = await Replica.open(db, username="dr.a", password=PASSWORD, kdf=CHEAP)
    try:
        await laptop.sync()
        assert KeyRing.load(key_file_for(db)).users() == ["dr.a"]
        await laptop.sync()
        details = [
            (e.actor, e.detail)
            for e in await laptop.store.audit_entries()
            if e.detail and e.detail.startswith("offline login ended")
        ]
        assert details == [
            (
                NURSE,
                "offline login ended: disabled on the server; copy of the key kept: "
                "their password opened this laptop now",
            ),
            (NURSE, "offline login ended: disabled on the server; copy of the key removed"),
        ]
    finally:
        await laptop.close()
        await server.close()
    with pytest.raises(WrongPasswordError):
        await Replica.open(db, username=NURSE, password=NURSE_PASSWORD, kdf=CHEAP)


async def test_a_resumed_login_reads_the_standings_in_its_one_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync with nothing to do costs the server no store call more than before: the
    standings come with the resumed login's other reads (``read_resume``)."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    calls: list[str] = []
    for name in ("account_standings", "organisation_accounts"):
        original = getattr(server.store, name)

        async def counted(*args: object, _original: Any = original, _name: str = name) -> Any:
            calls.append(_name)
            return await _original(*args)

        monkeypatch.setattr(server.store, name, counted)
    try:
        await server.disable_user(ORG, "dr.b")
        await laptop.sync()
        assert calls == []
        await laptop.sync(username="dr.a", password=PASSWORD, organisation=ORG)
        assert calls == ["account_standings"]  # a password login reads them once
    finally:
        await laptop.close()
        await server.close()


async def test_a_sync_with_nothing_to_do_reads_and_writes_no_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The marks are read when the laptop opens and written only when they change: a
    sync with nothing new hands the laptop's store no job for them."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    await laptop.sync(username="dr.b", password=PASSWORD, organisation=ORG)
    seen: list[tuple[str, str]] = []
    for name in ("get_meta", "set_meta"):
        original = getattr(laptop.store, name)

        async def counted(
            key: str, *rest: Any, _original: Any = original, _name: str = name
        ) -> Any:
            if key == meta.ACCOUNT_MARKS or key.startswith(meta.OFFLINE_LOGIN_PREFIX):
                seen.append((_name, key))
            return await _original(key, *rest)

        monkeypatch.setattr(laptop.store, name, counted)
    try:
        await laptop.sync()
        assert seen == []
        await server.disable_user(ORG, "dr.b")
        await laptop.sync(username="dr.a", password=PASSWORD, organisation=ORG)
        assert ("set_meta", meta.ACCOUNT_MARKS) in seen
        assert ("set_meta", meta.OFFLINE_LOGIN_PREFIX + "dr.b") in seen
        assert ("get_meta", meta.ACCOUNT_MARKS) not in seen
    finally:
        await laptop.close()
        await server.close()


async def test_a_version_15_laptop_with_this_server_works_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(caresync.replication.session, "_PROTOCOL_VERSIONS", V15)
    server = await start_server(tmp_path)
    await server.add_user(ORG, NURSE, NURSE_PASSWORD)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        record_id = await _nurse_writes_offline(laptop)
        await server.disable_user(ORG, NURSE)
        await laptop.sync(username="dr.a", password=PASSWORD, organisation=ORG)
        assert await _authors_on_server(server, record_id) == [NURSE]
        assert NURSE in laptop.logins.names  # the names still come (version 6)
        # As before: this laptop is told nothing of the account, and keeps its login.
        await laptop.logout()
        await laptop.login_offline(NURSE, NURSE_PASSWORD)
        assert (await laptop.status()).offline_logins_ended == {}
    finally:
        await laptop.close()
        await server.close()


async def test_a_version_15_server_then_an_upgraded_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a server of version 15 a laptop works as before; once the server speaks
    version 16, the offline logins kept from before are judged too (marks taken as
    they are at the first such login, so a password changed after it is noticed)."""
    older = functools.partial(ServerProtocol, protocol_versions=tuple(range(1, 16)))
    monkeypatch.setattr(caresync.server, "ServerProtocol", older)
    server = await start_server(tmp_path)
    await server.add_user(ORG, NURSE, NURSE_PASSWORD)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        await _nurse_writes_offline(laptop)
        await server.disable_user(ORG, "dr.b")  # never logged in here: nothing to end
        report = await laptop.sync(username="dr.a", password=PASSWORD, organisation=ORG)
        assert report.uploaded > 0
        await laptop.logout()
        await laptop.login_offline(NURSE, NURSE_PASSWORD)
        assert await laptop.store.get_meta("accounts.marks") is None

        monkeypatch.undo()  # the server is upgraded: version 16 from the next connection
        monkeypatch.setattr(caresync.server, "ServerProtocol", ServerProtocol)
        # Takes the marks of dr.a and the nurse as they are.
        await laptop.sync(username="dr.a", password=PASSWORD, organisation=ORG)
        await laptop.logout()
        await laptop.login_offline(NURSE, NURSE_PASSWORD)
        await server.set_password(ORG, NURSE, NEW_PASSWORD)
        await laptop.sync(username="dr.a", password=PASSWORD, organisation=ORG)
        with pytest.raises(AuthenticationError, match="password was changed on the server"):
            await laptop.login_offline(NURSE, NURSE_PASSWORD)
        await laptop.login_offline("dr.a", PASSWORD)
    finally:
        await laptop.close()
        await server.close()
