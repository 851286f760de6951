"""A first copy's batch whose waiting marks and blocking keys the caller worked out
ahead (``CopiedRecords.pending``, ``card_keys``: a laptop does it while the batch
before commits) is stored exactly as one whose store works them out itself.

Real SQLite files; the tables compared row for row.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from tests.storage.test_copy_persons import clinics

from caresync import Record
from caresync.exceptions import InvalidInputError
from caresync.records.crdt import state_vector_of
from caresync.records.persons import PersonCard, person_card
from caresync.replication.absorb import TrustedCopy, prepare_copy
from caresync.storage import SQLiteStore
from caresync.storage.base import CopiedRecords

_TABLES = {
    "records": "SELECT record_id, organisation, state_vector, pending, card_digest FROM records",
    "person_cards": "SELECT record_id, organisation, card FROM person_cards",
    "person_keys": "SELECT hash, rk FROM person_keys",
    "person_pairs": "SELECT first, second, organisation, state, payload FROM person_pairs",
}


def _tables(path: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(path) as db:
        return {name: sorted(db.execute(sql)) for name, sql in _TABLES.items()}


def _waiting_record() -> tuple[str, bytes]:
    """A record's later edit alone: its items wait for the edit before it."""
    record = Record.create(replica="laptop-a")
    record.set("name", "Awa Diop", author="dr.a")
    before = record.state_vector()
    record.set("name", "Awa Ndiaye", author="dr.a")
    return record.record_id, record.update_since(before)


async def _store(path: Path, records: CopiedRecords) -> dict[str, list[tuple[object, ...]]]:
    store = await SQLiteStore.open(path)
    try:
        await store.write_copy(records, checkpoint=("copy", "1"))
    finally:
        await store.close()
    return _tables(path)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clinics())
async def test_a_batch_worked_out_ahead_is_stored_as_the_store_would_store_it(
    records: list[tuple[Record, str]],
) -> None:
    waiting_id, waiting = _waiting_record()
    updates = [(record.record_id, record.update_since()) for record, _org in records]
    updates.append((waiting_id, waiting))
    cards = {record.record_id: person_card(record) for record, _org in records}
    sent = {rid: card.to_bytes() for rid, card in cards.items()}
    persons = {rid: PersonCard.from_bytes(data) for rid, data in sent.items()}
    prepared = prepare_copy(updates, TrustedCopy({}, persons, sent), "org-1").records
    assert prepared.pending is not None
    assert prepared.card_keys is not None
    assert prepared.pending[-1] is True  # the waiting edit is marked as such
    plain = CopiedRecords(
        prepared.record_ids,
        prepared.updates,
        prepared.state_vectors,
        prepared.organisation,
        prepared.conflicts,
        prepared.persons,
        prepared.card_bytes,
        prepared.pairs,
    )
    with tempfile.TemporaryDirectory() as work:
        ahead = await _store(Path(work) / "ahead.db", prepared)
        itself = await _store(Path(work) / "itself.db", plain)
    assert ahead == itself
    assert any(pending for *_rest, pending, _digest in ahead["records"])


def _one_record() -> tuple[CopiedRecords, PersonCard]:
    record = Record.create(replica="laptop-a")
    record.set("name", "Awa Diop", author="dr.a")
    update = record.update_since()
    card = person_card(record)
    return CopiedRecords(
        [record.record_id], [update], [state_vector_of(update)], None, {}, {}, {}
    ), card


@pytest.mark.parametrize(
    "pending", [[], [True, False], [1], ["yes"]], ids=["none", "two", "an int", "text"]
)
def test_waiting_marks_must_be_one_bool_per_record(pending: list[object]) -> None:
    base, _card = _one_record()
    with pytest.raises(InvalidInputError, match="one bool per record"):
        CopiedRecords(
            base.record_ids, base.updates, base.state_vectors, None, {}, {}, {}, None, pending
        )  # type: ignore[arg-type]


def test_card_keys_must_be_of_a_card_of_the_batch_and_a_frozenset() -> None:
    base, card = _one_record()
    rid = base.record_ids[0]
    with pytest.raises(InvalidInputError, match="card keys of"):
        CopiedRecords(  # no card of that record in the batch
            base.record_ids,
            base.updates,
            base.state_vectors,
            None,
            {},
            {},
            {},
            None,
            None,
            {rid: card.blocking_keys()},
        )
    with pytest.raises(InvalidInputError, match="card keys of"):
        CopiedRecords(
            base.record_ids,
            base.updates,
            base.state_vectors,
            None,
            {},
            {rid: card},
            {},
            None,
            None,
            {rid: set(card.blocking_keys())},  # type: ignore[dict-item]
        )
