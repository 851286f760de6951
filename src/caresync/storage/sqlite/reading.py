"""Reading records, conflict rows, the person index and the quarantine."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from caresync.records.persons import PairState, PersonCard, PersonPair
from caresync.storage._arguments import check_conflict_page, check_pair_query, check_record_page
from caresync.storage._updates import EMPTY_UPDATE, merge_stored
from caresync.storage.base import (
    ConflictRow,
    CopyPage,
    HeldState,
    OpenCounts,
    QuarantinedUpdate,
    check_count,
    check_optional_text,
    check_record_ids,
    check_text,
)
from caresync.storage.cache import CachedRecord
from caresync.storage.schema import HEAD_JOIN, HEAD_PENDING, HEAD_VECTOR
from caresync.storage.sqlite._sql import (
    _HEAD_HAS_PIECES,
    _chunks,
    _full,
    _marks,
    _record_row,
    _scalar,
)
from caresync.storage.sqlite.core import BRIEF_ROWS, SQLiteCore
from caresync.storage.sqlite.persons import _parse_pair, _read_cards

__all__ = ["ReadingPart"]

_tuple_new: Any = tuple.__new__
"""``tuple.__new__``: a named tuple of its fields in one C call (not its Python __new__)."""


class ReadingPart(SQLiteCore):
    """Reading records, conflict rows, the person index and the quarantine."""

    async def load(self, record_id: str) -> bytes | None:
        """The record's state merged with its log, as one update; None if unknown."""
        check_text(record_id, "record_id")
        cached = self.cache.get(record_id)
        if cached is not None and cached.merged is not None:
            return cached.merged

        def job(raw: sqlite3.Connection) -> bytes | None:
            current = self._current(raw, record_id)
            if current is None:
                return None
            merged = _full(raw, record_id)
            self.cache.put(record_id, current._replace(merged=merged))
            return merged

        return await self._run(f"loading record {record_id}", job)

    async def load_many(self, record_ids: Sequence[str]) -> dict[str, bytes]:
        """What :meth:`load` returns, for many records in one database job.

        Unknown ids are absent from the dict; it lists the others in the order
        asked. Records whose merged bytes are cached cost nothing; the rest are
        read in one read transaction (so all of them as of one commit), a few
        hundred ids per query, and merged on the database thread.
        """
        ids = list(dict.fromkeys(check_record_ids(record_ids)))
        found: dict[str, bytes] = {}
        missing: list[str] = []
        # One acquisition of the cache's lock for the batch (a first copy asks for
        # thousands of records a batch, most of them not cached).
        cached = self.cache.get_many(ids)
        for record_id in ids:
            hit = cached.get(record_id)
            if hit is not None and hit.merged is not None:
                found[record_id] = hit.merged
            else:
                missing.append(record_id)
        if missing or self._conn is None:
            found.update(
                await self._run(
                    f"loading {len(missing)} records", lambda raw: self._load_many(raw, missing)
                )
            )
        return {record_id: found[record_id] for record_id in ids if record_id in found}

    def _load_many(self, raw: sqlite3.Connection, ids: list[str]) -> dict[str, bytes]:
        # (record_id, state_vector, organisation, pending, has pieces, rk, state)
        rows: list[tuple[str, bytes, str | None, int, int, int, bytes | None]] = []
        pieces: dict[int, list[bytes]] = {}
        raw.execute("BEGIN")  # one snapshot for every chunk, even beside another process
        try:
            for chunk in _chunks(ids):
                first = len(rows)
                rows.extend(
                    raw.execute(
                        f"SELECT r.record_id, {HEAD_VECTOR}, r.organisation, {HEAD_PENDING},"
                        f" {_HEAD_HAS_PIECES}, r.rk, s.state FROM records r{HEAD_JOIN}"
                        " LEFT JOIN states s ON s.record_id = r.record_id"
                        f" WHERE r.record_id IN ({_marks(len(chunk))})",
                        chunk,
                    )
                )
                keys = [row[5] for row in rows[first:] if row[4]]
                if keys:
                    _read_pieces(raw, keys, pieces)
        finally:
            raw.execute("COMMIT")
        loaded: dict[str, bytes] = {}
        entries: list[tuple[str, CachedRecord]] = []
        for record_id, vector, organisation, pending, has_pieces, key, state in rows:
            more = pieces.get(key) if has_pieces and key is not None else None
            if state is None and more is not None and len(more) == 1:
                merged = more[0]  # never compacted, one update: the record as it is
            else:
                stored = EMPTY_UPDATE if state is None else bytes(state)
                merged = merge_stored(stored, more or (), record_id=record_id)
            loaded[record_id] = merged
            known = CachedRecord(bytes(vector), organisation, bool(pending), merged, None, key)
            entries.append((record_id, known))
        self.cache.put_many(entries)  # under one acquisition of the cache's lock
        return loaded

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
        """One page of a first copy in one read transaction (see ``ServerStore``).

        The record cache is neither read nor filled: a copy reads each record once,
        and filling the cache with them would evict what live replicas use. Ids read
        here are the store's own, so they are not checked again.
        """
        check_record_page(organisation, after, None)
        lim = check_count(limit, "limit")
        return await self._run(
            f"reading a copy page of {limit} records",
            lambda raw: self._copy_page(raw, organisation, after, lim, rows, persons, pairs),
        )

    def _copy_page(
        self,
        raw: sqlite3.Connection,
        organisation: str | None,
        after: str | None,
        limit: int,
        rows: bool,
        persons: bool,
        pairs: bool = False,
    ) -> CopyPage:
        head = (
            f"SELECT r.record_id, {_HEAD_HAS_PIECES}, r.rk, s.state FROM records r{HEAD_JOIN}"
            " LEFT JOIN states s ON s.record_id = r.record_id WHERE "
        )
        if organisation is None:
            sql = head + "r.record_id > ? ORDER BY r.record_id LIMIT ?"
            args: tuple[object, ...] = (after or "", limit + 1)
        else:
            sql = head + "r.organisation = ? AND r.record_id > ? ORDER BY r.record_id LIMIT ?"
            args = (organisation, after or "", limit + 1)
        pieces: dict[int, list[bytes]] = {}
        found_rows: dict[str, list[tuple[str, str, str, str, str, bytes]]] = {}
        cards: dict[str, bytes] = {}
        found_pairs: list[tuple[str, str]] = []
        raw.execute("BEGIN")  # one snapshot for the page, even beside another process
        try:
            page = raw.execute(sql, args).fetchall()
            more = len(page) > limit  # one id more than asked: another page follows
            del page[limit:]
            keys = [row[2] for row in page if row[1]]
            for chunk in _chunks(keys):
                _read_pieces(raw, list(chunk), pieces)
            ids = [row[0] for row in page]
            for chunk in _chunks(ids) if rows else ():
                for r in raw.execute(
                    "SELECT record_id, id, kind, subject, severity, payload FROM conflicts"
                    f" WHERE record_id IN ({_marks(len(chunk))}) ORDER BY record_id, id",
                    chunk,
                ):
                    row = (r[0], r[1], r[2], r[3], r[4], bytes(r[5]))
                    got_rows = found_rows.get(r[0])
                    if got_rows is None:
                        found_rows[r[0]] = [row]
                    else:
                        got_rows.append(row)
            for chunk in _chunks(ids) if persons else ():
                for record_id, data in raw.execute(
                    "SELECT record_id, card FROM person_cards"
                    f" WHERE record_id IN ({_marks(len(chunk))})",
                    chunk,
                ):
                    cards[record_id] = bytes(data)
            for chunk in _chunks(ids) if pairs else ():
                # By the index on second: a record's pairs with records before it.
                found_pairs.extend(
                    raw.execute(
                        "SELECT first, second FROM person_pairs"
                        f" WHERE second IN ({_marks(len(chunk))})",
                        chunk,
                    )
                )
        finally:
            raw.execute("COMMIT")
        found_pairs.sort(key=_by_second)
        records: list[tuple[str, bytes]] = []
        for record_id, has_pieces, key, state in page:
            more_parts = pieces.get(key) if has_pieces else None
            if state is None and more_parts is not None and len(more_parts) == 1:
                merged = more_parts[0]  # never compacted, one update: the record as it is
            else:
                stored = EMPTY_UPDATE if state is None else bytes(state)
                merged = merge_stored(stored, more_parts or (), record_id=record_id)
            records.append((record_id, merged))
        return CopyPage(records, more, found_rows, cards, found_pairs)

    async def state_vector(self, record_id: str) -> bytes | None:
        """The record's stored state vector (of state and log together), or None."""
        check_text(record_id, "record_id")
        cached = self.cache.get(record_id)
        if cached is not None:
            return cached.state_vector

        def job(raw: sqlite3.Connection) -> bytes | None:
            row = raw.execute(
                f"SELECT {HEAD_VECTOR} FROM records r{HEAD_JOIN} WHERE r.record_id = ?",
                (record_id,),
            ).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run(f"reading the state vector of {record_id}", job)

    async def state_vectors(self, record_ids: Sequence[str]) -> dict[str, tuple[bytes, bool]]:
        """Each stored record's state vector and whether it holds waiting items: the
        cache, then one job for the rest (unknown ids are absent).

        What the job reads is kept in the record cache, as a load keeps it: a pull
        reads the state vectors of the records it is about to write, and the write
        then finds them there instead of reading the same rows again."""
        ids = list(dict.fromkeys(check_record_ids(record_ids)))
        found = self.cache.vectors_of(ids)
        if len(found) == len(ids):
            return found
        missing = [record_id for record_id in ids if record_id not in found]

        def job(raw: sqlite3.Connection) -> dict[str, tuple[bytes, bool]]:
            read: dict[str, tuple[bytes, bool]] = {}
            # Each entry as CachedRecord's six fields (see RecordCache.put_fields_many).
            entries: list[tuple[str, tuple[object, ...]]] = []
            raw.execute("BEGIN")  # one snapshot for every chunk
            try:
                for chunk in _chunks(missing):
                    for record_id, vector, organisation, pending, key in raw.execute(
                        f"SELECT r.record_id, {HEAD_VECTOR}, r.organisation, {HEAD_PENDING},"
                        f" r.rk FROM records r{HEAD_JOIN}"
                        f" WHERE r.record_id IN ({_marks(len(chunk))})",
                        chunk,
                    ):
                        vector, held = bytes(vector), bool(pending)
                        read[record_id] = (vector, held)
                        entries.append((record_id, (vector, organisation, held, None, None, key)))
            finally:
                raw.execute("COMMIT")
            # On the database thread, as committed: no write can come between (the cache
            # holds only committed state; a write replaces these entries after its commit).
            self.cache.put_fields_many(entries)
            return read

        found.update(await self._run(f"reading {len(missing)} state vectors", job))
        return found

    async def held_states(self, record_ids: Sequence[str]) -> dict[str, HeldState]:
        """Each stored record's state vector, whether it holds waiting items, and its
        card's digest (schema version 15; None where none is kept: a record with no
        card, or one whose card was stored before), in one job; unknown ids are absent.

        Every id is read from the table (a cached entry holds no digest), in one read
        transaction; what was not cached is then kept in the record cache, as
        :meth:`state_vectors` keeps it, for the write that follows."""
        ids = list(dict.fromkeys(check_record_ids(record_ids)))
        if not ids:
            return {}
        cached = self.cache.get_many(ids)

        def job(raw: sqlite3.Connection) -> dict[str, HeldState]:
            read: dict[str, HeldState] = {}
            # Each entry as CachedRecord's six fields (see RecordCache.put_fields_many).
            entries: list[tuple[str, tuple[object, ...]]] = []
            append = entries.append
            raw.execute("BEGIN")  # one snapshot for every chunk
            try:
                for chunk in _chunks(ids):
                    for record_id, vector, organisation, pending, key, digest in raw.execute(
                        f"SELECT r.record_id, {HEAD_VECTOR}, r.organisation, {HEAD_PENDING},"
                        f" r.rk, r.card_digest FROM records r{HEAD_JOIN}"
                        f" WHERE r.record_id IN ({_marks(len(chunk))})",
                        chunk,
                    ):
                        # HeldState(...) built in one C call (a pull reads a row per
                        # record), and the cache's entry as CachedRecord's fields.
                        vector, held = bytes(vector), bool(pending)
                        read[record_id] = _tuple_new(
                            HeldState, (vector, held, None if digest is None else bytes(digest))
                        )
                        if record_id not in cached:
                            append((record_id, (vector, organisation, held, None, None, key)))
            finally:
                raw.execute("COMMIT")
            # On the database thread, as committed (see state_vectors).
            self.cache.put_fields_many(entries)
            return read

        return await self._run(f"reading {len(ids)} held states", job, brief=len(ids) <= BRIEF_ROWS)

    async def has_record(self, record_id: str) -> bool:
        """True if the record is stored here."""
        check_text(record_id, "record_id")
        if self.cache.get(record_id) is not None:
            return True
        return await self._run(
            f"looking up {record_id}",
            lambda raw: _record_row(raw, record_id) is not None,
            brief=True,
        )

    async def record_ids(
        self, organisation: str | None = None, *, after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Record ids in ascending order, after ``after``: pages for a first copy."""
        checked = check_record_page(organisation, after, limit)
        lim = -1 if checked is None else checked
        if organisation is None:
            sql = "SELECT record_id FROM records WHERE record_id > ? ORDER BY record_id LIMIT ?"
            args: tuple[object, ...] = (after or "", lim)
        else:
            sql = (
                "SELECT record_id FROM records WHERE organisation = ? AND record_id > ?"
                " ORDER BY record_id LIMIT ?"
            )
            args = (organisation, after or "", lim)
        return await self._run(
            "listing records", lambda raw: [r[0] for r in raw.execute(sql, args)]
        )

    async def count_records(self, organisation: str | None = None) -> int:
        """How many records are stored (in that organisation)."""
        check_optional_text(organisation, "organisation")
        if organisation is None:
            return await self._run(
                "counting records", lambda raw: _scalar(raw, "SELECT COUNT(*) FROM records")
            )
        return await self._run(
            "counting records",
            lambda raw: _scalar(
                raw, "SELECT COUNT(*) FROM records WHERE organisation = ?", organisation
            ),
        )

    async def record_organisations(self, record_ids: Sequence[str]) -> dict[str, str | None]:
        """The organisation of each stored record named (unknown ids are absent)."""
        ids = check_record_ids(record_ids)

        def job(raw: sqlite3.Connection) -> dict[str, str | None]:
            found: dict[str, str | None] = {}
            for chunk in _chunks(ids):
                for record_id, organisation in raw.execute(
                    "SELECT record_id, organisation FROM records"
                    f" WHERE record_id IN ({_marks(len(chunk))})",
                    chunk,
                ):
                    found[record_id] = organisation
            return found

        return await self._run(f"reading the organisations of {len(ids)} records", job)

    async def log_length(self, record_id: str) -> int:
        """How many updates the record's log holds since its last compaction (0 if unknown)."""
        check_text(record_id, "record_id")
        return await self._run(
            f"reading the log of {record_id}",
            lambda raw: _scalar(
                raw,
                # Its row's count, and its log rows newer than that count.
                "SELECT r.log_count + (SELECT COUNT(*) FROM log l"
                " WHERE l.rk = r.rk AND l.id > r.head_at) FROM records r WHERE r.record_id = ?",
                record_id,
            ),
        )

    async def conflicts(
        self,
        record_id: str | None = None,
        *,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
    ) -> list[ConflictRow]:
        """Open conflict rows ordered by (record_id, id), read from the conflict index.

        ``after`` is the (record_id, id) of the last row of the previous page.
        """
        checked = check_conflict_page(record_id, limit)
        lim = -1 if checked is None else checked
        after_key = ("", "") if after is None else (str(after[0]), str(after[1]))
        columns = "id, record_id, kind, subject, severity, payload"
        if record_id is None:
            sql = (
                f"SELECT {columns} FROM conflicts WHERE (record_id, id) > (?, ?)"
                " ORDER BY record_id, id LIMIT ?"
            )
            args: tuple[object, ...] = (*after_key, lim)
        else:
            sql = (
                f"SELECT {columns} FROM conflicts WHERE record_id = ? AND id > ?"
                " ORDER BY id LIMIT ?"
            )
            args = (record_id, after_key[1] if after_key[0] == record_id else "", lim)

        def job(raw: sqlite3.Connection) -> list[ConflictRow]:
            return [
                ConflictRow(r[0], r[1], r[2], r[3], r[4], bytes(r[5]))
                for r in raw.execute(sql, args)
            ]

        return await self._run("listing conflicts", job)

    async def count_conflicts(self, record_id: str | None = None) -> int:
        """How many conflict rows are open (for one record, or in all)."""
        check_optional_text(record_id, "record_id")
        if record_id is None:
            # Kept by triggers in the transaction of each write (schema version 12).
            return await self._run(
                "counting conflicts",
                lambda raw: _scalar(raw, "SELECT n FROM counts WHERE name = 'conflicts'"),
            )
        return await self._run(
            "counting conflicts",
            lambda raw: _scalar(
                raw, "SELECT COUNT(*) FROM conflicts WHERE record_id = ?", record_id
            ),
        )

    async def conflict_rows(self, record_ids: Sequence[str]) -> dict[str, tuple[ConflictRow, ...]]:
        """The stored conflict rows of many records, in one database job.

        Each record's rows are ordered by id. A record without rows (or not
        stored here) is absent: read the result with ``rows.get(record_id, ())``.
        """
        ids = list(dict.fromkeys(check_record_ids(record_ids)))

        def job(raw: sqlite3.Connection) -> dict[str, tuple[ConflictRow, ...]]:
            found: dict[str, list[ConflictRow]] = {}
            raw.execute("BEGIN")  # one snapshot for every chunk
            try:
                for chunk in _chunks(ids):
                    for r in raw.execute(
                        "SELECT id, record_id, kind, subject, severity, payload FROM conflicts"
                        f" WHERE record_id IN ({_marks(len(chunk))}) ORDER BY record_id, id",
                        chunk,
                    ):
                        row = ConflictRow(r[0], r[1], r[2], r[3], r[4], bytes(r[5]))
                        found.setdefault(row.record_id, []).append(row)
            finally:
                raw.execute("COMMIT")
            return {record_id: tuple(found[record_id]) for record_id in ids if record_id in found}

        return await self._run(
            f"reading the conflicts of {len(ids)} records", job, brief=len(ids) <= BRIEF_ROWS
        )

    async def person_cards(self, record_ids: Sequence[str]) -> dict[str, PersonCard]:
        """The stored person cards of these records, in the order asked (none: absent).

        CorruptDatabaseError, naming the record, for a stored card that does not parse.
        """
        ids = list(dict.fromkeys(check_record_ids(record_ids)))

        def job(raw: sqlite3.Connection) -> dict[str, PersonCard]:
            raw.execute("BEGIN")  # one snapshot for every chunk
            try:
                found = _read_cards(raw, ids)
            finally:
                raw.execute("COMMIT")
            return {record_id: found[record_id] for record_id in ids if record_id in found}

        return await self._run(f"reading the person cards of {len(ids)} records", job)

    async def count_person_pairs(self, state: PairState | None = None) -> int:
        """How many pairs are stored (in one state): read from the counts that triggers
        keep with every write (schema version 12), not by reading the pairs."""
        wanted = check_pair_query(None, state, None)
        sql = "SELECT SUM(n) FROM counts WHERE name LIKE 'pairs:%'"
        args: tuple[str, ...] = ()
        if wanted is not None:
            sql, args = "SELECT n FROM counts WHERE name = ?", (f"pairs:{wanted.value}",)
        return await self._run("counting person pairs", lambda raw: _scalar(raw, sql, *args))

    async def open_counts(self) -> OpenCounts:
        """The open conflict rows, the stored pairs and the linked pairs, from the counts
        the triggers keep (schema version 12), in one job."""

        def job(raw: sqlite3.Connection) -> OpenCounts:
            counts = dict(
                raw.execute(
                    "SELECT name, n FROM counts WHERE name = 'conflicts' OR name LIKE 'pairs:%'"
                ).fetchall()
            )
            return OpenCounts(
                int(counts.get("conflicts") or 0),
                sum(int(n or 0) for name, n in counts.items() if name.startswith("pairs:")),
                int(counts.get(f"pairs:{PairState.LINKED.value}") or 0),
            )

        return await self._run("counting conflicts and person pairs", job, brief=True)

    async def person_card_bytes(self, record_ids: Sequence[str]) -> dict[str, bytes]:
        """The stored person cards of these records as stored (``PersonCard.to_bytes()``),
        not parsed, in the order asked (none: absent)."""
        ids = list(dict.fromkeys(check_record_ids(record_ids)))

        def job(raw: sqlite3.Connection) -> dict[str, bytes]:
            found: dict[str, bytes] = {}
            raw.execute("BEGIN")  # one snapshot for every chunk
            try:
                for chunk in _chunks(ids):
                    for record_id, data in raw.execute(
                        "SELECT record_id, card FROM person_cards"
                        f" WHERE record_id IN ({_marks(len(chunk))})",
                        chunk,
                    ):
                        found[record_id] = bytes(data)
            finally:
                raw.execute("COMMIT")
            return {record_id: found[record_id] for record_id in ids if record_id in found}

        return await self._run(f"reading the person cards of {len(ids)} records", job)

    async def person_pairs_ending(self, record_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(first, second) of the stored pairs whose second record is one of these,
        ordered by (second, first): what a first copy sends with a batch."""
        ids = list(dict.fromkeys(check_record_ids(record_ids)))

        def job(raw: sqlite3.Connection) -> list[tuple[str, str]]:
            found: list[tuple[str, str]] = []
            for chunk in _chunks(ids):
                found.extend(
                    raw.execute(
                        "SELECT first, second FROM person_pairs"
                        f" WHERE second IN ({_marks(len(chunk))})",
                        chunk,
                    )
                )
            return sorted(found, key=_by_second)

        return await self._run(f"reading the person pairs of {len(ids)} records", job)

    async def person_pairs(
        self,
        record_id: str | None = None,
        *,
        state: PairState | None = None,
        organisation: str | None = None,
    ) -> list[PersonPair]:
        """Stored pairs (of one record, in one state, of one organisation), by record ids.

        CorruptDatabaseError, naming the two records, for a stored pair that
        does not parse or does not match its row.
        """
        wanted = check_pair_query(record_id, state, organisation)
        where: list[str] = []
        args: list[object] = []
        if wanted is not None:
            where.append("state = ?")
            args.append(wanted.value)
        if organisation is not None:
            where.append("organisation = ?")
            args.append(organisation)
        columns = "SELECT first, second, state, payload FROM person_pairs"
        if record_id is None:
            sql = columns + (f" WHERE {' AND '.join(where)}" if where else "")
        else:
            # Either side: the primary key finds it as first, an index as second.
            more = "".join(f" AND {w}" for w in where)
            sql = f"{columns} WHERE first = ?{more} UNION ALL {columns} WHERE second = ?{more}"
            args = [record_id, *args, record_id, *args]
        sql += " ORDER BY first, second"

        def job(raw: sqlite3.Connection) -> list[PersonPair]:
            return [
                _parse_pair(first, second, row_state, bytes(payload))
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
            sql += " WHERE record_id = ?"
            args = (record_id,)

        def job(raw: sqlite3.Connection) -> list[QuarantinedUpdate]:
            return [
                QuarantinedUpdate(r[0], bytes(r[1]), r[2], r[3], r[4])
                for r in raw.execute(sql + " ORDER BY id", args)
            ]

        return await self._run("reading the quarantine", job)

    async def count_quarantined(self) -> int:
        """How many updates are kept aside."""
        return await self._run(
            "counting the quarantine", lambda raw: _scalar(raw, "SELECT COUNT(*) FROM quarantine")
        )


def _read_pieces(raw: sqlite3.Connection, keys: list[int], pieces: dict[int, list[bytes]]) -> None:
    """Add to ``pieces`` the log rows, then the unfolded feed rows in feed order, of the
    records with keys ``keys`` (at most one chunk of them)."""
    marks = _marks(len(keys))
    for key, data in raw.execute(
        f"SELECT rk, data FROM log WHERE rk IN ({marks}) ORDER BY rk, id", keys
    ):
        held = pieces.get(key)
        if held is None:
            pieces[key] = [bytes(data)]
        else:
            held.append(bytes(data))
    # Unfolded feed rows, by record; sorted here, which spares SQLite a sort.
    fed: dict[int, list[tuple[int, bytes]]] = {}
    for key, seq, data in raw.execute(
        "SELECT f.rk, f.seq, f.data FROM feed f JOIN records r ON r.rk = f.rk"
        f" WHERE f.rk IN ({marks}) AND f.seq > r.feed_folded",
        keys,
    ):
        got = fed.get(key)
        if got is None:
            fed[key] = [(seq, bytes(data))]
        else:
            got.append((seq, bytes(data)))
    for key, rows_of_key in fed.items():
        if len(rows_of_key) > 1:
            rows_of_key.sort()
        held = pieces.get(key)
        if held is None:
            pieces[key] = [data for _, data in rows_of_key]
        else:
            held.extend(data for _, data in rows_of_key)


def _by_second(pair: tuple[str, str]) -> tuple[str, str]:
    """A pair's place in a copy batch: by its second record, then its first."""
    return pair[1], pair[0]
