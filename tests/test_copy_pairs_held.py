"""What a laptop does with a first-copy batch's person pairs naming a record of an
earlier batch: kept when it holds that record with a card; left out otherwise (a record
added on the server behind the copy's cursor, or one whose bytes it kept aside), never
refusing the batch, which would stop the copy at the same place at every try."""

from __future__ import annotations

from pathlib import Path

from caresync import Record
from caresync.protocol import CopyBatch, CopyPerson, CopyRecord
from caresync.records.crdt import state_vector_of
from caresync.records.persons import person_card
from caresync.replication.session import _pairs_not_held
from caresync.storage import QuarantinedUpdate, SQLiteStore
from caresync.storage.base import CopiedRecords


def patient(record_id: str) -> Record:
    record = Record.create(replica="server", record_id=record_id)
    record.set("name", "Awa Ndiaye", author="dr.a")
    record.set("birthDate", "1990-04-12", author="dr.a")
    return record


def batch_pairing(later: Record, *earlier: str) -> CopyBatch:
    card = person_card(later).to_bytes()
    return CopyBatch(
        (CopyRecord(later.record_id, later.update_since()),),
        3,
        3,
        1,
        1,
        later.record_id,
        0,
        True,
        (),
        (CopyPerson(later.record_id, card),),
        tuple((first, later.record_id) for first in earlier),
    )


async def test_pairs_with_records_not_held_here_are_left_out(tmp_path: Path) -> None:
    held = patient("a-held")
    update = held.update_since()
    async with SQLiteStore.open(tmp_path / "laptop.db") as store:
        await store.write_copy(
            CopiedRecords(
                ["a-held"],
                [update],
                [state_vector_of(update)],
                "org-1",
                {},
                {"a-held": person_card(held)},
            ),
            quarantine=[QuarantinedUpdate("b-aside", b"\x07junk", "not an update")],
        )
        later = patient("z-later")
        assert await _pairs_not_held(store, batch_pairing(later, "a-held")) == set()
        assert await _pairs_not_held(
            store, batch_pairing(later, "a-held", "b-aside", "c-added-since")
        ) == {("b-aside", "z-later"), ("c-added-since", "z-later")}
