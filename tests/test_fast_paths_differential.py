"""The per-record fast paths give exactly what the code they replaced gave.

Each quick version of a hot function (a pull runs them once per record) is compared
with a verbatim copy of the code it replaced, on generated input that includes the
malformed: the same result, or the same typed error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, cast

from hypothesis import example, given, settings
from hypothesis import strategies as st

from caresync import Record
from caresync.exceptions import InvalidUpdateError, LocalProtocolError, RemoteProtocolError
from caresync.protocol import (
    CARD_DIGEST_BYTES,
    CheckedState,
    CopyConflict,
    FeedItem,
    PushItem,
    card_reference,
    held_reference,
    is_card_reference,
    is_held_reference,
    messages,
)
from caresync.protocol.codec import ITEM_OVERHEAD_BYTES, item_wire_size
from caresync.records.persons import person_card
from caresync.records.spans import (
    Client,
    advance_clocks,
    advance_vector,
    encode_varuint,
    simple_span,
)
from caresync.replication.checked import ServerCheck, advance_simply, card_from_wire, from_wire
from caresync.replication.coalesce import Coalescer, MergeVerdicts
from caresync.storage import ConflictRow
from caresync.storage import FeedItem as StoreFeedItem
from caresync.storage._updates import decode_state_vector

# ------------------------------------------------------- the replaced code, verbatim

_MAX_CLOCK = 1 << 31
_COUNT = rb"([\x00-\x7f]|[\x80-\xff]{1,4}[\x01-\x7f])"
_CLIENT = rb"([\x00-\x7f]|[\x80-\xff]{1,6}[\x01-\x7f]|[\x80-\xff]{7}[\x01-\x0f])"
_PAIR = re.compile(_CLIENT + _COUNT, re.DOTALL)
_PAIRS = re.compile(rb"(?:" + _CLIENT + _COUNT + rb")*", re.DOTALL)


def _old_number(token: bytes) -> int:
    value = token[0]
    if value < 0x80:
        return value
    value = 0
    for shift, byte in enumerate(token):
        value |= (byte & 0x7F) << (7 * shift)
    return value


def _old_uint(buf: bytes, pos: int) -> tuple[int, int]:
    byte = buf[pos]
    if byte < 0x80:
        return byte, pos + 1
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift > 28:
            raise ValueError
    if byte == 0 or value >= _MAX_CLOCK:
        raise ValueError
    return value, pos


def old_decode_clocks(vector: bytes) -> dict[Client, int] | None:
    try:
        count, pos = _old_uint(vector, 0)
    except (ValueError, IndexError):
        return None
    if _PAIRS.fullmatch(vector, pos) is None:
        return None
    clocks: dict[Client, int] = {
        client: clock[0] if len(clock) == 1 else _old_number(clock)
        for client, clock in _PAIR.findall(vector, pos)
    }
    if len(clocks) != count or (clocks and max(clocks.values()) >= _MAX_CLOCK):
        return None
    return clocks


def old_encode_clocks(clocks: dict[Client, int]) -> bytes:
    parts = [encode_varuint(len(clocks))]
    for client, clock in clocks.items():
        parts.append(client)
        parts.append(encode_varuint(clock))
    return b"".join(parts)


def old_advance_simply(vector: bytes, updates: Sequence[bytes]) -> tuple[bytes, bool] | None:
    clocks = old_decode_clocks(vector)
    if clocks is None:
        return None
    changed = advance_clocks(clocks, updates)
    if changed is None:
        return None
    return (old_encode_clocks(clocks) if changed else vector), changed


# ------------------------------------------------------------------ generated input


def _padded(value: int) -> bytes:
    """``value`` with a needless zero group: not canonical."""
    token = bytearray(encode_varuint(value))
    token[-1] |= 0x80
    token.append(0)
    return bytes(token)


clients = st.sampled_from([0, 1, 5, 127, 128, 300, 2**21, 2**35, 2**49 + 3, 2**53 - 1, 2**53])
clocks = st.one_of(
    st.integers(0, 12), st.sampled_from([127, 128, 2**21, 2**28 - 1, 2**28, 2**31 - 1, 2**31])
)


@st.composite
def vectors(draw: st.DrawFn) -> bytes:
    """State vectors, mostly well formed; some with a repeated client, a wrong count,
    a padded number, a byte too many or too few, or just bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=12))
    pairs = draw(st.lists(st.tuples(clients, clocks), max_size=4))
    count = len(pairs) + draw(st.sampled_from([0, 0, 0, 0, -1, 1]))
    out = bytearray(
        _padded(count) if draw(st.integers(0, 20)) == 0 else encode_varuint(max(0, count))
    )
    for client, clock in pairs:
        out += encode_varuint(client)
        out += _padded(clock) if draw(st.integers(0, 20)) == 0 else encode_varuint(clock)
    tail = draw(st.sampled_from([b"", b"", b"", b"", b"\x00", b"\x85", b"cut"]))
    if tail == b"cut" and out:
        return bytes(out[:-1])
    return bytes(out + tail)


def simple_update(client: int, first: int, strings: list[tuple[bool, int]]) -> bytes:
    """A simple update: one client block of items with (keyed, count) from ``strings``."""
    out = bytearray(b"\x01" + encode_varuint(len(strings)))
    out += encode_varuint(client) + encode_varuint(first)
    for keyed, count in strings:
        out += b"\x28\x01" if keyed else b"\x08\x01"
        out += b"\x09revisions"
        if keyed:
            out += b"\x03key"
        out += encode_varuint(count)
        for _ in range(count):
            out += b"\x77\x02\xc3\xa8"
    return bytes(out + b"\x00")


@st.composite
def updates(draw: st.DrawFn) -> bytes:
    """Simple updates, and some damaged ones (a changed byte, cut short, longer)."""
    update = simple_update(
        draw(clients),
        draw(clocks),
        draw(st.lists(st.tuples(st.booleans(), st.integers(1, 3)), min_size=1, max_size=3)),
    )
    how = draw(st.integers(0, 5))
    if how == 0:
        at = draw(st.integers(0, len(update) - 1))
        return update[:at] + bytes([draw(st.integers(0, 255))]) + update[at + 1 :]
    if how == 1:
        return update[: draw(st.integers(0, len(update) - 1))]
    if how == 2:
        return update + draw(st.binary(min_size=1, max_size=2))
    return update


def _related(vector: bytes, update: bytes, shift: int) -> bytes:
    """``update`` moved to a client the vector lists, starting near its clock (``shift``
    from it: before, at or past the end of what the vector holds)."""
    clocks = old_decode_clocks(vector)
    span = simple_span(update)
    if not clocks or span is None:
        return update
    client, clock = list(clocks.items())[-1]
    first = max(0, min(clock + shift, 2**31 - 10))
    return simple_update(_old_number(client), first, [(True, 1)])


# ---------------------------------------------------------------------------- tests


@settings(max_examples=600)
@given(vectors(), st.lists(updates(), max_size=3), st.booleans(), st.integers(-2, 1))
@example(b"\x01\x05\x03", [simple_update(5, 3, [(True, 1)])], False, 0)
@example(b"\x01\x05\x03", [simple_update(5, 2, [(True, 1)])], False, 0)  # ends at its clock
@example(b"\x01\x05\x03", [simple_update(5, 4, [(True, 1)])], False, 0)
@example(b"\x01\x05\x03", [simple_update(5, 1, [(True, 1)])], False, 0)
@example(b"\x01\x05\x03", [simple_update(6, 0, [(True, 2)])], False, 0)
@example(b"\x00", [simple_update(6, 0, [(True, 2)])], False, 0)
@example(b"\x01\x05\x03\x05\x04", [simple_update(5, 3, [(True, 1)])], False, 0)  # repeated
@example(
    b"\x7f" + b"".join(bytes((c, 1)) for c in range(127)),
    [simple_update(200, 0, [(True, 1)])],
    False,
    0,
)
@example(b"", [simple_update(6, 0, [(True, 2)])], False, 0)
def test_advance_vector_is_decode_advance_encode(
    vector: bytes, found: list[bytes], related: bool, shift: int
) -> None:
    if related and found:
        found = [_related(vector, found[0], shift), *found[1:]]
    expected = old_advance_simply(vector, found)
    assert advance_vector(vector, found) == expected
    assert advance_simply(vector, found) == expected


def test_advance_vector_keeps_a_vector_that_nothing_moves() -> None:
    vector = b"\x01\x05\x03"
    moved = advance_vector(vector, [simple_update(5, 0, [(True, 2)])])
    assert moved == (vector, False)
    assert moved[0] is vector


# ------------------------------------------------------------------ checked.from_wire


def old_from_wire(
    checked: Sequence[CheckedState] | None, conflicts: Sequence[CopyConflict] | None
) -> dict[str, ServerCheck] | None:
    if checked is None:
        return None
    grouped: dict[str, list[ConflictRow]] = {}
    for row in conflicts or ():
        grouped.setdefault(row.record_id, []).append(
            ConflictRow(row.id, row.record_id, row.kind, row.subject, row.severity, row.payload)
        )
    checks: dict[str, ServerCheck] = {}
    for state in checked:
        try:
            if old_decode_clocks(state.state_vector) is None:
                decode_state_vector(state.state_vector)
        except InvalidUpdateError as exc:
            raise RemoteProtocolError(
                f"the server sent record {state.record_id} with a bad state vector: {exc}"
            ) from None
        rows = tuple(grouped.get(state.record_id, ()))
        if state.card is not None and is_card_reference(state.card):
            checks[state.record_id] = ServerCheck(state.state_vector, rows, None, state.card)
            continue
        if state.card is not None and is_held_reference(state.card):
            card_ref = b"\x00" + state.card[1 : 1 + CARD_DIGEST_BYTES]
            rows_ref = state.card[1 + CARD_DIGEST_BYTES :]
            checks[state.record_id] = ServerCheck(state.state_vector, (), None, card_ref, rows_ref)
            continue
        card = None if state.card is None else card_from_wire(state.record_id, state.card)
        checks[state.record_id] = ServerCheck(state.state_vector, rows, card)
    return checks


_RECORD = Record.create(replica="desk")
_RECORD.set("name", "Awa Ndiaye", author="dr.a")
_CARD = person_card(_RECORD)
assert _CARD is not None
_CARD_BYTES = _CARD.to_bytes()
_OTHER_CARD = person_card(Record.create(replica="desk")) or _CARD
_ROW = ConflictRow("f-1", _RECORD.record_id, "rule", "name", "flag", b"{}")

cards = st.one_of(
    st.none(),
    st.just(card_reference(_CARD_BYTES)),
    st.just(held_reference(_CARD_BYTES, [_ROW])),
    st.just(_CARD_BYTES),
    st.just(_OTHER_CARD.to_bytes()),
    st.binary(min_size=1, max_size=40),
)


def _outcome(
    call: Callable[[], dict[str, ServerCheck] | None],
) -> tuple[str, object]:
    try:
        return "ok", call()
    except RemoteProtocolError as exc:
        return "error", str(exc)


@settings(max_examples=400)
@given(
    st.lists(st.tuples(st.sampled_from(["a", "b", _RECORD.record_id]), vectors(), cards)),
    st.lists(st.sampled_from(["a", "b", _RECORD.record_id]), max_size=3),
    st.booleans(),
)
@example([("a", b"\x01\x05\x03\x05\x04", None)], [], False)  # a client twice, count 1
@example([("a", b"\x02\x05\x03\x05\x04", None)], [], False)  # a client twice, count 2
@example([("a", b"\x01\x85\x00\x03", None)], [], False)  # a padded client
@example([("a", b"\x01\x05\x83", None)], [], False)  # cut short
@example([("a", b"\x01\x05\x03\x85", None)], [], False)  # a byte too many
@example([("a", b"\x81\x00", None)], [], False)  # a padded count
@example([("a", b"\x01" + b"\xff" * 12 + b"\x01\x03", None)], [], False)  # a client past 64 bits
@example([("a", b"\x01\x05" + b"\x80" * 9 + b"\x00", None)], [], False)  # clock of 10 bytes
def test_from_wire_is_what_it_was(
    states: list[tuple[str, bytes, bytes | None]], rows: list[str], no_rows: bool
) -> None:
    checked = [CheckedState(*state) for state in states]
    conflicts = (
        None
        if no_rows
        else [CopyConflict(rid, f"f-{rid}", "k", "s", "flag", b"{}") for rid in rows]
    )
    assert _outcome(lambda: from_wire(checked, conflicts)) == _outcome(
        lambda: old_from_wire(checked, conflicts)
    )


# --------------------------------------------------- messages._numbered_items, _checked


def old_numbered_items(
    owner: str, value: object, item_type: type[Any], *, allow_empty: bool
) -> tuple[Any, ...]:
    number = item_type._fields[0]
    out: list[Any] = []
    previous = 0
    for item in messages._items(owner, "items", value, allow_empty=allow_empty):
        if type(item) is not item_type:
            if not isinstance(item, (tuple, list)) or len(item) != 3:
                messages._bad(owner, "items[]", f"a ({number}, record_id, update) triple", item)
            item = item_type(*item)
        seq, record_id, update = item
        if not (
            type(seq) is int
            and previous < seq <= messages.MAX_SEQ
            and type(record_id) is str
            and 0 < len(record_id) <= messages.MAX_ID_LENGTH
            and record_id.isprintable()
            and type(update) is bytes
            and update
        ):
            messages._int(owner, f"items[].{number}", seq, previous + 1)
            messages._check_record_id(owner, "items[].record_id", record_id)
            messages._update(owner, "items[].update", update)
        previous = seq
        out.append(item)
    return tuple(out)


def old_checked(
    owner: str, checked: object, conflicts: object, items: tuple[FeedItem, ...]
) -> tuple[tuple[CheckedState, ...] | None, tuple[CopyConflict, ...] | None]:
    if checked is None and conflicts is None:
        return None, None
    if checked is None or conflicts is None:
        raise LocalProtocolError(f"{owner}: checked and conflicts come together")
    first_seen: dict[str, int] = {}
    for item in items:
        first_seen.setdefault(item.record_id, len(first_seen))
    out: list[CheckedState] = []
    order: dict[str, int] = {}
    previous = -1
    for state in messages._items(owner, "checked", checked, allow_empty=True):
        if type(state) is not CheckedState:
            if not isinstance(state, (tuple, list)) or len(state) != 3:
                messages._bad(owner, "checked[]", "a (record_id, state_vector, card) triple", state)
            state = CheckedState(*state)
        position = first_seen.get(state.record_id) if type(state.record_id) is str else None
        if position is None:
            messages._bad(
                owner, "checked[].record_id", "the id of a record in this batch", state.record_id
            )
        if position <= previous:
            messages._bad(owner, "checked", "in batch order, one per record", state.record_id)
        previous = position
        messages._blob(
            owner, "checked[].state_vector", state.state_vector, 1, messages.MAX_STATE_VECTOR_BYTES
        )
        if state.card is not None:
            messages._update(owner, "checked[].card", state.card)
        order[state.record_id] = len(order)
        out.append(state)
    return tuple(out), messages._conflict_rows(owner, conflicts, order, "a checked record")


def _protocol_outcome(call: Callable[[], object]) -> tuple[str, object]:
    try:
        result = call()
    except LocalProtocolError as exc:
        return "error", str(exc)
    # The same values of the same types (a FeedItem is equal to a plain tuple).
    return "ok", (result, _types(result))


def _types(value: object) -> object:
    if isinstance(value, tuple):
        return (type(value), tuple(_types(v) for v in value))
    return type(value)


ids = st.sampled_from(["r-1", "r-2", "r-3", "", "tab\there", 7, None, "x" * 129, "x" * 128])
blobs = st.one_of(st.binary(min_size=1, max_size=3), st.just(b""), st.none(), st.just("text"))
seqs = st.one_of(st.integers(-1, 6), st.just(2**63), st.just(True), st.just(2.0))


@st.composite
def triples(draw: st.DrawFn, make: Any, first: Any, second: Any, third: Any) -> object:
    """One item as a frame or a caller may give it: the message's tuple, a plain tuple or
    list, of three fields or not; mostly well formed."""
    fields = [draw(first), draw(second), draw(third)]
    shape = draw(st.integers(0, 12))
    if shape == 0:
        return fields[:2]
    if shape == 1:
        return draw(st.sampled_from([None, "abc", 5, PushItem(1, "r-1", b"x")]))
    if shape == 2:
        return [*fields, b"x"]
    if shape < 6:
        return list(fields)
    if shape < 9:
        return make(*fields)
    return tuple(fields)


@st.composite
def batches(draw: st.DrawFn) -> list[object]:
    """Items of a batch; most of them valid (ascending seqs, ids, non-empty updates)."""
    count = draw(st.integers(0, 5))
    if draw(st.booleans()):
        good = [
            (seq, draw(st.sampled_from(["r-1", "r-2", "r-3"])), b"u")
            for seq in sorted(draw(st.sets(st.integers(1, 50), min_size=count, max_size=count)))
        ]
        kind = draw(st.integers(0, 3))
        if kind == 0:
            return [FeedItem(*g) for g in good]
        if kind == 1:
            return [list(g) for g in good]
        if kind == 2:
            return [FeedItem(*g) if i % 2 else g for i, g in enumerate(good)]
        return list(good)
    return draw(st.lists(triples(FeedItem, seqs, ids, blobs), max_size=5))


@settings(max_examples=500)
@given(batches(), st.booleans(), st.sampled_from([FeedItem, PushItem]), st.booleans())
@example([(1, "r-1", b"u"), (1, "r-2", b"u")], False, FeedItem, False)
@example([(1, "r-1", b"u"), (2, "r-2", b"")], False, FeedItem, False)
@example([(True, "r-1", b"u")], False, FeedItem, False)
@example([(0, "r-1", b"u"), (1, "r-2", b"u")], False, FeedItem, False)
@example([(2**63, "r-1", b"u")], False, FeedItem, False)
@example([(1, "tab\there", b"u")], False, FeedItem, False)
@example([(1, "r-1", b"u"), [2, "r-2", b"u", b"u"]], False, FeedItem, False)
def test_numbered_items_are_what_they_were(
    items: list[object], empty_ok: bool, item_type: type[Any], as_list: bool
) -> None:
    value: object = items if as_list else tuple(items)
    assert _protocol_outcome(
        lambda: messages._numbered_items("Batch", value, item_type, allow_empty=empty_ok)
    ) == _protocol_outcome(
        lambda: old_numbered_items("Batch", value, item_type, allow_empty=empty_ok)
    )


@settings(max_examples=500)
@given(
    st.lists(st.sampled_from(["r-1", "r-2", "r-3"]), max_size=5),
    st.one_of(
        st.none(),
        st.lists(
            st.one_of(
                triples(CheckedState, ids, blobs, blobs),
                st.tuples(st.sampled_from(["r-1", "r-2", "r-3"]), st.just(b"\x00"), st.none()),
            ),
            max_size=4,
        ),
    ),
    st.one_of(
        st.none(),
        st.just(()),
        st.just((CopyConflict("r-1", "f-1", "k", "s", "flag", b"{}"),)),
    ),
)
@example(["r-1", "r-2"], [("r-1", b"\x00", None), ("r-2", b"\x00", b"c")], ())
@example(["r-1", "r-2"], [("r-2", b"\x00", None), ("r-1", b"\x00", None)], ())
@example(["r-1", "r-1", "r-2"], [("r-1", b"\x00", None), ("r-2", b"\x00", b"")], ())
@example(["r-1"], [("r-1", b"\x00", None), ("r-1", b"\x00", None)], ())
@example(["r-1"], [("r-3", b"\x00", None)], ())
@example(["r-1"], [("r-1", b"", None)], ())
@example(["r-1"], [("r-1", b"\x00" * (messages.MAX_STATE_VECTOR_BYTES + 1), None)], ())
@example(["r-1"], [CheckedState("r-1", b"\x00", None)], None)
def test_checked_states_are_what_they_were(
    record_ids: list[str], checked: list[object] | None, conflicts: object
) -> None:
    items = tuple(FeedItem(seq, rid, b"u") for seq, rid in enumerate(record_ids, 1))
    value = None if checked is None else tuple(checked)
    assert _protocol_outcome(
        lambda: messages._checked("Batch", value, conflicts, items)
    ) == _protocol_outcome(lambda: old_checked("Batch", value, conflicts, items))


# ----------------------------------------------- codec.item_wire_size, Coalescer.take


@given(st.text(), st.binary(max_size=40))
@example("dossier-\udc80", b"x")  # a lone surrogate (surrogatepass)
@example("é", b"")
def test_item_wire_size_is_what_it_was(record_id: str, update: bytes) -> None:
    old = len(record_id.encode("utf-8", "surrogatepass")) + len(update) + ITEM_OVERHEAD_BYTES
    assert item_wire_size(record_id, update) == old


class _Marked:
    """Verdicts read off a marker: an update starting ``add`` only adds revisions."""

    def adds_revisions_only(self, update: bytes) -> bool:
        return update.startswith(b"add")


class _OldCoalescer(Coalescer):
    """The coalescer with its take as it was."""

    def take(self, items: Sequence[StoreFeedItem]) -> int:
        for count, item in enumerate(items):
            size = item_wire_size(item.record_id, item.update)
            group, mergeable = self._joins(item)
            if self._taken and (
                size > self._budget or (group is None and len(self._items) >= self._limit)
            ):
                self._full = True
                return count
            self._budget -= size
            if group is not None:
                group.append(item)
            else:
                group = [item]
                self._items.append(group)
                if mergeable is False:
                    self._groups.pop(item.record_id, None)
                else:
                    self._groups[item.record_id] = group
                    if mergeable:
                        self._mergeable[id(group)] = True
            self._taken.append(item)
        return len(items)


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.sampled_from(["r-1", "r-2", "r-3", "r-4"]), st.integers(0, 3))),
    st.integers(1, 6),
    st.integers(0, 400),
    st.integers(1, 4),
)
def test_coalescer_take_is_what_it_was(
    plan: list[tuple[str, int]], limit: int, budget: int, chunk: int
) -> None:
    # Updates the verdicts read as edits that only add revisions, or not (by a marker).
    verdicts = cast(MergeVerdicts, _Marked())
    kinds = [b"add", b"add-more", b"other", b"x" * 60]
    feed = [
        StoreFeedItem(seq, rid, kinds[kind], "clinic-a") for seq, (rid, kind) in enumerate(plan, 1)
    ]
    new = Coalescer(items=limit, budget=budget, verdicts=verdicts)
    old = _OldCoalescer(items=limit, budget=budget, verdicts=verdicts)
    for start in range(0, len(feed), chunk):
        part = feed[start : start + chunk]
        assert new.take(part) == old.take(part)
        assert new.full == old.full
        if new.full:
            break
    assert list(new.taken) == list(old.taken)
    assert new._items == old._items
    assert new._budget == old._budget
    assert set(new._groups) == set(old._groups)


# ---------------------------------------------------------------- spans.simple_span

_HEADER = re.compile(rb"\x01" + _COUNT + _CLIENT + _COUNT, re.DOTALL)


def _old_structs(buf: bytes, pos: int, structs: int, clock: int) -> tuple[int, int, list[bytes]]:
    strings: list[bytes] = []
    append = strings.append
    for _ in range(structs):
        info = buf[pos]
        if (info != 0x28 and info != 0x08) or buf[pos + 1] != 0x01:
            raise ValueError
        pos += 2
        for _ in range(2 if info == 0x28 else 1):
            length = buf[pos]
            if length < 0x80:
                pos += 1
            else:
                length, pos = _old_uint(buf, pos)
            append(buf[pos : pos + length])
            pos += length
        count = buf[pos]
        if count < 0x80:
            pos += 1
        else:
            count, pos = _old_uint(buf, pos)
        if count == 0:
            raise ValueError
        for _ in range(count):
            if buf[pos] != 0x77:
                raise ValueError
            length = buf[pos + 1]
            if length < 0x80:
                pos += 2
            else:
                length, pos = _old_uint(buf, pos + 1)
            append(buf[pos : pos + length])
            pos += length
        clock += count
    return clock, pos, strings


def old_simple_span(update: bytes) -> tuple[bytes, int, int] | None:
    if type(update) is not bytes:
        return None
    try:
        head = _HEADER.match(update)
        if head is None:
            return None
        structs, first = _old_number(head[1]), _old_number(head[3])
        if structs == 0 or structs >= _MAX_CLOCK or first >= _MAX_CLOCK:
            return None
        clock, pos, strings = _old_structs(update, head.end(), structs, first)
        b"\x00".join(strings).decode("utf-8")
        if clock >= _MAX_CLOCK or pos != len(update) - 1 or update[pos] != 0:
            return None
        return head[2], first, clock
    except (ValueError, IndexError):  # UnicodeDecodeError is a ValueError
        return None


def _long_strings(update: bytes) -> bytes:
    """``update`` with its strings 200 bytes long (two-byte lengths), when simple."""
    return update.replace(b"\x77\x02\xc3\xa8", b"\x77\xc8\x01" + b"a" * 200)


@settings(max_examples=600)
@given(updates(), st.booleans())
@example(simple_update(2**35, 2**28, [(False, 200)]), False)  # long counts and numbers
@example(simple_update(5, 0, [(True, 1)])[:-1] + b"\x01", False)  # a delete set
@example(b"\x01\x01\x05\x00\x28\x01\x09revisions\x03key\x01\x77\x02\xc3\x28\x00", False)
def test_simple_span_is_what_it_was(update: bytes, long: bool) -> None:
    if long:
        update = _long_strings(update)
    assert simple_span(update) == old_simple_span(update)
