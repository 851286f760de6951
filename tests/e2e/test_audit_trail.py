"""The audit trail, end to end: a laptop records reads, writes, resolutions, logins and
failed logins in its hash chain, sends it to the server with its sync, and both chains
verify; a copy restored from an older one goes on as a new line, and nothing of the
lost copy's trail is dropped; a replica cannot send another's entries.

Real parts: a server on 127.0.0.1 and SQLite files.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from tests.e2e.live_helpers import (
    PASSWORD,
    enrolled,
    live,
    raw_session,
    start_server,
    until,
    watch,
)

from caresync.audit import GENESIS, AuditEntry, AuditEvent, link, verify_trail
from caresync.exceptions import AuthenticationError, RemoteProtocolError
from caresync.protocol import Error
from caresync.replica import Replica
from caresync.server import SyncServer
from caresync.storage._audit import MAX_LINES


def _actions(entries: list[AuditEntry]) -> list[tuple[str, str, str | None]]:
    return [(e.actor, e.action, e.record_id) for e in entries]


async def test_a_laptops_trail_reaches_the_server_and_verifies_on_both(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")  # dr.a enrolled it
    try:
        record_id = await laptop.create_record()
        await laptop.set(record_id, "birthDate", "1990-01-01")
        await laptop.record(record_id)
        with pytest.raises(AuthenticationError):
            await laptop.login_offline("dr.a", "not the password")
        await laptop.login_offline("dr.a", PASSWORD)
        await laptop.sync()

        own = await laptop.store.audit_entries()
        assert verify_trail(own).ok
        done = _actions(own)
        assert ("dr.a", "login", None) in done  # the enrolment's online login
        assert ("dr.a", "write", record_id) in done  # created, then set
        assert ("dr.a", "read", record_id) in done
        assert ("dr.a", "login-failed", None) in done
        assert all(e.replica_id == laptop.replica_id for e in own)

        held = await server.store.audit_entries(replica_id=laptop.replica_id)
        assert held == own  # every entry, in order, nothing added or changed
        everything = await server.store.audit_entries()
        verdict = verify_trail(everything)
        assert verdict.ok, verdict.reason
        # The server's own chain has the logins it accepted.
        server_own = await server.store.audit_entries(replica_id=server.server_id)
        assert ("dr.a", "login") in [(e.actor, e.action) for e in server_own]
        assert all(e.record_id is None for e in server_own)

        # A sync with nothing new to say sends nothing again; new reads go next time.
        await laptop.sync()
        await laptop.record(record_id)
        await laptop.sync()
        assert await server.store.audit_entries(replica_id=laptop.replica_id) == (
            await laptop.store.audit_entries()
        )
    finally:
        await laptop.close()
        await server.close()


async def test_a_live_laptop_sends_its_reads_as_they_happen(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        record_id = await laptop.create_record()
        signal = watch(laptop, server=server)
        async with live(laptop):
            await laptop.record(record_id)

            async def server_has_the_read() -> bool:
                held = await server.store.audit_entries(replica_id=laptop.replica_id)
                return ("dr.a", "read", record_id) in _actions(held)

            await until(server_has_the_read, signal)
    finally:
        await laptop.close()
        await server.close()


async def test_a_restored_copy_goes_on_as_a_new_line_and_nothing_is_dropped(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    path = tmp_path / "laptop.db"
    saved = tmp_path / "saved.db"
    try:
        record_id = await laptop.create_record()
        await laptop.sync()
        await laptop.close()
        await asyncio.to_thread(shutil.copyfile, path, saved)
        laptop = await Replica.open(path)
        await laptop.record(record_id)  # the lost copy's later reads reach the server
        await laptop.record(record_id)
        await laptop.sync()
        lost = await laptop.store.audit_entries()
        await laptop.close()

        await asyncio.to_thread(shutil.copyfile, saved, path)
        for suffix in ("-wal", "-shm"):
            await asyncio.to_thread(Path(f"{path}{suffix}").unlink, missing_ok=True)
        laptop = await Replica.open(path)
        await laptop.set(record_id, "birthDate", "1980-05-05")  # the restored copy's own
        await laptop.sync()

        held = await server.store.audit_entries(replica_id=laptop.replica_id)
        assert [e for e in held if e.line == 0] == lost  # the lost copy's whole chain
        restored_line = [e for e in held if e.line == 1]
        assert ("dr.a", "write", record_id) in _actions(restored_line)
        # The same entries as the restored copy's own chain, kept on the server's line 1.
        assert [replace(e, line=0) for e in restored_line] == [
            e for e in await laptop.store.audit_entries() if e.seq >= restored_line[0].seq
        ]
        verdict = verify_trail(await server.store.audit_entries())
        assert verdict.ok, verdict.reason
    finally:
        await laptop.close()
        await server.close()


async def test_a_replica_cannot_send_entries_in_another_replicas_name(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    other = await enrolled(tmp_path, server, "other")
    try:
        forged = link(
            AuditEvent("dr.a", "read", "some-record"),
            replica_id=other.replica_id,
            seq=1,
            at_ms=1,
            prev_hash=GENESIS,
        )
        async with raw_session(server, laptop) as session:  # what a modified client sends
            session.protocol.send_audit([forged])
            [reply] = await session.round_trip()
            assert isinstance(reply, Error)
            assert not reply.fatal
            assert f"only {laptop.replica_id}'s own entries" in reply.message
            # A chain that starts mid-way continues nothing the server holds.
            orphan = link(
                AuditEvent("dr.a", "read", "some-record"),
                replica_id=laptop.replica_id,
                seq=500,
                at_ms=1,
                prev_hash=bytes(range(32)),
            )
            session.protocol.send_audit([orphan])
            [reply] = await session.round_trip()
            assert isinstance(reply, Error)
            assert "send the entries before it" in reply.message
        assert await server.store.audit_entries(record_id="some-record") == []
    finally:
        await laptop.close()
        await other.close()
        await server.close()


async def test_a_laptop_cannot_enrol_under_the_servers_own_id(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    laptop = await Replica.open(tmp_path / "impostor.db")
    try:
        laptop.identity = replace(laptop.identity, replica_id=server.server_id)
        with pytest.raises(RemoteProtocolError, match="the server assigned replica id"):
            await laptop.enrol(
                server.url, username="dr.a", password=PASSWORD, organisation="clinic-a"
            )
        assert await server.store.get_replica(server.server_id) is None
    finally:
        await laptop.close()
        await server.close()


async def test_refused_audit_entries_do_not_stop_the_records_sync(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        # The server keeps no more lines of this laptop's chain (copies restored often):
        # line 0 came with the enrolment; the others fill the rest.
        for n in range(MAX_LINES - 1):
            await server.store.receive_audit(
                laptop.replica_id,
                [
                    link(
                        AuditEvent(f"dr.{n}", "read", "r"),
                        replica_id=laptop.replica_id,
                        seq=1,
                        at_ms=1,
                        prev_hash=GENESIS,
                    )
                ],
            )
        path = tmp_path / "laptop.db"
        await laptop.close()
        await asyncio.to_thread(shutil.copyfile, path, tmp_path / "saved.db")
        laptop = await Replica.open(path)
        await laptop.conflicts()  # an entry the copy will not have
        await laptop.sync()  # the server's line 0 goes further than the copy
        await laptop.close()
        await asyncio.to_thread(shutil.copyfile, tmp_path / "saved.db", path)
        for suffix in ("-wal", "-shm"):
            await asyncio.to_thread(Path(f"{path}{suffix}").unlink, missing_ok=True)
        laptop = await Replica.open(path)  # a restored copy: its entries need a new line
        record_id = await laptop.create_record()
        await laptop.set(record_id, "birthDate", "1990-01-01")
        report = await laptop.sync()
        assert report.uploaded == 2  # the records went up all the same
        status = await laptop.status()
        assert status.pending == 0
        assert status.audit_refused is not None
        assert "no more are kept" in status.audit_refused
    finally:
        await laptop.close()
        await server.close()


async def test_a_laptop_and_a_server_both_restored_from_older_copies_lose_no_entry(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    path = tmp_path / "laptop.db"
    try:
        record_id = await laptop.create_record()
        await laptop.sync()
        await laptop.close()
        await asyncio.to_thread(shutil.copyfile, path, tmp_path / "laptop-saved.db")
        laptop = await Replica.open(path)
        await laptop.record(record_id)
        await laptop.sync()
        await server.store.backup(tmp_path / "server-saved.db")  # before the restored line
        await laptop.close()
        await asyncio.to_thread(shutil.copyfile, tmp_path / "laptop-saved.db", path)
        for suffix in ("-wal", "-shm"):
            await asyncio.to_thread(Path(f"{path}{suffix}").unlink, missing_ok=True)
        laptop = await Replica.open(path)
        await laptop.record(record_id)
        await laptop.sync()  # the server keeps the restored copy's entries as line 1
        await server.close()

        server = await SyncServer.open(tmp_path / "server-saved.db")  # which lacks line 1
        await server.serve("127.0.0.1", 0)
        await laptop.record(record_id)
        await laptop.sync(url=server.url)
        assert (await laptop.status()).audit_refused is None
        own = await laptop.store.audit_entries()
        held = [
            replace(e, line=0)
            for e in await server.store.audit_entries(replica_id=laptop.replica_id)
        ]
        assert all(entry in held for entry in own)  # every entry of this copy is there
        assert verify_trail(await server.store.audit_entries()).ok
    finally:
        await laptop.close()
        await server.close()
