"""Loading a record from bytes: its one-pass index agrees with a live, incremental one."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import pytest
from pycrdt import Doc, Map, Text

from caresync import (
    DEFAULT_RULEBOOK,
    Entry,
    FieldState,
    InvalidUpdateError,
    Record,
    RecordMismatchError,
)
from caresync.records.clock import Timestamp
from caresync.records.maps import read_items, read_value
from caresync.records.revision import MAX_STORED_DEPTH, Revision, encode_revision
from caresync.replication.pool import RecordPool
from caresync.storage.memory import MemoryStore


def index_view(record: Record) -> dict[str, Any]:
    """What a record's index says: heads, conflicts, entries, invalid revisions."""
    return {
        "heads": {
            path: sorted(h.id for h in record.get(path).heads)
            for path in {r.path for r in record.revisions()}
        },
        "conflicted": record.conflicted_paths(),
        "entries": {
            c: [(e.id, sorted(e.fields)) for e in record.entries(c)]
            for c in ("allergies", "medications", "notes")
        },
        "invalid": sorted(record.invalid_revision_ids),
        "conflicts": [c.as_dict() for c in DEFAULT_RULEBOOK.conflicts(record)],
        "revisions": sorted(r.id for r in record.revisions()),
    }


def busy_record() -> tuple[Record, list[bytes]]:
    """Three laptops editing one record concurrently; every update each one made."""
    a = Record.create(replica="laptop-a")
    updates: list[bytes] = [a.update_since()]
    b = Record.from_update(a.record_id, updates[0], replica="laptop-b")
    c = Record.from_update(a.record_id, updates[0], replica="laptop-c")
    for record in (a, b, c):
        record.on_update(lambda update, is_local: updates.append(update) if is_local else None)
    med = a.add_entry("medications", {"drug": "amoxicillin", "dose": "500mg"}, author="dr.a")
    b.apply_update(a.update_since(b.state_vector()))
    c.apply_update(a.update_since(c.state_vector()))
    a.set("birthDate", "1980-01-01", author="dr.a")
    b.set("birthDate", "1980-02-02", author="dr.b")  # concurrent: a conflict
    c.set("birthDate", "1980-01-01", author="dr.c")  # equal to a's: no extra candidate
    a.set_status("medications", med, "stopped", author="dr.a")
    b.set(f"medications/{med}/dose", "1g", author="dr.b")  # stopped vs dose change
    c.add_entry("allergies", {"substance": "penicillin"}, author="dr.c")
    note = c.add_entry("notes", {"text": "draft"}, author="dr.c")
    c.sign_note(note, author="dr.c")
    for i in range(5):  # a chain: many revisions, one head
        a.set("weightKg", 70 + i, author="dr.a")
    return a, updates


def test_a_loaded_record_indexes_like_one_that_took_every_update_in_any_order() -> None:
    source, updates = busy_record()
    everything = Doc()
    for update in updates:
        everything.apply_update(update)
    whole = everything.get_update()
    loaded = Record.from_update(source.record_id, whole, replica="laptop-x")
    expected = index_view(loaded)
    assert expected["conflicted"] == ["birthDate"]
    assert [c["path"] for c in expected["conflicts"]] == ["birthDate", "stopped-vs-dose-change"]
    rng = random.Random(7)
    for _ in range(5):
        # Children before parents, duplicates: the live index must end up the same.
        shuffled = updates * 2
        rng.shuffle(shuffled)
        live = Record(source.record_id, replica="laptop-y")
        live.apply_update(shuffled[0])  # the first, into an empty record: the loading road
        for update in shuffled[1:]:
            live.apply_update(update)
        assert index_view(live) == expected


def test_a_revision_naming_itself_as_parent_is_no_head_loaded_or_live() -> None:
    a = Record.create(replica="laptop-a")
    a.set("name", "Awa", author="dr.a")
    peer = Doc()
    peer.apply_update(a.update_since())
    revisions = peer.get("revisions", type=Map)
    loop = Revision("loop", "name", "Binta", ("loop",), "dr.b", "laptop-b", Timestamp(9, 0))
    revisions["loop"] = encode_revision(loop)
    loaded = Record.from_update(a.record_id, peer.get_update(), replica="laptop-c")
    a.apply_update(peer.get_update(a.state_vector()))
    for record in (loaded, a):
        assert record.value("name") == "Awa"
        assert "loop" in [r.id for r in record.history("name")]
    assert index_view(loaded) == index_view(a)


def test_reading_the_map_at_once_gives_what_items_gives() -> None:
    doc = Doc()
    revisions = doc.get("revisions", type=Map)
    with doc.transaction():
        revisions["a"] = '{"p":"x"}'
        revisions["b"] = 5
        revisions["c"] = Map({"nested": 1})
        revisions["d"] = Text("looks like a string")
        revisions["e"] = None
    fast = read_items(doc, revisions)
    public = list(revisions.items())
    assert [k for k, _ in fast] == [k for k, _ in public]
    for (_, ours), (_, theirs) in zip(fast, public, strict=True):
        # Strings come back as they are; anything else is never a string.
        assert isinstance(ours, str) == isinstance(theirs, str)
        if isinstance(theirs, str) or theirs is None or isinstance(theirs, float):
            assert ours == theirs
    assert read_value(doc, revisions, "a") == '{"p":"x"}'
    assert read_value(doc, revisions, "missing") is None


def nested_revision(depth: int) -> str:
    """A stored revision whose value nests ``depth`` lists deep (one more level in all)."""
    return f'{{"p":"x","v":{"[" * depth}{"]" * depth},"ps":[],"a":"dr","r":"peer","t":1,"c":0}}'


@pytest.mark.parametrize(
    ("depth", "valid"),
    [(MAX_STORED_DEPTH - 1, True), (MAX_STORED_DEPTH, False), (5_000, False)],
)
def test_deeply_nested_revisions_are_refused_alike_loaded_and_live(depth: int, valid: bool) -> None:
    a = Record.create(replica="laptop-a")
    a.set("name", "Awa", author="dr.a")
    b = Record.from_update(a.record_id, a.update_since(), replica="laptop-b")
    peer = Doc()
    peer.apply_update(a.update_since())
    peer.get("revisions", type=Map)["deep"] = nested_revision(depth)
    # Before the bound, 5,000 levels raised RecursionError and the record never loaded.
    loaded = Record.from_update(a.record_id, peer.get_update(), replica="laptop-c")
    b.apply_update(peer.get_update(b.state_vector()))
    for record in (loaded, b):
        assert ("deep" in record.invalid_revision_ids) is not valid
        assert record.value("name") == "Awa"
        assert (record.revision("deep") is not None) is valid


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    a = Record.create(replica="laptop-a")
    text = "[[[{{{" * 40 + '"\\' + "]]]}}}" * 3
    a.set("note", [text, {"k": "[" * 100}, [[["]"]]]], author="dr.a")
    loaded = Record.from_update(a.record_id, a.update_since(), replica="laptop-b")
    assert loaded.value("note") == [text, {"k": "[" * 100}, [[["]"]]]]
    assert loaded.invalid_revision_ids == frozenset()
    assert json.loads(json.dumps(loaded.value("note"))) == loaded.value("note")


def test_entries_appear_as_they_are_added_after_being_listed() -> None:
    a = Record.create(replica="laptop-a")
    first = a.add_entry("allergies", {"substance": "latex"}, author="dr.a")
    assert a.entry_ids("allergies") == [first]
    assert a.entry_ids("medications") == []
    a.entry_ids("allergies").append("not-mine")  # a caller's copy, not the index's
    second = a.add_entry("allergies", {"substance": "penicillin"}, author="dr.a")
    assert a.entry_ids("allergies") == sorted([first, second])
    b = Record.from_update(a.record_id, a.update_since(), replica="laptop-b")
    assert b.entry_ids("allergies") == sorted([first, second])
    third = b.add_entry("allergies", {"substance": "codeine"}, author="dr.b")
    a.apply_update(b.update_since(a.state_vector()))
    assert a.entry_ids("allergies") == b.entry_ids("allergies") == sorted([first, second, third])


def test_fast_built_field_states_and_entries_equal_the_dataclasses() -> None:
    # record.py builds these by setting their slots directly: a new field would
    # be left unset there, so this names the fields it knows.
    assert [f.name for f in dataclasses.fields(FieldState)] == ["record_id", "path", "heads"]
    assert [f.name for f in dataclasses.fields(Entry)] == ["collection", "id", "fields"]
    a = Record.create(replica="laptop-a")
    med = a.add_entry("medications", {"drug": "metformin"}, author="dr.a")
    [entry] = a.entries("medications")
    state = entry.fields["drug"]
    assert state == FieldState(a.record_id, f"medications/{med}/drug", state.heads)
    assert entry == Entry("medications", med, dict(entry.fields))
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.path = "elsewhere"  # type: ignore[misc]


def test_loading_several_updates_at_once_is_loading_then_applying() -> None:
    source, updates = busy_record()
    stored, arrived = updates[:6], updates[6:]
    everything = Doc()
    for update in stored:
        everything.apply_update(update)
    state = everything.get_update()
    at_once = Record.from_updates(source.record_id, [state, *arrived], replica="laptop-x")
    stepwise = Record.from_update(source.record_id, state, replica="laptop-y")
    for update in arrived:
        stepwise.apply_update(update)
    assert index_view(at_once) == index_view(stepwise)
    reloaded = Record.from_update(source.record_id, at_once.update_since(), replica="z")
    assert index_view(reloaded) == index_view(stepwise)
    assert index_view(Record.from_updates(source.record_id, [], replica="e"))["revisions"] == []


def test_loading_several_updates_refuses_bad_ones_and_another_records() -> None:
    a = Record.create(replica="laptop-a")
    other = Record.create(replica="laptop-b")
    with pytest.raises(InvalidUpdateError, match="must be bytes"):
        Record.from_updates(a.record_id, [a.update_since(), "text"], replica="x")  # type: ignore[list-item]
    with pytest.raises(InvalidUpdateError, match="not a valid update"):
        Record.from_updates(a.record_id, [a.update_since(), b"\xff\x00garbage"], replica="x")
    with pytest.raises(RecordMismatchError):
        Record.from_updates(a.record_id, [other.update_since()], replica="x")


def test_a_pool_loads_a_stored_state_and_what_arrived_in_one_pass() -> None:
    source, updates = busy_record()
    pool = RecordPool(MemoryStore(), replica="laptop-p", rulebook=DEFAULT_RULEBOOK)
    record = pool.load_bytes(source.record_id, updates[0], *updates[1:])
    assert pool.peek(source.record_id) is record
    everything = Doc()
    for update in updates:
        everything.apply_update(update)
    whole = Record.from_update(source.record_id, everything.get_update(), replica="laptop-q")
    assert index_view(record) == index_view(whole)
    assert {row.id for row in pool.rows(record)} == {
        c.id for c in DEFAULT_RULEBOOK.conflicts(record)
    }
