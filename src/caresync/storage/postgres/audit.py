"""The audit trail's hash chains: this replica's own, and those other replicas send.

The chain rules are the shared ones (:mod:`caresync.storage._audit`: planning an
append, checking what a replica sent); this module reads and writes the rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from caresync.audit.chain import GENESIS, AuditEntry, AuditEvent
from caresync.storage._arguments import check_audit_append, check_seen
from caresync.storage._audit import check_audit_query, plan_append, plan_receive
from caresync.storage.base import check_text
from caresync.storage.postgres._sql import Conn
from caresync.storage.postgres.core import PostgresCore

__all__ = ["AuditPart"]

_COLUMNS = "replica_id, seq, at_ms, actor, action, record_id, detail, prev_hash, hash, line"

# Appends to one replica's chain follow one another, in every process: a
# transaction-scoped advisory lock per replica id (hashed by PostgreSQL), always taken
# after any row of ``replicas`` the transaction writes (one lock order: no deadlock).
_CHAIN_LOCK = "SELECT pg_advisory_xact_lock(hashtext('caresync.audit:' || %s))"


def _entry(row: Sequence[Any]) -> AuditEntry:
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


def _tail(raw: Conn, replica_id: str, line: int = 0) -> tuple[int, bytes]:
    """The last (number, hash) of a line of a replica's chain; (0, GENESIS) if it is empty."""
    row = raw.execute(
        "SELECT seq, hash FROM audit_trail WHERE replica_id = %s AND line = %s"
        " ORDER BY seq DESC LIMIT 1",
        (replica_id, line),
    ).fetchone()
    return (0, GENESIS) if row is None else (int(row[0]), bytes(row[1]))


def _last_line(raw: Conn, replica_id: str) -> int:
    row = raw.execute(
        "SELECT MAX(line) FROM audit_trail WHERE replica_id = %s", (replica_id,)
    ).fetchone()
    return -1 if row is None or row[0] is None else int(row[0])


def append_own(
    raw: Conn, replica_id: str, events: Sequence[AuditEvent], now_ms: int
) -> list[AuditEntry]:
    """Append the store's own ``events`` to line 0 of its chain, inside the caller's
    transaction (so an entry commits with what it records)."""
    if not events:
        return []
    raw.execute(_CHAIN_LOCK, (replica_id,))
    entries = plan_append(events, replica_id=replica_id, tail=_tail(raw, replica_id), now_ms=now_ms)
    _insert(raw, entries)
    return entries


def _insert(raw: Conn, entries: Sequence[AuditEntry]) -> None:
    with raw.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO audit_trail ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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


class AuditPart(PostgresCore):
    """The audit trail's hash chains."""

    async def append_audit(
        self,
        events: Sequence[AuditEvent],
        *,
        replica_id: str | None = None,
        seen: tuple[str, int] | None = None,
        durable: bool = True,
    ) -> list[AuditEntry]:
        """Append ``events`` to this replica's own audit chain (line 0), in one transaction
        (with ``seen``, the replica's last contact too); ``durable=False`` commits it
        asynchronously (``synchronous_commit = off``; see :meth:`make_durable`)."""
        checked = check_audit_append(events, replica_id)
        noted = check_seen(seen)
        if not checked:
            return []
        now = self._now_ms()

        def job(raw: Conn) -> list[AuditEntry]:
            def body() -> list[AuditEntry]:
                if not durable:
                    raw.execute("SET LOCAL synchronous_commit = off")
                rid = replica_id or self._own_id(raw)
                if noted is not None:
                    # The replica's row before the chain lock, as enrolment, revocation
                    # and a new secret take them: the other order deadlocked with a
                    # revocation of that replica through another process.
                    raw.execute(
                        "UPDATE replicas SET last_seen_ms = %s WHERE replica_id = %s", noted[::-1]
                    )
                raw.execute(_CHAIN_LOCK, (rid,))
                entries = plan_append(checked, replica_id=rid, tail=_tail(raw, rid), now_ms=now)
                _insert(raw, entries)
                return entries

            entries = self._write(raw, body)
            self._unsynced = self._unsynced or not durable
            return entries

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
        where = ["seq > %s"]
        args: list[object] = [after_seq]
        if replica_id is not None:
            where.append("replica_id = %s")
            args.append(replica_id)
        if record_id is not None:
            where.append("record_id = %s")
            args.append(record_id)
        sql = (
            f"SELECT {_COLUMNS} FROM audit_trail WHERE {' AND '.join(where)}"
            " ORDER BY replica_id, line, seq"
        )
        if limit is not None:
            sql += " LIMIT %s"
            args.append(limit)
        return await self._run(
            "reading the audit trail", lambda raw: [_entry(r) for r in raw.execute(sql, args)]
        )

    async def audit_tail(self, replica_id: str | None = None) -> tuple[int, bytes]:
        """The last (number, hash) of the replica's newest chain line (this replica's
        own chain when None); ``(0, GENESIS)`` when it has none."""
        if replica_id is not None:
            check_text(replica_id, "replica_id")

        def job(raw: Conn) -> tuple[int, bytes]:
            rid = replica_id if replica_id is not None else self._own_id(raw)
            return _tail(raw, rid, max(_last_line(raw, rid), 0))

        return await self._run("reading the audit trail", job)

    async def receive_audit(self, replica_id: str, entries: Sequence[AuditEntry]) -> int:
        """Keep the audit entries another replica sent, in one transaction; returns the
        number of the last one. AuditError, with nothing kept, for entries that are
        malformed, of another replica, or that continue no chain line."""
        check_text(replica_id, "replica_id")
        batch = tuple(entries)

        def job(raw: Conn) -> int:
            def body() -> int:
                raw.execute(_CHAIN_LOCK, (replica_id,))
                last_line = _last_line(raw, replica_id)
                tails = {line: _tail(raw, replica_id, line) for line in range(last_line + 1)}

                def holds(seq: int, digest: bytes) -> bool:
                    return (
                        raw.execute(
                            "SELECT 1 FROM audit_trail WHERE replica_id = %s AND seq = %s"
                            " AND hash = %s",
                            (replica_id, seq, digest),
                        ).fetchone()
                        is not None
                    )

                plan = plan_receive(replica_id, batch, tails=tails, holds=holds)
                if plan.new:
                    _insert(raw, [replace(e, line=plan.line) for e in plan.new])
                return plan.acknowledged

            return self._write(raw, body)

        return await self._run(f"keeping the audit trail of {replica_id}", job)
