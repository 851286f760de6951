"""A laptop's local edits and its outbox: numbered until the server acknowledges them."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from caresync.audit.chain import AuditEvent
from caresync.exceptions import CorruptDatabaseError
from caresync.records.persons import PersonCard
from caresync.storage._arguments import (
    beyond_outbox,
    check_outbox_page,
    check_queue_again,
    check_renumbering,
    check_write_local,
)
from caresync.storage._audit import check_events, sql_append
from caresync.storage._writes import PlannedRecord, Write, local_writes, plan_writes
from caresync.storage.base import (
    MAX_REASON_LENGTH,
    ConflictRow,
    IncomingUpdate,
    OutboxItem,
    OutboxSummary,
    SetAsideRecord,
    check_count,
    check_text,
)
from caresync.storage.sqlite._sql import _expect_sequence, _full, _put_meta, _scalar, _sequence
from caresync.storage.sqlite.core import BRIEF_ROWS
from caresync.storage.sqlite.writes import RecordWritesPart

__all__ = ["OutboxPart"]

_FORGET_SETTLED = (
    "DELETE FROM set_aside WHERE record_id NOT IN (SELECT record_id FROM outbox)"
    " AND record_id NOT IN (SELECT record_id FROM outbox_aside)"
)
"""A record set aside whose entries the server has all taken leaves the list."""

BRIEF_UPDATE_BYTES = 64 * 1024
"""The largest update the outbox's brief read takes (a page with a larger one is read
on the connection's thread): at most BRIEF_ROWS of them are read on the event loop."""


class OutboxPart(RecordWritesPart):
    """A laptop's local edits and its outbox."""

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
        """Commit a local edit: the record's log, the outbox and its conflict rows, at once.

        Returns the edit's outbox sequence number (strictly increasing for the
        life of the file). The commit is fsynced before this returns.
        Raises InvalidUpdateError for bytes that are not an update (nothing stored).
        ``person`` replaces the record's person card, and its pairs, in the same commit;
        ``audit`` is appended to this replica's audit chain in it too.
        """
        write, events = check_write_local(record_id, update, conflicts, organisation, person, audit)
        seqs = await self._run(
            f"writing record {record_id}", lambda raw: self._write_local(raw, [write], events)
        )
        return seqs[0]

    async def write_local_many(
        self, edits: Sequence[IncomingUpdate], *, audit: Sequence[AuditEvent] = ()
    ) -> list[int]:
        """Commit several local edits in one transaction, all or nothing (see write_local)."""
        writes = local_writes(edits)
        events = check_events(audit)
        if not writes:
            return []
        return await self._run(
            f"writing {len(writes)} records", lambda raw: self._write_local(raw, writes, events)
        )

    def _write_local(
        self, raw: sqlite3.Connection, writes: Sequence[Write], audit: Sequence[AuditEvent] = ()
    ) -> list[int]:
        now = self._now_ms()

        def body() -> tuple[list[int], dict[str, PlannedRecord]]:
            planned = plan_writes(
                writes,
                self._known(raw, writes),
                lambda rid: _full(raw, rid),
                skip_duplicates=False,
            )
            self._store_planned(raw, writes, planned, now, log=True)
            if audit:
                sql_append(raw, self._own_id(raw), audit, now)
            if len(writes) == 1:  # the durable single edit: as few statements as can be
                cursor = raw.execute(
                    "INSERT INTO outbox (record_id, data, created_ms) VALUES (?, ?, ?)",
                    (writes[0].record_id, writes[0].update, now),
                )
                if cursor.lastrowid is None:
                    raise CorruptDatabaseError("the outbox gave the edit no number")
                return [cursor.lastrowid], planned
            head = _sequence(raw, "outbox")
            raw.executemany(
                "INSERT INTO outbox (record_id, data, created_ms) VALUES (?, ?, ?)",
                [(w.record_id, w.update, now) for w in writes],
            )
            seqs = list(range(head + 1, head + 1 + len(writes)))
            _expect_sequence(raw, "outbox", seqs[-1] if seqs else head)
            return seqs, planned

        return self._commit_planned(raw, body)

    async def pending(self, limit: int = 1000, *, after_seq: int = 0) -> list[OutboxItem]:
        """Up to ``limit`` unacknowledged local updates with seq > ``after_seq``, oldest first."""
        check_outbox_page(limit, after_seq)

        def read(raw: sqlite3.Connection, most: int) -> list[OutboxItem]:
            return [
                OutboxItem(r[0], r[1], bytes(r[2]), r[3])
                for r in raw.execute(
                    "SELECT seq, record_id, data, created_ms FROM outbox WHERE seq > ?"
                    " ORDER BY seq LIMIT ?",
                    (after_seq, most),
                )
            ]

        def few(raw: sqlite3.Connection) -> list[OutboxItem] | None:
            # All there is when fewer than asked for were found (a sync's last page),
            # and each small: an update may be megabytes (a scan attached offline),
            # which the connection's thread reads, not the event loop. Not its time
            # either: created_ms comes after data in the row, and SQLite reaches it
            # through every overflow page of the update (length() reads none).
            found: list[OutboxItem] = []
            for seq, record_id, data, created_ms in raw.execute(
                "SELECT seq, record_id, CASE WHEN length(data) <= ?1 THEN data END,"
                " CASE WHEN length(data) <= ?1 THEN created_ms END"
                " FROM outbox WHERE seq > ?2 ORDER BY seq LIMIT ?3",
                (BRIEF_UPDATE_BYTES, after_seq, min(limit, BRIEF_ROWS + 1)),
            ):
                if data is None:
                    return None  # too large to read here
                found.append(OutboxItem(seq, record_id, bytes(data), created_ms))
            return found if len(found) <= BRIEF_ROWS else None

        return await self._read_few("reading the outbox", few, lambda raw: read(raw, limit))

    async def pending_count(self) -> int:
        """How many local updates wait for the server's acknowledgement (set aside too)."""
        return await self._run(
            "counting the outbox",
            lambda raw: _scalar(
                raw,
                "SELECT (SELECT COUNT(*) FROM outbox) + (SELECT COUNT(*) FROM outbox_aside)",
            ),
        )

    async def set_aside(self, record_id: str, reason: str) -> int:
        """Move ``record_id``'s outbox entries aside and list it with ``reason``, in one
        transaction; returns how many entries moved."""
        check_text(record_id, "record_id")
        check_text(reason, "reason", max_length=MAX_REASON_LENGTH)
        now = self._now_ms()

        def job(raw: sqlite3.Connection) -> int:
            def body() -> int:
                raw.execute(
                    "INSERT INTO outbox_aside (seq, record_id, data, created_ms)"
                    " SELECT seq, record_id, data, created_ms FROM outbox WHERE record_id = ?",
                    (record_id,),
                )
                moved = raw.execute("DELETE FROM outbox WHERE record_id = ?", (record_id,)).rowcount
                # First refused then: the reason is the server's latest word.
                raw.execute(
                    "INSERT INTO set_aside (record_id, reason, since_ms) VALUES (?, ?, ?)"
                    " ON CONFLICT (record_id) DO UPDATE SET reason = excluded.reason",
                    (record_id, reason, now),
                )
                return moved

            return self._write(raw, body)

        return await self._run(f"setting record {record_id} aside", job)

    async def take_back_set_aside(self) -> int:
        """Queue every set-aside record's entries (set aside, then waiting) at the end of
        the outbox, in order, in one transaction; returns how many entries moved."""

        def job(raw: sqlite3.Connection) -> int:
            if not _any_set_aside(raw):
                return 0  # the usual case: no write transaction (a sync with nothing to do)

            def body() -> int:
                rows = raw.execute(
                    "SELECT seq, record_id, data, created_ms FROM outbox_aside"
                    " UNION ALL SELECT seq, record_id, data, created_ms FROM outbox"
                    " WHERE record_id IN (SELECT record_id FROM set_aside) ORDER BY 1"
                ).fetchall()
                if not rows:
                    return 0
                raw.execute("DELETE FROM outbox_aside")
                raw.execute(
                    "DELETE FROM outbox WHERE record_id IN (SELECT record_id FROM set_aside)"
                )
                # New seqs after every one given out: pushed after what waits, in order.
                raw.executemany(
                    "INSERT INTO outbox (record_id, data, created_ms) VALUES (?, ?, ?)",
                    [(record_id, data, created_ms) for _seq, record_id, data, created_ms in rows],
                )
                return len(rows)

            return self._write(raw, body)

        # Every sync's first push asks: with nothing set aside, a brief read, no hop.
        def none(raw: sqlite3.Connection) -> int | None:
            return None if _any_set_aside(raw) else 0

        return await self._read_few("queueing entries set aside again", none, job)

    async def set_aside_records(self) -> list[SetAsideRecord]:
        """The records set aside, by record id, with how many of their entries wait."""

        def job(raw: sqlite3.Connection) -> list[SetAsideRecord]:
            return [
                SetAsideRecord(record_id, reason, since_ms, entries)
                for record_id, reason, since_ms, entries in raw.execute(
                    "SELECT s.record_id, s.reason, s.since_ms,"
                    " (SELECT COUNT(*) FROM outbox_aside a WHERE a.record_id = s.record_id)"
                    " + (SELECT COUNT(*) FROM outbox o WHERE o.record_id = s.record_id)"
                    " FROM set_aside s ORDER BY s.record_id"
                )
            ]

        # Every push after a session's first asks: with none, a brief read, no hop.
        def none(raw: sqlite3.Connection) -> list[SetAsideRecord] | None:
            return None if _any_set_aside(raw) else []

        return await self._read_few("reading the records set aside", none, job)

    async def oldest_pending_ms(self) -> int | None:
        """When the oldest unacknowledged update was written (ms), or None if none waits."""

        def job(raw: sqlite3.Connection) -> int | None:
            row = raw.execute("SELECT created_ms FROM outbox ORDER BY seq LIMIT 1").fetchone()
            return None if row is None else int(row[0])

        return await self._run("reading the outbox", job)

    async def acknowledge(
        self, up_to_seq: int, *, checkpoint: tuple[str, str] | None = None
    ) -> int:
        """Drop outbox rows with seq <= ``up_to_seq`` (the server committed them).

        Only the outbox shrinks; the records keep every update. Refuses a
        sequence number this replica never gave out. Returns how many rows went.
        With ``checkpoint``, that meta key is set in the same transaction.
        """
        check_count(up_to_seq, "up_to_seq")
        check_renumbering(0, checkpoint)

        def job(raw: sqlite3.Connection) -> int:
            def body() -> int:
                head = _sequence(raw, "outbox")
                if up_to_seq > head:
                    raise beyond_outbox(up_to_seq, head)
                dropped = raw.execute("DELETE FROM outbox WHERE seq <= ?", (up_to_seq,)).rowcount
                if dropped:
                    raw.execute(_FORGET_SETTLED)
                if checkpoint is not None:
                    _put_meta(raw, checkpoint[0], checkpoint[1])
                return dropped

            return self._write(raw, body)

        return await self._run("acknowledging the outbox", job)

    async def outbox_summary(self) -> OutboxSummary:
        """The outbox's count, oldest time and seq range, read in one query."""

        def job(raw: sqlite3.Connection) -> OutboxSummary:
            row = raw.execute(
                "SELECT COUNT(*), MIN(seq),"
                " (SELECT created_ms FROM outbox ORDER BY seq LIMIT 1),"
                " (SELECT seq FROM sqlite_sequence WHERE name = 'outbox')"
                " FROM outbox"
            ).fetchone()
            return OutboxSummary(int(row[0]), row[2], row[1], int(row[3] or 0))

        def few(raw: sqlite3.Connection) -> OutboxSummary | None:
            # The same figures from the first BRIEF_ROWS + 1 rows, in one statement (one
            # snapshot): exact when there are no more; the count walks no further. It
            # reads their seqs (the table's keys) and the oldest one's time, only when
            # that update is small: created_ms comes after data in the row, and SQLite
            # reaches it through every overflow page of the update (length() reads none).
            row = raw.execute(
                "WITH first AS (SELECT seq FROM outbox ORDER BY seq LIMIT ?1)"
                " SELECT COUNT(*), MIN(seq),"
                " (SELECT CASE WHEN length(data) <= ?2 THEN created_ms END"
                "  FROM outbox ORDER BY seq LIMIT 1),"
                " (SELECT length(data) FROM outbox ORDER BY seq LIMIT 1),"
                " (SELECT seq FROM sqlite_sequence WHERE name = 'outbox')"
                " FROM first",
                (BRIEF_ROWS + 1, BRIEF_UPDATE_BYTES),
            ).fetchone()
            count, low, oldest_ms, oldest_size, head = row
            if count > BRIEF_ROWS or (oldest_size or 0) > BRIEF_UPDATE_BYTES:
                return None  # more rows, or the oldest's time lies past a large update
            return OutboxSummary(int(count), oldest_ms, low, int(head or 0))

        return await self._read_few("reading the outbox", few, job)

    async def queue_again(
        self, items: Sequence[tuple[str, bytes]], *, checkpoint: tuple[str, str] | None = None
    ) -> int:
        """Queue updates the records hold already into the outbox again, ahead of the
        waiting ones (numbered after them), with the checkpoint, in one transaction; the
        records and their logs are not written."""
        wanted = check_queue_again(items, checkpoint)
        now = self._now_ms()

        def job(raw: sqlite3.Connection) -> int:
            def body() -> int:
                waiting = [r[0] for r in raw.execute("SELECT seq FROM outbox ORDER BY seq")]
                raw.executemany(
                    "INSERT INTO outbox (record_id, data, created_ms) VALUES (?, ?, ?)",
                    [(record_id, update, now) for record_id, update in wanted],
                )
                if waiting and wanted:
                    # The waiting ones after the new ones, in order: each to a number
                    # above every existing one, so no two rows ever share one.
                    last = _sequence(raw, "outbox")
                    moves = [(last + index + 1, seq) for index, seq in enumerate(waiting)]
                    raw.executemany("UPDATE outbox SET seq = ? WHERE seq = ?", moves)
                    raw.execute(
                        "UPDATE sqlite_sequence SET seq = ? WHERE name = 'outbox'",
                        (last + len(waiting),),
                    )
                if checkpoint is not None:
                    _put_meta(raw, checkpoint[0], checkpoint[1])
                return len(wanted)

            return self._write(raw, body)

        return await self._run(f"queueing {len(wanted)} updates again", job)

    async def renumber_outbox(
        self, above: int, *, checkpoint: tuple[str, str] | None = None
    ) -> int:
        """Number every waiting update after ``above`` and every seq given out, in order."""
        check_renumbering(above, checkpoint)

        def job(raw: sqlite3.Connection) -> int:
            def body() -> int:
                start = max(above, _sequence(raw, "outbox"))
                seqs = [r[0] for r in raw.execute("SELECT seq FROM outbox ORDER BY seq")]
                # Highest first, each to a number above every existing one: no clash.
                moves = [(start + index + 1, seq) for index, seq in enumerate(seqs)]
                raw.executemany("UPDATE outbox SET seq = ? WHERE seq = ?", reversed(moves))
                last = start + len(seqs)
                if (
                    raw.execute(
                        "UPDATE sqlite_sequence SET seq = ? WHERE name = 'outbox'", (last,)
                    ).rowcount
                    == 0
                ):
                    raw.execute(
                        "INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (last,)
                    )
                if checkpoint is not None:
                    _put_meta(raw, checkpoint[0], checkpoint[1])
                return len(seqs)

            return self._write(raw, body)

        return await self._run("renumbering the outbox", job)


def _any_set_aside(raw: sqlite3.Connection) -> bool:
    """Whether any record is set aside (almost never: one indexed look)."""
    return bool(raw.execute("SELECT EXISTS (SELECT 1 FROM set_aside)").fetchone()[0])
