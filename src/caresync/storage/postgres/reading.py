"""Reading records, conflict rows, the person index and the quarantine.

Reads of many records run in one REPEATABLE READ transaction: one snapshot,
however many queries, even while other processes write."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from psycopg import IsolationLevel

from caresync.records.persons import PairState, PersonCard, PersonPair
from caresync.storage._arguments import check_conflict_page, check_pair_query, check_record_page
from caresync.storage._copy import copy_page_of
from caresync.storage._updates import EMPTY_UPDATE, merge_stored
from caresync.storage.base import (
    ConflictRow,
    CopyPage,
    HeldState,
    QuarantinedUpdate,
    check_optional_text,
    check_record_ids,
    check_text,
)
from caresync.storage.postgres._sql import Conn, T, scalar
from caresync.storage.postgres.core import PostgresCore
from caresync.storage.postgres.persons import parse_pair, read_cards

__all__ = ["ReadingPart", "snapshot"]


def snapshot(raw: Conn, body: Callable[[], T]) -> T:
    """Run ``body`` in one read-only snapshot of the database."""
    previous = raw.isolation_level
    raw.isolation_level = IsolationLevel.REPEATABLE_READ
    try:
        with raw.transaction():
            return body()
    finally:
        raw.isolation_level = previous


def _conflict(r: Sequence[Any]) -> ConflictRow:
    return ConflictRow(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), bytes(r[5]))


class ReadingPart(PostgresCore):
    """Reading records, conflict rows, the person index and the quarantine."""

    async def load(self, record_id: str) -> bytes | None:
        """The record's state merged with its log, as one update; None if unknown."""
        check_text(record_id, "record_id")
        found = await self.load_many([record_id])
        return found.get(record_id)

    async def load_many(self, record_ids: Sequence[str]) -> dict[str, bytes]:
        """What :meth:`load` returns, for many records, as of one snapshot.

        Unknown ids are absent; the others are listed in the order asked.
        """
        ids = list(dict.fromkeys(check_record_ids(record_ids)))

        def body(raw: Conn) -> dict[str, bytes]:
            rows = raw.execute(
                "SELECT r.record_id, r.log_count, r.rk, r.feed_folded, s.state FROM records r"
                " LEFT JOIN states s ON s.record_id = r.record_id WHERE r.record_id = ANY(%s)",
                (ids,),
            ).fetchall()
            keys = [row[2] for row in rows if row[1]]
            pieces: dict[int, list[bytes]] = {}
            if keys:
                for key, data in raw.execute(
                    "SELECT rk, data FROM log WHERE rk = ANY(%s) ORDER BY rk, id", (keys,)
                ):
                    pieces.setdefault(key, []).append(bytes(data))
                for key, data in raw.execute(
                    "SELECT f.rk, f.data FROM feed f JOIN records r ON r.rk = f.rk"
                    " WHERE f.rk = ANY(%s) AND f.seq > r.feed_folded ORDER BY f.rk, f.seq",
                    (keys,),
                ):
                    pieces.setdefault(key, []).append(bytes(data))
            loaded: dict[str, bytes] = {}
            for record_id, log_count, key, _folded, state in rows:
                base = EMPTY_UPDATE if state is None else bytes(state)
                more = pieces.get(key) if log_count else None
                loaded[record_id] = merge_stored(base, more or (), record_id=record_id)
            return loaded

        found = await self._run(
            f"loading {len(ids)} records", lambda raw: snapshot(raw, lambda: body(raw))
        )
        return {record_id: found[record_id] for record_id in ids if record_id in found}

    async def state_vector(self, record_id: str) -> bytes | None:
        """The record's stored state vector (of state and log together), or None."""
        check_text(record_id, "record_id")

        def job(raw: Conn) -> bytes | None:
            row = raw.execute(
                "SELECT state_vector FROM records WHERE record_id = %s", (record_id,)
            ).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run(f"reading the state vector of {record_id}", job)

    async def state_vectors(self, record_ids: Sequence[str]) -> dict[str, tuple[bytes, bool]]:
        """Each stored record's state vector and whether it holds waiting items, as of
        one snapshot (unknown ids are absent)."""
        ids = list(dict.fromkeys(check_record_ids(record_ids)))

        def job(raw: Conn) -> dict[str, tuple[bytes, bool]]:
            rows = raw.execute(
                "SELECT record_id, state_vector, pending FROM records WHERE record_id = ANY(%s)",
                (ids,),
            ).fetchall()
            return {rid: (bytes(vector), bool(pending)) for rid, vector, pending in rows}

        return await self._run(f"reading {len(ids)} state vectors", job)

    async def held_states(self, record_ids: Sequence[str]) -> dict[str, HeldState]:
        """What :meth:`state_vectors` reads, with no card digest (this store keeps none
        beside the record: a server compares no card references)."""
        found = await self.state_vectors(record_ids)
        return {rid: HeldState(vector, pending, None) for rid, (vector, pending) in found.items()}

    async def has_record(self, record_id: str) -> bool:
        """True if the record is stored here."""
        check_text(record_id, "record_id")
        return await self._run(
            f"looking up {record_id}",
            lambda raw: (
                raw.execute("SELECT 1 FROM records WHERE record_id = %s", (record_id,)).fetchone()
                is not None
            ),
        )

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

    async def record_ids(
        self, organisation: str | None = None, *, after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Record ids in ascending order, after ``after``: pages for a first copy."""
        checked = check_record_page(organisation, after, limit)
        #: the order of the ids' bytes, as SQLite and Python sort them.
        sql = "SELECT record_id FROM records WHERE record_id > %s"
        args: list[object] = [after or ""]
        if organisation is not None:
            sql += " AND organisation = %s"
            args.append(organisation)
        sql += " ORDER BY record_id"
        if checked is not None:
            sql += " LIMIT %s"
            args.append(checked)
        return await self._run(
            "listing records", lambda raw: [r[0] for r in raw.execute(sql, args)]
        )

    async def count_records(self, organisation: str | None = None) -> int:
        """How many records are stored (in that organisation)."""
        check_optional_text(organisation, "organisation")
        if organisation is None:
            return await self._run(
                "counting records", lambda raw: scalar(raw, "SELECT COUNT(*) FROM records")
            )
        return await self._run(
            "counting records",
            lambda raw: scalar(
                raw, "SELECT COUNT(*) FROM records WHERE organisation = %s", organisation
            ),
        )

    async def record_organisations(self, record_ids: Sequence[str]) -> dict[str, str | None]:
        """The organisation of each stored record named (unknown ids are absent)."""
        ids = check_record_ids(record_ids)

        def job(raw: Conn) -> dict[str, str | None]:
            return {
                record_id: organisation
                for record_id, organisation in raw.execute(
                    "SELECT record_id, organisation FROM records WHERE record_id = ANY(%s)",
                    (ids,),
                )
            }

        return await self._run(f"reading the organisations of {len(ids)} records", job)

    async def log_length(self, record_id: str) -> int:
        """How many updates the record's log holds since its last compaction (0 if unknown)."""
        check_text(record_id, "record_id")
        return await self._run(
            f"reading the log of {record_id}",
            lambda raw: scalar(
                raw, "SELECT log_count FROM records WHERE record_id = %s", record_id
            ),
        )

    async def conflicts(
        self,
        record_id: str | None = None,
        *,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
    ) -> list[ConflictRow]:
        """Open conflict rows ordered by (record_id, id); ``after`` is the (record_id, id)
        of the last row of the previous page."""
        checked = check_conflict_page(record_id, limit)
        after_key = ("", "") if after is None else (str(after[0]), str(after[1]))
        columns = "id, record_id, kind, subject, severity, payload"
        if record_id is None:
            sql = (
                f"SELECT {columns} FROM conflicts WHERE (record_id, id)"
                " > (%s, %s) ORDER BY record_id, id"
            )
            args: list[object] = [*after_key]
        else:
            sql = f"SELECT {columns} FROM conflicts WHERE record_id = %s AND id > %s ORDER BY id"
            args = [record_id, after_key[1] if after_key[0] == record_id else ""]
        if checked is not None:
            sql += " LIMIT %s"
            args.append(checked)
        return await self._run(
            "listing conflicts", lambda raw: [_conflict(r) for r in raw.execute(sql, args)]
        )

    async def count_conflicts(self, record_id: str | None = None) -> int:
        """How many conflict rows are open (for one record, or in all)."""
        check_optional_text(record_id, "record_id")
        if record_id is None:
            return await self._run(
                "counting conflicts", lambda raw: scalar(raw, "SELECT COUNT(*) FROM conflicts")
            )
        return await self._run(
            "counting conflicts",
            lambda raw: scalar(
                raw, "SELECT COUNT(*) FROM conflicts WHERE record_id = %s", record_id
            ),
        )

    async def conflict_rows(self, record_ids: Sequence[str]) -> dict[str, tuple[ConflictRow, ...]]:
        """The stored conflict rows of many records, each record's ordered by id; a record
        without rows (or not stored here) is absent."""
        ids = list(dict.fromkeys(check_record_ids(record_ids)))

        def job(raw: Conn) -> dict[str, tuple[ConflictRow, ...]]:
            found: dict[str, list[ConflictRow]] = {}
            for r in raw.execute(
                "SELECT id, record_id, kind, subject, severity, payload FROM conflicts"
                " WHERE record_id = ANY(%s) ORDER BY record_id, id",
                (ids,),
            ):
                row = _conflict(r)
                found.setdefault(row.record_id, []).append(row)
            return {record_id: tuple(found[record_id]) for record_id in ids if record_id in found}

        return await self._run(f"reading the conflicts of {len(ids)} records", job)

    async def person_cards(self, record_ids: Sequence[str]) -> dict[str, PersonCard]:
        """The stored person cards of these records, in the order asked (none: absent)."""
        ids = list(dict.fromkeys(check_record_ids(record_ids)))

        def job(raw: Conn) -> dict[str, PersonCard]:
            found = read_cards(raw, ids)
            return {record_id: found[record_id] for record_id in ids if record_id in found}

        return await self._run(f"reading the person cards of {len(ids)} records", job)

    async def count_person_pairs(self, state: PairState | None = None) -> int:
        """How many pairs are stored (in one state; counted by the index on state)."""
        wanted = check_pair_query(None, state, None)
        if wanted is None:
            return await self._run(
                "counting person pairs",
                lambda raw: scalar(raw, "SELECT COUNT(*) FROM person_pairs"),
            )
        return await self._run(
            "counting person pairs",
            lambda raw: scalar(
                raw, "SELECT COUNT(*) FROM person_pairs WHERE state = %s", wanted.value
            ),
        )

    async def person_card_bytes(self, record_ids: Sequence[str]) -> dict[str, bytes]:
        """The stored person cards of these records as bytes (``PersonCard.to_bytes()``)."""
        cards = await self.person_cards(record_ids)
        return {rid: card.to_bytes() for rid, card in cards.items()}

    async def person_pairs_ending(self, record_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(first, second) of the stored pairs whose second record is one of these,
        ordered by (second, first): what a first copy sends with a batch."""
        ids = list(dict.fromkeys(check_record_ids(record_ids)))

        def job(raw: Conn) -> list[tuple[str, str]]:
            return [
                (first, second)
                for first, second in raw.execute(
                    "SELECT first, second FROM person_pairs WHERE second = ANY(%s)"
                    " ORDER BY second, first",
                    (ids,),
                )
            ]

        return await self._run(f"reading the person pairs of {len(ids)} records", job)

    async def person_pairs(
        self,
        record_id: str | None = None,
        *,
        state: PairState | None = None,
        organisation: str | None = None,
    ) -> list[PersonPair]:
        """Stored pairs (of one record, in one state, of one organisation), by record ids."""
        wanted = check_pair_query(record_id, state, organisation)
        where: list[str] = []
        args: list[object] = []
        if record_id is not None:
            where.append("(first = %s OR second = %s)")
            args += [record_id, record_id]
        if wanted is not None:
            where.append("state = %s")
            args.append(wanted.value)
        if organisation is not None:
            where.append("organisation = %s")
            args.append(organisation)
        sql = "SELECT first, second, state, payload FROM person_pairs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY first, second"

        def job(raw: Conn) -> list[PersonPair]:
            return [
                parse_pair(first, second, row_state, bytes(payload))
                for first, second, row_state, payload in raw.execute(sql, args)
            ]

        return await self._run("reading person pairs", job)

    async def quarantined(self, record_id: str | None = None) -> list[QuarantinedUpdate]:
        """Updates kept aside because they could not be merged, oldest first."""
        if record_id is not None:
            check_text(record_id, "record_id")
        sql = "SELECT record_id, data, reason, received_ms, id FROM quarantine"
        args: tuple[object, ...] = ()
        if record_id is not None:
            sql += " WHERE record_id = %s"
            args = (record_id,)

        def job(raw: Conn) -> list[QuarantinedUpdate]:
            return [
                QuarantinedUpdate(r[0], bytes(r[1]), r[2], r[3], r[4])
                for r in raw.execute(sql + " ORDER BY id", args)
            ]

        return await self._run("reading the quarantine", job)

    async def count_quarantined(self) -> int:
        """How many updates are kept aside."""
        return await self._run(
            "counting the quarantine", lambda raw: scalar(raw, "SELECT COUNT(*) FROM quarantine")
        )
