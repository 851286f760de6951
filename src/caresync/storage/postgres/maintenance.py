"""Maintenance: compacting a record's log, and the full consistency check."""

from __future__ import annotations

from collections.abc import Iterable

from caresync.exceptions import CorruptDatabaseError, InvalidInputError, UnknownRecordError
from caresync.records.persons import pair_of
from caresync.storage._updates import (
    EMPTY_UPDATE,
    has_pending,
    merge,
    same_state_vector,
    state_vector_of,
    verify_compaction,
)
from caresync.storage.base import check_text
from caresync.storage.postgres._sql import Conn, pieces, scalar, state_of
from caresync.storage.postgres.core import PostgresCore
from caresync.storage.postgres.migrations import read_version
from caresync.storage.postgres.persons import key_hash, parse_card, parse_pair, read_cards
from caresync.storage.postgres.reading import snapshot
from caresync.storage.postgres.schema import SCHEMA_VERSION

__all__ = ["MaintenancePart"]

_MAX_PROBLEMS = 100

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


_LINK_CHECKS = (
    (
        "SELECT COUNT(*) FROM states WHERE record_id NOT IN (SELECT record_id FROM records)",
        "states rows belong to no stored record",
    ),
    (
        "SELECT COUNT(*) FROM conflicts WHERE record_id NOT IN (SELECT record_id FROM records)",
        "conflicts rows belong to no stored record",
    ),
    (
        "SELECT COUNT(*) FROM log WHERE rk NOT IN (SELECT rk FROM records)",
        "log rows belong to no stored record",
    ),
    (
        "SELECT COUNT(*) FROM feed WHERE rk NOT IN (SELECT rk FROM records)",
        "feed rows belong to no stored record",
    ),
    (
        "SELECT COUNT(*) FROM records WHERE feed_folded > (SELECT COALESCE(MAX(seq), 0) FROM feed)",
        "records are folded past the end of the feed",
    ),
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
        "SELECT COUNT(*) FROM person_pairs WHERE first NOT IN (SELECT record_id FROM person_cards)"
        " OR second NOT IN (SELECT record_id FROM person_cards)",
        "person pairs name a record with no stored card",
    ),
    (
        "SELECT COUNT(*) FROM person_cards c JOIN records r ON r.record_id = c.record_id"
        " WHERE c.organisation IS DISTINCT FROM COALESCE(r.organisation, '')",
        "person cards are filed under another organisation than their record's",
    ),
)
"""Queries that count broken links between the tables, and what they mean."""


class MaintenancePart(PostgresCore):
    """Compaction and the full consistency check."""

    async def compact(self, record_id: str) -> int:
        """Fold the record's log into its state, in one transaction; returns how many updates.

        Before committing, checks that the new state holds exactly what state
        and log held; otherwise raises CorruptDatabaseError and changes nothing.
        Feed rows are folded by moving the record's mark past them: the feed keeps them.
        """
        check_text(record_id, "record_id")

        def job(raw: Conn) -> int:
            def body() -> int:
                row = raw.execute(
                    "SELECT state_vector, rk, feed_folded FROM records WHERE record_id = %s",
                    (record_id,),
                ).fetchone()
                if row is None:
                    raise UnknownRecordError(f"no record {record_id} is stored here")
                vector, key, folded = bytes(row[0]), int(row[1]), int(row[2])
                state = state_of(raw, record_id)
                log = raw.execute(
                    "SELECT id, data FROM log WHERE rk = %s ORDER BY id", (key,)
                ).fetchall()
                fed = raw.execute(
                    "SELECT seq, data FROM feed WHERE rk = %s AND seq > %s ORDER BY seq",
                    (key, folded),
                ).fetchall()
                if not log and not fed:
                    return 0
                updates = [bytes(r[1]) for r in log] + [bytes(r[1]) for r in fed]
                compacted = merge([state, *updates], record_id=record_id)
                problem = verify_compaction(state, updates, compacted, vector)
                if problem is not None:
                    raise CorruptDatabaseError(
                        f"compaction of record {record_id} refused, nothing changed: {problem}"
                    )
                raw.execute(
                    "INSERT INTO states (record_id, state) VALUES (%s, %s)"
                    " ON CONFLICT (record_id) DO UPDATE SET state = excluded.state",
                    (record_id, compacted),
                )
                raw.execute(
                    "UPDATE records SET pending = %s, log_count = 0, log_bytes = 0,"
                    " feed_folded = %s WHERE record_id = %s",
                    (has_pending(compacted, vector), fed[-1][0] if fed else folded, record_id),
                )
                if log:
                    raw.execute("DELETE FROM log WHERE rk = %s AND id <= %s", (key, log[-1][0]))
                return len(updates)

            return self._write(raw, body, records=True)

        return await self._run(f"compacting record {record_id}", job)

    async def check(self) -> list[str]:
        """A full consistency check, in one snapshot; returns the problems (empty: sound).

        The format marks and version, rows without their record, every record's
        state and log (decodable, merging to the stored state vector), its log
        counters, and the person index. PostgreSQL checks its own pages.
        """
        return await self._run(
            "checking the database", lambda raw: snapshot(raw, lambda: self._check(raw))
        )

    def _check(self, raw: Conn) -> list[str]:
        problems: list[str] = []
        version = read_version(raw, self.where)
        if version != SCHEMA_VERSION:
            problems.append(f"schema version {version}, not {SCHEMA_VERSION}")
        for sql, problem in (*_LINK_CHECKS, *_HUB_CHECKS):
            count = scalar(raw, sql)
            if count:
                problems.append(f"{count} {problem}")
        problems.extend(_check_records(raw))
        problems.extend(_check_persons(raw))
        if len(problems) > _MAX_PROBLEMS:
            problems[_MAX_PROBLEMS:] = [f"... and {len(problems) - _MAX_PROBLEMS} more"]
        return problems


def _check_records(raw: Conn) -> Iterable[str]:
    records = raw.execute(
        "SELECT r.record_id, COALESCE(s.state, %s), r.state_vector, r.pending, r.log_count,"
        " r.log_bytes, r.rk, r.feed_folded FROM records r"
        " LEFT JOIN states s ON s.record_id = r.record_id",
        (EMPTY_UPDATE,),
    ).fetchall()
    for record_id, state, vector, pending, log_count, log_bytes, key, folded in records:
        log = pieces(raw, key, folded)
        if len(log) != log_count or sum(map(len, log)) != log_bytes:
            yield f"record {record_id}: its log counters do not match its log"
        try:
            merged = merge([bytes(state), *log], record_id=record_id)
            if not same_state_vector(state_vector_of(merged, record_id=record_id), bytes(vector)):
                yield f"record {record_id}: its stored state vector does not match its content"
            elif not pending and has_pending(merged, bytes(vector)):
                yield f"record {record_id}: holds waiting updates but is not marked so"
        except InvalidInputError as exc:
            yield f"record {record_id}: {exc}"


def _check_persons(raw: Conn) -> Iterable[str]:
    """Cards that parse and hold their keys; pairs that parse and are what their cards make."""
    for record_id, organisation, data in raw.execute(
        "SELECT record_id, organisation, card FROM person_cards"
    ).fetchall():
        try:
            card = parse_card(record_id, bytes(data))
        except CorruptDatabaseError as exc:
            yield str(exc)
            continue
        stored = {
            int(r[0])
            for r in raw.execute(
                "SELECT hash FROM person_keys"
                " WHERE rk = (SELECT rk FROM records WHERE record_id = %s)",
                (record_id,),
            )
        }
        if stored != {key_hash(organisation, key) for key in card.blocking_keys()}:
            yield f"record {record_id}: its stored person keys do not match its card"
    for first, second, state, data in raw.execute(
        "SELECT first, second, state, payload FROM person_pairs"
    ).fetchall():
        try:
            pair = parse_pair(first, second, state, bytes(data))
            cards = read_cards(raw, [first, second])
        except CorruptDatabaseError as exc:
            yield str(exc)
            continue
        if len(cards) == 2 and pair_of(cards[first], cards[second]) != pair:
            yield f"the person pair of records {first} and {second} is not what their cards make"
