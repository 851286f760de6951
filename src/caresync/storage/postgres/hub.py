"""A server's health-hub outbox: the summary rows a push marks, and what became of
sending them.

Every change of the outbox takes the next hub mark, stored on the row (``change``) or,
when a patient leaves an organisation's list, on a tombstone (``hub_removed``). Several
processes may write: a transaction that changes the outbox first locks the one
``hub_mark`` row and holds it until it commits, so marks are given in commit order and
a reader never passes a mark whose change commits later (as the feed lock does for
feed numbers).
"""

from __future__ import annotations

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
from caresync.storage.postgres._sql import Conn
from caresync.storage.postgres.core import PostgresCore
from caresync.storage.postgres.reading import snapshot

__all__ = ["HubPart"]

_HUB_COLUMNS = (
    "record_id, organisation, version, state, reason, sent_version, attempts,"
    " next_attempt_ms, last_attempt_ms"
)

_ORDER = " ORDER BY next_attempt_ms, record_id LIMIT %s"
# The sender's due rows: two ranges of the index hub_outbox_due (state, next_attempt_ms,
# record_id), each read in its order only as far as the limit, merged.
_DUE = (
    f"(SELECT {_HUB_COLUMNS} FROM hub_outbox WHERE state = 'pending'"
    f" AND next_attempt_ms <= %s AND (next_attempt_ms, record_id) > (%s, %s){_ORDER})"
    f" UNION ALL (SELECT {_HUB_COLUMNS} FROM hub_outbox WHERE state = 'held'"
    f" AND (next_attempt_ms, record_id) > (%s, %s){_ORDER}){_ORDER}"
)
# The pending ones alone (the sender's rounds once it has looked at every held one).
_DUE_PENDING = (
    f"SELECT {_HUB_COLUMNS} FROM hub_outbox WHERE state = 'pending'"
    f" AND next_attempt_ms <= %s AND (next_attempt_ms, record_id) > (%s, %s){_ORDER}"
)
_NEXT_ATTEMPT = "SELECT MIN(next_attempt_ms) FROM hub_outbox WHERE state = 'pending'"
_COUNTS = "SELECT state, COUNT(*) FROM hub_outbox GROUP BY state"
_COUNTS_OF = "SELECT state, COUNT(*) FROM hub_outbox WHERE organisation = %s GROUP BY state"


def _lock_mark(raw: Conn) -> int:
    """Lock the hub mark until the transaction ends (every process's outbox writes
    follow one another from here); the last mark given out."""
    row = raw.execute("SELECT n FROM hub_mark WHERE singleton = 1 FOR UPDATE").fetchone()
    return 0 if row is None else int(row[0])


def _save_mark(raw: Conn, mark: int) -> None:
    raw.execute("UPDATE hub_mark SET n = %s WHERE singleton = 1", (mark,))


def _bury(raw: Conn, organisation: str | None, record_id: str, version: int, mark: int) -> None:
    """Leave a tombstone: the record left ``organisation``'s list at ``mark``."""
    if organisation is None:
        return  # hub changes are read per organisation: nobody lists a record of none
    raw.execute(
        "INSERT INTO hub_removed (organisation, record_id, version, change)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (organisation, record_id) DO UPDATE"
        " SET version = excluded.version, change = excluded.change",
        (organisation, record_id, version, mark),
    )


def write_hub_marks(
    raw: Conn,
    marks: Mapping[str, HubMark],
    versions: Mapping[str, int],
    planned: Mapping[str, PlannedRecord],
) -> None:
    """Upsert (or delete) the hub outbox rows of the records a batch added to, each change
    with its hub mark; a row deleted or moved to another organisation leaves a tombstone."""
    touched = [record_id for record_id in marks if record_id in versions]
    if not touched:
        return
    last = start = _lock_mark(raw)
    before = {
        str(record_id): organisation
        for record_id, organisation in raw.execute(
            "SELECT record_id, organisation FROM hub_outbox WHERE record_id = ANY(%s)",
            (touched,),
        )
    }
    for record_id in touched:
        mark, version = marks[record_id], versions[record_id]
        if not mark.enabled:
            if record_id in before:
                raw.execute("DELETE FROM hub_outbox WHERE record_id = %s", (record_id,))
                last += 1
                _bury(raw, before[record_id], record_id, version, last)
            continue
        plan = planned.get(record_id)
        organisation = None if plan is None else plan.organisation
        last += 1
        raw.execute(
            "INSERT INTO hub_outbox (record_id, organisation, version, state, reason,"
            " attempts, next_attempt_ms, change) VALUES (%s, %s, %s, %s, %s, 0, 0, %s)"
            " ON CONFLICT (record_id) DO UPDATE SET organisation = excluded.organisation,"
            " version = excluded.version, state = excluded.state, reason = excluded.reason,"
            " attempts = 0, next_attempt_ms = 0, change = excluded.change",
            (
                record_id,
                organisation,
                version,
                "pending" if mark.held is None else "held",
                mark.held,
                last,
            ),
        )
        if record_id in before and before[record_id] != organisation:
            _bury(raw, before[record_id], record_id, version, last)
        if organisation is not None:  # listed there again: no longer removed
            raw.execute(
                "DELETE FROM hub_removed WHERE organisation = %s AND record_id = %s",
                (organisation, record_id),
            )
    if last != start:
        _save_mark(raw, last)


def _read_changes(raw: Conn, organisation: str, after: int, limit: int) -> HubChanges:
    """:meth:`HubPart.hub_changes`, inside one snapshot."""
    row = raw.execute("SELECT n FROM hub_mark WHERE singleton = 1").fetchone()
    mark = 0 if row is None else int(row[0])
    changed: list[tuple[int, HubSummaryRow | HubRemoved]] = [
        (int(r[9]), HubSummaryRow(*r[:9]))
        for r in raw.execute(
            f"SELECT {_HUB_COLUMNS}, change FROM hub_outbox"
            " WHERE organisation = %s AND change > %s ORDER BY change LIMIT %s",
            (organisation, after, limit + 1),
        )
    ]
    if after > 0:  # a reader that holds nothing has nothing to drop
        changed += [
            (int(change), HubRemoved(str(record_id), int(version)))
            for record_id, version, change in raw.execute(
                "SELECT record_id, version, change FROM hub_removed"
                " WHERE organisation = %s AND change > %s ORDER BY change LIMIT %s",
                (organisation, after, limit + 1),
            )
        ]
    changed.sort(key=lambda pair: pair[0])
    more = len(changed) > limit
    if more:
        del changed[limit:]
        mark = changed[-1][0]
    return HubChanges(
        tuple(c for _n, c in changed if isinstance(c, HubSummaryRow)),
        tuple(c for _n, c in changed if isinstance(c, HubRemoved)),
        mark,
        more,
    )


class HubPart(PostgresCore):
    """A server's health-hub outbox."""

    async def hub_summaries(self, organisation: str | None = None) -> list[HubSummaryRow]:
        """The health-hub outbox (of that organisation's records), by record id."""
        check_optional_text(organisation, "organisation")
        sql = f"SELECT {_HUB_COLUMNS} FROM hub_outbox"
        args: tuple[object, ...] = ()
        if organisation is not None:
            sql += " WHERE organisation = %s"
            args = (organisation,)
        sql += " ORDER BY record_id"
        return await self._run(
            "reading the hub outbox",
            lambda raw: [HubSummaryRow(*row) for row in raw.execute(sql, args)],
        )

    async def hub_summary(self, record_id: str) -> HubSummaryRow | None:
        """The record's hub outbox row, or None."""
        check_text(record_id, "record_id")

        def read(raw: Conn) -> HubSummaryRow | None:
            row = raw.execute(
                f"SELECT {_HUB_COLUMNS} FROM hub_outbox WHERE record_id = %s", (record_id,)
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
            sql, args = _DUE, (now_ms, at, record_id, limit, at, record_id, limit, limit)
        else:
            sql, args = _DUE_PENDING, (now_ms, at, record_id, limit)
        return await self._run(
            "reading the hub outbox's due summaries",
            lambda raw: [HubSummaryRow(*row) for row in raw.execute(sql, args)],
        )

    async def hub_next_attempt_ms(self) -> int | None:
        """The earliest retry time of a pending summary, or None."""

        def read(raw: Conn) -> int | None:
            row = raw.execute(_NEXT_ATTEMPT).fetchone()
            return None if row is None or row[0] is None else int(row[0])

        return await self._run("reading the hub outbox's next retry", read)

    async def hub_state_counts(self, organisation: str | None = None) -> dict[str, int]:
        """The outbox rows (of that organisation's records) in each state."""
        check_optional_text(organisation, "organisation")
        sql, args = (_COUNTS, ()) if organisation is None else (_COUNTS_OF, (organisation,))

        def read(raw: Conn) -> dict[str, int]:
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
            lambda raw: snapshot(raw, lambda: _read_changes(raw, organisation, after, limit)),
        )

    async def record_hub_attempt(self, record_id: str, attempted_ms: int) -> None:
        """Note that a summary of the record is being sent now."""
        check_hub_attempt(record_id, attempted_ms)

        def job(raw: Conn) -> None:
            def body() -> None:
                mark = _lock_mark(raw) + 1
                cursor = raw.execute(
                    "UPDATE hub_outbox SET last_attempt_ms = %s, change = %s WHERE record_id = %s",
                    (attempted_ms, mark, record_id),
                )
                if cursor.rowcount:
                    _save_mark(raw, mark)

            self._write(raw, body)

        await self._run(f"noting a hub attempt for {record_id}", job)

    async def record_hub_outcome(self, record_id: str, version: int, outcome: HubOutcome) -> bool:
        """Store what became of sending ``version`` (see :class:`HubOutcome`)."""
        check_hub_outcome(record_id, version, outcome)

        def job(raw: Conn) -> bool:
            def body() -> bool:
                mark = _lock_mark(raw) + 1
                # A row takes a mark only when it changes: a held summary found held
                # again is no change for the laptops' reports.
                changed = 0
                if outcome.acknowledged:
                    changed += raw.execute(
                        "UPDATE hub_outbox SET sent_version = %s, change = %s"
                        " WHERE record_id = %s AND COALESCE(sent_version, 0) < %s",
                        (version, mark, record_id, version),
                    ).rowcount
                fields = (outcome.state, outcome.reason, outcome.attempts, outcome.next_attempt_ms)
                changed += raw.execute(
                    "UPDATE hub_outbox SET state = %s, reason = %s, attempts = %s,"
                    " next_attempt_ms = %s, change = %s WHERE record_id = %s AND version = %s"
                    " AND (state, reason, attempts, next_attempt_ms) IS DISTINCT FROM"
                    " (%s::text, %s::text, %s::integer, %s::bigint)",
                    (*fields, mark, record_id, version, *fields),
                ).rowcount
                if changed:
                    _save_mark(raw, mark)
                found = raw.execute(
                    "SELECT 1 FROM hub_outbox WHERE record_id = %s AND version = %s",
                    (record_id, version),
                ).fetchone()
                return found is not None

            return self._write(raw, body)

        return await self._run(f"storing a hub outcome for {record_id}", job)
