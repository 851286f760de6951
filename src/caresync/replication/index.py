"""Keeping a replica's conflict index true to the rulebook it runs with.

Every replica keeps, per record, the rows of its open conflicts (the store's
conflict index), written in the same transaction as the update that changed
them. Those rows were computed by a rulebook; when the application's rulebook
changes (a rule added, removed or given a new version), rows of records that
nothing touched since would be stale, and a conflict a new rule finds would be
listed nowhere. So each database remembers the fingerprint of the rulebook that
computed its index (meta :data:`INDEX_RULEBOOK_KEY`), and opening it with another
rulebook re-indexes every record first.

On a database several server processes share (PostgreSQL), another process may
commit while one re-indexes (processes starting together after an upgrade both
re-index; the first to finish serves). So a server re-indexes each chunk inside
the store's ``exclusive_commits``, reading the records and writing their rows as of
one moment: a push committed in between would otherwise have its rows replaced by
rows of the record as it was before it. Inside that section it also reads the mark
again, and stops once another process finished the re-index.

The same mark lets a server send its rows to a laptop in a first copy, a pull or
live entries (:func:`read_checks`): only when the server's index was computed by
the rulebook the laptop runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager

from caresync.conflicts import Rulebook
from caresync.protocol import CheckedState, CopyConflict, RecordCheck
from caresync.records import Record
from caresync.records.persons import person_card
from caresync.replication import meta
from caresync.replication.checked import ServerCheck
from caresync.replication.pool import conflict_rows
from caresync.storage import ReplicaStore

__all__ = [
    "INDEX_RULEBOOK_KEY",
    "REINDEX_BATCH_RECORDS",
    "ensure_index",
    "read_checks",
    "read_wire_checks",
]

INDEX_RULEBOOK_KEY = meta.INDEX_RULEBOOK
"""Meta key: the fingerprint of the rulebook that computed the stored conflict rows."""

REINDEX_BATCH_RECORDS = 500
"""Records read, and their rows replaced, per store call (one transaction) while re-indexing."""


async def ensure_index(
    store: ReplicaStore,
    rulebook: Rulebook,
    *,
    replica: str,
    exclusive: Callable[[], AbstractAsyncContextManager[None]] | None = None,
) -> int:
    """Re-index every record's conflicts unless ``rulebook`` computed the stored index.

    The person index (each record's card, and the pairs of records that may be
    one person) is rebuilt with it: a new way of matching people comes with a new
    ``DERIVATION_VERSION``, hence a new fingerprint.

    Returns the number of records re-indexed (0 when the index was current, or
    the database holds no record). The rows of each chunk of
    :data:`REINDEX_BATCH_RECORDS` records are replaced in one transaction; the
    mark is written last, so an interrupted run starts again at the next open.
    A rulebook holding a rule without a stable name has a fingerprint of its
    own, so such a database re-indexes at every open: give rules importable
    names (see ``docs/conflicts.md``).

    ``exclusive`` (a server on a store other processes commit to passes
    ``store.exclusive_commits``): each chunk is read, computed and written inside
    it, so no commit lands between its read and its write; a chunk finding the
    mark current there (another process re-indexed everything meanwhile) ends the
    run. Without it (a laptop, a store one process writes), nothing else commits
    while the database is opened.
    """
    current = rulebook.fingerprint
    if await store.get_meta(INDEX_RULEBOOK_KEY) == current:
        return 0
    ids = await store.record_ids()
    done = 0
    for start in range(0, len(ids), REINDEX_BATCH_RECORDS):
        chunk = ids[start : start + REINDEX_BATCH_RECORDS]
        if exclusive is None:
            await _reindex_chunk(store, chunk, rulebook, replica)
        else:
            async with exclusive():
                if await store.get_meta(INDEX_RULEBOOK_KEY) == current:
                    # Another process finished: every commit since was indexed by
                    # this rulebook (every process on a database runs the same one).
                    return done
                await _reindex_chunk(store, chunk, rulebook, replica)
        done += len(chunk)
    await store.set_meta(INDEX_RULEBOOK_KEY, current)
    return done


async def _reindex_chunk(
    store: ReplicaStore, chunk: Sequence[str], rulebook: Rulebook, replica: str
) -> None:
    """Replace these records' rows and cards with what ``rulebook`` finds, in one write."""
    loaded = await store.load_many(chunk)
    records = [Record.from_update(rid, data, replica=replica) for rid, data in loaded.items()]
    await store.set_conflicts_many(
        {record.record_id: conflict_rows(record, rulebook) for record in records},
        persons={record.record_id: person_card(record) for record in records},
    )


async def read_checks(store: ReplicaStore, record_ids: Sequence[str]) -> dict[str, ServerCheck]:
    """What the index holds for each stored record: its state vector, conflict rows and
    person card, as a server sends them with pulled and live entries.

    The caller holds the replica's commit lock, so all three are of one commit. A
    record holding waiting items is left out (its state vector does not say its
    state), and so is one not stored.
    """
    ids = list(dict.fromkeys(record_ids))
    if not ids:
        return {}
    vectors = await store.state_vectors(ids)
    rows = await store.conflict_rows(ids)
    cards = await store.person_cards(ids)
    return {
        record_id: ServerCheck(found[0], rows.get(record_id, ()), cards.get(record_id))
        for record_id in ids
        if (found := vectors.get(record_id)) is not None and not found[1]
    }


async def read_wire_checks(
    store: ReplicaStore, record_ids: Sequence[str]
) -> dict[str, RecordCheck]:
    """What :func:`read_checks` reads, as a frame carries it: each card as stored
    (``PersonCard.to_bytes()``, not parsed and written again), each row as a
    :class:`~caresync.protocol.CopyConflict`. The caller holds the commit lock."""
    ids = list(dict.fromkeys(record_ids))
    if not ids:
        return {}
    # Asked at once: the store runs them back to back (the commit lock keeps them of
    # one commit), with no turn of the event loop between them.
    vectors, rows, cards = await asyncio.gather(
        store.state_vectors(ids), store.conflict_rows(ids), store.person_card_bytes(ids)
    )
    return {
        record_id: RecordCheck(
            CheckedState(record_id, found[0], cards.get(record_id)),
            tuple(
                CopyConflict(record_id, row.id, row.kind, row.subject, row.severity, row.payload)
                for row in rows.get(record_id, ())
            ),
        )
        for record_id in ids
        if (found := vectors.get(record_id)) is not None and not found[1]
    }
