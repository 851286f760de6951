"""What every store does with audit chains, and the SQLite statements for them.

The planning here is shared by the SQLite store and its in-memory twin, so the
two cannot drift: :func:`plan_append` numbers and links a replica's own new
entries; :func:`plan_receive` decides where entries a replica sent go (which
line of its chain, or nowhere when they do not continue any).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from caresync.audit.chain import GENESIS, AuditEntry, AuditEvent, check_entry, link
from caresync.exceptions import AuditError, InvalidInputError

__all__ = [
    "ReceivePlan",
    "check_audit_query",
    "check_events",
    "plan_append",
    "plan_receive",
    "sql_append",
    "sql_entries",
    "sql_receive",
    "sql_tail",
]

MAX_RECEIVED = 10_000
"""The most entries one :meth:`Store.receive_audit` call takes."""

MAX_LINES = 16
"""The most lines a replica's chain may have on a server: each is a copy of the laptop
restored from an older one; more is refused (the entries stay on the laptop)."""


def check_events(events: Sequence[AuditEvent]) -> tuple[AuditEvent, ...]:
    """Refuse anything but AuditEvents (InvalidInputError); their fields are checked on linking."""
    checked = tuple(events)
    for event in checked:
        if not isinstance(event, AuditEvent):
            raise InvalidInputError(f"an audit event must be an AuditEvent, not {event!r:.80}")
    return checked


def check_audit_query(
    replica_id: object, record_id: object, after_seq: object, limit: object
) -> None:
    """Refuse a malformed audit query (InvalidInputError)."""
    for name, value in (("replica_id", replica_id), ("record_id", record_id)):
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 256):
            raise InvalidInputError(f"{name} must be None or text of 1 to 256 characters")
    if type(after_seq) is not int or after_seq < 0:
        raise InvalidInputError(f"after_seq must be an int from 0, not {after_seq!r:.20}")
    if limit is not None and (type(limit) is not int or limit < 1):
        raise InvalidInputError(f"limit must be None or an int from 1, not {limit!r:.20}")


def plan_append(
    events: Sequence[AuditEvent], *, replica_id: str, tail: tuple[int, bytes], now_ms: int
) -> list[AuditEntry]:
    """The entries that record ``events`` after ``tail`` (number, hash) of its own chain."""
    entries = []
    seq, previous = tail
    for event in events:
        try:
            entry = link(
                event, replica_id=replica_id, seq=seq + 1, at_ms=now_ms, prev_hash=previous
            )
        except AuditError as exc:
            raise InvalidInputError(f"cannot record this in the audit trail: {exc}") from exc
        entries.append(entry)
        seq, previous = entry.seq, entry.hash
    return entries


@dataclass(frozen=True, slots=True)
class ReceivePlan:
    """Where received entries go: ``line`` of the replica's chain, ``new`` the ones not held yet."""

    line: int
    new: tuple[AuditEntry, ...]
    acknowledged: int
    """The number of the last entry received (held now, whether new or not)."""


def plan_receive(
    replica_id: str,
    entries: Sequence[AuditEntry],
    *,
    tails: Mapping[int, tuple[int, bytes]],
    holds: Callable[[int, bytes], bool],
) -> ReceivePlan:
    """Where the entries ``replica_id`` sent go (AuditError if they cannot be kept).

    ``tails``: each line of the replica's chain held here → its last (number, hash);
    ``holds(seq, hash)``: whether an entry of the replica with that number and hash
    is held. Entries already held (a resend) are skipped; the rest must continue a
    line (appended to it) or start from an entry held, or from the beginning, as a
    new line: a copy of the replica restored from an older one goes on from where
    the copy was taken, beside what the lost copy had sent. At most :data:`MAX_LINES`.

    An entry's time is the writing laptop's claim, kept as it came: refusing one dated
    ahead (a clock set wrong for a while) would stop its whole chain for good.
    """
    if not entries:
        raise AuditError("no audit entries to receive")
    if len(entries) > MAX_RECEIVED:
        raise AuditError(f"at most {MAX_RECEIVED} audit entries at once, not {len(entries)}")
    previous: AuditEntry | None = None
    for entry in entries:
        check_entry(entry)
        if entry.replica_id != replica_id:
            raise AuditError(
                f"audit entry {entry.seq} names replica {entry.replica_id}; only {replica_id}'s "
                "own entries are taken from it"
            )
        if previous is not None and (
            entry.seq != previous.seq + 1 or entry.prev_hash != previous.hash
        ):
            raise AuditError(
                f"audit entry {entry.seq} does not follow entry {previous.seq} of the same batch"
            )
        previous = entry
    acknowledged = entries[-1].seq
    start = 0
    while start < len(entries) and holds(entries[start].seq, entries[start].hash):
        start += 1
    new = tuple(entries[start:])
    if not new:
        return ReceivePlan(0, (), acknowledged)
    base = (new[0].seq - 1, new[0].prev_hash)
    for line, tail in sorted(tails.items()):
        if tail == base:
            return ReceivePlan(line, new, acknowledged)
    if not tails and base == (0, GENESIS):
        return ReceivePlan(0, new, acknowledged)
    if base == (0, GENESIS) or holds(*base):
        if len(tails) >= MAX_LINES:
            raise AuditError(
                f"the audit chain of replica {replica_id} has {len(tails)} lines already (copies "
                "restored from older ones); no more are kept: its entries stay on the laptop"
            )
        return ReceivePlan(max(tails, default=-1) + 1, new, acknowledged)
    raise AuditError(
        f"audit entry {new[0].seq} of replica {replica_id} follows an entry this server does "
        "not hold: send the entries before it first"
    )


# ------------------------------------------------------------------ SQLite

_COLUMNS = "replica_id, seq, at_ms, actor, action, record_id, detail, prev_hash, hash, line"


def _row(row: Sequence[Any]) -> AuditEntry:
    return AuditEntry(
        str(row[0]),
        int(row[1]),
        int(row[2]),
        str(row[3]),
        str(row[4]),
        None if row[5] is None else str(row[5]),
        None if row[6] is None else str(row[6]),
        bytes(row[7]),
        bytes(row[8]),
        int(row[9]),
    )


def sql_tail(raw: sqlite3.Connection, replica_id: str, line: int = 0) -> tuple[int, bytes]:
    """The last (number, hash) of a line of a replica's chain; (0, GENESIS) if it is empty."""
    row = raw.execute(
        "SELECT seq, hash FROM audit_trail WHERE replica_id = ? AND line = ?"
        " ORDER BY seq DESC LIMIT 1",
        (replica_id, line),
    ).fetchone()
    return (0, GENESIS) if row is None else (int(row[0]), bytes(row[1]))


def _insert(raw: sqlite3.Connection, entries: Sequence[AuditEntry]) -> None:
    raw.executemany(
        f"INSERT INTO audit_trail ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                e.replica_id,
                e.seq,
                e.at_ms,
                e.actor,
                e.action,
                e.record_id,
                e.detail,
                e.prev_hash,
                e.hash,
                e.line,
            )
            for e in entries
        ],
    )


def sql_append(
    raw: sqlite3.Connection, replica_id: str, events: Sequence[AuditEvent], now_ms: int
) -> list[AuditEntry]:
    """Append the replica's own ``events`` to line 0 of its chain (inside the caller's
    transaction, so an entry commits with what it records)."""
    if not events:
        return []
    entries = plan_append(
        events, replica_id=replica_id, tail=sql_tail(raw, replica_id), now_ms=now_ms
    )
    _insert(raw, entries)
    return entries


def sql_receive(raw: sqlite3.Connection, replica_id: str, entries: Sequence[AuditEntry]) -> int:
    """Keep the entries a replica sent (inside the caller's transaction); returns the
    number of the last one (see :func:`plan_receive`)."""
    # Lines are numbered 0, 1, 2, ...: each tail is one step down the primary key.
    row = raw.execute(
        "SELECT MAX(line) FROM audit_trail WHERE replica_id = ?", (replica_id,)
    ).fetchone()
    last_line = -1 if row is None or row[0] is None else int(row[0])
    tails = {line: sql_tail(raw, replica_id, line) for line in range(last_line + 1)}

    def holds(seq: int, digest: bytes) -> bool:
        return (
            raw.execute(
                "SELECT 1 FROM audit_trail WHERE replica_id = ? AND seq = ? AND hash = ?",
                (replica_id, seq, digest),
            ).fetchone()
            is not None
        )

    plan = plan_receive(replica_id, entries, tails=tails, holds=holds)
    if plan.new:
        _insert(raw, [replace(e, line=plan.line) for e in plan.new])
    return plan.acknowledged


def sql_entries(
    raw: sqlite3.Connection,
    *,
    replica_id: str | None,
    record_id: str | None,
    after_seq: int,
    limit: int | None,
) -> list[AuditEntry]:
    """Entries in chain order (replica, line, number), filtered as asked."""
    if replica_id is not None and after_seq > 0:
        return _entries_after(raw, replica_id, record_id, after_seq, limit)
    where = ["seq > ?"]
    args: list[object] = [after_seq]
    if replica_id is not None:
        where.append("replica_id = ?")
        args.append(replica_id)
    if record_id is not None:
        where.append("record_id = ?")
        args.append(record_id)
    sql = (
        f"SELECT {_COLUMNS} FROM audit_trail WHERE {' AND '.join(where)}"
        " ORDER BY replica_id, line, seq"
    )
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return [_row(row) for row in raw.execute(sql, args)]


def _entries_after(
    raw: sqlite3.Connection,
    replica_id: str,
    record_id: str | None,
    after_seq: int,
    limit: int | None,
) -> list[AuditEntry]:
    """:func:`sql_entries` of one replica after a number, line by line: each line's
    entries after it are one seek in the primary key (replica, line, number). One query
    for them all walks every entry of the replica up to that number (the planner cannot
    tell that ``seq > ?`` ends a line's prefix): the entries a laptop has not sent yet,
    asked at every sync, cost the length of its whole chain."""
    found: list[AuditEntry] = []
    extra, extra_args = ("", ()) if record_id is None else (" AND record_id = ?", (record_id,))
    line = -1
    while limit is None or len(found) < limit:
        (line,) = raw.execute(
            "SELECT MIN(line) FROM audit_trail WHERE replica_id = ? AND line > ?",
            (replica_id, line),
        ).fetchone()
        if line is None:
            break
        sql = (
            f"SELECT {_COLUMNS} FROM audit_trail"
            f" WHERE replica_id = ? AND line = ? AND seq > ?{extra} ORDER BY seq"
        )
        args: list[object] = [replica_id, line, after_seq, *extra_args]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit - len(found))
        found += [_row(row) for row in raw.execute(sql, args)]
    return found
