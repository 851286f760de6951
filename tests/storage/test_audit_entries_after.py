"""The audit entries of one replica after a number: the same entries as one query over
the chain gives, found by a seek per line, not a walk of the whole chain.

A laptop asks for the entries after the last one the server holds at every sync
(``Session._audit_start``, ``Session.push_audit``): with one query, SQLite walked every
entry of the replica up to that number (24 ms at 200,000 entries, twice a sync).
"""

from __future__ import annotations

import random
import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from caresync.storage._audit import sql_entries
from caresync.storage.schema import _V10

ENTRIES = 20_000


def _trail() -> sqlite3.Connection:
    raw = sqlite3.connect(":memory:", isolation_level=None)
    for statement in _V10:
        if "TRIGGER" not in statement:
            raw.execute(statement)
    return raw


def _insert(raw: sqlite3.Connection, rows: list[tuple[str, int, int, str | None]]) -> None:
    raw.executemany(
        "INSERT INTO audit_trail (replica_id, line, seq, at_ms, actor, action, record_id,"
        " detail, prev_hash, hash) VALUES (?, ?, ?, 0, 'dr.a', 'read', ?, NULL, x'00', x'01')",
        rows,
    )


def _one_query(
    raw: sqlite3.Connection, replica_id: str, record_id: str | None, after: int, limit: int | None
) -> list[tuple[object, ...]]:
    """What the single query (the way before) returns, in chain order."""
    sql = "SELECT replica_id, line, seq FROM audit_trail WHERE seq > ? AND replica_id = ?"
    args: list[object] = [after, replica_id]
    if record_id is not None:
        sql += " AND record_id = ?"
        args.append(record_id)
    sql += " ORDER BY replica_id, line, seq"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return list(raw.execute(sql, args))


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    lines=st.integers(1, 4),
    after=st.integers(1, 40),
    limit=st.none() | st.integers(1, 30),
    by_record=st.booleans(),
)
def test_the_entries_after_a_number_are_those_of_one_query_over_the_chain(
    seed: int, lines: int, after: int, limit: int | None, by_record: bool
) -> None:
    """Lines restart their numbers (a copy restored from an older one), another replica's
    entries lie between: whatever the chain, the same entries in the same order."""
    rng = random.Random(seed)
    raw = _trail()
    rows: list[tuple[str, int, int, str | None]] = []
    for replica in ("laptop-a", "laptop-b"):
        for line in range(lines):
            start = rng.randint(1, 20)
            for seq in range(start, start + rng.randint(0, 30)):
                rows.append((replica, line, seq, rng.choice([None, "rec-1", "rec-2"])))
    _insert(raw, rows)
    record_id = "rec-1" if by_record else None
    got = sql_entries(raw, replica_id="laptop-a", record_id=record_id, after_seq=after, limit=limit)
    assert [(e.replica_id, e.line, e.seq) for e in got] == _one_query(
        raw, "laptop-a", record_id, after, limit
    )


def test_the_entries_after_a_late_number_cost_no_walk_of_the_chain() -> None:
    """SQLite's steps for the entries after the 19,990th of 20,000: a few hundred, as for
    a chain of 100 (the walk of the chain took more than 100,000)."""

    def steps(entries: int) -> int:
        raw = _trail()
        _insert(raw, [("laptop-a", 0, seq, None) for seq in range(1, entries + 1)])
        count = [0]

        def step() -> int:
            count[0] += 1
            return 0

        raw.set_progress_handler(step, 1)
        got = sql_entries(
            raw, replica_id="laptop-a", record_id=None, after_seq=entries - 10, limit=500
        )
        raw.set_progress_handler(None, 1)
        assert [e.seq for e in got] == list(range(entries - 9, entries + 1))
        return count[0]

    small, large = steps(100), steps(ENTRIES)
    assert large < 2_000
    assert large < 2 * small + 200
