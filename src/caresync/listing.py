"""A replica's open conflicts, as a person sees them: each record's, and across records.

The store's conflict index names the records with open conflicts of their own;
each is derived afresh from its record (every replica derives the same ids and
candidates). Two kinds come from the person index instead: a pair of records
that may be one person (or whose link decisions disagree) is a finding on both
records; and the records linked as one person are checked together, so an
allergy on one chart flags a prescription on the other. Both the laptop's
:class:`~caresync.replica.Replica` and a server's read-only reader list
conflicts through :class:`ConflictListing`.
"""

from __future__ import annotations

from caresync.conflicts import Conflict, Severity
from caresync.conflicts.duplicates import pair_conflicts
from caresync.exceptions import UnknownConflictError
from caresync.records import ACK_PREFIX, Record
from caresync.records.persons import PairState, PersonPair
from caresync.replication.pool import RecordPool
from caresync.storage import ReplicaStore

__all__ = ["MAX_LINKED_RECORDS", "ConflictListing"]

MAX_LINKED_RECORDS = 64
"""The most records followed from one through link decisions (one person's charts)."""

_SEVERITY_ORDER = {Severity.BLOCK: 0, Severity.FLAG: 1, Severity.INFO: 2}


class ConflictListing:
    """The open conflicts of the records in ``store``, derived with ``pool``'s rulebook."""

    def __init__(self, store: ReplicaStore, pool: RecordPool) -> None:
        self.store = store
        self.pool = pool

    async def linked(self, record_id: str) -> list[str]:
        """Every record linked to this one as the same person, directly or not; sorted."""
        seen = {record_id}
        todo = [record_id]
        while todo and len(seen) <= MAX_LINKED_RECORDS:
            current = todo.pop()
            for pair in await self.store.person_pairs(current, state=PairState.LINKED):
                for other in pair.record_ids:
                    if other not in seen:
                        seen.add(other)
                        todo.append(other)
        seen.discard(record_id)
        return sorted(seen)[:MAX_LINKED_RECORDS]

    async def linked_records(self, record_id: str) -> list[Record]:
        """The records linked to this one (:meth:`linked`), loaded."""
        return [await self.pool.get(other) for other in await self.linked(record_id)]

    async def of_record(self, record_id: str) -> list[Conflict]:
        """The open conflicts of one record: its own, across its links, and its pairs."""
        conflicts, _others = await self.of_record_and_neighbours(record_id)
        return conflicts

    async def of_record_and_neighbours(self, record_id: str) -> tuple[list[Conflict], list[str]]:
        """:meth:`of_record`, and the other records they were derived from (sorted): the
        linked ones and the other record of each of its pairs. Only a change of the record
        or of one of these can change its conflicts (a link decision is written to a
        record of its pair; a pair is a function of its two records), so a caller that
        holds something back on them knows what to watch."""
        record = await self.pool.get(record_id)
        linked_ids = await self.linked(record_id)
        linked = [await self.pool.get(other) for other in linked_ids]
        own = self.pool.rulebook.conflicts(record, linked=linked)
        pairs = await self.store.person_pairs(record_id)
        others = set(linked_ids)
        others.update(rid for pair in pairs for rid in pair.record_ids if rid != record_id)
        return _ordered([*own, *_pair_findings(pairs, record_id)]), sorted(others)

    async def all(self) -> list[Conflict]:
        """Every open conflict, by record id; blocks first within a record."""
        pairs = await self.store.person_pairs()
        linked_ids = set(_linked_ids(pairs))
        indexed = {row.record_id for row in await self.store.conflicts()}
        by_record: dict[str, list[Conflict]] = {}
        for record_id in sorted(indexed | linked_ids):
            record = await self.pool.get(record_id)
            linked = await self.linked_records(record_id) if record_id in linked_ids else []
            by_record[record_id] = self.pool.rulebook.conflicts(record, linked=linked)
        for pair in pairs:
            for conflict in pair_conflicts(pair):
                by_record.setdefault(conflict.record_id, []).append(conflict)
        return [c for rid in sorted(by_record) for c in _ordered(by_record[rid])]

    async def find(self, conflict_id: str) -> Conflict:
        """The open conflict with that id (UnknownConflictError if none is open)."""
        for row in await self.store.conflicts():
            if row.id == conflict_id:
                for conflict in await self.of_record(row.record_id):
                    if conflict.id == conflict_id:
                        return conflict
        # Not in the index: a pair's finding, or one across linked records (only records
        # in a linked pair can hold one: no other record is built).
        pairs = await self.store.person_pairs()
        for pair in pairs:
            for conflict in pair_conflicts(pair):
                if conflict.id == conflict_id:
                    return conflict
        for record_id in _linked_ids(pairs):
            for conflict in await self.of_record(record_id):
                if conflict.id == conflict_id:
                    return conflict
        raise UnknownConflictError(f"no open conflict {conflict_id} in this database")

    async def count(self) -> int:
        """How many conflicts are open (a pair's finding counts once on each record).

        Reads counts, not rows (the store keeps them as it writes): each pair not
        linked is one finding on each of its two records (:func:`pair_conflicts`);
        only linked charts are read, and checked together.
        """
        counts = await self.store.open_counts()  # one trip to the store: every sync asks
        linked_pairs = counts.linked_pairs
        found = counts.conflicts + 2 * (counts.pairs - linked_pairs)
        if not linked_pairs:
            return found
        pairs = await self.store.person_pairs(state=PairState.LINKED)
        for record_id in _linked_ids(pairs):  # linked charts: what the index cannot hold
            record = await self.pool.get(record_id)
            linked = await self.linked_records(record_id)
            found += len(self.pool.rulebook.conflicts(record, linked=linked))
            found -= await self.store.count_conflicts(record_id)
        return found

    async def contested(self, record_id: str) -> dict[str, Conflict]:
        """The fields of a record an open ``block`` conflict involves, and that conflict."""
        contested: dict[str, Conflict] = {}
        for conflict in await self.of_record(record_id):
            if conflict.severity is Severity.BLOCK:
                for path in conflict.paths:
                    if not path.startswith(ACK_PREFIX):
                        contested.setdefault(path, conflict)
        return contested


def _linked_ids(pairs: list[PersonPair]) -> list[str]:
    """The records of the linked pairs, sorted."""
    return sorted({rid for p in pairs if p.state is PairState.LINKED for rid in p.record_ids})


def _pair_findings(pairs: list[PersonPair], record_id: str) -> list[Conflict]:
    return [c for p in pairs for c in pair_conflicts(p) if c.record_id == record_id]


def _ordered(conflicts: list[Conflict]) -> list[Conflict]:
    return sorted(conflicts, key=lambda c: (_SEVERITY_ORDER[c.severity], c.subject, c.id))
