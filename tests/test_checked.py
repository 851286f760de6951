"""The pure side of trusting a server's checks: states compared, checks parsed, live frames."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caresync import Record
from caresync.exceptions import InvalidUpdateError, RecordMismatchError, RemoteProtocolError
from caresync.protocol import CheckedState, CopyConflict, FeedItem, LiveBatch, LiveUpdate
from caresync.records.crdt import merge
from caresync.records.persons import person_card
from caresync.records.spans import only_adds, simple_items
from caresync.replication.checked import (
    LiveFrames,
    ServerCheck,
    copied_state,
    from_wire,
    keeps_its_id,
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


def test_a_merge_of_edits_only_adds_and_keeps_the_records_id() -> None:
    record, (first, second) = edits()
    rid = record.record_id
    other = Record.from_updates(rid, [first, second], replica="ward")
    seen = other.state_vector()
    other.set("birthDate", "1980-01-01", author="dr.b")
    third = other.update_since(seen)
    merged = merge([second, third], record_id=rid)  # two clients: not one simple update
    assert simple_items(merged) is None
    assert only_adds(merged)
    assert only_adds(merge([first, second, third], record_id=rid))  # a copied record
    assert keeps_its_id(rid, [first, merged])
    assert keeps_its_id(rid, [second], simple=True)
    assert not keeps_its_id("another-record", [first])  # its creation names rid
    assert not keeps_its_id("another-record", [first], simple=True)
    assert not only_adds(first + b"\x00")  # a byte past its end
    assert not only_adds(b"\x00\x00")  # nothing at all: pycrdt decides


def test_a_copied_record_is_walked_once_for_its_id_and_its_state_vector() -> None:
    record, (first, second) = edits()
    rid = record.record_id
    whole = merge([first, second], record_id=rid)
    kept, vector = copied_state(rid, whole)
    assert kept
    assert vector is not None
    assert same_state_vector(vector, record.state_vector())
    assert copied_state("another-record", whole) == (False, vector)
    # An edit alone starts past its client's first clock: its id is checked, its state
    # vector left to pycrdt (its items would wait).
    assert copied_state(rid, second) == (True, None)
    seen = record.state_vector()
    record._meta["id"] = "another-record"  # an overwrite: not only adds
    assert copied_state(rid, record.update_since(seen)) == (False, None)


def test_an_update_that_renames_the_record_is_not_vouched_for() -> None:
    record, _updates = edits()
    rid = record.record_id
    seen = record.state_vector()
    record._meta["id"] = "another-record"  # an overwrite: an item with an origin
    renamed = record.update_since(seen)
    assert not only_adds(renamed)
    assert not keeps_its_id(rid, [renamed])
    # A second, concurrent entry at meta/id (no origin): its value is compared.
    twin = Record.create(record_id="another-record", replica="twin").update_since()
    assert only_adds(twin)
    assert not keeps_its_id(rid, [twin], simple=True)
    assert keeps_its_id("another-record", [twin], simple=True)


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


class _Bytes(bytes):
    """Bytes of another type: from_wire's inline reading of the usual check passes them
    to its general way, which then decides what it decides for plain bytes."""


_VECTORS = st.one_of(
    st.binary(max_size=24),
    # Well-formed state vectors of one to three clients, some clocks above a byte.
    st.lists(
        st.tuples(st.integers(0, 2**53 - 1), st.integers(0, 2**31 - 1)), min_size=1, max_size=3
    ).map(lambda pairs: _encoded(pairs)),
    st.sampled_from([b"\x00", b"\x01\x05", b"\x01\x85\x00\x03", b"\x02\x01\x01\x01\x02"]),
)
_CARDS = st.one_of(
    st.none(),
    st.binary(min_size=32, max_size=32).map(lambda rest: b"\x01" + rest),  # held references
    st.binary(min_size=16, max_size=16).map(lambda rest: b"\x00" + rest),  # card references
    st.binary(min_size=1, max_size=40),
)


def _encoded(pairs: list[tuple[int, int]]) -> bytes:
    from caresync.records.spans import encode_varuint

    return encode_varuint(len(pairs)) + b"".join(
        encode_varuint(client) + encode_varuint(clock) for client, clock in pairs
    )


def _outcome(states: list[CheckedState]) -> object:
    try:
        return from_wire(states, ())
    except RemoteProtocolError as exc:
        return ("refused", str(exc))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_VECTORS, _CARDS), max_size=6))
def test_the_usual_check_read_inline_is_what_the_general_way_reads(
    drawn: list[tuple[bytes, bytes | None]],
) -> None:
    """A held reference with a plain state vector is read inline (one C call): the same
    checks, or the same refusal, as the general way gives (its card made another type
    of bytes, which the inline reading leaves to it)."""
    states = [CheckedState(f"r{i}", vector, card) for i, (vector, card) in enumerate(drawn)]
    general = [
        CheckedState(
            state.record_id, state.state_vector, None if state.card is None else _Bytes(state.card)
        )
        for state in states
    ]
    inline, reference = _outcome(states), _outcome(general)
    assert inline == reference
    if isinstance(inline, dict):
        for state in states:
            check = inline[state.record_id]
            assert type(check) is ServerCheck
            if state.card is None or len(state.card) != 33 or state.card[0] != 1:
                continue  # not a held reference: the general way keeps the card's own type
            record_id = state.record_id
            assert [type(value) for value in check] == [
                type(value)
                for value in reference[record_id]  # type: ignore[index]
            ]


def _renamed_and_plain() -> list[tuple[str, bytes]]:
    """A record's whole state, and its state with a second writer's id at meta/id."""
    record, _updates = edits()
    rid = record.record_id
    plain = record.update_since()
    twin = Record.create(record_id="rec-b", replica="twin").update_since()
    overwritten = Record.from_update(rid, plain, replica="evil")
    overwritten._meta["id"] = "rec-b"
    return [
        (rid, plain),
        (rid, merge([plain, twin], record_id=rid)),
        (rid, overwritten.update_since()),
    ]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(range(3)),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
)
def test_what_keeps_its_id_vouches_for_builds_as_that_record(
    which: int, changes: list[tuple[int, int]]
) -> None:
    """Whatever the bytes (damaged, renamed, merged with another's creation), a record
    built from bytes keeps_its_id vouches for is that record: its id check passes."""
    rid, data = _renamed_and_plain()[which]
    damaged = bytearray(data)
    for at, value in changes:
        damaged[at % len(damaged)] = value
    update = bytes(damaged)
    if not keeps_its_id(rid, [update]):
        return
    try:
        Record.from_update(rid, update, replica="check")
    except RecordMismatchError:  # pragma: no cover - the failure this test looks for
        raise AssertionError("vouched for bytes that name another record") from None
    except InvalidUpdateError:
        pass  # not an update at all: pycrdt refuses it, as it does without the check
