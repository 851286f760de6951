"""Pure helpers over Yjs update bytes, with pycrdt's errors translated (no I/O).

The store never needs a document to store or serve a record: merging and
state vectors work on bytes. A document is built only to check a
compaction, so that the check does not trust the code it checks. Every
pycrdt call goes through :mod:`caresync.records.crdt`, the package's one
boundary around pycrdt, so bytes that make pycrdt fail (or panic) raise
InvalidUpdateError here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from caresync.exceptions import InvalidUpdateError
from caresync.records import crdt
from caresync.records.crdt import EMPTY_UPDATE
from caresync.records.spans import decode_clocks, encode_varuint, same_clocks

__all__ = [
    "EMPTY_UPDATE",
    "advance",
    "covered_by",
    "decode_state_vector",
    "has_pending",
    "merge",
    "merge_stored",
    "same_state_vector",
    "state_vector_of",
    "verify_compaction",
]


def merge(parts: Sequence[bytes], *, record_id: str) -> bytes:
    """Merge update bytes into one update; InvalidUpdateError if any part is not one."""
    return crdt.merge(parts, record_id=record_id)


def merge_stored(state: bytes, pieces: Sequence[bytes], *, record_id: str) -> bytes:
    """A stored record's state and the updates since its compaction, as one update.

    A record never compacted has an empty state and, most often, one update: that
    update is the record, as it is, with no merge (on a server, most records of a
    first copy; a merge per record cost a third of the server's time).
    """
    parts = list(pieces) if state == EMPTY_UPDATE else [state, *pieces]
    if not parts:
        return state
    return parts[0] if len(parts) == 1 else merge(parts, record_id=record_id)


def state_vector_of(merged: bytes, *, record_id: str) -> bytes:
    """The state vector of merged update bytes."""
    return crdt.state_vector_of(merged, record_id=record_id)


def has_pending(merged: bytes, vector: bytes) -> bool:
    """True if ``merged`` holds items beyond its state vector: updates that arrived
    before one they depend on (they wait, and count in no state vector yet)."""
    rest = crdt.diff_update(merged, vector)
    return rest[:1] != b"\x00"


def covered_by(update: bytes, vector: bytes) -> bool:
    """True if a record at ``vector`` holds all of ``update`` already (a resent update).

    Conservative: an update that deletes anything is never called covered.
    """
    return crdt.diff_update(update, vector) == EMPTY_UPDATE


def advance(vector: bytes, updates: Sequence[bytes], *, record_id: str) -> tuple[bytes, bool]:
    """The state vector after ``updates``, and whether any of them must wait.

    For a record that holds no waiting items, the state vector of its state
    merged with new updates depends only on its state vector and the updates:
    the state is stood in for by one garbage-collected run per client, up to
    its clock. That costs in proportion to the updates, not to the record.
    """
    merged = merge([_runs_up_to(vector), *updates], record_id=record_id)
    new_vector = state_vector_of(merged, record_id=record_id)
    return new_vector, has_pending(merged, new_vector)


_VARUINT = re.compile(rb"[\x80-\xff]*[\x00-\x7f]")


def _varuints(vector: bytes) -> list[bytes]:
    """The encoded varuints of a state vector: its count, then (client, clock) pairs."""
    tokens: list[bytes] = _VARUINT.findall(vector)
    if (
        not tokens
        or sum(map(len, tokens)) != len(vector)
        or len(tokens) != 1 + 2 * _decodeencode_varuint(tokens[0])
    ):
        raise InvalidUpdateError("bytes that are not a Yjs state vector")
    return tokens


def _decodeencode_varuint(token: bytes) -> int:
    if len(token) == 1:
        return token[0]
    value = 0
    for shift, byte in enumerate(token):
        value |= (byte & 0x7F) << (7 * shift)
    return value


def _runs_up_to(vector: bytes) -> bytes:
    """A Yjs v1 update of one GC struct per client covering clocks [0, clock)."""
    tokens = _varuints(vector)
    # Per client: one struct, the client, first clock 0, info 0 (GC), its length.
    runs = [
        b"\x01" + tokens[i] + b"\x00\x00" + tokens[i + 1]
        for i in range(1, len(tokens), 2)
        if tokens[i + 1] != b"\x00"
    ]
    return encode_varuint(len(runs)) + b"".join(runs) + b"\x00"  # and an empty delete set


def decode_state_vector(vector: bytes) -> dict[int, int]:
    """A Yjs state vector as {client id: clock}.

    Two encodings of one state vector may list the clients in different
    orders, so state vectors are compared decoded, never as bytes.
    """
    values = [_decodeencode_varuint(t) for t in _varuints(vector)]
    return dict(zip(values[1::2], values[2::2], strict=True))


def same_state_vector(a: bytes, b: bytes) -> bool:
    """True if two encoded state vectors say the same thing.

    A client listed with clock 0 (a document that has seen only a pending
    update of it) says the same as a client not listed.
    """
    if a == b:
        return True
    # The usual encoding (canonical numbers) is read in C by the span reader's regexes;
    # anything else in full.
    one, other = decode_clocks(a), decode_clocks(b)
    if one is not None and other is not None:
        return same_clocks(one, other)
    return _seen(decode_state_vector(a)) == _seen(decode_state_vector(b))


def _seen(vector: dict[int, int]) -> dict[int, int]:
    return {client: clock for client, clock in vector.items() if clock}


def verify_compaction(
    state: bytes, log: Sequence[bytes], compacted: bytes, expected_vector: bytes
) -> str | None:
    """Why ``compacted`` does not hold exactly ``state`` plus ``log``; None when it does.

    Two independent checks: the compacted bytes have the state vector stored at
    write time, and a document built by applying the pieces one by one encodes
    the same content as a document built from the compacted bytes.
    """
    try:
        if not same_state_vector(crdt.state_vector_of(compacted), expected_vector):
            return "the compacted state has another state vector than the stored one"
        before: crdt.Doc[Any] = crdt.Doc()
        crdt.apply_update(before, state)
        for update in log:
            crdt.apply_update(before, update)
        after: crdt.Doc[Any] = crdt.Doc()
        crdt.apply_update(after, compacted)
        if not same_state_vector(crdt.encode_state_vector(before), crdt.encode_state_vector(after)):
            return "the compacted state has another state vector than its pieces"
        if crdt.encode_state_as_update(before) != crdt.encode_state_as_update(after):
            return "the compacted state decodes to other content than its pieces"
    except InvalidUpdateError as exc:  # any failure to decode is a finding, reported
        return f"the record's bytes cannot be decoded ({exc})"
    return None
