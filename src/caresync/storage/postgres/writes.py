"""Writing what peers sent (``write_remote``), conflict rows, and the machinery every
record write shares: planned records stored with their log, conflicts and person cards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from caresync.exceptions import CorruptDatabaseError, UnknownRecordError
from caresync.records.persons import PersonCard
from caresync.storage._arguments import check_write_remote_call
from caresync.storage._copy import write_copy_of
from caresync.storage._writes import PersonWrite, PlannedRecord, WriteLike, plan_writes
from caresync.storage.base import (
    ConflictRow,
    CopiedRecords,
    HubMark,
    IncomingUpdate,
    QuarantinedUpdate,
    RecordClient,
    check_claims_free,
    check_conflicts,
    check_conflicts_by_record,
    check_persons_by_record,
    check_text,
    hub_versions,
    unknown_records_error,
)
from caresync.storage.postgres._sql import (
    Conn,
    client_owners_of,
    feed_head,
    full,
    put_meta,
    replace_conflicts_of,
)
from caresync.storage.postgres.core import PostgresCore
from caresync.storage.postgres.hub import write_hub_marks
from caresync.storage.postgres.persons import read_cards, store_persons
from caresync.storage.postgres.schema import FEED_CHANNEL

__all__ = ["RecordWritesPart"]


class RecordWritesPart(PostgresCore):
    """Writing what peers sent, and the planned-record machinery every write shares."""

    async def write_copy(
        self,
        records: CopiedRecords,
        *,
        checkpoint: tuple[str, str] | None = None,
        quarantine: Sequence[QuarantinedUpdate] = (),
        durable: bool = True,
    ) -> None:
        """A first copy's batch, as ``write_remote`` of one item per record (see
        ``ReplicaStore.write_copy``)."""
        await write_copy_of(
            self, records, checkpoint=checkpoint, quarantine=quarantine, durable=durable
        )

    async def write_remote(
        self,
        items: Sequence[IncomingUpdate],
        *,
        checkpoint: tuple[str, str] | None = None,
        to_feed: bool = False,
        origin: str | None = None,
        quarantine: Sequence[QuarantinedUpdate] = (),
        claim_clients: Mapping[RecordClient, str] | None = None,
        hub: Mapping[str, HubMark] | None = None,
        durable: bool = True,
    ) -> list[int]:
        """Commit a batch of received updates, and the checkpoint, in one transaction.

        Returns one number per item: its change-feed sequence number when
        ``to_feed`` (the server), or 0 when nothing was appended (without
        ``to_feed``, or a resent update the record held already). The feed lock
        is held from the first read of the records to the commit: writers of
        records follow one another, and feed numbers follow commit order.
        ``durable=False``: committed asynchronously (``synchronous_commit = off``; see
        :meth:`make_durable`).
        """
        writes, kept_aside, claims, marks = check_write_remote_call(
            items, checkpoint, to_feed, origin, quarantine, claim_clients, hub
        )
        now = self._now_ms()

        def job(raw: Conn) -> list[int]:
            def body() -> list[int]:
                if not durable:
                    raw.execute("SET LOCAL synchronous_commit = off")
                if claims:
                    # Under the feed lock, so two processes cannot both bind one pair; read
                    # before the batch is stored (a legacy binding counts where the record
                    # held the client's ops before this write).
                    check_claims_free(claims, client_owners_of(raw, sorted(claims)))
                planned = plan_writes(
                    writes,
                    self._known(raw, writes),
                    lambda rid: full(raw, rid),
                    skip_duplicates=True,
                )
                # Into the feed, an update is stored once: its feed row is its log row.
                self._store_planned(raw, writes, planned, now, log=not to_feed)
                seqs = [0] * len(writes)
                if to_feed:
                    appended = sorted(i for p in planned.values() for i in p.appended)
                    rows = []
                    for seq, i in enumerate(appended, start=feed_head(raw) + 1):
                        plan = planned[writes[i].record_id]
                        rows.append((seq, plan.key, plan.organisation, origin, writes[i].update))
                        seqs[i] = seq
                    if rows:
                        with raw.cursor() as cursor:
                            cursor.executemany(
                                "INSERT INTO feed (seq, rk, organisation, origin, data)"
                                " VALUES (%s, %s, %s, %s, %s)",
                                rows,
                            )
                        # Delivered at commit, in commit order: other processes' servers
                        # read the feed from their last seq and relay it live.
                        raw.execute("SELECT pg_notify(%s, %s)", (FEED_CHANNEL, str(rows[-1][0])))
                        if self._section_head is not None:
                            self._section_head = rows[-1][0]  # the head this commit leaves
                with raw.cursor() as cursor:
                    if claims:
                        cursor.executemany(
                            "INSERT INTO record_clients (record_id, client, replica_id)"
                            " VALUES (%s, %s, %s) ON CONFLICT (record_id, client) DO NOTHING",
                            [(rid, client, owner) for (rid, client), owner in claims.items()],
                        )
                    if kept_aside:
                        cursor.executemany(
                            "INSERT INTO quarantine (record_id, data, reason, received_ms)"
                            " VALUES (%s, %s, %s, %s)",
                            [(q.record_id, q.update, q.reason, now) for q in kept_aside],
                        )
                if marks:
                    write_hub_marks(raw, marks, hub_versions(writes, seqs), planned)
                if checkpoint is not None:
                    put_meta(raw, checkpoint[0], checkpoint[1])
                return seqs

            seqs = self._write(raw, body, records=True)
            self._unsynced = self._unsynced or not durable
            return seqs

        return await self._run(f"storing {len(writes)} received updates", job)

    def _store_planned(
        self,
        raw: Conn,
        writes: Sequence[WriteLike],
        planned: dict[str, PlannedRecord],
        now: int,
        *,
        log: bool,
    ) -> None:
        """Write the records' rows, their log rows (with ``log``) and their conflict rows.

        A new record gets its integer key from the table's identity column.
        """
        appended: list[int] = []
        with raw.cursor() as cursor:
            for plan in planned.values():
                if plan.is_new:
                    cursor.execute(
                        "INSERT INTO records (record_id, organisation, state_vector, pending,"
                        " log_count, log_bytes, created_ms, updated_ms)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING rk",
                        (
                            plan.record_id,
                            plan.organisation,
                            plan.state_vector,
                            plan.pending,
                            len(plan.appended),
                            plan.appended_bytes,
                            now,
                            now,
                        ),
                    )
                    row = cursor.fetchone()
                    plan.key = None if row is None else int(row[0])
                elif plan.key is None:
                    raise CorruptDatabaseError(f"record {plan.record_id} has no key; run check()")
                elif plan.changed or plan.appended or plan.organisation_set:
                    cursor.execute(
                        "UPDATE records SET state_vector = %s, pending = %s,"
                        " log_count = log_count + %s, log_bytes = log_bytes + %s,"
                        " updated_ms = %s, organisation = COALESCE(organisation, %s)"
                        " WHERE record_id = %s",
                        (
                            plan.state_vector,
                            plan.pending,
                            len(plan.appended),
                            plan.appended_bytes,
                            now,
                            plan.organisation,
                            plan.record_id,
                        ),
                    )
                appended.extend(plan.appended)
            if log and appended:
                # Log rows in the order the writes came, whatever their record.
                cursor.executemany(
                    "INSERT INTO log (rk, data, created_ms) VALUES (%s, %s, %s)",
                    [
                        (planned[writes[i].record_id].key, writes[i].update, now)
                        for i in sorted(appended)
                    ],
                )
        replaced = {p.record_id: p.conflicts for p in planned.values() if p.conflicts is not None}
        if replaced:
            replace_conflicts_of(raw, replaced)
        persons = {
            p.record_id: PersonWrite(p.organisation, p.person, p.is_new)
            for p in planned.values()
            if p.person is not None
        }
        # A record given an organisation keeps its card, now compared within it.
        moved = [p for p in planned.values() if p.organisation_set and p.person is None]
        if moved:
            stored = read_cards(raw, [p.record_id for p in moved])
            persons.update(
                (p.record_id, PersonWrite(p.organisation, stored[p.record_id]))
                for p in moved
                if p.record_id in stored
            )
        if persons:
            store_persons(raw, persons)

    async def set_conflicts(self, record_id: str, conflicts: Sequence[ConflictRow]) -> None:
        """Replace a stored record's conflict rows (after the rules changed, say)."""
        check_text(record_id, "record_id")
        rows = check_conflicts(record_id, conflicts)

        def job(raw: Conn) -> None:
            def body() -> None:
                if (
                    raw.execute(
                        "SELECT 1 FROM records WHERE record_id = %s", (record_id,)
                    ).fetchone()
                    is None
                ):
                    raise UnknownRecordError(f"no record {record_id} is stored here")
                replace_conflicts_of(raw, {record_id: rows})

            self._write(raw, body, records=True)

        await self._run(f"storing conflicts of {record_id}", job)

    async def set_conflicts_many(
        self,
        rows_by_record: Mapping[str, Sequence[ConflictRow]],
        *,
        persons: Mapping[str, PersonCard] | None = None,
    ) -> None:
        """Replace the conflict rows (and person cards) of many stored records in one
        transaction; all checked first (see :meth:`ReplicaStore.set_conflicts_many`)."""
        rows = check_conflicts_by_record(rows_by_record)
        cards = check_persons_by_record(persons)
        ids = list(dict.fromkeys([*rows, *cards]))

        def job(raw: Conn) -> None:
            def body() -> None:
                found: dict[str, str | None] = {
                    record_id: organisation
                    for record_id, organisation in raw.execute(
                        "SELECT record_id, organisation FROM records WHERE record_id = ANY(%s)",
                        (ids,),
                    )
                }
                missing = [record_id for record_id in ids if record_id not in found]
                if missing:
                    raise unknown_records_error(missing, len(ids))
                replace_conflicts_of(raw, rows)
                if cards:
                    store_persons(
                        raw, {rid: PersonWrite(found[rid], card) for rid, card in cards.items()}
                    )

            if ids:
                self._write(raw, body, records=True)

        await self._run(f"storing conflicts of {len(ids)} records", job)
