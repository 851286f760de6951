"""The in-memory twin of the SQLite store, for fast unit and property tests.

It keeps the same things the same way (state + log per record, outbox, feed,
conflict index, accounts), shares the SQLite store's planning and checking
rules, and passes the same conformance suite. Each call is atomic: it plans
everything first and only then changes its dictionaries, so a refused call
leaves nothing half-done. Nothing survives the process, of course.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self, cast

from caresync.audit.chain import GENESIS, AuditEntry, AuditEvent
from caresync.exceptions import (
    CorruptDatabaseError,
    ExportFileError,
    InvalidInputError,
    StorageError,
    UnknownRecordError,
    UnsyncedChangesError,
)
from caresync.records.persons import PairState, PersonCard, PersonPair
from caresync.storage._arguments import (
    beyond_outbox,
    check_audit_append,
    check_binding,
    check_conflict_page,
    check_enrolment,
    check_feed_epoch,
    check_feed_query,
    check_hub_attempt,
    check_hub_changes,
    check_hub_due,
    check_hub_outcome,
    check_meta,
    check_new_user,
    check_outbox_page,
    check_pair_query,
    check_password_change,
    check_queue_again,
    check_record_page,
    check_reissue,
    check_renumbering,
    check_secret_hash,
    check_seen,
    check_session,
    check_user,
    check_user_admin,
    check_user_display_name,
    check_write_local,
    check_write_remote_call,
    enrolled_already,
    imported_writes,
    no_unbound_session,
    no_user,
    not_enrolled,
    secret_refused,
    session_stored,
    user_exists,
)
from caresync.storage._audit import (
    check_audit_query,
    check_events,
    plan_append,
    plan_receive,
)
from caresync.storage._copy import copy_page_of, write_copy_of
from caresync.storage._local import LocalCommits
from caresync.storage._resume import read_resume_one_by_one
from caresync.storage._updates import (
    EMPTY_UPDATE,
    has_pending,
    merge,
    merge_stored,
    same_state_vector,
    state_vector_of,
    verify_compaction,
)
from caresync.storage._writes import (
    PersonWrite,
    PlannedRecord,
    Write,
    WriteLike,
    check_rebind,
    local_writes,
    pair_persons,
    plan_writes,
)
from caresync.storage.base import (
    HUB_STATES,
    MAX_REASON_LENGTH,
    AccountStanding,
    ConflictRow,
    CopiedRecords,
    CopyPage,
    FeedEpoch,
    FeedItem,
    HeldState,
    HubChanges,
    HubMark,
    HubOutcome,
    HubRemoved,
    HubSummaryRow,
    Identity,
    IncomingUpdate,
    OpenCounts,
    OutboxItem,
    OutboxSummary,
    QuarantinedUpdate,
    RecordClient,
    ReplicaInfo,
    ResumeReads,
    SessionRow,
    SetAsideRecord,
    StoreOpener,
    StrPath,
    UserAccount,
    account_standing,
    card_digest,
    check_claims_free,
    check_conflicts,
    check_conflicts_by_record,
    check_count,
    check_optional_text,
    check_outbox_report,
    check_persons_by_record,
    check_record_clients,
    check_record_ids,
    check_session_selector,
    check_text,
    hub_versions,
    new_password_mark,
    unknown_records_error,
)
from caresync.storage.cache import CachedRecord
from caresync.storage.unsynced import (
    ExportedUpdate,
    UnsyncedExport,
    content_key,
    read_export_file,
    write_export_file,
)
from caresync.throttle import FailureTable, ThrottlePolicy

__all__ = ["MemoryStore"]


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Record:
    organisation: str | None
    state: bytes
    state_vector: bytes
    pending: bool
    log: list[bytes] = field(default_factory=list)

    def merged(self, record_id: str) -> bytes:
        return merge_stored(self.state, self.log, record_id=record_id)


class MemoryStore:
    """A :class:`~caresync.storage.base.Store` held in dictionaries."""

    def __init__(self, *, clock: Callable[[], int] | None = None) -> None:
        self._now_ms = clock or _wall_ms
        self._closed = False
        self._meta: dict[str, str] = {}
        self._identity: Identity | None = None
        self._records: dict[str, _Record] = {}
        self._outbox: dict[int, OutboxItem] = {}
        self._outbox_head = 0
        # Entries of records the server refused, by seq, and each record's (reason, since).
        self._aside: dict[int, OutboxItem] = {}
        self._set_aside: dict[str, tuple[str, int]] = {}
        self._feed: list[FeedItem] = []
        self._feed_epochs: dict[int, int] = {}  # first_seq -> epoch
        self._conflicts: dict[str, dict[str, ConflictRow]] = {}
        self._users: dict[tuple[str, str], UserAccount] = {}
        self._password_marks: dict[tuple[str, str], bytes] = {}
        self._replicas: dict[str, ReplicaInfo] = {}
        self._replica_accounts: dict[str, set[str]] = {}
        self._secrets: dict[str, str] = {}
        self._sessions: dict[str, SessionRow] = {}
        self._generation = 0
        self._login_failures = FailureTable()
        self._quarantine: list[QuarantinedUpdate] = []
        self._hub: dict[str, HubSummaryRow] = {}
        # Hub marks (caresync.hub): the last given, each row's, and the tombstones of
        # patients that left an organisation's list, by (organisation, record id).
        self._hub_mark = 0
        self._hub_changes: dict[str, int] = {}
        self._hub_removed: dict[tuple[str, str], tuple[int, int]] = {}
        # Yjs client ids bound per record (an in-memory store has no older bindings).
        self._client_owners: dict[RecordClient, str] = {}
        self._commits = LocalCommits()  # one process writes it: a local lock suffices
        # The person index: cards with their record's organisation, the holders of
        # each (organisation, key), and the pairs, also by record.
        self._cards: dict[str, PersonWrite] = {}
        self._person_keys: dict[tuple[str | None, str], set[str]] = {}
        self._pairs: dict[tuple[str, str], tuple[str | None, PersonPair]] = {}
        self._pairs_of: dict[str, set[tuple[str, str]]] = {}
        # Audit chains: (replica id, line) → entries in order; (replica, seq, hash) held.
        self._audit: dict[tuple[str, int], list[AuditEntry]] = {}
        self._audit_held: set[tuple[str, int, bytes]] = set()

    @classmethod
    def open(cls, *, clock: Callable[[], int] | None = None) -> StoreOpener[MemoryStore]:
        """A new, empty store: ``await MemoryStore.open()`` or ``async with MemoryStore.open()``."""

        async def factory() -> MemoryStore:
            return cls(clock=clock)

        return StoreOpener(factory)

    async def close(self) -> None:
        """Close the store; further calls raise StorageError."""
        self._closed = True

    async def checkpoint(self) -> None:
        """Nothing to do: memory has no write-ahead log."""
        self._open_or_raise("checkpointing")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def _open_or_raise(self, what: str) -> None:
        if self._closed:
            raise StorageError(f"{what}: the store is closed")

    # ----------------------------------------------------------- identity, meta

    async def get_identity(self) -> Identity | None:
        """This replica's identity, or None before it is set."""
        self._open_or_raise("reading the identity")
        return self._identity

    async def set_identity(self, identity: Identity) -> None:
        """Store the identity; refuses to rebind the replica."""
        self._open_or_raise("storing the identity")
        check_rebind(self._identity, identity)
        self._identity = identity

    async def get_meta(self, key: str) -> str | None:
        """A stored setting or checkpoint, or None."""
        check_text(key, "meta key")
        self._open_or_raise("reading meta")
        return self._meta.get(key)

    async def set_meta(self, key: str, value: str) -> None:
        """Store a setting or checkpoint."""
        check_meta(key, value)
        self._open_or_raise("storing meta")
        self._meta[key] = value

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless one is stored; returns the stored value."""
        check_meta(key, value)
        self._open_or_raise("storing meta")
        return self._meta.setdefault(key, value)

    @property
    def shared(self) -> bool:
        """False: one process uses an in-memory store."""
        return False

    def exclusive_commits(self) -> AbstractAsyncContextManager[None]:
        """A process-local lock (see ``ServerStore.exclusive_commits``)."""
        return self._commits.exclusive()

    def hub_sending(self, record_id: str) -> AbstractAsyncContextManager[bool]:
        """A process-local claim (see ``ServerStore.hub_sending``): one process sends."""
        return self._commits.hub_sending(record_id)

    async def wait_for_feed(self, timeout_s: float) -> bool:
        """Until this store's feed gained an entry since the last wait, or the timeout."""
        self._open_or_raise("waiting for the feed")
        return await self._commits.wait(timeout_s)

    # ------------------------------------------------------------------ writing

    def _known(self, writes: Sequence[WriteLike]) -> dict[str, CachedRecord]:
        known = {}
        for record_id in dict.fromkeys(w.record_id for w in writes):
            record = self._records.get(record_id)
            if record is not None:
                known[record_id] = CachedRecord(
                    record.state_vector, record.organisation, record.pending
                )
        return known

    def _full(self, record_id: str) -> bytes:
        return self._records[record_id].merged(record_id)

    def _store_planned(
        self, writes: Sequence[WriteLike], planned: dict[str, PlannedRecord]
    ) -> None:
        for record_id, plan in planned.items():
            record = self._records.get(record_id)
            if record is None:
                record = self._records[record_id] = _Record(
                    plan.organisation, EMPTY_UPDATE, plan.state_vector, plan.pending
                )
            record.organisation = plan.organisation
            record.state_vector = plan.state_vector
            record.pending = plan.pending
            record.log.extend(writes[i].update for i in plan.appended)
            if plan.conflicts is not None:
                self._conflicts[record_id] = {c.id: c for c in plan.conflicts}
                if not plan.conflicts:
                    del self._conflicts[record_id]

    def _person_writes(self, planned: dict[str, PlannedRecord]) -> dict[str, PersonWrite]:
        """The cards a batch stores: those it carries, and those of records given an
        organisation (compared within it from now on)."""
        persons = {
            p.record_id: PersonWrite(p.organisation, p.person)
            for p in planned.values()
            if p.person is not None
        }
        for p in planned.values():
            stored = self._cards.get(p.record_id)
            if p.organisation_set and p.person is None and stored is not None:
                persons[p.record_id] = PersonWrite(p.organisation, stored.card)
        return persons

    def _plan_persons(
        self, written: Mapping[str, PersonWrite]
    ) -> tuple[Mapping[str, PersonWrite], list[PersonPair]]:
        """The pairs the cards make, worked out before anything changes."""
        if not written:
            return written, []

        def holders(organisation: str | None, keys: Collection[str]) -> list[tuple[str, str]]:
            return [
                (key, record_id)
                for key in keys
                for record_id in self._person_keys.get((organisation, key), ())
            ]

        def cards(ids: Collection[str]) -> dict[str, PersonCard]:
            return {rid: self._cards[rid].card for rid in ids if rid in self._cards}

        return written, pair_persons(written, holders, cards)

    def _store_persons(self, plan: tuple[Mapping[str, PersonWrite], list[PersonPair]]) -> None:
        written, pairs = plan
        for record_id, write in written.items():
            for key in self._pairs_of.pop(record_id, set()):
                del self._pairs[key]
                other = key[1] if key[0] == record_id else key[0]
                self._pairs_of[other].discard(key)
                if not self._pairs_of[other]:
                    del self._pairs_of[other]
            old = self._cards.get(record_id)
            if old is not None:
                old_keys = old.card.blocking_keys()
                for key_text in old_keys:
                    holders = self._person_keys[old.organisation, key_text]
                    holders.discard(record_id)
                    if not holders:
                        del self._person_keys[old.organisation, key_text]
            self._cards[record_id] = write
            for key_text in write.keys:
                self._person_keys.setdefault((write.organisation, key_text), set()).add(record_id)
        for pair in pairs:
            first, second = pair.record_ids
            organisation = (written.get(first) or written[second]).organisation
            self._pairs[first, second] = (organisation, pair)
            self._pairs_of.setdefault(first, set()).add((first, second))
            self._pairs_of.setdefault(second, set()).add((first, second))

    def _write_local(self, writes: Sequence[Write], audit: Sequence[AuditEvent] = ()) -> list[int]:
        planned = plan_writes(writes, self._known(writes), self._full, skip_duplicates=False)
        persons = self._plan_persons(self._person_writes(planned))
        now = self._now_ms()
        entries = self._plan_own_audit(audit, now)  # planned before anything changes
        self._store_planned(writes, planned)
        self._keep_audit(entries)
        self._store_persons(persons)
        seqs = []
        for write in writes:
            self._outbox_head += 1
            seqs.append(self._outbox_head)
            self._outbox[self._outbox_head] = OutboxItem(
                self._outbox_head, write.record_id, write.update, now
            )
        return seqs

    async def write_local_many(
        self, edits: Sequence[IncomingUpdate], *, audit: Sequence[AuditEvent] = ()
    ) -> list[int]:
        """Commit several local edits in one transaction, all or nothing (see write_local)."""
        writes = local_writes(edits)
        events = check_events(audit)
        self._open_or_raise("writing records")
        return self._write_local(writes, events) if writes else []

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
        """Store a local edit in the record's log and the outbox; returns its outbox seq."""
        write, events = check_write_local(record_id, update, conflicts, organisation, person, audit)
        self._open_or_raise(f"writing record {record_id}")
        return self._write_local([write], events)[0]

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
        """Store a batch of received updates and the checkpoint, all or nothing
        (``durable``: nothing here waits for a disk)."""
        writes, kept_aside, claims, marks = check_write_remote_call(
            items, checkpoint, to_feed, origin, quarantine, claim_clients, hub
        )
        self._open_or_raise(f"storing {len(writes)} received updates")
        check_claims_free(claims, self._client_owners)
        planned = plan_writes(writes, self._known(writes), self._full, skip_duplicates=True)
        persons = self._plan_persons(self._person_writes(planned))
        self._store_planned(writes, planned)
        self._store_persons(persons)
        seqs = [0] * len(writes)
        if to_feed:
            for i in sorted(i for p in planned.values() for i in p.appended):
                write = writes[i]
                seq = len(self._feed) + 1
                organisation = planned[write.record_id].organisation
                self._feed.append(
                    FeedItem(seq, write.record_id, write.update, organisation, origin)
                )
                seqs[i] = seq
            if any(seqs):
                self._commits.fed()
        for pair, replica_id in claims.items():
            self._client_owners.setdefault(pair, replica_id)
        now = self._now_ms()
        for q in kept_aside:
            self._quarantine.append(
                dataclasses.replace(q, received_ms=now, id=len(self._quarantine) + 1)
            )
        versions = hub_versions(writes, seqs)
        for record_id, mark in marks.items():
            version = versions.get(record_id)
            if version is None:
                continue  # the batch added nothing to it
            before = self._hub.get(record_id)
            if not mark.enabled:
                if before is not None:
                    del self._hub[record_id]
                    del self._hub_changes[record_id]
                    self._hub_bury(before.organisation, record_id, version, self._next_hub_mark())
                continue
            organisation = planned[record_id].organisation
            self._hub[record_id] = HubSummaryRow(
                record_id,
                organisation,
                version,
                "pending" if mark.held is None else "held",
                mark.held,
                None if before is None else before.sent_version,
                0,
                0,
                None if before is None else before.last_attempt_ms,
            )
            change = self._hub_changes[record_id] = self._next_hub_mark()
            if before is not None and before.organisation != organisation:
                self._hub_bury(before.organisation, record_id, version, change)
            if organisation is not None:  # listed there again: no longer removed
                self._hub_removed.pop((organisation, record_id), None)
        if checkpoint is not None:
            self._meta[checkpoint[0]] = checkpoint[1]
        return seqs

    async def hub_summaries(self, organisation: str | None = None) -> list[HubSummaryRow]:
        """The health-hub outbox (of that organisation's records), by record id."""
        check_optional_text(organisation, "organisation")
        self._open_or_raise("reading the hub outbox")
        return [
            row
            for _rid, row in sorted(self._hub.items())
            if organisation is None or row.organisation == organisation
        ]

    async def hub_summary(self, record_id: str) -> HubSummaryRow | None:
        """The record's hub outbox row, or None."""
        check_text(record_id, "record_id")
        self._open_or_raise(f"reading the hub outbox row of {record_id}")
        return self._hub.get(record_id)

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
        start = check_hub_due(now_ms, limit, after, held) or (-1, "")
        self._open_or_raise("reading the hub outbox's due summaries")
        due = sorted(
            (
                row
                for row in self._hub.values()
                if (row.state == "pending" and row.next_attempt_ms <= now_ms)
                or (held and row.state == "held")
            ),
            key=lambda row: (row.next_attempt_ms, row.record_id),
        )
        return [row for row in due if (row.next_attempt_ms, row.record_id) > start][:limit]

    async def hub_next_attempt_ms(self) -> int | None:
        """The earliest retry time of a pending summary, or None."""
        self._open_or_raise("reading the hub outbox's next retry")
        return min(
            (row.next_attempt_ms for row in self._hub.values() if row.state == "pending"),
            default=None,
        )

    async def hub_state_counts(self, organisation: str | None = None) -> dict[str, int]:
        """The outbox rows (of that organisation's records) in each state."""
        check_optional_text(organisation, "organisation")
        self._open_or_raise("counting the hub outbox")
        counts = dict.fromkeys(HUB_STATES, 0)
        for row in self._hub.values():
            if organisation is None or row.organisation == organisation:
                counts[row.state] += 1
        return counts

    def _next_hub_mark(self) -> int:
        self._hub_mark += 1
        return self._hub_mark

    def _hub_bury(
        self, organisation: str | None, record_id: str, version: int, change: int
    ) -> None:
        """Leave a tombstone: the record left ``organisation``'s list at ``change``."""
        if organisation is not None:  # changes are read per organisation
            self._hub_removed[(organisation, record_id)] = (version, change)

    async def hub_changes(self, organisation: str, after: int, limit: int) -> HubChanges:
        """What changed in the organisation's hub outbox after the mark ``after`` (see
        :meth:`~caresync.storage.base.ServerStore.hub_changes`)."""
        check_hub_changes(organisation, after, limit)
        self._open_or_raise("reading the hub outbox's changes")
        changed: list[tuple[int, HubSummaryRow | HubRemoved]] = [
            (self._hub_changes[record_id], row)
            for record_id, row in self._hub.items()
            if row.organisation == organisation and self._hub_changes[record_id] > after
        ]
        if after > 0:  # a reader that holds nothing has nothing to drop
            changed += [
                (change, HubRemoved(record_id, version))
                for (org, record_id), (version, change) in self._hub_removed.items()
                if org == organisation and change > after
            ]
        changed.sort(key=lambda pair: pair[0])
        mark, more = self._hub_mark, len(changed) > limit
        if more:
            del changed[limit:]
            mark = changed[-1][0]
        return HubChanges(
            tuple(c for _n, c in changed if isinstance(c, HubSummaryRow)),
            tuple(c for _n, c in changed if isinstance(c, HubRemoved)),
            mark,
            more,
        )

    async def record_hub_attempt(self, record_id: str, attempted_ms: int) -> None:
        """Note that a summary of the record is being sent now."""
        check_hub_attempt(record_id, attempted_ms)
        self._open_or_raise(f"noting a hub attempt for {record_id}")
        row = self._hub.get(record_id)
        if row is not None:
            self._hub[record_id] = dataclasses.replace(row, last_attempt_ms=attempted_ms)
            self._hub_changes[record_id] = self._next_hub_mark()

    async def record_hub_outcome(self, record_id: str, version: int, outcome: HubOutcome) -> bool:
        """Store what became of sending ``version`` (see :class:`HubOutcome`)."""
        check_hub_outcome(record_id, version, outcome)
        self._open_or_raise(f"storing a hub outcome for {record_id}")
        row = self._hub.get(record_id)
        if row is None:
            return False
        before = row
        if outcome.acknowledged and (row.sent_version or 0) < version:
            row = dataclasses.replace(row, sent_version=version)
        matched = row.version == version
        if matched:
            row = dataclasses.replace(
                row,
                state=outcome.state,
                reason=outcome.reason,
                attempts=outcome.attempts,
                next_attempt_ms=outcome.next_attempt_ms,
            )
        if row != before:  # as the SQL stores: a mark only for a change
            self._hub[record_id] = row
            self._hub_changes[record_id] = self._next_hub_mark()
        return matched

    async def set_conflicts(self, record_id: str, conflicts: Sequence[ConflictRow]) -> None:
        """Replace a stored record's conflict rows."""
        check_text(record_id, "record_id")
        rows = check_conflicts(record_id, conflicts)
        self._open_or_raise(f"storing conflicts of {record_id}")
        if record_id not in self._records:
            raise UnknownRecordError(f"no record {record_id} is stored here")
        self._conflicts[record_id] = {c.id: c for c in rows}
        if not rows:
            del self._conflicts[record_id]

    async def set_conflicts_many(
        self,
        rows_by_record: Mapping[str, Sequence[ConflictRow]],
        *,
        persons: Mapping[str, PersonCard] | None = None,
    ) -> None:
        """Replace the conflict rows (and person cards) of many stored records, all or nothing."""
        rows = check_conflicts_by_record(rows_by_record)
        cards = check_persons_by_record(persons)
        ids = list(dict.fromkeys([*rows, *cards]))
        self._open_or_raise(f"storing conflicts of {len(ids)} records")
        missing = [record_id for record_id in ids if record_id not in self._records]
        if missing:
            raise unknown_records_error(missing, len(ids))
        self._store_persons(
            self._plan_persons(
                {
                    rid: PersonWrite(self._records[rid].organisation, card)
                    for rid, card in cards.items()
                }
            )
        )
        for record_id, record_rows in rows.items():
            if record_rows:
                self._conflicts[record_id] = {c.id: c for c in record_rows}
            else:
                self._conflicts.pop(record_id, None)

    # ------------------------------------------------------------------ reading

    async def load(self, record_id: str) -> bytes | None:
        """The record's state merged with its log, as one update; None if unknown."""
        check_text(record_id, "record_id")
        self._open_or_raise(f"loading record {record_id}")
        return None if record_id not in self._records else self._full(record_id)

    async def load_many(self, record_ids: Sequence[str]) -> dict[str, bytes]:
        """What :meth:`load` returns, for many records; unknown ids are absent."""
        ids = dict.fromkeys(check_record_ids(record_ids))
        self._open_or_raise(f"loading {len(ids)} records")
        return {record_id: self._full(record_id) for record_id in ids if record_id in self._records}

    async def copy_page(
        self,
        organisation: str | None,
        *,
        after: str | None,
        limit: int,
        rows: bool,
        persons: bool,
        pairs: bool = False,
    ) -> CopyPage:
        """One page of a first copy, from this store's own reads (see ``ServerStore``)."""
        return await copy_page_of(
            self, organisation, after=after, limit=limit, rows=rows, persons=persons, pairs=pairs
        )

    async def state_vector(self, record_id: str) -> bytes | None:
        """The record's stored state vector, or None."""
        check_text(record_id, "record_id")
        self._open_or_raise(f"reading the state vector of {record_id}")
        record = self._records.get(record_id)
        return None if record is None else record.state_vector

    async def state_vectors(self, record_ids: Sequence[str]) -> dict[str, tuple[bytes, bool]]:
        """Each stored record's state vector and whether it holds waiting items."""
        ids = dict.fromkeys(check_record_ids(record_ids))
        self._open_or_raise(f"reading {len(ids)} state vectors")
        return {
            rid: (self._records[rid].state_vector, self._records[rid].pending)
            for rid in ids
            if rid in self._records
        }

    async def held_states(self, record_ids: Sequence[str]) -> dict[str, HeldState]:
        """Each stored record's state vector, whether it holds waiting items, and its
        card's digest (None: it has no card)."""
        ids = dict.fromkeys(check_record_ids(record_ids))
        self._open_or_raise(f"reading {len(ids)} held states")
        found: dict[str, HeldState] = {}
        for rid in ids:
            record = self._records.get(rid)
            if record is None:
                continue
            held = self._cards.get(rid)
            digest = None if held is None else card_digest(held.card.to_bytes())
            found[rid] = HeldState(record.state_vector, record.pending, digest)
        return found

    async def has_record(self, record_id: str) -> bool:
        """True if the record is stored here."""
        check_text(record_id, "record_id")
        self._open_or_raise(f"looking up {record_id}")
        return record_id in self._records

    async def record_ids(
        self, organisation: str | None = None, *, after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Record ids in ascending order, after ``after``."""
        check_record_page(organisation, after, limit)
        self._open_or_raise("listing records")
        ids = sorted(
            rid
            for rid, rec in self._records.items()
            if (organisation is None or rec.organisation == organisation) and rid > (after or "")
        )
        return ids if limit is None else ids[:limit]

    async def count_records(self, organisation: str | None = None) -> int:
        """How many records are stored (in that organisation)."""
        check_optional_text(organisation, "organisation")
        self._open_or_raise("counting records")
        if organisation is None:
            return len(self._records)
        return sum(1 for r in self._records.values() if r.organisation == organisation)

    async def client_owners(self, clients: Collection[RecordClient]) -> dict[RecordClient, str]:
        """The replica each ``(record_id, client)`` pair is bound to (unbound ones are absent)."""
        wanted = check_record_clients(clients)
        self._open_or_raise("reading Yjs client owners")
        return {p: self._client_owners[p] for p in wanted if p in self._client_owners}

    async def record_organisations(self, record_ids: Sequence[str]) -> dict[str, str | None]:
        """The organisation of each stored record named (unknown ids are absent)."""
        ids = check_record_ids(record_ids)
        self._open_or_raise("reading record organisations")
        return {rid: self._records[rid].organisation for rid in ids if rid in self._records}

    async def log_length(self, record_id: str) -> int:
        """How many updates the record's log holds since its last compaction (0 if unknown)."""
        check_text(record_id, "record_id")
        self._open_or_raise(f"reading the log of {record_id}")
        record = self._records.get(record_id)
        return 0 if record is None else len(record.log)

    # ---------------------------------------------------------------- conflicts

    async def conflicts(
        self,
        record_id: str | None = None,
        *,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
    ) -> list[ConflictRow]:
        """Open conflict rows ordered by (record_id, id)."""
        check_conflict_page(record_id, limit)
        self._open_or_raise("listing conflicts")
        after_key = ("", "") if after is None else (str(after[0]), str(after[1]))
        rows = sorted(
            (
                row
                for rid, by_id in self._conflicts.items()
                if record_id is None or rid == record_id
                for row in by_id.values()
            ),
            key=lambda c: (c.record_id, c.id),
        )
        rows = [c for c in rows if (c.record_id, c.id) > after_key]
        return rows if limit is None else rows[:limit]

    async def count_conflicts(self, record_id: str | None = None) -> int:
        """How many conflict rows are open (for one record, or in all)."""
        check_optional_text(record_id, "record_id")
        self._open_or_raise("counting conflicts")
        if record_id is not None:
            return len(self._conflicts.get(record_id, {}))
        return sum(len(rows) for rows in self._conflicts.values())

    async def conflict_rows(self, record_ids: Sequence[str]) -> dict[str, tuple[ConflictRow, ...]]:
        """The conflict rows of many records, each's ordered by id; records without any absent."""
        ids = dict.fromkeys(check_record_ids(record_ids))
        self._open_or_raise(f"reading the conflicts of {len(ids)} records")
        return {
            record_id: tuple(row for _, row in sorted(self._conflicts[record_id].items()))
            for record_id in ids
            if self._conflicts.get(record_id)
        }

    # ---------------------------------------------------------- the person index

    async def person_cards(self, record_ids: Sequence[str]) -> dict[str, PersonCard]:
        """The stored person cards of these records, in the order asked (none: absent)."""
        ids = dict.fromkeys(check_record_ids(record_ids))
        self._open_or_raise(f"reading the person cards of {len(ids)} records")
        return {rid: self._cards[rid].card for rid in ids if rid in self._cards}

    async def count_person_pairs(self, state: PairState | None = None) -> int:
        """How many pairs are stored (in one state)."""
        wanted = check_pair_query(None, state, None)
        self._open_or_raise("counting person pairs")
        return sum(1 for _org, pair in self._pairs.values() if wanted in (None, pair.state))

    async def open_counts(self) -> OpenCounts:
        """The open conflict rows, the stored pairs and the linked pairs, together."""
        return OpenCounts(
            await self.count_conflicts(),
            await self.count_person_pairs(),
            await self.count_person_pairs(PairState.LINKED),
        )

    async def person_card_bytes(self, record_ids: Sequence[str]) -> dict[str, bytes]:
        """The stored person cards of these records as bytes (``PersonCard.to_bytes()``)."""
        cards = await self.person_cards(record_ids)
        return {rid: card.to_bytes() for rid, card in cards.items()}

    async def person_pairs_ending(self, record_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(first, second) of the stored pairs whose second record is one of these,
        ordered by (second, first): what a first copy sends with a batch."""
        ids = dict.fromkeys(check_record_ids(record_ids))
        self._open_or_raise(f"reading the person pairs of {len(ids)} records")
        found = {key for rid in ids for key in self._pairs_of.get(rid, ()) if key[1] == rid}
        return sorted(found, key=lambda key: (key[1], key[0]))

    async def person_pairs(
        self,
        record_id: str | None = None,
        *,
        state: PairState | None = None,
        organisation: str | None = None,
    ) -> list[PersonPair]:
        """Stored pairs (of one record, in one state, of one organisation), by record ids."""
        wanted = check_pair_query(record_id, state, organisation)
        self._open_or_raise("reading person pairs")
        keys = self._pairs if record_id is None else self._pairs_of.get(record_id, set())
        found = []
        for key in sorted(keys):
            pair_organisation, pair = self._pairs[key]
            if wanted is not None and pair.state is not wanted:
                continue
            if organisation is not None and pair_organisation != organisation:
                continue
            found.append(pair)
        return found

    # ------------------------------------------------------------------- outbox

    async def pending(self, limit: int = 1000, *, after_seq: int = 0) -> list[OutboxItem]:
        """Unacknowledged local updates with seq > ``after_seq``, oldest first."""
        check_outbox_page(limit, after_seq)
        self._open_or_raise("reading the outbox")
        return [item for seq, item in sorted(self._outbox.items()) if seq > after_seq][:limit]

    async def pending_count(self) -> int:
        """How many local updates wait for acknowledgement."""
        self._open_or_raise("counting the outbox")
        return len(self._outbox) + len(self._aside)

    async def set_aside(self, record_id: str, reason: str) -> int:
        """Move ``record_id``'s outbox entries aside and list it with ``reason``."""
        check_text(record_id, "record_id")
        check_text(reason, "reason", max_length=MAX_REASON_LENGTH)
        self._open_or_raise(f"setting record {record_id} aside")
        moved = [seq for seq, item in self._outbox.items() if item.record_id == record_id]
        for seq in moved:
            self._aside[seq] = self._outbox.pop(seq)
        since = self._set_aside.get(record_id, (reason, self._now_ms()))[1]
        self._set_aside[record_id] = (reason, since)
        return len(moved)

    async def take_back_set_aside(self) -> int:
        """Queue every set-aside record's entries at the end of the outbox, in order."""
        self._open_or_raise("queueing entries set aside again")
        listed = self._set_aside.keys()
        waiting = [seq for seq, item in self._outbox.items() if item.record_id in listed]
        moved = sorted(
            [*self._aside.values(), *(self._outbox.pop(seq) for seq in waiting)],
            key=lambda item: item.seq,
        )
        self._aside.clear()
        for item in moved:
            self._outbox_head += 1
            self._outbox[self._outbox_head] = dataclasses.replace(item, seq=self._outbox_head)
        return len(moved)

    async def set_aside_records(self) -> list[SetAsideRecord]:
        """The records set aside, by record id, with how many of their entries wait."""
        self._open_or_raise("reading the records set aside")
        counts: dict[str, int] = dict.fromkeys(self._set_aside, 0)
        for item in [*self._outbox.values(), *self._aside.values()]:
            if item.record_id in counts:
                counts[item.record_id] += 1
        return [
            SetAsideRecord(record_id, reason, since, counts[record_id])
            for record_id, (reason, since) in sorted(self._set_aside.items())
        ]

    async def oldest_pending_ms(self) -> int | None:
        """When the oldest unacknowledged update was written, or None."""
        self._open_or_raise("reading the outbox")
        if not self._outbox:
            return None
        return self._outbox[min(self._outbox)].created_ms

    async def acknowledge(
        self, up_to_seq: int, *, checkpoint: tuple[str, str] | None = None
    ) -> int:
        """Drop outbox rows with seq <= ``up_to_seq``; refuses numbers never given out.
        With ``checkpoint``, that meta key is set too."""
        check_count(up_to_seq, "up_to_seq")
        check_renumbering(0, checkpoint)
        self._open_or_raise("acknowledging the outbox")
        if up_to_seq > self._outbox_head:
            raise beyond_outbox(up_to_seq, self._outbox_head)
        done = [seq for seq in self._outbox if seq <= up_to_seq]
        for seq in done:
            del self._outbox[seq]
        if done:  # a record set aside whose entries were all taken leaves the list
            held = {item.record_id for item in [*self._outbox.values(), *self._aside.values()]}
            for record_id in [r for r in self._set_aside if r not in held]:
                del self._set_aside[record_id]
        if checkpoint is not None:
            self._meta[checkpoint[0]] = checkpoint[1]
        return len(done)

    async def outbox_summary(self) -> OutboxSummary:
        """The outbox's count, oldest time and seq range, as of one moment."""
        self._open_or_raise("reading the outbox")
        if not self._outbox:
            return OutboxSummary(0, None, None, self._outbox_head)
        first = min(self._outbox)
        return OutboxSummary(
            len(self._outbox), self._outbox[first].created_ms, first, self._outbox_head
        )

    async def queue_again(
        self, items: Sequence[tuple[str, bytes]], *, checkpoint: tuple[str, str] | None = None
    ) -> int:
        """Queue updates the records hold already into the outbox again, ahead of the
        waiting ones (numbered after them), with the checkpoint; the records are not
        written."""
        wanted = check_queue_again(items, checkpoint)
        self._open_or_raise(f"queueing {len(wanted)} updates again")
        now = self._now_ms()
        waiting = [item for _seq, item in sorted(self._outbox.items())] if wanted else []
        for item in waiting:
            del self._outbox[item.seq]
        for record_id, update in wanted:
            self._outbox_head += 1
            self._outbox[self._outbox_head] = OutboxItem(self._outbox_head, record_id, update, now)
        for item in waiting:
            self._outbox_head += 1
            self._outbox[self._outbox_head] = dataclasses.replace(item, seq=self._outbox_head)
        if checkpoint is not None:
            self._meta[checkpoint[0]] = checkpoint[1]
        return len(wanted)

    async def renumber_outbox(
        self, above: int, *, checkpoint: tuple[str, str] | None = None
    ) -> int:
        """Number every waiting update after ``above`` and every seq given out, in order."""
        check_renumbering(above, checkpoint)
        self._open_or_raise("renumbering the outbox")
        start = max(above, self._outbox_head)
        items = [item for _, item in sorted(self._outbox.items())]
        self._outbox = {
            start + index + 1: dataclasses.replace(item, seq=start + index + 1)
            for index, item in enumerate(items)
        }
        self._outbox_head = start + len(items)
        if checkpoint is not None:
            self._meta[checkpoint[0]] = checkpoint[1]
        return len(items)

    # -------------------------------------------------------------------- feed

    async def feed_since(
        self,
        after_seq: int,
        *,
        limit: int,
        organisation: str | None = None,
        exclude_origin: str | None = None,
    ) -> list[FeedItem]:
        """Change-feed items with seq > ``after_seq``, in order, at most ``limit``."""
        check_feed_query(after_seq, limit, organisation, exclude_origin)
        self._open_or_raise("reading the change feed")
        items = (
            item
            for item in self._feed[after_seq:]
            if (organisation is None or item.organisation == organisation)
            and (exclude_origin is None or item.origin != exclude_origin)
        )
        result: list[FeedItem] = []
        for item in items:
            if len(result) >= limit:
                break
            result.append(item)
        return result

    async def feed_head(self) -> int:
        """The highest change-feed number given out (0 when empty)."""
        self._open_or_raise("reading the change feed")
        return len(self._feed)

    async def feed_epochs(self) -> list[FeedEpoch]:
        """Every feed epoch begun, by ascending first number."""
        self._open_or_raise("reading the change feed's epochs")
        return [FeedEpoch(first, epoch) for first, epoch in sorted(self._feed_epochs.items())]

    async def begin_feed_epoch(self, epoch: int) -> FeedEpoch:
        """Label the feed numbers from the head + 1 on with ``epoch``."""
        check_feed_epoch(epoch)
        self._open_or_raise("beginning a change-feed epoch")
        begun = FeedEpoch(len(self._feed) + 1, epoch)
        self._feed_epochs[begun.first_seq] = epoch
        return begun

    # ------------------------------------------------------------- maintenance

    async def compact(self, record_id: str) -> int:
        """Fold the record's log into its state, after checking nothing changes."""
        check_text(record_id, "record_id")
        self._open_or_raise(f"compacting record {record_id}")
        record = self._records.get(record_id)
        if record is None:
            raise UnknownRecordError(f"no record {record_id} is stored here")
        if not record.log:
            return 0
        compacted = merge([record.state, *record.log], record_id=record_id)
        problem = verify_compaction(record.state, record.log, compacted, record.state_vector)
        if problem is not None:
            raise CorruptDatabaseError(
                f"compaction of record {record_id} refused, nothing changed: {problem}"
            )
        folded = len(record.log)
        record.state = compacted
        record.log = []
        record.pending = has_pending(compacted, record.state_vector)
        return folded

    async def check(self) -> list[str]:
        """A full consistency check; returns the problems found (empty when sound)."""
        self._open_or_raise("checking the store")
        problems: list[str] = []
        for record_id, record in self._records.items():
            try:
                merged = record.merged(record_id)
                vector = state_vector_of(merged, record_id=record_id)
                if not same_state_vector(vector, record.state_vector):
                    problems.append(
                        f"record {record_id}: its stored state vector does not match its content"
                    )
                elif not record.pending and has_pending(merged, vector):
                    problems.append(f"record {record_id}: holds waiting updates, not marked so")
            except InvalidInputError as exc:
                problems.append(f"record {record_id}: {exc}")
        for name, ids in (
            ("outbox", {i.record_id for i in [*self._outbox.values(), *self._aside.values()]}),
            ("feed", {i.record_id for i in self._feed}),
            ("conflicts", set(self._conflicts)),
            ("person cards", set(self._cards)),
            ("person pairs", set(self._pairs_of)),
        ):
            orphans = ids - set(self._records)
            if orphans:
                problems.append(f"{len(orphans)} {name} rows belong to no stored record")
        if self._outbox and max(self._outbox) > self._outbox_head:
            problems.append("outbox numbers run ahead of their sequence")
        unlisted = sum(1 for i in self._aside.values() if i.record_id not in self._set_aside)
        if unlisted:  # set aside, and never tried again: a record nobody is told of
            problems.append(f"{unlisted} outbox rows set aside belong to no record set aside")
        return problems

    # -------------------------------------------------------------- audit trail

    def _own_id(self) -> str:
        if self._identity is None:
            raise StorageError("this store holds no replica yet: it has no audit trail")
        return self._identity.replica_id

    def _plan_own_audit(
        self, events: Sequence[AuditEvent], now: int, replica_id: str | None = None
    ) -> list[AuditEntry]:
        if not events:
            return []
        own = replica_id or self._own_id()
        chain = self._audit.get((own, 0))
        tail = (chain[-1].seq, chain[-1].hash) if chain else (0, GENESIS)
        return plan_append(events, replica_id=own, tail=tail, now_ms=now)

    def _keep_audit(self, entries: Sequence[AuditEntry]) -> None:
        for entry in entries:
            self._audit.setdefault((entry.replica_id, entry.line), []).append(entry)
            self._audit_held.add((entry.replica_id, entry.seq, entry.hash))

    async def append_audit(
        self,
        events: Sequence[AuditEvent],
        *,
        replica_id: str | None = None,
        seen: tuple[str, int] | None = None,
        durable: bool = True,
    ) -> list[AuditEntry]:
        """Append ``events`` to this replica's own audit chain (with ``seen``, the
        replica's last contact too); ``durable`` means nothing in memory."""
        checked = check_audit_append(events, replica_id)
        noted = check_seen(seen)
        self._open_or_raise("writing the audit trail")
        if not checked:
            return []
        entries = self._plan_own_audit(checked, self._now_ms(), replica_id)
        self._keep_audit(entries)
        if noted is not None and (info := self._replicas.get(noted[0])) is not None:
            self._replicas[noted[0]] = dataclasses.replace(info, last_seen_ms=noted[1])
        return entries

    async def make_durable(self) -> None:
        """Nothing to do: memory holds nothing through a power cut anyway."""
        self._open_or_raise("making the last commits durable")

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
        self._open_or_raise("reading the audit trail")
        found = [
            entry
            for key in sorted(self._audit)
            if replica_id is None or key[0] == replica_id
            for entry in self._audit[key]
            if entry.seq > after_seq and (record_id is None or entry.record_id == record_id)
        ]
        return found if limit is None else found[:limit]

    async def audit_tail(self, replica_id: str | None = None) -> tuple[int, bytes]:
        """The last (number, hash) of the replica's newest chain line."""
        if replica_id is not None:
            check_text(replica_id, "replica_id")
        self._open_or_raise("reading the audit trail")
        rid = replica_id if replica_id is not None else self._own_id()
        lines = [line for (owner, line) in self._audit if owner == rid]
        if not lines:
            return 0, GENESIS
        last = self._audit[(rid, max(lines))][-1]
        return last.seq, last.hash

    async def receive_audit(self, replica_id: str, entries: Sequence[AuditEntry]) -> int:
        """Keep the audit entries another replica sent (see Store.receive_audit)."""
        check_text(replica_id, "replica_id")
        self._open_or_raise(f"keeping the audit trail of {replica_id}")
        tails = {
            line: (chain[-1].seq, chain[-1].hash)
            for (owner, line), chain in self._audit.items()
            if owner == replica_id
        }
        plan = plan_receive(
            replica_id,
            tuple(entries),
            tails=tails,
            holds=lambda seq, digest: (replica_id, seq, digest) in self._audit_held,
        )
        self._keep_audit([dataclasses.replace(e, line=plan.line) for e in plan.new])
        return plan.acknowledged

    # ------------------------------------------------------------ unsynced work

    async def export_unsynced(self, path: StrPath) -> int:
        """Write every pending update to a new file at ``path``; returns how many."""
        self._open_or_raise("exporting unsynced changes")
        export = UnsyncedExport(
            replica_id=None if self._identity is None else self._identity.replica_id,
            exported_ms=self._now_ms(),
            updates=tuple(
                ExportedUpdate(
                    item.seq,
                    item.record_id,
                    self._records[item.record_id].organisation,
                    item.created_ms,
                    item.update,
                )
                for _, item in sorted([*self._outbox.items(), *self._aside.items()])
            ),
        )
        await asyncio.to_thread(write_export_file, path, export)
        return len(export.updates)

    async def import_unsynced(
        self,
        path: StrPath,
        *,
        conflicts: Mapping[str, Sequence[ConflictRow]] | None = None,
        persons: Mapping[str, PersonCard] | None = None,
        audit: Sequence[AuditEvent] = (),
    ) -> int:
        """Re-apply an export's updates as local writes (with ``conflicts``), all or nothing."""
        events = check_events(audit)
        self._open_or_raise("importing unsynced changes")
        export = await asyncio.to_thread(read_export_file, path)
        writes = imported_writes(export.updates, conflicts, persons)
        return len(self._write_local(writes, events))

    async def discard_unsynced(self, *, exported_to: StrPath) -> int:
        """Empty the outbox, if and only if ``exported_to`` holds every pending update."""
        self._open_or_raise("discarding unsynced changes")
        try:
            export = await asyncio.to_thread(read_export_file, exported_to)
        except ExportFileError as exc:
            raise UnsyncedChangesError(
                f"refused to discard unsynced changes: {exc}; export them first"
            ) from exc
        kept = export.keys()
        missing = [
            seq
            for seq, item in sorted([*self._outbox.items(), *self._aside.items()])
            if content_key(item.record_id, item.update) not in kept
        ]
        if missing:
            raise UnsyncedChangesError(
                f"refused to discard unsynced changes: {len(missing)} pending updates "
                f"(outbox {missing[0]}...) are not in {exported_to}; export them again"
            )
        count = len(self._outbox) + len(self._aside)
        self._outbox.clear()
        self._aside.clear()
        self._set_aside.clear()
        return count

    # --------------------------------------------------------------- quarantine

    async def quarantined(self, record_id: str | None = None) -> list[QuarantinedUpdate]:
        """Updates kept aside because they could not be merged, oldest first."""
        if record_id is not None:
            check_text(record_id, "record_id")
        self._open_or_raise("reading the quarantine")
        return [q for q in self._quarantine if record_id is None or q.record_id == record_id]

    async def count_quarantined(self) -> int:
        """How many updates are kept aside."""
        self._open_or_raise("counting the quarantine")
        return len(self._quarantine)

    # ----------------------------------------------------------------- accounts

    async def add_user(
        self,
        organisation: str,
        username: str,
        password_hash: str,
        *,
        display_name: str | None = None,
        admin: bool = False,
    ) -> None:
        """Add a user to an organisation; InvalidInputError if the name is taken there."""
        check_new_user(organisation, username, password_hash, display_name, admin)
        self._open_or_raise(f"adding user {username!r}")
        if (organisation, username) in self._users:
            raise user_exists(organisation, username)
        self._users[organisation, username] = UserAccount(
            organisation,
            username,
            password_hash,
            self._now_ms(),
            display_name=display_name,
            admin=admin,
        )
        self._password_marks[organisation, username] = new_password_mark()

    async def get_user(self, organisation: str, username: str) -> UserAccount | None:
        """A user of the organisation, or None."""
        check_user(organisation, username)
        self._open_or_raise(f"reading user {username!r}")
        return self._users.get((organisation, username))

    async def set_display_name(
        self, organisation: str, username: str, display_name: str | None
    ) -> None:
        """Set (or clear) how people see an account; InvalidInputError for an unknown user."""
        check_user_display_name(organisation, username, display_name)
        user = self._user_or_raise(organisation, username)
        self._users[organisation, username] = dataclasses.replace(user, display_name=display_name)

    async def organisation_accounts(self, organisation: str) -> dict[str, str]:
        """Every account of the organisation: username → display name (else username)."""
        check_text(organisation, "organisation")
        self._open_or_raise(f"listing the accounts of {organisation!r}")
        return {
            user.username: user.shown_as
            for (org, _), user in sorted(self._users.items())
            if org == organisation
        }

    async def account_standings(self, organisation: str) -> dict[str, AccountStanding]:
        """Every account of the organisation: shown name, disabled, password mark."""
        check_text(organisation, "organisation")
        self._open_or_raise(f"reading the accounts of {organisation!r}")
        return {
            user.username: account_standing(
                user.username, user.display_name, user.disabled_ms, self._password_marks.get(key)
            )
            for key, user in sorted(self._users.items())
            if key[0] == organisation
        }

    async def replica_accounts(self, replica_ids: Collection[str]) -> dict[str, frozenset[str]]:
        """The accounts that have logged in on each of these replicas."""
        wanted = {check_text(r, "replica_id") for r in replica_ids}
        self._open_or_raise("reading who logged in on replicas")
        return {
            replica_id: frozenset(self._replica_accounts[replica_id])
            for replica_id in sorted(wanted)
            if replica_id in self._replica_accounts
        }

    async def set_password_hash(
        self, organisation: str, username: str, password_hash: str, *, end_sessions: bool = True
    ) -> None:
        """Replace a user's password hash; a new password ends the user's sessions and
        gets a new password mark."""
        check_password_change(organisation, username, password_hash)
        user = self._user_or_raise(organisation, username)
        self._users[organisation, username] = dataclasses.replace(user, password_hash=password_hash)
        if end_sessions:
            self._password_marks[organisation, username] = new_password_mark()
            self._end_sessions_where(
                lambda s: (s.organisation, s.username) == (organisation, username)
            )

    async def set_user_disabled(self, organisation: str, username: str, disabled: bool) -> None:
        """Disable an account (its sessions end at once) or enable it again."""
        check_user(organisation, username)
        user = self._user_or_raise(organisation, username)
        when = (user.disabled_ms or self._now_ms()) if disabled else None
        self._users[organisation, username] = dataclasses.replace(user, disabled_ms=when)
        if disabled:
            self._end_sessions_where(
                lambda s: (s.organisation, s.username) == (organisation, username)
            )

    async def set_user_admin(self, organisation: str, username: str, admin: bool) -> None:
        """Grant or revoke an account's administrator role; InvalidInputError for an
        unknown user."""
        check_user_admin(organisation, username, admin)
        user = self._user_or_raise(organisation, username)
        self._users[organisation, username] = dataclasses.replace(user, admin=admin)

    def _user_or_raise(self, organisation: str, username: str) -> UserAccount:
        self._open_or_raise(f"updating user {username!r}")
        user = self._users.get((organisation, username))
        if user is None:
            raise no_user(organisation, username)
        return user

    async def enrol_replica(
        self,
        replica_id: str,
        organisation: str,
        *,
        enrolled_by: str | None = None,
        device_name: str | None = None,
        secret_hash: str | None = None,
        audit: Sequence[AuditEvent] = (),
        audit_as: str | None = None,
    ) -> ReplicaInfo:
        """Record a replica's enrolment (and ``audit`` on this store's own chain);
        InvalidInputError for a replica id already known."""
        check_enrolment(replica_id, organisation, enrolled_by, device_name, secret_hash)
        events = check_audit_append(audit, audit_as)
        self._open_or_raise(f"enrolling replica {replica_id!r}")
        if replica_id in self._replicas:
            raise enrolled_already(replica_id)
        entries = self._plan_own_audit(events, self._now_ms(), audit_as)
        info = ReplicaInfo(
            replica_id,
            organisation,
            enrolled_by,
            self._now_ms(),
            None,
            None,
            device_name=device_name,
        )
        self._replicas[replica_id] = info
        if secret_hash is not None:
            self._secrets[replica_id] = secret_hash
        self._keep_audit(entries)
        return info

    async def replica_secret_hash(self, replica_id: str) -> str | None:
        """The SHA-256 (hex) of the replica's secret, or None."""
        check_text(replica_id, "replica_id")
        self._open_or_raise(f"reading replica {replica_id!r}")
        return self._secrets.get(replica_id)

    async def set_replica_secret_hash(self, replica_id: str, secret_hash: str) -> None:
        """Give a replica enrolled without a secret its first one; never replaces one."""
        check_secret_hash(replica_id, secret_hash)
        self._open_or_raise(f"updating replica {replica_id!r}")
        if replica_id not in self._replicas or replica_id in self._secrets:
            raise secret_refused(replica_id)
        self._secrets[replica_id] = secret_hash

    async def reissue_replica_secret(
        self,
        replica_id: str,
        *,
        organisation: str,
        enrolled_by: str,
        secret_hash: str,
        audit: Sequence[AuditEvent] = (),
        audit_as: str | None = None,
    ) -> bool:
        """A new secret for a replica of that organisation and account, never seen nor
        revoked (its sessions end, ``audit`` is kept); False, changing nothing, for any
        other."""
        check_reissue(replica_id, organisation, enrolled_by, secret_hash)
        events = check_audit_append(audit, audit_as)
        self._open_or_raise(f"updating replica {replica_id!r}")
        info = self._replicas.get(replica_id)
        if (
            info is None
            or (info.organisation, info.enrolled_by) != (organisation, enrolled_by)
            or info.revoked_ms is not None
            or info.last_seen_ms is not None
        ):
            return False
        entries = self._plan_own_audit(events, self._now_ms(), audit_as)
        self._secrets[replica_id] = secret_hash
        self._end_sessions_where(lambda s: s.replica_id == replica_id)
        self._keep_audit(entries)
        return True

    async def get_replica(self, replica_id: str) -> ReplicaInfo | None:
        """An enrolled replica, or None."""
        check_text(replica_id, "replica_id")
        self._open_or_raise(f"reading replica {replica_id!r}")
        return self._replicas.get(replica_id)

    async def replicas(self, organisation: str | None = None) -> list[ReplicaInfo]:
        """Every enrolled replica (of that organisation), by id."""
        check_optional_text(organisation, "organisation")
        self._open_or_raise("listing replicas")
        return [
            info
            for _, info in sorted(self._replicas.items())
            if organisation is None or info.organisation == organisation
        ]

    async def touch_replica(
        self,
        replica_id: str,
        seen_ms: int | None = None,
        *,
        pending: int | None = None,
        oldest_pending_ms: int | None = None,
    ) -> None:
        """Note that a replica was seen now (or at ``seen_ms``), and what it reported."""
        check_text(replica_id, "replica_id")
        seen = self._now_ms() if seen_ms is None else check_count(seen_ms, "seen_ms")
        count, oldest = check_outbox_report(pending, oldest_pending_ms)
        info = self._replica_or_raise(replica_id)
        info = dataclasses.replace(info, last_seen_ms=seen)
        if count is not None:
            info = dataclasses.replace(info, pending=count, oldest_pending_ms=oldest)
        self._replicas[replica_id] = info

    async def revoke_replica(
        self, replica_id: str, *, audit: Sequence[AuditEvent] = (), audit_as: str | None = None
    ) -> bool:
        """Revoke a replica (and keep ``audit``) unless revoked already: revoking twice
        keeps the first time and its entries; returns whether this call revoked it."""
        check_text(replica_id, "replica_id")
        events = check_audit_append(audit, audit_as)
        info = self._replica_or_raise(replica_id)
        revoked = info.revoked_ms is None
        if revoked:
            now = self._now_ms()
            entries = self._plan_own_audit(events, now, audit_as)
            self._replicas[replica_id] = dataclasses.replace(info, revoked_ms=now)
            self._keep_audit(entries)
        self._end_sessions_where(lambda s: s.replica_id == replica_id)
        return revoked

    def _replica_or_raise(self, replica_id: str) -> ReplicaInfo:
        self._open_or_raise(f"updating replica {replica_id!r}")
        info = self._replicas.get(replica_id)
        if info is None:
            raise not_enrolled(replica_id)
        return info

    # ----------------------------------------------------------------- sessions

    async def add_session(self, session: SessionRow) -> None:
        """Store a new session; InvalidInputError for a token hash already stored."""
        check_session(session)
        self._open_or_raise("storing a session")
        if session.token_hash in self._sessions:
            raise session_stored()
        self._sessions[session.token_hash] = session
        if session.replica_id is not None:
            self._replica_accounts.setdefault(session.replica_id, set()).add(session.username)

    async def read_resume(
        self, token_hash: str, replica_id: str, *, meta_keys: Sequence[str] = ()
    ) -> ResumeReads:
        """A resumed login's reads (:class:`~caresync.storage.ResumeReads`), one by one."""
        return await read_resume_one_by_one(self, token_hash, replica_id, meta_keys)

    async def get_session(self, token_hash: str) -> SessionRow | None:
        """The session with that token hash, or None."""
        check_text(token_hash, "token_hash")
        self._open_or_raise("reading a session")
        return self._sessions.get(token_hash)

    async def bind_session(self, token_hash: str, replica_id: str) -> None:
        """Bind a session opened before enrolment to its new replica (only an unbound one)."""
        check_binding(token_hash, replica_id)
        self._open_or_raise("binding a session")
        session = self._sessions.get(token_hash)
        if session is None or session.replica_id is not None:
            raise no_unbound_session()
        self._sessions[token_hash] = dataclasses.replace(session, replica_id=replica_id)
        self._replica_accounts.setdefault(replica_id, set()).add(session.username)

    async def end_sessions(
        self,
        *,
        replica_id: str | None = None,
        user: tuple[str, str] | None = None,
        expired_at_ms: int | None = None,
        token_hash: str | None = None,
    ) -> int:
        """Delete sessions of a replica, of a user, expired ones, or one; returns how many."""
        kind, values = check_session_selector(replica_id, user, expired_at_ms, token_hash)
        self._open_or_raise("ending sessions")
        chooses: dict[str, Callable[[SessionRow], bool]] = {
            "replica_id": lambda s: s.replica_id == values[0],
            "user": lambda s: (s.organisation, s.username) == values,
            "expired_at_ms": lambda s: s.expires_ms <= cast(int, values[0]),
            "token_hash": lambda s: s.token_hash == values[0],
        }
        return self._end_sessions_where(
            chooses[kind], early=kind != "expired_at_ms", account_change=False
        )

    def _end_sessions_where(
        self,
        chosen: Callable[[SessionRow], bool],
        *,
        early: bool = True,
        account_change: bool = True,
    ) -> int:
        """End the chosen sessions. ``early`` (not by expiry) moves the generation on,
        always for an account change (as the SQLite store does), else only if any ended."""
        ended = [h for h, s in self._sessions.items() if chosen(s)]
        for token_hash in ended:
            del self._sessions[token_hash]
        if early and (ended or account_change):
            self._generation += 1
        return len(ended)

    async def accounts_generation(self) -> int:
        """Grows whenever sessions end early."""
        self._open_or_raise("reading the accounts generation")
        return self._generation

    # failed logins (one process uses an in-memory store: memory is shared enough)
    async def login_wait_ms(self, keys: Sequence[str], now_ms: int, forget_after_ms: int) -> int:
        """Milliseconds until a login counted against ``keys`` may be tried (0: now)."""
        self._open_or_raise("reading failed logins")
        return self._login_failures.wait_ms(keys, now_ms, forget_after_ms)

    async def login_failed(
        self, keys: Sequence[tuple[str, int]], now_ms: int, policy: ThrottlePolicy
    ) -> None:
        """Count a failed login against each ``(key, free)`` (see ``ServerStore``)."""
        self._open_or_raise("counting a failed login")
        self._login_failures.failed(keys, now_ms, policy)

    async def login_claim(self, key: str, free: int, now_ms: int, policy: ThrottlePolicy) -> int:
        """Count a failed login against ``key`` unless it is locked (see ``ServerStore``)."""
        self._open_or_raise("counting a failed login")
        return self._login_failures.claim(key, free, now_ms, policy)

    async def login_succeeded(self, key: str) -> None:
        """Forget the failures of ``key``."""
        self._open_or_raise("clearing failed logins")
        self._login_failures.succeeded(key)
