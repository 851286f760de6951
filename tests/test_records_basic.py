"""The record model's basic behaviour: registers, conflicts, entries, notes."""

from __future__ import annotations

import pytest
from pycrdt import Doc, Map

from caresync import (
    FieldConflictError,
    ImmutableFieldError,
    InvalidPathError,
    InvalidUpdateError,
    InvalidValueError,
    Record,
    UnknownCollectionError,
    UnknownEntryError,
)
from caresync.records.clock import Timestamp
from caresync.records.revision import Revision, encode_revision


def exchange(a: Record, b: Record) -> None:
    """Send each side what the other lacks."""
    to_b = a.update_since(b.state_vector())
    to_a = b.update_since(a.state_vector())
    b.apply_update(to_b)
    a.apply_update(to_a)


def pair() -> tuple[Record, Record]:
    a = Record.create(replica="laptop-a")
    b = Record.from_update(a.record_id, a.update_since(), replica="laptop-b")
    return a, b


def test_a_written_field_reads_back_on_both_replicas() -> None:
    a, b = pair()
    a.set("birthDate", "1990-01-01", author="dr.a")
    exchange(a, b)
    assert b.value("birthDate") == "1990-01-01"
    assert b.get("birthDate").in_conflict is False


def test_integers_and_floats_keep_their_type_through_a_merge() -> None:
    a, b = pair()
    a.set("vitals", {"heightCm": 180, "weightKg": 80.5, "tags": [1, 2]}, author="dr.a")
    exchange(a, b)
    value = b.value("vitals")
    assert value == {"heightCm": 180, "weightKg": 80.5, "tags": [1, 2]}
    assert isinstance(value, dict)
    assert type(value["heightCm"]) is int
    assert type(value["tags"][0]) is int


def test_concurrent_date_of_birth_keeps_both_values_as_a_conflict() -> None:
    a, b = pair()
    a.set("birthDate", "1990-01-02", author="dr.a")
    b.set("birthDate", "1991-01-01", author="dr.b")
    exchange(a, b)
    for replica in (a, b):
        state = replica.get("birthDate")
        assert state.in_conflict
        assert sorted(c.value for c in state.candidates) == ["1990-01-02", "1991-01-01"]
        assert {c.author for c in state.candidates} == {"dr.a", "dr.b"}
        with pytest.raises(FieldConflictError) as info:
            replica.value("birthDate")
        assert info.value.conflict_id == state.conflict_id
    assert a.get("birthDate").conflict_id == b.get("birthDate").conflict_id


def test_equal_concurrent_values_merge_without_conflict() -> None:
    a, b = pair()
    a.set("birthDate", "1990-01-02", author="dr.a")
    b.set("birthDate", "1990-01-02", author="dr.b")
    exchange(a, b)
    assert a.value("birthDate") == "1990-01-02"
    assert not a.get("birthDate").in_conflict
    assert len(a.get("birthDate").heads) == 2
    assert a.conflicted_paths() == []


def test_a_write_after_seeing_both_candidates_resolves_the_conflict_everywhere() -> None:
    a, b = pair()
    a.set("birthDate", "1990-01-02", author="dr.a")
    b.set("birthDate", "1991-01-01", author="dr.b")
    exchange(a, b)
    resolution = a.set("birthDate", "1991-01-01", author="dr.a")
    assert len(resolution.parents) == 2
    exchange(a, b)
    assert b.value("birthDate") == "1991-01-01"
    assert [r.value for r in b.history("birthDate")].count("1990-01-02") == 1


def test_history_records_author_replica_time_and_parents() -> None:
    a, _ = pair()
    first = a.set("name", "Ann", author="dr.a")
    second = a.set("name", "Anne", author="nurse.b")
    history = a.history("name")
    assert [r.value for r in history] == ["Ann", "Anne"]
    assert history[1].parents == (first.id,)
    assert history[1].author == "nurse.b"
    assert history[1].replica == "laptop-a"
    assert history[1].at > history[0].at
    assert second.as_dict()["at"].endswith("Z")


def test_entries_have_stable_ids_and_register_fields() -> None:
    a, b = pair()
    med = a.add_entry("medications", {"drug": "amoxicillin", "dose": "500mg"}, author="dr.a")
    exchange(a, b)
    entry = b.entry("medications", med)
    assert entry.value("drug") == "amoxicillin"
    assert b.entry_ids("medications") == [med]
    b.set_status("medications", med, "stopped", author="dr.b")
    exchange(a, b)
    assert a.entry("medications", med).status == "stopped"
    assert [r.value for r in a.history(f"medications/{med}/dose")] == ["500mg"]


def test_signed_note_is_immutable_and_takes_addenda() -> None:
    a, b = pair()
    note = a.add_entry("notes", {"text": "Otitis media. Amoxicillin 500 mg."}, author="dr.a")
    a.sign_note(note, author="dr.a")
    with pytest.raises(ImmutableFieldError):
        a.set(f"notes/{note}/text", "changed", author="dr.a")
    addendum = a.add_addendum(note, "Parent called: fever down.", author="dr.a")
    exchange(a, b)
    entry = b.entry("notes", note)
    assert entry.signed
    assert entry.value("text") == "Otitis media. Amoxicillin 500 mg."
    assert entry.value(f"addenda/{addendum}") == "Parent called: fever down."


def test_a_draft_edited_concurrently_with_signing_keeps_the_signed_text() -> None:
    a, b = pair()
    note = a.add_entry("notes", {"text": "draft"}, author="dr.a")
    exchange(a, b)
    a.sign_note(note, author="dr.a")
    b.set(f"notes/{note}/text", "draft, edited", author="dr.b")
    exchange(a, b)
    for replica in (a, b):
        assert replica.value(f"notes/{note}/text") == "draft"
        values = [r.value for r in replica.history(f"notes/{note}/text")]
        assert "draft, edited" in values


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("", InvalidPathError),
        ("a//b", InvalidPathError),
        (" birthDate", InvalidPathError),
        ("_ack/x", InvalidPathError),
        ("medications", InvalidPathError),
        ("medications/only-entry", InvalidPathError),
    ],
)
def test_bad_paths_are_refused_and_nothing_is_written(path: str, error: type[Exception]) -> None:
    a, _ = pair()
    before = a.update_since()
    with pytest.raises(error):
        a.set(path, "x", author="dr.a")
    assert a.update_since() == before


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2**60, {1: "x"}, object(), b"x"])
def test_bad_values_are_refused(value: object) -> None:
    a, _ = pair()
    with pytest.raises(InvalidValueError):
        a.set("x", value, author="dr.a")  # type: ignore[arg-type]
    assert a.paths() == []


def test_unknown_collection_and_entry_are_typed_errors() -> None:
    a, _ = pair()
    with pytest.raises(UnknownCollectionError):
        a.add_entry("pets", {"name": "Rex"}, author="dr.a")
    with pytest.raises(UnknownEntryError):
        a.set("medications/nope/dose", "1", author="dr.a")


def test_an_invalid_entry_field_writes_nothing_of_the_entry() -> None:
    a, _ = pair()
    with pytest.raises(InvalidValueError):
        a.add_entry("medications", {"drug": "x", "status": 5}, author="dr.a")
    assert a.entry_ids("medications") == []


def test_garbage_update_is_a_typed_error() -> None:
    a, _ = pair()
    with pytest.raises(InvalidUpdateError):
        a.apply_update(b"\x01\x02garbage")
    with pytest.raises(InvalidUpdateError):
        a.apply_update("not bytes")  # type: ignore[arg-type]


def test_a_signed_note_can_be_signed_again_after_a_concurrent_edit() -> None:
    a, b = pair()
    note = a.add_entry("notes", {"text": "draft"}, author="dr.a")
    exchange(a, b)
    a.sign_note(note, author="dr.a")
    b.set(f"notes/{note}/text", "edited", author="dr.b")
    exchange(a, b)
    second = a.sign_note(note, author="dr.c")
    assert second.path.endswith("/signature")
    assert a.value(f"notes/{note}/text") == "draft"


def test_malformed_stored_revisions_are_ignored_alike_when_loaded_and_when_merged() -> None:
    a, b = pair()
    a.set("birthDate", "1990-01-01", author="dr.a")
    exchange(a, b)
    # A peer that is not caresync writes the revisions map by hand.
    peer = Doc()
    peer.apply_update(a.update_since())
    stored = encode_revision(
        Revision("w1", "weightKg", 70, (), "dr.c", "laptop-c", Timestamp(1, 0))
    )
    revisions = peer.get("revisions", type=Map)
    with peer.transaction():
        revisions["w1"] = " " + stored + "\n"  # padding around one JSON value: still read
        revisions["tail"] = stored + "x"
        revisions["nojson"] = "not json"
        revisions["list"] = "[1]"
        revisions["number"] = 5
    loaded = Record.from_update(a.record_id, peer.get_update(), replica="laptop-d")
    b.apply_update(peer.get_update(b.state_vector()))
    for record in (loaded, b):
        assert record.invalid_revision_ids == {"tail", "nojson", "list", "number"}
        assert record.value("weightKg") == 70
        assert record.value("birthDate") == "1990-01-01"
