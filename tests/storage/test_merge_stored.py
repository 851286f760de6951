"""A stored record read back: its one update as it is, or its pieces merged."""

from __future__ import annotations

from caresync import Record
from caresync.storage._updates import EMPTY_UPDATE, merge_stored, same_state_vector, state_vector_of


def test_a_record_never_compacted_is_its_one_update_unmerged() -> None:
    record = Record.create(replica="desk")
    record.set("name", "Awa", author="dr.a")
    update = record.update_since()
    assert merge_stored(EMPTY_UPDATE, [update], record_id=record.record_id) is update
    assert merge_stored(EMPTY_UPDATE, [], record_id=record.record_id) == EMPTY_UPDATE
    assert merge_stored(update, [], record_id=record.record_id) is update


def test_a_state_and_its_pieces_are_merged() -> None:
    record = Record.create(replica="desk")
    state = record.update_since()
    seen = record.state_vector()
    record.set("name", "Awa", author="dr.a")
    piece = record.update_since(seen)
    merged = merge_stored(state, [piece], record_id=record.record_id)
    vector = state_vector_of(merged, record_id=record.record_id)
    assert same_state_vector(vector, record.state_vector())
    two = merge_stored(EMPTY_UPDATE, [state, piece], record_id=record.record_id)
    assert same_state_vector(state_vector_of(two, record_id=record.record_id), vector)
