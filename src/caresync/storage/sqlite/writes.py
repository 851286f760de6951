"""Writing what peers sent (``write_remote``), and the machinery every record write
shares: planned records stored with their log, conflict rows and person cards."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat

from caresync.exceptions import CorruptDatabaseError, InvalidInputError, UnknownRecordError
from caresync.records.persons import PersonCard, PersonCards
from caresync.storage._arguments import check_write_remote_call
from caresync.storage._copy import copied_items
from caresync.storage._updates import has_pending
from caresync.storage._writes import (
    PersonWrite,
    PlannedRecord,
    WriteLike,
    check_meta_key,
    plan_writes,
)
from caresync.storage.base import (
    ConflictRow,
    CopiedRecords,
    HubMark,
    IncomingUpdate,
    QuarantinedUpdate,
    RecordClient,
    card_digest,
    check_claims_free,
    check_conflicts,
    check_conflicts_by_record,
    check_persons_by_record,
    check_quarantine,
    check_text,
    check_write_remote,
    hub_versions,
    unknown_records_error,
)
from caresync.storage.sqlite._sql import (
    _chunks,
    _client_owners,
    _feed_head,
    _full,
    _marks,
    _put_meta,
    _record_row,
    _replace_conflicts_of,
    _scalar,
)
from caresync.storage.sqlite.core import SQLiteCore
from caresync.storage.sqlite.hub import _write_hub_marks
from caresync.storage.sqlite.persons import (
    _merge_copied_keys,
    _read_cards,
    _store_copied_persons,
    _store_persons,
)

__all__ = ["RecordWritesPart"]


def _unsynced(raw: sqlite3.Connection) -> bool:
    """Whether any local change waits for the server (in the outbox, or set aside)."""
    found = raw.execute(
        "SELECT EXISTS (SELECT 1 FROM outbox) OR EXISTS (SELECT 1 FROM outbox_aside)"
    ).fetchone()
    return bool(found[0])


def _last(row: tuple[object, ...]) -> str:
    """An UPDATE row's record id (its last parameter)."""
    return str(row[-1])


class RecordWritesPart(SQLiteCore):
    """Writing what peers sent, and the planned-record machinery every write shares."""

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
        ``to_feed`` (the server), or 0 when nothing was appended — without
        ``to_feed``, or when the record already held every part of the update
        (a resent update is stored once). Remote updates never enter the outbox.
        ``quarantine``: updates that could not be merged, kept aside with them.
        ``durable=False``: committed without waiting for the disk (see
        :meth:`make_durable`).
        """
        writes, kept_aside, claims, marks = check_write_remote_call(
            items, checkpoint, to_feed, origin, quarantine, claim_clients, hub
        )
        now = self._now_ms()

        def job(raw: sqlite3.Connection) -> list[int]:
            def body() -> tuple[list[int], dict[str, PlannedRecord]]:
                if claims:
                    # Read before the batch is stored: a client's legacy binding counts
                    # where the record held its ops before this write.
                    owners = _client_owners(raw, sorted(claims))
                    check_claims_free(claims, owners)  # raised: the transaction rolls back
                planned = plan_writes(
                    writes,
                    self._known(raw, writes),
                    lambda rid: _full(raw, rid),
                    skip_duplicates=True,
                )
                # Into the feed, an update is stored once: its feed row is its log row.
                self._store_planned(raw, writes, planned, now, log=not to_feed)
                seqs = [0] * len(writes)
                if to_feed:
                    appended = sorted(i for p in planned.values() for i in p.appended)
                    # Numbered explicitly after the highest: a clash would raise, not reuse.
                    head = _feed_head(raw)
                    rows = []
                    for seq, i in enumerate(appended, start=head + 1):
                        plan = planned[writes[i].record_id]
                        rows.append((seq, plan.key, plan.organisation, origin, writes[i].update))
                        seqs[i] = seq
                    raw.executemany(
                        "INSERT INTO feed (seq, rk, organisation, origin, data)"
                        " VALUES (?, ?, ?, ?, ?)",
                        rows,
                    )
                if claims:
                    raw.executemany(
                        "INSERT OR IGNORE INTO record_clients (record_id, client, replica_id)"
                        " VALUES (?, ?, ?)",
                        [(rid, client, owner) for (rid, client), owner in claims.items()],
                    )
                if kept_aside:
                    raw.executemany(
                        "INSERT INTO quarantine (record_id, data, reason, received_ms)"
                        " VALUES (?, ?, ?, ?)",
                        [(q.record_id, q.update, q.reason, now) for q in kept_aside],
                    )
                if marks:
                    _write_hub_marks(raw, marks, hub_versions(writes, seqs), planned)
                if checkpoint is not None:
                    _put_meta(raw, checkpoint[0], checkpoint[1])
                return seqs, planned

            return self._commit_planned(raw, body, durable=durable)

        seqs = await self._run(f"storing {len(writes)} received updates", job)
        if any(seqs):
            self._commits.fed()
        return seqs

    async def write_copy(
        self,
        records: CopiedRecords,
        *,
        checkpoint: tuple[str, str] | None = None,
        quarantine: Sequence[QuarantinedUpdate] = (),
        durable: bool = True,
    ) -> None:
        """Commit a first copy's batch of records new here, with the checkpoint, in one
        transaction (see ``ReplicaStore.write_copy``).

        Each record is one row and one log row, written by ``executemany`` from
        tuples made in passes over the batch's lists; only whether each holds
        waiting items is asked of pycrdt. The record cache is not filled: a copy
        writes every record once, and would evict the records in use (a copied
        record is read from the file when first asked for). A batch naming a record
        stored here already writes nothing this way and goes through
        :meth:`write_remote`, whose planning merges it with what is stored.
        """
        if not isinstance(records, CopiedRecords):
            raise InvalidInputError(f"records must be CopiedRecords, not {type(records).__name__}")
        check_write_remote((), checkpoint, False, None)
        if checkpoint is not None:
            check_meta_key(checkpoint[0])
        kept_aside = check_quarantine(quarantine)
        ids = list(records.record_ids)
        if not ids and not kept_aside and checkpoint is None and not records.last:
            return
        now = self._now_ms()

        def job(raw: sqlite3.Connection) -> bool:
            def body() -> bool:
                for chunk in _chunks(ids):
                    found = raw.execute(
                        f"SELECT 1 FROM records WHERE record_id IN ({_marks(len(chunk))}) LIMIT 1",
                        chunk,
                    ).fetchone()
                    if found is not None:
                        return False  # nothing written: the ordinary way, below
                self._store_copied(raw, records, ids, now)
                if kept_aside:
                    raw.executemany(
                        "INSERT INTO quarantine (record_id, data, reason, received_ms)"
                        " VALUES (?, ?, ?, ?)",
                        [(q.record_id, q.update, q.reason, now) for q in kept_aside],
                    )
                if checkpoint is not None:
                    _put_meta(raw, checkpoint[0], checkpoint[1])
                return True

            try:
                return (self._write if durable else self._write_lazily)(raw, body)
            except BaseException:
                self.cache.clear()  # as after any failed write: the cache holds committed state
                raise

        if not await self._run(f"storing {len(ids)} copied records", job):
            await self.write_remote(
                copied_items(records),
                checkpoint=checkpoint,
                quarantine=kept_aside,
                durable=durable,
            )

    def _store_copied(
        self, raw: sqlite3.Connection, records: CopiedRecords, ids: list[str], now: int
    ) -> None:
        """The rows of records new here: the state ``_store_planned`` would store for them,
        laid out as a first copy's (one log row each, counted by the record's row, whose
        ``head_at`` names it; ``_store_planned`` leaves new records' log rows to carry
        their state instead)."""
        updates, vectors = records.updates, records.state_vectors
        organisation = records.organisation
        first = _scalar(raw, "SELECT MAX(rk) FROM records") + 1
        keys = range(first, first + len(ids))
        # Each record's one log row, numbered here: the row's counts hold it (head_at).
        first_row = _scalar(raw, "SELECT MAX(id) FROM log") + 1
        rows = range(first_row, first_row + len(ids))
        waiting = records.waiting
        pending = list(map(has_pending, updates, vectors)) if waiting is None else waiting
        # Each card's bytes as stored (as the server sent them, else written out), and
        # its digest on the record's row: written with the row, not updated after it.
        persons = records.persons
        sent = persons.data if isinstance(persons, PersonCards) else records.card_bytes
        # By id, not by card: a PersonCards makes a card only when asked for one.
        card_data = {rid: sent.get(rid) or persons[rid].to_bytes() for rid in persons}
        digests = [
            None if (data := card_data.get(rid)) is None else card_digest(data) for rid in ids
        ]
        raw.executemany(
            "INSERT INTO records (record_id, organisation, state_vector, pending, log_count,"
            " log_bytes, created_ms, updated_ms, rk, card_digest, head_at)"
            " VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)",
            zip(
                ids,
                repeat(organisation),
                vectors,
                pending,
                map(len, updates),
                repeat(now),
                repeat(now),
                keys,
                digests,
                rows,
                strict=False,
            ),
        )
        raw.executemany(
            "INSERT INTO log (id, rk, data, created_ms) VALUES (?, ?, ?, ?)",
            zip(rows, keys, updates, repeat(now), strict=False),
        )
        conflicts = {rid: found for rid, found in records.conflicts.items() if found}
        if conflicts:
            _replace_conflicts_of(raw, conflicts, conflicts.keys())  # new: nothing to delete
        if persons:
            named = records.pairs
            if named is not None and _unsynced(raw):
                # Local changes the server has not acknowledged: cards here it may not
                # have paired as they are. The pairs are found here, as without it.
                named = None
            rks = dict(zip(ids, keys, strict=False))
            if named is None:
                _store_persons(
                    raw,
                    {rid: PersonWrite(organisation, persons[rid], True) for rid in persons},
                    sent=card_data,
                    keys_of=rks,
                    digests_written=True,
                )
            else:
                # The key rows set aside until the copy's last batch (schema version 17).
                _store_copied_persons(raw, organisation, persons, card_data, rks, named)
        if records.last:
            # The key rows the copy's batches set aside, moved into the index at once.
            _merge_copied_keys(raw)

    def _commit_planned(
        self,
        raw: sqlite3.Connection,
        body: Callable[[], tuple[list[int], dict[str, PlannedRecord]]],
        *,
        durable: bool = True,
    ) -> list[int]:
        try:
            seqs, planned = (self._write if durable else self._write_lazily)(raw, body)
        except BaseException:
            # The cache holds only committed state; after a failed commit, be sure.
            self.cache.clear()
            raise
        # Each record's cache entry as CachedRecord's fields, not an entry built and taken
        # apart again (a pull writes a thousand).
        self.cache.put_fields_many(
            [(record_id, plan.cache_fields) for record_id, plan in planned.items()]
        )
        self._name((plan.key, record_id) for record_id, plan in planned.items())
        return seqs

    def _store_planned(
        self,
        raw: sqlite3.Connection,
        writes: Sequence[WriteLike],
        planned: dict[str, PlannedRecord],
        now: int,
        *,
        log: bool,
    ) -> None:
        """Write the records' rows, their log rows (with ``log``) and their conflict rows.

        Gives each new record its integer key first (``plan.key``).
        """
        new_rows = []
        changed_rows = []
        organisation_rows = []
        appended: list[int] = []
        next_key = 0
        for plan in planned.values():
            if plan.is_new:
                if not next_key:
                    next_key = _scalar(raw, "SELECT MAX(rk) FROM records") + 1
                plan.key, next_key = next_key, next_key + 1
                # With log rows, they carry the record's state and count themselves.
                new_rows.append(
                    (
                        plan.record_id,
                        plan.organisation,
                        plan.state_vector,
                        plan.pending,
                        0 if log else len(plan.appended),
                        0 if log else plan.appended_bytes,
                        now,
                        now,
                        plan.key,
                    )
                )
            else:
                if plan.key is None:
                    raise CorruptDatabaseError(f"record {plan.record_id} has no key; run check()")
                # A record's row is rewritten only without log rows (the server's feed):
                # log rows carry its new state (schema version 18).
                if not log and (plan.changed or plan.appended):
                    changed_rows.append(
                        (
                            plan.state_vector,
                            plan.pending,
                            len(plan.appended),
                            plan.appended_bytes,
                            now,
                            plan.record_id,
                        )
                    )
                if plan.organisation_set:
                    organisation_rows.append((plan.organisation, plan.record_id))
            appended.extend(plan.appended)
        if new_rows:
            raw.executemany(
                "INSERT INTO records (record_id, organisation, state_vector, pending, log_count,"
                " log_bytes, created_ms, updated_ms, rk) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                new_rows,
            )
        if changed_rows:
            # In key order: a pull's records are spread over the whole table, and walking
            # its B-tree in order finds each next row on a page just visited or near it.
            changed_rows.sort(key=_last)
            # The organisation is set apart: naming it here would rewrite its index entry.
            # Log rows newer than the row's counts (a record written both ways) are
            # folded into them: the row is the record's state again, as of its newest.
            raw.executemany(
                "UPDATE records SET state_vector = ?, pending = ?,"
                " log_count = log_count + ? + (SELECT COUNT(*) FROM log l"
                " WHERE l.rk = records.rk AND l.id > records.head_at),"
                " log_bytes = log_bytes + ? + (SELECT COALESCE(SUM(LENGTH(l.data)), 0) FROM log l"
                " WHERE l.rk = records.rk AND l.id > records.head_at),"
                " head_at = COALESCE((SELECT MAX(l.id) FROM log l WHERE l.rk = records.rk), 0),"
                " updated_ms = ? WHERE record_id = ?",
                changed_rows,
            )
        if organisation_rows:
            raw.executemany(
                "UPDATE records SET organisation = ? WHERE record_id = ? AND organisation IS NULL",
                organisation_rows,
            )
        if log:
            # Each record's log rows in the order its writes came (a record is read in
            # id order); the records in key order, so that the index by key (log_by_record)
            # takes the batch in order rather than at random places.
            # Each row carries its record's state after this write (schema version 18).
            rows = []
            for i in appended:
                plan = planned[writes[i].record_id]
                rows.append((plan.key, i, plan.state_vector, plan.pending))
            rows.sort()  # (key, index) is unique: nothing after it is compared
            raw.executemany(
                "INSERT INTO log (rk, state_vector, pending, created_ms, data)"
                " VALUES (?, ?, ?, ?, ?)",
                [(key, vector, held, now, writes[i].update) for key, i, vector, held in rows],
            )
        replaced = {p.record_id: p.conflicts for p in planned.values() if p.conflicts is not None}
        if replaced:
            _replace_conflicts_of(
                raw, replaced, {p.record_id for p in planned.values() if p.is_new}
            )
        persons = {
            p.record_id: PersonWrite(p.organisation, p.person, p.is_new)
            for p in planned.values()
            if p.person is not None
        }
        # A record given an organisation keeps its card, now compared within it.
        moved = [p for p in planned.values() if p.organisation_set and p.person is None]
        if moved:
            stored = _read_cards(raw, [p.record_id for p in moved])
            persons.update(
                (p.record_id, PersonWrite(p.organisation, stored[p.record_id]))
                for p in moved
                if p.record_id in stored
            )
        if persons:
            _store_persons(raw, persons)

    async def set_conflicts(self, record_id: str, conflicts: Sequence[ConflictRow]) -> None:
        """Replace a stored record's conflict rows (after the rules changed, say)."""
        check_text(record_id, "record_id")
        rows = check_conflicts(record_id, conflicts)

        def job(raw: sqlite3.Connection) -> None:
            def body() -> None:
                if _record_row(raw, record_id) is None:
                    raise UnknownRecordError(f"no record {record_id} is stored here")
                _replace_conflicts_of(raw, {record_id: rows})

            self._write(raw, body)

        await self._run(f"storing conflicts of {record_id}", job)

    async def set_conflicts_many(
        self,
        rows_by_record: Mapping[str, Sequence[ConflictRow]],
        *,
        persons: Mapping[str, PersonCard] | None = None,
    ) -> None:
        """Replace the conflict rows (and person cards) of many stored records in one transaction.

        All checked first (see :meth:`Store.set_conflicts_many`); a re-index
        writes a chunk of records per commit instead of one commit per record.
        Each card is stored under its record's stored organisation.
        """
        rows = check_conflicts_by_record(rows_by_record)
        cards = check_persons_by_record(persons)
        ids = list(dict.fromkeys([*rows, *cards]))

        def job(raw: sqlite3.Connection) -> None:
            def body() -> None:
                # Committed records are in the cache or the table; ask SQLite for the rest.
                cached = self.cache.get_many(ids)
                found = {record_id: known.organisation for record_id, known in cached.items()}
                for chunk in _chunks([i for i in ids if i not in cached]):
                    sql = (
                        "SELECT record_id, organisation FROM records"
                        f" WHERE record_id IN ({_marks(len(chunk))})"
                    )
                    found.update((row[0], row[1]) for row in raw.execute(sql, chunk))
                missing = [record_id for record_id in ids if record_id not in found]
                if missing:
                    raise unknown_records_error(missing, len(ids))
                _replace_conflicts_of(raw, rows)
                if cards:
                    _store_persons(
                        raw,
                        {rid: PersonWrite(found[rid], card) for rid, card in cards.items()},
                        reindex=True,
                    )

            if ids:
                self._write(raw, body)

        await self._run(f"storing conflicts of {len(ids)} records", job)
