"""One refused entry does not cut a laptop off: it is set aside, said, kept, retried.

Before protocol version 16 a push the server refused because of one record's update
(here: a note longer than the server's admission limits take, or an edit dated ten days
ahead) failed the whole sync: every later change, on any patient, waited behind it in
the outbox, and the laptop pulled nothing either, so a colleague's allergy never reached
it. Now the server names the record; the laptop sets that record's entries aside (kept,
durable, listed with the reason), pushes the rest and pulls as usual, and tries the
record again at the next sync. Real parts: a server on 127.0.0.1, laptops with SQLite
files.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tests.cli.clitools import inproc
from tests.e2e.live_helpers import LIMIT_S, PASSWORD, enrolled, live, until, watch

import caresync.server
from caresync import Replica
from caresync.cli.status import _status
from caresync.exceptions import ProtocolError, StorageError
from caresync.protocol import ServerProtocol
from caresync.records.admission import AdmissionLimits
from caresync.replica import ReplicaState
from caresync.server import SyncServer
from caresync.storage.unsynced import read_export_file

DAY_MS = 24 * 3600 * 1000
TIGHT = AdmissionLimits(max_revision_length=2_000)
"""A server's admission set tighter than a clinic's notes: a long note is refused."""
LONG_NOTE = "Seen for follow-up. " * 200


class Clock:
    """The server's clock: the wall clock, moved on by ``ahead_ms``."""

    def __init__(self) -> None:
        self.ahead_ms = 0

    def __call__(self) -> int:
        return caresync.server._wall_clock_ms() + self.ahead_ms


async def clocked_server(
    tmp_path: Path, clock: Clock, admission: AdmissionLimits | None = None
) -> SyncServer:
    server = await SyncServer.open(tmp_path / "server.db", now_ms=clock, admission=admission)
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    await server.add_user("clinic-a", "dr.b", PASSWORD)
    await server.serve("127.0.0.1", 0)
    return server


@contextmanager
def fast_clock(laptop: Replica, ahead_ms: int) -> Iterator[None]:
    """The laptop's clock runs ``ahead_ms`` fast while inside (its edits are dated so)."""
    clock = laptop._pool.clock
    real_now = clock._now
    clock._now = lambda: real_now() + ahead_ms
    try:
        yield
    finally:
        clock._now = real_now


async def test_a_refused_entry_is_set_aside_and_everything_else_syncs_both_ways(
    tmp_path: Path,
) -> None:
    server = await clocked_server(tmp_path, Clock(), TIGHT)
    laptop = await enrolled(tmp_path, server, "laptop")
    colleague = await enrolled(tmp_path, server, "colleague", user="dr.b")
    try:
        refused = await laptop.create_record()
        await laptop.set(refused, "name", "Awa Diop", author="dr.a")
        await laptop.sync()
        await colleague.sync()
        await laptop.set(refused, "note", LONG_NOTE, author="dr.a")
        # Later work on another patient, and a colleague's allergy on a third.
        other = await laptop.create_record()
        await laptop.set(other, "name", "Fatou Sow", author="dr.a")
        shared = await colleague.create_record()
        allergy = await colleague.add_entry(shared, "allergies", {"substance": "penicillin"})
        await colleague.sync()

        report = await laptop.sync()  # succeeds: the refused record is held back

        [held] = report.set_aside
        assert held.record_id == refused
        assert "2000" in held.reason
        assert refused in held.reason
        assert held.entries == 1
        assert report.uploaded >= 2  # the other patient went
        assert (await laptop.record(shared)).entry_ids("allergies") == [allergy]
        await colleague.sync()
        assert (await colleague.record(other)).value("name") == "Fatou Sow"
        assert (await colleague.record(refused)).value("note") is None
        status = await laptop.status()
        assert [h.record_id for h in status.set_aside] == [refused]
        assert status.pending == 1  # kept, and counted as unsynced
        assert status.last_error is None

        # `caresync status` says it too (read from the file, as an operator would).
        [shown] = (await _status(str(tmp_path / "laptop.db")))["set_aside"]
        assert (shown["record_id"], shown["reason"], shown["entries"]) == (refused, held.reason, 1)

        # A later edit of the held record builds on the refused one: held back too.
        await laptop.set(refused, "height", 170, author="dr.a")
        [held] = (await laptop.sync()).set_aside  # tried again, refused again
        assert held.entries == 2
        assert (await laptop.status()).pending == 2

        # The unsynced work a person exports holds what was set aside.
        exported = tmp_path / "unsynced.caresync"
        assert await laptop.store.export_unsynced(exported) == 2
        assert {u.record_id for u in read_export_file(exported).updates} == {refused}

        # The cause goes (here: the server's limits set as they should be): taken, and
        # listed no more.
        server.admission = AdmissionLimits()
        report = await laptop.sync()
        assert report.set_aside == ()
        assert report.uploaded == 2
        status = await laptop.status()
        assert status.set_aside == ()
        assert status.pending == 0
        await colleague.sync()
        chart = await colleague.record(refused)
        assert (chart.value("note"), chart.value("height")) == (LONG_NOTE, 170)
    finally:
        await laptop.close()
        await colleague.close()
        await server.close()


async def test_what_was_set_aside_survives_a_crash_before_the_next_push(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await clocked_server(tmp_path, Clock(), TIGHT)
    laptop = await enrolled(tmp_path, server, "laptop")
    path = tmp_path / "laptop.db"
    try:
        record = await laptop.create_record()
        await laptop.sync()
        await laptop.set(record, "note", LONG_NOTE, author="dr.a")
        store = laptop.store
        set_aside = store.set_aside

        async def power_cut_after(record_id: str, reason: str) -> int:
            await set_aside(record_id, reason)  # committed ...
            raise StorageError("the power went")  # ... and nothing after it ran

        monkeypatch.setattr(store, "set_aside", power_cut_after)
        with pytest.raises(StorageError):
            await laptop.sync()
        await laptop.close()

        laptop = await Replica.open(path)
        status = await laptop.status()
        assert [h.record_id for h in status.set_aside] == [record]
        assert status.pending == 1
        server.admission = AdmissionLimits()
        report = await laptop.sync()
        assert report.uploaded == 1
        assert report.set_aside == ()
        assert (await laptop.status()).pending == 0
    finally:
        await laptop.close()
        await server.close()


async def test_a_version_15_server_refuses_the_sync_as_before_and_the_entry_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    older = functools.partial(ServerProtocol, protocol_versions=tuple(range(1, 16)))
    monkeypatch.setattr(caresync.server, "ServerProtocol", older)
    server = await clocked_server(tmp_path, Clock())
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        record = await laptop.create_record()
        await laptop.sync()
        with fast_clock(laptop, 10 * DAY_MS):
            await laptop.set(record, "weight", 70, author="dr.a")
        with pytest.raises(ProtocolError, match="check the laptop's clock"):
            await laptop.sync()
        status = await laptop.status()
        assert status.pending == 1
        assert status.set_aside == ()
    finally:
        await laptop.close()
        await server.close()


async def test_caresync_sync_says_which_record_was_set_aside_and_why(tmp_path: Path) -> None:
    server = await clocked_server(tmp_path, Clock(), TIGHT)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        record = await laptop.create_record()
        await laptop.set(record, "note", LONG_NOTE, author="dr.a")
        await laptop.close()
        # The command runs its own event loop: in a thread, while this one serves.
        db = tmp_path / "laptop.db"
        result = await asyncio.to_thread(inproc, "sync --db {db} --json", db=db)
        assert result.code == 0, result.stderr
        [held] = result.json()["set_aside"]
        # The record's creation and its note: never pushed, both held back with it.
        assert (held["record_id"], held["entries"]) == (record, 2)
        assert "the limit is 2000" in held["reason"]
        text = await asyncio.to_thread(inproc, "sync --db {db}", db=db)
        assert text.code == 0, text.stderr
        assert f"record {record}: 2 change(s) refused by the server" in text.stdout
    finally:
        await laptop.close()
        await server.close()


async def test_a_live_laptop_sets_a_refused_record_aside_and_stays_connected(
    tmp_path: Path,
) -> None:
    server = await clocked_server(tmp_path, Clock(), TIGHT)
    laptop = await enrolled(tmp_path, server, "laptop")
    colleague = await enrolled(tmp_path, server, "colleague", user="dr.b")
    try:
        refused = await laptop.create_record()
        other = await laptop.create_record()
        await laptop.sync()
        signal = watch(laptop, server=server)
        async with live(laptop) as run:
            await run.states.reach(ReplicaState.ONLINE)
            await laptop.set(refused, "note", LONG_NOTE, author="dr.a")
            # Still live: a later edit of another patient goes, a colleague's comes.
            await laptop.set(other, "name", "Fatou Sow", author="dr.a")
            shared = await colleague.create_record()
            await colleague.set(shared, "name", "Awa Ba", author="dr.b")
            await colleague.sync()

            async def in_step() -> bool:
                on_server = await server.store.load(other)
                named = on_server is not None and b"Fatou Sow" in on_server
                return named and shared in await laptop.record_ids()

            async with asyncio.timeout(LIMIT_S):
                await until(in_step, signal)
            # Pushed in order: the refused note's batch came first, and was set aside.
            status = await laptop.status()
            assert [held.record_id for held in status.set_aside] == [refused]
            assert status.pending == 1
            assert laptop.state is ReplicaState.ONLINE
        await colleague.sync()
        assert (await colleague.record(other)).value("name") == "Fatou Sow"
        assert (await colleague.record(refused)).value("note") is None
    finally:
        await laptop.close()
        await colleague.close()
        await server.close()


@pytest.mark.parametrize(("version", "named"), [(15, False), (16, True)])
def test_the_server_names_the_refused_record_only_to_a_peer_of_version_16(
    version: int, named: bool
) -> None:
    """A peer of version 15 or older is refused as before: the frame it gets has no key
    it was never told of."""
    refused: list[tuple[object, ...]] = []

    class Peer:
        protocol_version = version

        def refuse(self, *args: object, detail: object = None) -> None:
            refused.append((*args, detail))

    class Conn:
        protocol = Peer()

    caresync.server._refuse_push(Conn(), "bad_message", "refused", "record-1")  # type: ignore[arg-type]
    caresync.server._refuse_push(Conn(), "busy", "not stored", "")  # type: ignore[arg-type]
    [(_, _, _, detail), (_, _, _, whole)] = refused
    assert detail == ({"record_id": "record-1"} if named else None)
    assert whole is None  # a refusal of the push as a whole names nothing
