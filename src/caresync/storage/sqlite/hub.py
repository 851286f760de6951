"""A server's health-hub outbox: the summary rows a push marks, and what became of sending them.

Every change of the outbox takes the next hub mark (``hub_mark``), stored on the row
(``change``) or, when a patient leaves an organisation's list, on a tombstone
(``hub_removed``): :meth:`HubPart.hub_changes` reads what changed after a mark through
an index on ``(organisation, change)``. One writer per file: marks follow commit order.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from caresync.storage._arguments import (
    check_hub_attempt,
    check_hub_changes,
    check_hub_due,
    check_hub_outcome,
)
from caresync.storage._writes import PlannedRecord
from caresync.storage.base import (
    HUB_STATES,
    HubChanges,
    HubMark,
    HubOutcome,
    HubRemoved,
    HubSummaryRow,
    check_optional_text,
    check_text,
)
from caresync.storage.sqlite.core import BRIEF_ROWS, SQLiteCore

__all__ = ["HubPart"]


_HUB_COLUMNS = (
    "record_id, organisation, version, state, reason, sent_version, attempts,"
    " next_attempt_ms, last_attempt_ms"
)

# The sender's due rows: two ranges of the index hub_outbox_due (state, next_attempt_ms,
# record_id), merged in its order (SQLite's MERGE of the two sorted halves, no sort),
# read only as far as the limit.
_DUE = (
    f"SELECT {_HUB_COLUMNS} FROM hub_outbox WHERE state = 'pending'"
    " AND next_attempt_ms <= ? AND (next_attempt_ms, record_id) > (?, ?)"
    f" UNION ALL SELECT {_HUB_COLUMNS} FROM hub_outbox WHERE state = 'held'"
    " AND (next_attempt_ms, record_id) > (?, ?)"
    " ORDER BY next_attempt_ms, record_id LIMIT ?"
)
# The pending ones alone (the sender's rounds once it has looked at every held one).
_DUE_PENDING = (
    f"SELECT {_HUB_COLUMNS} FROM hub_outbox WHERE state = 'pending'"
    " AND next_attempt_ms <= ? AND (next_attempt_ms, record_id) > (?, ?)"
    " ORDER BY next_attempt_ms, record_id LIMIT ?"
)
_NEXT_ATTEMPT = "SELECT MIN(next_attempt_ms) FROM hub_outbox WHERE state = 'pending'"
_COUNTS = "SELECT state, COUNT(*) FROM hub_outbox GROUP BY state"
# One organisation's rows, found through its index (the planner would rather walk the
# state index in GROUP BY order, reading every row).
_COUNTS_OF = (
    "SELECT state, COUNT(*) FROM hub_outbox INDEXED BY hub_outbox_by_change"
    " WHERE organisation = ? GROUP BY state"
)


def _next_mark(raw: sqlite3.Connection) -> int:
    """Give out the next hub mark (in the caller's transaction)."""
    (mark,) = raw.execute(
        "UPDATE hub_mark SET n = n + 1 WHERE singleton = 1 RETURNING n"
    ).fetchone()
    return int(mark)


def _bury(
    raw: sqlite3.Connection, organisation: str | None, record_id: str, version: int, mark: int
) -> None:
    """Leave a tombstone: the record left ``organisation``'s list at ``mark``."""
    if organisation is None:
        return  # hub changes are read per organisation: nobody lists a record of none
    raw.execute(
        "INSERT INTO hub_removed (organisation, record_id, version, change) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (organisation, record_id) DO UPDATE SET version = excluded.version,"
        " change = excluded.change",
        (organisation, record_id, version, mark),
    )


def _write_hub_marks(
    raw: sqlite3.Connection,
    marks: Mapping[str, HubMark],
    versions: Mapping[str, int],
    planned: Mapping[str, PlannedRecord],
) -> None:
    """Upsert (or delete) the hub outbox rows of the records a batch added to, each change
    with its hub mark; a row deleted or moved to another organisation leaves a tombstone."""
    for record_id, mark in marks.items():
        version = versions.get(record_id)
        if version is None:
            continue  # the batch added nothing to it: its row stays as it is
        found = raw.execute(
            "SELECT organisation FROM hub_outbox WHERE record_id = ?", (record_id,)
        ).fetchone()
        if not mark.enabled:
            if found is not None:
                raw.execute("DELETE FROM hub_outbox WHERE record_id = ?", (record_id,))
                _bury(raw, found[0], record_id, version, _next_mark(raw))
            continue
        plan = planned.get(record_id)
        organisation = None if plan is None else plan.organisation
        change = _next_mark(raw)
        raw.execute(
            "INSERT INTO hub_outbox (record_id, organisation, version, state, reason,"
            " attempts, next_attempt_ms, change) VALUES (?, ?, ?, ?, ?, 0, 0, ?)"
            " ON CONFLICT (record_id) DO UPDATE SET organisation = excluded.organisation,"
            " version = excluded.version, state = excluded.state, reason = excluded.reason,"
            " attempts = 0, next_attempt_ms = 0, change = excluded.change",
            (
                record_id,
                organisation,
                version,
                "pending" if mark.held is None else "held",
                mark.held,
                change,
            ),
        )
        if found is not None and found[0] != organisation:
            _bury(raw, found[0], record_id, version, change)
        if organisation is not None:  # listed there again: no longer removed
            raw.execute(
                "DELETE FROM hub_removed WHERE organisation = ? AND record_id = ?",
                (organisation, record_id),
            )


def _read_changes(raw: sqlite3.Connection, organisation: str, after: int, limit: int) -> HubChanges:
    """:meth:`HubPart.hub_changes` in one snapshot."""
    raw.execute("BEGIN")  # one snapshot for the mark and the rows, even beside another process
    try:
        (mark,) = raw.execute("SELECT n FROM hub_mark WHERE singleton = 1").fetchone()
        changed: list[tuple[int, HubSummaryRow | HubRemoved]] = [
            (int(r[9]), HubSummaryRow(*r[:9]))
            for r in raw.execute(
                f"SELECT {_HUB_COLUMNS}, change FROM hub_outbox"
                " WHERE organisation = ? AND change > ? ORDER BY change LIMIT ?",
                (organisation, after, limit + 1),
            )
        ]
        if after > 0:  # a reader that holds nothing has nothing to drop
            changed += [
                (int(change), HubRemoved(record_id, int(version)))
                for record_id, version, change in raw.execute(
                    "SELECT record_id, version, change FROM hub_removed"
                    " WHERE organisation = ? AND change > ? ORDER BY change LIMIT ?",
                    (organisation, after, limit + 1),
                )
            ]
    finally:
        raw.execute("COMMIT")
    changed.sort(key=lambda pair: pair[0])
    more = len(changed) > limit
    if more:
        del changed[limit:]
        mark = changed[-1][0]
    return HubChanges(
        tuple(c for _n, c in changed if isinstance(c, HubSummaryRow)),
        tuple(c for _n, c in changed if isinstance(c, HubRemoved)),
        int(mark),
        more,
    )


class HubPart(SQLiteCore):
    """A server's health-hub outbox."""

    async def hub_summaries(self, organisation: str | None = None) -> list[HubSummaryRow]:
        """The health-hub outbox (of that organisation's records), by record id."""
        check_optional_text(organisation, "organisation")
        sql = f"SELECT {_HUB_COLUMNS} FROM hub_outbox"
        args: tuple[object, ...] = ()
        if organisation is not None:
            sql += " WHERE organisation = ?"
            args = (organisation,)
        sql += " ORDER BY record_id"
        return await self._run(
            "reading the hub outbox",
            lambda raw: [HubSummaryRow(*row) for row in raw.execute(sql, args)],
        )

    async def hub_summary(self, record_id: str) -> HubSummaryRow | None:
        """The record's hub outbox row, or None."""
        check_text(record_id, "record_id")

        def read(raw: sqlite3.Connection) -> HubSummaryRow | None:
            row = raw.execute(
                f"SELECT {_HUB_COLUMNS} FROM hub_outbox WHERE record_id = ?", (record_id,)
            ).fetchone()
            return None if row is None else HubSummaryRow(*row)

        return await self._run(f"reading the hub outbox row of {record_id}", read)

    async def hub_due(
        self,
        now_ms: int,
        limit: int,
        *,
        after: tuple[int, str] | None = None,
        held: bool = True,
    ) -> list[HubSummaryRow]:
        """The summaries due at ``now_ms`` (see
        :meth:`~caresync.storage.base.ServerStore.hub_due`)."""
        at, record_id = check_hub_due(now_ms, limit, after, held) or (-1, "")
        args: tuple[object, ...]
        if held:
            sql, args = _DUE, (now_ms, at, record_id, at, record_id, limit)
        else:
            sql, args = _DUE_PENDING, (now_ms, at, record_id, limit)
        return await self._run(
            "reading the hub outbox's due summaries",
            lambda raw: [HubSummaryRow(*row) for row in raw.execute(sql, args)],
        )

    async def hub_next_attempt_ms(self) -> int | None:
        """The earliest retry time of a pending summary, or None."""

        def read(raw: sqlite3.Connection) -> int | None:
            (earliest,) = raw.execute(_NEXT_ATTEMPT).fetchone()
            return None if earliest is None else int(earliest)

        return await self._run("reading the hub outbox's next retry", read)

    async def hub_state_counts(self, organisation: str | None = None) -> dict[str, int]:
        """The outbox rows (of that organisation's records) in each state."""
        check_optional_text(organisation, "organisation")
        sql, args = (_COUNTS, ()) if organisation is None else (_COUNTS_OF, (organisation,))

        def read(raw: sqlite3.Connection) -> dict[str, int]:
            counts = dict.fromkeys(HUB_STATES, 0)
            counts.update((str(state), int(n)) for state, n in raw.execute(sql, args))
            return counts

        return await self._run("counting the hub outbox", read)

    async def hub_changes(self, organisation: str, after: int, limit: int) -> HubChanges:
        """What changed in the organisation's hub outbox after the mark ``after`` (see
        :meth:`~caresync.storage.base.ServerStore.hub_changes`)."""
        check_hub_changes(organisation, after, limit)
        return await self._run(
            "reading the hub outbox's changes",
            lambda raw: _read_changes(raw, organisation, after, limit),
            brief=limit <= BRIEF_ROWS,
        )

    async def record_hub_attempt(self, record_id: str, attempted_ms: int) -> None:
        """Note that a summary of the record is being sent now."""
        check_hub_attempt(record_id, attempted_ms)

        def job(raw: sqlite3.Connection) -> None:
            def body() -> None:
                cursor = raw.execute(
                    "UPDATE hub_outbox SET last_attempt_ms = ?,"
                    " change = (SELECT n + 1 FROM hub_mark) WHERE record_id = ?",
                    (attempted_ms, record_id),
                )
                if cursor.rowcount:
                    _next_mark(raw)

            self._write(raw, body)

        await self._run(f"noting a hub attempt for {record_id}", job)

    async def record_hub_outcome(self, record_id: str, version: int, outcome: HubOutcome) -> bool:
        """Store what became of sending ``version`` (see :class:`HubOutcome`)."""
        check_hub_outcome(record_id, version, outcome)

        def job(raw: sqlite3.Connection) -> bool:
            def body() -> bool:
                # A row takes a mark only when it changes: a held summary found held
                # again is no change for the laptops' reports.
                changed = 0
                if outcome.acknowledged:
                    changed += raw.execute(
                        "UPDATE hub_outbox SET sent_version = ?,"
                        " change = (SELECT n + 1 FROM hub_mark)"
                        " WHERE record_id = ? AND COALESCE(sent_version, 0) < ?",
                        (version, record_id, version),
                    ).rowcount
                fields = (outcome.state, outcome.reason, outcome.attempts, outcome.next_attempt_ms)
                changed += raw.execute(
                    "UPDATE hub_outbox SET state = ?, reason = ?, attempts = ?,"
                    " next_attempt_ms = ?, change = (SELECT n + 1 FROM hub_mark)"
                    " WHERE record_id = ? AND version = ?"
                    " AND (state, reason, attempts, next_attempt_ms) IS NOT (?, ?, ?, ?)",
                    (*fields, record_id, version, *fields),
                ).rowcount
                if changed:
                    _next_mark(raw)  # the mark the rows took
                found = raw.execute(
                    "SELECT 1 FROM hub_outbox WHERE record_id = ? AND version = ?",
                    (record_id, version),
                ).fetchone()
                return found is not None

            return self._write(raw, body)

        return await self._run(f"storing a hub outcome for {record_id}", job)
