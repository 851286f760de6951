"""A server's health-hub outbox: the summary rows a push marks, and what became of
sending them."""

from __future__ import annotations

from collections.abc import Mapping

from caresync.storage._arguments import check_hub_attempt, check_hub_outcome
from caresync.storage._writes import PlannedRecord
from caresync.storage.base import HubMark, HubOutcome, HubSummaryRow, check_optional_text
from caresync.storage.postgres._sql import Conn
from caresync.storage.postgres.core import PostgresCore

__all__ = ["HubPart"]

_HUB_COLUMNS = (
    "record_id, organisation, version, state, reason, sent_version, attempts,"
    " next_attempt_ms, last_attempt_ms"
)


def write_hub_marks(
    raw: Conn,
    marks: Mapping[str, HubMark],
    versions: Mapping[str, int],
    planned: Mapping[str, PlannedRecord],
) -> None:
    """Upsert (or delete) the hub outbox rows of the records a batch added to."""
    for record_id, mark in marks.items():
        version = versions.get(record_id)
        if version is None:
            continue  # the batch added nothing to it: its row stays as it is
        if not mark.enabled:
            raw.execute("DELETE FROM hub_outbox WHERE record_id = %s", (record_id,))
            continue
        plan = planned.get(record_id)
        raw.execute(
            "INSERT INTO hub_outbox (record_id, organisation, version, state, reason,"
            " attempts, next_attempt_ms) VALUES (%s, %s, %s, %s, %s, 0, 0)"
            " ON CONFLICT (record_id) DO UPDATE SET organisation = excluded.organisation,"
            " version = excluded.version, state = excluded.state, reason = excluded.reason,"
            " attempts = 0, next_attempt_ms = 0",
            (
                record_id,
                None if plan is None else plan.organisation,
                version,
                "pending" if mark.held is None else "held",
                mark.held,
            ),
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

    async def record_hub_attempt(self, record_id: str, attempted_ms: int) -> None:
        """Note that a summary of the record is being sent now."""
        check_hub_attempt(record_id, attempted_ms)

        def job(raw: Conn) -> None:
            self._write(
                raw,
                lambda: raw.execute(
                    "UPDATE hub_outbox SET last_attempt_ms = %s WHERE record_id = %s",
                    (attempted_ms, record_id),
                ),
            )

        await self._run(f"noting a hub attempt for {record_id}", job)

    async def record_hub_outcome(self, record_id: str, version: int, outcome: HubOutcome) -> bool:
        """Store what became of sending ``version`` (see :class:`HubOutcome`)."""
        check_hub_outcome(record_id, version, outcome)

        def job(raw: Conn) -> bool:
            def body() -> bool:
                if outcome.acknowledged:
                    raw.execute(
                        "UPDATE hub_outbox SET sent_version = GREATEST(sent_version, %s)"
                        " WHERE record_id = %s",
                        (version, record_id),
                    )
                cursor = raw.execute(
                    "UPDATE hub_outbox SET state = %s, reason = %s, attempts = %s,"
                    " next_attempt_ms = %s WHERE record_id = %s AND version = %s",
                    (
                        outcome.state,
                        outcome.reason,
                        outcome.attempts,
                        outcome.next_attempt_ms,
                        record_id,
                        version,
                    ),
                )
                return bool(cursor.rowcount)

            return self._write(raw, body)

        return await self._run(f"storing a hub outcome for {record_id}", job)
