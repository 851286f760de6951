"""Whether a server's check of a record fits the state a batch leaves it in (pure).

A server whose conflict index our rulebook computed sends, with pulled and live
entries (protocol version 8), each record's conflict rows and person card
together with the state vector of the stored state they describe. Conflict rows
and a person card are functions of a record's state and the rulebook, so a
laptop may store them as they are exactly when its own record, after the
batch, is in that same state: then building the record and running the rules
would compute the same rows.

Same state is decided by state vectors. Every update a replica stores only adds
items (the server admits nothing else, and a laptop writes nothing else), so a
record's state is the set of items it holds; one with no waiting items holds,
for each Yjs client, exactly the items below that client's clock. Two such
records with equal state vectors hold the same items. A record with an
unacknowledged local edit holds a clock the server lacks, so it never matches
and is rebuilt and checked as before. The same state is not yet a record of its
own: building one checks its id, so a check fits only updates that cannot name
another (:func:`keeps_its_id`).

From version 9 a check may refer to the card, or to the card and rows, that the
laptop holds (:func:`~caresync.protocol.card_reference`,
:func:`~caresync.protocol.held_reference`): it fits only if the laptop's stored
card and rows have those digests (:func:`card_kept`, :func:`rows_kept`), and they
are then kept; otherwise the record is built and checked.

No I/O: the caller reads the stored state vectors (``ReplicaStore.state_vectors``);
a server reads its checks with :func:`caresync.replication.index.read_checks`. What
arrives is untrusted: :func:`from_wire` parses every state vector and card, and
refuses (RemoteProtocolError) what does not parse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from caresync.exceptions import InvalidInputError, InvalidUpdateError, RemoteProtocolError
from caresync.protocol import (
    CARD_DIGEST_BYTES,
    CheckedState,
    CopyConflict,
    LiveBatch,
    LiveUpdate,
    RecordCheck,
    card_reference,
    is_card_reference,
    is_held_reference,
    rows_digest,
)
from caresync.records.persons import PersonCard
from caresync.records.spans import (
    advance_vector,
    decode_clocks,
    encode_clocks,
    encode_varuint,
    only_adds,
    read_adds,
)
from caresync.storage import ConflictRow
from caresync.storage._updates import advance, decode_state_vector, same_state_vector

__all__ = [
    "EMPTY_STATE_VECTOR",
    "advance_simply",
    "LiveFrames",
    "card_digest_kept",
    "ServerCheck",
    "card_from_wire",
    "card_kept",
    "keeps_its_id",
    "copied_state",
    "rows_kept",
    "from_wire",
    "matches",
    "to_wire",
    "vector_after",
]

_NO_ROWS_DIGEST = rows_digest(())  # most records hold no conflict rows

EMPTY_STATE_VECTOR = b"\x00"
"""The state vector of a record that holds nothing (a record new here)."""


class ServerCheck(NamedTuple):
    """What a server with our rulebook stored for one record's state.

    A named tuple rather than a frozen dataclass: a pull builds one per record from
    bytes ``from_wire`` has just checked, in one C call, and a tuple of untracked
    fields costs the garbage collector nothing once it has been seen once."""

    state_vector: bytes
    """The Yjs state vector of the server's stored state that ``rows`` and ``person`` describe."""
    rows: tuple[ConflictRow, ...]
    person: PersonCard | None
    card_ref: bytes | None = None
    """Instead of ``person`` (then None), a reference to the card (protocol version 9 on,
    :func:`~caresync.protocol.card_reference`; that of ``b""`` for no card): the check
    fits only a laptop that stores that very card, which it keeps."""
    rows_ref: bytes | None = None
    """Instead of ``rows`` (then empty), their :func:`~caresync.protocol.rows_digest`
    (version 9 on): the check fits only a laptop that stores those very rows."""


def vector_after(
    record_id: str, stored: tuple[bytes, bool] | None, updates: Sequence[bytes]
) -> bytes | None:
    """The record's state vector once ``updates`` are stored, or None if it would hold
    waiting items (before or after), or the bytes do not read as updates.

    ``stored`` is the record's stored (state vector, waiting items), or None for a
    record not stored here. Costs in proportion to the updates, not to the record.
    """
    if stored is not None and stored[1]:
        return None
    vector = EMPTY_STATE_VECTOR if stored is None else stored[0]
    simply = advance_simply(vector, updates)
    if simply is not None:
        return simply[0]
    try:
        after, pending = advance(vector, updates, record_id=record_id)
    except InvalidUpdateError:
        return None  # the ordinary path keeps such bytes aside, or refuses them
    return None if pending else after


def advance_simply(vector: bytes, updates: Sequence[bytes]) -> tuple[bytes, bool] | None:
    """A record's state vector once simple ``updates`` are stored, from ``vector`` (its
    stored one, of a record without waiting items), and whether they add anything to
    it; None when that is not read off the updates' headers (an update that is not
    simple, one that would wait, or a vector this reader does not vouch for).

    What a store plans for the same updates (``IncomingUpdate.advances`` passes it on,
    so that it is worked out once)."""
    # One client's edit that depends on nothing else: its header says everything.
    return advance_vector(vector, updates)


_META_ID_ENTRY = b"\x04meta\x02id"
"""The bytes of every item of an update that only adds (:func:`~caresync.records.spans.only_adds`)
and writes ``meta["id"]``: the root's name and the key, each after its length."""


def keeps_its_id(record_id: str, updates: Sequence[bytes], *, simple: bool = False) -> bool:
    """True if ``updates`` cannot make record ``record_id`` another's: each only adds
    entries (:func:`~caresync.records.spans.only_adds`), and each entry it writes at
    ``meta["id"]`` is one string, ``record_id`` itself. ``simple``: the caller knows each
    update is simple (:func:`advance_simply` read them), so none is walked again.

    Building a record checks its id (``Record.check_id``): a record stored with a
    server's check, or copied with its rows and card, is not built, so this stands in
    for that check; an update it cannot vouch for sends the record the building way,
    which decides.
    """
    named = _id_entry(record_id)
    for update in updates:
        if not simple and not only_adds(update):
            return False
        if not _names_only(update, named):
            return False
    return True


def copied_state(record_id: str, update: bytes) -> tuple[bool, bytes | None]:
    """For a first copy's record, one walk of its bytes: whether
    ``keeps_its_id(record_id, [update])``, and, when its every client's items start at
    clock 0, its state vector read off them (nothing of it waits); else None, for pycrdt
    to work out (:func:`~caresync.records.spans.read_adds`)."""
    adds, clocks = read_adds(update)
    if not adds:
        return False, None  # what keeps_its_id says of it, without a second walk
    kept = _names_only(update, _id_entry(record_id))
    return kept, None if clocks is None else encode_clocks(clocks)


def _id_entry(record_id: str) -> bytes:
    """What follows :data:`_META_ID_ENTRY` in an entry naming ``record_id``: one string."""
    return b"\x01\x77" + _varstring(record_id)


def _names_only(update: bytes, named: bytes) -> bool:
    """True if every ``meta["id"]`` entry in ``update``'s bytes is ``named``. The bytes
    inside a string only ever fail this (then the record is built), never pass it."""
    at = update.find(_META_ID_ENTRY)
    while at >= 0:
        after = at + len(_META_ID_ENTRY)
        if not update.startswith(named, after):
            return False
        at = update.find(_META_ID_ENTRY, after)
    return True


def _varstring(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    return encode_varuint(len(data)) + data


def matches(after: bytes | None, check: ServerCheck) -> bool:
    """True if a record at state vector ``after`` is in the state ``check`` describes."""
    if after is None:
        return False
    try:
        return same_state_vector(after, check.state_vector)
    except InvalidUpdateError:
        return False  # not a state vector: trust nothing of it


def card_kept(check: ServerCheck, stored: bytes | None) -> bool:
    """True if ``check``'s card is one the laptop may keep or take: a card sent in full
    (or no card), or a reference to ``stored``, the laptop's stored card (None: none)."""
    if check.card_ref is None:
        return True
    return card_reference(stored or b"") == check.card_ref


def card_digest_kept(check: ServerCheck, stored: bytes) -> bool:
    """:func:`card_kept` given the digest of the laptop's stored card
    (:func:`~caresync.storage.card_digest`, as its store keeps it beside the state
    vector) rather than the card itself."""
    if check.card_ref is None:
        return True
    return check.card_ref == b"\x00" + stored


def rows_kept(check: ServerCheck, stored: Sequence[ConflictRow]) -> bool:
    """True if ``check``'s rows are ones the laptop may keep or take: rows sent in full,
    or a digest of ``stored``, the laptop's stored rows of the record."""
    if check.rows_ref is None:
        return True
    return (rows_digest(stored) if stored else _NO_ROWS_DIGEST) == check.rows_ref


def to_wire(record_id: str, check: ServerCheck) -> RecordCheck:
    """A server's check of one record as a frame carries it (the card in full)."""
    card = None if check.person is None else check.person.to_bytes()
    return RecordCheck(
        CheckedState(record_id, check.state_vector, card),
        tuple(
            CopyConflict(record_id, row.id, row.kind, row.subject, row.severity, row.payload)
            for row in check.rows
        ),
    )


def card_from_wire(record_id: str, data: bytes) -> PersonCard:
    """The person card the server sent with ``record_id``; RemoteProtocolError for bytes
    that are not a card, or the card of another record."""
    try:
        card = PersonCard.from_bytes(data)
    except InvalidInputError as exc:
        raise RemoteProtocolError(
            f"the server sent record {record_id} with a bad person card: {exc}"
        ) from None
    if card.record_id != record_id:
        raise RemoteProtocolError(
            f"the server sent record {record_id} with the card of {card.record_id}"
        )
    return card


def from_wire(
    checked: Sequence[CheckedState] | None, conflicts: Sequence[CopyConflict] | None
) -> dict[str, ServerCheck] | None:
    """A pulled or live batch's checks by record (None: the batch carries none).

    The message checked their shape and sizes; here their content:
    RemoteProtocolError for a state vector or person card that does not parse, or
    the card of another record.
    """
    if checked is None:
        return None
    grouped: dict[str, list[ConflictRow]] = {}
    for row in conflicts or ():
        grouped.setdefault(row.record_id, []).append(
            ConflictRow(row.id, row.record_id, row.kind, row.subject, row.severity, row.payload)
        )
    checks: dict[str, ServerCheck] = {}
    held_size = 1 + 2 * CARD_DIGEST_BYTES  # a held reference: 1, card digest, rows digest
    low = _LOW_BYTES
    for record_id, vector, card_bytes in checked:
        if (
            type(card_bytes) is bytes
            and len(card_bytes) == held_size
            and card_bytes[0] == 1
            and type(vector) is bytes
            and vector
            and vector[0] < 0x80
            and vector[-1] < 0x80
            and len(vector) - len(vector.translate(None, low)) == 1 + 2 * vector[0]
        ):
            # The usual check (the record's card and rows as held, its state vector
            # plainly one): what the general way below makes of it, inline, the named
            # tuple in one C call (a pull reads a thousand).
            checks[record_id] = _tuple_new(
                ServerCheck,
                (
                    vector,
                    (),
                    None,
                    b"\x00" + card_bytes[1 : 1 + CARD_DIGEST_BYTES],
                    card_bytes[1 + CARD_DIGEST_BYTES :],
                ),
            )
            continue
        if not _plainly_a_vector(vector):
            try:
                # The common encoding read by the quicker reader; anything else in full.
                if decode_clocks(vector) is None:
                    decode_state_vector(vector)
            except InvalidUpdateError as exc:
                raise RemoteProtocolError(
                    f"the server sent record {record_id} with a bad state vector: {exc}"
                ) from None
        if card_bytes is not None:
            if is_card_reference(card_bytes):
                rows = tuple(grouped.get(record_id, ())) if grouped else ()
                checks[record_id] = ServerCheck(vector, rows, None, card_bytes)
                continue
            if is_held_reference(card_bytes):
                # The card and rows the laptop holds (none of its rows sent).
                card_ref = b"\x00" + card_bytes[1 : 1 + CARD_DIGEST_BYTES]
                rows_ref = card_bytes[1 + CARD_DIGEST_BYTES :]
                checks[record_id] = ServerCheck(vector, (), None, card_ref, rows_ref)
                continue
        rows = tuple(grouped.get(record_id, ())) if grouped else ()
        card = None if card_bytes is None else card_from_wire(record_id, card_bytes)
        checks[record_id] = ServerCheck(vector, rows, card)
    return checks


_LOW_BYTES = bytes(range(0x80))
_tuple_new: Any = tuple.__new__  # cls(*fields) of a named tuple cls, in one C call


def _plainly_a_vector(vector: bytes) -> bool:
    """True for a state vector the full reader (``decode_state_vector``) reads: a run
    of varuints, the first (here one byte) saying how many pairs follow. Checked
    in C, without decoding a number: the count of bytes below 0x80 is the count of
    varuints when the last byte is one of them. Like the full reader it takes a
    varuint of any length (a padded or over-long one is only compared, never stored:
    a vector unlike the laptop's own takes the building path). False: the readers
    decide."""
    return (
        type(vector) is bytes
        and len(vector) > 0
        and vector[0] < 0x80
        and vector[-1] < 0x80
        and len(vector) - len(vector.translate(None, _LOW_BYTES)) == 1 + 2 * vector[0]
    )


@dataclass(slots=True)
class LiveFrames:
    """Live frames a laptop commits together: their entries, last seq (with its feed
    epoch, when the last frame carried one) and checks.

    A frame's checks describe each of its records as its last entry there left
    it; a later frame that touches the record again without a check makes the
    earlier one stale (dropped: the record is then built), and a later check
    replaces it.
    """

    entries: list[tuple[str, bytes]] = field(default_factory=list)
    last_seq: int = 0
    last_epoch: int | None = None
    checks: dict[str, ServerCheck] = field(default_factory=dict)

    @classmethod
    def of(cls, frames: Sequence[LiveUpdate | LiveBatch]) -> LiveFrames:
        """The frames in arrival order; RemoteProtocolError for a check that does not parse."""
        live = cls()
        for frame in frames:
            if isinstance(frame, LiveUpdate):
                items = [(frame.seq, frame.record_id, frame.update)]
                found: dict[str, ServerCheck] = {}
                live.last_epoch = None
            else:
                items = [(i.seq, i.record_id, i.update) for i in frame.items]
                found = from_wire(frame.checked, frame.conflicts) or {}
                live.last_epoch = frame.feed_epoch
            for seq, record_id, update in items:
                live.entries.append((record_id, update))
                live.checks.pop(record_id, None)
                live.last_seq = seq
            live.checks.update(found)
        return live
