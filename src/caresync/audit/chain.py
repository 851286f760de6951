"""Audit entries and their hash chain (pure: no I/O).

Each replica keeps one chain of entries: who did what to which patient record,
when, and where, with no clinical content. Entry ``n`` holds the hash of entry
``n - 1`` (the first holds :data:`GENESIS`), and its own hash covers every one
of its fields, so changing, removing or reordering an entry breaks the chain
from that entry on.

A server keeps the chain of each replica beside its own. A replica restored
from an older copy goes on from the last entry the server acknowledged, while
the server holds later entries of the lost copy: the server keeps the two as
**lines** of that replica's chain (line 0 first, each later line starting from
an entry of an earlier one). Every line verifies on its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal

import msgpack

from caresync.exceptions import AuditError

__all__ = [
    "ACTIONS",
    "SERVER_ACTIONS",
    "ANONYMOUS",
    "GENESIS",
    "HASH_BYTES",
    "AuditAction",
    "AuditEntry",
    "AuditEvent",
    "ChainVerdict",
    "TrailVerdict",
    "attempted_name",
    "chain_tail",
    "check_entry",
    "entry_hash",
    "link",
    "verify_chain",
    "verify_trail",
]

AuditAction = Literal[
    "read",
    "list",
    "write",
    "resolve",
    "export",
    "import",
    "login",
    "login-failed",
    "logout",
    "enrol",
    "revoke",
]
"""What an entry records. ``list``: a listing of records (names shown, no one record).
``enrol`` and ``revoke`` (a server's own trail): a laptop enrolled, or given a new secret
for an enrolment whose answer was lost, and a laptop revoked; the detail names it."""

ACTIONS: Final[frozenset[str]] = frozenset(AuditAction.__args__)  # type: ignore[attr-defined]

SERVER_ACTIONS: Final[frozenset[str]] = frozenset({"enrol", "revoke"})
"""What only a server records, on its own trail: a laptop's chain never holds one (a laptop
that sends one is refused, and ``Replica.audit`` does not write one)."""

HASH_BYTES: Final = 32
GENESIS: Final = bytes(HASH_BYTES)
"""What the first entry of a chain holds as the previous entry's hash."""

MAX_TEXT: Final = 256
"""The longest actor, record id or detail an entry holds."""

_DOMAIN: Final = b"caresync audit entry v1\x00"

ANONYMOUS: Final = "anonymous"
"""The actor of an entry made while nobody was logged in."""

MAX_ATTEMPTED_NAME: Final = 64


def attempted_name(typed: str) -> str:
    """A name someone typed at a failed login, fit to be an entry's actor: printable
    characters only, at most :data:`MAX_ATTEMPTED_NAME`, never empty."""
    kept = "".join(c if c.isprintable() else "?" for c in typed[:MAX_ATTEMPTED_NAME])
    return kept or "(empty)"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """Something to record, before it takes its place in a chain.

    ``detail``: a short, non-clinical note (a conflict id, a file name, "fhir").
    """

    actor: str
    action: AuditAction
    record_id: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of a replica's chain, as stored and as sent to the server."""

    replica_id: str
    seq: int
    at_ms: int
    actor: str
    action: str
    record_id: str | None
    detail: str | None
    prev_hash: bytes
    hash: bytes
    line: int = 0
    """Which line of the replica's chain holds it, on a server (not hashed, not sent)."""

    def to_wire(self) -> list[object]:
        """The entry as a msgpack-ready list (the order :meth:`from_wire` reads)."""
        return [*_covered(self), self.hash]

    @classmethod
    def from_wire(cls, value: object) -> AuditEntry:
        """Read an entry from untrusted input; AuditError if it is malformed.

        The hash is checked too: an entry whose hash does not cover its fields is refused.
        """
        if not isinstance(value, (list, tuple)) or len(value) != 9:
            raise AuditError(f"an audit entry is a list of 9 fields, not {value!r:.80}")
        entry = cls(*value)
        check_entry(entry)
        return entry


def _covered(entry: AuditEntry) -> list[object]:
    """What an entry's hash covers: every field but the hash itself (and the line)."""
    return [
        entry.replica_id,
        entry.seq,
        entry.at_ms,
        entry.actor,
        entry.action,
        entry.record_id,
        entry.detail,
        entry.prev_hash,
    ]


def entry_hash(entry: AuditEntry) -> bytes:
    """The SHA-256 hash that covers every field of an entry and the previous hash."""
    return hashlib.sha256(_DOMAIN + msgpack.packb(_covered(entry), use_bin_type=True)).digest()


def link(
    event: AuditEvent, *, replica_id: str, seq: int, at_ms: int, prev_hash: bytes
) -> AuditEntry:
    """The entry that records ``event`` after the entry with ``prev_hash`` (number ``seq - 1``)."""
    draft = AuditEntry(
        replica_id,
        seq,
        at_ms,
        event.actor,
        event.action,
        event.record_id,
        event.detail,
        prev_hash,
        GENESIS,  # a placeholder of the right size until the hash is known
    )
    check_entry(draft, check_hash=False)  # its form, before anything is hashed
    return replace(draft, hash=entry_hash(draft))


def _text(value: object, what: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if type(value) is not str or not 0 < len(value) <= MAX_TEXT or not value.isprintable():
        raise AuditError(
            f"an audit entry's {what} must be printable text of 1 to {MAX_TEXT} characters, "
            f"not {value!r:.80}"
        )


def check_entry(entry: AuditEntry, *, check_hash: bool = True) -> None:
    """Refuse a malformed entry (AuditError): wrong types, an unknown action, a bad hash.

    Its time is not bounded: it is the writer's claim (see ``Store.receive_audit``).
    ``check_hash=False`` checks the form only (a file is read whole, then verified).
    """
    _text(entry.replica_id, "replica id")
    _text(entry.actor, "actor")
    _text(entry.record_id, "record id", optional=True)
    _text(entry.detail, "detail", optional=True)
    if type(entry.seq) is not int or not 1 <= entry.seq < 2**62:
        raise AuditError(f"an audit entry's number must be an int from 1, not {entry.seq!r:.40}")
    if type(entry.at_ms) is not int or not 0 <= entry.at_ms < 2**62:
        raise AuditError(f"an audit entry's time must be milliseconds, not {entry.at_ms!r:.40}")
    if type(entry.action) is not str or entry.action not in ACTIONS:
        raise AuditError(f"unknown audit action {entry.action!r:.40}")
    for name, value in (("previous hash", entry.prev_hash), ("hash", entry.hash)):
        if type(value) is not bytes or len(value) != HASH_BYTES:
            raise AuditError(f"an audit entry's {name} must be {HASH_BYTES} bytes")
    if not check_hash:
        return
    expected = entry_hash(entry)
    if expected != entry.hash:
        raise AuditError(
            f"audit entry {entry.seq} of {entry.replica_id}: its hash does not match its "
            "content (changed after it was written)"
        )


@dataclass(frozen=True, slots=True)
class ChainVerdict:
    """What :func:`verify_chain` found.

    ``first_bad``: the position (0-based, in the order given) of the first entry
    that breaks the chain, with ``reason``; None when every entry holds.
    """

    ok: bool
    entries: int
    first_bad: int | None = None
    reason: str | None = None


def verify_chain(
    entries: Iterable[AuditEntry],
    *,
    start: tuple[int, bytes] = (0, GENESIS),
    replica_id: str | None = None,
) -> ChainVerdict:
    """Check that ``entries`` form one chain after ``start`` (number, hash).

    Detects an entry changed (its hash no longer covers its fields), removed
    (a number skipped, or a previous hash that is not the one before), or
    reordered (both). ``replica_id``: every entry must be of that replica.
    """
    seq, previous = start
    count = 0
    for position, entry in enumerate(entries):
        count += 1
        reason = _break(entry, seq, previous, replica_id)
        if reason is not None:
            return ChainVerdict(False, count, position, reason)
        seq, previous = entry.seq, entry.hash
    return ChainVerdict(True, count)


def _break(entry: AuditEntry, seq: int, previous: bytes, replica_id: str | None) -> str | None:
    try:
        check_entry(entry)
    except AuditError as exc:
        return str(exc)
    if replica_id is not None and entry.replica_id != replica_id:
        return f"entry {entry.seq} belongs to replica {entry.replica_id}, not {replica_id}"
    if entry.seq != seq + 1:
        return f"entry {entry.seq} follows entry {seq}: an entry is missing or out of order"
    if entry.prev_hash != previous:
        return (
            f"entry {entry.seq} does not hold the hash of the entry before it: an entry "
            "before it was changed, removed or reordered"
        )
    return None


def chain_tail(entries: Sequence[AuditEntry]) -> tuple[int, bytes]:
    """The number and hash of the last entry (or of the start of a chain: 0, GENESIS)."""
    if not entries:
        return 0, GENESIS
    return entries[-1].seq, entries[-1].hash


@dataclass(frozen=True, slots=True)
class TrailVerdict:
    """What :func:`verify_trail` found over every chain of a database or a file.

    ``first_bad``: the first entry (in the order given) that breaks its chain, or None;
    ``heads``: each chain line's last entry (replica id, line) → (number, hash hex), to
    compare with another copy (a chain cut short at its end is found only that way).
    """

    ok: bool
    entries: int
    first_bad: AuditEntry | None = None
    first_bad_position: int | None = None
    reason: str | None = None
    heads: dict[tuple[str, int], tuple[int, str]] | None = None


def verify_trail(entries: Iterable[AuditEntry]) -> TrailVerdict:
    """Check every chain line in ``entries`` (each line's entries in order, lines of one
    replica in ascending line number, as stores list them and exports write them).

    Line 0 of a replica starts at :data:`GENESIS`; a later line starts from an entry
    of an earlier line of the same replica (a copy restored from an older one), or
    at :data:`GENESIS` too (a copy taken before the replica's first entry).
    """
    tails: dict[tuple[str, int], tuple[int, bytes]] = {}
    known: set[tuple[str, int, bytes]] = set()  # (replica, seq, hash) of entries seen
    count = 0
    for position, entry in enumerate(entries):
        count += 1
        key = (entry.replica_id, entry.line)
        if key in tails:
            start = tails[key]
        elif entry.line == 0 or (entry.seq == 1 and entry.prev_hash == GENESIS):
            start = (0, GENESIS)  # a later line may start afresh: a copy from before entry 1
        elif (entry.replica_id, entry.seq - 1, entry.prev_hash) in known:
            start = (entry.seq - 1, entry.prev_hash)
        else:
            orphan = (
                f"line {entry.line} of replica {entry.replica_id} starts at entry {entry.seq}, "
                "which follows no entry of an earlier line"
            )
            return TrailVerdict(False, count, entry, position, orphan, _hex(tails))
        reason = _break(entry, start[0], start[1], None)
        if reason is not None:
            return TrailVerdict(False, count, entry, position, reason, _hex(tails))
        tails[key] = (entry.seq, entry.hash)
        known.add((entry.replica_id, entry.seq, entry.hash))
    return TrailVerdict(True, count, heads=_hex(tails))


def _hex(tails: dict[tuple[str, int], tuple[int, bytes]]) -> dict[tuple[str, int], tuple[int, str]]:
    return {key: (seq, digest.hex()) for key, (seq, digest) in tails.items()}
