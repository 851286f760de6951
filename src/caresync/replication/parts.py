"""A record larger than one frame, copied in parts (protocol version 15; pure).

A first copy sends each record whole in a batch. A record that, with its rows and card,
does not fit one frame to the laptop (a chart of many long notes, or one a colleague made
large on purpose) used to stop every new laptop's enrolment at it. From version 15 the
server names it instead (``CopyBatch.in_parts``) and the laptop asks for it in parts:

* the laptop sends the state vector of what it holds of the record (nothing, at first);
* the server answers with what of the record it lacks, from there on, as simple updates
  (one Yjs client's next items each, :func:`~caresync.records.spans.simple_pieces`), as
  many as fit one frame, saying when they are the rest (:func:`next_part`);
* the laptop checks that each continues what it holds exactly (:class:`PartsTaken`),
  asks again from its new state vector, and once it has the rest takes the record in
  as any record from its server is taken in: built, checked and indexed by the laptop
  itself, with the copy's resume point after it, in one commit.

Each request names the laptop's state, so the server keeps nothing between them, and a
record that grows meanwhile is sent as it is when asked. The server admits only updates
that add entries, so a record's state is entries only and splits into such parts; one
that does not (stored before that check) cannot be copied in parts, and is refused as
before.
"""

from __future__ import annotations

from dataclasses import dataclass

from caresync.exceptions import InvalidUpdateError, RemoteProtocolError
from caresync.records.crdt import EMPTY_UPDATE, diff_update
from caresync.records.spans import (
    Client,
    decode_clocks,
    encode_clocks,
    simple_pieces,
    simple_span,
)

__all__ = ["MAX_PARTS_BYTES", "UPDATE_COST", "NextPart", "PartsTaken", "next_part"]

MAX_PARTS_BYTES = 256 * 1024 * 1024
"""The most bytes of one record a laptop takes in parts, each update counted with
:data:`UPDATE_COST` more: a server that sends more (one that never says ``final``, or
millions of updates of a few bytes) is refused, the copy stopping there."""

UPDATE_COST = 128
"""Bytes a taken update costs the laptop beyond its own (a Python bytes object, its place
in the list, its share of the merge): counted against :data:`MAX_PARTS_BYTES`."""

_PIECE_ITEMS = 100_000
"""Items of one client in one piece at most (a piece is also bounded by bytes)."""


@dataclass(frozen=True, slots=True)
class NextPart:
    """The next part of a record: simple updates, in order, and whether they are the rest."""

    updates: tuple[bytes, ...]
    final: bool


def next_part(
    state: bytes,
    state_vector: bytes,
    budget: int,
    *,
    record_id: str,
    per_update: int = 0,
    max_updates: int,
) -> NextPart | None:
    """What of ``state`` (a record's stored bytes) a holder at ``state_vector`` lacks,
    as simple updates that continue it, as many as ``budget`` bytes hold (each update
    counted with ``per_update`` bytes more, its cost in a frame; at most
    ``max_updates``; at least one), and whether they are all of it.

    None if the record is not entries only, or a client's items in it wait for ones it
    lacks (it cannot be cut into parts that continue the holder's state);
    :class:`~caresync.exceptions.InvalidUpdateError` if ``state_vector`` is not a state
    vector in Yjs' canonical encoding. A single piece larger than ``budget`` comes
    alone: the caller's frame then refuses it, as it would the entry itself.
    """
    missing = diff_update(state, state_vector, record_id=record_id)
    clocks = decode_clocks(state_vector)
    if clocks is None:  # pycrdt read it, but not in the one encoding a laptop sends
        raise InvalidUpdateError(
            f"record {record_id}: the state vector is not in Yjs' canonical encoding"
        )
    if missing == EMPTY_UPDATE:
        return NextPart((), True)
    # Every client's items: a diff starts past the holder's clocks, so its own state
    # vector (pycrdt's) lists none of the clients whose items begin later than 0.
    pieces = simple_pieces(missing, None, max_items=_PIECE_ITEMS, max_bytes=max(1, budget // 4))
    if not pieces:  # not entries only; or nothing read of bytes that hold something
        return None
    taken, size = 0, 0
    for piece in pieces:
        size += len(piece) + per_update
        if taken and (size > budget or taken == max_updates):
            break
        # Each must continue what the holder has of its client: a state with a gap in
        # a client's clocks (items waiting, stored before admission) diffs past it.
        span = simple_span(piece)
        if span is None or span[1] != clocks.get(span[0], 0):
            return None
        clocks[span[0]] = span[2]
        taken += 1
    return NextPart(tuple(pieces[:taken]), taken == len(pieces))


class PartsTaken:
    """The parts of one record a laptop has taken so far, checked as they arrive."""

    def __init__(self, record_id: str, held: bytes | None) -> None:
        """``held``: the state vector of what the laptop holds of the record (None:
        nothing)."""
        self.record_id = record_id
        clocks = decode_clocks(held) if held is not None else {}
        self._clocks: dict[Client, int] = {} if clocks is None else dict(clocks)
        self.updates: list[bytes] = []
        self._bytes = 0

    def vector(self) -> bytes:
        """The state vector of what is held of the record, these parts included."""
        return encode_clocks(self._clocks)

    def add(self, updates: tuple[bytes, ...]) -> None:
        """Take a part's updates: each must add one client's items right after what is
        held of that client (RemoteProtocolError otherwise, nothing of the part taken)."""
        clocks = dict(self._clocks)
        size = self._bytes
        for update in updates:
            span = simple_span(update)
            if span is None:
                raise RemoteProtocolError(
                    f"a part of record {self.record_id} is not a simple update"
                )
            client, first, end = span
            if first != clocks.get(client, 0) or end <= first:
                raise RemoteProtocolError(
                    f"a part of record {self.record_id} does not continue what this "
                    "laptop holds of it"
                )
            clocks[client] = end
            size += len(update) + UPDATE_COST
            if size > MAX_PARTS_BYTES:
                raise RemoteProtocolError(
                    f"record {self.record_id} comes in parts of more than "
                    f"{MAX_PARTS_BYTES} bytes in all; the copy stops there"
                )
        self._clocks = clocks
        self._bytes = size
        self.updates.extend(updates)
