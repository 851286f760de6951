"""Counts that add up: a count's value is the sum of the changes its revisions record.

Two laptops that each dispense one box from a stock of 10 converge to 8, on every
replica, in any merge order; the history keeps each dispensing; a count below zero
is a block finding that a recount closes; the server admits honest count revisions
and refuses malformed ones.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map
from tests.helpers import exchange

from caresync import (
    DEFAULT_RULEBOOK,
    ConflictKind,
    CountState,
    FieldSpec,
    HybridLogicalClock,
    ImmutableFieldError,
    InvalidPathError,
    InvalidValueError,
    Record,
    RefusedUpdateError,
    Revision,
    Schema,
    Severity,
    Timestamp,
    UnknownEntryError,
    count_change,
)
from caresync.conflicts.counts import COUNT_BELOW_ZERO, UNCOUNTED_WRITE, count_below_zero
from caresync.records import DEFAULT_SCHEMA, Admission
from caresync.records.revision import encode_revision
from caresync.testing import Clinic

RULES = DEFAULT_RULEBOOK.with_rules(count_below_zero)
AMOX = "stock/amoxicillin-500mg"
NOW = 1_763_800_000_000


def laptops(
    n: int = 2, *, schema: Schema = DEFAULT_SCHEMA, record_id: str = "rec-1"
) -> list[Record]:
    """``n`` copies of one record with deterministic clocks and revision ids."""
    ticks = itertools.count(NOW)

    def make(factory: Callable[..., Record], name: str, *args: Any, **kwargs: Any) -> Record:
        ids = itertools.count()
        return factory(
            *args,
            replica=name,
            schema=schema,
            clock=HybridLogicalClock(now=lambda: next(ticks)),
            new_id=lambda: f"{name}.{next(ids)}",
            **kwargs,
        )

    first = make(Record.create, "laptop-0", record_id=record_id)
    return [first] + [
        make(Record.from_update, f"laptop-{i}", record_id, first.update_since())
        for i in range(1, n)
    ]


def stocked(n: int = 2, count: int = 10) -> list[Record]:
    """``n`` laptops that all read a stock of amoxicillin of ``count``."""
    records = laptops(n)
    records[0].set(AMOX, count, author="pharm.diallo")
    exchange(*records)
    return records


def raw_update(record: Record, entries: dict[str, str]) -> bytes:
    """An update of a new Yjs client adding ``entries`` (key: stored JSON) to the revisions."""
    doc: Doc[Any] = Doc()
    doc.apply_update(record.update_since())
    updates: list[bytes] = []
    subscription = doc.observe(lambda event: updates.append(event.update))
    with doc.transaction():
        revisions = doc.get("revisions", type=Map)
        for key, stored in entries.items():
            revisions[key] = stored
    doc.unobserve(subscription)
    return updates[0]


def stored(
    rev_id: str,
    path: str,
    value: Any,
    *,
    parents: tuple[str, ...] = (),
    author: str = "old.laptop",
    replica: str = "laptop-old",
    wall_ms: int = NOW,
) -> dict[str, str]:
    """One revision as a peer would store it: {id: its JSON}."""
    rev = Revision(rev_id, path, value, parents, author, replica, Timestamp(wall_ms, 0))
    return {rev_id: encode_revision(rev)}


# ------------------------------------------------------------------- the schema


def test_paths_under_stock_are_counts_by_default_and_nothing_else_is() -> None:
    schema = DEFAULT_SCHEMA
    assert schema.is_count("stock/amoxicillin-500mg")
    assert schema.is_count("stock/ward-3/gloves")  # any depth under stock/
    assert not schema.is_count("stock")
    assert not schema.is_count("stockroom/gloves")
    assert not schema.is_count("birthDate")
    assert not schema.is_count("medications/e1/dose")
    assert not Schema(counts=frozenset()).is_count(AMOX)  # an application may opt out


def test_an_application_declares_its_own_counts_with_patterns() -> None:
    schema = (
        DEFAULT_SCHEMA.with_collections(["supplies"])
        .with_counts("inventory/*", "supplies/*/quantity")
        .with_fields(FieldSpec("inventory/*", types=(int,)))
    )
    assert schema.is_count("inventory/gloves")
    assert not schema.is_count("inventory/gloves/box")  # '*' is one segment
    assert schema.is_count("supplies/e1/quantity")
    assert not schema.is_count("supplies/e1/_created")  # caresync's bookkeeping never counts
    assert not schema.is_count("supplies/e1/name")
    assert schema.is_count(AMOX)  # the default stays
    # with_fields and with_collections keep the counts
    assert schema.with_collections(["kits"]).counts == schema.counts
    # a pattern without wildcards names one path
    visits = DEFAULT_SCHEMA.with_counts("visits", "ward/beds")
    assert visits.is_count("visits")
    assert visits.is_count("ward/beds")
    assert not visits.is_count("visits2")
    assert not visits.is_count("visits/x")
    assert not visits.is_count("ward/beds/x")


@pytest.mark.parametrize(
    ("pattern", "phrase"),
    [
        ("*/count", "must start with a name"),
        ("**", "must start with a name"),
        ("_ack/*", "must start with a name"),
        ("notes/*/pages", "a note's fields cannot be counts"),
        ("a/**/b", "'**' only as the last segment"),
        ("a/b*", "'*' stands for one whole segment"),
        ("medications/*", "is a collection"),
        ("a//b", "empty segment"),
    ],
)
def test_a_bad_count_pattern_is_refused(pattern: str, phrase: str) -> None:
    with pytest.raises(InvalidPathError) as info:
        DEFAULT_SCHEMA.with_counts(pattern)
    assert phrase in str(info.value)
    with pytest.raises(InvalidPathError):
        Schema(counts=frozenset({pattern}))


def test_schema_counts_is_a_set_of_patterns() -> None:
    assert Schema(counts=["inventory/*"]).counts == frozenset({"inventory/*"})  # type: ignore[arg-type]
    with pytest.raises(InvalidPathError, match="a set of patterns"):
        Schema(counts="stock/**")  # type: ignore[arg-type]
    with pytest.raises(InvalidPathError, match="must be a string"):
        Schema(counts=frozenset({3}))  # type: ignore[arg-type]


# -------------------------------------------------------------- reading, writing


def test_concurrent_dispensings_add_up_in_any_merge_order() -> None:
    a, b, c = stocked(3)
    a.set(AMOX, 9, author="nurse.sow")  # 10 -> 9, as the user sees it
    b.set(AMOX, 9, author="dr.ba")  # 10 -> 9, concurrently
    exchange(a, b)
    exchange(b, c)  # c gets both through b
    exchange(c, a)
    for record in (a, b, c):
        state = record.get(AMOX)
        assert isinstance(state, CountState)
        assert record.value(AMOX) == state.value == state.total == 8
        assert not state.in_conflict
        assert state.conflict_id is None
        assert len(state.heads) == 2  # the two dispensings, neither saw the other
        assert record.conflicted_paths() == []
    assert RULES.conflicts(a) == []


def test_each_write_keeps_its_change_author_replica_and_time_in_history() -> None:
    a, b = stocked()
    a.adjust(AMOX, -1, author="nurse.sow")
    b.set(AMOX, 9, author="dr.ba")
    exchange(a, b)
    history = a.history(AMOX)
    assert history == b.history(AMOX)
    assert [(r.author, r.replica, r.value) for r in history] == [
        ("pharm.diallo", "laptop-0", {"delta": 10, "count": 10}),
        ("nurse.sow", "laptop-0", {"delta": -1, "count": 9}),
        ("dr.ba", "laptop-1", {"delta": -1, "count": 9}),
    ]
    assert [count_change(r.value) for r in history] == [10, -1, -1]
    assert history[1].at < history[2].at  # times, as for any revision
    assert history[1].as_dict()["value"] == {"delta": -1, "count": 9}


def test_set_records_the_change_from_the_count_read_now() -> None:
    (record,) = laptops(1)
    first = record.set(AMOX, 10, author="pharm.diallo")  # never written: starts at 0
    assert first.value == {"delta": 10, "count": 10}
    assert record.set(AMOX, 9, author="pharm.diallo").value == {"delta": -1, "count": 9}
    assert record.set(AMOX, 9, author="pharm.diallo").value == {"delta": 0, "count": 9}
    assert record.adjust(AMOX, 5, author="pharm.diallo").value == {"delta": 5, "count": 14}
    rev = record.adjust(AMOX, -20, author="pharm.diallo")  # below zero is written, and flagged
    assert rev.value == {"delta": -20, "count": -6}
    assert rev.parents == (record.history(AMOX)[-2].id,)
    assert record.value(AMOX) == -6
    # the revision is stored as one compact JSON string, like every revision
    assert json.loads(encode_revision(rev))["v"] == {"delta": -20, "count": -6}


def test_a_count_never_written_reads_as_never_written_and_adjust_starts_at_zero() -> None:
    (record,) = laptops(1)
    assert not record.get(AMOX).exists
    assert record.value(AMOX) is None
    assert record.value(AMOX, 0) == 0
    assert record.count_paths() == []
    record.adjust("stock/gloves", 3, author="pharm.diallo")
    assert record.value("stock/gloves") == 3
    assert record.count_paths() == ["stock/gloves"]


@pytest.mark.parametrize(
    "bad", [9.0, 9.5, "9", None, True, False, [9], {"delta": -1}, 2**53, -(2**53)]
)
def test_a_count_must_be_an_integer_within_2_53(bad: object) -> None:
    (record,) = stocked(1)
    before = record.update_since()
    with pytest.raises(InvalidValueError):
        record.set(AMOX, bad, author="pharm.diallo")  # type: ignore[arg-type]
    if not isinstance(bad, int) or isinstance(bad, bool):
        with pytest.raises(InvalidValueError):
            record.adjust(AMOX, bad, author="pharm.diallo")  # type: ignore[arg-type]
    assert record.update_since() == before  # nothing written


def test_a_change_that_takes_a_count_out_of_range_is_refused() -> None:
    (record,) = laptops(1)
    record.set(AMOX, 2**53 - 1, author="pharm.diallo")
    with pytest.raises(InvalidValueError, match="outside"):
        record.adjust(AMOX, 1, author="pharm.diallo")
    record.set(AMOX, 0, author="pharm.diallo")
    record.set(AMOX, -(2**53) + 1, author="pharm.diallo")
    with pytest.raises(InvalidValueError, match="change"):
        record.set(AMOX, 2**53 - 1, author="pharm.diallo")  # a change of 2**54 - 2


def test_adjust_refuses_a_path_that_is_not_a_count() -> None:
    (record,) = laptops(1)
    with pytest.raises(InvalidPathError, match="not a count"):
        record.adjust("weight", 1, author="dr.ba")
    with pytest.raises(InvalidPathError):
        record.adjust("_ack/x", 1, author="dr.ba")
    assert record.paths() == []


def test_a_plain_field_is_unchanged_by_counts() -> None:
    a, b = laptops()
    a.set("weight", 70, author="dr.ba")
    exchange(a, b)
    a.set("weight", 71, author="dr.ba")
    b.set("weight", 72, author="nurse.sow")
    exchange(a, b)
    state = a.get("weight")
    assert type(state) is not CountState
    assert state.in_conflict  # a register still shows its conflict


def test_a_loaded_record_reads_the_same_totals() -> None:
    a, b = stocked()
    a.adjust(AMOX, -3, author="nurse.sow")
    b.adjust(AMOX, -2, author="dr.ba")
    b.adjust("stock/gloves", 100, author="dr.ba")
    exchange(a, b)
    loaded = Record.from_updates("rec-1", (a.update_since(), b.update_since()), replica="x")
    assert loaded.value(AMOX) == a.value(AMOX) == b.value(AMOX) == 5
    assert loaded.value("stock/gloves") == 100
    assert loaded.count_paths() == [AMOX, "stock/gloves"]
    assert loaded.fields()[AMOX].value == 5


def test_a_field_spec_checks_the_count_a_write_makes() -> None:
    schema = DEFAULT_SCHEMA.with_fields(
        FieldSpec("stock/gloves", validate=lambda v: "at most 1000" if v > 1000 else None)  # type: ignore[operator]
    )
    (record,) = laptops(1, schema=schema)
    record.set("stock/gloves", 1000, author="pharm.diallo")
    with pytest.raises(InvalidValueError, match="at most 1000"):
        record.adjust("stock/gloves", 1, author="pharm.diallo")
    assert record.value("stock/gloves") == 1000


def test_counts_declared_by_an_application_at_top_level_and_in_entries() -> None:
    schema = DEFAULT_SCHEMA.with_collections(["supplies"]).with_counts(
        "inventory/*", "supplies/*/quantity"
    )
    a, b = laptops(schema=schema)
    a.set("inventory/gloves", 50, author="pharm.diallo")
    entry = a.add_entry("supplies", {"name": "saline 0.9%", "quantity": 12}, author="pharm.diallo")
    exchange(a, b)
    a.adjust(f"supplies/{entry}/quantity", -2, author="nurse.sow")
    b.set(f"supplies/{entry}/quantity", 11, author="dr.ba")
    a.adjust("inventory/gloves", -5, author="nurse.sow")
    b.adjust("inventory/gloves", -5, author="dr.ba")
    exchange(a, b)
    for record in (a, b):
        assert record.value("inventory/gloves") == 40
        supply = record.entry("supplies", entry)
        assert supply.value("quantity") == 9
        assert isinstance(supply.fields["quantity"], CountState)
        assert supply.value("name") == "saline 0.9%"
        assert record.conflicted_paths() == []
    assert a.history(f"supplies/{entry}/quantity")[0].value == {"delta": 12, "count": 12}
    with pytest.raises(UnknownEntryError):
        a.adjust("supplies/nope/quantity", 1, author="dr.ba")
    with pytest.raises(InvalidValueError):
        a.add_entry("supplies", {"quantity": "twelve"}, author="pharm.diallo")


def test_a_signed_note_cannot_hold_a_count_and_its_fields_stay_frozen() -> None:
    (record,) = laptops(1)
    note = record.add_entry("notes", {"text": "seen"}, author="dr.ba")
    record.sign_note(note, author="dr.ba")
    with pytest.raises(ImmutableFieldError):
        record.set(f"notes/{note}/text", "changed", author="dr.ba")
    with pytest.raises(InvalidPathError):
        DEFAULT_SCHEMA.with_counts("notes/*/pills")


# ------------------------------------------- revisions that are not changes (peers)


def test_bare_integers_read_as_absolute_counts() -> None:
    """Written at the path before it was a count, or by a peer that does not know counts."""
    (record,) = laptops(1)
    legacy = {
        **stored("old-1", AMOX, 10),
        **stored("old-2", AMOX, 9, parents=("old-1",)),  # 10 -> 9 on one old laptop
        **stored("old-3", AMOX, 9, parents=("old-1",), replica="laptop-old-2"),  # and another
    }
    record.apply_update(raw_update(record, legacy))
    assert record.value(AMOX) == 8  # 10, then -1 and -1: they add up too
    state = record.get(AMOX)
    assert isinstance(state, CountState)
    assert state.uncounted == ()
    rev = record.set(AMOX, 7, author="pharm.diallo")  # a new write on top of them
    assert rev.value == {"delta": -1, "count": 7}
    assert record.value(AMOX) == 7
    # the same reading whatever the order the revisions arrive in
    (other,) = laptops(1)
    for key, text in reversed([*legacy.items(), (rev.id, encode_revision(rev))]):
        other.apply_update(raw_update(other, {key: text}))
    assert other.value(AMOX) == 7


def test_a_write_that_is_not_a_count_is_left_out_flagged_and_closed_by_a_recount() -> None:
    a, b = stocked()
    a.apply_update(
        raw_update(a, stored("junk", AMOX, "ten boxes", parents=(a.history(AMOX)[0].id,)))
    )
    exchange(a, b)
    for record in (a, b):
        state = record.get(AMOX)
        assert isinstance(state, CountState)
        assert state.total == 10  # the first write; "ten boxes" adds nothing
        assert [r.id for r in state.uncounted] == ["junk"]
    conflicts = RULES.conflicts(a)
    assert [(c.rule, c.severity) for c in conflicts] == [(UNCOUNTED_WRITE, Severity.FLAG)]
    assert conflicts == RULES.conflicts(b)
    assert "'ten boxes'" in conflicts[0].message
    assert "left out of its total (10)" in conflicts[0].message
    b.set(AMOX, 10, author="pharm.diallo")  # counted: 10
    exchange(a, b)
    assert RULES.conflicts(a) == RULES.conflicts(b) == []
    assert a.value(AMOX) == 10


def test_a_cycle_of_bare_integers_is_read_alike_everywhere() -> None:
    """Only a hostile peer can make one: it must not hang, crash or diverge."""
    cycle = {
        **stored("x", AMOX, 5, parents=("y",)),
        **stored("y", AMOX, 7, parents=("x",)),
        **stored("z", AMOX, 3, parents=("x",)),
    }
    totals = set()
    for order in itertools.permutations(cycle):
        (record,) = laptops(1)
        for key in order:
            record.apply_update(raw_update(record, {key: cycle[key]}))
        state = record.get(AMOX)
        assert isinstance(state, CountState)
        totals.add((state.total, tuple(r.id for r in state.uncounted)))
    assert len(totals) == 1


# --------------------------------------------------------------------- the rule


def test_a_count_below_zero_is_a_block_finding_alike_everywhere() -> None:
    a, b, c = stocked(3, count=1)
    a.adjust(AMOX, -1, author="nurse.sow")  # the last box, on two laptops
    b.set(AMOX, 0, author="dr.ba")
    exchange(a, b, c)
    assert a.value(AMOX) == -1
    conflicts = RULES.conflicts(a)
    assert conflicts == RULES.conflicts(b) == RULES.conflicts(c)
    (conflict,) = conflicts
    assert conflict.kind is ConflictKind.RULE
    assert conflict.rule == COUNT_BELOW_ZERO
    assert conflict.severity is Severity.BLOCK
    assert conflict.message == (
        "stock of amoxicillin-500mg is -1 after 2 concurrent dispensings "
        "(nurse.sow on laptop-0: -1, dr.ba on laptop-1: -1): "
        "recount it and enter the counted value"
    )
    heads = [h.id for h in a.get(AMOX).heads]
    assert [cand.revision for cand in conflict.candidates] == heads
    assert [cand.value for cand in conflict.candidates] == [{"delta": -1, "count": 0}] * 2
    assert conflict.paths == (AMOX,)
    # no field conflict on the count itself
    assert [c.kind for c in conflicts] == [ConflictKind.RULE]
    # a block cannot merely be acknowledged
    with pytest.raises(Exception, match="must choose"):
        RULES.acknowledge(a, conflict.id, author="dr.ba")


def test_a_recount_closes_the_finding_on_every_replica() -> None:
    a, b, c = stocked(3, count=1)
    a.adjust(AMOX, -1, author="nurse.sow")
    b.adjust(AMOX, -1, author="dr.ba")
    exchange(a, b, c)
    (finding,) = RULES.conflicts(c)
    rev = c.set(AMOX, 0, author="pharm.diallo")  # counted the shelf: none left
    assert rev.value == {"delta": 1, "count": 0}
    assert sorted(rev.parents) == sorted(cand.revision for cand in finding.candidates)
    assert RULES.conflicts(c) == []
    exchange(a, b, c)
    for record in (a, b, c):
        assert record.value(AMOX) == 0
        assert RULES.conflicts(record) == []
        assert len(record.history(AMOX)) == 4  # every write kept


def test_a_single_write_below_zero_is_found_too_and_zero_is_fine() -> None:
    (record,) = stocked(1, count=2)
    record.adjust(AMOX, -2, author="nurse.sow")
    assert RULES.conflicts(record) == []
    record.adjust("stock/gloves", -3, author="nurse.sow")
    (conflict,) = RULES.conflicts(record)
    assert conflict.message == (
        "stock of gloves is -3 after a dispensing by nurse.sow on laptop-0: -3: "
        "recount it and enter the counted value"
    )


def test_the_rule_names_counts_outside_stock_by_their_path() -> None:
    schema = DEFAULT_SCHEMA.with_counts("inventory/*")
    a, b = laptops(schema=schema)
    a.set("inventory/gloves", 1, author="pharm.diallo")
    exchange(a, b)
    a.adjust("inventory/gloves", -1, author="nurse.sow")
    b.adjust("inventory/gloves", 2, author="dr.ba")
    b.adjust("inventory/gloves", -4, author="dr.ba")
    exchange(a, b)
    (conflict,) = RULES.conflicts(a)
    assert conflict.message.startswith("count inventory/gloves is -2 after 2 concurrent changes")
    assert RULES.conflicts(b) == [conflict]


def test_the_rule_is_versioned_and_named() -> None:
    from caresync.conflicts import rule_fingerprint

    assert rule_fingerprint(count_below_zero) == (
        "caresync.conflicts.counts:count_below_zero",
        "int:1",
    )


# ------------------------------------------------------------------- admission


def server_for(record: Record) -> Admission:
    """A server's admission for what ``record`` holds now (a copy: later writes are new)."""
    copy = Record.from_update(
        record.record_id, record.update_since(), replica="server", schema=record.schema
    )
    return Admission.for_record(copy, now_ms=lambda: NOW + 10_000)


def test_the_server_admits_honest_count_writes() -> None:
    schema = DEFAULT_SCHEMA.with_collections(["supplies"]).with_counts("supplies/*/quantity")
    (record,) = laptops(1, schema=schema)
    admission = server_for(record)
    outbox: list[bytes] = []
    record.on_update(lambda update, local: outbox.append(update) if local else None)
    record.set(AMOX, 10, author="pharm.diallo")
    record.adjust(AMOX, -1, author="nurse.sow")
    record.set(AMOX, 20, author="pharm.diallo")
    record.add_entry("supplies", {"quantity": 3}, author="pharm.diallo")
    admitted = [rev for update in outbox for rev in admission.admit(update)]
    assert [r.value for r in admitted if r.path == AMOX] == [
        {"delta": 10, "count": 10},
        {"delta": -1, "count": 9},
        {"delta": 11, "count": 20},
    ]
    assert len(admitted) == 5


@pytest.mark.parametrize(
    "value",
    [
        {"delta": "1", "count": 9},
        {"delta": 1.0, "count": 9},
        {"delta": True, "count": 9},
        {"delta": None, "count": 9},
        {"delta": -1},
        {"count": 9},
        {"delta": -1, "count": "9"},
        {"delta": -1, "count": 9, "why": "dispensed"},
        {"delta": 2**53, "count": 9},
        {},
        "9",
        9.0,
        None,
        True,
        [-1, 9],
    ],
)
def test_the_server_refuses_a_malformed_count_revision(value: object) -> None:
    (record,) = laptops(1)
    admission = server_for(record)
    update = raw_update(record, stored("bad", AMOX, value, wall_ms=NOW))
    with pytest.raises(RefusedUpdateError) as info:
        admission.admit(update)
    assert "revision bad" in str(info.value)
    assert AMOX in str(info.value)


def test_the_server_admits_a_bare_integer_at_a_count_path() -> None:
    """An absolute count, as a laptop that does not know counts yet writes it."""
    (record,) = laptops(1)
    admission = server_for(record)
    (rev,) = admission.admit(raw_update(record, stored("old-1", AMOX, 10)))
    assert rev.value == 10


def test_the_server_checks_counts_declared_by_the_application_schema() -> None:
    schema = DEFAULT_SCHEMA.with_counts("inventory/*")
    (record,) = laptops(1, schema=schema)
    admission = server_for(record)
    with pytest.raises(RefusedUpdateError, match="is a count"):
        admission.admit(raw_update(record, stored("bad", "inventory/gloves", "many")))
    # the default schema knows nothing of inventory/: a plain value there is a register
    (plain,) = laptops(1)
    assert server_for(plain).admit(raw_update(plain, stored("ok", "inventory/gloves", "many")))


# ------------------------------------------------------------------ convergence

COUNT_PATHS = (AMOX, "stock/gloves", "inventory/saline")
SCHEMA = DEFAULT_SCHEMA.with_counts("inventory/*")

write_op = st.tuples(
    st.just("write"),
    st.integers(0, 4),  # replica
    st.sampled_from(COUNT_PATHS),
    st.sampled_from(("set", "adjust")),
    st.integers(-5, 12),
)
deliver_op = st.tuples(st.just("deliver"), st.integers(0, 10_000), st.booleans())
restart_op = st.tuples(st.just("restart"), st.integers(0, 4))


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(2, 5),
    ops=st.lists(st.one_of(write_op, write_op, deliver_op, deliver_op, restart_op), max_size=40),
    final_order=st.randoms(use_true_random=False),
)
def test_replicas_converge_on_totals_that_are_the_sum_of_every_change(
    n: int, ops: list[tuple[Any, ...]], final_order: Any
) -> None:
    records = laptops(n, schema=SCHEMA)
    pending: list[tuple[int, bytes]] = []  # (target, update), delivered out of order
    written: dict[str, Revision] = {}

    def listen(i: int, record: Record) -> None:
        def send(update: bytes, local: bool) -> None:
            if local:
                pending.extend((t, update) for t in range(n) if t != i)

        record.on_update(send)

    for i, record in enumerate(records):
        listen(i, record)
    for op in ops:
        if op[0] == "write":
            _, i, path, how, amount = op
            record = records[i % n]
            if how == "adjust":
                rev = record.adjust(path, amount, author=f"author-{i}")
            else:
                rev = record.set(path, amount, author=f"author-{i}")
            assert isinstance(rev.value, dict)
            if how == "set":
                assert rev.value["count"] == amount
            assert record.value(path) == rev.value["count"]
            written[rev.id] = rev
        elif op[0] == "deliver" and pending:
            _, index, keep = op
            target, update = pending[index % len(pending)]
            if not keep:
                pending.pop(index % len(pending))
            records[target].apply_update(update)  # again later, with keep: a duplicate
        elif op[0] == "restart":
            i = op[1] % n
            old = records[i]
            records[i] = Record.from_update(
                old.record_id,
                old.update_since(),
                replica=old.replica,
                schema=SCHEMA,
                clock=old.clock,
                new_id=old._new_id,
            )
            listen(i, records[i])
    # everything still in flight arrives, in a random order, some of it twice
    final_order.shuffle(pending)
    for target, update in pending + pending[: len(pending) // 2]:
        records[target].apply_update(update)
    exchange(*records)

    for path in COUNT_PATHS:
        changes = [count_change(r.value) for r in written.values() if r.path == path]
        assert None not in changes
        expected = sum(c for c in changes if c is not None) if changes else None
        totals = {r.value(path) for r in records}
        assert totals == {expected}, path
        for record in records:
            history = record.history(path)
            assert {r.id for r in history} == {r.id for r in written.values() if r.path == path}
            assert not record.get(path).in_conflict
    # the same findings, with the same ids, everywhere
    findings = [[(c.id, c.message) for c in RULES.conflicts(r)] for r in records]
    assert all(f == findings[0] for f in findings)
    below = {c.subject for c in RULES.conflicts(records[0])}
    assert below <= {COUNT_BELOW_ZERO}
    states = [records[0].get(p) for p in COUNT_PATHS]
    assert bool(below) == any(isinstance(t, CountState) and t.total < 0 for t in states)


# ------------------------------------------------------ end to end, with a server


async def test_three_laptops_dispensing_offline_converge_through_the_server(
    clinic: Clinic,
) -> None:
    north = await clinic.laptop("north", user="nurse.sow")
    south = await clinic.laptop("south", user="dr.ba")
    west = await clinic.laptop("west", user="pharm.diallo")
    record_id = await west.create_record()
    await west.set(record_id, AMOX, 10, author="pharm.diallo")
    await clinic.quiescent()
    for laptop in (north, south, west):
        await laptop.sync()
    await clinic.log_in(west, "dr.fall")  # the pharmacist's colleague takes over west

    for laptop, who in ((north, "nurse.sow"), (south, "dr.ba"), (west, "dr.fall")):
        laptop.offline()
        assert (await laptop.record(record_id)).value(AMOX) == 10
        await laptop.set(record_id, AMOX, 9, author=who)  # each dispenses one box
    for laptop in (north, south, west):
        laptop.online()
        await laptop.sync()
    for laptop in (north, south, west):
        await laptop.sync()
    await clinic.quiescent()

    for laptop in (north, south, west):
        record = await laptop.record(record_id)
        assert record.value(AMOX) == 7
        history = record.history(AMOX)
        assert sorted((r.author, r.replica, count_change(r.value)) for r in history[1:]) == [
            ("dr.ba", south.replica_id, -1),
            ("dr.fall", west.replica_id, -1),
            ("nurse.sow", north.replica_id, -1),
        ]
        assert await laptop.conflicts() == []
    await clinic.assert_converged()


foreign_op = st.tuples(
    st.just("foreign"),
    st.integers(0, 4),
    st.sampled_from(COUNT_PATHS),
    st.sampled_from((3, 10, -2, "ten", None, {"delta": "1"}, {"delta": 2, "count": 7})),
)


def totals_of(record: Record) -> dict[str, tuple[object, tuple[str, ...]]]:
    out: dict[str, tuple[object, tuple[str, ...]]] = {}
    for path in COUNT_PATHS:
        state = record.get(path)
        uncounted = state.uncounted if isinstance(state, CountState) else ()
        out[path] = (state.value, tuple(r.id for r in uncounted))
    return out


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(2, 4),
    ops=st.lists(st.one_of(write_op, foreign_op, deliver_op, deliver_op, restart_op), max_size=30),
    final_order=st.randoms(use_true_random=False),
)
def test_revisions_from_peers_that_know_no_counts_are_read_alike_everywhere(
    n: int, ops: list[tuple[Any, ...]], final_order: Any
) -> None:
    """Bare integers and junk, arriving in any order: every replica reads the same totals,
    and a total kept up to date as revisions arrive equals one summed afresh from the bytes."""
    records = laptops(n, schema=SCHEMA)
    pending: list[tuple[int, bytes]] = []
    foreign_ids = itertools.count()

    def listen(i: int, record: Record) -> None:
        def send(update: bytes, local: bool) -> None:
            if local:
                pending.extend((t, update) for t in range(n) if t != i)

        record.on_update(send)

    def fresh(record: Record) -> Record:
        return Record.from_update(
            record.record_id, record.update_since(), replica="fresh", schema=SCHEMA
        )

    for i, record in enumerate(records):
        listen(i, record)
    for op in ops:
        touched: Record | None = None
        if op[0] == "write":
            _, i, path, how, amount = op
            touched = records[i % n]
            if how == "adjust":
                touched.adjust(path, amount, author=f"author-{i}")
            else:
                touched.set(path, amount, author=f"author-{i}")
        elif op[0] == "foreign":  # a peer's revision on top of what replica i holds
            _, i, path, value = op
            touched = records[i % n]
            heads = tuple(sorted(h.id for h in touched.get(path).heads))
            rev_id = f"peer.{next(foreign_ids)}"
            update = raw_update(touched, stored(rev_id, path, value, parents=heads))
            touched.apply_update(update)
            pending.extend((t, update) for t in range(n) if t != i % n)
        elif op[0] == "deliver" and pending:
            _, index, keep = op
            target, update = pending[index % len(pending)]
            if not keep:
                pending.pop(index % len(pending))
            touched = records[target]
            touched.apply_update(update)
        elif op[0] == "restart":
            i = op[1] % n
            old = records[i]
            records[i] = Record.from_update(
                old.record_id,
                old.update_since(),
                replica=old.replica,
                schema=SCHEMA,
                clock=old.clock,
                new_id=old._new_id,
            )
            listen(i, records[i])
        if touched is not None:
            assert totals_of(touched) == totals_of(fresh(touched))
    final_order.shuffle(pending)
    for target, update in pending:
        records[target].apply_update(update)
    exchange(*records)
    expected = totals_of(fresh(records[0]))
    for record in records:
        assert totals_of(record) == expected
        assert not record.conflicted_paths()
    findings = [[c.id for c in RULES.conflicts(r)] for r in records]
    assert all(f == findings[0] for f in findings)
