"""A first copy takes the server's conflict rows when both run the same rulebook.

Real parts: a server on 127.0.0.1 and SQLite files. The server holds records,
some with an open conflict; a laptop whose rulebook has the server's fingerprint
stores the server's rows as they are (its rules never run), one with another
rulebook computes its own; and a database opened with another rulebook than the
one that indexed it is re-indexed first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server

from caresync import Record
from caresync.conflicts import DEFAULT_RULEBOOK, Conflict, Finding, RecordView, Rulebook, Severity
from caresync.exceptions import RemoteProtocolError
from caresync.records.persons import DUPLICATE_RULE, person_card
from caresync.replica import Replica
from caresync.replication.index import INDEX_RULEBOOK_KEY, ensure_index
from caresync.replication.pool import conflict_rows
from caresync.server import SyncServer
from caresync.storage import IncomingUpdate
from caresync.storage.base import CopyPage

RECORDS = 30
CONFLICTED = 7  # the first CONFLICTED records have two birth dates


def flag_every_name(view: RecordView) -> Iterator[Finding]:
    """A rule of this test's application: flags every record with a name."""
    for revision in view.get("name").heads:
        yield Finding(
            rule="flag-every-name",
            severity=Severity.INFO,
            message="a name was recorded",
            revisions=(revision.id,),
        )


EXTENDED = DEFAULT_RULEBOOK.with_rules(flag_every_name)


class CountingRulebook(Rulebook):
    """The built-in rules (so the same fingerprint), counting how often they run."""

    runs = 0

    def conflicts(self, record: Record, *, linked: Sequence[Record] = ()) -> list[Conflict]:
        CountingRulebook.runs += 1
        return super().conflicts(record, linked=linked)


async def seed(server: SyncServer) -> None:
    """RECORDS records on the server, indexed by its rulebook; some in conflict."""
    items = []
    for i in range(RECORDS):
        a = Record.create(replica="desk-a")
        a.set("name", f"patient {i}", author="registrar")
        if i < CONFLICTED:
            b = Record.from_update(a.record_id, a.update_since(), replica="desk-b")
            a.set("birthDate", "1980-01-01", author="dr.a")
            b.set("birthDate", "1981-01-01", author="dr.b")
            a.apply_update(b.update_since())
        rows = conflict_rows(a, server.rulebook)
        items.append(IncomingUpdate(a.record_id, a.update_since(), rows, "clinic-a"))
    await server.store.write_remote(items, to_feed=True)


async def rows_by_record(replica: Replica | SyncServer) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for row in await replica.store.conflicts():
        rows.setdefault(row.record_id, []).append(row.id)
    return rows


async def test_the_same_rulebook_takes_the_servers_rows_as_they_are(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    await seed(server)
    expected = await rows_by_record(server)
    assert len(expected) == CONFLICTED

    CountingRulebook.runs = 0
    rulebook = CountingRulebook()
    assert rulebook.fingerprint == server.rulebook.fingerprint
    laptop = await enrolled(tmp_path, server, "same", rulebook=rulebook)
    assert CountingRulebook.runs == 0  # no record was built, no rule ran
    assert len(await laptop.record_ids()) == RECORDS
    assert await rows_by_record(laptop) == expected
    # The rows are the laptop's index: its conflicts, computed from the records, agree.
    listed = await laptop.conflicts()
    assert {c.record_id for c in listed} == set(expected)
    await laptop.close()
    await server.close()


async def test_another_rulebook_computes_its_own_rows(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    await seed(server)
    laptop = await enrolled(tmp_path, server, "other", rulebook=EXTENDED)
    rows = await rows_by_record(laptop)
    assert len(rows) == RECORDS  # every record has a name, so every record is flagged
    assert sum(len(ids) for ids in rows.values()) == RECORDS + CONFLICTED
    await laptop.close()
    await server.close()


async def test_a_database_opened_with_another_rulebook_is_reindexed(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    await seed(server)
    laptop = await enrolled(tmp_path, server, "laptop")
    await laptop.close()
    await server.close()

    laptop = await Replica.open(tmp_path / "laptop.db", rulebook=EXTENDED)
    assert len(await rows_by_record(laptop)) == RECORDS
    assert await laptop.store.get_meta(INDEX_RULEBOOK_KEY) == EXTENDED.fingerprint
    assert await ensure_index(laptop.store, EXTENDED, replica=laptop.replica_id) == 0
    await laptop.close()
    laptop = await Replica.open(tmp_path / "laptop.db")
    assert len(await rows_by_record(laptop)) == CONFLICTED
    await laptop.close()

    # The server too: reopened with the extended rulebook, it re-indexes, and then
    # sends its rows only to a laptop that runs that rulebook.
    server = await SyncServer.open(tmp_path / "server.db", rulebook=EXTENDED)
    await server.serve("127.0.0.1", 0)
    assert len(await rows_by_record(server)) == RECORDS
    same = await enrolled(tmp_path, server, "extended", rulebook=EXTENDED)
    assert len(await rows_by_record(same)) == RECORDS
    CountingRulebook.runs = 0
    default = await enrolled(tmp_path, server, "default", rulebook=CountingRulebook())
    assert CountingRulebook.runs == RECORDS  # computed its own, built-in rules only
    assert len(await rows_by_record(default)) == CONFLICTED
    for replica in (same, default):
        await replica.close()
    await server.close()


async def test_the_first_copy_carries_person_cards_and_the_laptop_pairs_them(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    twice = []
    for replica in ("desk-a", "desk-b"):  # one patient registered at two desks
        record = Record.create(replica=replica)
        with record.batch():
            record.set("name", "Awa Ndiaye", author="registrar")
            record.set("birthDate", "1990-04-12", author="registrar")
        twice.append(record)
    await server.store.write_remote(
        [
            IncomingUpdate(
                r.record_id,
                r.update_since(),
                conflict_rows(r, server.rulebook),
                "clinic-a",
                person_card(r),
            )
            for r in twice
        ],
        to_feed=True,
    )
    [pair] = await server.store.person_pairs()
    CountingRulebook.runs = 0
    laptop = await enrolled(tmp_path, server, "cards", rulebook=CountingRulebook())
    assert CountingRulebook.runs == 0  # the cards came with the rows: nothing was built
    assert await laptop.person_pairs() == [pair]
    assert await laptop.store.person_cards([r.record_id for r in twice]) == {
        r.record_id: person_card(r) for r in twice
    }
    found = [c for c in await laptop.conflicts() if c.rule == DUPLICATE_RULE]
    assert sorted(c.record_id for c in found) == sorted(r.record_id for r in twice)
    await laptop.close()
    await server.close()


async def test_a_card_of_another_record_stops_the_copy_with_nothing_stored(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    await seed(server)
    ids = await server.store.record_ids()
    stranger = Record.create(replica="desk-x")
    stranger.set("name", "Someone Else", author="registrar")

    read_page = server.store.copy_page

    async def wrong_cards(
        organisation: str | None,
        *,
        after: str | None,
        limit: int,
        rows: bool,
        persons: bool,
        pairs: bool = False,
    ) -> CopyPage:
        page = await read_page(
            organisation, after=after, limit=limit, rows=rows, persons=persons, pairs=pairs
        )
        card = person_card(stranger).to_bytes()
        return replace(page, cards={rid: card for rid, _ in page.records})

    server.store.copy_page = wrong_cards  # type: ignore[method-assign]
    laptop = await Replica.open(tmp_path / "laptop.db")
    with pytest.raises(RemoteProtocolError, match="with the card of"):
        await laptop.enrol(server.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
    assert await laptop.store.record_ids() == []  # no record of the batch was stored
    assert await laptop.store.person_cards(ids) == {}
    await laptop.close()
    await server.close()


async def test_a_first_copy_keeps_each_card_as_the_server_sent_it_and_its_pairs(
    tmp_path: Path,
) -> None:
    """The laptop stores the card bytes the server holds (not the card written out
    again: here one the server holds with its keys in another order, the same card),
    and pairs the copied cards as the server paired them (near-duplicates across and
    within batches of 4)."""
    import json
    import sqlite3

    from caresync.replication.session import SyncLimits

    server = await start_server(tmp_path)
    items, cards = [], {}
    for i in range(12):
        record = Record.create(replica="desk-a")
        # Every third patient registered again with a slip: pairs across batches.
        record.set("name", f"Awa Ndiay{'e' if i % 3 else ''} {i // 3}", author="registrar")
        record.set("birthDate", f"199{i // 3}-04-12", author="registrar")
        rows = conflict_rows(record, server.rulebook)
        cards[record.record_id] = person_card(record)
        items.append(
            IncomingUpdate(
                record.record_id, record.update_since(), rows, "clinic-a", cards[record.record_id]
            )
        )
    await server.store.write_remote(items, to_feed=True)
    server_pairs = [p.record_ids for p in await server.store.person_pairs()]
    assert len(server_pairs) >= 4
    odd_one = sorted(cards)[5]
    reordered = json.dumps(dict(reversed(json.loads(cards[odd_one].to_bytes()).items()))).encode()
    assert reordered != cards[odd_one].to_bytes()
    conn = sqlite3.connect(tmp_path / "server.db")
    with conn:
        conn.execute("UPDATE person_cards SET card = ? WHERE record_id = ?", (reordered, odd_one))
    conn.close()

    laptop = await enrolled(tmp_path, server, "laptop", limits=SyncLimits(copy_batch_records=4))
    held = await laptop.store.person_card_bytes(sorted(cards))
    assert held[odd_one] == reordered
    assert {rid: data for rid, data in held.items() if rid != odd_one} == {
        rid: card.to_bytes() for rid, card in cards.items() if rid != odd_one
    }
    assert [p.record_ids for p in await laptop.store.person_pairs()] == server_pairs
    assert await laptop.store.check() == []
    await laptop.close()
    await server.close()
