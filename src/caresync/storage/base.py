"""What a replica store keeps, and the store protocols, split by role.

:class:`ReplicaStore` is what every replica's store does; :class:`LaptopStore`
adds a laptop's outbox and unsynced work; :class:`ServerStore` adds a
server's change feed, hub outbox, accounts, replicas and sessions.
:class:`Store` is all three, what the SQLite store and its in-memory twin
implement; a server-only store implements :class:`ServerStore` alone.

Theory of operation
-------------------
A store keeps, for each record, its compacted **state** (Yjs update bytes), an
append-only **log** of the updates written since the last compaction, and the
**state vector** of the two merged. Every local write also lands in the
**outbox**, numbered by the replica's own sequence, until the server
acknowledges it; on a server every stored update also gets a number in the
global **change feed**. Open **conflicts** are kept as an index of opaque rows
per record, replaced in the same transaction as the update that changed them.
The **person index** keeps each record's identifying card (``PersonCard``) and
the pairs of records that may be, or were decided to be, one person: written
with the card, in the same transaction, from the cards that share a blocking key.

Each mutating call is one transaction, committed before the call returns
(promise 3 of the design). No call deletes an unacknowledged outbox row
unless the caller proves it was exported first (:meth:`Store.discard_unsynced`).

The two implementations, :class:`~caresync.storage.sqlite.SQLiteStore` and
:class:`~caresync.storage.memory.MemoryStore`, pass one conformance suite
(:mod:`caresync.testing.store_suite`), which any other store can run too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import uuid
from collections.abc import Awaitable, Callable, Collection, Generator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, NamedTuple, Protocol, Self, TypeVar

from caresync.audit.chain import AuditEntry, AuditEvent
from caresync.exceptions import (
    InvalidInputError,
    RefusedUpdateError,
    StorageError,
    UnknownRecordError,
)
from caresync.records.persons import PairState, PersonCard, PersonCards, PersonPair
from caresync.storage._updates import decode_state_vector
from caresync.throttle import ThrottlePolicy

__all__ = [
    "ConflictRow",
    "CopiedRecords",
    "CopyPage",
    "FeedEpoch",
    "FeedItem",
    "HUB_STATES",
    "HubChanges",
    "HubMark",
    "HubOutcome",
    "HubRemoved",
    "HubSummaryRow",
    "HeldState",
    "Identity",
    "IncomingUpdate",
    "LaptopStore",
    "OutboxItem",
    "OutboxSummary",
    "QuarantinedUpdate",
    "RecordClient",
    "ReplicaInfo",
    "SetAsideRecord",
    "MAX_REASON_LENGTH",
    "OUTBOX_SEQ_LIMIT",
    "OpenCounts",
    "ResumeReads",
    "ReplicaStore",
    "Role",
    "ServerStore",
    "SessionRow",
    "Store",
    "StoreOpener",
    "UserAccount",
    "AccountStanding",
    "PASSWORD_MARK_BYTES",
    "new_password_mark",
    "account_standing",
    "card_digest",
    "new_feed_epoch",
    "own_identity",
]

Role = Literal["laptop", "server"]
"""What a replica is: a laptop that works offline, or the clinic's server."""

StrPath = str | os.PathLike[str]

_MAX_ID_LENGTH = 256

OUTBOX_SEQ_LIMIT = 2**62
"""The highest mark an outbox is renumbered after (``renumber_outbox``): half of a
signed 64-bit integer, so that 2**62 edits more still fit. No laptop numbers that far
by writing; a server that says it holds a laptop's pushes beyond it is refused."""


def check_text(value: object, what: str, *, max_length: int = _MAX_ID_LENGTH) -> str:
    """Refuse anything but a non-empty string of at most ``max_length`` characters."""
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise InvalidInputError(
            f"{what} must be a non-empty string of at most {max_length} characters, "
            f"not {value!r:.80}"
        )
    return value


def check_optional_text(value: object, what: str) -> str | None:
    """Like :func:`check_text`, but None is allowed."""
    return None if value is None else check_text(value, what, max_length=2048)


def check_bytes(value: object, what: str) -> bytes:
    """Refuse anything that is not bytes-like; return plain bytes."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidInputError(f"{what} must be bytes, not {type(value).__name__}")
    return bytes(value)


def check_record_ids(value: object) -> list[str]:
    """Refuse anything but a sequence of record ids (a lone string is not one)."""
    if isinstance(value, (str, bytes, bytearray, memoryview)) or not isinstance(value, Collection):
        raise InvalidInputError(
            f"record_ids must be a sequence of record ids, not {type(value).__name__}"
        )
    # The common case in one pass of C-speed checks (a pull asks for a thousand ids,
    # three times); anything else gets the full check, which says what is wrong.
    if all(type(record_id) is str and 0 < len(record_id) <= _MAX_ID_LENGTH for record_id in value):
        return list(value)
    return [check_text(record_id, "record_id") for record_id in value]


def check_count(value: object, what: str, *, minimum: int = 0) -> int:
    """Refuse anything but an int (not a bool) of at least ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidInputError(f"{what} must be an integer >= {minimum}, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this replica is, and which server and organisation it is bound to.

    A laptop stores its identity when it enrols; the store then refuses to
    change its replica id or role, or to move it to another server or
    organisation (promise 4). ``server_url`` may change (a server moves).
    """

    replica_id: str
    role: Role
    server_id: str | None = None
    server_url: str | None = None
    organisation: str | None = None

    def __post_init__(self) -> None:
        check_text(self.replica_id, "replica_id")
        if self.role not in ("laptop", "server"):
            raise InvalidInputError(f"role must be 'laptop' or 'server', not {self.role!r}")
        check_optional_text(self.server_id, "server_id")
        check_optional_text(self.server_url, "server_url")
        check_optional_text(self.organisation, "organisation")


@dataclass(frozen=True, slots=True)
class ConflictRow:
    """One open conflict or finding of a record, as the conflicts package describes it.

    The store does not interpret it: ``payload`` is the conflicts package's JSON.
    """

    id: str
    record_id: str
    kind: str
    subject: str
    severity: str
    payload: bytes

    def __post_init__(self) -> None:
        check_text(self.id, "conflict id")
        check_text(self.record_id, "record_id")
        check_text(self.kind, "conflict kind")
        check_text(self.subject, "conflict subject", max_length=4096)
        check_text(self.severity, "conflict severity")
        if not isinstance(self.payload, bytes):
            raise InvalidInputError("a conflict's payload must be bytes")


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A local update the server has not acknowledged yet, numbered by this replica."""

    seq: int
    record_id: str
    update: bytes
    created_ms: int


@dataclass(frozen=True, slots=True)
class OutboxSummary:
    """The outbox at one moment, read in one query (so its parts agree).

    ``first_seq`` is the lowest unacknowledged seq (None when nothing waits);
    ``last_seq`` the highest seq this replica ever gave out (0 before its
    first local write). Every seq below ``first_seq`` (or up to ``last_seq``
    when nothing waits) was acknowledged by the server.
    """

    pending: int
    oldest_pending_ms: int | None
    first_seq: int | None
    last_seq: int

    @property
    def acknowledged_up_to(self) -> int:
        """The highest seq the server is known here to have acknowledged."""
        return self.last_seq if self.first_seq is None else self.first_seq - 1


MAX_REASON_LENGTH = 4096
"""The longest reason kept for a record set aside (a server's message is at most this)."""


@dataclass(frozen=True, slots=True)
class SetAsideRecord:
    """A record whose outbox entries the server refused, set aside so that the rest of
    the outbox goes on (protocol version 16 on).

    Its entries are kept (never deleted: exported with the unsynced work) and tried
    again at each sync; the record leaves this list once the server took them all.
    ``reason``: the server's words at the last refusal; ``since_ms``: when it was first
    refused; ``entries``: how many of the record's updates wait, set aside or queued."""

    record_id: str
    reason: str
    since_ms: int
    entries: int


@dataclass(frozen=True, slots=True)
class QuarantinedUpdate:
    """An update from the server that this replica could not merge, kept aside.

    A laptop that pulls bytes it cannot merge stores them here (with why) and
    goes on with the rest of the sync, instead of failing every sync after.
    """

    record_id: str
    update: bytes
    reason: str
    received_ms: int = 0
    id: int = 0
    """The store's number for it (0 until stored)."""

    def __post_init__(self) -> None:
        check_text(self.record_id, "record_id")
        check_bytes(self.update, "update")
        check_text(self.reason, "quarantine reason", max_length=4096)


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A server session: who logged in, from which replica, until when.

    The token itself is never stored: ``token_hash`` is its SHA-256 (hex).
    ``replica_id`` is None for a session opened before its replica enrolled;
    enrolling binds it. ``expires_ms`` is absolute: resuming never extends it.
    """

    token_hash: str
    organisation: str
    username: str
    replica_id: str | None
    created_ms: int
    expires_ms: int

    def __post_init__(self) -> None:
        check_text(self.token_hash, "token_hash")
        check_text(self.organisation, "organisation")
        check_text(self.username, "username")
        check_optional_text(self.replica_id, "replica_id")
        check_count(self.created_ms, "created_ms")
        check_count(self.expires_ms, "expires_ms")


class FeedItem(NamedTuple):
    """One update in the server's change feed, numbered in one global sequence.

    A named tuple rather than a frozen dataclass: a pull reads a thousand, each
    built in one C call by the stores."""

    seq: int
    record_id: str
    update: bytes
    organisation: str | None
    origin: str | None = None
    """Who sent the update (a replica id), as given to ``write_remote``; None if not said."""


class FeedEpoch(NamedTuple):
    """A stretch of a server's change feed, begun when a server process started.

    Every feed number from ``first_seq`` until the next epoch's is labelled ``epoch``,
    a random id (numbers before the first epoch are labelled 0). A server restored
    from an older backup begins a new epoch where its restored feed ends, so the
    numbers it gives out again never carry the label a laptop read them under.
    """

    first_seq: int
    epoch: int


def new_feed_epoch() -> int:
    """A fresh random feed epoch id, 1 to 2**63 - 1."""
    return secrets.randbelow(2**63 - 1) + 1


@dataclass(frozen=True, slots=True)
class CopiedRecords:
    """A first copy's batch of records new to a store, for :meth:`ReplicaStore.write_copy`:
    one whole update per record, in parallel lists (no object per record).

    ``state_vectors[i]`` is pycrdt's ``get_state`` of ``updates[i]``, read by the
    caller (which so proved the bytes an update; or read off the items of bytes
    :func:`~caresync.records.spans.adds_clocks` vouches for, which say the same); the
    store plans from it. Checked on construction: equal lengths, ids unique, of the
    right types.
    """

    record_ids: Sequence[str]
    updates: Sequence[bytes]
    state_vectors: Sequence[bytes]
    organisation: str | None
    conflicts: Mapping[str, tuple[ConflictRow, ...]]
    """Each record's conflict rows (a record absent here has none)."""
    persons: Mapping[str, PersonCard]
    """Each record's person card (a record absent here has none). A
    :class:`~caresync.records.persons.PersonCards` (a first copy's cards as read off
    the wire) lets a store key and keep cards without making each one."""
    card_bytes: Mapping[str, bytes] = field(default_factory=dict)
    """For cards of ``persons`` read from bytes (a first copy's, as the server sent
    them), those bytes: ``PersonCard.from_bytes`` of each is its card, which the caller
    promises (it parsed them). A store may keep them as they are instead of writing
    the card out again; a card absent here is written out (``to_bytes``)."""
    pairs: Sequence[tuple[str, str]] | None = None
    """The pairs the sender's person index holds of the batch's records, as (first,
    second) record ids, ``first < second``, ``second`` a record of the batch with a
    card, ``first`` one too or a record stored here with a card (a first copy's, from
    a server of protocol version 12 on). Given, a store compares only these pairs
    (each by :func:`~caresync.records.persons.pair_of` of the two cards it holds)
    instead of finding the cards that share a blocking key with the batch's, unless it
    holds local changes the sender has not acknowledged; None: it finds them."""
    last: bool = False
    """The copy's last batch: what a store set aside for the copy's end is done in its
    transaction (SQLite: the key rows of the batches before, schema version 17)."""
    waiting: Sequence[bool] | None = field(default=None, compare=False)
    """Whether each update holds items that wait for others (``has_pending`` of it and
    its state vector), when the caller knows it (it read the state vector off the
    items: nothing waits); None: the store works it out. What the updates say already,
    so two batches that differ only in it are equal."""

    def __post_init__(self) -> None:
        ids, updates, vectors = self.record_ids, self.updates, self.state_vectors
        if not len(ids) == len(updates) == len(vectors):
            raise InvalidInputError("record_ids, updates and state_vectors differ in length")
        # A few passes of builtins for the common case; check_text names a bad id.
        if ids and (
            {type(record_id) for record_id in ids} != {str}
            or not min(map(len, ids)) > 0
            or max(map(len, ids)) > _MAX_ID_LENGTH
        ):
            for record_id in ids:
                check_text(record_id, "record_id")
        if len(set(ids)) != len(ids):
            raise InvalidInputError("a record named twice in one copied batch")
        if ids and {type(u) for u in (*updates, *vectors)} != {bytes}:
            raise InvalidInputError("updates and state vectors must be bytes")
        waiting = self.waiting
        if waiting is not None and (
            len(waiting) != len(ids) or (ids and {type(w) for w in waiting} != {bool})
        ):
            raise InvalidInputError("waiting must be one True or False per record")
        check_optional_text(self.organisation, "organisation")
        if type(self.last) is not bool:
            raise InvalidInputError("last must be True or False")
        named = set(ids)
        for record_id, rows in self.conflicts.items():
            if record_id not in named:
                raise InvalidInputError(f"conflict rows of record {record_id}, not in the batch")
            check_conflicts(record_id, rows)
        if isinstance(self.persons, PersonCards):
            # Each card was checked as it was read, and that it is its record's; made
            # into a PersonCard only if asked for.
            outside = self.persons.keys() - named
            if outside:
                raise InvalidInputError(f"the person card of {min(outside)}, not in the batch")
        else:
            for record_id, card in self.persons.items():
                if record_id not in named:
                    raise InvalidInputError(f"the person card of {record_id}, not in the batch")
                check_person(record_id, card)
        for record_id, data in self.card_bytes.items():
            if record_id not in self.persons or type(data) is not bytes:
                raise InvalidInputError(
                    f"card bytes of {record_id} must be bytes, of a card in the batch"
                )
        if self.pairs is not None:
            for pair in self.pairs:
                if not (
                    type(pair) is tuple
                    and len(pair) == 2
                    and type(pair[0]) is str
                    and type(pair[1]) is str
                    and pair[1] in self.persons
                    and pair[0] < pair[1]
                    and (pair[0] in self.persons or pair[0] not in named)
                ):
                    raise InvalidInputError(
                        f"person pair {pair!r} must be (first, second) record ids, first < "
                        "second, second a record of the batch with a card, and first one "
                        "too or a record stored before"
                    )


@dataclass(frozen=True, slots=True)
class CopyPage:
    """One page of a first copy as :meth:`ServerStore.copy_page` reads it: plain values,
    ready to be sent, none of them put in the store's record cache."""

    records: list[tuple[str, bytes]]
    """(record id, the record's state merged with its log), in ascending id order."""
    more: bool
    """True if a record comes after the last of ``records`` (in that organisation)."""
    rows: dict[str, list[tuple[str, str, str, str, str, bytes]]]
    """Each record's conflict rows as (record_id, id, kind, subject, severity,
    payload), ordered by id; a record without rows is absent (empty if not asked)."""
    cards: dict[str, bytes]
    """Each record's person card as stored (``PersonCard.to_bytes()``), not parsed; a
    record without one is absent (empty if not asked)."""
    pairs: list[tuple[str, str]] = field(default_factory=list)
    """The person index's pairs whose second (later) record is one of ``records``, as
    (first, second) record ids, ordered by (second, first) (empty if not asked)."""


@dataclass(frozen=True, slots=True)
class IncomingUpdate:
    """An update received from a peer, for :meth:`Store.write_remote` (or a local one,
    for :meth:`Store.write_local_many`).

    ``conflicts=None`` leaves the record's conflict rows as they are; a tuple
    (possibly empty) replaces them.
    """

    record_id: str
    update: bytes
    conflicts: tuple[ConflictRow, ...] | None
    organisation: str | None = None
    person: PersonCard | None = None
    """The record's card for the person index; None leaves the stored card as it is."""
    state_vector: bytes | None = None
    """The update's own state vector, when the caller has read it already (pycrdt's
    ``get_state`` of these very bytes: a first copy's record, checked that way before
    it is stored). A record new to the store is then planned from it, without reading
    the update's header again in Python; for a stored record it is ignored."""
    advances: tuple[bytes, bytes] | None = None
    """(the record's stored state vector, its state vector once this update is stored),
    when the caller has worked the second out from the first already and the update
    adds to it (a laptop's pull, which compared it with the server's check). A stored
    record without waiting items, written by this update alone in its batch, whose
    stored state vector is still exactly the first, is planned with the second
    without reading the update's header again; otherwise it is ignored."""

    def __post_init__(self) -> None:
        record_id, organisation = self.record_id, self.organisation
        # The common case, checked in one expression (one is built per stored update);
        # anything else gets the full checks below, which say what is wrong.
        if (
            type(record_id) is str
            and 0 < len(record_id) <= _MAX_ID_LENGTH
            and type(self.update) is bytes
            and (
                organisation is None
                or (type(organisation) is str and 0 < len(organisation) <= 2048)
            )
            and (self.conflicts is None or self.conflicts == ())
            and self.person is None
            and (self.state_vector is None or type(self.state_vector) is bytes)
            and (
                (advances := self.advances) is None
                or (
                    type(advances) is tuple
                    and len(advances) == 2
                    and type(advances[0]) is bytes
                    and type(advances[1]) is bytes
                )
            )
        ):
            return
        check_text(record_id, "record_id")
        check_bytes(self.update, "update")
        check_optional_text(organisation, "organisation")
        if self.conflicts is not None:
            check_conflicts(record_id, self.conflicts)
        check_person(record_id, self.person)
        if self.state_vector is not None:
            check_bytes(self.state_vector, "state_vector")
        if self.advances is not None:
            advances = self.advances
            if (
                type(advances) is not tuple
                or len(advances) != 2
                or not all(type(vector) is bytes for vector in advances)
            ):
                raise InvalidInputError(
                    "advances must be a tuple of two bytes (the state vector before and after)"
                )


HUB_STATES = ("pending", "held", "sent", "failed")
"""Where a patient's summary stands with the health hub (see :mod:`caresync.hub`)."""


@dataclass(frozen=True, slots=True)
class HubMark:
    """What a push made of one record's health-hub summary, for :meth:`Store.write_remote`.

    ``enabled``: the record asks for its summary to be kept on the hub (else its
    outbox row goes). ``held``: why it must not be sent now (an open conflict),
    or None: it is due.
    """

    enabled: bool
    held: str | None = None

    def __post_init__(self) -> None:
        if type(self.enabled) is not bool:
            raise InvalidInputError(f"HubMark.enabled must be a bool, not {self.enabled!r:.40}")
        check_optional_text(self.held, "HubMark.held")


@dataclass(frozen=True, slots=True)
class HubOutcome:
    """What became of one summary version, for :meth:`Store.record_hub_outcome`.

    ``acknowledged``: the hub took ``version`` (2xx); it is never sent again.
    ``state``, ``reason``, ``attempts`` and ``next_attempt_ms`` replace the
    row's only while its version is still the one attempted: a newer version
    queued meanwhile keeps its own.
    """

    state: str
    reason: str | None
    attempts: int
    next_attempt_ms: int
    acknowledged: bool = False

    def __post_init__(self) -> None:
        if self.state not in HUB_STATES:
            raise InvalidInputError(f"a hub state is one of {HUB_STATES}, not {self.state!r:.40}")
        check_optional_text(self.reason, "HubOutcome.reason")
        check_count(self.attempts, "attempts")
        check_count(self.next_attempt_ms, "next_attempt_ms")
        if type(self.acknowledged) is not bool:
            raise InvalidInputError("HubOutcome.acknowledged must be a bool")


@dataclass(frozen=True, slots=True)
class HubSummaryRow:
    """One row of a server's health-hub outbox: a patient whose summary is kept on the hub.

    ``version`` is the change-feed seq of the record's latest change (a newer
    change, a higher version); ``sent_version`` the latest version the hub
    acknowledged (None: none yet). ``state`` is one of :data:`HUB_STATES`;
    ``reason`` says why it is held or failed, or what the last retried attempt
    met; ``next_attempt_ms`` when a pending one is due (0: now).
    """

    record_id: str
    organisation: str | None
    version: int
    state: str
    reason: str | None
    sent_version: int | None
    attempts: int
    next_attempt_ms: int
    last_attempt_ms: int | None


class HubRemoved(NamedTuple):
    """A patient no longer listed in an organisation's health-hub outbox (its row was
    deleted, or moved to another organisation): ``version`` is the record's version
    when it left."""

    record_id: str
    version: int


@dataclass(frozen=True, slots=True)
class HubChanges:
    """What changed in an organisation's health-hub outbox after a mark, for
    :meth:`ServerStore.hub_changes`.

    Each change to the outbox (a row written by a push, an attempt, an outcome, a row
    deleted or moved to another organisation) is given the next hub mark, in commit
    order. ``rows``: the organisation's rows changed after the mark asked for, as they
    stand, in the order of their changes; ``removed``: the patients that left its list
    after it (none when asked from mark 0: a reader holding nothing has nothing to
    drop). No record is in both. ``mark``: how far the answer covers: the store's
    mark when the answer is complete, else (``more``) the mark of its last change, to
    ask after next. The first change takes mark 1: a store's mark is 0 only while its
    outbox has never held a row (a server then reads no list for a laptop).
    """

    rows: tuple[HubSummaryRow, ...]
    removed: tuple[HubRemoved, ...]
    mark: int
    more: bool = False


@dataclass(frozen=True, slots=True)
class UserAccount:
    """A user of a server's organisation; ``password_hash`` is an argon2id hash."""

    organisation: str
    username: str
    password_hash: str
    created_ms: int
    disabled_ms: int | None = None
    """When the account was disabled (it can no longer log in), or None."""
    display_name: str | None = None
    """How people see the account ("Dr Aïcha Diallo"); None: its username."""
    admin: bool = False
    """True for an administrator: the account may open the server's admin page."""

    @property
    def disabled(self) -> bool:
        """True once the account was disabled."""
        return self.disabled_ms is not None

    @property
    def shown_as(self) -> str:
        """The display name, or the username if the account has none."""
        return self.display_name or self.username


PASSWORD_MARK_BYTES = 16
"""The size of an account's password mark (:class:`AccountStanding`)."""


def new_password_mark() -> bytes:
    """A fresh password mark: random, so it tells nothing of the password it goes with."""
    return secrets.token_bytes(PASSWORD_MARK_BYTES)


@dataclass(frozen=True, slots=True)
class AccountStanding:
    """What laptops are told of an account at each login (protocol version 16 on), so
    that they allow offline logins only as the server would
    (:meth:`ServerStore.account_standings`)."""

    display_name: str
    """How people see the account (its username when it has no display name)."""
    disabled: bool
    """True while the account is disabled."""
    password_mark: bytes
    """An opaque value that changes whenever the account's password is set, and only
    then (not when the same password is hashed again): random, it reveals nothing of
    the password or its hash."""


def account_standing(
    username: object, shown: object, disabled_ms: object, mark: object
) -> AccountStanding:
    """An account's row (username, display name, disabled_ms, password mark) as laptops
    are told of it. A row without a mark (added by a process older than marks, still
    running beside a migrated database) is told 16 zero bytes: stable, so not taken for
    a new password at every login; its next password gets a random one."""
    return AccountStanding(
        str(shown or username),
        disabled_ms is not None,
        bytes(mark) if isinstance(mark, (bytes, bytearray, memoryview)) else bytes(16),
    )


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """A server's bookkeeping of one enrolled replica."""

    replica_id: str
    organisation: str
    enrolled_by: str | None
    enrolled_ms: int
    last_seen_ms: int | None
    revoked_ms: int | None
    pending: int | None = None
    """Changes the replica had not had acknowledged when it last connected (None: not said)."""
    oldest_pending_ms: int | None = None
    """When the oldest of those changes was made (ms since the epoch), or None."""
    device_name: str | None = None
    """The label the replica gave when it enrolled (the laptop's name), if any."""

    @property
    def revoked(self) -> bool:
        """True once the replica was revoked: it is locked at its next contact."""
        return self.revoked_ms is not None


CARD_DIGEST_BYTES = 16
"""Bytes of a card's SHA-256 that :func:`card_digest` keeps (a protocol card reference's)."""


def card_digest(card: bytes) -> bytes:
    """The digest a store keeps of a stored person card (``PersonCard.to_bytes()``): the
    first 16 bytes of its SHA-256, as a protocol card reference carries it after its
    leading zero byte (:func:`caresync.protocol.card_reference`)."""
    return hashlib.sha256(card).digest()[:CARD_DIGEST_BYTES]


class HeldState(NamedTuple):
    """What a pull compares of one stored record (:meth:`ReplicaStore.held_states`)."""

    state_vector: bytes
    pending: bool
    """True if the record holds items waiting for an update not held yet."""
    card_digest: bytes | None
    """:func:`card_digest` of the record's stored card; None when the store does not
    know it without reading the card (read it: ``person_card_bytes``; there may be none)."""


@dataclass(frozen=True, slots=True)
class OpenCounts:
    """The counts a replica's conflict count is made of (:meth:`ReplicaStore.open_counts`),
    read together: each is what its single count returns."""

    conflicts: int
    """Open conflict rows (:meth:`ReplicaStore.count_conflicts`)."""
    pairs: int
    """Stored person pairs (:meth:`ReplicaStore.count_person_pairs`)."""
    linked_pairs: int
    """Of them, those linked (``count_person_pairs(PairState.LINKED)``)."""


@dataclass(frozen=True, slots=True)
class ResumeReads:
    """What a server reads to resume a replica's session, read in one trip to the store
    (:meth:`ServerStore.read_resume`): each field is what the single read of the same
    name returns."""

    session: SessionRow | None
    """The session of that token hash (:meth:`ServerStore.get_session`), or None."""
    replica: ReplicaInfo | None
    """The replica (:meth:`ServerStore.get_replica`)."""
    secret_hash: str | None
    """The replica's secret hash (:meth:`ServerStore.replica_secret_hash`)."""
    account: UserAccount | None
    """The session's account (:meth:`ServerStore.get_user`); None without a session."""
    accounts: dict[str, str] | None
    """The session's organisation's accounts (:meth:`ServerStore.organisation_accounts`);
    None without a session."""
    audit_tail: tuple[int, bytes]
    """The end of the replica's audit chain held here (:meth:`ReplicaStore.audit_tail`)."""
    meta: dict[str, str | None]
    """The meta values asked for, by key (:meth:`ReplicaStore.get_meta`)."""
    standings: dict[str, AccountStanding] | None = None
    """The same accounts' standings (:meth:`ServerStore.account_standings`), read with
    them (``accounts`` holds their display names); None without a session."""


def check_outbox_report(
    pending: object, oldest_pending_ms: object
) -> tuple[int | None, int | None]:
    """Validate what a replica reported of its outbox (both None: it said nothing)."""
    if pending is None:
        if oldest_pending_ms is not None:
            raise InvalidInputError("oldest_pending_ms needs pending")
        return None, None
    count = check_count(pending, "pending")
    oldest = (
        None if oldest_pending_ms is None else check_count(oldest_pending_ms, "oldest_pending_ms")
    )
    if count == 0 and oldest is not None:
        raise InvalidInputError("an empty outbox has no oldest change")
    return count, oldest


def check_write_remote(
    items: Sequence[IncomingUpdate],
    checkpoint: tuple[str, str] | None,
    to_feed: bool,
    origin: str | None,
) -> list[IncomingUpdate]:
    """The arguments of ``write_remote``, checked (both stores); the items as a list."""
    writes = list(items)
    for item in writes:
        if not isinstance(item, IncomingUpdate):
            raise InvalidInputError(f"items must be IncomingUpdate, not {type(item).__name__}")
    if checkpoint is not None:
        if not isinstance(checkpoint, tuple) or len(checkpoint) != 2:
            raise InvalidInputError("checkpoint must be a (key, value) tuple")
        check_text(checkpoint[0], "meta key")
        if not isinstance(checkpoint[1], str):
            raise InvalidInputError("checkpoint values must be strings")
    if origin is not None:
        check_text(origin, "origin")
        if not to_feed:
            raise InvalidInputError(
                "origin is kept with feed rows only: pass to_feed=True, or no origin"
            )
    return writes


def check_hub_marks(hub: object, to_feed: bool) -> dict[str, HubMark]:
    """The ``hub`` argument of ``write_remote``, checked (both stores)."""
    if hub is None:
        return {}
    if not isinstance(hub, Mapping):
        raise InvalidInputError("hub must map record ids to HubMark")
    if hub and not to_feed:
        raise InvalidInputError("hub summaries are kept by the server only: pass to_feed=True")
    marks: dict[str, HubMark] = {}
    for record_id, mark in hub.items():
        if not isinstance(mark, HubMark):
            raise InvalidInputError(f"hub must hold HubMark, not {type(mark).__name__}")
        marks[check_text(record_id, "record_id")] = mark
    return marks


def hub_versions(writes: Sequence[IncomingUpdate], seqs: Sequence[int]) -> dict[str, int]:
    """Each record's newest feed seq in a batch (records the batch added nothing to: absent)."""
    versions: dict[str, int] = {}
    for write, seq in zip(writes, seqs, strict=True):
        if seq > versions.get(write.record_id, 0):
            versions[write.record_id] = seq
    return versions


def check_quarantine(items: object) -> tuple[QuarantinedUpdate, ...]:
    """The updates to keep aside, checked (both stores)."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise InvalidInputError("quarantine must be a sequence of QuarantinedUpdate")
    out = tuple(items)
    for item in out:
        if not isinstance(item, QuarantinedUpdate):
            raise InvalidInputError(
                f"quarantine must hold QuarantinedUpdate, not {type(item).__name__}"
            )
    return out


RecordClient = tuple[str, int]
"""A Yjs client id within one record: ``(record_id, client)``. A client id means something
only within one document, so a server binds it to a replica per record."""


def check_record_clients(value: object) -> list[RecordClient]:
    """``(record_id, client)`` pairs, checked, each once, in a stable order."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Collection):
        raise InvalidInputError("clients must be a collection of (record_id, client) pairs")
    return sorted({_check_record_client(pair) for pair in value})


def _check_record_client(pair: object) -> RecordClient:
    if not isinstance(pair, tuple) or len(pair) != 2:
        raise InvalidInputError(
            f"a Yjs client of a record is (record_id, client), not {pair!r:.60}"
        )
    return check_text(pair[0], "record_id"), check_client_id(pair[1])


def check_client_claims(value: object) -> dict[RecordClient, str]:
    """``(record_id, client)`` pairs and the replica each is bound to, checked."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(
            "claim_clients must map (record_id, Yjs client id) pairs to replica ids"
        )
    return {_check_record_client(k): check_text(r, "replica_id") for k, r in value.items()}


def check_claims_free(
    claims: Mapping[RecordClient, str], owners: Mapping[RecordClient, str]
) -> None:
    """Refuse (RefusedUpdateError, before anything is stored) a claim of a Yjs client id
    that another replica holds already in that record: two processes cannot both bind it."""
    for (record_id, client), replica_id in claims.items():
        owner = owners.get((record_id, client))
        if owner is not None and owner != replica_id:
            raise RefusedUpdateError(
                f"record {record_id}: Yjs client {client} is bound to another replica in "
                "this record; nothing was stored (a document's client id belongs to its "
                "writer; never reuse one)",
                record_id=record_id,
            )


def legacy_owners(
    legacy: Mapping[int, str],
    wanted: Collection[RecordClient],
    vectors: Mapping[str, bytes],
) -> dict[RecordClient, str]:
    """What the global bindings of before per-record ones (``legacy``: client -> replica)
    still say: a pair's legacy owner counts only where its record's stored state vector
    lists the client (``vectors``: record id -> state vector). Every write under a bound
    client was its owner's, so such a record's ops of the client are that owner's; in a
    record that holds none of them, the client is new and the legacy row says nothing."""
    found: dict[RecordClient, str] = {}
    clients: dict[str, set[int]] = {}
    for record_id, client in wanted:
        owner = legacy.get(client)
        vector = vectors.get(record_id)
        if owner is None or vector is None:
            continue
        if record_id not in clients:
            # Any clock, 0 included: a client seen only in a waiting update is listed at 0.
            clients[record_id] = set(decode_state_vector(vector))
        if client in clients[record_id]:
            found[(record_id, client)] = owner
    return found


def check_client_id(value: object) -> int:
    """A Yjs client id: an int in [0, 2**53)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
        raise InvalidInputError(f"a Yjs client id is an int in [0, 2**53), not {value!r:.40}")
    return value


def check_session_selector(
    replica_id: str | None,
    user: tuple[str, str] | None,
    expired_at_ms: int | None,
    token_hash: str | None,
) -> tuple[str, tuple[object, ...]]:
    """Which sessions ``end_sessions`` was asked to end: (kind, values), checked.

    Exactly one way must be given: a replica, a user (organisation, username),
    an expiry time, or one token hash.
    """
    chosen = [x is not None for x in (replica_id, user, expired_at_ms, token_hash)]
    if sum(chosen) != 1:
        raise InvalidInputError(
            "end sessions by exactly one of replica_id, user, expired_at_ms, token_hash"
        )
    if replica_id is not None:
        return "replica_id", (check_text(replica_id, "replica_id"),)
    if user is not None:
        if not isinstance(user, tuple) or len(user) != 2:
            raise InvalidInputError("user must be an (organisation, username) pair")
        return "user", (check_text(user[0], "organisation"), check_text(user[1], "username"))
    if expired_at_ms is not None:
        return "expired_at_ms", (check_count(expired_at_ms, "expired_at_ms"),)
    return "token_hash", (check_text(token_hash, "token_hash"),)


def check_person(record_id: str, person: object) -> PersonCard | None:
    """Refuse a person card that is not one, or is another record's."""
    if person is None:
        return None
    if not isinstance(person, PersonCard):
        raise InvalidInputError(f"person must be a PersonCard, not {type(person).__name__}")
    if person.record_id != record_id:
        raise InvalidInputError(
            f"the person card of record {person.record_id} cannot be stored for {record_id}"
        )
    return person


def check_persons_by_record(value: object) -> dict[str, PersonCard]:
    """Refuse anything but a mapping of record id to that record's person card (or None)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(
            f"persons must be a mapping of record id to PersonCard, not {type(value).__name__}"
        )
    checked: dict[str, PersonCard] = {}
    for record_id, card in value.items():
        person = check_person(check_text(record_id, "record_id"), card)
        if person is None:
            raise InvalidInputError(f"persons names record {record_id} without a card")
        checked[record_id] = person
    return checked


def check_pair_state(value: object) -> PairState | None:
    """A pair state to filter by: a :class:`PairState` (or its value), or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"state must be a PairState, not {type(value).__name__}")
    try:
        return PairState(value)
    except ValueError:
        raise InvalidInputError(
            f"state must be one of {', '.join(s.value for s in PairState)}, not {value!r:.40}"
        ) from None


def check_conflicts(record_id: str, rows: Sequence[ConflictRow]) -> tuple[ConflictRow, ...]:
    """Refuse conflict rows of another record, or two rows with one id."""
    if isinstance(rows, (str, bytes, bytearray, memoryview)) or not isinstance(rows, Iterable):
        raise InvalidInputError(
            f"conflicts of record {record_id} must be a sequence of ConflictRow, "
            f"not {type(rows).__name__}"
        )
    rows = tuple(rows)
    seen: set[str] = set()
    for row in rows:
        if not isinstance(row, ConflictRow):
            raise InvalidInputError(f"conflicts must be ConflictRow, not {type(row).__name__}")
        if row.record_id != record_id:
            raise InvalidInputError(
                f"conflict {row.id} belongs to record {row.record_id!r}, not {record_id!r}"
            )
        if row.id in seen:
            raise InvalidInputError(f"conflict id {row.id} appears twice for record {record_id}")
        seen.add(row.id)
    return rows


def check_conflicts_by_record(value: object) -> dict[str, tuple[ConflictRow, ...]]:
    """Refuse anything but a mapping of record id to that record's conflict rows.

    Each record's rows are checked as :func:`check_conflicts` does (rows of
    another record, or two rows with one id, are refused).
    """
    if not isinstance(value, Mapping):
        raise InvalidInputError(
            "rows_by_record must be a mapping of record id to conflict rows, "
            f"not {type(value).__name__}"
        )
    return {
        check_text(record_id, "record_id"): check_conflicts(record_id, rows)
        for record_id, rows in value.items()
    }


def unknown_records_error(missing: Sequence[str], named: int) -> UnknownRecordError:
    """The error for conflict rows of records that are not stored (nothing was stored)."""
    more = f" (and {len(missing) - 1} more of the {named} named)" if len(missing) > 1 else ""
    return UnknownRecordError(
        f"no record {missing[0]} is stored here{more}; no conflict rows were stored"
    )


def import_conflicts(
    record_ids: Sequence[str], conflicts: object
) -> dict[int, tuple[ConflictRow, ...]]:
    """Which write of an import carries which record's conflict rows (its last one).

    ``record_ids`` names the record of each imported update, in order;
    ``conflicts`` is what ``import_unsynced`` was given. Rows for a record the
    import does not touch are refused: they would be stored for nothing.
    """
    if conflicts is None:
        return {}
    rows = check_conflicts_by_record(conflicts)
    last = {record_id: index for index, record_id in enumerate(record_ids)}
    strangers = sorted(set(rows) - set(last))
    if strangers:
        raise InvalidInputError(
            f"conflict rows were given for record {strangers[0]}, which the import does not "
            "touch; nothing was imported"
        )
    return {last[record_id]: record_rows for record_id, record_rows in rows.items()}


def import_persons(record_ids: Sequence[str], persons: object) -> dict[int, PersonCard]:
    """Which write of an import carries which record's person card (its last one).

    As :func:`import_conflicts`: a card for a record the import does not touch
    is refused.
    """
    cards = check_persons_by_record(persons)
    last = {record_id: index for index, record_id in enumerate(record_ids)}
    strangers = sorted(set(cards) - set(last))
    if strangers:
        raise InvalidInputError(
            f"a person card was given for record {strangers[0]}, which the import does not "
            "touch; nothing was imported"
        )
    return {last[record_id]: card for record_id, card in cards.items()}


class ReplicaStore(Protocol):
    """What every replica's store does, laptop and server alike.

    A replica keeps records (merged from what peers send, :meth:`write_remote`),
    their conflict rows and person cards, its identity and settings, its own
    audit chain, and updates it could not merge. Every method is a coroutine;
    every write is one transaction.

    Errors are caresync's own: :class:`~caresync.exceptions.StorageError` and
    its subclasses for the database, :class:`~caresync.exceptions.InvalidInputError`
    for bad arguments, :class:`~caresync.exceptions.InvalidUpdateError` for
    bytes that are not a Yjs update (nothing is stored then).

    ``write_remote``'s feed arguments (``to_feed``, ``origin``, ``claim_clients``,
    ``hub``) are a server's bookkeeping, read back through :class:`ServerStore`.
    """

    async def close(self) -> None:
        """Close the store; further calls raise StorageError. Closing twice is harmless."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    # identity and settings
    async def get_identity(self) -> Identity | None:
        """This replica's identity, or None before it is set."""
        ...

    async def set_identity(self, identity: Identity) -> None:
        """Store the identity; refuses to rebind a replica (see :class:`Identity`)."""
        ...

    async def get_meta(self, key: str) -> str | None:
        """A stored setting or checkpoint, or None."""
        ...

    async def set_meta(self, key: str, value: str) -> None:
        """Store a setting or checkpoint (committed before returning)."""
        ...

    # writing what peers sent
    async def write_copy(
        self,
        records: CopiedRecords,
        *,
        checkpoint: tuple[str, str] | None = None,
        quarantine: Sequence[QuarantinedUpdate] = (),
        durable: bool = True,
    ) -> None:
        """Commit a first copy's batch of records, with the checkpoint, in one transaction:
        what :meth:`write_remote` commits given one ``IncomingUpdate`` per record (its
        state vector, rows and card given), without planning each record in Python and
        without filling a record cache (a copy would evict what is in use). A record
        that turns out to be stored here already makes the batch go the ordinary way.
        With ``records.pairs`` (the server's), the pairs are those named, each scored
        from the two cards held here, instead of those found by the cards' keys; a store
        may find them anyway (the memory and PostgreSQL stores do): the same index when
        the pairs are all those the sender's index holds of the batch. ``durable`` as
        for :meth:`write_remote`.
        """
        ...

    async def write_remote(
        self,
        items: Sequence[IncomingUpdate],
        *,
        checkpoint: tuple[str, str] | None = None,
        to_feed: bool = False,
        origin: str | None = None,
        quarantine: Sequence[QuarantinedUpdate] = (),
        claim_clients: Mapping[RecordClient, str] | None = None,
        hub: Mapping[str, HubMark] | None = None,
        durable: bool = True,
    ) -> list[int]:
        """Commit a batch of received updates (and the checkpoint) in one transaction.

        With ``to_feed``, ``origin`` (the sending replica's id) is kept with
        each feed row, so that :meth:`feed_since` can leave a replica's own
        updates out of what it is sent back. ``quarantine`` holds updates that
        could not be merged, kept aside in the same transaction.
        ``claim_clients`` binds ``(record_id, client)`` pairs, Yjs client ids within
        one record, to the replica that wrote with them (a server's bookkeeping; a
        pair bound already keeps its owner, and a claim of a pair another replica
        holds, by :meth:`ServerStore.client_owners`' rule, refuses the batch with
        ``RefusedUpdateError``, nothing stored).
        An item's ``person`` replaces its record's card and pairs in the same
        transaction; a batch leaves the pairs that writing its cards one by one
        would leave.

        ``hub`` (with ``to_feed``; the server) gives, per record, what the batch
        made of its health-hub summary: an enabled record's outbox row takes the
        version of its last new feed row, its state (held or pending) and a
        fresh retry count, in the same transaction; a record no longer enabled
        loses its row. A record the batch added nothing to (a resend) is left alone.

        ``durable=False``: committed (visible to every reader, kept through a crash of
        this process) without waiting for the disk; a power cut before the next durable
        commit of this store or :meth:`make_durable` may lose it, whole, with its
        checkpoint (a PostgreSQL store's, a crash of its database server too). A laptop
        writes what it receives from its server so (the server holds it: the next pull
        fetches a lost batch again), never what a person wrote.
        A server stores pushes durably: it acknowledges them.
        """
        ...

    async def set_conflicts(self, record_id: str, conflicts: Sequence[ConflictRow]) -> None:
        """Replace a stored record's conflict rows without writing an update."""
        ...

    async def set_conflicts_many(
        self,
        rows_by_record: Mapping[str, Sequence[ConflictRow]],
        *,
        persons: Mapping[str, PersonCard] | None = None,
    ) -> None:
        """Replace the conflict rows of many stored records in one transaction.

        Everything is checked before anything is written: a record that is not
        stored raises UnknownRecordError naming it, rows of another record or
        two rows with one id raise InvalidInputError; either way no row changes.
        A record not named keeps its rows; one named with no rows has none left.
        ``persons`` (record id → card) replaces those records' cards and their
        pairs in the same transaction (a re-index).
        """
        ...

    # reading records
    async def load(self, record_id: str) -> bytes | None:
        """The record's state merged with its log, as one update; None if unknown."""
        ...

    async def load_many(self, record_ids: Sequence[str]) -> dict[str, bytes]:
        """What :meth:`load` returns, for many records at once; unknown ids are absent.

        One consistent read (one database job), whatever the number of ids.
        """
        ...

    async def state_vector(self, record_id: str) -> bytes | None:
        """The stored state vector of the record, or None if unknown."""
        ...

    async def state_vectors(self, record_ids: Sequence[str]) -> dict[str, tuple[bytes, bool]]:
        """Each stored record's state vector and whether it holds waiting items (updates
        that wait for one not yet held, which no state vector counts); unknown ids are
        absent. One consistent read, without the records' bytes.
        """
        ...

    async def held_states(self, record_ids: Sequence[str]) -> dict[str, HeldState]:
        """What :meth:`state_vectors` reads, with the digest of each record's stored
        person card when the store keeps it beside the state vector (else None: read
        the card); unknown ids are absent. One consistent read, without the records'
        bytes or cards: what a pull compares with the server's checks.
        """
        ...

    async def has_record(self, record_id: str) -> bool:
        """True if the record is stored here."""
        ...

    async def record_ids(
        self, organisation: str | None = None, *, after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Record ids in ascending order, after ``after``; for paging a first copy."""
        ...

    async def count_records(self, organisation: str | None = None) -> int:
        """How many records are stored (in that organisation)."""
        ...

    async def record_organisations(self, record_ids: Sequence[str]) -> dict[str, str | None]:
        """The organisation of each stored record named (unknown ids are absent)."""
        ...

    async def log_length(self, record_id: str) -> int:
        """How many updates the record's log holds since its last compaction."""
        ...

    # conflicts
    async def conflicts(
        self,
        record_id: str | None = None,
        *,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
    ) -> list[ConflictRow]:
        """Open conflict rows, ordered by (record_id, id), from the index."""
        ...

    async def count_conflicts(self, record_id: str | None = None) -> int:
        """How many conflict rows are open (for one record, or in all)."""
        ...

    async def conflict_rows(self, record_ids: Sequence[str]) -> dict[str, tuple[ConflictRow, ...]]:
        """The stored conflict rows of many records at once, each record's ordered by id.

        A record without rows (or not stored at all) is absent from the dict:
        read it with ``rows.get(record_id, ())``.
        """
        ...

    # the person index
    async def person_cards(self, record_ids: Sequence[str]) -> dict[str, PersonCard]:
        """The stored cards of these records (a record without one is absent)."""
        ...

    async def person_card_bytes(self, record_ids: Sequence[str]) -> dict[str, bytes]:
        """The stored cards of these records as ``PersonCard.to_bytes()`` gives them,
        not parsed (a record without one is absent): to compare with a card reference."""
        ...

    async def person_pairs(
        self,
        record_id: str | None = None,
        *,
        state: PairState | None = None,
        organisation: str | None = None,
    ) -> list[PersonPair]:
        """Stored pairs (of one record, in one state, of one organisation's records),
        ordered by their two record ids."""
        ...

    async def person_pairs_ending(self, record_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(first, second) record ids of the stored pairs whose second record is one of
        these, ordered by (second, first): what a first copy sends with a batch."""
        ...

    async def count_person_pairs(self, state: PairState | None = None) -> int:
        """How many pairs are stored (in one state): as many as :meth:`person_pairs` lists.

        A store keeps this count as it writes, where it can (SQLite: schema version 12),
        so a sync's report does not read every pair.
        """
        ...

    async def open_counts(self) -> OpenCounts:
        """The open conflict rows, the stored pairs and the linked pairs, together
        (:class:`OpenCounts`): one trip to the store where it can (SQLite: one job),
        for the conflict count every sync reports."""
        ...

    # maintenance
    async def compact(self, record_id: str) -> int:
        """Merge the record's log into its state; returns how many log updates were folded."""
        ...

    async def check(self) -> list[str]:
        """Problems found by a full consistency check; empty when the store is sound."""
        ...

    # the audit trail (caresync.audit): append-only hash chains
    async def append_audit(
        self,
        events: Sequence[AuditEvent],
        *,
        replica_id: str | None = None,
        seen: tuple[str, int] | None = None,
        durable: bool = True,
    ) -> list[AuditEntry]:
        """Append ``events`` to this replica's own chain (line 0), in one transaction;
        returns the entries as linked. ``replica_id`` names the replica whose own chain
        it is when the store holds no identity (a server given its id on its own).

        ``seen`` = (replica id, ms), on a server's store: in the same transaction, note
        that enrolled replica as seen then, as ``touch_replica`` does (a login is one
        commit, not two); a replica not enrolled here is not noted.

        ``durable=False``: committed (visible to every reader, kept through a crash of
        this process) without waiting for the disk; a power cut before the next durable
        commit of this store or :meth:`make_durable` may lose it, whole. A server
        writes a login's entry so, and makes it durable before it serves any record."""
        ...

    async def make_durable(self) -> None:
        """Return once every commit this store made so far is on disk: at most one
        synced commit when one made with ``durable=False`` waits, nothing otherwise."""
        ...

    async def audit_entries(
        self,
        *,
        replica_id: str | None = None,
        record_id: str | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """Entries in chain order (replica id, line, number): of one replica, about one
        record, after a number, at most ``limit``."""
        ...

    async def audit_tail(self, replica_id: str | None = None) -> tuple[int, bytes]:
        """The last (number, hash) of the replica's newest chain line (this replica's own
        when None); ``(0, GENESIS)`` when there is none."""
        ...

    # quarantine: what write_remote(quarantine=...) kept aside
    async def quarantined(self, record_id: str | None = None) -> list[QuarantinedUpdate]:
        """Updates kept aside because they could not be merged (of one record, or all)."""
        ...

    async def count_quarantined(self) -> int:
        """How many updates are kept aside."""
        ...


class LaptopStore(ReplicaStore, Protocol):
    """A laptop's store: every replica's part, and the outbox of local edits.

    Local edits are numbered in the outbox until the server acknowledges them;
    what waits can be exported, imported on another copy, and discarded only
    against a complete export. What :class:`~caresync.replica.Replica` needs.
    """

    # local writes
    async def write_local_many(
        self, edits: Sequence[IncomingUpdate], *, audit: Sequence[AuditEvent] = ()
    ) -> list[int]:
        """Commit several local edits (each with its conflict rows and person card) in one
        transaction, all or nothing; returns their outbox sequence numbers, in order.
        ``audit`` is appended to this replica's audit chain in the same transaction."""
        ...

    async def write_local(
        self,
        record_id: str,
        update: bytes,
        *,
        conflicts: Sequence[ConflictRow] | None,
        organisation: str | None = None,
        person: PersonCard | None = None,
        audit: Sequence[AuditEvent] = (),
    ) -> int:
        """Commit a local edit to the record's log and the outbox; returns its outbox seq.

        ``person`` (when given) replaces the record's card in the person index,
        and the pairs it makes, in the same transaction; so is ``audit`` appended to
        this replica's audit chain.
        """
        ...

    async def checkpoint(self) -> None:
        """Move what a write-ahead log holds into the database file, if the store has one
        (nothing otherwise). Committed data never depends on it: a laptop calls it when
        a sync is done, so that the next sync's commit need not."""
        ...

    # outbox
    async def pending(self, limit: int = 1000, *, after_seq: int = 0) -> list[OutboxItem]:
        """Unacknowledged local updates with seq > ``after_seq``, oldest first."""
        ...

    async def pending_count(self) -> int:
        """How many local updates wait for the server's acknowledgement (set-aside
        ones too)."""
        ...

    async def oldest_pending_ms(self) -> int | None:
        """When the oldest unacknowledged update was written, or None if none waits."""
        ...

    async def acknowledge(
        self, up_to_seq: int, *, checkpoint: tuple[str, str] | None = None
    ) -> int:
        """Drop outbox rows with seq <= ``up_to_seq``; returns how many were dropped.
        With ``checkpoint``, that meta key is set in the same transaction, and a record
        set aside with no entry left leaves that list (:meth:`set_aside_records`)."""
        ...

    async def outbox_summary(self) -> OutboxSummary:
        """How many updates wait, the oldest's time, and the seqs around them, in one read."""
        ...

    async def renumber_outbox(
        self, above: int, *, checkpoint: tuple[str, str] | None = None
    ) -> int:
        """Give every waiting update a new seq above ``above`` (and above every seq given out).

        For a replica restored from an older copy of itself: the server has
        committed seqs up to ``above`` already, so reused numbers would be
        taken as sent. Order is kept; later writes are numbered after. With
        ``checkpoint``, that meta key is set in the same transaction. Returns
        how many were renumbered.
        """
        ...

    async def queue_again(
        self, items: Sequence[tuple[str, bytes]], *, checkpoint: tuple[str, str] | None = None
    ) -> int:
        """Queue updates the records hold already into the outbox again, ahead of every
        waiting one (those are numbered after them, in their order), and
        (``checkpoint``) set that meta key, in one transaction; the records and their
        logs are not written. Returns how many were queued.

        For a server that lost what it had acknowledged (restored from an older
        backup): what this replica wrote goes to it again (see
        :mod:`caresync.replication.epochs`).
        """
        ...

    async def set_aside(self, record_id: str, reason: str) -> int:
        """The server refused ``record_id``'s updates (``reason``): move its outbox
        entries aside, in order, and list it with the reason, in one transaction.
        Entries set aside are not :meth:`pending`, still counted by :meth:`pending_count`,
        exported by :meth:`export_unsynced`, and never dropped by :meth:`acknowledge`.
        Returns how many entries were moved (0: none waits; the record is still listed)."""
        ...

    async def take_back_set_aside(self) -> int:
        """Queue every set-aside entry at the end of the outbox again, each record's with
        its later entries after it, in order, in one transaction (to be tried again);
        the records stay listed until :meth:`acknowledge` takes their last entry.
        Returns how many entries were queued."""
        ...

    async def set_aside_records(self) -> list[SetAsideRecord]:
        """The records set aside, by record id."""
        ...

    # unsynced work
    async def export_unsynced(self, path: StrPath) -> int:
        """Write every pending update (set-aside ones too) to a new file at ``path``;
        returns how many."""
        ...

    async def import_unsynced(
        self,
        path: StrPath,
        *,
        conflicts: Mapping[str, Sequence[ConflictRow]] | None = None,
        persons: Mapping[str, PersonCard] | None = None,
        audit: Sequence[AuditEvent] = (),
    ) -> int:
        """Re-apply the updates of an export file as local writes; returns how many.

        All or nothing, in one transaction. ``conflicts`` gives the rows of
        records the import touches, replaced in that same transaction (a
        record not named keeps its rows), and ``persons`` their person cards
        (a record not named keeps its card); naming a record the file does not
        touch raises InvalidInputError, and nothing is stored.
        """
        ...

    async def discard_unsynced(self, *, exported_to: StrPath) -> int:
        """Empty the outbox and what is set aside, only if ``exported_to`` holds every
        pending update."""
        ...


class ServerStore(ReplicaStore, Protocol):
    """A server's store: every replica's part, and what only the clinic's server keeps.

    The change feed (every new update numbered in one global sequence), the
    Yjs client ids each replica wrote with, the health-hub outbox, the audit
    chains replicas send, and the accounts, enrolled replicas and sessions.
    What :class:`~caresync.server.SyncServer` needs; a server-only store
    (PostgreSQL) implements this and nothing of :class:`LaptopStore`.
    """

    # change feed
    async def feed_since(
        self,
        after_seq: int,
        *,
        limit: int,
        organisation: str | None = None,
        exclude_origin: str | None = None,
    ) -> list[FeedItem]:
        """Feed items with seq > ``after_seq``, in order, at most ``limit``.

        ``exclude_origin`` leaves out the items written with that origin (a
        replica's own updates); they still count as passed: a caller that
        checkpoints at the feed head, or at the last item of a full page,
        moves past them.
        """
        ...

    async def feed_head(self) -> int:
        """The highest feed seq given out (0 when the feed is empty)."""
        ...

    async def feed_epochs(self) -> list[FeedEpoch]:
        """Every feed epoch begun, by ascending ``first_seq``."""
        ...

    async def begin_feed_epoch(self, epoch: int) -> FeedEpoch:
        """Label the feed numbers from the head + 1 on with ``epoch`` (a random id,
        1 to 2**63 - 1), committed before returning; returns the new epoch.

        A server calls it once when it starts. Taken in the order of feed writes
        (under the feed lock of a store that processes share): no number given out
        already changes its epoch. On an empty feed it replaces the epoch begun at 1.
        """
        ...

    async def copy_page(
        self,
        organisation: str | None,
        *,
        after: str | None,
        limit: int,
        rows: bool,
        persons: bool,
        pairs: bool = False,
    ) -> CopyPage:
        """One page of a first copy, in one consistent read: the first ``limit`` records
        after ``after`` (in that organisation), what :meth:`load_many` returns of each,
        with their conflict rows (``rows``), person cards (``persons``) and the person
        pairs whose later record is one of them (``pairs``) as stored.

        A store with a record cache should neither read nor fill it here (the SQLite
        store does not): a copy goes through every record once, and would evict the
        records live replicas use.
        """
        ...

    # several server processes on one database
    @property
    def shared(self) -> bool:
        """True when other processes may commit to this database at the same time
        (PostgreSQL): a server then follows the feed for what they commit
        (:meth:`wait_for_feed`). False for a database one process writes (SQLite)."""
        ...

    def exclusive_commits(self) -> AbstractAsyncContextManager[None]:
        """Held by a server from reading the records a push touches to its commit:
        while it is held, no other holder (in this process or another) commits.

        Inside it, a feed read from the last seq seen names every record another
        process changed since; a store shared by processes refuses a record write
        (StorageError, nothing stored) if the feed moved past what it saw when the
        section began, so a stale in-memory record is never committed on. A store
        one process writes holds a process-local lock.
        """
        ...

    async def wait_for_feed(self, timeout_s: float) -> bool:
        """Wait until a feed entry may have been committed (by this process or
        another), at most ``timeout_s`` seconds; True if woken by such a signal.
        A signal may be lost (a dropped connection): callers read the feed from
        their last seq after every return, woken or not."""
        ...

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless a value is stored already; returns the
        stored value. Race-free: processes starting together all get the first one."""
        ...

    # Yjs client owners
    async def client_owners(self, clients: Collection[RecordClient]) -> dict[RecordClient, str]:
        """The replica each ``(record_id, client)`` pair is bound to (unbound ones are absent).

        A pair's own binding (``claim_clients``); failing that, for a database of before
        per-record bindings, the client's old deployment-wide binding, but only where the
        record's stored state vector lists the client (its ops there were that owner's).
        A client a record holds nothing of is unbound in it, whatever other records say.
        """
        ...

    # health-hub outbox
    async def hub_summaries(self, organisation: str | None = None) -> list[HubSummaryRow]:
        """The health-hub outbox (of that organisation's records), by record id."""
        ...

    async def hub_summary(self, record_id: str) -> HubSummaryRow | None:
        """The record's health-hub outbox row (None: it has none); reads that row only."""
        ...

    async def hub_due(
        self,
        now_ms: int,
        limit: int,
        *,
        after: tuple[int, str] | None = None,
        held: bool = True,
    ) -> list[HubSummaryRow]:
        """The summaries the hub sender attempts at ``now_ms``: ``pending`` ones whose
        ``next_attempt_ms`` has come and (``held``) every ``held`` one, by
        (``next_attempt_ms``, record id), at most ``limit``, after the key ``after`` (the
        last row's ``(next_attempt_ms, record_id)`` of the page before; None: from the
        start). ``held=False``: the pending ones only (a sender that looks at a held row
        again only when something that could release it changed).

        The SQL stores read through an index on (state, next_attempt_ms, record_id)
        only the rows they return, so a sender walks a huge outbox in bounded pages.
        """
        ...

    async def hub_next_attempt_ms(self) -> int | None:
        """The earliest ``next_attempt_ms`` of a ``pending`` summary (None: none is
        pending); one index entry read."""
        ...

    async def hub_state_counts(self, organisation: str | None = None) -> dict[str, int]:
        """How many outbox rows (of that organisation's records) are in each of
        :data:`HUB_STATES` (every state a key, 0 when none). The SQL stores count the
        whole outbox from an index on the state (SQLite never reads a row for it), one
        organisation's from its rows only."""
        ...

    async def hub_changes(self, organisation: str, after: int, limit: int) -> HubChanges:
        """What changed in that organisation's health-hub outbox after the hub mark
        ``after``, in one consistent read: at most ``limit`` changes, in the order they
        were committed (see :class:`HubChanges`). Reads only the changed rows (an
        index on the change), so a caller in step reads none.

        A change numbered below a mark the answer gives is never committed later:
        with several processes writing, hub changes take their numbers in commit
        order. ``after`` above the store's mark (the store went back to an older
        copy) gives nothing and the store's mark: the caller compares.
        """
        ...

    async def record_hub_attempt(self, record_id: str, attempted_ms: int) -> None:
        """Note that a summary of the record is being sent now (``last_attempt_ms``)."""
        ...

    def hub_sending(self, record_id: str) -> AbstractAsyncContextManager[bool]:
        """A hub sender holds this while it sends one record's summary (its snapshot, the
        request and the outcome): True inside if no other holder, in this process or in
        another on the same database, is sending that record now; False if one is (leave
        the row to it: it finds a newer version due once its own is answered). So two
        requests for one patient are never in flight at once, and an older summary never
        reaches the hub after a newer one. A process that dies lets go with it.
        """
        ...

    async def record_hub_outcome(self, record_id: str, version: int, outcome: HubOutcome) -> bool:
        """Store what became of sending ``version`` of the record's summary.

        Returns False, changing only ``sent_version`` when acknowledged, if the
        row now holds a newer version (or no row is left): see :class:`HubOutcome`.
        """
        ...

    # audit chains other replicas sent
    async def receive_audit(self, replica_id: str, entries: Sequence[AuditEntry]) -> int:
        """Keep entries ``replica_id`` sent (a server's job), in one transaction; returns
        the number of the last. Entries held already are skipped; the rest continue a
        line of the replica's chain, or start a new line from an entry held (a copy
        restored from an older one). AuditError, with nothing kept, otherwise."""
        ...

    # accounts
    async def add_user(
        self,
        organisation: str,
        username: str,
        password_hash: str,
        *,
        display_name: str | None = None,
        admin: bool = False,
    ) -> None:
        """Add a user to an organisation; refuses a username that exists there.

        ``admin`` makes the account an administrator (:attr:`UserAccount.admin`).
        """
        ...

    async def set_display_name(
        self, organisation: str, username: str, display_name: str | None
    ) -> None:
        """Set (or, with None, clear) how people see an account."""
        ...

    async def organisation_accounts(self, organisation: str) -> dict[str, str]:
        """Every account of the organisation, disabled ones too: username → shown name.

        A laptop shows these names for the authors in its conflicts.
        """
        ...

    async def account_standings(self, organisation: str) -> dict[str, AccountStanding]:
        """Every account of the organisation (disabled ones too), by username: its shown
        name, whether it is disabled, and its password mark (see
        :class:`AccountStanding`). What a login tells a laptop of version 16 on."""
        ...

    async def replica_accounts(self, replica_ids: Collection[str]) -> dict[str, frozenset[str]]:
        """The accounts that have logged in on each replica (by a password login bound
        to it, or by enrolling it); a replica no one logged in on is left out."""
        ...

    async def get_user(self, organisation: str, username: str) -> UserAccount | None:
        """A user of the organisation, or None."""
        ...

    async def set_password_hash(
        self, organisation: str, username: str, password_hash: str, *, end_sessions: bool = True
    ) -> None:
        """Replace a user's password hash; a new password ends the user's sessions and
        gives the account a new password mark (:class:`AccountStanding`).

        ``end_sessions=False`` keeps both (a rehash of the same password).
        """
        ...

    async def set_user_disabled(self, organisation: str, username: str, disabled: bool) -> None:
        """Disable an account (its sessions end, it cannot log in) or enable it again."""
        ...

    async def set_user_admin(self, organisation: str, username: str, admin: bool) -> None:
        """Grant (True) or revoke (False) an account's administrator role.

        InvalidInputError for an unknown user or an ``admin`` that is not a bool.
        Sessions are left as they are: the role gates the admin page only, which
        checks it at every request.
        """
        ...

    # replicas
    async def enrol_replica(
        self,
        replica_id: str,
        organisation: str,
        *,
        enrolled_by: str | None = None,
        device_name: str | None = None,
        secret_hash: str | None = None,
        audit: Sequence[AuditEvent] = (),
        audit_as: str | None = None,
    ) -> ReplicaInfo:
        """Record that a replica enrolled to this server; refuses a known replica id.

        ``secret_hash`` is the SHA-256 (hex) of the secret the replica proves
        at every login; the secret itself is never stored here. ``audit`` is appended
        to this store's own audit chain (``audit_as``: the chain of that replica id,
        for a store that holds no identity of its own) in the same transaction.
        """
        ...

    async def replica_secret_hash(self, replica_id: str) -> str | None:
        """The hash of an enrolled replica's secret (None: unknown, or enrolled without one)."""
        ...

    async def set_replica_secret_hash(self, replica_id: str, secret_hash: str) -> None:
        """Give a replica enrolled without a secret its first one (refuses to replace one)."""
        ...

    async def reissue_replica_secret(
        self,
        replica_id: str,
        *,
        organisation: str,
        enrolled_by: str,
        secret_hash: str,
        audit: Sequence[AuditEvent] = (),
        audit_as: str | None = None,
    ) -> bool:
        """Give an enrolled replica that was never used a new secret, in place of one its
        laptop never received (the answer to its enrolment was lost on the way).

        Only a replica of ``organisation``, enrolled by ``enrolled_by``, not revoked and
        never seen (no outbox report, so no sync, since its enrolment) takes it; its
        sessions end, and ``audit`` is appended to this store's own chain, in the same
        transaction. Returns False, changing nothing, for any other replica.
        """
        ...

    async def get_replica(self, replica_id: str) -> ReplicaInfo | None:
        """An enrolled replica, or None."""
        ...

    async def replicas(self, organisation: str | None = None) -> list[ReplicaInfo]:
        """Every enrolled replica (of that organisation), by id."""
        ...

    async def touch_replica(
        self,
        replica_id: str,
        seen_ms: int | None = None,
        *,
        pending: int | None = None,
        oldest_pending_ms: int | None = None,
    ) -> None:
        """Note that the replica was seen now (or at ``seen_ms``).

        With ``pending``, also what the replica reported of its outbox: how many
        changes wait for an acknowledgement and when the oldest was made.
        """
        ...

    async def revoke_replica(
        self, replica_id: str, *, audit: Sequence[AuditEvent] = (), audit_as: str | None = None
    ) -> bool:
        """Revoke a replica: it is locked at its next contact, its sessions end.

        Its unsynced work is its own (it keeps it). ``audit`` is appended to this
        store's own chain in the same transaction, only when this call revoked it;
        returns whether it did (False: revoked already, nothing changed).
        """
        ...

    # sessions
    async def add_session(self, session: SessionRow) -> None:
        """Store a new session (refuses a token hash already stored).

        A session of a replica also records, in the same transaction, that its
        account logged in on that replica (see :meth:`replica_accounts`).
        """
        ...

    async def get_session(self, token_hash: str) -> SessionRow | None:
        """The session with that token hash, or None."""
        ...

    async def read_resume(
        self, token_hash: str, replica_id: str, *, meta_keys: Sequence[str] = ()
    ) -> ResumeReads:
        """Everything a resumed login reads, together (see :class:`ResumeReads`): the
        session of ``token_hash``, the replica ``replica_id``, its secret hash and audit tail, the
        session's account and its organisation's accounts (names and standings), and
        ``meta_keys``. Each
        value is what its single read returns; a store may read them in one trip
        (SQLite: one job on its thread), which a login waits for.
        """
        ...

    async def bind_session(self, token_hash: str, replica_id: str) -> None:
        """Bind a session opened before enrolment to the replica it enrolled
        (recording that its account logged in on that replica)."""
        ...

    async def end_sessions(
        self,
        *,
        replica_id: str | None = None,
        user: tuple[str, str] | None = None,
        expired_at_ms: int | None = None,
        token_hash: str | None = None,
    ) -> int:
        """Delete the sessions of a replica, of a user (organisation, username), those
        expired at ``expired_at_ms``, or one by token hash; returns how many went."""
        ...

    async def accounts_generation(self) -> int:
        """A number that grows whenever a session ends early (revocation, a new
        password, a disabled account): a running server re-checks its connections
        when it changes, even if another process made the change."""
        ...

    # failed logins (caresync.throttle), shared by every process of a shared store
    async def login_wait_ms(self, keys: Sequence[str], now_ms: int, forget_after_ms: int) -> int:
        """Milliseconds until a login counted against ``keys`` may be tried (0: now):
        the latest lock of those keys, not counting a key whose last failure is
        ``forget_after_ms`` or more before ``now_ms`` (milliseconds of the server's
        clock: the wall clock for a store shared by processes).

        Keys are :func:`caresync.throttle.key_text` strings (InvalidInputError for
        another value). A store shared by processes reads what all of them counted."""
        ...

    async def login_failed(
        self, keys: Sequence[tuple[str, int]], now_ms: int, policy: ThrottlePolicy
    ) -> None:
        """Count a failed login at ``now_ms`` against each ``(key, free)``, atomically
        per key (two processes failing at once both count): a key idle for
        ``policy.forget_after_ms`` starts again from none; a key past its ``free``
        failures is locked until ``now_ms`` plus :func:`caresync.throttle.lock_ms` of
        its failures past them, never less than it was locked before. Keys idle past
        ``forget_after_ms`` are deleted (a few at each call), and at most
        ``policy.max_tracked`` keys are kept, the least recently failed going first.
        Each key given once (InvalidInputError)."""
        ...

    async def login_claim(self, key: str, free: int, now_ms: int, policy: ThrottlePolicy) -> int:
        """Count a failed login against ``key`` as ``login_failed`` does, unless the key
        is locked at ``now_ms``: 0 when counted, else the milliseconds until it may be
        tried (nothing counted). Atomic: of claims at the same instant, in any process,
        only those a key allows one after another are counted. A server claims an
        account's attempt before checking its password (a right one then clears it), so
        concurrent guesses get no more checks than guesses one after another."""
        ...

    async def login_succeeded(self, key: str) -> None:
        """Forget the failures of ``key`` (an account's, at its right password)."""
        ...


class Store(LaptopStore, ServerStore, Protocol):
    """Every role's part in one: what :class:`~caresync.storage.sqlite.SQLiteStore` and
    :class:`~caresync.storage.memory.MemoryStore` implement, one database serving as a
    laptop's or a server's. Code that needs one role's part asks for that protocol."""


class _Closable(Protocol):
    async def close(self) -> None: ...


S = TypeVar("S", bound=_Closable)


class StoreOpener(Awaitable[S]):
    """What ``open()`` returns: await it for a store, or use it as ``async with``.

    Like ``aiosqlite.connect``: ``store = await SQLiteStore.open(path)`` or
    ``async with SQLiteStore.open(path) as store: ...`` (closed on exit).
    """

    __slots__ = ("_factory", "_store")

    def __init__(self, factory: Callable[[], Awaitable[S]]) -> None:
        self._factory = factory
        self._store: S | None = None

    def __await__(self) -> Generator[object, None, S]:
        return self._factory().__await__()

    async def __aenter__(self) -> S:
        self._store = await self._factory()
        return self._store

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        store = self._store
        self._store = None
        if store is not None:
            await store.close()


async def own_identity(
    store: ReplicaStore, role: Role, *, id_prefix: str, where: object
) -> Identity:
    """The identity of the replica this database belongs to, made on its first open.

    A new database gets a replica id ``<id_prefix>-<uuid4>`` and ``role``. A
    database of the other role is refused with StorageError naming ``where``.
    """
    identity = await store.get_identity()
    if identity is None:
        made = Identity(replica_id=f"{id_prefix}-{uuid.uuid4()}", role=role)
        # Another process (a second server on one database) may store its own first;
        # the store refuses to rebind: take that one, so both are one server.
        with contextlib.suppress(InvalidInputError):
            await store.set_identity(made)
        identity = await store.get_identity()
        if identity is None:
            raise StorageError(f"{where}: the identity just stored cannot be read back")
    if identity.role != role:
        raise StorageError(f"{where} is a {identity.role}'s database, not a {role}'s")
    return identity
