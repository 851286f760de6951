"""What a server admits from an untrusted peer: every honest write, and nothing hostile."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, merge_updates

from caresync import (
    FieldConflictError,
    ImmutableFieldError,
    InvalidInputError,
    InvalidUpdateError,
    RefusedUpdateError,
    UnknownEntryError,
)
from caresync.conflicts import DEFAULT_RULEBOOK, ConflictKind, Severity
from caresync.records import (
    ACK_PREFIX,
    MAX_CLOCK_AHEAD_MS,
    Admission,
    AdmissionLimits,
    HybridLogicalClock,
    Record,
    Revision,
    Timestamp,
)
from caresync.records.ids import new_revision_id
from caresync.records.revision import encode_revision
from caresync.records.spans import (
    decode_clocks,
    encode_varuint,
    simple_items,
    simple_span,
    why_not_simple,
)
from caresync.records.values import MAX_VALUE_BYTES

NOW = 1_763_800_000_000  # 2025-11-22T08:26:40Z
RECORD = "rec-1"

# ------------------------------------------------------------------ helpers


def clock_at(now: int = NOW) -> HybridLogicalClock:
    return HybridLogicalClock(now=lambda: now)


class Laptop:
    """A replica of one record whose local updates wait in an outbox, as Replica's do."""

    def __init__(self, record: Record, *, pending: list[bytes] | None = None) -> None:
        self.record = record
        self.outbox: list[bytes] = list(pending or [])
        record.on_update(lambda update, local: self.outbox.append(update) if local else None)

    @classmethod
    def create(cls, name: str = "laptop-0", *, record_id: str = RECORD, now: int = NOW) -> Laptop:
        record = Record.create(replica=name, record_id=record_id, clock=clock_at(now))
        # Replica.create_record stores (and pushes) the whole new record.
        return cls(record, pending=[record.update_since()])

    def copy(self, name: str, *, now: int = NOW) -> Laptop:
        """Another laptop holding what this one holds (nothing of it waits to be pushed)."""
        record = Record.from_update(
            self.record.record_id, self.record.update_since(), replica=name, clock=clock_at(now)
        )
        return Laptop(record)


class Server:
    """A server: admits each pushed update in order, then stores it (applies it)."""

    def __init__(self, record_id: str = RECORD, *, now: int = NOW) -> None:
        self.now = now
        self.admission = Admission(record_id, now_ms=lambda: self.now)
        self.record = Record(record_id, replica="server")
        self.admitted: list[Revision] = []

    def push(self, laptop: Laptop) -> list[Revision]:
        new: list[Revision] = []
        for update in laptop.outbox:
            before = {r.id for r in self.record.revisions()}
            revisions = self.admission.admit(update)
            self.record.apply_update(update)
            after = {r.id: r for r in self.record.revisions()}
            # What admit returned is exactly what storing the update added.
            assert sorted(r.id for r in revisions) == sorted(set(after) - before)
            assert all(after[r.id] == r for r in revisions)
            new.extend(revisions)
        laptop.outbox.clear()
        self.admitted.extend(new)
        return new

    def pull(self, laptop: Laptop) -> None:
        laptop.record.apply_update(self.record.update_since(laptop.record.state_vector()))

    def sync(self, *laptops: Laptop) -> None:
        for laptop in laptops:
            self.push(laptop)
        for laptop in laptops:
            self.pull(laptop)


def served(laptop: Laptop, *, now: int = NOW) -> Server:
    """A server that has admitted (and stored) everything ``laptop`` holds."""
    server = Server(laptop.record.record_id, now=now)
    server.push(laptop)
    return server


def captured(doc: Doc[Any], change: Callable[[], object]) -> bytes:
    """The update of one transaction on ``doc``."""
    updates: list[bytes] = []
    subscription = doc.observe(lambda event: updates.append(event.update))
    with doc.transaction():
        change()
    doc.unobserve(subscription)
    assert len(updates) == 1
    return updates[0]


def doc_of(record: Record) -> Doc[Any]:
    """A pycrdt document holding what ``record`` holds: a hostile client's starting point."""
    doc: Doc[Any] = Doc()
    doc.apply_update(record.update_since())
    return doc


def revision(
    path: str = "weight",
    value: Any = 70,
    *,
    parents: tuple[str, ...] = (),
    author: str = "dr.x",
    replica: str = "laptop-x",
    wall_ms: int = NOW,
    counter: int = 0,
    seen: dict[str, tuple[str, ...]] | None = None,
) -> str:
    """A revision's stored JSON string (built as caresync builds it)."""
    rev = Revision(
        new_revision_id(),
        path,
        value,
        parents,
        author,
        replica,
        Timestamp(wall_ms, counter),
        seen or {},
    )
    return encode_revision(rev)


def write_raw(record: Record, entries: dict[str, str], *, root: str = "revisions") -> bytes:
    """An update of a new client adding ``entries`` (key: stored string) to a root map."""
    doc = doc_of(record)

    def change() -> None:
        target = doc.get(root, type=Map)
        for key, stored in entries.items():
            target[key] = stored

    return captured(doc, change)


def _varstr(text: str) -> bytes:
    data = text.encode()
    return encode_varuint(len(data)) + data


def encode_simple(client: int, first: int, items: list[tuple[str, str | None, list[str]]]) -> bytes:
    """A simple update built byte by byte: items of (root, key or None, strings)."""
    out = bytearray(
        b"\x01" + encode_varuint(len(items)) + encode_varuint(client) + encode_varuint(first)
    )
    for root, key, strings in items:
        out += bytes((0x28 if key is not None else 0x08, 0x01)) + _varstr(root)
        if key is not None:
            out += _varstr(key)
        out += encode_varuint(len(strings))
        for text in strings:
            out += b"\x77" + _varstr(text)
    return bytes(out + b"\x00")


def refused(admission: Admission, update: bytes, *phrases: str) -> RefusedUpdateError:
    """Assert ``update`` is refused, with each phrase in the message, and nothing changed."""
    clocks, meta_id = admission.clocks, admission.meta_id
    with pytest.raises(RefusedUpdateError) as info:
        admission.admit(update)
    message = str(info.value)
    assert message.startswith(f"record {admission.record_id}: update refused: "), message
    for phrase in phrases:
        assert phrase in message, message
    assert info.value.record_id == admission.record_id
    assert admission.clocks == clocks
    assert admission.meta_id == meta_id
    return info.value


@pytest.fixture
def laptop() -> Laptop:
    """A laptop with a record holding an id, a field and an allergy, all pushed."""
    lap = Laptop.create()
    lap.record.set("birthDate", "1970-01-01", author="dr.a")
    lap.record.add_entry("allergies", {"substance": "peanut", "status": "active"}, author="dr.a")
    return lap


@pytest.fixture
def server(laptop: Laptop) -> Server:
    return served(laptop)


SHAPE = "an update may only add new entries to the revisions map (and meta/id once)"

# ------------------------------------------------------------- honest writes


def test_every_kind_of_write_record_makes_is_admitted() -> None:
    a = Laptop.create("laptop-a")
    server = Server()
    assert [r.path for r in server.push(a)] == []  # the creation: meta/id only
    assert server.admission.meta_id == RECORD
    b = a.copy("laptop-b")
    rules = DEFAULT_RULEBOOK

    # set, add_entry, set_status
    a.record.set("birthDate", "1970-01-01", author="dr.a")
    a.record.set("address", {"city": "Leeds", "lines": ["1 Road", "\x01\u2028 é"]}, author="dr.a")
    a.record.set("weight", None, author="dr.a")
    med = a.record.add_entry("medications", {"drug": "warfarin", "dose": "5mg"}, author="dr.a")
    a.record.set_status("medications", med, "active", author="dr.a")
    # notes: sign, addendum
    note = a.record.add_entry("notes", {"text": "seen today"}, author="dr.a")
    a.record.sign_note(note, author="dr.a")
    a.record.add_addendum(note, "called back", author="dr.a")
    server.sync(a, b)

    # a field conflict, resolved by choosing
    a.record.set("birthDate", "1970-01-02", author="dr.a")
    b.record.set("birthDate", "1970-01-03", author="dr.b")
    server.sync(a, b)
    (field,) = [c for c in rules.conflicts(a.record) if c.kind is ConflictKind.FIELD]
    rules.resolve(a.record, field.id, choose=1, author="dr.a")
    # a block finding (stopped vs dose change), resolved by choosing
    a.record.set_status("medications", med, "stopped", author="dr.a")
    b.record.set(f"medications/{med}/dose", "3mg", author="dr.b")
    # the same allergy twice, and a drug it forbids: flag findings
    a.record.add_entry("allergies", {"substance": "Penicillin"}, author="dr.a")
    b.record.add_entry("allergies", {"substance": "penicillin"}, author="dr.b")
    b.record.add_entry("medications", {"drug": "Amoxicillin 500 mg"}, author="dr.b")
    server.sync(a, b)
    findings = {c.rule: c for c in rules.conflicts(a.record) if c.kind is ConflictKind.RULE}
    assert findings["stopped-vs-dose-change"].severity is Severity.BLOCK
    rules.resolve(a.record, findings["stopped-vs-dose-change"].id, choose=0, author="dr.a")
    rules.acknowledge(a.record, findings["allergy-vs-prescription"].id, author="dr.a")
    # Two decisions on one finding at once: a conflict of its _ack path, resolved.
    duplicate = findings["duplicate-allergy"].id
    rules.acknowledge(a.record, duplicate, author="dr.a")
    rules.resolve(b.record, duplicate, choose=0, author="dr.b")
    server.sync(a, b)
    (ack,) = [c for c in rules.conflicts(a.record) if c.subject == ACK_PREFIX + duplicate]
    rules.resolve(a.record, ack.id, choose=0, author="dr.a")
    # Any JSON at a decision's path (resolve refuses a new value there; a peer may write it)
    b.record.acknowledge_finding(duplicate, {"decision": "mine"}, author="dr.b")
    server.sync(a, b)
    server.sync(a, b)

    paths = {r.path for r in server.admitted}
    assert {"birthDate", "address", "weight"} <= paths
    assert f"medications/{med}/_created" in paths
    assert f"notes/{note}/signature" in paths
    assert any(p.startswith(f"notes/{note}/addenda/") for p in paths)
    assert ACK_PREFIX + duplicate in paths
    assert ACK_PREFIX + findings["allergy-vs-prescription"].id in paths
    assert server.record.revisions() == a.record.revisions() == b.record.revisions()


def test_a_new_record_is_admitted_and_its_id_taken() -> None:
    lap = Laptop.create(record_id="r-9")
    admission = Admission("r-9", now_ms=lambda: NOW)
    assert admission.meta_id is None
    assert admission.admit(lap.outbox[0]) == []
    assert admission.meta_id == "r-9"


def test_an_empty_update_of_a_record_not_held_is_refused() -> None:
    """Stored, it would make a record of nothing that every replica lists."""
    with pytest.raises(RefusedUpdateError, match="empty"):
        Admission("r-9", now_ms=lambda: NOW).admit(b"\x00\x00")
    admission = Admission("r-9", now_ms=lambda: NOW)
    admission.admit(Laptop.create(record_id="r-9").outbox[0])
    assert admission.admit(b"\x00\x00") == []  # after its creation: nothing to admit


def test_a_resent_update_admits_nothing(laptop: Laptop, server: Server) -> None:
    laptop.record.set("weight", 70, author="dr.a")
    (update,) = laptop.outbox
    assert [r.path for r in server.admission.admit(update)] == ["weight"]
    assert server.admission.admit(update) == []
    assert server.admission.admit(b"\x00\x00") == []  # an empty update
    again = Admission.for_record(
        Record.from_update(
            RECORD, merge_updates(server.record.update_since(), update), replica="server"
        ),
        now_ms=lambda: NOW,
    )
    assert again.admit(update) == []


def test_the_held_part_of_an_update_is_skipped(laptop: Laptop, server: Server) -> None:
    laptop.record.set("weight", 70, author="dr.a")
    laptop.record.set("height", 180, author="dr.a")
    first, second = laptop.outbox
    assert [r.path for r in server.admission.admit(first)] == ["weight"]
    both = merge_updates(first, second)
    assert simple_span(both) is not None  # one client's run: still simple
    assert [r.path for r in server.admission.admit(both)] == ["height"]


def test_several_updates_of_one_batch_are_admitted_in_order(laptop: Laptop) -> None:
    admission = Admission(RECORD, now_ms=lambda: NOW)
    creation, field, entry = laptop.outbox
    assert admission.admit(creation) == []
    assert [r.path for r in admission.admit(field)] == ["birthDate"]
    assert sorted(r.path.rsplit("/", 1)[1] for r in admission.admit(entry)) == [
        "_created",
        "status",
        "substance",
    ]


def test_for_record_knows_what_the_record_holds(laptop: Laptop, server: Server) -> None:
    admission = Admission.for_record(server.record, now_ms=lambda: NOW)
    assert admission.meta_id == RECORD
    assert admission.clocks == decode_clocks(server.record.state_vector())
    key = server.record.revisions()[0].id
    refused(admission, write_raw(Record(RECORD, replica="x"), {key: revision()}), "exists already")
    laptop.record.set("weight", 71, author="dr.a")
    assert [r.path for r in admission.admit(laptop.outbox[-1])] == ["weight"]


def test_for_record_knows_malformed_revisions_too() -> None:
    lap = Laptop.create()
    server = served(lap)
    junk = write_raw(server.record, {"k" * 16: "not json"})
    server.record.apply_update(junk)  # stored before admission existed
    assert server.record.invalid_revision_ids == {"k" * 16}
    admission = Admission.for_record(server.record, now_ms=lambda: NOW)
    refused(admission, write_raw(Record(RECORD, replica="x"), {"k" * 16: revision()}), "exists")


def test_a_laptop_clock_ahead_within_a_day_is_admitted() -> None:
    lap = Laptop.create(now=NOW + MAX_CLOCK_AHEAD_MS)
    lap.record.set("weight", 70, author="dr.a")
    server = served(lap)
    assert [r.at.wall_ms for r in server.admitted] == [NOW + MAX_CLOCK_AHEAD_MS]


# -------------------------------------------------------------- size limits


def test_an_update_over_the_size_limit_is_refused(laptop: Laptop, server: Server) -> None:
    laptop.record.set("weight", 70, author="dr.a")
    (update,) = laptop.outbox
    small = Admission.for_record(server.record, limits=AdmissionLimits(max_update_bytes=100))
    refused(small, update, f"the update is {len(update)} bytes; the limit is 100")


def test_too_many_revisions_in_one_update_are_refused(server: Server) -> None:
    update = write_raw(server.record, {new_revision_id(): revision() for _ in range(4)})
    few = Admission.for_record(
        server.record, now_ms=lambda: NOW, limits=AdmissionLimits(max_revisions=3)
    )
    refused(few, update, "the update holds 4 entries; the limit is 3")
    assert len(Admission.for_record(server.record, now_ms=lambda: NOW).admit(update)) == 4


def test_a_12_mb_value_is_refused(server: Server) -> None:
    update = write_raw(server.record, {new_revision_id(): revision("scan", "x" * 12_000_000)})
    refused(server.admission, update, "characters; the limit is 2097152")
    roomy = Admission.for_record(
        server.record,
        now_ms=lambda: NOW,
        limits=AdmissionLimits(max_update_bytes=2**30, max_revision_length=2**30),
    )
    refused(roomy, update, "scan is 12000000 bytes encoded; the limit is 262144")


def test_the_largest_honest_value_is_admitted(laptop: Laptop, server: Server) -> None:
    # A string of control characters: 256 KiB as a value, six times that escaped.
    laptop.record.set("scan", "\x01" * MAX_VALUE_BYTES, author="dr.a")
    laptop.record.set("list", ["\x01" * (MAX_VALUE_BYTES // 6 - 10)], author="dr.a")
    assert len(server.push(laptop)) == 2


@pytest.mark.parametrize(
    "limits",
    [
        {"max_update_bytes": 0},
        {"max_revisions": -1},
        {"max_revision_length": 1.5},
        {"max_clock_ahead_ms": True},
    ],
)
def test_limits_must_be_positive_integers(limits: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError, match="must be a positive integer"):
        AdmissionLimits(**limits)


# -------------------------------------------------------------------- shape


def test_deleting_a_revision_is_refused(server: Server) -> None:
    doc = doc_of(server.record)
    revisions = doc.get("revisions", type=Map)
    key = next(iter(revisions.keys()))
    update = captured(doc, lambda: revisions.pop(key))
    assert len(update) < 20  # a few bytes could erase a clinician's work everywhere
    refused(server.admission, update, SHAPE, "deletes entries (a delete set)")


def test_overwriting_a_revision_is_refused(server: Server) -> None:
    doc = doc_of(server.record)
    revisions = doc.get("revisions", type=Map)
    key = next(iter(revisions.keys()))
    update = captured(doc, lambda: revisions.__setitem__(key, revision()))
    refused(server.admission, update, SHAPE, "an item with an origin")


def test_reusing_a_key_without_an_origin_is_refused(server: Server) -> None:
    key = server.record.revisions()[0].id
    update = write_raw(Record(RECORD, replica="x"), {key: revision()})  # a doc without it
    refused(server.admission, update, SHAPE, f"revision {key!r} exists already")


@pytest.mark.parametrize(
    ("value", "what"),
    [
        (lambda: Text("hello"), "a nested shared type"),
        (lambda: Map({"p": "weight"}), "a nested shared type"),
        (lambda: Array(["a"]), "a nested shared type"),
        (lambda: 5, "a value that is not a string"),
        (lambda: {"p": "weight", "v": 70}, "a value that is not a string"),
    ],
)
def test_a_value_that_is_not_one_string_is_refused(
    server: Server, value: Callable[[], Any], what: str
) -> None:
    doc = doc_of(server.record)
    update = captured(doc, lambda: doc.get("revisions", type=Map).__setitem__("k1", value()))
    refused(server.admission, update, SHAPE, what)


def test_writing_inside_a_nested_type_is_refused(server: Server) -> None:
    doc = doc_of(server.record)
    revisions = doc.get("revisions", type=Map)
    with doc.transaction():
        revisions["nested"] = Map()
    inner = revisions["nested"]
    update = captured(doc, lambda: inner.__setitem__("k", "v"))
    refused(server.admission, update, SHAPE)


def test_two_client_blocks_are_refused(server: Server) -> None:
    one = write_raw(server.record, {new_revision_id(): revision()})
    two = write_raw(server.record, {new_revision_id(): revision()})
    refused(server.admission, merge_updates(one, two), SHAPE, "the changes of 2 clients")
    server.admission.admit(one)
    server.admission.admit(two)  # each alone is fine


def test_an_update_depending_on_a_missing_one_is_refused(laptop: Laptop, server: Server) -> None:
    laptop.record.set("weight", 70, author="dr.a")
    laptop.record.set("height", 180, author="dr.a")
    first, second = laptop.outbox
    refused(server.admission, second, "send the earlier updates first")
    assert [r.path for r in server.admission.admit(first)] == ["weight"]
    assert [r.path for r in server.admission.admit(second)] == ["height"]


def test_a_new_client_must_start_at_clock_zero(server: Server) -> None:
    update = encode_simple(4242, 3, [("revisions", new_revision_id(), [revision()])])
    refused(server.admission, update, "changes of client 4242 from clock 3", "up to clock 0")


@pytest.mark.parametrize(
    ("items", "phrase"),
    [
        ([("other", "k", ["x"])], "the root type 'other'"),
        ([("revisions", None, ["x"])], "a list element"),
        ([("revisions", "k2", ["a", "b"])], "holds 2 values, not one string"),
    ],
)
def test_items_outside_the_record_model_are_refused(
    server: Server, items: list[tuple[str, str | None, list[str]]], phrase: str
) -> None:
    refused(server.admission, encode_simple(77, 0, items), SHAPE, phrase)


def test_a_list_element_written_with_pycrdt_is_refused() -> None:
    doc: Doc[Any] = Doc()
    update = captured(doc, lambda: doc.get("revisions", type=Array).append(revision()))
    refused(Admission(RECORD), update, "a list element")


@pytest.mark.parametrize(
    ("update", "phrase"),
    [
        (b"", "does not start like a Yjs v1 update"),
        (b"\x01\x02", "ends in the middle"),
        (b"\x00\x01\x01\x01\x00\x01", "deletes entries"),
        (
            bytes.fromhex("0101a286d4ed94a48307002801097265766973696f6e7301610177017800ff"),
            "bytes after its end",
        ),
    ],
)
def test_bytes_that_are_not_a_simple_update_are_refused(update: bytes, phrase: str) -> None:
    refused(Admission(RECORD), update, SHAPE, phrase)


def test_non_bytes_are_refused() -> None:
    with pytest.raises(InvalidUpdateError, match="must be bytes"):
        Admission(RECORD).admit("hello")  # type: ignore[arg-type]


# --------------------------------------------------------------------- keys


def test_a_key_twice_in_one_update_is_refused(server: Server) -> None:
    stored = revision()
    update = encode_simple(91, 0, [("revisions", "k1", [stored]), ("revisions", "k1", [stored])])
    refused(server.admission, update, "writes revision 'k1' twice")


def test_a_key_admitted_earlier_in_the_batch_is_refused(server: Server) -> None:
    server.admission.admit(encode_simple(91, 0, [("revisions", "k1", [revision()])]))
    update = encode_simple(92, 0, [("revisions", "k1", [revision()])])
    refused(server.admission, update, "revision 'k1' exists already")


@pytest.mark.parametrize("key", ["", "k" * 129, "a\x00b", "tab\there", "new\nline"])
def test_a_bad_revision_key_is_refused(server: Server, key: str) -> None:
    update = encode_simple(93, 0, [("revisions", key, [revision()])])
    refused(server.admission, update, "is not a printable string of 1 to 128 characters")


def test_a_long_printable_key_is_admitted(server: Server) -> None:
    update = encode_simple(93, 0, [("revisions", "é" * 128, [revision()])])
    assert len(server.admission.admit(update)) == 1


def test_changing_the_record_id_is_refused(server: Server) -> None:
    overwrite = write_raw(server.record, {"id": "another-record"}, root="meta")
    refused(server.admission, overwrite, SHAPE, "an item with an origin")
    # From a client that never saw the id: no origin, and refused all the same.
    fresh = write_raw(Record(RECORD, replica="x"), {"id": "another-record"}, root="meta")
    refused(server.admission, fresh, SHAPE, "the record has its id already")
    # The same id again is what a second laptop that created this record id offline
    # wrote: harmless (the values are equal), so admitted.
    again = write_raw(Record(RECORD, replica="x"), {"id": RECORD}, root="meta")
    assert server.admission.admit(again) == []
    assert server.admission.meta_id == RECORD


def test_a_new_record_named_after_another_is_refused() -> None:
    other = Laptop.create(record_id="another-record")
    refused(Admission(RECORD), other.outbox[0], "its meta/id is 'another-record'", RECORD)


def test_meta_holds_only_the_id(server: Server) -> None:
    update = write_raw(server.record, {"owner": "mallory"}, root="meta")
    refused(server.admission, update, "meta key 'owner'")


def test_meta_id_twice_in_one_update_is_refused() -> None:
    update = encode_simple(94, 0, [("meta", "id", [RECORD]), ("meta", "id", [RECORD])])
    refused(Admission(RECORD), update, "the record has its id already")


# ---------------------------------------------------------------- revisions


@pytest.mark.parametrize(
    "stored",
    [
        "not json",
        "[1, 2]",
        '{"p": "weight", "v": 70}',  # keys missing
        '{"p":"","v":1,"ps":[],"a":"x","r":"y","t":1,"c":0}',  # an empty path
        '{"p":"weight","v":1,"ps":[1],"a":"x","r":"y","t":1,"c":0}',  # a parent not a string
        '{"p":"weight","v":1,"ps":[],"a":"x","r":"y","t":1.5,"c":0}',  # a float time
        '{"p":"weight","v":1,"ps":[],"a":"x","r":"y","t":1,"c":0,"s":[]}',
        '{"p":"weight","v":' + "[" * 201 + "]" * 201 + ',"ps":[],"a":"x","r":"y","t":1,"c":0}',
    ],
)
def test_a_malformed_revision_is_refused(server: Server, stored: str) -> None:
    update = write_raw(server.record, {"k-bad": stored})
    refused(server.admission, update, "revision k-bad is malformed")


@pytest.mark.parametrize(
    ("path", "value", "phrase"),
    [
        ("allergies", "peanut", "'allergies' is a collection"),
        ("allergies/abc", "peanut", "'allergies' is a collection"),
        ("_secret", 1, "a leading '_' is reserved"),
        ("_ack", 1, "a leading '_' is reserved"),
        ("_ack/", 1, "empty segment"),
        ("a//b", 1, "empty segment"),
        ("x" * 513, 1, "1 to 512 characters"),
        ("weight", 2**53, "outside +/- 2**53"),
        ("deep", json.loads("[" * 40 + "]" * 40), "more than 32 levels"),
        ("_ack/f-1", 2**60, "outside +/- 2**53"),
        ("allergies/abc/_created", False, "must be true"),
        ("notes/abc/_created", "yes", "must be true"),
    ],
)
def test_paths_and_values_are_checked_as_a_laptop_checks_them(
    server: Server, path: str, value: Any, phrase: str
) -> None:
    update = write_raw(server.record, {"k-bad": revision(path, value)})
    refused(server.admission, update, "revision k-bad", phrase)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_a_number_json_cannot_hold_is_refused(server: Server, number: str) -> None:
    stored = revision(value=0).replace('"v":0,', f'"v":{number},')
    update = write_raw(server.record, {"k-bad": stored})
    refused(server.admission, update, "revision k-bad: weight:", "is not a finite number")


def test_an_allergy_status_of_5_is_refused(laptop: Laptop, server: Server) -> None:
    (allergy,) = laptop.record.entry_ids("allergies")
    update = write_raw(server.record, {"k-bad": revision(f"allergies/{allergy}/status", 5)})
    refused(server.admission, update, f"allergies/{allergy}/status: expected str, got int 5")


def test_a_schemas_own_rules_apply() -> None:
    from caresync.records import DEFAULT_SCHEMA, FieldSpec

    schema = DEFAULT_SCHEMA.with_fields(FieldSpec("sex", choices=frozenset({"f", "m", "x"})))
    admission = Admission(RECORD, schema=schema, now_ms=lambda: NOW)
    admission.admit(encode_simple(1, 0, [("revisions", "k1", [revision("sex", "f")])]))
    refused(
        admission,
        encode_simple(1, 1, [("revisions", "k2", [revision("sex", "q")])]),
        "sex: 'q' is not one of f, m, x",
    )


def test_caresyncs_own_paths_are_admitted(server: Server) -> None:
    update = write_raw(
        server.record,
        {
            "k1": revision("_ack/f-0123", {"decision": "acknowledged"}),
            "k2": revision("_ack/c-0123", ["any", {"json": None}]),
            "k3": revision("problems/p1/_created", True),
            "k4": revision("notes/n1/addenda/a1", "later text"),
            "k5": revision("notes/n1/signature", {"by": "dr.a", "signed": {"notes/n1/text": []}}),
            "k6": revision("other/x/_created", 5),  # not a collection: an ordinary field
        },
    )
    assert len(server.admission.admit(update)) == 6


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ({"author": ""}, "its author must be a non-empty string of at most 256 characters"),
        ({"author": "   "}, "its author must be"),
        ({"author": "a" * 257}, "its author must be"),
        ({"replica": ""}, "its replica must be"),
        ({"replica": "r" * 257}, "its replica must be"),
        ({"parents": ("p" * 129,)}, "parent id 'ppp"),
        ({"seen": {"x": ("s" * 129,)}}, "seen id 'sss"),
        ({"counter": 2**31}, "its clock counter 2147483648 is outside 0 to 2147483647"),
        ({"counter": -1}, "its clock counter -1"),
    ],
)
def test_revision_metadata_is_checked(server: Server, fields: dict[str, Any], phrase: str) -> None:
    update = write_raw(server.record, {"k-bad": revision(**fields)})
    refused(server.admission, update, "revision k-bad", phrase)


def test_metadata_at_its_limits_is_admitted(server: Server) -> None:
    update = write_raw(
        server.record,
        {
            "k1": revision(
                author="a" * 256,
                replica="r" * 256,
                parents=("p" * 128,),
                seen={"x": ("s" * 128,)},
                counter=2**31 - 1,
                wall_ms=0,
            )
        },
    )
    assert len(server.admission.admit(update)) == 1


def test_a_revision_dated_in_the_year_33658_is_refused(server: Server) -> None:
    update = write_raw(server.record, {"k-bad": revision(wall_ms=10**15)})
    error = refused(
        server.admission,
        update,
        "revision k-bad is dated 1000000000000000 ms since 1970-01-01 UTC (out of date range)",
        "more than 24 hours ahead",
        f"the server's time is 2025-11-22T08:26:40.000Z ({NOW} ms)",
        "check the laptop's clock",
    )
    assert isinstance(error, InvalidUpdateError)


def test_the_clock_bound_is_exact(server: Server) -> None:
    late = write_raw(server.record, {"k1": revision(wall_ms=NOW + MAX_CLOCK_AHEAD_MS + 1)})
    refused(server.admission, late, "more than 24 hours ahead", "check the laptop's clock")
    just = write_raw(server.record, {"k2": revision(wall_ms=NOW + MAX_CLOCK_AHEAD_MS)})
    assert len(server.admission.admit(just)) == 1


def test_a_revision_dated_before_1970_is_refused(server: Server) -> None:
    update = write_raw(server.record, {"k-bad": revision(wall_ms=-1)})
    refused(server.admission, update, "1969-12-31T23:59:59.999Z (-1 ms), before 1970")


def test_the_clock_bound_is_a_limit(server: Server) -> None:
    hour = Admission.for_record(
        server.record, now_ms=lambda: NOW, limits=AdmissionLimits(max_clock_ahead_ms=3_600_000)
    )
    update = write_raw(server.record, {"k1": revision(wall_ms=NOW + 3_600_001)})
    refused(hour, update, "more than 1 hour ahead")


def test_one_bad_revision_refuses_the_whole_update(server: Server) -> None:
    update = write_raw(server.record, {"k1": revision(), "k2": revision(wall_ms=10**15)})
    refused(server.admission, update, "revision k2")
    refused(server.admission, update, "revision k2")  # and nothing of it was taken


# ------------------------------------------------------------ the span reader


def test_simple_items_reads_what_pycrdt_wrote() -> None:
    doc: Doc[Any] = Doc(client_id=300)
    update = captured(
        doc,
        lambda: (
            doc.get("meta", type=Map).__setitem__("id", "r"),
            doc.get("revisions", type=Map).__setitem__("k" * 200, "v" * 300),
        ),
    )
    read = simple_items(update)
    assert read is not None
    assert (read.client, read.first, read.end) == (b"\xac\x02", 0, 2)
    assert {(i.root, i.key, i.strings) for i in read.items} == {
        ("meta", "id", ("r",)),
        ("revisions", "k" * 200, ("v" * 300,)),
    }
    assert sorted(i.clock for i in read.items) == [0, 1]
    assert simple_span(update) == (read.client, read.first, read.end)
    assert why_not_simple(update) is None


updates_of_many_shapes = st.lists(
    st.one_of(
        st.tuples(
            st.just("set"),
            st.sampled_from(["revisions", "meta"]),
            st.text(max_size=3),
            st.one_of(st.text(max_size=140), st.integers(-(2**40), 2**40), st.none()),
        ),
        st.tuples(st.just("delete"), st.text(max_size=3)),
        st.tuples(st.just("text"), st.text(min_size=1, max_size=3)),
        st.tuples(st.just("array"), st.text(max_size=3)),
    ),
    min_size=1,
    max_size=6,
)


@given(updates_of_many_shapes, st.integers(0, 40), st.binary(max_size=2))
def test_simple_items_agrees_with_simple_span(
    script: list[tuple[Any, ...]], cut: int, junk: bytes
) -> None:
    doc: Doc[Any] = Doc()

    def run() -> None:
        for op in script:
            if op[0] == "set":
                doc.get(op[1], type=Map)[op[2]] = op[3]
            elif op[0] == "delete":
                doc.get("revisions", type=Map).pop(op[1], None)
            elif op[0] == "text":
                doc.get("text", type=Text).insert(0, op[1])
            else:
                doc.get("list", type=Array).append(op[1])

    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    with doc.transaction():
        run()
    for update in [*updates, *(u[:-cut] + junk for u in updates if cut)]:
        span = simple_span(update)
        read = simple_items(update)
        assert (span is None) == (read is None) == (why_not_simple(update) is not None)
        if read is not None:
            assert span == (read.client, read.first, read.end)
            assert read.end - read.first == sum(len(i.strings) for i in read.items)


# ------------------------------------------------------------ property test

values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**53) + 1, 2**53 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
laptop_index = st.integers(0, 2)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), laptop_index, st.sampled_from(["name", "a/b"]), values),
        st.tuples(
            st.just("entry"),
            laptop_index,
            st.sampled_from(["allergies", "medications", "notes"]),
            st.dictionaries(
                st.sampled_from(["substance", "drug", "dose", "text"]),
                st.sampled_from(["penicillin", "amoxicillin", "5mg"]) | values,
                max_size=3,
            ),
        ),
        st.tuples(st.just("field"), laptop_index, st.integers(0, 9), values),
        st.tuples(
            st.just("status"),
            laptop_index,
            st.integers(0, 9),
            st.sampled_from(["active", "stopped", "entered-in-error"]),
        ),
        st.tuples(st.just("addendum"), laptop_index, st.integers(0, 9), st.text(min_size=1)),
        st.tuples(st.just("sign"), laptop_index, st.integers(0, 9)),
        st.tuples(st.just("decide"), laptop_index, st.integers(0, 9), st.integers(0, 3)),
        st.tuples(st.just("sync"), laptop_index),
        st.tuples(st.just("sync"), laptop_index),
        st.tuples(st.just("time"), st.integers(0, 3 * 60 * 60 * 1000)),
    ),
    min_size=15,
    max_size=60,
)
# Laptop clocks: right, a few hours fast, days slow.
skews = st.lists(
    st.integers(-30 * MAX_CLOCK_AHEAD_MS, MAX_CLOCK_AHEAD_MS - 1), min_size=3, max_size=3
)


def _entry(record: Record, index: int, collection: str | None = None) -> tuple[str, str] | None:
    """One of the record's entries (of ``collection``, if given), or None if it has none."""
    names = (collection,) if collection else ("allergies", "medications", "notes")
    keys = [(c, e) for c in names for e in record.entry_ids(c)]
    return keys[index % len(keys)] if keys else None


def _decide(record: Record, index: int, choice: int) -> None:
    rules = DEFAULT_RULEBOOK
    conflicts = rules.conflicts(record)
    if not conflicts:
        return
    conflict = conflicts[index % len(conflicts)]
    if conflict.kind is ConflictKind.RULE and conflict.severity is not Severity.BLOCK and choice:
        rules.acknowledge(record, conflict.id, author="dr.decides")
    elif conflict.kind is ConflictKind.FIELD and choice == 3:
        rules.resolve(record, conflict.id, value="typed in", author="dr.decides")
    else:
        rules.resolve(
            record, conflict.id, choose=choice % len(conflict.candidates), author="dr.decides"
        )


@given(operations, skews)
def test_random_honest_writes_of_several_laptops_are_all_admitted(
    script: list[tuple[Any, ...]], skew: list[int]
) -> None:
    now = [NOW]

    def clock(index: int) -> HybridLogicalClock:
        return HybridLogicalClock(lambda: now[0] + skew[index])

    first = Record.create(replica="laptop-0", record_id=RECORD, clock=clock(0))
    laptops = [Laptop(first, pending=[first.update_since()])]
    for i in (1, 2):
        copy = Record.from_update(
            RECORD, first.update_since(), replica=f"laptop-{i}", clock=clock(i)
        )
        laptops.append(Laptop(copy))
    server = Server()
    server.admission = Admission(RECORD, now_ms=lambda: now[0])
    for op in script:
        kind = op[0]
        if kind == "time":
            now[0] += op[1]
            continue
        lap = laptops[op[1]]
        record = lap.record
        if kind == "sync":  # pushes what waits, then pulls what the server has
            server.push(lap)
            server.pull(lap)
            continue
        try:
            if kind == "set":
                record.set(op[2], op[3], author="dr.sets")
            elif kind == "entry":
                record.add_entry(op[2], op[3], author="dr.adds")
            elif kind == "decide":
                _decide(record, op[2], op[3])
            else:
                entry = _entry(record, op[2], "notes" if kind in ("addendum", "sign") else None)
                if entry is None:
                    continue
                if kind == "field":
                    record.set(f"{entry[0]}/{entry[1]}/dose", op[3], author="dr.edits")
                elif kind == "status":
                    record.set_status(entry[0], entry[1], op[3], author="dr.status")
                elif kind == "addendum":
                    record.add_addendum(entry[1], op[3], author="dr.adds")
                else:
                    record.sign_note(entry[1], author="dr.signs")
        except (FieldConflictError, ImmutableFieldError, InvalidInputError, UnknownEntryError):
            pass  # refused by the laptop itself: nothing was written
    for lap in laptops:
        server.push(lap)  # every honest update is admitted (push asserts what was added)
    event(f"admitted {min(len(server.admitted) // 10 * 10, 50)}+ revisions")
    for prefix in ("_ack/", "notes/"):
        if any(r.path.startswith(prefix) for r in server.admitted):
            event(f"admitted {prefix}")
    for lap in laptops:
        server.pull(lap)
    assert {r.id for r in server.record.revisions()} == {
        r.id for r in laptops[0].record.revisions()
    }
    # A server restarted from what it stored admits nothing twice.
    restarted = Admission.for_record(server.record, now_ms=lambda: now[0])
    for update in [first.update_since(), *(lap.record.update_since() for lap in laptops[1:])]:
        read = simple_items(update)
        if read is not None:
            assert restarted.admit(update) == []
