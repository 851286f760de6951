"""Review of ``recover_entries`` (``caresync recover``): what a tampered colleague laptop
database can make a restored server admit, and whether the report and the audit trail
tell the operator the truth.

The entries the server lacks are written straight into the colleague laptop's store (as
the server's feed would have given them, or as someone editing the file could), naming
the replica the attack needs: the recovery reads them the same way whichever it was.
Real parts: a server on an SQLite file served on 127.0.0.1, laptops on SQLite files.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from tests.cli.clitools import Result, run_main
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server
from tests.postgres import fresh_schema

from caresync.exceptions import RefusedUpdateError
from caresync.protocol.messages import DEFAULT_MAX_FRAME_BYTES
from caresync.records import Record
from caresync.records.admission import AdmissionLimits
from caresync.records.clock import HybridLogicalClock
from caresync.replica import Replica
from caresync.server import SyncServer

HOUR_MS = 3_600_000


@dataclass
class Clinic:
    server: SyncServer
    colleague: Replica
    lost_id: str


@pytest.fixture
async def clinic(tmp_path: Path) -> AsyncIterator[Clinic]:
    """A server; the colleague's laptop (open); the lost laptop's id (closed: gone)."""
    server = await start_server(tmp_path)
    colleague = await enrolled(tmp_path, server, "colleague", user="dr.b")
    lost = await enrolled(tmp_path, server, "lost", user="dr.a")
    lost_id = lost.replica_id
    await lost.close()
    try:
        yield Clinic(server, colleague, lost_id)
    finally:
        await colleague.close()
        await server.close()


async def _chart(
    laptop: Replica, replica: str, name: str, *, author: str = "dr.a", at_ms: int | None = None
) -> str:
    """A clinic-a chart in ``laptop``'s database whose revision names ``replica`` (dated
    ``at_ms``, else now), written as the server's feed would have left it there."""
    clock = HybridLogicalClock(lambda: at_ms) if at_ms is not None else None
    record = Record.create(replica=replica, clock=clock)
    record.set("name", name, author=author)
    await laptop.store.write_local(
        record.record_id, record.update_since(), conflicts=None, organisation="clinic-a"
    )
    return record.record_id


async def _imports(server: SyncServer) -> list[str]:
    trail = await server.store.audit_entries(replica_id=server.server_id, after_seq=0, limit=10_000)
    return [entry.record_id or "" for entry in trail if entry.action == "import"]


async def test_entries_naming_a_laptop_of_another_organisation_are_refused(
    tmp_path: Path, clinic: Clinic
) -> None:
    # A push from clinic-b's laptop could never write a clinic-a chart.
    other = await Replica.open(tmp_path / "other.db")
    try:
        await other.enrol(
            clinic.server.url, username="dr.x", password=PASSWORD, organisation="clinic-b"
        )
        forged = await _chart(clinic.colleague, other.replica_id, "forged", author="dr.x")
        honest = await _chart(clinic.colleague, clinic.lost_id, "Awa Diop")
        report = await clinic.server.recover_entries(clinic.colleague.store, vouched_by="os:a")
        assert [(rid, replica) for rid, replica, _ in report.refused] == [
            (forged, other.replica_id)
        ]
        assert "clinic-b" in report.refused[0][2]
        assert report.admitted == {clinic.lost_id: 1}
        held = await clinic.server.store.state_vectors([forged, honest])
        assert set(held) == {honest}
    finally:
        await other.close()


async def test_entries_naming_the_server_itself_are_refused(clinic: Clinic) -> None:
    forged = await _chart(clinic.colleague, clinic.server.server_id, "forged")
    report = await clinic.server.recover_entries(clinic.colleague.store, vouched_by="os:a")
    assert [(rid, replica) for rid, replica, _ in report.refused] == [
        (forged, clinic.server.server_id)
    ]
    assert "the server's own" in report.refused[0][2]
    assert await clinic.server.store.state_vectors([forged]) == {}


async def test_a_revoked_laptops_entries_only_from_before_its_revocation(
    clinic: Clinic,
) -> None:
    await clinic.server.revoke(clinic.lost_id)
    now = int(time.time() * 1000)
    before = await _chart(clinic.colleague, clinic.lost_id, "written", at_ms=now - HOUR_MS)
    after = await _chart(clinic.colleague, clinic.lost_id, "stolen", at_ms=now + HOUR_MS)
    report = await clinic.server.recover_entries(clinic.colleague.store, vouched_by="os:a")
    assert [(rid, replica) for rid, replica, _ in report.refused] == [(after, clinic.lost_id)]
    assert "revoked" in report.refused[0][2]
    assert report.admitted == {clinic.lost_id: 1}
    assert set(await clinic.server.store.state_vectors([before, after])) == {before}


async def test_a_second_run_reports_nothing_unattributed(clinic: Clinic) -> None:
    chart = await _chart(clinic.colleague, clinic.lost_id, "Awa Diop")
    first = await clinic.server.recover_entries(clinic.colleague.store, vouched_by="os:a")
    assert (first.records_changed, first.unattributed) == (1, ())
    again = await clinic.server.recover_entries(clinic.colleague.store, vouched_by="os:a")
    # The server holds all of it: nothing is left out, so nothing is reported as such.
    assert (again.records_read, again.records_changed, again.admitted) == (1, 0, {})
    assert again.unattributed == ()
    assert await _imports(clinic.server) == [chart]


async def test_the_audit_trail_names_only_records_taken_into_once(clinic: Clinic) -> None:
    now = int(time.time() * 1000)
    first = await _chart(clinic.colleague, clinic.lost_id, "Awa Diop")
    ahead = await _chart(clinic.colleague, clinic.lost_id, "x", at_ms=now + 1000 * HOUR_MS)
    second = await _chart(clinic.colleague, clinic.lost_id, "Moussa Sarr")
    report = await clinic.server.recover_entries(clinic.colleague.store, vouched_by="os:a")
    assert [rid for rid, _replica, _why in report.refused] == [ahead]
    assert report.records_changed == 2
    # One import per record taken into; none for the one refused (nothing went in).
    assert sorted(await _imports(clinic.server)) == sorted([first, second])


async def _cli(*args: str | Path) -> Result:
    # The command line in this process, on a thread: it runs its own event loop.
    return await asyncio.to_thread(run_main, *args)


async def test_caresync_recover_exit_codes_say_what_is_wrong(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    colleague = await enrolled(tmp_path, server, "colleague", user="dr.b")
    chart = await _chart(colleague, "replica-lost", "Awa Diop")
    await colleague.close()
    await server.close()
    other = await SyncServer.open(tmp_path / "other.db")
    await other.close()
    db, laptop = tmp_path / "server.db", tmp_path / "colleague.db"

    # No database at that path: 3, as every command says it (and none is created).
    missing = await _cli("recover", "--db", db, "--from", tmp_path / "gone.db", "--json")
    assert (missing.code, missing.json()["error"]["kind"]) == (3, "not_found")
    missing = await _cli("recover", "--db", tmp_path / "none.db", "--from", laptop, "--json")
    assert (missing.code, missing.json()["error"]["kind"]) == (3, "not_found")
    assert not (tmp_path / "none.db").exists()
    # A server's database where a laptop's is needed: 4, as the reverse is.
    swapped = await _cli("recover", "--db", db, "--from", db, "--json")
    assert swapped.code == 4, swapped.stdout
    assert "laptop" in swapped.json()["error"]["message"]
    reverse = await _cli("recover", "--db", laptop, "--from", laptop, "--json")
    assert reverse.code == 4
    # A laptop of another server: refused, 5 (the wrong server), nothing taken.
    elsewhere = await _cli("recover", "--db", tmp_path / "other.db", "--from", laptop, "--json")
    assert (elsewhere.code, elsewhere.json()["error"]["kind"]) == (5, "refused")
    opened = await SyncServer.open(tmp_path / "other.db")
    try:
        assert await opened.store.feed_head() == 0
    finally:
        await opened.close()

    done = await _cli("recover", "--db", db, "--from", laptop, "--json")
    assert done.code == 0, done.stderr
    assert done.json()["admitted"] == {"replica-lost": 1}
    opened = await SyncServer.open(db)
    try:
        assert set(await opened.store.state_vectors([chart])) == {chart}
    finally:
        await opened.close()


async def test_caresync_recover_creates_no_server_in_an_empty_postgres_database(
    tmp_path: Path, postgres_database: str
) -> None:
    # A mistyped URL names a database that holds no server: recovering creates none there.
    server = await start_server(tmp_path)
    colleague = await enrolled(tmp_path, server, "colleague", user="dr.b")
    await _chart(colleague, "replica-lost", "Awa Diop")
    await colleague.close()
    await server.close()
    async with fresh_schema(postgres_database) as url:
        schema = url.rsplit("%3D", 1)[1]
        result = await _cli("recover", "--db", url, "--from", tmp_path / "colleague.db", "--json")
        assert (result.code, result.json()["error"]["kind"]) == (3, "not_found")
        async with await psycopg.AsyncConnection.connect(postgres_database) as conn:
            cursor = await conn.execute(
                sql.SQL(
                    "SELECT count(*) FROM information_schema.tables WHERE table_schema = {}"
                ).format(sql.Literal(schema))
            )
            row = await cursor.fetchone()
            assert row == (0,)  # no table: no server was made there


async def test_a_record_stored_under_another_id_is_refused_and_the_rest_goes_on(
    clinic: Clinic,
) -> None:
    # A file edited to hold one chart's entries under another chart's id: a push of them
    # is refused (they name another record); the recovery reports it and goes on.
    record = Record.create(replica=clinic.lost_id, record_id="chart-of-someone-else")
    record.set("name", "Awa Diop", author="dr.a")
    await clinic.colleague.store.write_local(
        "chart-under-a-wrong-id", record.update_since(), conflicts=None, organisation="clinic-a"
    )
    honest = await _chart(clinic.colleague, clinic.lost_id, "Moussa Sarr")
    report = await clinic.server.recover_entries(clinic.colleague.store, vouched_by="os:a")
    assert [(rid, replica) for rid, replica, _ in report.refused] == [
        ("chart-under-a-wrong-id", clinic.lost_id)
    ]
    assert report.admitted == {clinic.lost_id: 1}
    held = await clinic.server.store.state_vectors(["chart-under-a-wrong-id", honest])
    assert set(held) == {honest}
    assert await _imports(clinic.server) == [honest]


async def test_caresync_recover_exits_1_when_something_was_left_out(tmp_path: Path) -> None:
    # `caresync recover ... && rm colleague.db` must not delete the only copy of entries
    # the server refused: the command ran, and what it took back is not all there was.
    server = await start_server(tmp_path)
    colleague = await enrolled(tmp_path, server, "colleague", user="dr.b")
    ahead = int(time.time() * 1000) + 1000 * HOUR_MS
    refused = await _chart(colleague, "replica-lost", "x", at_ms=ahead)
    taken = await _chart(colleague, "replica-lost", "Awa Diop")
    await colleague.close()
    await server.close()
    args = ("recover", "--db", tmp_path / "server.db", "--from", tmp_path / "colleague.db")
    result = await _cli(*args, "--json")
    assert result.code == 1, result.stderr
    assert [r["record_id"] for r in result.json()["refused"]] == [refused]
    assert result.json()["admitted"] == {"replica-lost": 1}
    again = await _cli(*args)
    assert again.code == 1  # still left out: said again, in words too
    assert refused in again.stdout
    opened = await SyncServer.open(tmp_path / "server.db")
    try:
        assert set(await opened.store.state_vectors([refused, taken])) == {taken}
    finally:
        await opened.close()


def _just_over_a_frame(replica: str) -> Record:
    """A chart whose one update is under admission's 16 MiB yet too large for a pull
    batch of one entry in a laptop's default frame (its overhead does not fit)."""

    def build(last: int) -> Record:
        record = Record.create(replica=replica)
        for n in range(65):
            record.set(f"note{n}", "x" * (250 * 1024), author="dr.a")
        record.set("note65", "x" * last, author="dr.a")
        return record

    probe = len(build(10_000).update_since())
    record = build(10_000 + DEFAULT_MAX_FRAME_BYTES - 8 - probe)
    size = len(record.update_since())
    assert DEFAULT_MAX_FRAME_BYTES - 64 < size <= AdmissionLimits().max_update_bytes
    return record


async def test_an_entry_no_laptop_frame_carries_is_refused_and_nothing_stored(
    clinic: Clinic,
) -> None:
    # Admitted, it would stop every laptop's pull at it (too_large), as a push's would.
    record = _just_over_a_frame(clinic.lost_id)
    with pytest.raises(RefusedUpdateError, match="more than one frame"):
        await clinic.server.admit_vouched(
            clinic.lost_id,
            [(record.record_id, record.update_since())],
            organisation="clinic-a",
            vouched_by="os:a",
        )
    assert await clinic.server.store.state_vectors([record.record_id]) == {}
    assert await _imports(clinic.server) == []


async def test_recover_takes_a_record_larger_than_a_frame_in_pieces(clinic: Clinic) -> None:
    # What admit_vouched refuses whole, recover_entries splits by writer into pieces
    # that each fit: the record comes back entire, and every laptop can pull it.
    big = _just_over_a_frame(clinic.lost_id)
    await clinic.colleague.store.write_local(
        big.record_id, big.update_since(), conflicts=None, organisation="clinic-a"
    )
    report = await clinic.server.recover_entries(clinic.colleague.store, vouched_by="os:a")
    assert (report.refused, report.unattributed, report.records_changed) == ((), (), 1)
    assert report.admitted[clinic.lost_id] > 1  # in pieces
    held = await clinic.server.store.state_vectors([big.record_id])
    assert held[big.record_id][0] == big.state_vector()
    assert await _imports(clinic.server) == [big.record_id]
