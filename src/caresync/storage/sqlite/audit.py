"""The audit trail's hash chains: this replica's own, and those other replicas send."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from caresync.audit.chain import AuditEntry, AuditEvent
from caresync.storage._arguments import check_audit_append, check_seen
from caresync.storage._audit import (
    check_audit_query,
    sql_append,
    sql_entries,
    sql_receive,
    sql_tail,
)
from caresync.storage.base import check_text
from caresync.storage.sqlite.core import BRIEF_ROWS, SQLiteCore

__all__ = ["AuditPart", "sql_newest_tail"]


def sql_newest_tail(raw: sqlite3.Connection, replica_id: str) -> tuple[int, bytes]:
    """The last (number, hash) of the replica's newest chain line; ``(0, GENESIS)``: none."""
    row = raw.execute(
        "SELECT MAX(line) FROM audit_trail WHERE replica_id = ?", (replica_id,)
    ).fetchone()
    return sql_tail(raw, replica_id, 0 if row is None or row[0] is None else int(row[0]))


class AuditPart(SQLiteCore):
    """The audit trail's hash chains."""

    async def append_audit(
        self,
        events: Sequence[AuditEvent],
        *,
        replica_id: str | None = None,
        seen: tuple[str, int] | None = None,
        durable: bool = True,
    ) -> list[AuditEntry]:
        """Append ``events`` to this replica's own audit chain, in one transaction
        (with ``seen``, the replica's last contact too); ``durable=False`` commits it
        without waiting for the disk (see :meth:`make_durable`)."""
        checked = check_audit_append(events, replica_id)
        noted = check_seen(seen)
        if not checked:
            return []
        now = self._now_ms()

        def body(raw: sqlite3.Connection) -> list[AuditEntry]:
            entries = sql_append(raw, replica_id or self._own_id(raw), checked, now)
            if noted is not None:
                raw.execute(
                    "UPDATE replicas SET last_seen_ms = ? WHERE replica_id = ?", noted[::-1]
                )
            return entries

        def job(raw: sqlite3.Connection) -> list[AuditEntry]:
            if not durable:
                return self._write_lazily(raw, lambda: body(raw), accounts=True)
            # Through the side door too: a reader beside a running writer records its reads.
            return self._write(raw, lambda: body(raw), accounts=True)

        return await self._run("writing the audit trail", job)

    async def audit_entries(
        self,
        *,
        replica_id: str | None = None,
        record_id: str | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """Audit entries in chain order (replica, line, number), filtered as asked."""
        check_audit_query(replica_id, record_id, after_seq, limit)

        def read(raw: sqlite3.Connection, most: int | None) -> list[AuditEntry]:
            return sql_entries(
                raw, replica_id=replica_id, record_id=record_id, after_seq=after_seq, limit=most
            )

        if replica_id is None or record_id is not None:
            # A filter by record walks the line; the whole trail is no brief read.
            return await self._run("reading the audit trail", lambda raw: read(raw, limit))
        if limit is not None and limit <= BRIEF_ROWS:
            # A few entries of one replica, read by a seek per chain line (sql_entries).
            return await self._run(
                "reading the audit trail", lambda raw: read(raw, limit), brief=True
            )

        def few(raw: sqlite3.Connection) -> list[AuditEntry] | None:
            # All there is when no more than BRIEF_ROWS follow (a laptop's sync sends
            # the entries the server lacks: mostly its last login's).
            found = read(raw, BRIEF_ROWS + 1)
            return found if len(found) <= BRIEF_ROWS else None

        return await self._read_few("reading the audit trail", few, lambda raw: read(raw, limit))

    async def audit_tail(self, replica_id: str | None = None) -> tuple[int, bytes]:
        """The last (number, hash) of the replica's newest chain line (this replica's
        own chain when None); ``(0, GENESIS)`` when it has none."""
        if replica_id is not None:
            check_text(replica_id, "replica_id")

        def job(raw: sqlite3.Connection) -> tuple[int, bytes]:
            return sql_newest_tail(raw, replica_id if replica_id is not None else self._own_id(raw))

        return await self._run("reading the audit trail", job)

    async def receive_audit(self, replica_id: str, entries: Sequence[AuditEntry]) -> int:
        """Keep the audit entries another replica sent, in one transaction (a server's
        job); returns the number of the last one. AuditError, with nothing kept, for
        entries that are malformed, of another replica, or that continue no chain line."""
        check_text(replica_id, "replica_id")
        batch = tuple(entries)

        def job(raw: sqlite3.Connection) -> int:
            return self._write(raw, lambda: sql_receive(raw, replica_id, batch))

        return await self._run(f"keeping the audit trail of {replica_id}", job)
