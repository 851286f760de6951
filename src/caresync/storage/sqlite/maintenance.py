"""Maintenance: compacting a record's log, and the full consistency check."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from caresync.exceptions import CorruptDatabaseError, InvalidInputError, UnknownRecordError
from caresync.records.persons import PairState, pair_of
from caresync.storage._updates import (
    EMPTY_UPDATE,
    has_pending,
    merge,
    same_state_vector,
    state_vector_of,
    verify_compaction,
)
from caresync.storage.base import card_digest, check_text
from caresync.storage.cache import CachedRecord
from caresync.storage.migrations import read_marks
from caresync.storage.schema import (
    APPLICATION_ID,
    FORMAT_VALUE,
    HEAD_JOIN,
    HEAD_PENDING,
    HEAD_VECTOR,
    SCHEMA_VERSION,
)
from caresync.storage.sqlite._sql import (
    _pieces,
    _scalar,
    _sequence,
    _state,
)
from caresync.storage.sqlite.core import SQLiteCore
from caresync.storage.sqlite.persons import (
    _key_hash,
    _own_key,
    _parse_card,
    _parse_pair,
    _read_cards,
    _stored_keys,
)

__all__ = ["MaintenancePart"]


_MAX_PROBLEMS = 100


_KEY_CHECKS = (
    ("SELECT COUNT(*) FROM records WHERE rk IS NULL", "records have no key"),
    (
        "SELECT COUNT(*) FROM log WHERE rk NOT IN (SELECT rk FROM records WHERE rk IS NOT NULL)",
        "log rows belong to no stored record",
    ),
    (
        "SELECT COUNT(*) FROM feed WHERE rk NOT IN (SELECT rk FROM records WHERE rk IS NOT NULL)",
        "feed rows belong to no stored record",
    ),
    (
        "SELECT COUNT(*) FROM records WHERE feed_folded > (SELECT COALESCE(MAX(seq), 0) FROM feed)",
        "records are folded past the end of the feed",
    ),
)
"""Queries that count broken links between records, log and feed, and what they mean."""


_HUB_CHECKS = (
    (
        "SELECT COUNT(*) FROM hub_outbox WHERE change > (SELECT n FROM hub_mark)",
        "hub outbox rows carry a mark not given out yet",
    ),
    (
        "SELECT COUNT(*) FROM hub_removed WHERE change > (SELECT n FROM hub_mark)",
        "hub tombstones carry a mark not given out yet",
    ),
    (
        "SELECT COUNT(*) FROM hub_removed d JOIN hub_outbox o"
        " ON o.record_id = d.record_id AND o.organisation = d.organisation",
        "patients are both listed and removed in one organisation's hub outbox",
    ),
)
"""Queries that count hub marks out of step (a laptop would skip or repeat a change)."""


_PERSON_CHECKS = (
    (
        "SELECT COUNT(*) FROM person_cards WHERE record_id NOT IN (SELECT record_id FROM records)",
        "person cards belong to no stored record",
    ),
    (
        "SELECT COUNT(*) FROM person_keys WHERE rk NOT IN"
        " (SELECT r.rk FROM records r JOIN person_cards c ON c.record_id = r.record_id)",
        "person keys belong to no stored card",
    ),
    (
        "SELECT COUNT(*) FROM person_keys_copied WHERE rk NOT IN"
        " (SELECT r.rk FROM records r JOIN person_cards c ON c.record_id = r.record_id)",
        "person keys set aside by a first copy belong to no stored card",
    ),
    (
        "SELECT COUNT(*) FROM person_pairs WHERE first NOT IN (SELECT record_id FROM person_cards)"
        " OR second NOT IN (SELECT record_id FROM person_cards)",
        "person pairs name a record with no stored card",
    ),
    (
        "SELECT COUNT(*) FROM person_cards c JOIN records r ON r.record_id = c.record_id"
        " WHERE c.organisation IS NOT COALESCE(r.organisation, '')",
        "person cards are filed under another organisation than their record's",
    ),
    (
        "SELECT COUNT(*) FROM records WHERE card_digest IS NOT NULL"
        " AND record_id NOT IN (SELECT record_id FROM person_cards)",
        "records carry the digest of a person card that is not stored",
    ),
    # Keys filed under another organisation than their card's differ in hash:
    # the check of each card's keys below finds them.
)
"""Queries that count broken links of the person index, and what they mean."""


def _check_persons(raw: sqlite3.Connection) -> Iterable[str]:
    """The person index: rows naming records, cards that parse and hold their keys,
    pairs that parse and are what their two cards make."""
    for sql, problem in _PERSON_CHECKS:
        count = _scalar(raw, sql)
        if count:
            yield f"{count} {problem}"
    # Key rows a first copy set aside (schema 17) are the index as much as person_keys'.
    set_aside: dict[int, set[int]] = {}
    for value, rk in raw.execute("SELECT hash, rk FROM person_keys_copied"):
        set_aside.setdefault(int(rk), set()).add(int(value))
    for record_id, organisation, data, digest, rk in raw.execute(
        "SELECT c.record_id, c.organisation, c.card, r.card_digest, r.rk FROM person_cards c"
        " LEFT JOIN records r ON r.record_id = c.record_id"
    ):
        if digest is not None and bytes(digest) != card_digest(bytes(data)):
            # A pull would keep this card against a server's reference to another one.
            yield f"record {record_id}: the card digest on its row is not its stored card's"
        try:
            card = _parse_card(record_id, bytes(data))
        except CorruptDatabaseError as exc:
            yield str(exc)
            continue
        stored = {
            int(r[0])
            for r in raw.execute(
                "SELECT hash FROM person_keys"
                " WHERE rk = (SELECT rk FROM records WHERE record_id = ?)",
                (record_id,),
            )
        }
        if rk is not None:
            stored |= set_aside.get(int(rk), set())
        # Its own key may still have a row of before schema version 16 (harmless).
        stored.discard(_key_hash(organisation, _own_key(record_id)))
        expected = {
            _key_hash(organisation, key) for key in _stored_keys(record_id, card.blocking_keys())
        }
        if stored != expected:
            yield f"record {record_id}: its stored person keys do not match its card"
    for first, second, state, data in raw.execute(
        "SELECT first, second, state, payload FROM person_pairs"
    ):
        try:
            pair = _parse_pair(first, second, state, bytes(data))
            cards = _read_cards(raw, [first, second])
        except CorruptDatabaseError as exc:
            yield str(exc)
            continue
        if len(cards) == 2 and pair_of(cards[first], cards[second]) != pair:
            yield f"the person pair of records {first} and {second} is not what their cards make"


class MaintenancePart(SQLiteCore):
    """Compaction and the full consistency check."""

    async def compact(self, record_id: str) -> int:
        """Fold the record's log into its state, in one transaction; returns how many updates.

        Before committing, checks that the new state holds exactly what state
        and log held (same state vector as stored, same decoded content);
        otherwise raises CorruptDatabaseError and changes nothing. History is
        never dropped (merging keeps every revision) and the outbox is not touched.
        """
        check_text(record_id, "record_id")

        def job(raw: sqlite3.Connection) -> int:
            def body() -> tuple[int, CachedRecord | None]:
                row = raw.execute(
                    f"SELECT r.organisation, {HEAD_VECTOR}, r.rk, r.feed_folded"
                    f" FROM records r{HEAD_JOIN} WHERE r.record_id = ?",
                    (record_id,),
                ).fetchone()
                if row is None:
                    raise UnknownRecordError(f"no record {record_id} is stored here")
                organisation, vector, key, folded = row[0], bytes(row[1]), row[2], row[3]
                state = _state(raw, record_id)
                log = raw.execute(
                    "SELECT id, data FROM log WHERE rk = ? ORDER BY id", (key,)
                ).fetchall()
                fed = raw.execute(
                    "SELECT seq, data FROM feed WHERE rk = ? AND seq > ? ORDER BY seq",
                    (key, folded),
                ).fetchall()
                if not log and not fed:
                    return 0, None
                updates = [bytes(r[1]) for r in log] + [bytes(r[1]) for r in fed]
                compacted = merge([state, *updates], record_id=record_id)
                problem = verify_compaction(state, updates, compacted, vector)
                if problem is not None:
                    raise CorruptDatabaseError(
                        f"compaction of record {record_id} refused, nothing changed: {problem}"
                    )
                pending = has_pending(compacted, vector)
                raw.execute(
                    "INSERT OR REPLACE INTO states (record_id, state) VALUES (?, ?)",
                    (record_id, compacted),
                )
                # Feed rows are folded by moving the mark past them: the feed keeps them.
                # The record's row is its state again: its log rows go (head_at 0).
                raw.execute(
                    "UPDATE records SET state_vector = ?, pending = ?, log_count = 0,"
                    " log_bytes = 0, head_at = 0, feed_folded = ? WHERE record_id = ?",
                    (vector, pending, fed[-1][0] if fed else folded, record_id),
                )
                if log:
                    raw.execute("DELETE FROM log WHERE rk = ? AND id <= ?", (key, log[-1][0]))
                return len(updates), CachedRecord(vector, organisation, pending, compacted, key=key)

            try:
                folded_count, cached = self._write(raw, body)
            except BaseException:
                self.cache.discard(record_id)
                raise
            if cached is not None:
                self.cache.put(record_id, cached)
            return folded_count

        return await self._run(f"compacting record {record_id}", job)

    async def check(self) -> list[str]:
        """A full consistency check; returns the problems found (empty when sound).

        Reads the whole database: SQLite's own ``quick_check``, the format
        marks, rows without their record, every record's state and log
        (decodable, and merging to the stored state vector), log counters,
        and outbox and feed numbers.
        """
        return await self._run("checking the database", self._check)

    def _check(self, raw: sqlite3.Connection) -> list[str]:
        problems: list[str] = []
        raw.execute("BEGIN")
        try:
            problems.extend(
                f"sqlite: {r[0]}" for r in raw.execute("PRAGMA quick_check") if r[0] != "ok"
            )
            if problems:
                return problems
            marks = read_marks(raw)
            if marks.application_id != APPLICATION_ID or marks.format != FORMAT_VALUE:
                problems.append("the caresync marks (application id, format) are missing")
            if marks.user_version != SCHEMA_VERSION:
                problems.append(f"schema version {marks.user_version}, not {SCHEMA_VERSION}")
            for table in ("states", "outbox", "conflicts"):
                orphans = _scalar(
                    raw,
                    f"SELECT COUNT(*) FROM {table} WHERE record_id NOT IN"
                    " (SELECT record_id FROM records)",
                )
                if orphans:
                    problems.append(f"{orphans} {table} rows belong to no stored record")
            if marks.user_version == SCHEMA_VERSION:
                problems.extend(_count_problems(raw))
                for sql, problem in _HUB_CHECKS:
                    count = _scalar(raw, sql)
                    if count:
                        problems.append(f"{count} {problem}")
            for sql, problem in _KEY_CHECKS:
                count = _scalar(raw, sql)
                if count:
                    problems.append(f"{count} {problem}")
            if _scalar(raw, "SELECT COALESCE(MAX(seq), 0) FROM outbox") > _sequence(raw, "outbox"):
                problems.append("outbox numbers run ahead of their sequence")
            current = marks.user_version == SCHEMA_VERSION  # what was set aside: version 22
            for seq, record_id, data in raw.execute(
                "SELECT seq, record_id, data FROM outbox"
                + (" UNION ALL SELECT seq, record_id, data FROM outbox_aside" if current else "")
            ):
                try:
                    merge([bytes(data)], record_id=record_id)
                except InvalidInputError as exc:
                    problems.append(f"outbox row {seq}: {exc}")
            unlisted = current and _scalar(
                raw,
                "SELECT COUNT(*) FROM outbox_aside"
                " WHERE record_id NOT IN (SELECT record_id FROM set_aside)",
            )
            if unlisted:  # set aside, and never tried again: a record nobody is told of
                problems.append(f"{unlisted} outbox rows set aside belong to no record set aside")
            problems.extend(self._check_records(raw))
            problems.extend(_check_persons(raw))
        finally:
            raw.execute("ROLLBACK")
        if len(problems) > _MAX_PROBLEMS:
            problems[_MAX_PROBLEMS:] = [f"... and {len(problems) - _MAX_PROBLEMS} more"]
        return problems

    def _check_records(self, raw: sqlite3.Connection) -> Iterable[str]:
        records = raw.execute(
            f"SELECT r.record_id, COALESCE(s.state, ?), {HEAD_VECTOR}, {HEAD_PENDING},"
            " r.log_count, r.log_bytes, r.rk, r.feed_folded, r.head_at FROM records r"
            f"{HEAD_JOIN} LEFT JOIN states s ON s.record_id = r.record_id",
            (EMPTY_UPDATE,),
        )
        for record_id, state, vector, pending, log_count, log_bytes, key, folded, head in records:
            log = _pieces(raw, key, folded)
            # The row counts its log rows up to head_at and its unfolded feed rows; each
            # log row after head_at carries the record's state (schema version 18).
            newer = raw.execute(
                "SELECT LENGTH(data), state_vector IS NULL OR pending IS NULL FROM log"
                " WHERE rk = ? AND id > ?",
                (key, head),
            ).fetchall()
            if any(bare for _, bare in newer):
                yield f"record {record_id}: a log row after its record's row carries no state"
            # Every write leaves head_at 0 or one of the record's log rows; one past them
            # would hide the record's later log rows from every reader.
            if (
                head
                and not raw.execute(
                    "SELECT 1 FROM log WHERE id = ? AND rk = ?", (head, key)
                ).fetchone()
            ):
                yield f"record {record_id}: its head_at names no log row of the record"
            counted = len(log) - len(newer)
            if counted != log_count or sum(map(len, log)) - sum(n for n, _ in newer) != log_bytes:
                yield f"record {record_id}: its log counters do not match its log"
            try:
                merged = merge([bytes(state), *log], record_id=record_id)
                if not same_state_vector(state_vector_of(merged, record_id=record_id), vector):
                    yield f"record {record_id}: its stored state vector does not match its content"
                elif not pending and has_pending(merged, vector):
                    yield f"record {record_id}: holds waiting updates but is not marked so"
            except InvalidInputError as exc:
                yield f"record {record_id}: {exc}"
            cached = self.cache.get(record_id)
            if cached is not None and not same_state_vector(cached.state_vector, vector):
                yield f"record {record_id}: the cache disagrees with the database"


def _count_problems(raw: sqlite3.Connection) -> list[str]:
    """Counts the triggers keep (schema version 12) that differ from the rows counted."""
    kept = {str(name): int(n) for name, n in raw.execute("SELECT name, n FROM counts")}
    actual = {"conflicts": _scalar(raw, "SELECT COUNT(*) FROM conflicts")}
    for state in PairState:
        actual[f"pairs:{state.value}"] = _scalar(
            raw, "SELECT COUNT(*) FROM person_pairs WHERE state = ?", state.value
        )
    return [
        f"the kept count of {name} is {kept.get(name)}, but {n} rows are stored"
        for name, n in actual.items()
        if kept.get(name) != n
    ]
