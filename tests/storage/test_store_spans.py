"""The strict reader of simple updates, checked against pycrdt, and planning with and without it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, get_state, merge_updates
from store_helpers import Patient

from caresync.records import Record
from caresync.records.spans import (
    adds_clocks,
    decode_clocks,
    encode_clocks,
    encode_varuint,
    simple_span,
)
from caresync.replication.checked import copied_state
from caresync.storage import CachedRecord, IncomingUpdate
from caresync.storage import _writes as writes_module
from caresync.storage._updates import (
    _runs_up_to,
    covered_by,
    decode_state_vector,
    has_pending,
    merge,
    same_state_vector,
)
from caresync.storage._writes import plan_writes

# ------------------------------------------------------------- making updates

values = st.one_of(
    st.text(max_size=3),
    st.text(min_size=120, max_size=300),  # a length of two varuint bytes
    st.integers(-(2**40), 2**40),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=2), st.text(max_size=2), max_size=2),
)
ops = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(["revisions", "meta"]), st.text(max_size=4), values),
    st.tuples(st.just("batch"), st.lists(st.text(max_size=4), min_size=1, max_size=4)),
    st.tuples(st.just("delete"), st.text(max_size=4)),
    st.tuples(st.just("array"), values),
    st.tuples(st.just("text"), st.text(min_size=1, max_size=4)),
    st.tuples(st.just("nested"), st.text(max_size=4)),
    st.tuples(st.just("other client"), st.text(max_size=4)),
)


def updates_of(script: list[tuple[Any, ...]]) -> list[bytes]:
    """Run a script of operations on a document (and a second client's copy); every update."""
    doc: Doc[Any] = Doc()
    seen: list[bytes] = []
    doc.observe(lambda event: seen.append(event.update))
    revisions = doc.get("revisions", type=Map)
    for op in script:
        kind = op[0]
        if kind == "set":
            doc.get(op[1], type=Map)[op[2]] = op[3]
        elif kind == "batch":
            with doc.transaction():
                for n, key in enumerate(op[1]):
                    revisions[f"{key}/{n}"] = f"value {n}"
        elif kind == "delete" and op[1] in revisions:
            del revisions[op[1]]
        elif kind == "array":
            doc.get("array", type=Array).append(op[1])
        elif kind == "text":
            doc.get("text", type=Text).insert(0, op[1])
        elif kind == "nested":
            revisions[op[1]] = Map({"a": "b"})
        elif kind == "other client":
            other: Doc[Any] = Doc()
            other.apply_update(doc.get_update())
            before = other.get_state()
            other.get("revisions", type=Map)[op[1]] = "from elsewhere"
            update = other.get_update(before)
            doc.apply_update(update)
            seen.append(update)
    return seen


def mutations(update: bytes) -> list[bytes]:
    """Damaged copies of an update: every byte changed a few ways, cut short, extended."""
    out = [update[:cut] for cut in range(len(update))]
    out += [update + b"\x00", update + b"\x01", update[:-1] + b"\x01\x00"]
    for pos in range(len(update)):
        for value in {0x00, 0x01, 0x7F, 0x80, 0xFF, update[pos] ^ 0x01, update[pos] ^ 0x40}:
            out.append(update[:pos] + bytes([value]) + update[pos + 1 :])
    return out


def assert_pycrdt_agrees(candidate: bytes) -> bool:
    """If the reader vouches for the bytes, pycrdt reads them and agrees on every number."""
    span = simple_span(candidate)
    if span is None:
        return False
    client, first, end = span
    assert first < end
    (client_id,) = decode_state_vector(encode_clocks({client: 0}))
    before = encode_clocks({client: first} if first else {})
    merged = merge_updates(_runs_up_to(before), candidate)  # raises if pycrdt cannot read it
    vector = get_state(merged)
    held = {c: clock for c, clock in decode_state_vector(vector).items() if clock}
    assert held == {client_id: end}
    assert not has_pending(merged, vector)
    assert covered_by(candidate, encode_clocks({client: end}))
    assert not covered_by(candidate, encode_clocks({client: end - 1}))
    Doc().apply_update(candidate)  # a document reads them too
    return True


@given(st.lists(ops, min_size=1, max_size=6))
def test_the_reader_vouches_only_for_what_pycrdt_reads_the_same_way(
    script: list[tuple[Any, ...]],
) -> None:
    for update in updates_of(script):
        assert_pycrdt_agrees(update)
        for damaged in mutations(update):
            assert_pycrdt_agrees(damaged)


def assert_pycrdt_reads_the_clocks(candidate: bytes) -> bool:
    """If :func:`adds_clocks` reads a state vector off the bytes, pycrdt builds a
    document from them alone with that state vector, nothing waiting."""
    clocks = adds_clocks(candidate)
    if clocks is None:
        return False
    vector = encode_clocks(clocks)
    doc: Doc[Any] = Doc()
    doc.apply_update(candidate)  # raises if pycrdt cannot read them
    assert same_state_vector(doc.get_state(), vector)
    assert same_state_vector(get_state(candidate), vector)
    assert not has_pending(candidate, vector)
    return True


@given(st.lists(ops, min_size=1, max_size=6))
def test_a_state_vector_read_off_items_is_the_one_pycrdt_builds(
    script: list[tuple[Any, ...]],
) -> None:
    """A first copy's record (a merge of several clients' updates) has its state vector
    read off its items, not asked of pycrdt: the same, for whatever bytes it vouches for."""
    updates = updates_of(script)
    if not updates:
        return
    whole = merge_updates(*updates)
    read = [assert_pycrdt_reads_the_clocks(u) for u in [whole, *updates]]
    span = simple_span(updates[0])  # the document's first update, from clock 0
    assert read[1] == (span is not None)
    for damaged in mutations(whole):
        assert_pycrdt_reads_the_clocks(damaged)


def test_a_copied_records_state_vector_is_read_off_its_items() -> None:
    """What the first copy relies on: a record edited on three laptops, merged as a server
    sends it, is read (its state vector as pycrdt's, nothing waiting); a record's later
    edit alone starts past clock 0 and is left to pycrdt."""
    p = Patient()
    edits = [p.edit("birthDate", "1990-04-12")]
    for replica in ("laptop-b", "laptop-c"):
        other = p.copy(replica)
        edits.append(other.edit("name", f"from {replica}"))
    whole = merge([p.created, *edits], record_id=p.id)
    assert assert_pycrdt_reads_the_clocks(whole)
    assert adds_clocks(edits[0]) is None


# Hand-made copies of records, from simple items only, spelled in ways no peer writes:
# hostile strings (invalid UTF-8, surrogates, overlong forms, NUL), client ids at the
# edges of what Yjs and Yrs hold, meta["id"] entries naming this record or another.
_RECORD = "rec-1"
_valid = st.one_of(
    st.text(max_size=3).map(str.encode),
    st.sampled_from(
        [b"", b"\x00", b"\xef\xbf\xbf", "\U0010ffff".encode(), _RECORD.encode(), b"id"]
    ),
    st.text(min_size=120, max_size=130).map(str.encode),  # a two-byte length
)
_HOSTILE = [b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xff", b"a\x80"]
_clients = st.one_of(
    st.integers(0, 3),
    st.sampled_from([127, 128, 2**31 - 1, 2**31, 2**32 - 1, 2**32 + 1, 2**52 + 1, 2**53 - 1]),
    st.integers(0, 2**53 - 1),
)
_items = st.tuples(
    st.booleans(),  # a map entry (with a key), or a list element
    st.sampled_from([b"meta", b"revisions", b""]) | _valid,
    st.sampled_from([b"id", b"a"]) | _valid,
    st.lists(_valid, min_size=1, max_size=3),
)
_Blocks = list[tuple[int, list[tuple[bool, bytes, bytes, list[bytes]]]]]


def _string(data: bytes) -> bytes:
    return encode_varuint(len(data)) + data


def _hand_made(blocks: _Blocks, last_from: int = 0) -> bytes:
    """A v1 update of these client blocks (each from clock 0, the last from ``last_from``)
    and an empty delete set."""
    out = [encode_varuint(len(blocks))]
    for n, (client, items) in enumerate(blocks, 1 - len(blocks)):
        out += [encode_varuint(len(items)), encode_varuint(client)]
        out.append(encode_varuint(last_from if n == 0 else 0))
        for keyed, root, key, strings in items:
            out += [b"\x28\x01" if keyed else b"\x08\x01", _string(root)]
            out += [_string(key)] if keyed else []
            out += [encode_varuint(len(strings))] + [b"\x77" + _string(s) for s in strings]
    return b"".join(out) + b"\x00"


def assert_a_copy_reads_as_walked(candidate: bytes) -> bool:
    """:func:`assert_pycrdt_reads_the_clocks`, and a record whose id the walk vouches
    for builds from the bytes, with that state vector."""
    if not assert_pycrdt_reads_the_clocks(candidate):
        return False
    kept, vector = copied_state(_RECORD, candidate)
    assert vector is not None
    if kept:
        record = Record.from_update(_RECORD, candidate, replica="laptop")
        assert same_state_vector(record.state_vector(), vector)
    return True


@given(
    st.lists(
        st.tuples(_clients, st.lists(_items, min_size=1, max_size=3)),
        min_size=1,
        max_size=3,
        unique_by=lambda block: block[0],
    ),
    st.sampled_from([None, "client too wide", "client twice", "not UTF-8", "not from 0"]),
    st.integers(0, 2**16),
    st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, 0x28, 0x77]),
)
def test_hand_made_copies_are_read_as_pycrdt_reads_them(
    blocks: _Blocks, spoil: str | None, at: int, byte: int
) -> None:
    last_from = 0
    """An attacker's first copy: whatever hand-made bytes the walk reads a state vector
    off, pycrdt reads too, to that state vector, nothing waiting, and a record it keeps
    the id of builds from them; so is each one-byte change, cut, insertion and deletion.
    Spoilt in one way pycrdt reads otherwise (or not at all), the walk leaves it."""
    if spoil is None:
        assert assert_a_copy_reads_as_walked(_hand_made(blocks))
    else:
        *rest, (client, items) = blocks
        if spoil == "client too wide":  # pycrdt keeps a client id's low 53 bits only
            client += 2**53 * (1 + at % 2047)
        elif spoil == "client twice":  # pycrdt's get_state and a document's then differ
            rest = rest or [(client, items)]
            client = rest[0][0]
        elif spoil == "not from 0":  # its items wait for the client's earlier ones
            last_from = 1 + at % 300
        else:
            keyed, root, key, strings = items[-1]
            items = [*items[:-1], (keyed, root, key, [*strings, _HOSTILE[at % len(_HOSTILE)]])]
        blocks = [*rest, (client, items)]
        assert adds_clocks(_hand_made(blocks, last_from)) is None
    update = _hand_made(blocks, last_from)
    pos = at % len(update)
    for damaged in (
        update[:pos] + bytes([byte]) + update[pos + 1 :],
        update[:pos] + bytes([byte]) + update[pos:],
        update[:pos] + update[pos + 1 :],
        update[:pos],
    ):
        assert_a_copy_reads_as_walked(damaged)


def test_what_the_walk_leaves_to_pycrdt_in_a_copy() -> None:
    """Bytes a first copy's walk reads no state vector off (pycrdt decides): the edges."""
    entry = (True, b"meta", b"id", [_RECORD.encode()])
    one = _hand_made([(1, [entry])])
    assert adds_clocks(one) == {b"\x01": 1}
    assert adds_clocks(_hand_made([(0, [entry]), (2**53 - 1, [entry])])) is not None
    assert adds_clocks(_hand_made([(2**53, [entry])])) is None  # Yrs keeps 53 bits
    assert adds_clocks(_hand_made([(1, [entry]), (1, [entry])])) is None  # a client twice
    assert adds_clocks(one[:2] + b"\x81\x00" + one[3:]) is None  # a client spelled long
    assert adds_clocks(one[:1] + b"\x81\x00" + one[2:]) is None  # a count spelled long
    assert adds_clocks(one[:3] + b"\x01" + one[4:]) is None  # not from clock 0
    assert adds_clocks(one + b"\x00") is None  # a byte more
    assert adds_clocks(one[:-1] + b"\x01\x01\x00\x01") is None  # a delete set
    assert adds_clocks(_hand_made([(1, [(True, b"meta", b"\xed\xa0\x80", [b"x"])])])) is None
    assert adds_clocks(_hand_made([(1, [(True, b"meta", b"a", [b"\xc0\x80"])])])) is None
    with_nul = _hand_made([(1, [(True, b"\x00", b"\x00", [b"\x00", b""])])])
    assert assert_a_copy_reads_as_walked(with_nul)
    other = _hand_made([(1, [entry]), (2, [(True, b"meta", b"id", [b"rec-2"])])])
    assert copied_state(_RECORD, other) == (False, encode_clocks({b"\x01": 1, b"\x02": 1}))


def test_the_updates_a_record_makes_are_simple() -> None:
    p = Patient()
    assert simple_span(p.created) is not None
    with p.record.batch():
        p.record.set("birthDate", "1990-01-01", author="dr.a")
        p.record.set("name", "Ada Lovelace, née Byron", author="dr.a")
    for update in [p.edit("birthDate", "x" * 500), *p.updates]:
        assert assert_pycrdt_agrees(update)


def test_what_the_reader_leaves_to_pycrdt() -> None:
    doc: Doc[Any] = Doc()
    seen: list[bytes] = []
    doc.observe(lambda event: seen.append(event.update))
    revisions = doc.get("revisions", type=Map)
    revisions["a"] = "1"
    revisions["a"] = "2"  # overwriting a key depends on the entry it replaces
    del revisions["a"]  # a delete set
    revisions["n"] = 5  # not a string
    doc.get("text", type=Text).insert(0, "abc")
    assert simple_span(seen[0]) is not None
    assert [simple_span(u) for u in seen[1:]] == [None] * 4
    assert simple_span(merge_updates(seen[0], Patient().created)) is None  # two clients
    assert simple_span(b"") is None


@given(st.dictionaries(st.integers(0, 2**53 - 1), st.integers(0, 2**31 - 1), max_size=6))
def test_state_vectors_decode_and_encode_as_pycrdt_does(vector: dict[int, int]) -> None:
    doc_vector = _vector_bytes(vector)
    clocks = decode_clocks(doc_vector)
    assert clocks is not None
    assert same_state_vector(encode_clocks(clocks), doc_vector)
    assert decode_state_vector(encode_clocks(clocks)) == vector


def test_state_vectors_of_real_documents_decode() -> None:
    p, q = Patient(), Patient()
    both = merge_updates(*p.updates, *q.updates)
    clocks = decode_clocks(get_state(both))
    assert clocks is not None
    assert same_state_vector(encode_clocks(clocks), get_state(both))
    assert decode_clocks(b"\x02\x01") is None  # cut short
    assert decode_clocks(b"\x01\x81\x00\x01") is None  # not canonical
    assert decode_clocks(b"\x00\x00") is None  # a byte too many


def _full_decode_says_same(a: bytes, b: bytes) -> bool:
    """The slow reference: both vectors decoded in full, clock-0 clients dropped."""

    def seen(vector: bytes) -> dict[int, int]:
        return {client: clock for client, clock in decode_state_vector(vector).items() if clock}

    return seen(a) == seen(b)


def _spelled(pairs: list[tuple[int, int]], padded: set[int]) -> bytes:
    """A state vector of ``pairs`` in their order; the clocks at ``padded`` indexes
    written with a needless zero group (not canonical: the quick reader declines)."""
    out = bytearray(encode_varuint(len(pairs)))
    for index, (client, clock) in enumerate(pairs):
        token = bytearray(encode_varuint(clock))
        if index in padded:
            token[-1] |= 0x80
            token.append(0)
        out += encode_varuint(client) + token
    return bytes(out)


@given(
    st.lists(st.tuples(st.integers(0, 2**53 - 1), st.integers(0, 2**32)), max_size=6),
    st.randoms(use_true_random=False),
    st.sets(st.integers(0, 5), max_size=2),
    st.sampled_from(["same", "one_clock_moved", "one_dropped", "zero_added"]),
)
def test_state_vectors_compare_as_the_full_decoding_does(
    pairs: list[tuple[int, int]], rng: Any, padded: set[int], change: str
) -> None:
    """same_state_vector reads the usual (canonical) encoding with the span reader's
    regexes: whatever the order of clients, clocks at 0, numbers out of the reader's
    range, repeated clients or needless zero groups, it says what decoding both in
    full says."""
    other = list(pairs)
    rng.shuffle(other)
    if change == "one_clock_moved" and other:
        client, clock = other[0]
        other[0] = (client, clock + 1)
    elif change == "one_dropped" and other:
        other.pop()
    elif change == "zero_added":
        other.append((rng.randrange(2**53), 0))
    a, b = _spelled(pairs, set()), _spelled(other, padded)
    assert same_state_vector(a, b) == _full_decode_says_same(a, b)
    assert same_state_vector(b, a) == _full_decode_says_same(b, a)


def test_the_quick_vector_reader_declines_what_it_cannot_vouch_for() -> None:
    client = encode_varuint(300)
    assert decode_clocks(b"\x01" + client + b"\x05") == {client: 5}
    assert decode_clocks(b"\x01" + client + b"\x85\x00") is None  # a needless zero group
    assert decode_clocks(b"\x02" + client + b"\x05" + client + b"\x06") is None  # twice
    assert decode_clocks(b"\x01" + client + encode_varuint(2**31)) is None  # out of range
    assert decode_clocks(b"\x01" + client + b"\x05\x07") is None  # a byte after the pairs
    # The full reader decides those: the last listing of a repeated client counts.
    assert same_state_vector(
        b"\x02" + client + b"\x05" + client + b"\x06", b"\x01" + client + b"\x06"
    )
    assert same_state_vector(b"\x01" + client + b"\x85\x00", b"\x01" + client + b"\x05")


def _vector_bytes(vector: dict[int, int]) -> bytes:
    out = bytearray(encode_varuint(len(vector)))
    for client, clock in vector.items():
        out += encode_varuint(client) + encode_varuint(clock)
    return bytes(out)


# ------------------------------------------------ planning, with and without


@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from(["edit", "batch", "merged", "several"])),
        min_size=1,
        max_size=8,
    ),
    st.randoms(use_true_random=False),
)
def test_planning_decides_the_same_with_the_reader_as_pycrdt_alone(
    script: list[tuple[int, str]], rng: Any
) -> None:
    """Three replicas edit one record; their updates (alone, or merged: one replica's,
    or the latest of several) arrive shuffled, in batches, twice."""
    origin = Patient()
    replicas = [origin, origin.copy("laptop-b"), origin.copy("laptop-c")]
    produced = [origin.created]
    for who, kind in script:
        p = replicas[who]
        if kind == "edit":
            produced.append(p.edit())
        elif kind == "batch":
            with p.record.batch():
                p.record.set("birthDate", "1", author="dr.a")
                p.record.set("name", "2", author="dr.a")
            produced.append(p.updates[-1])
        elif kind == "merged":
            produced.append(merge_updates(*p.updates[1:]) if len(p.updates) > 1 else p.created)
        else:  # several replicas' latest edits merged: a pull's merged entry
            latest = [r.updates[-1] for r in replicas if len(r.updates) > 1]
            produced.append(merge_updates(*latest) if latest else p.edit())
    deliveries = produced + rng.sample(produced, len(produced))
    rng.shuffle(deliveries)
    batches: list[list[bytes]] = []
    while deliveries:
        size = rng.randint(1, 3)
        batches.append(deliveries[:size])
        deliveries = deliveries[size:]
    fast = _Replay(origin.id)
    slow = _Replay(origin.id)
    for batch in batches:
        a = fast.plan(batch)
        b = slow.plan(batch, without_reader=True)
        assert same_state_vector(a.state_vector, b.state_vector)
        assert (a.pending, a.changed, a.appended, a.is_new) == (
            b.pending,
            b.changed,
            b.appended,
            b.is_new,
        )
    assert same_state_vector(fast.known.state_vector, get_state(merge(fast.log, record_id="r")))


class _Replay:
    """One record's store, reduced to what planning reads: its known state and its log."""

    def __init__(self, record_id: str) -> None:
        self.record_id = record_id
        self.known: CachedRecord | None = None
        self.log: list[bytes] = []

    def plan(self, batch: list[bytes], *, without_reader: bool = False) -> Any:
        items = [IncomingUpdate(self.record_id, update, None) for update in batch]
        known = {} if self.known is None else {self.record_id: self.known}
        full: Callable[[str], bytes] = lambda _: merge(self.log, record_id=self.record_id)  # noqa: E731
        with pytest.MonkeyPatch.context() as patch:
            if without_reader:
                patch.setattr(writes_module, "advance_clocks", lambda clocks, updates: None)
            planned = plan_writes(items, known, full, skip_duplicates=True)[self.record_id]
        self.log += [batch[i] for i in planned.appended]
        self.known = planned.cached
        return planned
