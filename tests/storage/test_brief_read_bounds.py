"""Brief reads: what a brief read costs the event loop.

A brief read runs on the event loop's thread, so it must read a bounded number of rows
whatever the database holds. These tests fill the tables a brief read could walk
(20,000 audit entries of one replica, 5,000 accounts of one organisation) and count
the SQLite virtual-machine steps run on the event loop's thread during each read (a
progress handler called at every step, which records the thread it runs on): a count
that does not depend on time, only on the rows the read walks.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.storage.brief_steps import counted

from caresync.storage import SQLiteStore
from caresync.storage.base import SessionRow
from caresync.storage.sqlite.logins import BRIEF_ACCOUNTS

ENTRIES = 20_000
ACCOUNTS = 5_000
STEPS_BOUND = 20_000  # a read by key runs some hundreds; a walk of 5,000+ rows, 100,000+


def _filled(path: Path) -> None:
    """A server's database with one replica's long audit chain and a large organisation."""
    raw = sqlite3.connect(path)
    try:
        raw.executemany(
            "INSERT INTO audit_trail (replica_id, line, seq, at_ms, actor, action, record_id,"
            " detail, prev_hash, hash) VALUES (?, 0, ?, 0, 'dr.a', 'read', ?, NULL, ?, ?)",
            (
                ("laptop-1", seq, f"rec-{seq % 100}", b"p" * 32, seq.to_bytes(32, "big"))
                for seq in range(1, ENTRIES + 1)
            ),
        )
        raw.executemany(
            "INSERT INTO users (organisation, username, password_hash, created_ms,"
            " display_name) VALUES (?, ?, 'h', 0, ?)",
            (("clinic-big", f"user-{n:05d}", f"Dr {n}") for n in range(ACCOUNTS)),
        )
        raw.executemany(
            "INSERT INTO users (organisation, username, password_hash, created_ms,"
            " display_name) VALUES ('clinic-small', ?, 'h', 0, NULL)",
            ((f"user-{n}",) for n in range(3)),
        )
        raw.commit()
    finally:
        raw.close()


async def _store(tmp_path: Path) -> SQLiteStore:
    path = tmp_path / "server.db"
    store = await SQLiteStore.open(path)  # created, then filled beside it
    await store.close()
    _filled(path)
    return await SQLiteStore.open(path)


async def test_an_audit_read_of_one_entry_deep_in_a_long_chain_does_not_walk_it_on_the_loop(
    tmp_path: Path,
) -> None:
    """A laptop's login asks for the one entry after the server's last (limit 1, deep in
    its own chain): a seek per chain line, not a walk of the chain from its start (which
    it was), so it may be a brief read."""
    store = await _store(tmp_path)
    try:
        with counted(store) as steps:
            [entry] = await store.audit_entries(
                replica_id="laptop-1", after_seq=ENTRIES - 1, limit=1
            )
        assert entry.seq == ENTRIES
        assert 0 < steps.on_loop < STEPS_BOUND  # on the event loop's thread, walking nothing
        assert steps.elsewhere == 0
    finally:
        await store.close()


async def test_a_login_of_a_large_organisation_reads_its_accounts_off_the_loop(
    tmp_path: Path,
) -> None:
    store = await _store(tmp_path)
    try:
        for organisation, token in (("clinic-small", "a"), ("clinic-big", "b")):
            await store.add_session(
                SessionRow(token * 64, organisation, "user-00001", "laptop-1", 0, 10**13)
            )
        # A small organisation's login reads run here, on the loop, in few steps.
        with counted(store) as small:
            first = await store.read_resume("a" * 64, "laptop-1")
        assert first.accounts is not None
        assert len(first.accounts) == 3
        assert 0 < small.on_loop < STEPS_BOUND  # brief (its audit tail too)
        assert small.elsewhere == 0
        # A large organisation: its accounts are read whole on the connection's thread
        # (the first time found here in a bounded read, then known).
        for _ in range(2):
            with counted(store) as big:
                large = await store.read_resume("b" * 64, "laptop-1")
            assert large.accounts is not None
            assert len(large.accounts) == ACCOUNTS > BRIEF_ACCOUNTS
            assert big.on_loop < STEPS_BOUND
            assert big.elsewhere > 0
        # The small one's still run here, as before.
        with counted(store) as again:
            assert await store.read_resume("a" * 64, "laptop-1") == first
        assert 0 < again.on_loop < STEPS_BOUND
        assert again.elsewhere == 0
    finally:
        await store.close()


async def test_the_other_brief_reads_stay_bounded_beside_large_tables(tmp_path: Path) -> None:
    """The audit chain and the organisation are large: the reads marked brief read
    a few rows by key all the same (a replica's row, a setting, the feed's head, the
    counts, the hub mark, a record's held state, the accounts generation), on the
    loop."""
    store = await _store(tmp_path)
    try:
        with counted(store) as steps:
            assert await store.get_replica("laptop-1") is None
            assert await store.replica_secret_hash("laptop-1") is None
            assert await store.get_meta("nothing") is None
            assert await store.feed_head() == 0
            await store.open_counts()
            assert await store.conflict_rows(["rec-1"]) == {}
            assert (await store.hub_changes("clinic-big", 2**62, 1)).mark == 0
            assert await store.held_states(["rec-1"]) == {}
            assert not await store.has_record("rec-1")
            assert await store.accounts_generation() >= 0
        assert steps.elsewhere == 0  # every one ran here
        assert steps.on_loop < STEPS_BOUND
    finally:
        await store.close()
