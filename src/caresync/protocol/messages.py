"""The sync protocol's messages: frozen, slotted dataclasses validated when built.

Every message checks every field in ``__post_init__``: its type (``bool`` is not an
``int``; ``bytes`` are not ``str``), its range and its length. A bad value passed by a
local caller raises :class:`~caresync.exceptions.LocalProtocolError`; the codec
(:mod:`caresync.protocol.codec`) builds messages from the wire the same way and re-raises
that as :class:`~caresync.exceptions.RemoteProtocolError`, as h11 does. So a message
object that exists is a valid message, whoever made it.

The items inside batches (:class:`CopyRecord`, :class:`FeedItem`, :class:`PushItem`)
are ``NamedTuple``\\ s rather than dataclasses: a first copy builds one per record, a
NamedTuple costs a quarter as much, msgpack packs it as a plain array, and the batch
that holds them validates them. A plain tuple of the right shape is accepted and
converted.

Each message class carries its wire ``TYPE_CODE``. ``FROZEN_LAYOUT`` marks the messages
whose layout never changes between protocol versions (:class:`Hello`, :class:`Welcome`,
:class:`Error`, :class:`Goodbye`): they are the ones exchanged before a version is agreed,
so a peer must be able to read them whatever version it speaks.

See ``docs/protocol.md`` for the message table.
"""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple, NoReturn, Protocol, TypeVar

from caresync.audit.chain import HASH_BYTES, AuditEntry, check_entry
from caresync.exceptions import AuditError, LocalProtocolError
from caresync.protocol.rows import COMPACT_ROWS_SINCE, compact_rows, expand_rows

__all__ = [
    "CARD_DIGEST_BYTES",
    "CARD_REFERENCE_SINCE",
    "COALESCED_PULL_SINCE",
    "COMPACT_ROWS_SINCE",
    "COPY_PAIRS_SINCE",
    "FEED_EPOCHS_SINCE",
    "HUB_CHANGES_SINCE",
    "MAX_AUDIT_ITEMS",
    "DEFAULT_COPY_BATCH_RECORDS",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_PULL_LIMIT",
    "MAX_BATCH_ITEMS",
    "MAX_PUSH_ITEMS",
    "MAX_DETAIL_ENTRIES",
    "MAX_FINGERPRINT_LENGTH",
    "MAX_PART_VECTOR_BYTES",
    "MAX_STATE_VECTOR_BYTES",
    "MAX_NONCE_BYTES",
    "MAX_PASSWORD_MARK_BYTES",
    "MAX_SECRET_BYTES",
    "MAX_ID_LENGTH",
    "MAX_MAX_FRAME_BYTES",
    "MAX_MESSAGE_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_PASSWORD_LENGTH",
    "MAX_SEQ",
    "MAX_TOKEN_LENGTH",
    "MAX_VERSION",
    "MESSAGE_TYPES",
    "MIN_MAX_FRAME_BYTES",
    "MIN_NONCE_BYTES",
    "MIN_PASSWORD_MARK_BYTES",
    "MIN_SECRET_BYTES",
    "PROTOCOL_VERSION",
    "RECORD_PARTS_SINCE",
    "ACCOUNT_STATES_SINCE",
    "REFUSED_RECORD_DETAIL",
    "SET_ASIDE_SINCE",
    "SERVER_KEY_BYTES",
    "SIGNATURE_BYTES",
    "SUPPORTED_VERSIONS",
    "AccountName",
    "AccountState",
    "AuditAck",
    "AuditBatch",
    "Authenticate",
    "CheckedState",
    "ConflictRowLike",
    "card_reference",
    "held_reference",
    "is_card_reference",
    "is_held_reference",
    "rows_digest",
    "Authenticated",
    "CopyBatch",
    "CopyConflict",
    "CopyPair",
    "CopyPerson",
    "CopyRecord",
    "CopyRequest",
    "DetailValue",
    "Enrol",
    "Enrolled",
    "Error",
    "FeedItem",
    "Goodbye",
    "Hello",
    "HUB_REMOVED",
    "HubItem",
    "HubReport",
    "LiveBatch",
    "LiveUpdate",
    "Message",
    "OutboxReport",
    "PullBatch",
    "PullRequest",
    "PushAck",
    "PushBatch",
    "ProveServer",
    "PushItem",
    "RecordPart",
    "RecordPartRequest",
    "ResumeSession",
    "ServerProof",
    "Subscribe",
    "Welcome",
]

# --------------------------------------------------------------------------- limits

COPY_PAIRS_SINCE = 12
"""The first protocol version whose first-copy batches carry the server's person pairs
(:attr:`CopyBatch.pairs`)."""

HUB_CHANGES_SINCE = 13
"""The first protocol version whose hub report may carry only what changed since the one
the laptop holds (:attr:`PullRequest.hub_since`, :attr:`HubReport.mark`,
:attr:`HubReport.whole`, and the ``removed`` state of a :class:`HubItem`)."""

FEED_EPOCHS_SINCE = 14
"""The first protocol version that labels feed positions with the server's feed epoch
(:attr:`PullRequest.feed_epoch`, :attr:`PullBatch.feed_epoch`,
:attr:`LiveBatch.feed_epoch`, :attr:`CopyBatch.feed_epoch`)."""

RECORD_PARTS_SINCE = 15
"""The first protocol version in which a first copy takes a record larger than one frame
in parts (:attr:`CopyBatch.in_parts`, :class:`RecordPartRequest`, :class:`RecordPart`)."""

ACCOUNT_STATES_SINCE = 16
"""The first protocol version whose ``Authenticated`` says, per account of the
organisation, whether it is disabled and a mark of its password
(:attr:`Authenticated.account_states`), so that laptops end offline logins the server
no longer allows."""
SET_ASIDE_SINCE = 16
"""The first protocol version in which a non-fatal push refusal caused by one record's
updates names that record in its detail (:data:`REFUSED_RECORD_DETAIL`): the laptop sets
that record's outbox entries aside and pushes the rest."""

REFUSED_RECORD_DETAIL = "record_id"
"""The :attr:`Error.detail` key naming the record a push refusal is about (version 16 on)."""

PROTOCOL_VERSION = 16
"""The newest protocol version this caresync speaks."""

SUPPORTED_VERSIONS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)
"""Every protocol version this caresync speaks, oldest first.

Version 2 adds :class:`OutboxReport`. Version 3 adds :class:`LiveBatch` (several
live entries in one frame) and two fields to the first copy:
:attr:`CopyRequest.rulebook` and :attr:`CopyBatch.conflicts`, so a laptop whose
rulebook is the server's takes each record's conflict index rows as they are
instead of building the record and running the rules. A field added in version N is
absent from frames written in an older version (see :attr:`Message.FIELDS_SINCE`),
so peers that agree on an older version work as before.

Version 4 is the trust-nothing release: the server proves it holds the key the
replica pinned at enrolment (:class:`ProveServer`, :class:`ServerProof`) before
any credential is sent; a replica proves its own secret at every login
(``Authenticate.replica_secret``, ``ResumeSession.replica_secret``), issued at
enrolment (``Enrolled.replica_secret``); ``Authenticated.pushed_up_to`` tells a
replica how far the server has committed its pushes (a replica restored from an
older copy renumbers what waits), and ``PullRequest.include_own`` asks for the
replica's own updates too (pulling back what the restored copy lacks).

Version 5 adds :attr:`CopyBatch.persons`: with the conflict index rows, each
record's person card (what the cross-record person index keeps), so a laptop that
takes the rows as they are also indexes who each record is without building it.

Version 6 adds :attr:`Authenticated.accounts`: the organisation's accounts and
the names people know them by, so a laptop shows who wrote each entry (a
revision's author is the account logged in where it was written).

Version 7 carries the audit trail (:mod:`caresync.audit`): a replica sends the
entries of its chain (:class:`AuditBatch`, answered by :class:`AuditAck` after the
server's commit), from after the entry ``Authenticated.audit_seq`` /
``Authenticated.audit_hash`` say the server holds last.

Version 7 also adds :class:`HubReport` (a message of its own, so that it can be
renumbered at a merge): after the last :class:`PullBatch` of a pull, the
server says where each patient summary kept on the health hub stands, so a
laptop shows what the server knows (see :mod:`caresync.hub`).

Version 8 sizes first-copy batches by bytes too (``CopyRequest.batch_bytes``), and
carries the server's conflict rows with pulls and live entries, as
version 3 did with the first copy: ``PullRequest.rulebook`` and
``Subscribe.rulebook`` name the client's rulebook, and a server whose index that
rulebook computed adds ``checked`` (per record: the state vector of the state its
rows describe, and its person card) and ``conflicts`` to :class:`PullBatch` and
:class:`LiveBatch`. A laptop whose record ends the batch at exactly that state
stores the rows as they are instead of building the record.

Version 9 changes no message: in a version 9 frame, a checked state's ``card`` may be
a reference instead of the card: to the card (:func:`card_reference`: a zero byte,
then the first :data:`CARD_DIGEST_BYTES` bytes of the card's SHA-256), or to the card
and the record's conflict rows together (:func:`held_reference`; the batch then
carries no rows of that record). The server sends one when the client has had that
card (and those rows) since before the entries. A laptop that stores what is so
referred to keeps it; any other builds the record, as without a check. Most pulled
records keep their card and rows, which were most of a check's bytes.

Version 10 adds :attr:`PullBatch.entries`: a pull batch may merge a record's feed
entries into one item (with the seq of the last of them), so it may stand for more
feed entries than its ``limit`` of items; ``entries`` says how many.

Version 11 sends conflict rows compactly in pull and live frames
(:data:`~caresync.protocol.rows.COMPACT_ROWS_SINCE`).

Version :data:`COPY_PAIRS_SINCE` adds :attr:`CopyBatch.pairs`: with the person cards,
the pairs of records the server's person index holds, each once, with the batch
holding the later of its two records. A laptop compares only those pairs (it scores
them again from its own cards) instead of looking up which of its stored cards share
a blocking key with each card of the batch.

Version :data:`HUB_CHANGES_SINCE` makes the hub report a pull ends with cost what
changed: :attr:`PullRequest.hub_since` names the server's hub mark of the report the
laptop holds (0: none), and :class:`HubReport` says the mark it brings the laptop to
(``mark``) and whether its items are the whole list (``whole``: replace) or only the
summaries changed since ``hub_since`` (merge), where an item in state ``removed`` says a
patient is no longer listed. A laptop in step gets an empty report.

Version :data:`FEED_EPOCHS_SINCE` lets a laptop tell a server that went back in time (one
restored from an older backup) from the one it read: every feed position the server
gives (a pull batch's checkpoint, a live batch's last entry, a first copy's
``feed_checkpoint``) comes with its **feed epoch** (``feed_epoch``: the random id of
the server process's stretch of the feed that number lies in, see
:class:`~caresync.storage.base.FeedEpoch`), and a pull names the epoch of the
position it starts from. A server whose feed does not reach that position, or labels
it with another epoch, refuses the pull with ``feed_diverged``: the laptop sends again
what it wrote and pulls from the feed's start (see :mod:`caresync.replication.epochs`).

Version :data:`RECORD_PARTS_SINCE` copies a record larger than one frame: where the
next record of a first copy would not fit the client's frame, the server sends a batch
of no records naming it (:attr:`CopyBatch.in_parts`); the client asks for it in parts
(:class:`RecordPartRequest`, with the state vector of what it holds of it), each
:class:`RecordPart` continuing the record from that state within one frame, until one
says ``final``; then it resumes the copy after that record. Before, such a copy was
refused at that record (``too_large``) and the enrolment stopped there.

Version :data:`ACCOUNT_STATES_SINCE` adds :attr:`Authenticated.account_states`: beside
each account's name, whether it is disabled and its **password mark**, an opaque value
the server changes whenever the account's password changes (random, so it tells
nothing of the password). A laptop that learns from its proven server that an account
was disabled, or that its password changed since it last logged in online there, ends
that account's offline logins (see :mod:`caresync.logins`).
Version :data:`SET_ASIDE_SINCE` changes no message's layout: a non-fatal refusal of a
push that one record's updates caused (an update admission refuses, an author the
server does not accept, a record of another organisation, an update too large for a
frame) names that record in :attr:`Error.detail` under
:data:`REFUSED_RECORD_DETAIL`. Nothing of the batch was stored, as before; the laptop
sets that record's entries aside (kept, listed with the reason, tried again at the next
sync) and pushes the rest, so one refused entry no longer holds back every later
change. A refusal of the whole push (``busy``, too many updates) names no record.
"""

MAX_VERSION_TEXT = 64
"""The longest software version a peer names (``client_version``, ``client_newest``)."""
MAX_AUDIT_ITEMS = 1000
"""The most audit entries one :class:`AuditBatch` carries."""
MIN_NONCE_BYTES = 16
MAX_NONCE_BYTES = 64
SERVER_KEY_BYTES = 32
"""An Ed25519 public key, raw."""
SIGNATURE_BYTES = 64
"""An Ed25519 signature."""
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 64
MIN_PASSWORD_MARK_BYTES = 8
MAX_PASSWORD_MARK_BYTES = 64
"""The bounds of an :class:`AccountState`'s ``password_mark`` (caresync's servers send 16)."""

MAX_VERSION = 0xFFFF
"""The largest protocol version number the envelope may carry."""

DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
"""Default largest frame a side accepts (16 MiB)."""

MIN_MAX_FRAME_BYTES = 64 * 1024
"""The smallest maximum frame size a side may announce; every control message fits."""

MAX_MAX_FRAME_BYTES = 1024 * 1024 * 1024
"""The largest maximum frame size a side may announce (1 GiB)."""

MAX_BATCH_ITEMS = 100_000
"""The most records or updates one batch, or one request for a batch, may hold."""

MAX_PUSH_ITEMS = 1_000
"""The most updates a ``SyncServer`` takes in one :class:`PushBatch` (a larger one is
refused, non-fatally, as ``too_large``, before anything is done with it).

A push is admitted, merged and indexed on the server's event loop under its commit
lock, with no other connection served meanwhile, at about half a millisecond an
update (more for a record of many Yjs clients): a frame of 60,000 tiny updates held
the server for more than 20 s. caresync's laptops push 500 a batch, and never more
than this (``SyncLimits.push_batch_items`` above it is used as this).
"""

DEFAULT_COPY_BATCH_RECORDS = 1_000
"""Records a client asks for per first-copy batch unless told otherwise."""

DEFAULT_PULL_LIMIT = 1_000
"""Updates a client asks for per pull batch unless told otherwise."""

MAX_SEQ = 2**63 - 1
"""The largest sequence number, count, byte total or timestamp (fits a signed 64-bit)."""

MAX_ID_LENGTH = 128
"""Longest identifier (record, replica, server, organisation), in characters."""

MAX_NAME_LENGTH = 256
"""Longest user name or device name, in characters."""

MAX_PASSWORD_LENGTH = 1024
"""Longest password, in characters."""

MAX_TOKEN_LENGTH = 512
"""Longest session token, in characters."""

MAX_FINGERPRINT_LENGTH = 256
"""Longest rulebook fingerprint, in characters."""

CARD_DIGEST_BYTES = 16
"""Bytes of a card's SHA-256 a card reference keeps (version 9 on)."""

CARD_REFERENCE_SINCE = 9
"""The first protocol version whose checked states may carry card references."""

COALESCED_PULL_SINCE = 10
"""The first protocol version whose pull batches may merge a record's feed entries into
one (:attr:`PullBatch.entries` says how many feed entries a batch stands for)."""

MAX_STATE_VECTOR_BYTES = 64 * 1024
"""Longest Yjs state vector a :class:`CheckedState` carries, in bytes."""

MAX_PART_VECTOR_BYTES = 8 * 1024 * 1024
"""Longest Yjs state vector a :class:`RecordPartRequest` names, in bytes: it lists every
Yjs client the laptop took of the record so far (each opening of a record on a laptop
writes as a new client, and a colleague may push as many), some ten bytes each, so
64 KiB held about 7,000, fewer than a large record may have; this holds some 800,000."""

MAX_MESSAGE_LENGTH = 4096
"""Longest human-readable text (an error message, a goodbye reason), in characters."""

MAX_DETAIL_ENTRIES = 16
"""Most entries in an :class:`Error`'s ``detail``."""

_MAX_DETAIL_KEY = 64
_MAX_DETAIL_TEXT = 256
_MAX_VERSIONS = 16
_CODE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")

DetailValue = str | int | bool | None
"""A value in an :class:`Error`'s ``detail`` map."""


# ----------------------------------------------------------------------- validation


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(owner: str, name: str, what: str, value: object, *, secret: bool = False) -> NoReturn:
    shown = f"a {type(value).__name__}" if secret else _show(value)
    raise LocalProtocolError(f"{owner}.{name} must be {what}, got {shown}")


def _int(owner: str, name: str, value: object, lo: int, hi: int = MAX_SEQ) -> None:
    if type(value) is not int or not lo <= value <= hi:
        _bad(owner, name, f"an int in [{lo}, {hi}]", value)


def _opt_epoch(owner: str, value: object) -> None:
    """A feed epoch (0 labels the numbers before the first epoch), or None."""
    if value is not None:
        _int(owner, "feed_epoch", value, 0, MAX_SEQ)


def _bool(owner: str, name: str, value: object) -> None:
    if type(value) is not bool:
        _bad(owner, name, "a bool", value)


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(
    owner: str,
    name: str,
    value: object,
    max_len: int,
    *,
    min_len: int = 1,
    printable: bool = True,
    secret: bool = False,
) -> None:
    if (
        type(value) is not str
        or not min_len <= len(value) <= max_len
        or (printable and not value.isprintable())
        or (not printable and not _encodable(value))
    ):
        kind = "printable " if printable else ""
        _bad(
            owner,
            name,
            f"a {kind}str of {min_len} to {max_len} characters",
            value,
            secret=secret,
        )


def _opt_text(owner: str, name: str, value: object, max_len: int) -> None:
    if value is not None:
        _text(owner, name, value, max_len)


def _blob(owner: str, name: str, value: object, lo: int, hi: int, *, secret: bool = False) -> None:
    if type(value) is not bytes or not lo <= len(value) <= hi:
        _bad(owner, name, f"bytes of {lo} to {hi}", value, secret=secret)


def _opt_blob(owner: str, name: str, value: object, lo: int, hi: int) -> None:
    if value is not None:
        _blob(owner, name, value, lo, hi, secret=True)


def _update(owner: str, name: str, value: object) -> None:
    if type(value) is not bytes or not value:
        _bad(owner, name, "non-empty bytes", value)


def _items(owner: str, name: str, value: object, *, allow_empty: bool) -> tuple[Any, ...]:
    if not isinstance(value, (tuple, list)):
        _bad(owner, name, "a tuple", value)
    if len(value) > MAX_BATCH_ITEMS:
        _bad(owner, name, f"at most {MAX_BATCH_ITEMS} items", f"{len(value)} items")
    if not value and not allow_empty:
        _bad(owner, name, "non-empty", value)
    return tuple(value)


_VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+!_-]{0,63}")


def _opt_version(owner: str, name: str, value: object) -> None:
    """None, or a software version's text (``0.1.0``, ``1.2.0rc1``): its form only."""
    if value is None:
        return
    if type(value) is not str or not _VERSION_RE.fullmatch(value):
        _bad(owner, name, f"None or a version of 1 to {MAX_VERSION_TEXT} characters", value)


def _set(message: object, name: str, value: object) -> None:
    object.__setattr__(message, name, value)


# ------------------------------------------------------------------------ batch items


class CopyRecord(NamedTuple):
    """One record in a :class:`CopyBatch`: its id and its whole state as one update."""

    record_id: str
    update: bytes


class FeedItem(NamedTuple):
    """One entry of the server's change feed: its sequence number, record and update."""

    seq: int
    record_id: str
    update: bytes


class CopyPerson(NamedTuple):
    """The person card of a copied record (protocol version 5 on).

    ``card`` is :meth:`caresync.records.persons.PersonCard.to_bytes` of the
    record: its normalised identifying fields and link decisions, as the
    server's person index keeps them.
    """

    record_id: str
    card: bytes


class CopyPair(NamedTuple):
    """A pair of records in the server's person index (protocol version
    :data:`COPY_PAIRS_SINCE` on): two record ids, ``first < second``.

    Sent once, with the :class:`CopyBatch` holding ``second`` (the later of the two in
    the copy's order); ``first`` is in that batch or an earlier one. It names the two
    records only: the receiver works out what they are (a possible duplicate, linked,
    disputed, or nothing) from the two cards it holds.
    """

    first: str
    second: str


class AccountName(NamedTuple):
    """An account of the organisation and how people see it (protocol version 6 on)."""

    username: str
    display_name: str


class AccountState(NamedTuple):
    """What a laptop must know of an account to allow its offline logins (protocol
    version :data:`ACCOUNT_STATES_SINCE` on): whether it is disabled, and its password
    mark, an opaque value (:data:`MIN_PASSWORD_MARK_BYTES` to
    :data:`MAX_PASSWORD_MARK_BYTES` bytes) that changes whenever its password does."""

    username: str
    disabled: bool
    password_mark: bytes


class CopyConflict(NamedTuple):
    """One conflict index row of a copied record (protocol version 3 on).

    The fields of :class:`caresync.storage.ConflictRow`: the conflict's id, kind,
    subject and severity, and ``payload``, the conflicts package's JSON of it.
    """

    record_id: str
    id: str
    kind: str
    subject: str
    severity: str
    payload: bytes


class CheckedState(NamedTuple):
    """A record state the server checked (protocol version 8 on).

    ``state_vector`` is the Yjs state vector of the server's stored state of the
    record when its conflict rows (the batch's ``conflicts`` naming it) and its
    person card ``card`` (``PersonCard.to_bytes()``, or None: no card) were read.
    From version 9, ``card`` may be a reference to the card (:func:`card_reference`):
    the receiver holds that card already, or checks the record itself.
    """

    record_id: str
    state_vector: bytes
    card: bytes | None


def card_reference(card: bytes) -> bytes:
    """What a version 9 checked state may carry instead of ``card`` (a card's bytes,
    ``PersonCard.to_bytes()``; ``b""`` for no card): a zero byte, then the first
    :data:`CARD_DIGEST_BYTES` bytes of the card's SHA-256. A card is JSON text, so it
    never starts with a zero byte."""
    return b"\x00" + hashlib.sha256(card).digest()[:CARD_DIGEST_BYTES]


class ConflictRowLike(Protocol):
    """A conflict row as :func:`rows_digest` reads it (a :class:`CopyConflict`, or a
    store's ``ConflictRow``)."""

    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def severity(self) -> str: ...
    @property
    def payload(self) -> bytes: ...


def rows_digest(rows: Iterable[ConflictRowLike]) -> bytes:
    """The first :data:`CARD_DIGEST_BYTES` bytes of the SHA-256 of a record's conflict
    rows (any objects with ``id``, ``kind``, ``subject``, ``severity``, ``payload``), in
    id order, each field length-prefixed: the same rows give the same digest."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r.id):
        for text in (row.id, row.kind, row.subject, row.severity):
            data = text.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(4, "big"))
            digest.update(data)
        digest.update(len(row.payload).to_bytes(4, "big"))
        digest.update(row.payload)
    return digest.digest()[:CARD_DIGEST_BYTES]


def held_reference(card: bytes | None, rows: Iterable[ConflictRowLike]) -> bytes:
    """What a version 9 checked state may carry instead of ``card`` when the receiver
    holds both the record's card (None: none) and its conflict rows: a one byte, the
    card's digest as in :func:`card_reference` and the rows' :func:`rows_digest`. The
    batch's ``conflicts`` then carry no rows of that record."""
    return b"\x01" + card_reference(card or b"")[1:] + rows_digest(rows)


def is_card_reference(card: bytes) -> bool:
    """True if a checked state's ``card`` is a :func:`card_reference`, not a card."""
    return len(card) == CARD_DIGEST_BYTES + 1 and card[0] == 0


def is_held_reference(card: bytes) -> bool:
    """True if a checked state's ``card`` is a :func:`held_reference`, not a card."""
    return len(card) == 2 * CARD_DIGEST_BYTES + 1 and card[0] == 1


class PushItem(NamedTuple):
    """One outbox entry: the replica's own sequence number, the record and the update."""

    local_seq: int
    record_id: str
    update: bytes


def _check_record_id(owner: str, name: str, value: object) -> None:
    if type(value) is not str or not 0 < len(value) <= MAX_ID_LENGTH or not value.isprintable():
        _bad(owner, name, f"a printable str of 1 to {MAX_ID_LENGTH} characters", value)


_Numbered = TypeVar("_Numbered", FeedItem, PushItem)
_RECORD_ID = operator.itemgetter(1)  # a FeedItem's record id

_tuple_new: Any = tuple.__new__
"""``tuple.__new__``: ``cls(*fields)`` of a named tuple ``cls``, in one C call."""


def _numbered_items(
    owner: str, value: object, item_type: type[_Numbered], *, allow_empty: bool
) -> tuple[_Numbered, ...]:
    """Validate a batch of (number, record_id, update) items in strictly ascending number."""
    number = item_type._fields[0]
    out: list[_Numbered] = []
    append = out.append
    previous = 0
    for item in _items(owner, "items", value, allow_empty=allow_empty):
        if type(item) is not item_type:
            if not isinstance(item, (tuple, list)) or len(item) != 3:
                _bad(owner, "items[]", f"a ({number}, record_id, update) triple", item)
            # item_type(*item) without the named tuple's Python __new__ (a decoded
            # frame's items are plain tuples, thousands a batch).
            item = _tuple_new(item_type, item)
        seq, record_id, update = item
        # The common case in one expression (a batch holds up to thousands of items);
        # else the checks one by one, the first that fails saying what is wrong.
        if not (
            type(seq) is int
            and previous < seq <= MAX_SEQ
            and type(record_id) is str
            and 0 < len(record_id) <= MAX_ID_LENGTH
            and record_id.isprintable()
            and type(update) is bytes
            and update
        ):
            _int(owner, f"items[].{number}", seq, previous + 1)
            _check_record_id(owner, "items[].record_id", record_id)
            _update(owner, "items[].update", update)
        previous = seq
        append(item)
    return tuple(out)


# ------------------------------------------------------------------------- messages


class Message:
    """Base of every protocol message.

    Subclasses are frozen, slotted dataclasses; ``TYPE_CODE`` is the message's number
    on the wire and ``FROZEN_LAYOUT`` says whether its layout is the same in every
    protocol version.
    """

    __slots__ = ()

    TYPE_CODE: ClassVar[int]
    FROZEN_LAYOUT: ClassVar[bool] = False
    SINCE_VERSION: ClassVar[int] = 1
    """The first protocol version that has this message."""
    FIELDS_SINCE: ClassVar[Mapping[str, int]] = MappingProxyType({})
    """Fields added after the message itself, by the protocol version that added them.

    A frame written in an older version has no such key; decoding it gives the
    field its default, which means "not sent" (``None``).
    """

    @classmethod
    def fields_in(cls, version: int) -> tuple[str, ...]:
        """The field names a frame of this message carries in protocol ``version``."""
        names: tuple[str, ...] = cls.__slots__  # a slotted dataclass: its fields
        since = cls.FIELDS_SINCE
        if not since:
            return names
        return tuple(name for name in names if since.get(name, 1) <= version)

    @classmethod
    def from_body(cls, version: int, body: dict[str, Any]) -> Message:
        """The message a frame of protocol ``version`` holds (``body``: its fields, by
        name, checked by the codec to be exactly :meth:`fields_in`). LocalProtocolError
        for a field that is not valid."""
        return cls(**body)

    def to_body(self, version: int = PROTOCOL_VERSION) -> dict[str, object]:
        """The message's fields, as protocol ``version`` has them, as an envelope's body.

        Raises LocalProtocolError if a field newer than ``version`` holds a value
        (anything but ``None``): it would be dropped without a word.
        """
        names = self.fields_in(version)
        for name, since in self.FIELDS_SINCE.items():
            if since > version and getattr(self, name) is not None:
                raise LocalProtocolError(
                    f"{type(self).__name__}.{name} exists from protocol version {since}; "
                    f"this connection speaks version {version}"
                )
        return {name: getattr(self, name) for name in names}


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """Client → server, first frame: who the client is and what it speaks.

    ``protocol_versions`` lists the versions the client speaks. ``max_frame_bytes`` is
    the largest frame the client accepts. An enrolled replica gives its ``replica_id``,
    the ``server_id_expected`` it was enrolled to and its ``organisation``; a replica
    not enrolled yet gives none of the first two.
    """

    TYPE_CODE: ClassVar[int] = 1
    FROZEN_LAYOUT: ClassVar[bool] = True

    protocol_versions: tuple[int, ...]
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    replica_id: str | None = None
    server_id_expected: str | None = None
    organisation: str | None = None

    def __post_init__(self) -> None:
        owner = "Hello"
        versions = self.protocol_versions
        if not isinstance(versions, (tuple, list)) or not 0 < len(versions) <= _MAX_VERSIONS:
            _bad(owner, "protocol_versions", f"a tuple of 1 to {_MAX_VERSIONS} ints", versions)
        for version in versions:
            _int(owner, "protocol_versions[]", version, 1, MAX_VERSION)
        if len(set(versions)) != len(versions):
            _bad(owner, "protocol_versions", "distinct versions", versions)
        _set(self, "protocol_versions", tuple(versions))
        _int(
            owner, "max_frame_bytes", self.max_frame_bytes, MIN_MAX_FRAME_BYTES, MAX_MAX_FRAME_BYTES
        )
        _opt_text(owner, "replica_id", self.replica_id, MAX_ID_LENGTH)
        _opt_text(owner, "server_id_expected", self.server_id_expected, MAX_ID_LENGTH)
        _opt_text(owner, "organisation", self.organisation, MAX_ID_LENGTH)
        if (self.replica_id is None) != (self.server_id_expected is None):
            raise LocalProtocolError(
                "Hello: replica_id and server_id_expected go together (an enrolled "
                "replica gives both, a new one neither)"
            )
        if self.replica_id is not None and self.organisation is None:
            raise LocalProtocolError("Hello: an enrolled replica must give its organisation")


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    """Server → client, answer to :class:`Hello`: the version chosen and who the server is.

    ``max_frame_bytes`` is the largest frame the server accepts.
    """

    TYPE_CODE: ClassVar[int] = 2
    FROZEN_LAYOUT: ClassVar[bool] = True

    protocol_version: int
    server_id: str
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES

    def __post_init__(self) -> None:
        _int("Welcome", "protocol_version", self.protocol_version, 1, MAX_VERSION)
        _text("Welcome", "server_id", self.server_id, MAX_ID_LENGTH)
        _int(
            "Welcome",
            "max_frame_bytes",
            self.max_frame_bytes,
            MIN_MAX_FRAME_BYTES,
            MAX_MAX_FRAME_BYTES,
        )


@dataclass(frozen=True, slots=True)
class Authenticate(Message):
    """Client → server: log in with a user name and password, within an organisation.

    The password is never shown in an error message or a ``repr``.
    """

    TYPE_CODE: ClassVar[int] = 3
    FIELDS_SINCE: ClassVar[Mapping[str, int]] = MappingProxyType(
        {"replica_secret": 4, "client_version": 7}
    )

    username: str
    password: str
    organisation: str
    replica_secret: bytes | None = None
    client_version: str | None = None

    def __post_init__(self) -> None:
        _text("Authenticate", "username", self.username, MAX_NAME_LENGTH)
        _text(
            "Authenticate",
            "password",
            self.password,
            MAX_PASSWORD_LENGTH,
            printable=False,
            secret=True,
        )
        _text("Authenticate", "organisation", self.organisation, MAX_ID_LENGTH)
        _opt_blob(
            "Authenticate",
            "replica_secret",
            self.replica_secret,
            MIN_SECRET_BYTES,
            MAX_SECRET_BYTES,
        )
        _opt_version("Authenticate", "client_version", self.client_version)

    def __repr__(self) -> str:
        return (
            f"Authenticate(username={self.username!r}, password='***', "
            f"organisation={self.organisation!r}, "
            f"replica_secret={'***' if self.replica_secret else None}, "
            f"client_version={self.client_version!r})"
        )


@dataclass(frozen=True, slots=True)
class ResumeSession(Message):
    """Client → server: log in again with a session token from :class:`Authenticated`."""

    TYPE_CODE: ClassVar[int] = 4
    FIELDS_SINCE: ClassVar[Mapping[str, int]] = MappingProxyType(
        {"replica_secret": 4, "client_version": 7}
    )

    session_token: str
    replica_secret: bytes | None = None
    client_version: str | None = None

    def __post_init__(self) -> None:
        _text("ResumeSession", "session_token", self.session_token, MAX_TOKEN_LENGTH, secret=True)
        _opt_blob(
            "ResumeSession",
            "replica_secret",
            self.replica_secret,
            MIN_SECRET_BYTES,
            MAX_SECRET_BYTES,
        )
        _opt_version("ResumeSession", "client_version", self.client_version)

    def __repr__(self) -> str:
        secret = "'***'" if self.replica_secret else None
        return (
            f"ResumeSession(session_token='***', replica_secret={secret}, "
            f"client_version={self.client_version!r})"
        )


@dataclass(frozen=True, slots=True)
class Authenticated(Message):
    """Server → client: the login succeeded.

    ``session_token`` resumes the session on a later connection until
    ``expires_at_ms`` (milliseconds since the Unix epoch; absolute: resuming
    never moves it). ``user`` and ``organisation`` say who is logged in, and
    where. Version 4 on: ``pushed_up_to`` is the highest ``local_seq`` of this
    replica the server has committed (0: none; None for a replica not enrolled
    yet); ``replica_secret`` is set only when the server gives an enrolled
    replica that has none (enrolled before version 4) its first secret.
    """

    TYPE_CODE: ClassVar[int] = 5
    FIELDS_SINCE: ClassVar[Mapping[str, int]] = MappingProxyType(
        {
            "pushed_up_to": 4,
            "replica_secret": 4,
            "accounts": 6,
            "audit_seq": 7,
            "audit_hash": 7,
            "client_newest": 7,
            "client_min": 7,
            "account_states": ACCOUNT_STATES_SINCE,
        }
    )

    session_token: str
    expires_at_ms: int
    user: str
    organisation: str
    pushed_up_to: int | None = None
    replica_secret: bytes | None = None
    accounts: tuple[AccountName, ...] | None = None
    audit_seq: int | None = None
    audit_hash: bytes | None = None
    client_newest: str | None = None
    client_min: str | None = None
    account_states: tuple[AccountState, ...] | None = None

    def __post_init__(self) -> None:
        _text("Authenticated", "session_token", self.session_token, MAX_TOKEN_LENGTH, secret=True)
        _int("Authenticated", "expires_at_ms", self.expires_at_ms, 0)
        _text("Authenticated", "user", self.user, MAX_NAME_LENGTH)
        _text("Authenticated", "organisation", self.organisation, MAX_ID_LENGTH)
        if self.pushed_up_to is not None:
            _int("Authenticated", "pushed_up_to", self.pushed_up_to, 0)
        _opt_blob(
            "Authenticated",
            "replica_secret",
            self.replica_secret,
            MIN_SECRET_BYTES,
            MAX_SECRET_BYTES,
        )
        if self.accounts is not None:
            _set(self, "accounts", _account_names(self.accounts))
        if (self.audit_seq is None) != (self.audit_hash is None):
            _bad("Authenticated", "audit_seq", "given with audit_hash, or neither", self.audit_seq)
        if self.audit_seq is not None:
            _int("Authenticated", "audit_seq", self.audit_seq, 0)
            _opt_blob("Authenticated", "audit_hash", self.audit_hash, HASH_BYTES, HASH_BYTES)
        _opt_version("Authenticated", "client_newest", self.client_newest)
        _opt_version("Authenticated", "client_min", self.client_min)
        if self.account_states is not None:
            states = _account_states(self.account_states)
            named = None if self.accounts is None else [a.username for a in self.accounts]
            if named != [state.username for state in states]:
                _bad(
                    "Authenticated",
                    "account_states",
                    "sent with accounts, one state for each account, in the same order",
                    f"{len(states)} states",
                )
            _set(self, "account_states", states)

    def __repr__(self) -> str:
        secret = "'***'" if self.replica_secret else None
        accounts = None if self.accounts is None else f"<{len(self.accounts)} accounts>"
        states = None if self.account_states is None else f"<{len(self.account_states)} states>"
        return (
            f"Authenticated(session_token='***', expires_at_ms={self.expires_at_ms}, "
            f"user={self.user!r}, organisation={self.organisation!r}, "
            f"pushed_up_to={self.pushed_up_to!r}, replica_secret={secret}, "
            f"accounts={accounts}, audit_seq={self.audit_seq!r}, "
            f"account_states={states})"
        )


def _account_names(value: object) -> tuple[AccountName, ...]:
    """Validate Authenticated.accounts: (username, display name) pairs, by username."""
    owner = "Authenticated"
    out: list[AccountName] = []
    for item in _items(owner, "accounts", value, allow_empty=True):
        if type(item) is not AccountName:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                _bad(owner, "accounts[]", "a (username, display_name) pair", item)
            item = AccountName(*item)
        _text(owner, "accounts[].username", item.username, MAX_NAME_LENGTH)
        _text(owner, "accounts[].display_name", item.display_name, MAX_NAME_LENGTH)
        if out and item.username <= out[-1].username:
            _bad(owner, "accounts", "in strictly ascending username order", item.username)
        out.append(item)
    return tuple(out)


def _account_states(value: object) -> tuple[AccountState, ...]:
    """Validate Authenticated.account_states: (username, disabled, password mark)
    triples, by username."""
    owner = "Authenticated"
    out: list[AccountState] = []
    for item in _items(owner, "account_states", value, allow_empty=True):
        if type(item) is not AccountState:
            if not isinstance(item, (tuple, list)) or len(item) != 3:
                _bad(owner, "account_states[]", "a (username, disabled, password_mark)", item)
            item = AccountState(*item)
        _text(owner, "account_states[].username", item.username, MAX_NAME_LENGTH)
        _bool(owner, "account_states[].disabled", item.disabled)
        _blob(
            owner,
            "account_states[].password_mark",
            item.password_mark,
            MIN_PASSWORD_MARK_BYTES,
            MAX_PASSWORD_MARK_BYTES,
        )
        out.append(item)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Enrol(Message):
    """Client → server: enrol this replica to the server and the session's organisation.

    ``device_name`` is a label for people (e.g. the laptop's name; may be empty).
    ``replica_id`` is an id the replica already uses, if any; the server may keep it or
    assign another.
    """

    TYPE_CODE: ClassVar[int] = 6

    device_name: str = ""
    replica_id: str | None = None

    def __post_init__(self) -> None:
        _text("Enrol", "device_name", self.device_name, MAX_NAME_LENGTH, min_len=0)
        _opt_text("Enrol", "replica_id", self.replica_id, MAX_ID_LENGTH)


@dataclass(frozen=True, slots=True)
class Enrolled(Message):
    """Server → client: the replica is bound to this server and this organisation.

    ``replica_secret`` (version 4 on) is the secret the replica proves at every
    later login; the server keeps only its hash, so it is sent this once.
    """

    TYPE_CODE: ClassVar[int] = 7
    FIELDS_SINCE: ClassVar[Mapping[str, int]] = MappingProxyType({"replica_secret": 4})

    replica_id: str
    server_id: str
    organisation: str
    replica_secret: bytes | None = None

    def __post_init__(self) -> None:
        _text("Enrolled", "replica_id", self.replica_id, MAX_ID_LENGTH)
        _text("Enrolled", "server_id", self.server_id, MAX_ID_LENGTH)
        _text("Enrolled", "organisation", self.organisation, MAX_ID_LENGTH)
        _opt_blob(
            "Enrolled", "replica_secret", self.replica_secret, MIN_SECRET_BYTES, MAX_SECRET_BYTES
        )

    def __repr__(self) -> str:
        secret = "'***'" if self.replica_secret else None
        return (
            f"Enrolled(replica_id={self.replica_id!r}, server_id={self.server_id!r}, "
            f"organisation={self.organisation!r}, replica_secret={secret})"
        )


@dataclass(frozen=True, slots=True)
class ProveServer(Message):
    """Client → server (version 4 on), right after Welcome: prove who you are.

    ``nonce`` is fresh random bytes; the server answers :class:`ServerProof`.
    """

    TYPE_CODE: ClassVar[int] = 8
    SINCE_VERSION: ClassVar[int] = 4

    nonce: bytes

    def __post_init__(self) -> None:
        _blob("ProveServer", "nonce", self.nonce, MIN_NONCE_BYTES, MAX_NONCE_BYTES)


@dataclass(frozen=True, slots=True)
class ServerProof(Message):
    """Server → client (version 4 on): the server's public key and its signature.

    ``signature`` is an Ed25519 signature by ``server_key`` over
    :func:`caresync.protocol.identity.server_proof_payload` of the client's
    nonce, the server id, the client's replica id and the TLS channel binding.
    The client compares ``server_key`` with the key it pinned at enrolment.
    """

    TYPE_CODE: ClassVar[int] = 9
    SINCE_VERSION: ClassVar[int] = 4

    server_key: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _blob("ServerProof", "server_key", self.server_key, SERVER_KEY_BYTES, SERVER_KEY_BYTES)
        _blob("ServerProof", "signature", self.signature, SIGNATURE_BYTES, SIGNATURE_BYTES)


@dataclass(frozen=True, slots=True)
class CopyRequest(Message):
    """Client → server: the next batch of the first copy, records after ``after_record_id``.

    ``after_record_id`` is ``None`` to start; to resume, the ``last_record_id`` of the
    last batch committed. ``batch_records`` is the most records the batch may hold.
    ``rulebook`` (version 3 on) is the fingerprint of the client's rulebook
    (:attr:`caresync.conflicts.Rulebook.fingerprint`): a server whose conflict index
    was computed by the same rulebook may send each record's index rows with it.
    ``batch_bytes`` (version 8 on): the most bytes the batch's records (with their
    rows and cards) may take, so that a batch is sized by what it holds; a record
    larger than that still comes, alone. ``None``: the frame size is the only bound.
    """

    TYPE_CODE: ClassVar[int] = 16
    FIELDS_SINCE: ClassVar[Mapping[str, int]] = MappingProxyType({"rulebook": 3, "batch_bytes": 8})

    after_record_id: str | None = None
    batch_records: int = DEFAULT_COPY_BATCH_RECORDS
    rulebook: str | None = None
    batch_bytes: int | None = None

    def __post_init__(self) -> None:
        _opt_text("CopyRequest", "after_record_id", self.after_record_id, MAX_ID_LENGTH)
        _int("CopyRequest", "batch_records", self.batch_records, 1, MAX_BATCH_ITEMS)
        _opt_text("CopyRequest", "rulebook", self.rulebook, MAX_FINGERPRINT_LENGTH)
        if self.batch_bytes is not None:
            _int("CopyRequest", "batch_bytes", self.batch_bytes, 1, MAX_MAX_FRAME_BYTES)


@dataclass(frozen=True, slots=True)
class CopyBatch(Message):
    """Server → client: one batch of the first copy, records in ascending id order.

    ``records`` have strictly ascending ids. ``last_record_id`` is where the next batch
    resumes: the last record's id, or the request's ``after_record_id`` when the batch
    is empty. ``done_records``/``done_bytes`` count the records (and their update bytes)
    with an id up to ``last_record_id``; ``total_records``/``total_bytes`` count every
    record the client may see. ``feed_checkpoint`` is the server's change-feed head
    when these records were read. ``final`` is true on the last batch; a batch that is
    not final holds at least one record.

    ``conflicts`` (version 3 on) is ``None`` when the server sends no conflict index
    rows (the client computes them), or every index row of the batch's records, in
    record order, computed by the rulebook the request named (a record with no row has
    no open conflict). Only a request that named a rulebook may get them.

    ``persons`` (version 5 on) comes with ``conflicts``: the person card of each
    record of the batch that has one, in record order (``None``: not sent).

    ``pairs`` (version :data:`COPY_PAIRS_SINCE` on) comes with ``persons``: every pair
    of the server's person index whose later record (``second``) is in this batch
    and whose other record the receiver holds once the batch is stored, ordered by
    ``(second, first)``, each once (``None``: not sent; the receiver finds the pairs
    itself). A record of the batch a pair names has a card in ``persons``; ``first``
    is either in the batch or comes before its first record (an earlier batch).

    ``feed_epoch`` (version :data:`FEED_EPOCHS_SINCE` on): the feed epoch of
    ``feed_checkpoint`` (``None``: not sent).

    ``in_parts`` (version :data:`RECORD_PARTS_SINCE` on): the id of the next record,
    which with its rows and card is larger than one frame to this client: the batch
    holds no record and is not final, and the client takes that record in parts
    (:class:`RecordPartRequest`), then asks for the records after it.
    """

    TYPE_CODE: ClassVar[int] = 17
    FIELDS_SINCE: ClassVar[Mapping[str, int]] = MappingProxyType(
        {
            "conflicts": 3,
            "persons": 5,
            "pairs": COPY_PAIRS_SINCE,
            "feed_epoch": FEED_EPOCHS_SINCE,
            "in_parts": RECORD_PARTS_SINCE,
        }
    )

    records: tuple[CopyRecord, ...]
    done_records: int
    total_records: int
    done_bytes: int
    total_bytes: int
    last_record_id: str | None
    feed_checkpoint: int
    final: bool
    conflicts: tuple[CopyConflict, ...] | None = None
    persons: tuple[CopyPerson, ...] | None = None
    pairs: tuple[CopyPair, ...] | None = None
    feed_epoch: int | None = None
    in_parts: str | None = None

    def __post_init__(self) -> None:
        owner = "CopyBatch"
        items = _items(owner, "records", self.records, allow_empty=True)
        fast = _plain_copy_records(items)
        out: list[CopyRecord] = [] if fast is None else fast
        previous: str | None = fast[-1].record_id if fast else None
        for item in items if fast is None else ():
            if type(item) is not CopyRecord:
                if not isinstance(item, (tuple, list)) or len(item) != 2:
                    _bad(owner, "records[]", "a (record_id, update) pair", item)
                item = CopyRecord(*item)
            _check_record_id(owner, "records[].record_id", item.record_id)
            _update(owner, "records[].update", item.update)
            if previous is not None and item.record_id <= previous:
                _bad(owner, "records", "in strictly ascending record_id order", item.record_id)
            previous = item.record_id
            out.append(item)
        _set(self, "records", tuple(out))
        _int(owner, "done_records", self.done_records, len(out))
        _int(owner, "total_records", self.total_records, self.done_records)
        _int(owner, "done_bytes", self.done_bytes, 0)
        _int(owner, "total_bytes", self.total_bytes, self.done_bytes)
        _opt_text(owner, "last_record_id", self.last_record_id, MAX_ID_LENGTH)
        if previous is not None and self.last_record_id != previous:
            _bad(owner, "last_record_id", f"the last record's id {previous!r}", self.last_record_id)
        _int(owner, "feed_checkpoint", self.feed_checkpoint, 0)
        _opt_epoch(owner, self.feed_epoch)
        _bool(owner, "final", self.final)
        if self.in_parts is not None:
            _check_record_id(owner, "in_parts", self.in_parts)
            if out or self.final:
                raise LocalProtocolError(
                    "CopyBatch: a batch naming a record to copy in parts holds no record "
                    "and is not final"
                )
            if self.last_record_id is not None and self.in_parts <= self.last_record_id:
                _bad(owner, "in_parts", f"a record after {self.last_record_id!r}", self.in_parts)
        elif not self.final and not out:
            raise LocalProtocolError("CopyBatch: a batch that is not final must hold a record")
        if self.conflicts is not None:
            _set(self, "conflicts", _copy_conflicts(self.conflicts, out))
        if self.persons is not None:
            if self.conflicts is None:
                raise LocalProtocolError("CopyBatch: person cards come only with conflict rows")
            _set(self, "persons", _copy_persons(self.persons, out))
        if self.pairs is not None:
            if self.persons is None:
                raise LocalProtocolError("CopyBatch: person pairs come only with person cards")
            _set(self, "pairs", _copy_pairs(self.pairs, out, self.persons))


def _plain_copy_records(items: tuple[Any, ...]) -> list[CopyRecord] | None:
    """A CopyBatch's records checked in a few passes of builtins, the common case
    (every record a (str, bytes) pair, each id printable of 1 to MAX_ID_LENGTH
    characters, ascending, each update non-empty bytes): as CopyRecords. None if
    anything is otherwise, for the record-by-record checks that say what is wrong.
    The same rules as those checks, for 2,000 records a batch at C speed."""
    if not items:
        return []
    if not {type(item) for item in items} <= {tuple, CopyRecord}:
        return None
    if {len(item) for item in items} != {2}:
        return None
    ids, updates = zip(*items, strict=True)
    if {type(record_id) for record_id in ids} != {str} or {type(u) for u in updates} != {bytes}:
        return None
    if not 0 < min(map(len, ids)) <= max(map(len, ids)) <= MAX_ID_LENGTH:
        return None
    if not all(map(str.isprintable, ids)) or not all(updates):
        return None
    if not all(map(operator.lt, ids, ids[1:])):
        return None
    return list(map(CopyRecord, ids, updates))


def _copy_persons(value: object, records: list[CopyRecord]) -> tuple[CopyPerson, ...]:
    """Validate a CopyBatch's person cards: at most one per record of the batch, in order.

    The card's content is the receiver's to check (it parses it as untrusted).
    """
    owner = "CopyBatch"
    items = _items(owner, "persons", value, allow_empty=True)
    fast = _plain_copy_persons(items, records)
    if fast is not None:
        return fast
    order = {record.record_id: index for index, record in enumerate(records)}
    out: list[CopyPerson] = []
    previous = -1
    for item in items:
        if type(item) is not CopyPerson:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                _bad(owner, "persons[]", "a (record_id, card) pair", item)
            item = CopyPerson(*item)
        position = order.get(item.record_id) if type(item.record_id) is str else None
        if position is None:
            _bad(owner, "persons[].record_id", "the id of a record in this batch", item.record_id)
        _update(owner, "persons[].card", item.card)
        if position <= previous:
            _bad(owner, "persons", "in record order, one card per record", item.record_id)
        previous = position
        out.append(item)
    return tuple(out)


def _plain_copy_persons(
    items: tuple[Any, ...], records: list[CopyRecord]
) -> tuple[CopyPerson, ...] | None:
    """A CopyBatch's cards in a few passes of builtins, the common case (a card for
    every record of the batch, in its order, each non-empty bytes): as CopyPersons.
    None otherwise, for the card-by-card checks (the same rules) that say what is wrong."""
    if len(items) != len(records) or not items:
        return None
    if not {type(item) for item in items} <= {tuple, CopyPerson}:
        return None
    if {len(item) for item in items} != {2}:
        return None
    ids, cards = zip(*items, strict=True)
    if {type(record_id) for record_id in ids} != {str}:
        return None
    if {type(card) for card in cards} != {bytes} or not all(cards):
        return None
    if not all(map(operator.eq, ids, [record.record_id for record in records])):
        return None
    if {type(item) for item in items} == {CopyPerson}:
        return items  # as a sender built them: not made again
    return tuple(map(CopyPerson, ids, cards))


def _copy_pairs(
    value: object, records: list[CopyRecord], persons: tuple[CopyPerson, ...]
) -> tuple[CopyPair, ...]:
    """Validate a CopyBatch's person pairs: each ``(first, second)`` with
    ``first < second``, ``second`` a record of the batch with a card, ``first`` one
    too or an id before the batch's first record; ordered by ``(second, first)``,
    each once. Whether the receiver holds an earlier ``first`` is its own check."""
    owner = "CopyBatch"
    items = _items(owner, "pairs", value, allow_empty=True)
    carded = {person.record_id for person in persons}
    start = records[0].record_id if records else ""
    out: list[CopyPair] = []
    previous: tuple[str, str] | None = None
    for item in items:
        if type(item) is not CopyPair:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                _bad(owner, "pairs[]", "a (first, second) pair of record ids", item)
            item = CopyPair(*item)
        first, second = item
        if type(second) is not str or second not in carded:
            _bad(owner, "pairs[].second", "a record of this batch with a person card", second)
        _check_record_id(owner, "pairs[].first", first)
        if not first < second:
            _bad(owner, "pairs[].first", f"an id before its second, {second!r}", first)
        if first >= start and first not in carded:
            _bad(
                owner,
                "pairs[].first",
                "a record of this batch with a person card, or one of an earlier batch",
                first,
            )
        if previous is not None and (second, first) <= previous:
            _bad(owner, "pairs", "ordered by (second, first), each once", item)
        previous = (second, first)
        out.append(item)
    return tuple(out)


def _copy_conflicts(value: object, records: list[CopyRecord]) -> tuple[CopyConflict, ...]:
    """Validate a CopyBatch's conflict rows: each names a record of the batch, in order."""
    order = {record.record_id: index for index, record in enumerate(records)}
    return _conflict_rows("CopyBatch", value, order, "a record in this batch")


def _conflict_rows(
    owner: str, value: object, order: Mapping[str, int], what: str
) -> tuple[CopyConflict, ...]:
    """Validate conflict rows: each names a record of ``order``, in that order, each id
    once per record."""
    items = _items(owner, "conflicts", value, allow_empty=True)
    out: list[CopyConflict] = []
    previous: tuple[int, str] | None = None
    for item in items:
        if type(item) is not CopyConflict:
            if not isinstance(item, (tuple, list)) or len(item) != 6:
                _bad(
                    owner,
                    "conflicts[]",
                    "a (record_id, id, kind, subject, severity, payload) tuple",
                    item,
                )
            item = CopyConflict(*item)
        position = order.get(item.record_id) if type(item.record_id) is str else None
        if position is None:
            _bad(owner, "conflicts[].record_id", f"the id of {what}", item.record_id)
        # The bounds of the store's ConflictRow, so that every stored row can be sent.
        _text(owner, "conflicts[].id", item.id, MAX_NAME_LENGTH, printable=False)
        _text(owner, "conflicts[].kind", item.kind, MAX_NAME_LENGTH, printable=False)
        _text(owner, "conflicts[].subject", item.subject, MAX_MESSAGE_LENGTH, printable=False)
        _text(owner, "conflicts[].severity", item.severity, MAX_NAME_LENGTH, printable=False)
        _update(owner, "conflicts[].payload", item.payload)
        key = (position, item.id)
        if previous is not None and key <= previous:
            _bad(owner, "conflicts", "in record order, each id once per record", item.id)
        previous = key
        out.append(item)
    return tuple(out)


def _compacted(version: int, body: dict[str, object]) -> dict[str, object]:
    """``body`` with its conflict rows written compactly, from version 11 on."""
    rows = body.get("conflicts")
    if version >= COMPACT_ROWS_SINCE and isinstance(rows, tuple):
        body["conflicts"] = compact_rows(rows)
    return body


def _expanded(version: int, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with its compact conflict rows as they are stored, from version 11 on."""
    if version >= COMPACT_ROWS_SINCE and body.get("conflicts") is not None:
        return {**body, "conflicts": expand_rows(body["conflicts"])}
    return body


def _checked(
    owner: str, checked: object, conflicts: object, items: tuple[FeedItem, ...]
) -> tuple[tuple[CheckedState, ...] | None, tuple[CopyConflict, ...] | None]:
    """Validate a batch's checked states and their conflict rows (version 8 on).

    Both or neither. Each checked state names a record of the batch's items, at
    most once, in the order the records first appear; each row names a checked
    record, in that order. A card's content and a state vector's encoding are the
    receiver's to check (it parses both as untrusted).
    """
    if checked is None and conflicts is None:
        return None, None
    if checked is None or conflicts is None:
        raise LocalProtocolError(f"{owner}: checked and conflicts come together")
    # Each record's position among the batch's records, in order of first appearance
    # (a dict keeps the order keys were first inserted in).
    names = dict.fromkeys(map(_RECORD_ID, items))
    first_seen = dict(zip(names, range(len(names)), strict=True))
    out: list[CheckedState] = []
    append = out.append
    order: dict[str, int] = {}
    previous = -1
    for state in _items(owner, "checked", checked, allow_empty=True):
        if type(state) is not CheckedState:
            if not isinstance(state, (tuple, list)) or len(state) != 3:
                _bad(owner, "checked[]", "a (record_id, state_vector, card) triple", state)
            state = _tuple_new(CheckedState, state)  # CheckedState(*state)
        record_id, vector, card = state
        position = first_seen.get(record_id) if type(record_id) is str else None
        if position is None:
            _bad(owner, "checked[].record_id", "the id of a record in this batch", record_id)
        if position <= previous:
            _bad(owner, "checked", "in batch order, one per record", record_id)
        previous = position
        # The common case in one expression; else each check, the failing one saying why.
        if not (
            type(vector) is bytes
            and 0 < len(vector) <= MAX_STATE_VECTOR_BYTES
            and (card is None or (type(card) is bytes and card))
        ):
            _blob(owner, "checked[].state_vector", vector, 1, MAX_STATE_VECTOR_BYTES)
            if card is not None:
                _update(owner, "checked[].card", card)
        order[record_id] = len(order)
        append(state)
    return tuple(out), _conflict_rows(owner, conflicts, order, "a checked record")


@dataclass(frozen=True, slots=True)
class PullRequest(Message):
    """Client → server: change-feed entries after ``after_seq``, at most ``limit``.

    The server leaves out the replica's own updates (it holds them) unless
    ``include_own`` (version 4 on) asks for them: a replica restored from an
    older copy of itself lacks what it pushed after that copy was made.
    ``rulebook`` (version 8 on) is the client's rulebook fingerprint: a server
    whose index it computed may send checked states and conflict rows.
    ``hub_since`` (version :data:`HUB_CHANGES_SINCE` on): the server's hub mark of the
    hub report the client holds (:attr:`HubReport.mark`; 0: it holds none), so that
    the report ending the pull carries only what changed since (``None``: not sent).
    ``feed_epoch`` (version :data:`FEED_EPOCHS_SINCE` on): the feed epoch the server
    gave with ``after_seq`` (``None``: the client holds none, as after an older
    server); a server that labels ``after_seq`` otherwise, or whose feed ends before
    it, refuses the pull with ``feed_diverged``.
    """

    TYPE_CODE: ClassVar[int] = 18
    FIELDS_SINCE: ClassVar[Mapping[str, int]] = MappingProxyType(
        {
            "include_own": 4,
            "rulebook": 8,
            "hub_since": HUB_CHANGES_SINCE,
            "feed_epoch": FEED_EPOCHS_SINCE,
        }
    )

    after_seq: int
    limit: int = DEFAULT_PULL_LIMIT
    include_own: bool | None = None
    rulebook: str | None = None
    hub_since: int | None = None
    feed_epoch: int | None = None

    def __post_init__(self) -> None:
        _int("PullRequest", "after_seq", self.after_seq, 0)
        _int("PullRequest", "limit", self.limit, 1, MAX_BATCH_ITEMS)
        if self.include_own is not None:
            _bool("PullRequest", "include_own", self.include_own)
        _opt_text("PullRequest", "rulebook", self.rulebook, MAX_FINGERPRINT_LENGTH)
        if self.hub_since is not None:
            _int("PullRequest", "hub_since", self.hub_since, 0)
        _opt_epoch("PullRequest", self.feed_epoch)


@dataclass(frozen=True, slots=True)
class PullBatch(Message):
    """Server → client: change-feed entries, in strictly ascending ``seq`` order.

    ``checkpoint`` is how far this batch covers the feed (at least the last item's
    seq; entries the client may not see are skipped, so it may be more): the client
    stores it and pulls after it next. ``head_seq`` is the feed's head; ``more`` is
    true while ``checkpoint < head_seq``.

    ``checked`` and ``conflicts`` (version 8 on, both or neither; ``None``: not
    sent): for some of the batch's records, the state the server's conflict rows
    and person card describe, and those rows (see :class:`CheckedState`). Only a
    request that named a rulebook may get them.

    ``entries`` (version 10 on; ``None``: as many as ``items``): how many feed entries
    the batch stands for. From version 10 an item may carry several feed entries of
    one record, merged into one update, with the seq of the last of them.

    ``feed_epoch`` (version :data:`FEED_EPOCHS_SINCE` on): the feed epoch of
    ``checkpoint``, which the client keeps with it (``None``: not sent).
    """

    TYPE_CODE: ClassVar[int] = 19
    FIELDS_SINCE: ClassVar[Mapping[str, int]] = MappingProxyType(
        {
            "checked": 8,
            "conflicts": 8,
            "entries": COALESCED_PULL_SINCE,
            "feed_epoch": FEED_EPOCHS_SINCE,
        }
    )

    items: tuple[FeedItem, ...]
    checkpoint: int
    head_seq: int
    checked: tuple[CheckedState, ...] | None = None
    conflicts: tuple[CopyConflict, ...] | None = None
    entries: int | None = None
    feed_epoch: int | None = None

    def __post_init__(self) -> None:
        owner = "PullBatch"
        items = _numbered_items(owner, self.items, FeedItem, allow_empty=True)
        _set(self, "items", items)
        _int(owner, "checkpoint", self.checkpoint, items[-1].seq if items else 0)
        _int(owner, "head_seq", self.head_seq, self.checkpoint)
        checked, conflicts = _checked(owner, self.checked, self.conflicts, items)
        _set(self, "checked", checked)
        _set(self, "conflicts", conflicts)
        if self.entries is not None:
            # Each feed entry has a seq of its own, none past the checkpoint.
            _int(owner, "entries", self.entries, len(items), self.checkpoint)
        _opt_epoch(owner, self.feed_epoch)

    @classmethod
    def from_body(cls, version: int, body: dict[str, Any]) -> Message:
        """As :meth:`Message.from_body`; from version 11 the rows' payloads are expanded."""
        return cls(**_expanded(version, body))

    def to_body(self, version: int = PROTOCOL_VERSION) -> dict[str, object]:
        """As :meth:`Message.to_body`; from version 11 the rows' payloads are compact."""
        return _compacted(version, Message.to_body(self, version))

    @property
    def feed_entries(self) -> int:
        """How many feed entries the batch stands for (``entries``, or its items)."""
        return len(self.items) if self.entries is None else self.entries

    @property
    def more(self) -> bool:
        """True while the feed holds entries past ``checkpoint``: pull again."""
        return self.checkpoint < self.head_seq


@dataclass(frozen=True, slots=True)
class PushBatch(Message):
    """Client → server: outbox entries, in strictly ascending ``local_seq`` order.

    The server commits them, then answers :class:`PushAck`. Entries are keyed on
    (replica, ``local_seq``), so a batch sent again changes nothing.
    """

    TYPE_CODE: ClassVar[int] = 20

    items: tuple[PushItem, ...]

    def __post_init__(self) -> None:
        _set(self, "items", _numbered_items("PushBatch", self.items, PushItem, allow_empty=False))


@dataclass(frozen=True, slots=True)
class PushAck(Message):
    """Server → client: every pushed entry up to ``up_to_local_seq`` is committed."""

    TYPE_CODE: ClassVar[int] = 21

    up_to_local_seq: int

    def __post_init__(self) -> None:
        _int("PushAck", "up_to_local_seq", self.up_to_local_seq, 1)


@dataclass(frozen=True, slots=True)
class Subscribe(Message):
    """Client → server: forward new feed entries after ``after_seq`` as they commit.

    ``rulebook`` (version 8 on): the client's rulebook fingerprint, as in
    :class:`PullRequest`; live entries may then come with checked states.
    """

    TYPE_CODE: ClassVar[int] = 22
    FIELDS_SINCE: ClassVar[Mapping[str, int]] = MappingProxyType({"rulebook": 8})

    after_seq: int
    rulebook: str | None = None

    def __post_init__(self) -> None:
        _int("Subscribe", "after_seq", self.after_seq, 0)
        _opt_text("Subscribe", "rulebook", self.rulebook, MAX_FINGERPRINT_LENGTH)


@dataclass(frozen=True, slots=True)
class LiveUpdate(Message):
    """Server → subscribed client: one new feed entry, in strictly ascending ``seq``."""

    TYPE_CODE: ClassVar[int] = 23

    seq: int
    record_id: str
    update: bytes

    def __post_init__(self) -> None:
        _int("LiveUpdate", "seq", self.seq, 1)
        _check_record_id("LiveUpdate", "record_id", self.record_id)
        _update("LiveUpdate", "update", self.update)


@dataclass(frozen=True, slots=True)
class OutboxReport(Message):
    """Client → server (protocol version 2 on): how much of its work waits to be pushed.

    Sent once per session, right after login, so the server can show operators
    which laptops carry unsynced work and since when. ``pending`` counts the
    outbox entries the server has not acknowledged; ``oldest_pending_ms`` is
    when the oldest was written (milliseconds since the Unix epoch), ``None``
    exactly when ``pending`` is 0. No reply.
    """

    TYPE_CODE: ClassVar[int] = 24
    SINCE_VERSION: ClassVar[int] = 2

    pending: int
    oldest_pending_ms: int | None

    def __post_init__(self) -> None:
        _int("OutboxReport", "pending", self.pending, 0)
        if self.oldest_pending_ms is not None:
            _int("OutboxReport", "oldest_pending_ms", self.oldest_pending_ms, 0)
        if (self.pending == 0) != (self.oldest_pending_ms is None):
            raise LocalProtocolError(
                "OutboxReport: oldest_pending_ms is None exactly when pending is 0, got "
                f"pending={self.pending!r}, oldest_pending_ms={self.oldest_pending_ms!r}"
            )


@dataclass(frozen=True, slots=True)
class LiveBatch(Message):
    """Server → subscribed client (protocol version 3 on): several new feed entries.

    What the :class:`LiveUpdate` messages of its items would say, in one frame:
    entries committed together, or queued while the connection was busy, cost one
    frame instead of one each. Items in strictly ascending ``seq``; at least one.
    A client takes each item in as a ``LiveUpdate``.

    ``checked`` and ``conflicts`` (version 8 on) as in :class:`PullBatch`, only to
    a client that named its rulebook in :class:`Subscribe`; such a batch may hold
    one item, and a client gives it whole as its event.

    ``feed_epoch`` (version :data:`FEED_EPOCHS_SINCE` on): the feed epoch of the last
    item's seq, which the client keeps with it as its checkpoint (``None``: not sent).
    """

    TYPE_CODE: ClassVar[int] = 25
    SINCE_VERSION: ClassVar[int] = 3
    FIELDS_SINCE: ClassVar[Mapping[str, int]] = MappingProxyType(
        {"checked": 8, "conflicts": 8, "feed_epoch": FEED_EPOCHS_SINCE}
    )

    items: tuple[FeedItem, ...]
    checked: tuple[CheckedState, ...] | None = None
    conflicts: tuple[CopyConflict, ...] | None = None
    feed_epoch: int | None = None

    def __post_init__(self) -> None:
        items = _numbered_items("LiveBatch", self.items, FeedItem, allow_empty=False)
        _set(self, "items", items)
        checked, conflicts = _checked("LiveBatch", self.checked, self.conflicts, items)
        _set(self, "checked", checked)
        _set(self, "conflicts", conflicts)
        _opt_epoch("LiveBatch", self.feed_epoch)

    @classmethod
    def from_body(cls, version: int, body: dict[str, Any]) -> Message:
        """As :meth:`Message.from_body`; from version 11 the rows' payloads are expanded."""
        return cls(**_expanded(version, body))

    def to_body(self, version: int = PROTOCOL_VERSION) -> dict[str, object]:
        """As :meth:`Message.to_body`; from version 11 the rows' payloads are compact."""
        return _compacted(version, Message.to_body(self, version))


@dataclass(frozen=True, slots=True)
class AuditBatch(Message):
    """Client → server (protocol version 7 on): entries of the replica's own audit chain.

    In ascending number, each holding the hash of the one before; at most
    :data:`MAX_AUDIT_ITEMS`. The server keeps them (see
    :meth:`~caresync.storage.Store.receive_audit`), then answers :class:`AuditAck`.
    """

    TYPE_CODE: ClassVar[int] = 26
    SINCE_VERSION: ClassVar[int] = 7

    entries: tuple[AuditEntry, ...]

    def __post_init__(self) -> None:
        owner = "AuditBatch"
        items = _items(owner, "entries", self.entries, allow_empty=False)
        if len(items) > MAX_AUDIT_ITEMS:
            _bad(owner, "entries", f"at most {MAX_AUDIT_ITEMS} entries", f"{len(items)} entries")
        out: list[AuditEntry] = []
        for item in items:
            try:
                entry = item if type(item) is AuditEntry else AuditEntry.from_wire(item)
                check_entry(entry)
            except AuditError as exc:
                _bad(owner, "entries[]", f"an audit entry whose hash holds ({exc})", "it")
            if out and (entry.seq != out[-1].seq + 1 or entry.prev_hash != out[-1].hash):
                _bad(owner, "entries", "one chain, in ascending number", entry.seq)
            out.append(entry)
        _set(self, "entries", tuple(out))

    def to_body(self, version: int = PROTOCOL_VERSION) -> dict[str, object]:
        """The entries as lists (their wire form)."""
        return {"entries": [entry.to_wire() for entry in self.entries]}


@dataclass(frozen=True, slots=True)
class AuditAck(Message):
    """Server → client (protocol version 7 on): every entry of the replica's chain up to
    ``up_to_seq`` is committed on the server."""

    TYPE_CODE: ClassVar[int] = 27
    SINCE_VERSION: ClassVar[int] = 7

    up_to_seq: int

    def __post_init__(self) -> None:
        _int("AuditAck", "up_to_seq", self.up_to_seq, 1)


@dataclass(frozen=True, slots=True)
class RecordPartRequest(Message):
    """Client → server (protocol version :data:`RECORD_PARTS_SINCE` on): the next part
    of a record a first copy takes in parts (:attr:`CopyBatch.in_parts`).

    ``state_vector`` is the Yjs state vector of what the client holds of the record
    (the parts taken so far, and anything it held before): the server answers with a
    :class:`RecordPart` that continues the record from there.
    """

    TYPE_CODE: ClassVar[int] = 28
    SINCE_VERSION: ClassVar[int] = RECORD_PARTS_SINCE

    record_id: str
    state_vector: bytes

    def __post_init__(self) -> None:
        _check_record_id("RecordPartRequest", "record_id", self.record_id)
        _blob("RecordPartRequest", "state_vector", self.state_vector, 1, MAX_PART_VECTOR_BYTES)


@dataclass(frozen=True, slots=True)
class RecordPart(Message):
    """Server → client (protocol version :data:`RECORD_PARTS_SINCE` on): a part of a
    record, answering :class:`RecordPartRequest`.

    ``updates`` continue the record from the state vector the request named, in order:
    each adds one Yjs client's next items (a simple update). ``final`` says they hold
    the rest of the record as the server read it; a part that is not final holds at
    least one update.
    """

    TYPE_CODE: ClassVar[int] = 29
    SINCE_VERSION: ClassVar[int] = RECORD_PARTS_SINCE

    record_id: str
    updates: tuple[bytes, ...]
    final: bool

    def __post_init__(self) -> None:
        owner = "RecordPart"
        _check_record_id(owner, "record_id", self.record_id)
        items = _items(owner, "updates", self.updates, allow_empty=True)
        for item in items:
            _update(owner, "updates[]", item)
        _set(self, "updates", items)
        _bool(owner, "final", self.final)
        if not self.final and not items:
            raise LocalProtocolError("RecordPart: a part that is not final must hold an update")


HUB_ITEM_STATES = frozenset({"pending", "held", "sent", "failed"})
"""The states of a listed summary (every version from 7)."""
HUB_REMOVED = "removed"
"""The state of an item of a change report (version :data:`HUB_CHANGES_SINCE` on): the
patient is no longer listed (unmarked, or moved to another organisation)."""
MAX_HUB_REASON_LENGTH = 512
"""Longest reason a :class:`HubItem` carries, in characters."""


class HubItem(NamedTuple):
    """Where one patient's health-hub summary stands, as the server knows it (version 7 on).

    ``state`` is ``pending``, ``held``, ``sent`` or ``failed``; ``version`` the
    version of the record it is about; ``reason`` why it is held or failed (or
    what a retried attempt met); ``last_attempt_ms`` when it was last sent.

    In a change report (``HubReport.whole`` False, version
    :data:`HUB_CHANGES_SINCE` on) the state may also be ``removed``: the patient is
    no longer listed; such an item has no reason and no attempt time.
    """

    record_id: str
    state: str
    version: int
    reason: str | None
    last_attempt_ms: int | None


@dataclass(frozen=True, slots=True)
class HubReport(Message):
    """Server → client (protocol version 7 on): the organisation's health-hub summaries.

    Sent after the last :class:`PullBatch` of every pull (the one whose
    checkpoint reaches the head), in as many frames as it takes: ``final`` marks
    the last. Items in strictly ascending ``record_id``; no reply.

    ``mark`` and ``whole`` (version :data:`HUB_CHANGES_SINCE` on, both or neither;
    ``None``: an older frame, whose items are the whole list): the server's hub mark
    the report brings the client to, which it names in its next
    :attr:`PullRequest.hub_since`; and whether the items are the whole list (True:
    replace what is held) or the summaries changed since the ``hub_since`` of the
    pull (False: merge; an item ``removed`` drops its patient). Every frame of one
    report carries the same two.
    """

    TYPE_CODE: ClassVar[int] = 40
    SINCE_VERSION: ClassVar[int] = 7
    FIELDS_SINCE: ClassVar[Mapping[str, int]] = MappingProxyType(
        {"mark": HUB_CHANGES_SINCE, "whole": HUB_CHANGES_SINCE}
    )

    items: tuple[HubItem, ...]
    final: bool
    mark: int | None = None
    whole: bool | None = None

    def __post_init__(self) -> None:
        owner = "HubReport"
        _bool(owner, "final", self.final)
        if (self.mark is None) != (self.whole is None):
            raise LocalProtocolError("HubReport: mark and whole come together")
        if self.mark is not None:
            _int(owner, "mark", self.mark, 0)
            _bool(owner, "whole", self.whole)
        # Only a change report may say a patient left the list.
        states = HUB_ITEM_STATES if self.whole is not False else _HUB_CHANGE_STATES
        out: list[HubItem] = []
        for item in _items(owner, "items", self.items, allow_empty=True):
            if type(item) is not HubItem:
                if not isinstance(item, (tuple, list)) or len(item) != 5:
                    _bad(owner, "items[]", "a (record_id, state, version, reason, at) tuple", item)
                item = HubItem(*item)
            _check_record_id(owner, "items[].record_id", item.record_id)
            if type(item.state) is not str or item.state not in states:
                _bad(owner, "items[].state", f"one of {sorted(states)}", item.state)
            _int(owner, "items[].version", item.version, 1)
            _opt_text(owner, "items[].reason", item.reason, MAX_HUB_REASON_LENGTH)
            if item.last_attempt_ms is not None:  # a time a calendar can show (≤ year 6400)
                _int(owner, "items[].last_attempt_ms", item.last_attempt_ms, 0, 2**47)
            if item.state == HUB_REMOVED and (
                item.reason is not None or item.last_attempt_ms is not None
            ):
                _bad(owner, "items[]", "a removed item without reason or attempt time", item)
            if out and item.record_id <= out[-1].record_id:
                _bad(owner, "items", "in strictly ascending record_id order", item.record_id)
            out.append(item)
        _set(self, "items", tuple(out))

    @classmethod
    def from_body(cls, version: int, body: dict[str, Any]) -> Message:
        """As :meth:`Message.from_body`; a frame of version :data:`HUB_CHANGES_SINCE` on
        must say its mark and whether it is whole."""
        if version >= HUB_CHANGES_SINCE and body.get("mark") is None:
            raise LocalProtocolError(
                f"HubReport: a version {version} frame carries its mark and whether it is whole"
            )
        return cls(**body)

    def to_body(self, version: int = PROTOCOL_VERSION) -> dict[str, object]:
        """As :meth:`Message.to_body`; a frame of version :data:`HUB_CHANGES_SINCE` on
        carries its mark."""
        if version >= HUB_CHANGES_SINCE and self.mark is None:
            raise LocalProtocolError(
                f"HubReport: a version {version} frame carries its mark and whether it is whole"
            )
        return Message.to_body(self, version)

    @property
    def changes_only(self) -> bool:
        """True for a change report (merge into what is held); False for the whole list."""
        return self.whole is False


_HUB_CHANGE_STATES = HUB_ITEM_STATES | {HUB_REMOVED}


_EMPTY_DETAIL: Mapping[str, DetailValue] = MappingProxyType({})

# Type codes of the requests an Error may answer (see caresync.protocol.states.REQUESTS).
_REQUEST_CODES = frozenset({6, 16, 18, 20, 26, 28})


@dataclass(frozen=True, slots=True)
class Error(Message):
    """Either way: something went wrong; see :mod:`caresync.protocol.errors` for codes.

    A ``fatal`` error ends the connection: its sender closes after it. A non-fatal one
    refuses one request, named by its type code in ``in_reply_to``, and the
    connection stays usable. ``detail`` holds machine-readable facts (e.g. both
    server ids for ``wrong_server``).
    """

    TYPE_CODE: ClassVar[int] = 126
    FROZEN_LAYOUT: ClassVar[bool] = True

    code: str
    message: str
    fatal: bool = True
    detail: Mapping[str, DetailValue] = field(default_factory=lambda: _EMPTY_DETAIL)
    in_reply_to: int | None = None

    def __post_init__(self) -> None:
        owner = "Error"
        if isinstance(self.code, str) and type(self.code) is not str:
            _set(self, "code", str(self.code))  # an ErrorCode member: keep the plain str
        if type(self.code) is not str or not _CODE_RE.fullmatch(self.code):
            _bad(owner, "code", "a snake_case code of 1 to 64 characters", self.code)
        _text(owner, "message", self.message, MAX_MESSAGE_LENGTH, min_len=0, printable=False)
        _bool(owner, "fatal", self.fatal)
        detail = self.detail
        if not isinstance(detail, Mapping) or len(detail) > MAX_DETAIL_ENTRIES:
            _bad(owner, "detail", f"a map of at most {MAX_DETAIL_ENTRIES} entries", detail)
        for key, value in detail.items():
            _text(owner, "detail key", key, _MAX_DETAIL_KEY)
            if value is None or type(value) is bool:
                continue
            if type(value) is int:
                _int(owner, f"detail[{key!r}]", value, -MAX_SEQ - 1)
            else:
                _text(
                    owner, f"detail[{key!r}]", value, _MAX_DETAIL_TEXT, min_len=0, printable=False
                )
        _set(self, "detail", MappingProxyType(dict(detail)))
        if self.in_reply_to is not None and self.in_reply_to not in _REQUEST_CODES:
            _bad(
                owner,
                "in_reply_to",
                f"None or a request type code {sorted(_REQUEST_CODES)}",
                self.in_reply_to,
            )
        if not self.fatal and self.in_reply_to is None:
            raise LocalProtocolError("Error: a non-fatal error must name the request it refuses")

    def __hash__(self) -> int:
        return hash(
            (
                self.code,
                self.message,
                self.fatal,
                tuple(sorted(self.detail.items())),
                self.in_reply_to,
            )
        )

    def to_body(self, version: int = PROTOCOL_VERSION) -> dict[str, object]:
        """The message's fields as a body map (``detail`` as a plain dict)."""
        return {
            "code": self.code,
            "message": self.message,
            "fatal": self.fatal,
            "detail": dict(self.detail),
            "in_reply_to": self.in_reply_to,
        }


@dataclass(frozen=True, slots=True)
class Goodbye(Message):
    """Either way: a polite close; the sender sends nothing more."""

    TYPE_CODE: ClassVar[int] = 127
    FROZEN_LAYOUT: ClassVar[bool] = True

    reason: str = ""

    def __post_init__(self) -> None:
        _text("Goodbye", "reason", self.reason, MAX_MESSAGE_LENGTH, min_len=0, printable=False)


def _registry(classes: Iterable[type[Message]]) -> Mapping[int, type[Message]]:
    table: dict[int, type[Message]] = {}
    for cls in classes:
        if cls.TYPE_CODE in table:  # pragma: no cover - a programming error, caught at import
            raise RuntimeError(f"duplicate type code {cls.TYPE_CODE}")
        table[cls.TYPE_CODE] = cls
    return MappingProxyType(table)


MESSAGE_TYPES: Mapping[int, type[Message]] = _registry(
    [
        Hello,
        Welcome,
        Authenticate,
        ResumeSession,
        Authenticated,
        Enrol,
        Enrolled,
        ProveServer,
        ServerProof,
        CopyRequest,
        CopyBatch,
        PullRequest,
        PullBatch,
        PushBatch,
        PushAck,
        Subscribe,
        LiveUpdate,
        OutboxReport,
        LiveBatch,
        AuditBatch,
        AuditAck,
        RecordPartRequest,
        RecordPart,
        HubReport,
        Error,
        Goodbye,
    ]
)
"""Every message class, by its wire type code."""
