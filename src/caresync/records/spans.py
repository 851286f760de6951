"""A strict reader for the commonest Yjs update, so most updates need no pycrdt call.

Theory of operation
-------------------
Almost every update a replica stores is one edit of one record: a single
client's run of map writes under fresh keys. Such an update depends on nothing
but the same client's earlier clocks, so whether it is new, already held, or
must wait, and the state vector after it, follow from three numbers: its
client, its first clock and its end clock (:func:`simple_span`, used by the
stores on every write). The same walk also hands out the items themselves
(:func:`simple_items`): what a server admits from an untrusted peer
(:mod:`caresync.records.admission`) is exactly such an update, and
:func:`why_not_simple` says in words what disqualifies any other.

The reader vouches only for updates of exactly this shape, v1 encoding:

* one client block of one or more Items;
* each Item without a left or right origin (``info`` ``0x28`` or ``0x08``),
  whose parent is a root type given by name;
* content ``Any`` of one or more strings;
* an empty delete set, and not one byte more.

Every string must be valid UTF-8, every number within bounds no wider than
Yrs' own (clients below 2**53, clocks and counts below 2**31) and in its one
canonical encoding (a client is keyed by its encoded bytes). Anything else,
including any byte the reader cannot account for, gets ``None``, and the
caller falls back to pycrdt, which decides. So the reader may pass over a
simple update (that only costs time), but it never vouches for bytes pycrdt
would read otherwise: ``tests/storage/test_store_spans.py`` checks it against
pycrdt on valid, damaged and truncated updates of many shapes (2,000
examples under ``HYPOTHESIS_PROFILE=soak``), and checks that planning decides
the same with it as with pycrdt alone.

Pure: bytes in, numbers and strings out. It lives in the record layer (not in
storage, whose package loads the SQLite store) so that the record model may use it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import NamedTuple

__all__ = [
    "encode_varuint",
    "Client",
    "only_adds",
    "adds_clocks",
    "read_adds",
    "advance_clocks",
    "advance_vector",
    "SimpleItem",
    "SimpleUpdate",
    "decode_clocks",
    "encode_clocks",
    "same_clocks",
    "items_by_client",
    "simple_pieces",
    "simple_items",
    "simple_span",
    "why_not_simple",
]

_MAX_CLOCK = 1 << 31
_ITEM_WITH_KEY = 0x28  # Item, content Any, a parent key (map entry), no origins
_ITEM = 0x08  # the same without a parent key
_ANY_STRING = 0x77  # lib0 Any: a string
_ROOT_BY_NAME = 0x01  # parent info: the parent is a root type, given by name

# Canonical varuints (no trailing zero group): a count or clock of at most 5
# bytes, a client below 2**53 (8 bytes at most, the last one below 0x10).
# pycrdt keeps only the low 53 bits of a larger client id (the property test
# found that), so a larger one would name another client than it seems to.
_COUNT = rb"([\x00-\x7f]|[\x80-\xff]{1,4}[\x01-\x7f])"
_CLIENT = rb"([\x00-\x7f]|[\x80-\xff]{1,6}[\x01-\x7f]|[\x80-\xff]{7}[\x01-\x0f])"
_HEADER = re.compile(rb"\x01" + _COUNT + _CLIENT + _COUNT, re.DOTALL)
_BLOCK = re.compile(_COUNT + _CLIENT + _COUNT, re.DOTALL)  # a client block's header
_PAIR = re.compile(_CLIENT + _COUNT, re.DOTALL)
_PAIRS = re.compile(rb"(?:" + _CLIENT + _COUNT + rb")*", re.DOTALL)
# The same with clocks of at most 4 bytes (below 2**28, so below 2**31 without
# decoding them): :func:`advance_vector`'s quick reading of a state vector.
_SHORT = rb"([\x00-\x7f]|[\x80-\xff]{1,3}[\x01-\x7f])"
_SHORT_PAIR = re.compile(_CLIENT + _SHORT, re.DOTALL)
_SHORT_PAIRS = re.compile(rb"(?:" + _CLIENT + _SHORT + rb")*", re.DOTALL)

Client = bytes
"""A client id as its canonical varuint bytes: one key per client, no decoding needed."""


class SimpleItem(NamedTuple):
    """One Item of a simple update: a write into a root type given by name."""

    clock: int
    """The item's first clock (it covers ``len(strings)`` clocks)."""
    root: str
    """The name of the root type it writes into (``revisions``, ``meta``, ...)."""
    key: str | None
    """The map key it writes, or None for an item without one (a list element)."""
    strings: tuple[str, ...]
    """Its content: one or more strings."""


class SimpleUpdate(NamedTuple):
    """A simple update read in full: its client, its clocks ``[first, end)``, its items."""

    client: Client
    first: int
    end: int
    items: tuple[SimpleItem, ...]


_BAD_NUMBER = (
    "it holds a number out of range (clocks and counts below 2**31, client ids below "
    "2**53) or not in its shortest encoding"
)

_TRUNCATED = "it ends in the middle (truncated, or not a Yjs v1 update)"


class _NotSimple(Exception):
    """Raised inside the reader: not an update it vouches for (the argument says why)."""


def _number(token: bytes) -> int:
    """The value of a canonical varuint token."""
    value = token[0]
    if value < 0x80:
        return value
    value = 0
    for shift, byte in enumerate(token):
        value |= (byte & 0x7F) << (7 * shift)
    return value


def _uint(buf: bytes, pos: int) -> tuple[int, int]:
    """A canonical varuint below 2**31 at ``pos``, and the position after it."""
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
            raise _NotSimple(_BAD_NUMBER)
    if byte == 0 or value >= _MAX_CLOCK:  # a trailing zero group is not canonical
        raise _NotSimple(_BAD_NUMBER)
    return value, pos


def advance_clocks(clocks: dict[Client, int], updates: Sequence[bytes]) -> bool | None:
    """Move ``clocks`` past simple ``updates`` (in place); True if any held something new.

    None, with ``clocks`` left part-moved (discard them), when an update is not simple or
    would wait for one not held yet (it starts past its client's clock): the general way
    decides those. What a laptop compares with the server's check and what its store plans
    are worked out by this one function, so that they agree.
    """
    changed = False
    for update in updates:
        span = simple_span(update)
        if span is None:
            return None
        client, first, end = span
        have = clocks.get(client, 0)
        if first > have:
            return None  # it would wait for an update not held
        if end > have:
            clocks[client] = end
            changed = True
    return changed


def advance_vector(vector: bytes, updates: Sequence[bytes]) -> tuple[bytes, bool] | None:
    """The state vector ``vector`` moved past simple ``updates``, and whether any held
    something new; None when :func:`decode_clocks` does not vouch for ``vector`` or
    :func:`advance_clocks` does not decide.

    Exactly ``encode_clocks(clocks)`` (``vector`` itself when nothing is new) for
    ``clocks = decode_clocks(vector)`` moved by ``advance_clocks(clocks, updates)``,
    only quicker for the common case, one update against a vector whose clocks are
    below 2**28 and whose clients are each listed once (then the vector re-encodes to
    itself, and the result is spliced from its bytes); anything else goes that way.
    """
    if len(updates) == 1 and type(vector) is bytes and vector and vector[0] < 0x80:
        count = vector[0]
        if _SHORT_PAIRS.fullmatch(vector, 1) is not None:
            pairs = _SHORT_PAIR.findall(vector, 1)
            tokens: dict[Client, bytes] = dict(pairs)
            if len(pairs) == count and len(tokens) == count:
                # Canonical tokens, one pair per client: the dict re-encodes to vector.
                span = simple_span(updates[0])
                if span is None:
                    return None
                client, first, end = span
                token = tokens.get(client)
                have = 0 if token is None else token[0] if len(token) == 1 else _number(token)
                if first > have:
                    return None  # it would wait for an update not held
                if end <= have:
                    return vector, False
                if token is None:  # a new client, listed last
                    return encode_varuint(count + 1) + vector[1:] + client + encode_varuint(
                        end
                    ), True
                tokens[client] = encode_varuint(end)
                return vector[:1] + b"".join([b for pair in tokens.items() for b in pair]), True
    clocks = decode_clocks(vector)
    if clocks is None:
        return None
    changed = advance_clocks(clocks, updates)
    if changed is None:
        return None
    return (encode_clocks(clocks) if changed else vector), changed


def simple_span(update: bytes) -> tuple[Client, int, int] | None:
    """``(client, first clock, end clock)`` of a simple update, or None (see module doc).

    The update holds the client's clocks ``[first, end)`` and nothing else,
    and depends only on that client's clocks below ``first``.
    """
    if type(update) is not bytes:  # a bytearray's client token could not be a dict key
        return None
    try:
        return _span(update)
    except (_NotSimple, IndexError, UnicodeDecodeError):
        return None


def _span(buf: bytes) -> tuple[Client, int, int] | None:
    """:func:`_read` without the strings, for the hot path (returns None, not raising)."""
    head = _HEADER.match(buf)
    if head is None:
        return None
    count, client, start = head.groups()
    # One-byte numbers (the usual) read inline.
    structs = count[0] if len(count) == 1 else _number(count)
    first = start[0] if len(start) == 1 else _number(start)
    if structs == 0 or structs >= _MAX_CLOCK or first >= _MAX_CLOCK:
        return None
    clock, pos, strings = _structs(buf, head.end(), structs, first, None)
    b"\x00".join(strings).decode("utf-8")  # UnicodeDecodeError: pycrdt would refuse
    if clock >= _MAX_CLOCK or pos != len(buf) - 1 or buf[pos] != 0:
        return None  # the delete set must be empty, and be the last byte
    return client, first, clock


def only_adds(update: bytes) -> bool:
    """True for an update made of one or more client blocks, each of them what
    :func:`simple_span` vouches for (a simple update, or a merge of simple updates of
    several clients: a version 10 pull's merged entry, a first copy's record).

    Such an update only adds entries under the keys its items name, each item's bytes
    holding its root's name and its key: it overwrites, inserts next to and deletes
    nothing. False for any other (the caller builds the record, which decides).
    """
    return _adds_blocks(update) is not None


def adds_clocks(update: bytes) -> dict[Client, int] | None:
    """``{client: end clock}`` of an update :func:`only_adds` vouches for whose every
    client block starts at clock 0, each client once: the state vector (for
    :func:`encode_clocks`) of a document built from it alone, nothing waiting (its items
    have no origins, their parents are roots by name, each client's clocks start at 0).
    None for any other update (pycrdt works it out).
    """
    return read_adds(update)[1]


def read_adds(update: bytes) -> tuple[bool, dict[Client, int] | None]:
    """One walk for both: :func:`only_adds` of ``update``, and :func:`adds_clocks`."""
    blocks = _adds_blocks(update)
    if blocks is None:
        return False, None
    clocks = {client: end for client, first, end in blocks if first == 0}
    return True, clocks if len(clocks) == len(blocks) else None


def _adds_blocks(update: bytes) -> list[tuple[Client, int, int]] | None:
    """Each client block's (client, first clock, end clock) of an update :func:`only_adds`
    vouches for, in the update's order; None for any other."""
    if type(update) is not bytes:
        return None
    strings: list[bytes] = []
    blocks: list[tuple[Client, int, int]] = []
    try:
        count, pos = _uint(update, 0)
        for _ in range(count):
            head = _BLOCK.match(update, pos)
            if head is None:
                return None
            structs, first = _number(head[1]), _number(head[3])
            if structs == 0 or structs >= _MAX_CLOCK or first >= _MAX_CLOCK:
                return None
            clock, pos, raw = _structs(update, head.end(), structs, first, None)
            if clock >= _MAX_CLOCK:
                return None
            strings.extend(raw)
            blocks.append((head[2], first, clock))
        b"\x00".join(strings).decode("utf-8")  # UnicodeDecodeError: pycrdt would refuse
    except (_NotSimple, IndexError, UnicodeDecodeError):
        return None
    if count > 0 and pos == len(update) - 1 and update[pos] == 0:  # no delete set
        return blocks
    return None


def items_by_client(update: bytes) -> dict[Client, list[SimpleItem]] | None:
    """Each client's items in an update :func:`only_adds` vouches for (a record's whole
    state, when it holds only entries), in the update's order; None for any other.

    The walk of :func:`_adds_blocks`, keeping each struct's shape and strings: that one
    is kept apart for speed (a first copy walks every record; one shared walk measured
    17% slower there)."""
    if type(update) is not bytes:
        return None
    found: dict[Client, list[SimpleItem]] = {}
    try:
        count, pos = _uint(update, 0)
        for _ in range(count):
            head = _BLOCK.match(update, pos)
            if head is None:
                return None
            structs, first = _number(head[1]), _number(head[3])
            if structs == 0 or structs >= _MAX_CLOCK or first >= _MAX_CLOCK:
                return None
            layout: list[int] = []
            clock, pos, raw = _structs(update, head.end(), structs, first, layout)
            if clock >= _MAX_CLOCK:
                return None
            strings = [part.decode("utf-8") for part in raw]
            found.setdefault(head[2], []).extend(_items(first, layout, strings))
    except (_NotSimple, IndexError, UnicodeDecodeError):
        return None
    if count > 0 and pos == len(update) - 1 and update[pos] == 0:  # no delete set
        return found
    return None


def simple_pieces(
    update: bytes, clients: Collection[Client] | None, *, max_items: int, max_bytes: int
) -> list[bytes] | None:
    """The items of ``clients`` (None: of every client) in an update :func:`only_adds`
    vouches for, as simple updates (one client each, in clock order per client, each at
    most ``max_items`` items and, past its first item, ``max_bytes`` bytes); None for
    any other update.

    An item of such an update names its root and key and no neighbour, so any run of
    a client's items is an update of its own: what a server that admits only simple
    updates (:mod:`caresync.records.admission`) takes from a record's whole state.
    """
    if type(update) is not bytes or max_items < 1:
        return None
    pieces: list[bytes] = []
    try:
        count, pos = _uint(update, 0)
        for _ in range(count):
            head = _BLOCK.match(update, pos)
            if head is None:
                return None
            structs, clock = _number(head[1]), _number(head[3])
            if structs == 0 or structs >= _MAX_CLOCK or clock >= _MAX_CLOCK:
                return None
            pos = head.end()
            wanted = clients is None or head[2] in clients
            start, first, taken = pos, clock, 0
            for index in range(structs):
                clock, pos, _strings = _structs(update, pos, 1, clock, None)
                taken += 1
                last = index == structs - 1
                if wanted and (last or taken == max_items or pos - start >= max_bytes):
                    pieces.append(
                        b"".join(
                            (
                                b"\x01",
                                encode_varuint(taken),
                                head[2],
                                encode_varuint(first),
                                update[start:pos],
                                b"\x00",
                            )
                        )
                    )
                    start, first, taken = pos, clock, 0
            if clock >= _MAX_CLOCK:
                return None
    except (_NotSimple, IndexError):
        return None
    if count > 0 and pos == len(update) - 1 and update[pos] == 0:  # no delete set
        return pieces
    return None


def _items(clock: int, layout: list[int], strings: list[str]) -> list[SimpleItem]:
    """The items a walk listed (``layout``: each struct's info byte and string count;
    ``strings``: every string in order: the root's name, the key if any, the content)."""
    items: list[SimpleItem] = []
    at = 0
    for index in range(0, len(layout), 2):
        info, count = layout[index], layout[index + 1]
        root = strings[at]
        if info == _ITEM_WITH_KEY:
            key: str | None = strings[at + 1]
            at += 2
        else:
            key = None
            at += 1
        items.append(SimpleItem(clock, root, key, tuple(strings[at : at + count])))
        at += count
        clock += count
    return items


def simple_items(update: bytes) -> SimpleUpdate | None:
    """A simple update's client, clocks and items, or None for any other update.

    Vouches for exactly what :func:`simple_span` vouches for (the same walk);
    :func:`why_not_simple` says why an update is not simple.
    """
    if type(update) is not bytes:
        return None
    layout: list[int] = []
    try:
        client, first, end, raw = _read(update, layout)
    except (_NotSimple, IndexError, UnicodeDecodeError):
        return None
    strings = [part.decode("utf-8") for part in raw]
    return SimpleUpdate(client, first, end, tuple(_items(first, layout, strings)))


def why_not_simple(update: bytes) -> str | None:
    """Why an update is not simple, in words for whoever wrote it; None if it is simple.

    A clause such as ``it deletes entries (a delete set)``.
    """
    if type(update) is not bytes:
        return f"an update must be bytes, not {type(update).__name__}"
    try:
        _read(update, None)
    except _NotSimple as exc:
        return str(exc)
    except IndexError:
        return _TRUNCATED
    except UnicodeDecodeError:
        return "it holds a string that is not valid UTF-8"
    return None


def _read(buf: bytes, layout: list[int] | None) -> tuple[Client, int, int, list[bytes]]:
    """Client, first and end clock, and every string's bytes; raises _NotSimple.

    :func:`_span` is the same without the strings, kept apart for speed.
    """
    head = _HEADER.match(buf)
    if head is None:
        raise _NotSimple(_header_problem(buf))
    structs, first = _number(head[1]), _number(head[3])
    if structs == 0 or structs >= _MAX_CLOCK or first >= _MAX_CLOCK:
        raise _NotSimple(_BAD_NUMBER if structs else "it holds a client block without items")
    clock, pos, strings = _structs(buf, head.end(), structs, first, layout)
    # NUL cannot continue a multi-byte sequence, so the joined strings are valid
    # UTF-8 exactly when each one is: one C call checks them all.
    b"\x00".join(strings).decode("utf-8")  # UnicodeDecodeError: pycrdt would refuse
    if clock >= _MAX_CLOCK or pos != len(buf) - 1 or buf[pos] != 0:
        # The delete set must be empty, and be the last byte.
        raise _NotSimple(_BAD_NUMBER if clock >= _MAX_CLOCK else _tail_problem(buf, pos))
    return head[2], first, clock, strings


def _structs(
    buf: bytes, pos: int, structs: int, clock: int, layout: list[int] | None
) -> tuple[int, int, list[bytes]]:
    """Walk the structs: the clock and position after them, and every string's bytes.

    With ``layout``, also appends each struct's info byte and string count
    (the span reader passes None: it needs neither). One-byte varuints (the
    usual case) are read inline; the caller checks the strings are UTF-8.
    """
    strings: list[bytes] = []
    append = strings.append
    for _ in range(structs):
        info = buf[pos]
        if (info != _ITEM_WITH_KEY and info != _ITEM) or buf[pos + 1] != _ROOT_BY_NAME:
            raise _NotSimple(_struct_problem(info, buf[pos + 1]))
        # The root type's name, then (a map entry) the key: unrolled, not a loop.
        length = buf[pos + 2]
        if length < 0x80:
            pos += 3
        else:
            length, pos = _uint(buf, pos + 2)
        end = pos + length
        append(buf[pos:end])
        pos = end
        if info == _ITEM_WITH_KEY:
            length = buf[pos]
            if length < 0x80:
                pos += 1
            else:
                length, pos = _uint(buf, pos)
            end = pos + length
            append(buf[pos:end])
            pos = end
        count = buf[pos]
        if count < 0x80:
            pos += 1
        else:
            count, pos = _uint(buf, pos)
        if count == 0:
            raise _NotSimple("it holds an item without content")
        for _ in range(count):
            if buf[pos] != _ANY_STRING:
                raise _NotSimple(
                    "it holds a value that is not a string (each entry is one JSON string)"
                )
            length = buf[pos + 1]
            if length < 0x80:
                pos += 2
            else:
                length, pos = _uint(buf, pos + 1)
            end = pos + length
            append(buf[pos:end])
            pos = end
        clock += count
        if layout is not None:
            layout.append(info)
            layout.append(count)
    return clock, pos, strings


# Yjs v1 content kinds (the low five bits of an item's info byte).
_CONTENTS = {
    1: "deleted content",
    2: "JSON content (ContentJSON)",
    3: "binary content",
    4: "text (a Y.Text's content)",
    5: "an embed",
    6: "text formatting",
    7: "a nested shared type (a Y.Map, Y.Array or Y.Text) as a value",
    9: "a sub-document",
}


def _struct_problem(info: int, parent: int) -> str:
    """What makes a struct not a simple Item (only called on the way out)."""
    kind = info & 0x1F
    if kind == 0:
        return "it holds a garbage-collected range (a GC struct)"
    if kind == 10:
        return "it holds a skipped range (a Skip struct)"
    if info & 0xC0:
        return (
            "it holds an item with an origin: it overwrites an existing map entry, or "
            "inserts next to existing content"
        )
    if kind != 8:
        return f"it holds {_CONTENTS.get(kind, f'an unknown content kind ({kind})')}"
    if parent != _ROOT_BY_NAME:
        return "it writes inside a nested type (an item whose parent is not a root type)"
    return f"it holds an item of an unknown kind (info byte {info:#04x})"


def _header_problem(buf: bytes) -> str:
    """What makes an update's start not one client block (only called on the way out)."""
    try:
        blocks, _ = _uint(buf, 0)
    except (_NotSimple, IndexError):
        return "it does not start like a Yjs v1 update"
    if blocks == 0:
        if buf == b"\x00\x00":
            return "it holds nothing"
        return "it adds nothing and deletes entries (a delete set)"
    if blocks > 1:
        return (
            f"it holds the changes of {blocks} clients: send each client's changes "
            "as its own update"
        )
    pos = 1
    for _ in range(3):  # the struct count, the client, its first clock: all there?
        while pos < len(buf) and buf[pos] >= 0x80:
            pos += 1
        if pos >= len(buf):
            return _TRUNCATED
        pos += 1
    return _BAD_NUMBER


def _tail_problem(buf: bytes, pos: int) -> str:
    """What follows the items instead of an empty delete set."""
    if pos < len(buf) and buf[pos] != 0:
        return "it deletes entries (a delete set)"
    return "it has bytes after its end"


def decode_clocks(vector: bytes) -> dict[Client, int] | None:
    """A state vector as {client: clock}, or None if it is not one this reader vouches for.

    Every client and clock must be in its one canonical encoding, so two vectors
    it reads say the same exactly when their dicts (without clock-0 clients) are equal.
    """
    try:
        count, pos = _uint(vector, 0)
    except (_NotSimple, IndexError):
        return None
    # One C pass checks that the rest is a run of pairs and nothing else; the pairs'
    # boundaries are unique (a varuint ends at its first byte below 0x80).
    if _PAIRS.fullmatch(vector, pos) is None:
        return None
    clocks: dict[Client, int] = {
        client: clock[0] if len(clock) == 1 else _number(clock)
        for client, clock in _PAIR.findall(vector, pos)
    }
    if len(clocks) != count or (clocks and max(clocks.values()) >= _MAX_CLOCK):
        return None
    return clocks


def same_clocks(one: dict[Client, int], other: dict[Client, int]) -> bool:
    """True if two vectors :func:`decode_clocks` read say the same (a client at clock 0
    is a client not listed)."""
    if one == other:
        return True
    return {c: k for c, k in one.items() if k} == {c: k for c, k in other.items() if k}


_SMALL = [bytes((n,)) for n in range(0x80)]


def encode_varuint(value: int) -> bytes:
    """``value`` (>= 0) as a canonical lib0 varuint, as Yjs writes counts, clients and clocks."""
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_clocks(clocks: dict[Client, int]) -> bytes:
    """A Yjs v1 state vector of {client: clock} (clients in the dict's order)."""
    parts = [encode_varuint(len(clocks))]
    for client, clock in clocks.items():
        parts.append(client)
        parts.append(encode_varuint(clock))
    return b"".join(parts)
