"""What a server admits into a record from an untrusted peer.

Theory of operation
-------------------
A record is a Yjs document, and Yjs applies any valid update: one that
deletes or overwrites another clinician's revisions, writes outside the record
model, or carries a date centuries ahead. A server relays what it stores to
every replica, so it must only store what an honest caresync writer could have
written. Honest writers are narrow: revisions are only ever added, each under a
fresh random key of the root map ``revisions`` as one JSON string, and
``meta["id"]`` is written once, when the record is created. So every honest
update is a *simple* update (:mod:`caresync.records.spans`): one client's run
of map entries under new keys, each one string, deleting nothing.

:class:`Admission` holds what the server knows of one record (the clocks of
its state vector, which revision keys exist, its stored id) and checks each
update against it, in order; :meth:`Admission.admit` returns the new
revisions, or raises :class:`~caresync.exceptions.RefusedUpdateError` with a
message for the developer of the client that sent it. The rules:

* size: at most ``max_update_bytes``, at most ``max_revisions`` items; the
  empty update only for a record the server holds something of (a record of
  nothing, listed everywhere, is not made);
* shape: a simple update, each item a map entry of ``revisions`` or ``meta``
  holding exactly one string;
* order: the part below the server's clock of the update's client is held
  already and skipped (a resent update admits nothing, harmlessly); an update
  that starts above it would wait for changes the server does not have;
* keys: a revision key is new (to the record and to the update), printable,
  1 to 128 characters; ``meta`` holds only ``id``, written once, equal to the
  record's id;
* revisions: well-formed (``decode_revision``), within
  ``max_revision_length``; the path and value checked as a laptop checks a
  write (``Schema.check_write``: at a count path, such as ``stock/...``, the
  value is ``{"delta": <int>, "count": <int>}`` or a bare integer, nothing
  else), caresync's own ``_ack/<finding-id>`` and
  ``<collection>/<entry-id>/_created`` with their own rules; author and
  replica names as ``Record`` requires; parent and ``seen`` ids at most 128
  characters; the clock counter in ``[0, 2**31)``; the wall time not before
  1970 nor more than ``max_clock_ahead_ms`` past the server's time.

It reads the bytes itself, without pycrdt: nothing is applied to a document
before it is admitted. Pure: no I/O (the time comes from ``now_ms``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn

from caresync.exceptions import (
    InvalidInputError,
    InvalidPathError,
    InvalidValueError,
    RefusedUpdateError,
)
from caresync.records.clock import COUNTER_LIMIT, MAX_CLOCK_AHEAD_MS, Timestamp
from caresync.records.maps import read_value
from caresync.records.record import (
    _CREATED_FIELD,
    _MAX_AUTHOR_LENGTH,
    ACK_PREFIX,
    Record,
)
from caresync.records.revision import Revision, decode_revision
from caresync.records.schema import DEFAULT_SCHEMA, Schema
from caresync.records.spans import Client, decode_clocks, simple_items, why_not_simple
from caresync.records.values import MAX_VALUE_BYTES, check_path, check_value

__all__ = ["MAX_ID_LENGTH", "Admission", "AdmissionLimits"]

MAX_ID_LENGTH = 128
"""Longest revision key, parent id or ``seen`` id admitted.

caresync's ids are 16 hex characters (64 random bits); 128 leaves room for
any other client's id scheme (a UUID is 36) while keeping an id from
carrying data.
"""

_REVISIONS = "revisions"
_META = "meta"
_META_ID = "id"
_EMPTY_UPDATE = b"\x00\x00"
_SHAPE = "an update may only add new entries to the revisions map (and meta/id once)"
_MAX_PROBLEM = 2000


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _nothing(_key: str) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """How much a server admits in one update. The defaults never refuse an honest write.

    The limit on one value is not here: it is the record model's own,
    ``records.values.MAX_VALUE_BYTES`` (256 KiB), checked as a laptop checks it.
    """

    max_update_bytes: int = 16 * 1024 * 1024
    """Bytes of one update: 16 MiB, the sync protocol's default frame size.

    A larger update could not travel in one default frame anyway; the bound
    keeps the cost of checking one update (reading, decoding every revision)
    to a fraction of a second.
    """

    max_revisions: int = 10_000
    """Items (revisions, and meta/id) in one update.

    One edit makes one revision, ``add_entry`` one per field plus one; an
    application's ``Record.batch`` of thousands of writes still fits. Without a
    bound, 16 MiB of tiny items would be a million revisions to check.
    """

    max_revision_length: int = 2 * 1024 * 1024
    """Characters of one stored revision (its JSON string): 2 Mi.

    A value may be 256 KiB, but a string value is measured before JSON escapes
    it, and a control character takes six characters escaped (``\\u0001``):
    1.5 Mi at worst. The rest leaves room for the path, names, parents and
    ``seen`` (the heads of every other field of an entry, some thousands).
    """

    max_clock_ahead_ms: int = MAX_CLOCK_AHEAD_MS
    """How far past the server's time a revision may be dated: 24 hours.

    The same bound as ``records.clock.MAX_CLOCK_AHEAD_MS``, beyond which a
    replica's clock ignores a time it reads: a laptop a few hours off (a wrong
    time zone is at most 14) is admitted; a date days or centuries ahead, which
    would sort first for good and break display, is not.
    """

    def __post_init__(self) -> None:
        for name in (
            "max_update_bytes",
            "max_revisions",
            "max_revision_length",
            "max_clock_ahead_ms",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")


class Admission:
    """What a server admits into one record from an untrusted peer (see module doc).

    ``clocks`` is the record's state vector as ``{client: clock}`` (client ids
    as :func:`~caresync.records.spans.decode_clocks` gives them);
    ``has_revision(key)`` says whether the record's ``revisions`` map holds a
    key (well-formed or not); ``meta_id`` is the record's stored id, or None
    if it has none yet. A new record: ``Admission(record_id)``.
    :meth:`from_state_vector` and :meth:`for_record` build one from a stored
    state vector or a loaded record.

    Each :meth:`admit` adds what it admitted to the known state, so the updates
    of one record in one batch are admitted in order, each seeing the ones
    before it.
    """

    def __init__(
        self,
        record_id: str,
        *,
        clocks: Mapping[Client, int] | None = None,
        has_revision: Callable[[str], bool] = _nothing,
        meta_id: str | None = None,
        schema: Schema = DEFAULT_SCHEMA,
        now_ms: Callable[[], int] = _wall_ms,
        limits: AdmissionLimits | None = None,
    ) -> None:
        if not isinstance(record_id, str) or not record_id:
            raise InvalidInputError("record_id must be a non-empty string")
        self.record_id = record_id
        self.schema = schema
        self.limits = limits if limits is not None else AdmissionLimits()
        self._clocks: dict[Client, int] = dict(clocks or {})
        self._has_revision = has_revision
        self._meta_id = meta_id
        self._now_ms = now_ms
        self._added: set[str] = set()
        self._meta_in_update: set[str] = set()
        self.last_writer: int | None = None
        """The Yjs client id whose new changes the last :meth:`admit` took (None: nothing new).

        A server binds each Yjs client id to the replica that first wrote with it,
        so nobody else can write under it: otherwise a peer that copied a laptop's
        client id and its next clock would make that laptop's next edit look
        "held already", acknowledged and never stored."""
        self.last_client: int | None = None
        """The Yjs client id of the update the last successful :meth:`admit` read,
        whether it took anything or found it all held already.

        A replica sends only updates of its own clients, so one that sends another's
        client's changes, even ones held already, is refused, not acknowledged: a
        laptop whose random client id is another's within one record would otherwise
        see its edit, at clocks the other took first, acknowledged and never stored."""

    @classmethod
    def from_state_vector(
        cls,
        record_id: str,
        state_vector: bytes,
        *,
        has_revision: Callable[[str], bool] = _nothing,
        meta_id: str | None = None,
        schema: Schema = DEFAULT_SCHEMA,
        now_ms: Callable[[], int] = _wall_ms,
        limits: AdmissionLimits | None = None,
    ) -> Admission:
        """An admission for a record whose Yjs state vector is ``state_vector``."""
        clocks = decode_clocks(state_vector) if type(state_vector) is bytes else None
        if clocks is None:
            raise InvalidInputError(
                f"record {record_id}: the state vector is not one caresync can read "
                "(a Yjs v1 state vector, clients below 2**53, clocks below 2**31)"
            )
        return cls(
            record_id,
            clocks=clocks,
            has_revision=has_revision,
            meta_id=meta_id,
            schema=schema,
            now_ms=now_ms,
            limits=limits,
        )

    @classmethod
    def for_record(
        cls,
        record: Record,
        *,
        now_ms: Callable[[], int] = _wall_ms,
        limits: AdmissionLimits | None = None,
    ) -> Admission:
        """An admission for what ``record`` holds now, with the record's schema.

        Later changes of ``record`` are not seen (but what this admission admits
        is, whether or not it is applied to the record).
        """
        invalid = record.invalid_revision_ids

        def has_revision(key: str) -> bool:
            return key in invalid or record.revision(key) is not None

        # The stored id: Record has no public reader of it (check_id only
        # compares), so this reads its meta map as Record.check_id does.
        stored = read_value(record._doc, record._meta, _META_ID)
        return cls.from_state_vector(
            record.record_id,
            record.state_vector(),
            has_revision=has_revision,
            meta_id=stored if isinstance(stored, str) else None,
            schema=record.schema,
            now_ms=now_ms,
            limits=limits,
        )

    @property
    def clocks(self) -> dict[Client, int]:
        """The known state vector as ``{client: clock}`` (a copy)."""
        return dict(self._clocks)

    @property
    def meta_id(self) -> str | None:
        """The record's id as stored in ``meta``, or None if it has none yet."""
        return self._meta_id

    def admit(self, update: bytes) -> list[Revision]:
        """The new revisions of ``update``, after checking it; raises RefusedUpdateError.

        Returns ``[]`` for an update the record holds already (resent). On
        success the known state moves past the update; on refusal nothing
        changes.
        """
        if not isinstance(update, (bytes, bytearray, memoryview)):
            self._refuse(f"an update must be bytes, not {type(update).__name__}")
        update = bytes(update)
        limits = self.limits
        if len(update) > limits.max_update_bytes:
            self._refuse(
                f"the update is {len(update)} bytes; the limit is {limits.max_update_bytes}: "
                "send large changes as several updates"
            )
        if update == _EMPTY_UPDATE:
            if not self._clocks and self._meta_id is None:
                # Stored, it would make a record of nothing (no id, no revision, no
                # author to check) that every replica lists; caresync's first update
                # of a record writes its id, and no laptop queues an empty one.
                self._refuse(
                    "the update is empty, and the server holds nothing of this record: "
                    "a record's first update writes something (caresync's writes meta/id)"
                )
            return []
        read = simple_items(update)
        if read is None:
            self._refuse(f"{_SHAPE}, but {why_not_simple(update)}")
        if len(read.items) > limits.max_revisions:
            self._refuse(
                f"the update holds {len(read.items)} entries; the limit is "
                f"{limits.max_revisions}: send large changes as several updates"
            )
        entries: list[tuple[int, str, str, str]] = []  # clock, root, key, stored string
        for item in read.items:
            if item.root != _REVISIONS and item.root != _META:
                self._refuse(
                    f"{_SHAPE}, but it writes into the root type {item.root[:200]!r} "
                    "(a record has only the maps 'revisions' and 'meta')"
                )
            if item.key is None:
                self._refuse(
                    f"{_SHAPE}, but it writes a list element into {item.root!r}, not a map entry"
                )
            if len(item.strings) != 1:
                self._refuse(
                    f"{_SHAPE}, but its entry {item.key[:200]!r} of {item.root!r} holds "
                    f"{len(item.strings)} values, not one string"
                )
            entries.append((item.clock, item.root, item.key, item.strings[0]))
        known = self._clocks.get(read.client, 0)
        if read.first > known:
            self._refuse(
                f"the update continues the changes of client {_client_number(read.client)} "
                f"from clock {read.first}, but the server holds that client's changes only "
                f"up to clock {known}: send the earlier updates first, in order"
            )
        self.last_writer = None
        self.last_client = _client_number(read.client)
        if read.end <= known:
            return []  # resent: held already
        revisions: list[Revision] = []
        keys: set[str] = set()
        meta_id = self._meta_id
        self._meta_in_update = set()
        now = self._now_ms()
        for clock, root, key, stored in entries:
            if clock < known:
                continue  # held already
            if root == _META:
                meta_id = self._check_meta(key, stored, meta_id)
                self._meta_in_update.add(key)
                continue
            self._check_key(key, keys)
            keys.add(key)
            revisions.append(self._check_revision(key, stored, now))
        self._clocks[read.client] = read.end
        self.last_writer = self.last_client
        self._added |= keys
        self._meta_id = meta_id
        return revisions

    # ----------------------------------------------------------------- internals

    def _refuse(self, problem: str) -> NoReturn:
        if len(problem) > _MAX_PROBLEM:  # a message quoting a huge value stays readable
            problem = problem[:_MAX_PROBLEM] + "..."
        raise RefusedUpdateError(
            f"record {self.record_id}: update refused: {problem}", record_id=self.record_id
        )

    def _check_meta(self, key: str, stored: str, meta_id: str | None) -> str:
        if key != _META_ID:
            self._refuse(
                f"{_SHAPE}, but it writes meta key {key[:200]!r} (meta holds only 'id', "
                "written once when the record is created)"
            )
        # The same id again, from another writer, is harmless: two laptops that
        # created one record id offline both wrote it. Twice in one update, or any
        # other value, is not something caresync writes.
        again = meta_id is not None and meta_id == self._meta_id == stored == self.record_id
        if meta_id is not None and not (again and key not in self._meta_in_update):
            self._refuse(
                f"{_SHAPE}, but it writes meta/id, and the record has its id already "
                "(it is written once, when the record is created)"
            )
        if stored != self.record_id:
            self._refuse(
                f"its meta/id is {stored[:200]!r}, not this record's id {self.record_id!r}"
            )
        return stored

    def _check_key(self, key: str, keys: set[str]) -> None:
        if not 1 <= len(key) <= MAX_ID_LENGTH or not key.isprintable():
            self._refuse(
                f"revision key {key[:200]!r} is not a printable string of 1 to "
                f"{MAX_ID_LENGTH} characters (caresync uses 16 random hex digits)"
            )
        if key in keys:
            self._refuse(f"{_SHAPE}, but it writes revision {key!r} twice")
        if key in self._added or self._has_revision(key):
            self._refuse(
                f"{_SHAPE}, but revision {key!r} exists already (revisions never change: "
                "write a new revision under a fresh random key, naming the old one as a parent)"
            )

    def _check_revision(self, key: str, stored: str, now: int) -> Revision:
        limit = self.limits.max_revision_length
        if len(stored) > limit:
            self._refuse(
                f"revision {key}: its stored JSON is {len(stored)} characters; the limit is "
                f"{limit} (a value may be at most {MAX_VALUE_BYTES} bytes)"
            )
        rev = decode_revision(key, stored)
        if rev is None:
            self._refuse(
                f"revision {key} is malformed: a revision is one JSON object (nested at "
                'most 200 levels) with "p" (the path, a non-empty string), "v" (the value), '
                '"ps" (parent revision ids, a list of strings), "a" (author) and "r" '
                '(replica), strings, "t" (wall-clock milliseconds) and "c" (counter), '
                'integers, and optionally "s" (an object of lists of revision ids)'
            )
        self._check_write(rev)
        for what, name in (("author", rev.author), ("replica", rev.replica)):
            if not name.strip() or len(name) > _MAX_AUTHOR_LENGTH:
                self._refuse(
                    f"revision {key}: its {what} must be a non-empty string of at most "
                    f"{_MAX_AUTHOR_LENGTH} characters"
                )
        for parent in rev.parents:
            if len(parent) > MAX_ID_LENGTH:
                self._refuse(
                    f"revision {key}: parent id {parent[:200]!r} is longer than "
                    f"{MAX_ID_LENGTH} characters"
                )
        for ids in rev.seen.values():
            for seen_id in ids:
                if len(seen_id) > MAX_ID_LENGTH:
                    self._refuse(
                        f"revision {key}: seen id {seen_id[:200]!r} is longer than "
                        f"{MAX_ID_LENGTH} characters"
                    )
        wall, counter = rev.at
        if not 0 <= counter < COUNTER_LIMIT:
            self._refuse(
                f"revision {key}: its clock counter {counter} is outside 0 to {COUNTER_LIMIT - 1}"
            )
        ahead = self.limits.max_clock_ahead_ms
        if wall < 0 or wall > now + ahead:
            when = "before 1970" if wall < 0 else f"more than {_duration(ahead)} ahead of it"
            self._refuse(
                f"revision {key} is dated {Timestamp(wall).isoformat()} ({wall} ms), "
                f"{when}; the server's time is {Timestamp(now).isoformat()} ({now} ms): "
                "check the laptop's clock"
            )
        return rev

    def _check_write(self, rev: Revision) -> None:
        """The path and value, as a laptop checks a write (caresync's own paths apart)."""
        path, value = rev.path, rev.value
        try:
            if path.startswith(ACK_PREFIX):  # a decision on a finding: any JSON value
                check_path(path)  # "_ack/" alone has an empty segment
                check_value(value, what=path)
                return
            key = self.schema.entry_key(path)
            if key is not None and path == f"{key[0]}/{key[1]}/{_CREATED_FIELD}":
                check_path(path)  # an entry's creation: always true
                if value is not True:
                    raise InvalidValueError(
                        f"{path}: an entry's {_CREATED_FIELD} bookkeeping must be true, "
                        f"got {value!r}"
                    )
                return
            self.schema.check_write(path, value)
        except (InvalidPathError, InvalidValueError) as exc:
            self._refuse(f"revision {rev.id}: {exc}")


def _client_number(client: Client) -> int:
    """A client id from its varuint bytes, for messages."""
    return sum((byte & 0x7F) << (7 * shift) for shift, byte in enumerate(client))


def _duration(ms: int) -> str:
    if ms % 3_600_000 == 0:
        hours = ms // 3_600_000
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{ms} ms"
