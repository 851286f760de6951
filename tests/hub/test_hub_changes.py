"""The hub report sends changes only (protocol version 13), end to end: laptops, a server
on 127.0.0.1, SQLite files.

A pull names the hub mark of the report the laptop holds; the server answers with what
changed since (read from an index), or the whole list to a laptop that holds none or a
mark the server never reached. What the server read and sent is counted, and what the
laptop holds is compared with the server's whole list after every sync.
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server
from tests.hub.test_hub_outbox import marked_patient
from tests.sqlite_trace import traced, write_transactions

import caresync.replication.session
import caresync.server
from caresync.exceptions import RemoteProtocolError
from caresync.hub.model import HUB_PATH
from caresync.hub.status import (
    REPORT_META,
    laptop_summaries,
    report_items,
    store_report,
    stored_mark,
)
from caresync.protocol import HUB_CHANGES_SINCE, HUB_REMOVED, HubItem, HubReport, ServerProtocol
from caresync.replica import Replica
from caresync.replication import meta
from caresync.server import SyncServer
from caresync.storage import HubChanges, HubOutcome, HubSummaryRow, MemoryStore, SQLiteStore

OLDER = tuple(range(4, HUB_CHANGES_SINCE))


@dataclass
class Sent:
    """One hub report a server sent: its items, mark and whether it was whole."""

    items: list[HubItem]
    mark: int | None
    whole: bool | None


@dataclass
class Watch:
    """Every hub report the servers send, and what they read of the hub outbox."""

    sent: list[Sent] = field(default_factory=list)
    rows_read: int = 0
    whole_reads: int = 0

    def last(self) -> Sent:
        return self.sent[-1]


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> Watch:
    seen = Watch()
    send = ServerProtocol.send_hub_report

    def recorded(
        self: ServerProtocol,
        items: list[HubItem],
        *,
        mark: int | None = None,
        whole: bool | None = None,
    ) -> None:
        seen.sent.append(Sent(list(items), mark, whole))
        send(self, items, mark=mark, whole=whole)

    monkeypatch.setattr(ServerProtocol, "send_hub_report", recorded)
    changes, summaries = SQLiteStore.hub_changes, SQLiteStore.hub_summaries

    async def read_changes(
        self: SQLiteStore, organisation: str, after: int, limit: int
    ) -> HubChanges:
        got = await changes(self, organisation, after, limit)
        seen.rows_read += len(got.rows) + len(got.removed)
        return got

    async def read_summaries(
        self: SQLiteStore, organisation: str | None = None
    ) -> list[HubSummaryRow]:
        got = await summaries(self, organisation)
        seen.rows_read += len(got)
        seen.whole_reads += 1
        return got

    monkeypatch.setattr(SQLiteStore, "hub_changes", read_changes)
    monkeypatch.setattr(SQLiteStore, "hub_summaries", read_summaries)
    return seen


async def held(laptop: Replica) -> list[HubItem]:
    """The report the laptop holds, as stored."""
    text = await laptop.store.get_meta(REPORT_META)
    return [HubItem(*entry) for entry in json.loads(text or "[]")]


_UNWATCHED = SQLiteStore.hub_summaries  # the tests' own reads are not counted


async def whole_list(server: SyncServer) -> list[HubItem]:
    """What the server would say to a laptop that holds nothing."""
    assert isinstance(server.store, SQLiteStore)
    return report_items(await _UNWATCHED(server.store, "clinic-a"))


async def test_the_second_sync_carries_only_what_changed_and_a_sync_with_nothing_to_do_nothing(
    tmp_path: Path, watch: Watch
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        patients = [await marked_patient(laptop) for _ in range(3)]
        await laptop.sync()
        first = watch.last()
        assert (first.whole, len(first.items)) == (True, 3)  # the laptop held none
        assert first.mark is not None
        assert await held(laptop) == await whole_list(server)
        assert await stored_mark(laptop.store) == first.mark
        # One patient edited here, another's summary sent by the server's sender.
        await laptop.set(patients[1], "birthDate", "1981-01-01")
        [row] = [r for r in await _UNWATCHED(server.store) if r.record_id == patients[0]]  # type: ignore[arg-type]
        await server.store.record_hub_outcome(
            patients[0], row.version, HubOutcome("sent", None, 1, 0, True)
        )
        watch.rows_read = watch.whole_reads = 0
        await laptop.sync()
        second = watch.last()
        assert second.whole is False
        assert [(i.record_id, i.state) for i in second.items] == sorted(
            [(patients[0], "sent"), (patients[1], "pending")]
        )
        assert second.mark is not None
        assert second.mark > first.mark
        assert watch.rows_read == 2  # the changed rows, not the list
        assert watch.whole_reads == 0
        # What the laptop holds is the whole list, merged.
        assert await held(laptop) == await whole_list(server)
        shown = {s.record_id: s.state for s in await laptop_summaries(laptop)}
        assert shown == {patients[0]: "sent", patients[1]: "pending", patients[2]: "pending"}
        # Nothing to do: nothing read, nothing sent, nothing committed on the laptop.
        watch.rows_read = watch.whole_reads = 0
        assert isinstance(laptop.store, SQLiteStore)
        async with traced(laptop.store) as statements:
            report = await laptop.sync()
        assert (report.uploaded, report.downloaded) == (0, 0)
        assert (watch.last().items, watch.last().mark, watch.last().whole) == (
            [],
            second.mark,
            False,
        )
        assert (watch.rows_read, watch.whole_reads) == (0, 0)
        assert write_transactions(statements) == []
        assert await held(laptop) == await whole_list(server)
    finally:
        await laptop.close()
        await server.close()


async def test_the_servers_read_of_changes_searches_an_index(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    try:
        assert isinstance(server.store, SQLiteStore)
        plans = await server.store._run(
            "explaining",
            lambda raw: [
                " ".join(str(r[-1]) for r in raw.execute(f"EXPLAIN QUERY PLAN {sql}", args))
                for sql, args in [
                    (
                        "SELECT record_id, version, state, reason, last_attempt_ms, change"
                        " FROM hub_outbox WHERE organisation = ? AND change > ?"
                        " ORDER BY change LIMIT ?",
                        ("clinic-a", 5, 10),
                    ),
                    (
                        "SELECT record_id, version, change FROM hub_removed"
                        " WHERE organisation = ? AND change > ? ORDER BY change LIMIT ?",
                        ("clinic-a", 5, 10),
                    ),
                ]
            ],
        )
        assert "INDEX hub_outbox_by_change (organisation=? AND change>?)" in plans[0]
        assert "INDEX hub_removed_by_change (organisation=? AND change>?)" in plans[1]
        assert not any("TEMP B-TREE" in plan for plan in plans)  # no sort: the index's order
    finally:
        await server.close()


async def test_a_patient_unmarked_elsewhere_is_removed_from_the_report_a_laptop_holds(
    tmp_path: Path, watch: Watch
) -> None:
    server = await start_server(tmp_path)
    first = await enrolled(tmp_path, server, "first")
    second = await enrolled(tmp_path, server, "second", user="dr.b")
    try:
        kept, dropped = await marked_patient(first), await marked_patient(first)
        await first.sync()
        await second.sync()
        assert [i.record_id for i in await held(second)] == sorted([kept, dropped])
        await first.set(dropped, HUB_PATH, False)
        await first.sync()
        await second.sync()
        [gone] = watch.last().items
        assert (gone.record_id, gone.state, watch.last().whole) == (dropped, HUB_REMOVED, False)
        assert [i.record_id for i in await held(second)] == [kept]
        assert await held(second) == await whole_list(server)
        assert [s.record_id for s in await laptop_summaries(second)] == [kept]
        # Marked again: listed again, on the next change report.
        await first.set(dropped, HUB_PATH, True)
        await first.sync()
        await second.sync()
        assert [(i.record_id, i.state) for i in watch.last().items] == [(dropped, "pending")]
        assert await held(second) == await whole_list(server)
    finally:
        await second.close()
        await first.close()
        await server.close()


async def test_a_laptop_ahead_of_a_server_restored_from_a_backup_gets_the_whole_list(
    tmp_path: Path, watch: Watch
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        a, b = await marked_patient(laptop), await marked_patient(laptop)
        await laptop.sync()
        await server.store.backup(tmp_path / "backup.db")
        await laptop.set(a, "birthDate", "1970-07-07")
        await laptop.sync()
        ahead = await stored_mark(laptop.store)
        # The server goes back to its backup (the laptop's later edit is lost to it).
        await server.close()
        path = tmp_path / "server.db"
        for side in (path, path.with_name("server.db-wal"), path.with_name("server.db-shm")):
            side.unlink(missing_ok=True)
        shutil.copy(tmp_path / "backup.db", path)
        server = await SyncServer.open(path)
        await server.serve("127.0.0.1", 0)
        restored_mark = (await server.store.hub_changes("clinic-a", 0, 10)).mark
        assert restored_mark < ahead
        synced = await laptop.sync(url=server.url, username="dr.a", password=PASSWORD)
        # The sync sent the lost edit again (a hub change: the server's mark moved on,
        # here back to the number the laptop held), and the laptop asked for the whole
        # list: a mark from before the restore names another history.
        assert synced.server_went_back
        now = (await server.store.hub_changes("clinic-a", 0, 10)).mark
        assert now > restored_mark
        report = watch.last()
        assert (report.whole, report.mark) == (True, now)
        assert [i.record_id for i in report.items] == sorted([a, b])
        assert await held(laptop) == await whole_list(server)
        assert await stored_mark(laptop.store) == now
    finally:
        await laptop.close()
        await server.close()


async def test_an_older_laptop_gets_the_whole_list_at_every_sync_as_before(
    tmp_path: Path, watch: Watch, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    monkeypatch.setattr(caresync.replication.session, "_PROTOCOL_VERSIONS", OLDER)
    older = await enrolled(tmp_path, server, "older", user="dr.b")
    try:
        a, b = await marked_patient(laptop), await marked_patient(laptop)
        await laptop.sync()
        for _round in range(2):
            await older.sync()
            report = watch.last()
            assert (report.mark, report.whole) == (None, None)
            assert [i.record_id for i in report.items] == sorted([a, b])
            assert await held(older) == await whole_list(server)
            assert await older.store.get_meta(meta.HUB_MARK) == "0"
        await laptop.set(b, HUB_PATH, False)
        await laptop.sync()
        await older.sync()
        assert [i.record_id for i in watch.last().items] == [a]
        assert await held(older) == await whole_list(server)
    finally:
        await older.close()
        await laptop.close()
        await server.close()


async def test_a_laptop_of_this_version_with_an_older_server_gets_the_whole_list(
    tmp_path: Path, watch: Watch, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        a = await marked_patient(laptop)
        await laptop.sync()
        assert await stored_mark(laptop.store) > 0
        # The server is downgraded: it speaks version 12 at most.
        older = functools.partial(ServerProtocol, protocol_versions=(1, 2, 3, *OLDER))
        monkeypatch.setattr(caresync.server, "ServerProtocol", older)
        await laptop.set(a, "birthDate", "1960-06-06")
        b = await marked_patient(laptop)
        await laptop.sync()
        report = watch.last()
        assert (report.mark, report.whole) == (None, None)
        assert [i.record_id for i in report.items] == sorted([a, b])
        assert await held(laptop) == await whole_list(server)
        # The mark of the newer server is forgotten: upgraded again, the whole list.
        assert await stored_mark(laptop.store) == 0
        monkeypatch.setattr(caresync.server, "ServerProtocol", ServerProtocol)
        await laptop.sync()
        assert watch.last().whole is True
        assert await held(laptop) == await whole_list(server)
    finally:
        await laptop.close()
        await server.close()


class ScriptedHubServer(SyncServer):
    """Sends the hub report frames a test scripts (once), instead of its own."""

    script: list[HubReport] | None = None

    async def _send_hub_report(self, conn: Any, hub_since: int | None) -> None:
        if self.script is None:
            await super()._send_hub_report(conn, hub_since)
            return
        frames, self.script = self.script, None
        for frame in frames:
            conn.protocol._send(frame)


def _bad_reports(held_mark: int, record_id: str) -> list[tuple[str, list[HubReport]]]:
    item = HubItem(record_id, "sent", 99, None, None)
    later = HubItem("zzzz", "pending", 99, None, None)
    return [
        ("brings the mark back", [HubReport((item,), True, held_mark - 1, False)]),
        (
            "frames disagree on its mark",
            [
                HubReport((item,), False, held_mark + 1, False),
                HubReport((later,), True, held_mark + 2, False),
            ],
        ),
        (
            "frames disagree on its mark",
            [
                HubReport((item,), False, held_mark + 1, False),
                HubReport((later,), True, held_mark + 1, True),
            ],
        ),
        (
            "not in record order",
            [
                HubReport((later,), False, held_mark + 1, False),
                HubReport((item,), True, held_mark + 1, False),
            ],
        ),
        ("names changes at that mark", [HubReport((item,), True, held_mark, False)]),
    ]


async def test_a_hub_report_that_breaks_the_rules_is_refused_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path, server_class=ScriptedHubServer)
    assert isinstance(server, ScriptedHubServer)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        record_id = await marked_patient(laptop)
        await laptop.sync()
        mark = await stored_mark(laptop.store)
        report = await held(laptop)
        assert mark > 0
        for why, frames in _bad_reports(mark, record_id):
            server.script = frames
            with pytest.raises(RemoteProtocolError, match=why):
                await laptop.sync()
            assert await held(laptop) == report, why
            assert await stored_mark(laptop.store) == mark, why
        # The next honest report is taken as ever.
        await laptop.sync()
        assert await held(laptop) == await whole_list(server)
    finally:
        await laptop.close()
        await server.close()


async def test_a_change_report_to_a_laptop_that_holds_none_is_refused(tmp_path: Path) -> None:
    server = await start_server(tmp_path, server_class=ScriptedHubServer)
    assert isinstance(server, ScriptedHubServer)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        await laptop.store.set_meta(meta.HUB_MARK, "0")
        await laptop.store.set_meta(REPORT_META, "[]")
        server.script = [HubReport((HubItem("r-1", "sent", 3, None, None),), True, 5, False)]
        with pytest.raises(RemoteProtocolError, match="holds no report"):
            await laptop.sync()
        assert await laptop.store.get_meta(REPORT_META) == "[]"
    finally:
        await laptop.close()
        await server.close()


async def test_a_change_report_onto_a_damaged_report_asks_for_the_whole_list_next() -> None:
    """A held report that cannot be read is not merged into: the change report's items
    are kept at mark 0, so the next sync brings the whole list (not a failure each time)."""
    store = MemoryStore()
    await store.set_meta(REPORT_META, "[not json")
    await store.set_meta(meta.HUB_MARK, "4")
    sent = HubItem("r-1", "sent", 3, None, None)
    gone = HubItem("r-2", HUB_REMOVED, 5, None, None)
    await store_report(store, [sent, gone], mark=9, whole=False)
    assert await stored_mark(store) == 0
    assert json.loads(await store.get_meta(REPORT_META) or "") == [list(sent)]
    # A whole report then replaces it, with its mark.
    await store_report(store, [gone._replace(state="held")], mark=10, whole=True)
    assert await stored_mark(store) == 10


async def test_change_reports_cannot_grow_the_report_held_past_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each change report is within the bound, but merged they would not be: a server
    adding new patients at every sync grew the report held here (parsed at each change
    report) without end. Refused, and nothing stored, like a report over the bound."""
    monkeypatch.setattr(caresync.replication.session, "MAX_HUB_REPORT_ITEMS", 3)
    server = await start_server(tmp_path, server_class=ScriptedHubServer)
    assert isinstance(server, ScriptedHubServer)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        await marked_patient(laptop)
        await laptop.sync()
        mark = await stored_mark(laptop.store)
        report = await held(laptop)
        assert len(report) == 1
        added = tuple(HubItem(f"zz-{n}", "pending", 1, None, None) for n in range(3))
        server.script = [HubReport(added, True, mark + 1, False)]  # 3: within the bound
        with pytest.raises(RemoteProtocolError, match="more than 3 summaries"):
            await laptop.sync()
        assert await held(laptop) == report
        assert await stored_mark(laptop.store) == mark
    finally:
        await laptop.close()
        await server.close()
