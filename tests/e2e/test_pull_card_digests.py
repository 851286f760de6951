"""A pull compares a card reference with the digest on the record's row (schema 15).

Real parts: a server on 127.0.0.1 and SQLite files. A laptop keeps each stored card's
digest beside the record's state vector: a pull whose checks refer to the cards it holds
reads no card at all; a row without a digest (a database from before version 15 not yet
filled) has its card read, as before; a digest that is not the stored card's (damage)
makes the record built and checked, never a card kept against the wrong reference;
``check()`` names it, until the card written again with the built record sets it right.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.e2e.live_helpers import enrolled, start_server
from tests.e2e.test_first_copy_index import seed
from tests.e2e.test_pull_checked import Counted
from tests.e2e.test_pull_references import Sent, edit_and_sync, same_as_server
from tests.sqlite_trace import traced

from caresync.protocol import is_held_reference
from caresync.storage import SQLiteStore, card_digest


def _reads_of_cards(statements: list[str]) -> list[str]:
    return [s for s in statements if "FROM person_cards" in s]


async def _set_digest(store: SQLiteStore, record_ids: list[str], digest: bytes | None) -> None:
    def job(raw: object) -> None:
        raw.execute("BEGIN IMMEDIATE")  # type: ignore[attr-defined]
        raw.executemany(  # type: ignore[attr-defined]
            "UPDATE records SET card_digest = ? WHERE record_id = ?",
            [(digest, rid) for rid in record_ids],
        )
        raw.execute("COMMIT")  # type: ignore[attr-defined]

    await store._run("setting card digests", job)
    store.cache.clear()


async def test_a_pull_compares_card_references_with_the_digests_on_the_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = Sent(monkeypatch)
    server = await start_server(tmp_path)
    await seed(server)
    writer = await enrolled(tmp_path, server, "writer")
    reader = await enrolled(tmp_path, server, "reader", user="dr.b", rulebook=Counted())
    try:
        store = reader.store
        assert isinstance(store, SQLiteStore)
        ids = sorted(await writer.record_ids())[:6]
        await edit_and_sync(writer, ids, "birthDate", "1970-01-01")  # cards go in full
        await reader.sync()
        held = await store.held_states(ids)
        cards = await store.person_card_bytes(ids)
        assert {rid: held[rid].card_digest for rid in ids} == {
            rid: card_digest(cards[rid]) for rid in ids
        }

        # Every card referred to, every digest on its row: no card is read.
        await edit_and_sync(writer, ids, "summary", "seen in clinic")
        sent.states.clear()
        Counted.runs = 0
        async with traced(store) as statements:
            assert (await reader.sync()).downloaded == len(ids)
        assert all(c is not None and is_held_reference(c) for c in sent.cards(ids))
        assert Counted.runs == 0
        assert _reads_of_cards(statements) == []
        await same_as_server(reader, server, ids)

        # Rows without a digest (as a database migrated before its fill): their cards
        # are read, and kept as the references say.
        await _set_digest(store, ids[:2], None)
        await edit_and_sync(writer, ids, "summary", "seen again")
        Counted.runs = 0
        async with traced(store) as statements:
            assert (await reader.sync()).downloaded == len(ids)
        assert Counted.runs == 0
        assert len(_reads_of_cards(statements)) == 1  # one read, of those two
        await same_as_server(reader, server, ids)
        assert await store.check() == []

        # A digest that is not the stored card's: that record is built and checked, and
        # ends with the server's card all the same; check() names the damage meanwhile.
        await _set_digest(store, ids[2:3], b"\x01" * 16)
        problems = await store.check()
        assert any(ids[2] in p and "card digest" in p for p in problems)
        await edit_and_sync(writer, ids, "summary", "seen a third time")
        Counted.runs = 0
        assert (await reader.sync()).downloaded == len(ids)
        assert Counted.runs == 1
        await same_as_server(reader, server, ids)
        assert await store.check() == []  # the card written again set its digest right
        [(rid, data)] = (await store.person_card_bytes(ids[2:3])).items()
        assert (await store.held_states([rid]))[rid].card_digest == card_digest(data)
    finally:
        await reader.close()
        await writer.close()
        await server.close()
