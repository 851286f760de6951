"""What a laptop checks of a first-copy batch's person pairs before it stores the batch:
every record a pair names from an earlier batch is held here with a card, or was kept
aside here (its bytes did not merge), whose pairs are left out; anything else stops the
copy (RemoteProtocolError), nothing of the batch stored."""

from __future__ import annotations

from pathlib import Path

import pytest

from caresync import Record
from caresync.exceptions import RemoteProtocolError
from caresync.protocol import CopyBatch, CopyPerson, CopyRecord
from caresync.records.crdt import state_vector_of
from caresync.records.persons import person_card
from caresync.replication.session import _pairs_held
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


async def test_pairs_with_a_record_kept_aside_are_left_out_others_refused(
    tmp_path: Path,
) -> None:
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
        assert await _pairs_held(store, batch_pairing(later, "a-held")) == set()
        assert await _pairs_held(store, batch_pairing(later, "a-held", "b-aside")) == {
            ("b-aside", "z-later")
        }
        with pytest.raises(RemoteProtocolError, match="c-stray, which this laptop does not hold"):
            await _pairs_held(store, batch_pairing(later, "a-held", "b-aside", "c-stray"))
