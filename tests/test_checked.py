"""The pure side of trusting a server's checks: states compared, checks parsed, live frames."""

from __future__ import annotations

import pytest

from caresync import Record
from caresync.exceptions import RemoteProtocolError
from caresync.protocol import CheckedState, CopyConflict, FeedItem, LiveBatch, LiveUpdate
from caresync.records.persons import person_card
from caresync.replication.checked import (
    LiveFrames,
    ServerCheck,
    from_wire,
    matches,
    to_wire,
    vector_after,
)
from caresync.storage import ConflictRow
from caresync.storage._updates import same_state_vector


def edits() -> tuple[Record, list[bytes]]:
    record = Record.create(replica="desk")
    first = record.update_since()
    seen = record.state_vector()
    record.set("name", "Awa Ndiaye", author="dr.a")
    return record, [first, record.update_since(seen)]


def check_of(record: Record, rows: tuple[ConflictRow, ...] = ()) -> ServerCheck:
    return ServerCheck(record.state_vector(), rows, person_card(record))


def test_the_state_after_updates_is_worked_out_without_the_records_bytes() -> None:
    record, (first, second) = edits()
    rid = record.record_id
    after = vector_after(rid, None, [first, second])
    assert after is not None
    assert same_state_vector(after, record.state_vector())
    assert matches(after, check_of(record))
    stored = vector_after(rid, None, [first])
    assert stored is not None
    assert same_state_vector(vector_after(rid, (stored, False), [second]) or b"", after)
    # Short of the checked state: no match.
    assert not matches(stored, check_of(record))


def test_waiting_items_or_bytes_that_are_no_update_give_no_state() -> None:
    record, (first, second) = edits()
    rid = record.record_id
    assert vector_after(rid, None, [second]) is None  # it waits for the first
    stored = vector_after(rid, None, [first])
    assert stored is not None
    assert vector_after(rid, (stored, True), [second]) is None  # the record holds waiting items
    assert vector_after(rid, None, [b"\x01\x02 not an update"]) is None
    assert not matches(None, check_of(record))
    assert not matches(stored, ServerCheck(b"\xff\xff", (), None))


def test_checks_round_trip_and_bad_ones_are_the_servers_fault() -> None:
    record, _ = edits()
    rid = record.record_id
    row = ConflictRow("f-1", rid, "rule", "name", "flag", b"{}")
    check = check_of(record, (row,))
    wire = to_wire(rid, check)
    assert from_wire((wire.state,), wire.rows) == {rid: check}
    assert from_wire(None, None) is None
    with pytest.raises(RemoteProtocolError, match="bad state vector"):
        from_wire((CheckedState(rid, b"\xff\xff", None),), ())
    with pytest.raises(RemoteProtocolError, match="bad person card"):
        from_wire((CheckedState(rid, wire.state.state_vector, b"{not json"),), ())
    other, _ = edits()
    with pytest.raises(RemoteProtocolError, match="with the card of"):
        from_wire((wire.state._replace(record_id=other.record_id),), ())


def test_live_frames_keep_only_checks_that_describe_the_last_entry() -> None:
    a, b = edits()[0], edits()[0]
    check_a, check_b = to_wire(a.record_id, check_of(a)), to_wire(b.record_id, check_of(b))
    first = LiveBatch(
        (FeedItem(1, a.record_id, b"u1"), FeedItem(2, b.record_id, b"u2")),
        (check_a.state, check_b.state),
        (),
    )
    again = LiveUpdate(3, a.record_id, b"u3")  # a again, with no check: a's is stale
    live = LiveFrames.of([first, again])
    assert live.entries == [(a.record_id, b"u1"), (b.record_id, b"u2"), (a.record_id, b"u3")]
    assert live.last_seq == 3
    assert set(live.checks) == {b.record_id}
    newer = LiveBatch((FeedItem(4, a.record_id, b"u4"),), (check_a.state,), ())
    assert set(LiveFrames.of([first, again, newer]).checks) == {a.record_id, b.record_id}


def test_a_conflict_row_travels_as_the_stores_row() -> None:
    record, _ = edits()
    rid = record.record_id
    wire_row = CopyConflict(rid, "f-1", "rule", "name", "block", b'{"x":1}')
    state = CheckedState(rid, record.state_vector(), None)
    [(got_id, got)] = (from_wire((state,), (wire_row,)) or {}).items()
    assert got_id == rid
    assert got.rows == (ConflictRow("f-1", rid, "rule", "name", "block", b'{"x":1}'),)
    assert got.person is None


def test_rows_referred_to_fit_only_the_rows_they_digest() -> None:
    from caresync.protocol import rows_digest
    from caresync.replication.checked import rows_kept

    row = ConflictRow("f-1", "rec-a", "rule", "birthDate", "block", b'{"x":1}')
    other = ConflictRow("f-2", "rec-a", "rule", "gender", "flag", b'{"x":2}')
    for stored in ((), (row,), (row, other)):
        check = ServerCheck(b"\x00", (), None, b"\x00" * 17, rows_digest(stored))
        assert rows_kept(check, stored)
        assert rows_kept(check, list(stored))
        for wrong in ((), (row,), (other,), (row, other)):
            if set(wrong) != set(stored):
                assert not rows_kept(check, wrong)
    # Rows sent in full fit whatever is stored.
    assert rows_kept(ServerCheck(b"\x00", (row,), None), ())
