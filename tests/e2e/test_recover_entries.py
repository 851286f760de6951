"""Entries of a laptop lost together with the server's data come back from a colleague's
laptop database, on the operator's word (``recover_entries``, ``caresync recover``).

The story: after the server's last backup, laptop L wrote and synced (acknowledged);
colleague C pulled L's entries. The server's disk died and it was restored from the
backup; L was lost too. C's own sync sends back only what C wrote (a server takes a
laptop's entries only from that laptop), so before this, L's acknowledged entries lived
on C alone and never reached the server or any laptop enrolled after.

Real parts: a server on an SQLite file served on 127.0.0.1, its backup by ``caresync
backup``, the restore as docs/operations.md does it, laptops on SQLite files.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.cli.clitools import Result, run_main
from tests.e2e.live_helpers import PASSWORD, enrolled
from tests.e2e.restore_helpers import back_up, port_of, put_back, serve, values

from caresync.exceptions import InvalidInputError
from caresync.records import AdmissionLimits
from caresync.recovery import recover_entries
from caresync.replica import Replica
from caresync.server import SyncServer

NOTE = "long history of the presenting complaint " * 40


async def _lost_after_the_backup(
    tmp_path: Path,
) -> tuple[SyncServer, Replica, str, str, str, str]:
    """A restored server; C (open) pulled what L (closed: lost) wrote after the backup.
    Returns the server, C, L's replica id, and the charts: one from before the backup
    that L added to, one L made after it, one L wrote a long note on."""
    path, saved = tmp_path / "server.db", tmp_path / "backup.db"
    server = await serve(path)
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    await server.add_user("clinic-a", "dr.b", PASSWORD)
    port = port_of(server)
    lost = await enrolled(tmp_path, server, "lost", user="dr.a")
    colleague = await enrolled(tmp_path, server, "colleague", user="dr.b")
    chart = await colleague.create_record()
    await colleague.set(chart, "name", "Awa Diop", author="dr.b")
    await colleague.sync()
    await lost.sync()
    await back_up(path, saved)

    await lost.set(chart, "birthDate", "1990-04-12", author="dr.a")
    second = await lost.create_record()
    await lost.set(second, "name", "Moussa Sarr", author="dr.a")
    noted = await lost.create_record()
    await lost.set(noted, "note", NOTE, author="dr.a")
    await lost.sync()
    lost_id = lost.replica_id
    await lost.close()  # the laptop is gone
    await colleague.sync()

    await server.close()
    await put_back(saved, path)
    server = await serve(path, port)
    assert (await colleague.sync()).server_went_back  # it read past the backup
    return server, colleague, lost_id, chart, second, noted


async def test_a_lost_laptops_entries_come_back_from_a_colleagues_database(
    tmp_path: Path,
) -> None:
    server, colleague, lost_id, chart, second, noted = await _lost_after_the_backup(tmp_path)
    fresh: Replica | None = None
    try:
        # The loss this closes: the colleague sent back only its own entries.
        assert await server.store.state_vectors([second]) == {}
        report = await server.recover_entries(colleague.store, vouched_by="os:admin")
        assert report.records_changed == 3
        assert set(report.admitted) == {lost_id}
        assert report.refused == ()
        assert report.unattributed == ()

        fresh = await enrolled(tmp_path, server, "fresh", user="dr.b")
        assert await values(fresh, chart, "name", "birthDate") == {
            "name": "Awa Diop",
            "birthDate": "1990-04-12",
        }
        assert await values(fresh, second, "name") == {"name": "Moussa Sarr"}
        [written] = (await fresh.record(chart, audited=False)).history("birthDate")
        assert (written.replica, written.author) == (lost_id, "dr.a")  # as L wrote it

        again = await server.recover_entries(colleague.store, vouched_by="os:admin")
        assert (again.admitted, again.records_changed) == ({}, 0)  # nothing twice
        trail = await server.store.audit_entries(
            replica_id=server.server_id, after_seq=0, limit=10_000
        )
        imported = {(e.actor, e.record_id) for e in trail if e.action == "import"}
        assert imported == {("os:admin", chart), ("os:admin", second), ("os:admin", noted)}
    finally:
        if fresh is not None:
            await fresh.close()
        await colleague.close()
        await server.close()


async def test_what_the_server_refuses_keeps_out_only_its_own_record(tmp_path: Path) -> None:
    server, colleague, lost_id, chart, second, noted = await _lost_after_the_backup(tmp_path)
    try:
        server.admission = AdmissionLimits(max_revision_length=len(NOTE) // 2)
        report = await server.recover_entries(colleague.store, vouched_by="os:admin")
        assert [(rid, replica) for rid, replica, _why in report.refused] == [(noted, lost_id)]
        assert "update refused" in report.refused[0][2]
        assert "characters; the limit is" in report.refused[0][2]
        assert report.records_changed == 2
        assert await server.store.state_vectors([noted]) == {}  # nothing of it went in
        held = await server.store.state_vectors([chart, second])
        assert set(held) == {chart, second}
    finally:
        await colleague.close()
        await server.close()


async def test_a_nameless_operator_is_refused_before_any_record(tmp_path: Path) -> None:
    """Before, an empty ``vouched_by`` was refused by each admission in turn, and the
    report said every record was refused."""
    server, colleague, _lost_id, _chart, second, _noted = await _lost_after_the_backup(tmp_path)
    try:
        with pytest.raises(InvalidInputError, match="vouched_by"):
            await server.recover_entries(colleague.store, vouched_by="")
        assert await server.store.state_vectors([second]) == {}
    finally:
        await colleague.close()
        await server.close()


async def test_a_laptop_of_another_server_is_refused(tmp_path: Path) -> None:
    server, colleague, _lost_id, _chart, _second, _noted = await _lost_after_the_backup(tmp_path)
    other = await SyncServer.open(tmp_path / "other.db")
    try:
        with pytest.raises(InvalidInputError, match="enrolled to server"):
            await recover_entries(other, colleague.store, vouched_by="os:admin")
        assert await other.store.feed_head() == 0
    finally:
        await other.close()
        await colleague.close()
        await server.close()


async def test_caresync_recover_on_the_stopped_server_from_an_encrypted_copy(
    tmp_path: Path,
) -> None:
    server, colleague, lost_id, chart, second, _noted = await _lost_after_the_backup(tmp_path)
    path, copy = tmp_path / "server.db", tmp_path / "colleague-copy.db"
    port = port_of(server)
    fresh: Replica | None = None
    try:
        await back_up(tmp_path / "colleague.db", copy)
        # As a laptop enrolled by `caresync enrol` is: encrypted (the password opens it).
        assert (await _cli("encrypt", "--db", copy, "--json")).code == 0
        head = await asyncio.to_thread(copy.read_bytes)
        assert not head.startswith(b"SQLite format 3")
        running = await _cli("recover", "--db", path, "--from", copy, "--json")
        assert running.code != 0  # the server holds its database: one writer
        assert await server.store.state_vectors([second]) == {}
        await server.close()
        result = await _cli("recover", "--db", path, "--from", copy, "--json")
        assert result.code == 0, result.stderr
        assert result.json()["records_changed"] == 3
        assert list(result.json()["admitted"]) == [lost_id]
        server = await serve(path, port)
        fresh = await enrolled(tmp_path, server, "fresh", user="dr.b")
        assert await values(fresh, chart, "birthDate") == {"birthDate": "1990-04-12"}
        assert await values(fresh, second, "name") == {"name": "Moussa Sarr"}
    finally:
        if fresh is not None:
            await fresh.close()
        await colleague.close()
        await server.close()


async def _cli(*args: str | Path) -> Result:
    # The command line in this process, on a thread: it runs its own event loop.
    return await asyncio.to_thread(run_main, *args)
