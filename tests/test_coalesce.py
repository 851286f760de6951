"""Merging a pull's feed entries per record (protocol version 10) changes nothing a
laptop ends with: the pure coalescer, over generated histories."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import caresync.replication.coalesce
from caresync import Record
from caresync.exceptions import InvalidUpdateError
from caresync.protocol.codec import item_wire_size
from caresync.records.crdt import merge
from caresync.replication.coalesce import Coalescer, MergeVerdicts, adds_revisions_only
from caresync.storage import FeedItem
from caresync.storage._updates import same_state_vector


def item(seq: int, record_id: str, update: bytes) -> FeedItem:
    return FeedItem(seq, record_id, update, "clinic-a")


def feed_of(
    plan: list[tuple[int, int, int]], records: int
) -> tuple[dict[str, Record], list[FeedItem]]:
    """Each plan step: a writer (of 3) writes a field (of 2) of a record; every write is
    one feed entry (its origin the writer). Writers share the record's first update and
    then see only their own edits, so later entries depend on earlier ones and some are
    concurrent."""
    origin: dict[str, Record] = {}
    writers: dict[tuple[str, int], Record] = {}
    feed: list[FeedItem] = []
    for _r in range(records):
        first = Record.create(replica="desk")
        origin[first.record_id] = first
        feed.append(item(len(feed) + 1, first.record_id, first.update_since()))
    ids = list(origin)
    for step, (writer, field, record) in enumerate(plan):
        record_id = ids[record % records]
        key = (record_id, writer)
        if key not in writers:
            writers[key] = Record.from_update(
                record_id, origin[record_id].update_since(), replica=f"laptop-{writer}"
            )
        mine = writers[key]
        seen = mine.state_vector()
        mine.set(("weightKg", "name")[field], step, author=f"dr.{writer}")
        feed.append(
            FeedItem(len(feed) + 1, record_id, mine.update_since(seen), "clinic-a", f"{writer}")
        )
    return origin, feed


def applied(record_id: str, updates: list[bytes]) -> Record:
    return Record.from_updates(record_id, updates, replica="reader")


plans = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 1), st.integers(0, 3)), min_size=1, max_size=30
)


@settings(max_examples=80, deadline=None)
@given(
    plan=plans,
    records=st.integers(1, 4),
    held=st.integers(0, 12),
    limit=st.integers(1, 4),
    own=st.booleans(),
)
def test_merged_entries_give_what_the_entries_give(
    plan: list[tuple[int, int, int]], records: int, held: int, limit: int, own: bool
) -> None:
    """A laptop that holds the first ``held`` entries (and, if ``own``, every entry it
    wrote itself as writer 0: a pull leaves those out, so others' later entries may
    depend on entries not sent) and takes the rest merged ends as one that takes them
    one by one, batch after batch."""
    _origin, feed = feed_of(plan, records)
    held = min(held, len(feed))
    before = [e for n, e in enumerate(feed) if n < held or (own and e.origin == "0")]
    after = [e for n, e in enumerate(feed) if not (n < held or (own and e.origin == "0"))]
    position = 0
    one_by_one: dict[str, list[bytes]] = {}
    merged: dict[str, list[bytes]] = {}
    for entry in before:
        one_by_one.setdefault(entry.record_id, []).append(entry.update)
        merged.setdefault(entry.record_id, []).append(entry.update)
    for _batch in range(len(after) + 1):  # bounded: each batch takes one entry at least
        rest = after[position:]
        if not rest:
            break
        coalescer = Coalescer(items=limit, budget=1 << 20)
        taken = coalescer.take(rest)
        assert 1 <= taken == len(coalescer.taken)
        assert list(coalescer.taken) == rest[:taken]
        assert coalescer.full == (taken < len(rest))
        entries = coalescer.entries()
        assert entries is not None
        # At most ``limit`` entries, in ascending seq: each record's edits as one, with
        # the seq of the last of them; anything else (a first update) on its own.
        assert len(entries) <= limit
        seqs = [seq for seq, _r, _u in entries]
        assert seqs == sorted(set(seqs))
        edits = [i for i in coalescer.taken if adds_revisions_only(i.update)]
        lone = {i.seq for i in coalescer.taken if not adds_revisions_only(i.update)}
        last_edit = {i.record_id: i.seq for i in edits}
        assert set(seqs) == lone | set(last_edit.values())
        assert len(entries) == len(lone) + len(last_edit)
        for _seq, record_id, update in entries:
            merged.setdefault(record_id, []).append(update)
        for entry in coalescer.taken:
            one_by_one.setdefault(entry.record_id, []).append(entry.update)
        position += taken
    assert position == len(after)
    assert one_by_one.keys() == merged.keys()
    for record_id, updates in one_by_one.items():
        a, b = applied(record_id, updates), applied(record_id, merged[record_id])
        assert same_state_vector(a.state_vector(), b.state_vector())
        assert sorted(a.revisions()) == sorted(b.revisions())
        for path in a.paths():
            assert a.get(path) == b.get(path)


def test_a_batch_stops_at_its_byte_budget_but_always_moves() -> None:
    _origin, feed = feed_of([(0, 0, 0), (1, 1, 0), (2, 0, 0)], 1)
    sizes = [item_wire_size(i.record_id, i.update) for i in feed]
    coalescer = Coalescer(items=10, budget=sizes[0] + sizes[1])
    assert coalescer.take(feed) == 2
    assert coalescer.full
    # The first entry goes even when it alone is over the budget.
    tiny = Coalescer(items=10, budget=1)
    assert tiny.take(feed) == 1
    assert tiny.full
    entries = tiny.entries()
    assert entries == [(feed[0].seq, feed[0].record_id, feed[0].update)]


def test_chunks_are_taken_until_the_coalescer_is_full() -> None:
    _origin, feed = feed_of([(0, 0, r) for r in range(6)], 3)
    coalescer = Coalescer(items=2, budget=1 << 20)
    assert coalescer.take(feed[:2]) == 2
    assert not coalescer.full
    taken = coalescer.take(feed[2:])
    assert coalescer.full
    assert {i.record_id for i in coalescer.taken} == {feed[0].record_id, feed[1].record_id}
    assert len(coalescer.taken) == 2 + taken


def test_only_edits_merge_anything_else_goes_on_its_own() -> None:
    """A record's first update (it names the record) and bytes that are not a simple
    edit go as they are, so a laptop that keeps one aside keeps nothing else with it."""
    _origin, feed = feed_of([(0, 0, 0), (1, 1, 0), (2, 0, 0)], 1)
    first, edits = feed[0], feed[1:]
    assert not adds_revisions_only(first.update)
    assert all(adds_revisions_only(e.update) for e in edits)
    odd = FeedItem(5, first.record_id, b"\xff\xfe not yjs", "clinic-a")
    assert not adds_revisions_only(odd.update)
    coalescer = Coalescer(items=3, budget=1 << 20)
    assert coalescer.take([*feed, odd]) == 5
    entries = coalescer.entries()
    assert entries is not None
    assert [(seq, update) for seq, _r, update in entries] == [
        (1, first.update),
        (4, merge([e.update for e in edits])),
        (5, odd.update),
    ]
    # Three items already: a fourth lone entry does not fit, an edit of the record does.
    more = FeedItem(6, first.record_id, b"\x00", "clinic-a")
    assert coalescer.take([more]) == 0
    assert coalescer.full


def test_edits_that_do_not_merge_after_all_give_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server then sends the entries as they are."""
    _origin, feed = feed_of([(0, 0, 0), (1, 1, 0)], 1)

    def refuse(parts: object, *, record_id: str | None = None) -> bytes:
        raise InvalidUpdateError("not mergeable")

    monkeypatch.setattr(caresync.replication.coalesce, "merge", refuse)
    coalescer = Coalescer(items=5, budget=1 << 20)
    coalescer.take(feed)
    assert coalescer.entries() is None


def test_an_edit_after_an_entry_that_goes_alone_stays_after_it() -> None:
    """Edit, lone entry, edit of one record go as three entries in feed order: a laptop
    that keeps the lone one aside takes the edits in around it as from older servers,
    not merged past it (found by review: they merged into one entry after it)."""
    _origin, feed = feed_of([(0, 0, 0), (1, 1, 0)], 1)
    first, one, two = feed
    odd = FeedItem(3, first.record_id, b"\xff\xfe not yjs", "clinic-a")
    later = FeedItem(4, two.record_id, two.update, "clinic-a")
    coalescer = Coalescer(items=10, budget=1 << 20)
    assert coalescer.take([first, one, odd, later]) == 4
    entries = coalescer.entries()
    assert entries is not None
    assert [(seq, update) for seq, _r, update in entries] == [
        (1, first.update),
        (2, one.update),
        (3, odd.update),
        (4, two.update),
    ]


@settings(max_examples=40, deadline=None)
@given(plan=plans, records=st.integers(1, 4), limit=st.integers(1, 4))
def test_remembered_verdicts_give_the_same_entries(
    plan: list[tuple[int, int, int]], records: int, limit: int
) -> None:
    """A coalescer that asks a server's remembered verdicts (the same feed read by one
    laptop after another) sends exactly what one that classifies every entry sends."""
    _origin, feed = feed_of(plan, records)
    odd = FeedItem(len(feed) + 1, feed[0].record_id, b"\xff\xfe not yjs", "clinic-a")
    feed = [*feed, odd]
    verdicts = MergeVerdicts()
    for _laptop in range(2):
        fresh, remembered = (
            Coalescer(items=limit, budget=1 << 20, verdicts=v) for v in (None, verdicts)
        )
        assert fresh.take(feed) == remembered.take(feed)
        assert fresh.entries() == remembered.entries()
    # Only entries asked about are kept (a record changed once is never asked).
    assert len(verdicts) <= len({e.update for e in feed})


def test_verdicts_are_those_of_the_bytes_and_stay_within_their_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A verdict asked again is not computed again; the bytes kept stay under the bound
    (the least recently used go) and an update over a 64th of it is never kept."""
    _origin, feed = feed_of([(0, 0, 0), (1, 1, 0), (2, 0, 0)], 1)
    parsed: list[bytes] = []
    real = caresync.replication.coalesce.adds_revisions_only

    def counted(update: bytes) -> bool:
        parsed.append(update)
        return real(update)

    monkeypatch.setattr(caresync.replication.coalesce, "adds_revisions_only", counted)
    bound = 64 * max(len(e.update) for e in feed)
    verdicts = MergeVerdicts(max_bytes=bound)
    answers = [verdicts.adds_revisions_only(e.update) for e in (*feed, *feed)]
    assert answers == [False, True, True, True] * 2
    assert parsed == [e.update for e in feed]  # each parsed once
    too_big = b"\x00" * (bound // 64 + 1)
    assert not verdicts.adds_revisions_only(too_big)
    assert not verdicts.adds_revisions_only(too_big)
    assert parsed.count(too_big) == 2  # not kept: parsed each time
    assert len(verdicts) == len(feed)
    _origin, many = feed_of([(step % 3, step % 2, 0) for step in range(100)], 1)
    small = MergeVerdicts(max_bytes=64 * max(len(e.update) for e in many))
    for e in many:
        small.adds_revisions_only(e.update)
    assert len(small) < len(many)  # the oldest went
    assert sum(len(u) for u in small._verdicts) <= 64 * max(len(e.update) for e in many)
    parsed.clear()
    assert small.adds_revisions_only(many[-1].update)
    assert parsed == []  # the newest stayed
    assert not small.adds_revisions_only(many[0].update)
    assert parsed == [many[0].update]  # the oldest went: parsed again


class EagerCoalescer:
    """The coalescer as it was before it asked lazily (every entry parsed as it came):
    the reference the lazy one must agree with, entry for entry."""

    def __init__(self, *, items: int, budget: int) -> None:
        self.limit, self.budget = items, budget
        self.groups: dict[str, list[FeedItem]] = {}
        self.items: list[list[FeedItem]] = []
        self.taken: list[FeedItem] = []
        self.full = False

    def take(self, items: list[FeedItem]) -> int:
        for count, entry in enumerate(items):
            size = item_wire_size(entry.record_id, entry.update)
            mergeable = adds_revisions_only(entry.update)
            group = self.groups.get(entry.record_id) if mergeable else None
            if self.taken and (
                size > self.budget or (group is None and len(self.items) >= self.limit)
            ):
                self.full = True
                return count
            self.budget -= size
            if group is not None:
                group.append(entry)
            else:
                group = [entry]
                self.items.append(group)
                if mergeable:
                    self.groups[entry.record_id] = group
                else:
                    self.groups.pop(entry.record_id, None)
            self.taken.append(entry)
        return len(items)

    def groups_sent(self) -> list[list[int]]:
        return sorted([entry.seq for entry in group] for group in self.items)


@settings(max_examples=120, deadline=None)
@given(
    plan=plans,
    records=st.integers(1, 4),
    odd_at=st.lists(st.integers(0, 40), max_size=4),
    limit=st.integers(1, 6),
    budget=st.integers(60, 2000),
    chunk=st.integers(1, 8),
)
def test_lazy_and_eager_coalescers_send_the_same(
    plan: list[tuple[int, int, int]],
    records: int,
    odd_at: list[int],
    limit: int,
    budget: int,
    chunk: int,
) -> None:
    """Asking whether an entry only adds revisions only when another entry of its record
    follows changes nothing sent: the same entries taken, the same fullness, the same
    groups merged, over generated feeds with first updates, edits and bytes that are
    not updates, taken in chunks."""
    _origin, feed = feed_of(plan, records)
    for at in odd_at:  # bytes that are not a simple edit, among a record's edits
        at = at % (len(feed) + 1)
        record_id = feed[min(at, len(feed) - 1)].record_id
        feed.insert(at, FeedItem(0, record_id, b"\xff\xfe not yjs", "clinic-a"))
    feed = [FeedItem(n + 1, e.record_id, e.update, "clinic-a") for n, e in enumerate(feed)]
    lazy, eager = Coalescer(items=limit, budget=budget), EagerCoalescer(items=limit, budget=budget)
    for start in range(0, len(feed), chunk):
        part = feed[start : start + chunk]
        assert lazy.take(part) == eager.take(part)
        assert lazy.full == eager.full
        if lazy.full:
            break
    assert list(lazy.taken) == eager.taken
    entries = lazy.entries()
    assert entries is not None
    merged = {seq for seq, _r, _u in entries}
    assert merged == {group[-1] for group in eager.groups_sent()}
    by_seq = {seq: update for seq, _r, update in entries}
    for group in eager.groups_sent():
        if len(group) > 1:
            updates = [feed[seq - 1].update for seq in group]
            assert by_seq[group[-1]] == merge(updates)


def test_a_record_changed_once_is_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The common pull (each record changed once) asks nothing of the entries' bytes;
    a record's second entry asks of both."""
    _origin, feed = feed_of([(0, 0, 0), (0, 0, 1), (1, 1, 0)], 2)
    asked: list[bytes] = []
    real = adds_revisions_only

    def counted(update: bytes) -> bool:
        asked.append(update)
        return real(update)

    monkeypatch.setattr(caresync.replication.coalesce, "adds_revisions_only", counted)
    edits = feed[2:]  # record 0, record 1, record 0 again
    coalescer = Coalescer(items=10, budget=1 << 20)
    assert coalescer.take(edits[:2]) == 2
    assert asked == []
    assert coalescer.take(edits[2:]) == 1
    assert sorted(asked) == sorted([edits[0].update, edits[2].update])
    entries = coalescer.entries()
    assert entries is not None
    assert [seq for seq, _r, _u in entries] == [edits[1].seq, edits[2].seq]
