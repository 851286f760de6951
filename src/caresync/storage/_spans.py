"""A strict reader for the commonest Yjs update, so most writes need no pycrdt call.

Theory of operation
-------------------
Almost every update a replica stores is one edit of one record: a single
client's run of map writes under fresh keys. Such an update depends on nothing
but the same client's earlier clocks, so whether it is new, already held, or
must wait, and the state vector after it, follow from three numbers: its
client, its first clock and its end clock (:func:`simple_span`).

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
"""

from __future__ import annotations

import re

__all__ = ["decode_clocks", "encode_clocks", "simple_span"]

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
_PAIR = re.compile(_CLIENT + _COUNT, re.DOTALL)

Client = bytes
"""A client id as its canonical varuint bytes: one key per client, no decoding needed."""


class _NotSimple(Exception):
    """Raised inside the reader: not an update it vouches for."""


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
            raise _NotSimple
    if byte == 0 or value >= _MAX_CLOCK:  # a trailing zero group is not canonical
        raise _NotSimple
    return value, pos


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
    head = _HEADER.match(buf)
    if head is None:
        return None
    structs, first = _number(head[1]), _number(head[3])
    if structs == 0 or structs >= _MAX_CLOCK or first >= _MAX_CLOCK:
        return None
    start = head.end()
    clock, pos, strings = _structs(buf, start, structs, first)
    # NUL cannot continue a multi-byte sequence, so the joined strings are valid
    # UTF-8 exactly when each one is: one C call checks them all.
    b"\x00".join(strings).decode("utf-8")  # UnicodeDecodeError: pycrdt would refuse
    if clock >= _MAX_CLOCK or pos != len(buf) - 1 or buf[pos] != 0:
        return None  # the delete set must be empty, and be the last byte
    return head[2], first, clock


def _structs(buf: bytes, pos: int, structs: int, clock: int) -> tuple[int, int, list[bytes]]:
    """Walk the structs: the clock and position after them, and every string's bytes.

    One-byte varuints (the usual case) are read inline; the caller checks the
    strings are UTF-8.
    """
    strings: list[bytes] = []
    append = strings.append
    for _ in range(structs):
        info = buf[pos]
        if (info != _ITEM_WITH_KEY and info != _ITEM) or buf[pos + 1] != _ROOT_BY_NAME:
            raise _NotSimple
        pos += 2
        for _ in range(2 if info == _ITEM_WITH_KEY else 1):  # the root type's name, the key
            length = buf[pos]
            if length < 0x80:
                pos += 1
            else:
                length, pos = _uint(buf, pos)
            append(buf[pos : pos + length])
            pos += length
        count = buf[pos]
        if count < 0x80:
            pos += 1
        else:
            count, pos = _uint(buf, pos)
        if count == 0:
            raise _NotSimple
        for _ in range(count):
            if buf[pos] != _ANY_STRING:
                raise _NotSimple
            length = buf[pos + 1]
            if length < 0x80:
                pos += 2
            else:
                length, pos = _uint(buf, pos + 1)
            append(buf[pos : pos + length])
            pos += length
        clock += count
    return clock, pos, strings


def decode_clocks(vector: bytes) -> dict[Client, int] | None:
    """A state vector as {client: clock}, or None if it is not one this reader vouches for."""
    try:
        count, pos = _uint(vector, 0)
    except (_NotSimple, IndexError):
        return None
    clocks: dict[Client, int] = {}
    for _ in range(count):
        pair = _PAIR.match(vector, pos)
        if pair is None:
            return None
        client, clock = pair.groups()
        clocks[client] = _number(clock)
        pos = pair.end()
    if pos != len(vector) or len(clocks) != count or max(clocks.values(), default=0) >= _MAX_CLOCK:
        return None
    return clocks


_SMALL = [bytes((n,)) for n in range(0x80)]


def _varuint(value: int) -> bytes:
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
    parts = [_varuint(len(clocks))]
    for client, clock in clocks.items():
        parts.append(client)
        parts.append(_varuint(clock))
    return b"".join(parts)
