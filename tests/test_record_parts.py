"""A record cut into parts that each fit a frame, and taken back whole (pure parts of
:mod:`caresync.replication.parts`; the wire end to end is tests/e2e/test_copy_in_parts.py)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.helpers import exchange, replicas

import caresync.replication.parts
from caresync.exceptions import InvalidUpdateError, RemoteProtocolError
from caresync.protocol import (
    MAX_STATE_VECTOR_BYTES,
    RECORD_PARTS_SINCE,
    RecordPartRequest,
    decode_frame,
    encode_frame,
)
from caresync.records import Record
from caresync.records.crdt import merge, state_vector_of
from caresync.records.spans import decode_clocks, encode_varuint
from caresync.replication.parts import UPDATE_COST, NextPart, PartsTaken, next_part


def _chart(writers: int, edits: int) -> Record:
    """One record written by ``writers`` replicas, ``edits`` fields each, merged."""
    copies = replicas(writers)
    for n, record in enumerate(copies):
        for edit in range(edits):
            record.set(f"field{edit}", f"{n}-{edit}-" + "x" * (50 + 37 * edit), author=f"dr.{n}")
    exchange(*copies)
    return copies[0]


def _take(record: Record, budget: int, held: Record | None = None) -> tuple[PartsTaken, int]:
    """Every part of ``record`` a holder of ``held`` asks for, one request after another."""
    state = record.update_since()
    taken = PartsTaken(record.record_id, None if held is None else held.state_vector())
    for asked in range(1, 10_000):
        part = next_part(
            state, taken.vector(), budget, record_id=record.record_id, max_updates=1000
        )
        assert isinstance(part, NextPart)
        assert part.final or part.updates
        assert sum(map(len, part.updates)) <= budget or len(part.updates) == 1
        taken.add(part.updates)
        if part.final:
            return taken, asked
    raise AssertionError("the parts never ended")


@settings(max_examples=30, deadline=None)
@given(
    writers=st.integers(1, 4),
    edits=st.integers(1, 6),
    budget=st.integers(60, 4_000),
    held_edits=st.integers(0, 3),
)
def test_the_parts_of_a_record_make_it_whole_from_any_state_held(
    writers: int, edits: int, budget: int, held_edits: int
) -> None:
    record = _chart(writers, edits)
    held = None
    if held_edits:  # a holder that has some of it already (its own, or a resumed copy)
        held = Record.from_update(record.record_id, record.update_since(), replica="laptop-x")
        for edit in range(held_edits):
            held.set(f"own{edit}", edit, author="dr.x")
        record.apply_update(held.update_since(record.state_vector()))
    taken, _asked = _take(record, budget, held)
    base = [] if held is None else [held.update_since()]
    whole = Record.from_update(record.record_id, merge([*base, *taken.updates]), replica="r")
    assert decode_clocks(whole.state_vector()) == decode_clocks(record.state_vector())
    for edit in range(edits):
        path = f"field{edit}"
        assert {h.id for h in whole.get(path).heads} == {h.id for h in record.get(path).heads}


def test_a_small_budget_takes_several_parts_and_a_large_one_a_single_part() -> None:
    record = _chart(3, 4)
    _taken, asked = _take(record, 300)
    assert asked > 3
    _taken, asked = _take(record, 1_000_000)
    assert asked == 1


def test_a_record_that_is_not_entries_only_is_not_cut() -> None:
    # Yjs deletes leave a delete set; a server admits none, so only old data has one.
    from pycrdt import Doc, Map

    doc: Doc = Doc()
    doc["meta"] = meta = Map()
    meta["id"] = "one"
    meta["id"] = "two"  # overwritten: the first is deleted
    state = doc.get_update()
    assert next_part(state, b"\x00", 10_000, record_id="r", max_updates=10) is None


def test_a_bad_state_vector_is_an_invalid_update_error() -> None:
    record = _chart(1, 1)
    with pytest.raises(InvalidUpdateError):
        next_part(record.update_since(), b"\xff\xff", 1_000, record_id="r", max_updates=10)


def test_parts_that_do_not_continue_what_is_held_are_refused_whole() -> None:
    record = _chart(1, 3)
    pieces, _asked = _take(record, 80)  # one update a part: a client's items, in order
    assert len(pieces.updates) >= 3
    first, second, *_rest = pieces.updates
    taken = PartsTaken("r", None)
    with pytest.raises(RemoteProtocolError, match="does not continue"):
        taken.add((second,))  # its client's items before it are missing (or it repeats)
    with pytest.raises(RemoteProtocolError, match="does not continue"):
        taken.add((first, first))  # the second takes nothing new
    with pytest.raises(RemoteProtocolError, match="not a simple update"):
        taken.add((_chart(2, 1).update_since(),))  # a whole merged record of two clients
    assert taken.updates == []  # nothing of a refused part is taken
    before = taken.vector()
    taken.add((first,))
    assert taken.vector() != before


def test_parts_past_the_bound_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    record = _chart(1, 3)
    parts = next_part(record.update_since(), b"\x00", 10_000, record_id="r", max_updates=1000)
    assert parts is not None
    monkeypatch.setattr(caresync.replication.parts, "MAX_PARTS_BYTES", 100)
    with pytest.raises(RemoteProtocolError, match="more than 100 bytes"):
        PartsTaken("r", None).add(parts.updates)


def test_many_small_updates_count_what_holding_them_costs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reviewed: the bound counted update bytes only, so a server sending millions of
    updates of a few bytes had the laptop hold a gigabyte of Python objects within it."""
    record = _chart(1, 6)
    pieces, _asked = _take(record, 80)  # one small update a part
    updates = tuple(pieces.updates)
    raw = sum(map(len, updates))
    monkeypatch.setattr(caresync.replication.parts, "MAX_PARTS_BYTES", raw + 10)
    with pytest.raises(RemoteProtocolError, match="bytes in all"):
        PartsTaken("r", None).add(updates)  # within the bound by their bytes alone
    monkeypatch.setattr(
        caresync.replication.parts, "MAX_PARTS_BYTES", raw + len(updates) * UPDATE_COST
    )
    PartsTaken("r", None).add(updates)  # with what each costs to hold: just within


def _entry(client: int, clock: int, key: str, value: str) -> bytes:
    """A simple update of one revision entry, by hand (one Yjs client's item)."""
    root, name, text = b"revisions", key.encode(), value.encode()
    item = (
        bytes([0x28, 0x01, len(root)])
        + root
        + encode_varuint(len(name))
        + name
        + b"\x01\x77"
        + encode_varuint(len(text))
        + text
    )
    return b"\x01\x01" + encode_varuint(client) + encode_varuint(clock) + item + b"\x00"


def test_a_record_of_thousands_of_clients_is_asked_for_to_its_last_part() -> None:
    # Each opening of a record on a laptop writes as a new Yjs client, and a colleague
    # can push as many: the state vector of what a laptop holds of such a record grew
    # past 64 KiB (some 7,000 clients) and the laptop could not ask for the next part,
    # its copy stopped at that record for good.
    rng = random.Random(15)
    clients = rng.sample(range(1 << 52, 1 << 53), 9_000)
    state = merge([_entry(c, 0, f"rev-{n:05d}", "x" * 150) for n, c in enumerate(clients)])
    budget = 256 * 1024 - 4096
    taken = PartsTaken("r", None)
    for _asked in range(100):
        request = RecordPartRequest("r", taken.vector())
        frame = encode_frame(request, version=RECORD_PARTS_SINCE)
        assert decode_frame(frame)[1] == request  # as the server reads it
        part = next_part(state, request.state_vector, budget, record_id="r", max_updates=1000)
        assert part is not None
        taken.add(part.updates)
        if part.final:
            break
    else:
        raise AssertionError("the parts never ended")
    assert len(taken.vector()) > MAX_STATE_VECTOR_BYTES
    assert decode_clocks(taken.vector()) == decode_clocks(state_vector_of(state))


def test_a_record_with_a_gap_in_a_clients_clocks_is_not_cut() -> None:
    # Items waiting for ones the state lacks (stored before the server checked what it
    # admits) are no part that continues anything: refused, never a final part short.
    state = merge([_entry(7, 0, "a", "1"), _entry(7, 1, "b", "2"), _entry(7, 5, "c", "3")])
    assert next_part(state, b"\x00", 10_000, record_id="r", max_updates=10) is None
    assert next_part(state, b"\x01\x07\x02", 10_000, record_id="r", max_updates=10) is None
