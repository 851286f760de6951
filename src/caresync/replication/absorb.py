"""The one path remote updates take into a replica: into its records, checked, committed.

A laptop's pull, its live updates and its first copy, and the server's push all
call :func:`absorb`. What differs between them is said by its arguments, not
by copies of the code:

* ``keep_each``: each update stays one stored update (the server: each pushed
  update becomes its own feed entry, so a batch sent again is recognised update
  by update), or a record's updates in one batch are merged into one (a laptop);
* ``on_bad``: what bytes that are not an update of that record do: the server
  refuses the whole batch, storing nothing (they would reach every replica); a
  laptop keeps them aside (quarantine) and takes the rest, or the sync would fail
  at every round after;
* ``admit``: checks one record's arriving updates against the record as it stood
  before them (the server's admission of revisions), before any is applied;
* ``vet``: checks over everything taken in, before the commit (the server's
  authorship and Yjs client-id checks); it returns what else the store writes
  in the same transaction;
* ``trusted``: records new here whose conflict rows and person card a server
  with our rulebook computed (a first copy): stored as they are, not built, if
  their bytes cannot make them another's (``keeps_its_id``; else built);
* ``checked``: what a server with our rulebook stored for some records (a pull or
  live entries, protocol version 8): a record not loaded here that the batch
  leaves in exactly the state the server checked is stored with the server's
  rows and card, not built and not entering the pool (see
  :mod:`caresync.replication.checked`); any other is built and checked.

Each record's rules run once per batch, after all its updates; its conflict
rows and person card are committed with its last update. With ``admit`` (a
server's push), the event loop runs other tasks between records. The caller holds the
replica's write lock, so nothing interleaves with the merge. Memory never runs
ahead of disk: if anything fails before the commit is done, every record the
batch touched is dropped from the pool (it is read from the store next time).
Readers do not take that lock: a copy of a record that a reader loaded while the
batch ran (one stored unbuilt, or one evicted before the commit) is dropped after
the commit, and a reader's load that the commit overtook is not kept (see
``RecordPool.get``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, NamedTuple, TypedDict, cast

from caresync.exceptions import InvalidUpdateError, RecordMismatchError
from caresync.records import Record
from caresync.records.crdt import merge as merge_updates
from caresync.records.crdt import state_vector_of, state_vectors_of
from caresync.records.persons import PersonCard, PersonCards, person_card
from caresync.records.spans import advance_vector
from caresync.replication.checked import (
    ServerCheck,
    advance_simply,
    card_digest_kept,
    card_kept,
    copied_state,
    keeps_its_id,
    matches,
    rows_kept,
    vector_after,
)
from caresync.replication.pool import RecordPool
from caresync.storage import ConflictRow, IncomingUpdate, QuarantinedUpdate, ReplicaStore
from caresync.storage.base import CopiedRecords, HubMark

__all__ = [
    "Absorbed",
    "Admit",
    "OnBadUpdate",
    "PreparedCopy",
    "ServerCheck",
    "Taken",
    "TrustedCopy",
    "Vet",
    "WriteOptions",
    "absorb",
    "prepare_copy",
]

logger = logging.getLogger("caresync.replication")

_tuple_new: Any = tuple.__new__  # cls(*fields) of a named tuple cls, in one C call


class OnBadUpdate(enum.Enum):
    """What bytes that are not an update of their record do to a batch."""

    REFUSE = "refuse"
    """Raise (InvalidUpdateError or RecordMismatchError); nothing is stored."""
    QUARANTINE = "quarantine"
    """Keep them aside (``ReplicaStore.quarantined``) and take in the rest."""


class Taken(NamedTuple):
    """One record as a batch left it, and what the store keeps for it.

    A named tuple rather than a frozen dataclass: a pull makes one per record, and a
    tuple costs less to build and less to the garbage collector."""

    record: Record | None
    """The record, loaded in the pool; None for a trusted copy stored unbuilt."""
    updates: tuple[bytes, ...]
    """What is stored for it: each arriving update, or their merge."""
    rows: tuple[ConflictRow, ...]
    person: PersonCard | None
    state_vector: bytes | None = None
    """The stored update's state vector, when it was read already (a trusted copy)."""
    rows_stored: bool = False
    """``rows`` are the rows stored for the record already (a check that referred to
    them): the store leaves them as they are rather than writing them again."""
    advances: tuple[bytes, bytes] | None = None
    """(the stored state vector, the one after ``updates``), when worked out already (a
    check compared it): passed to the store, which then need not work it out again."""


@dataclass(frozen=True, slots=True)
class WriteOptions:
    """What else the store writes with a batch (see ``ReplicaStore.write_remote``)."""

    to_feed: bool = False
    origin: str | None = None
    claim_clients: Mapping[tuple[str, int], str] | None = None  # (record_id, client)
    hub: Mapping[str, HubMark] | None = None


@dataclass(frozen=True, slots=True)
class TrustedCopy:
    """Conflict rows and person cards a server with our rulebook sent with a first copy."""

    rows: Mapping[str, tuple[ConflictRow, ...]]
    persons: Mapping[str, PersonCard]
    card_bytes: Mapping[str, bytes] = field(default_factory=dict)
    """The bytes each card of ``persons`` was read from: stored as they came."""
    pairs: Sequence[tuple[str, str]] | None = None
    """The server's person pairs whose later record is in the batch (protocol version
    12 on), as (first, second) record ids; None: not sent (the store finds them)."""


@dataclass(frozen=True, slots=True)
class Absorbed:
    """What one call of :func:`absorb` committed."""

    taken: Mapping[str, Taken]
    """By record id, in order of first arrival (empty for a prepared first copy, whose
    records are neither built nor planned one by one: see ``written``)."""
    written: list[tuple[int, str, bytes]]
    """Each stored update as (seq, record id, update): the store's seq (a server's feed
    seq; 0 for an update it held already), in the order written."""
    quarantined: tuple[QuarantinedUpdate, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class PreparedCopy:
    """A first-copy batch of records new here, taken in ahead of its commit
    (:func:`prepare_copy`); :func:`absorb` given it only writes it."""

    record_ids: frozenset[str]
    """Every record of the batch: each must be absent here when it is committed."""
    records: CopiedRecords
    """What the store writes (``ReplicaStore.write_copy``): the records whose bytes
    read as an update, with their state vectors, rows and cards."""
    kept_aside: tuple[QuarantinedUpdate, ...]


def prepare_copy(
    updates: Sequence[tuple[str, bytes]],
    trusted: TrustedCopy,
    organisation: str | None,
    *,
    on_bad: OnBadUpdate = OnBadUpdate.QUARANTINE,
    last: bool = False,
) -> PreparedCopy | None:
    """What :func:`absorb` does with a trusted first-copy batch whose every record is
    new here (``absent``), before it writes: each record's bytes read as an update
    (its state vector), with its rows and card, as the store's lists. Touches neither
    the store nor the pool, so it may run while the previous batch commits; the
    caller passes the result to :func:`absorb` (``prepared``) under the write lock.
    ``last``: the copy's last batch (``CopiedRecords.last``).

    None when a record's bytes may make it another's (:func:`keeps_its_id` does not
    vouch for them): such a record must be built, which checks its id, so the batch
    takes :func:`absorb`'s way record by record.
    """
    kept_aside: list[QuarantinedUpdate] = []
    ids = [record_id for record_id, _update in updates]
    stored = [update for _record_id, update in updates]
    # The common case, each record once (a CopyBatch's ids are unique): one walk of each
    # record's bytes says whether they keep its id and, when its items start at each
    # client's first clock, its state vector (nothing waits); pycrdt reads the others'
    # state vectors in one pass, which proves them updates. Else record by record.
    vectors: list[bytes] | None = None
    waiting: list[bool] | None = None
    if len(set(ids)) == len(ids):
        walked = list(map(copied_state, ids, stored))
        read = [vector for _kept, vector in walked]
        unread = [i for i, vector in enumerate(read) if vector is None]
        # A record the walk cannot vouch for: record by record (bytes pycrdt cannot
        # read are kept aside there; others it cannot vouch for send the batch to
        # absorb's way).
        fits = all(kept for kept, _vector in walked)
        others = state_vectors_of([stored[i] for i in unread]) if fits and unread else []
        if fits and others is not None:
            for i, vector in zip(unread, others, strict=True):
                read[i] = vector
            vectors = cast(list[bytes], read)
            # Known not to wait where read off the items; the store asks pycrdt if not.
            waiting = None if unread else [False] * len(read)
    if vectors is None:
        parts: dict[str, list[bytes]] = {}
        for record_id, update in updates:
            parts.setdefault(record_id, []).append(update)
        ids, stored, vectors = [], [], []
        for record_id, arrived in parts.items():
            try:
                update = _merged(record_id, arrived)
                # Proves the bytes an update, and spares the store reading them again.
                vector = state_vector_of(update, record_id=record_id)
            except InvalidUpdateError as exc:
                if on_bad is OnBadUpdate.REFUSE:
                    raise
                kept_aside.extend(QuarantinedUpdate(record_id, u, str(exc)) for u in arrived)
                continue
            ids.append(record_id)
            stored.append(update)
            vectors.append(vector)
        named = frozenset(parts)
        if not all(map(keeps_its_id, ids, ((update,) for update in stored))):
            return None
    else:
        named = frozenset(ids)
    rows, persons, sent = trusted.rows, trusted.persons, trusted.card_bytes
    if kept_aside or not rows.keys() <= named or not persons.keys() <= named:
        # Rows and cards of records taken in only (a record kept aside has none stored).
        taken = set(ids)
        rows = {rid: found for rid, found in rows.items() if rid in taken}
        persons = (
            persons.only(taken)  # still read only as far as asked
            if isinstance(persons, PersonCards)
            else {rid: card for rid, card in persons.items() if rid in taken}
        )
    if not sent.keys() <= persons.keys():
        sent = {rid: data for rid, data in sent.items() if rid in persons}
    pairs = trusted.pairs
    if pairs is not None and kept_aside:
        # A record kept aside is not stored, nor its card: its pairs are not either.
        aside = named.difference(ids)
        pairs = [pair for pair in pairs if pair[0] not in aside and pair[1] not in aside]
    records = CopiedRecords(
        ids, stored, vectors, organisation, rows, persons, sent, pairs, last=last, waiting=waiting
    )
    return PreparedCopy(named, records, tuple(kept_aside))


def _take_trusted(
    record_id: str,
    arrived: list[bytes],
    trusted: TrustedCopy,
    on_bad: OnBadUpdate,
    kept_aside: list[QuarantinedUpdate],
) -> Taken | None:
    """A copied record stored without building it, if its bytes read as an update."""
    try:
        update = _merged(record_id, arrived)
        # Proves the bytes an update, and spares the store reading them again.
        vector = state_vector_of(update, record_id=record_id)
    except InvalidUpdateError as exc:
        if on_bad is OnBadUpdate.REFUSE:
            raise
        kept_aside.extend(QuarantinedUpdate(record_id, u, str(exc)) for u in arrived)
        return None
    rows, person = trusted.rows.get(record_id, ()), trusted.persons.get(record_id)
    return Taken(None, (update,), rows, person, vector)


Admit = Callable[[str, Record | None, Sequence[bytes]], None]
"""``admit(record_id, record_before, updates)``: raise to refuse (the record is None
when it is new here)."""

Vet = Callable[[Mapping[str, Taken]], Awaitable[WriteOptions]]
"""Called with everything taken in, before the commit: raise to refuse, or say what
else to write."""


class _Lazily(TypedDict, total=False):
    durable: bool


def _lazily(durable: bool) -> _Lazily:
    """The store's ``durable`` option, named only when false: a store written before
    the option existed takes every other call as it did."""
    return {} if durable else {"durable": False}


async def absorb(
    pool: RecordPool,
    store: ReplicaStore,
    updates: Sequence[tuple[str, bytes]],
    *,
    checkpoint: tuple[str, str] | None,
    organisation: str | None,
    keep_each: bool = False,
    on_bad: OnBadUpdate = OnBadUpdate.QUARANTINE,
    admit: Admit | None = None,
    vet: Vet | None = None,
    absent: Collection[str] = (),
    trusted: TrustedCopy | None = None,
    checked: Mapping[str, ServerCheck] | None = None,
    prepared: PreparedCopy | None = None,
    durable: bool = True,
) -> Absorbed:
    """Take ``updates`` ((record id, update) pairs) into their records and commit them
    with ``checkpoint`` in one transaction (see the module docstring for the options).

    ``absent`` names records known not to be stored here (a first copy's): they are
    not looked up. ``prepared``: the same batch already taken in by
    :func:`prepare_copy` with ``trusted``, only written here if every record of it is
    in ``absent`` (else it is ignored, and the batch takes the path above).
    ``durable=False``: the store commits without waiting for the disk (a laptop's
    intake from its server; see ``ReplicaStore.write_remote``). Returns what was
    committed.
    """
    lazily = _lazily(durable)
    if prepared is not None and prepared.record_ids.issubset(absent):
        return await _commit_prepared(pool, store, prepared, checkpoint=checkpoint, **lazily)
    parts: dict[str, list[bytes]] = {}
    for record_id, update in updates:
        parts.setdefault(record_id, []).append(update)
    intake = _Intake(pool, store, keep_each=keep_each, on_bad=on_bad, admit=admit)
    try:
        # Held here, not looked up at each record's turn: the batch's own loads (or a
        # read meanwhile) may evict a record from the pool, and a record taken for new
        # would be admitted and indexed without what it already holds.
        loaded = {rid: record for rid in parts if (record := pool.peek(rid)) is not None}
        # A loaded record takes the ordinary path: its live document stays current.
        agreed, rows_stored, advances = (
            await _agreed(store, parts, checked, loaded) if checked else ({}, frozenset(), {})
        )
        unloaded = [
            rid for rid in parts if rid not in absent and rid not in loaded and rid not in agreed
        ]
        stored = await store.load_many(unloaded) if unloaded else {}
        taken: dict[str, Taken] = {}
        for record_id, arrived in parts.items():
            check = agreed.get(record_id)
            if check is None:
                merged = None
            elif len(arrived) == 1:
                merged = arrived[0]  # what _merged_or_none says of one update, without calls
            else:
                merged = _merged_or_none(record_id, arrived)
            if check is not None and merged is None and record_id not in absent:
                # Checked, yet its bytes do not merge: the ordinary path, from what is stored.
                held = await store.load(record_id)
                if held is not None:
                    stored[record_id] = held
            found: Taken | None
            if check is not None and merged is not None:
                # Taken(...) in one C call (a pull makes a thousand).
                found = _tuple_new(
                    Taken,
                    (
                        None,
                        (merged,),
                        check.rows,
                        check.person,
                        None,
                        record_id in rows_stored,
                        advances.get(record_id),
                    ),
                )
            elif trusted is not None and record_id in absent and keeps_its_id(record_id, arrived):
                # Not built: only bytes that cannot make it another's (building checks).
                found = intake.take_trusted(record_id, arrived, trusted)
            else:
                before = None if record_id in absent else stored.get(record_id)
                record = loaded.get(record_id)
                if record is not None:
                    pool.adopt(record)  # kept loaded (again, if it was evicted)
                found = await intake.take_in(record_id, arrived, before, record)
            if found is not None:
                taken[record_id] = found
            if admit is not None:
                # A server's push is merged on its event loop, one record a few seconds at
                # worst (10,000 revisions of one field): let other connections run between
                # records rather than hold them all for the whole batch. Nothing is lost by
                # it: the caller holds the commit lock, and nothing is committed yet.
                await asyncio.sleep(0)
        if intake.kept_aside:
            logger.warning(
                "%d updates from the server could not be merged and were kept aside (records: %s)",
                len(intake.kept_aside),
                ", ".join(sorted({q.record_id for q in intake.kept_aside})),
            )
        options = WriteOptions() if vet is None else await vet(taken)
        items = _to_store(updates, taken, organisation, keep_each=keep_each)
        seqs = await store.write_remote(
            items,
            checkpoint=checkpoint,
            to_feed=options.to_feed,
            origin=options.origin,
            quarantine=intake.kept_aside,
            claim_clients=options.claim_clients,
            hub=options.hub,
            **lazily,
        )
    except BaseException:
        for record_id in parts:
            pool.forget(record_id)
        raise
    # A reader may have loaded a record of the batch meanwhile (nothing holds readers
    # back), from before this commit: one stored unbuilt, or one the batch built and
    # that was evicted before the commit (a batch may hold more records than the pool).
    # Dropped. Loads of the batch's records still under way are not kept.
    pool.committed((record_id, found.record) for record_id, found in taken.items())
    written = [(seq, item.record_id, item.update) for seq, item in zip(seqs, items, strict=True)]
    return Absorbed(taken, written, tuple(intake.kept_aside))


async def _commit_prepared(
    pool: RecordPool,
    store: ReplicaStore,
    prepared: PreparedCopy,
    *,
    checkpoint: tuple[str, str] | None,
    durable: bool = True,
) -> Absorbed:
    """Write a batch :func:`prepare_copy` took in: what :func:`absorb` writes for it."""
    if prepared.kept_aside:
        logger.warning(
            "%d updates from the server could not be merged and were kept aside (records: %s)",
            len(prepared.kept_aside),
            ", ".join(sorted({q.record_id for q in prepared.kept_aside})),
        )
    records = prepared.records
    try:
        lazily = _lazily(durable)
        await store.write_copy(
            records, checkpoint=checkpoint, quarantine=prepared.kept_aside, **lazily
        )
    except BaseException:
        for record_id in prepared.record_ids:
            pool.forget(record_id)
        raise
    # No Taken per record: a prepared copy's records are neither built nor in the pool.
    written = list(zip(repeat(0), records.record_ids, records.updates, strict=False))
    return Absorbed({}, written, prepared.kept_aside)


async def _agreed(
    store: ReplicaStore,
    parts: Mapping[str, list[bytes]],
    checked: Mapping[str, ServerCheck],
    loaded: Mapping[str, Record],
) -> tuple[dict[str, ServerCheck], frozenset[str], dict[str, tuple[bytes, bytes]]]:
    """The checks that fit: records not loaded that the batch leaves in the checked state;
    those of them whose rows the check referred to, which are the rows stored here; and
    for those whose new state vector was read off the updates' headers, (stored state
    vector, new one), for the store (``IncomingUpdate.advances``)."""
    wanted = [rid for rid in parts if rid in checked and rid not in loaded]
    if not wanted:
        return {}, frozenset(), {}
    # The reads asked at once (one queue of database jobs, no wait between them): each
    # record's state vector with its card's digest (schema version 15: no card read),
    # and the rows of every record whose check refers to them, before knowing whether
    # its state agrees (nearly all do; the others' are not used).
    holding = [rid for rid in wanted if checked[rid].rows_ref is not None]
    states, stored_rows = await asyncio.gather(
        store.held_states(wanted),
        store.conflict_rows(holding) if holding else _nothing(),
    )
    agreed: dict[str, ServerCheck] = {}
    advances: dict[str, tuple[bytes, bytes]] = {}
    for record_id in wanted:
        check = checked[record_id]
        held = states.get(record_id)
        updates = parts[record_id]
        if held is not None and not held.pending:
            # The usual record: stored, no waiting items, its updates read off their
            # headers (what the general way below decides for it, with fewer calls).
            simply = advance_vector(held.state_vector, updates)
            if simply is not None:
                moved = simply[0]
                if (moved == check.state_vector or matches(moved, check)) and keeps_its_id(
                    record_id, updates, simple=True
                ):
                    agreed[record_id] = check
                    if simply[1]:
                        advances[record_id] = (held.state_vector, moved)
                continue
        stored = None if held is None else (held.state_vector, held.pending)
        # Worked out once: the store is told the state vector after (if the record's
        # stored one is still the one read here, it takes it rather than reading the
        # updates' headers again).
        simply = None if stored is None or stored[1] else advance_simply(stored[0], updates)
        after = vector_after(record_id, stored, updates) if simply is None else simply[0]
        # Not built, its id is not checked by loading it: the updates must not change it.
        if matches(after, check) and keeps_its_id(record_id, updates, simple=simply is not None):
            agreed[record_id] = check
            if stored is not None and simply is not None and simply[1]:
                advances[record_id] = (stored[0], simply[0])
    # A card sent as a reference (version 9) fits only if it is the card stored here,
    # which is then kept as it is; else the record is built and checked. The digest on
    # the record's row says so; a record whose row carries none has its card read.
    referred = [rid for rid, check in agreed.items() if check.card_ref is not None]
    unknown = [
        rid for rid in referred if (held := states.get(rid)) is None or held.card_digest is None
    ]
    stored_cards = await store.person_card_bytes(unknown) if unknown else {}
    for record_id in referred:
        held = states.get(record_id)
        digest = None if held is None else held.card_digest
        check = agreed[record_id]
        if digest is not None:
            fits = card_digest_kept(check, digest)
        else:
            fits = card_kept(check, stored_cards.get(record_id))
        if not fits:
            del agreed[record_id]
    # Rows sent as a digest fit only if they are the rows stored here: then they stay
    # as stored (the same rows written again would change nothing but cost a delete
    # and an insert per record, with the count's triggers).
    held = [rid for rid, check in agreed.items() if check.rows_ref is not None]
    kept: set[str] = set()
    if held:
        rows = stored_rows
        for record_id in held:
            mine = rows.get(record_id, ())
            check = agreed[record_id]
            if rows_kept(check, mine):
                if mine != check.rows:  # the stored rows, as the record's rows from now on
                    agreed[record_id] = ServerCheck(
                        check.state_vector, mine, check.person, check.card_ref, None
                    )
                kept.add(record_id)
            else:
                del agreed[record_id]
    return agreed, frozenset(kept), advances


async def _nothing() -> dict[str, Any]:
    return {}


def _merged_or_none(record_id: str, parts: Sequence[bytes]) -> bytes | None:
    try:
        return _merged(record_id, parts)
    except InvalidUpdateError:
        return None


def _merged(record_id: str, parts: Sequence[bytes]) -> bytes:
    return parts[0] if len(parts) == 1 else merge_updates(list(parts), record_id=record_id)


def _to_store(
    updates: Sequence[tuple[str, bytes]],
    taken: Mapping[str, Taken],
    organisation: str | None,
    *,
    keep_each: bool,
) -> list[IncomingUpdate]:
    """What the store writes: in arrival order, each record's rows and card with its
    last update (``conflicts=None`` on the others leaves its rows for the last)."""
    if not keep_each:
        return [
            IncomingUpdate(
                rid,
                t.updates[0],
                None if t.rows_stored else t.rows,
                organisation,
                t.person,
                t.state_vector,
                t.advances,
            )
            for rid, t in taken.items()
        ]
    # Each record's stored updates, in arrival order (a quarantined one is not among them).
    remaining = {record_id: len(found.updates) for record_id, found in taken.items()}
    items: list[IncomingUpdate] = []
    for record_id, update in updates:
        found = taken.get(record_id)
        if found is None or not remaining[record_id]:
            continue
        index = len(found.updates) - remaining[record_id]
        if found.updates[index] != update:
            continue  # kept aside
        remaining[record_id] -= 1
        if remaining[record_id]:
            items.append(IncomingUpdate(record_id, update, None, organisation))
        else:
            rows = None if found.rows_stored else found.rows
            items.append(IncomingUpdate(record_id, update, rows, organisation, found.person))
    return items


class _Intake:
    """Takes one batch's updates into records, one record at a time."""

    def __init__(
        self,
        pool: RecordPool,
        store: ReplicaStore,
        *,
        keep_each: bool,
        on_bad: OnBadUpdate,
        admit: Admit | None,
    ) -> None:
        self.pool, self.store = pool, store
        self.keep_each, self.on_bad, self.admit = keep_each, on_bad, admit
        self.kept_aside: list[QuarantinedUpdate] = []

    def take_trusted(
        self, record_id: str, arrived: list[bytes], trusted: TrustedCopy
    ) -> Taken | None:
        """A copied record stored without building it, if its bytes read as an update."""
        return _take_trusted(record_id, arrived, trusted, self.on_bad, self.kept_aside)

    async def take_in(
        self, record_id: str, arrived: list[bytes], before: bytes | None, record: Record | None
    ) -> Taken | None:
        """Merge ``arrived`` into the record (loaded, or built from ``before``)."""
        pool = self.pool
        try:
            if self.admit is not None:
                # Admission reads the record as it stood: build it first.
                if record is None and before is not None:
                    record = pool.load_bytes(record_id, before)
                self.admit(record_id, record, arrived)
            stored = tuple(arrived) if self.keep_each else (_merged(record_id, arrived),)
            if record is not None:
                for update in stored:
                    record.apply_update(update)
                record.check_id()  # loading checks it; a loaded record here
            else:
                # Stored state and arrival taken in one pass, with no merge first.
                base = () if before is None else (before,)
                record = pool.load_bytes(record_id, *base, *stored)
        except (InvalidUpdateError, RecordMismatchError):
            pool.forget(record_id)
            if self.on_bad is OnBadUpdate.REFUSE:
                raise
            if before is None:  # it was loaded (or is new): read what is stored of it
                before = await self.store.load(record_id)
            return self._one_by_one(record_id, arrived, before)
        return Taken(record, stored, pool.rows(record), person_card(record))

    def _one_by_one(
        self, record_id: str, arrived: list[bytes], before: bytes | None
    ) -> Taken | None:
        """Take in the updates that merge, keeping the others aside."""
        pool = self.pool
        base = [] if before is None else [before]
        accepted: list[bytes] = []
        record: Record | None = None
        for part in arrived:
            try:
                # Built afresh each time: a failed merge may leave a document unusable.
                record = pool.load_bytes(record_id, *base, *accepted, part)
                accepted.append(part)
            except (InvalidUpdateError, RecordMismatchError) as exc:
                pool.forget(record_id)
                record = None
                self.kept_aside.append(QuarantinedUpdate(record_id, part, str(exc)))
        if not accepted:
            return None
        if record is None:
            record = pool.load_bytes(record_id, *base, *accepted)
        stored = tuple(accepted) if self.keep_each else (_merged(record_id, accepted),)
        return Taken(record, stored, pool.rows(record), person_card(record))
