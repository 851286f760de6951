"""The audit trail in every store: appended with what it records, append-only, chained;
a server keeps other replicas' chains, resends once, a restored copy as a new line."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from store_helpers import Patient

from caresync import AuditError, InvalidInputError, InvalidUpdateError
from caresync.audit import GENESIS, AuditEvent, link, verify_chain
from caresync.audit.chain import AuditEntry, verify_trail
from caresync.storage import Identity, SQLiteStore, Store
from caresync.storage._audit import MAX_LINES

READ = AuditEvent("dr.a", "read", "rec-1")
WRITE = AuditEvent("dr.a", "write", "rec-1")


async def _own(store: Store, replica_id: str = "laptop-7") -> None:
    await store.set_identity(Identity(replica_id, "laptop"))


def _chain(
    replica_id: str, count: int, *, start: tuple[int, bytes] = (0, GENESIS), actor: str = "dr.a"
) -> list[AuditEntry]:
    entries = []
    seq, previous = start
    for _ in range(count):
        entry = link(
            AuditEvent(actor, "read", "rec-1"),
            replica_id=replica_id,
            seq=seq + 1,
            at_ms=1_000 + seq,
            prev_hash=previous,
        )
        entries.append(entry)
        seq, previous = entry.seq, entry.hash
    return entries


async def test_entries_are_numbered_and_chained_in_order(store: Store) -> None:
    await _own(store)
    first = await store.append_audit([READ])
    second = await store.append_audit([WRITE, READ])
    entries = await store.audit_entries()
    assert entries == first + second
    assert [e.seq for e in entries] == [1, 2, 3]
    assert entries[0].prev_hash == GENESIS
    assert entries[1].prev_hash == entries[0].hash
    assert verify_chain(entries, replica_id="laptop-7").ok
    assert await store.audit_tail() == (3, entries[-1].hash)
    assert await store.audit_entries(after_seq=2) == entries[2:]
    assert await store.audit_entries(record_id="nope") == []
    assert await store.audit_entries(limit=1) == entries[:1]


async def test_an_entry_commits_with_the_edit_it_records_or_not_at_all(store: Store) -> None:
    await _own(store)
    patient = Patient()
    await store.write_local(patient.id, patient.created, conflicts=[], audit=[WRITE])
    assert [e.action for e in await store.audit_entries()] == ["write"]
    with pytest.raises(InvalidUpdateError):
        await store.write_local(patient.id, b"not an update", conflicts=[], audit=[WRITE])
    assert len(await store.audit_entries()) == 1  # the refused edit left no entry
    bad_event = AuditEvent("x" * 1000, "write", patient.id)
    with pytest.raises(InvalidInputError):
        await store.write_local(patient.id, patient.edit(), conflicts=[], audit=[bad_event])
    assert await store.log_length(patient.id) == 1  # and an entry that cannot be made: no edit


async def test_without_an_identity_there_is_no_chain_to_append_to(store: Store) -> None:
    with pytest.raises(Exception, match="no replica yet"):
        await store.append_audit([READ])


async def test_a_server_keeps_a_replicas_chain_and_a_resend_once(store: Store) -> None:
    await store.set_identity(Identity("server-1", "server"))
    sent = _chain("laptop-7", 5)
    assert await store.receive_audit("laptop-7", sent[:3]) == 3
    assert await store.receive_audit("laptop-7", sent[1:]) == 5  # overlaps what is held
    assert await store.receive_audit("laptop-7", sent[:2]) == 2  # all held: nothing new
    held = await store.audit_entries(replica_id="laptop-7")
    assert held == sent
    assert await store.audit_tail("laptop-7") == (5, sent[-1].hash)
    await store.append_audit([AuditEvent("dr.a", "login")])  # the server's own chain
    assert verify_trail(await store.audit_entries()).ok


async def test_a_server_refuses_entries_that_continue_nothing_or_are_forged(
    store: Store,
) -> None:
    await store.set_identity(Identity("server-1", "server"))
    sent = _chain("laptop-7", 4)
    with pytest.raises(AuditError, match="send the entries before it"):
        await store.receive_audit("laptop-7", sent[2:])
    with pytest.raises(AuditError, match="only laptop-9's own"):
        await store.receive_audit("laptop-9", sent[:1])
    forged = replace(sent[0], actor="dr.b")  # its hash no longer covers it
    with pytest.raises(AuditError, match="does not match its content"):
        await store.receive_audit("laptop-7", [forged])
    with pytest.raises(AuditError, match="does not follow"):
        await store.receive_audit("laptop-7", [sent[0], sent[2]])
    assert await store.audit_entries() == []  # nothing kept of any of them
    # A time is the laptop's claim: one dated ahead (a clock set wrong) is kept as it came.
    future = link(READ, replica_id="laptop-7", seq=1, at_ms=2**60, prev_hash=GENESIS)
    assert await store.receive_audit("laptop-7", [future]) == 1


async def test_a_copy_restored_from_an_older_one_goes_on_as_a_new_line(store: Store) -> None:
    await store.set_identity(Identity("server-1", "server"))
    lost = _chain("laptop-7", 5)
    await store.receive_audit("laptop-7", lost)
    # The restored copy had entries 1-2; it wrote 3-4 of its own since.
    restored = _chain("laptop-7", 2, start=(2, lost[1].hash), actor="dr.b")
    assert await store.receive_audit("laptop-7", restored) == 4
    held = await store.audit_entries(replica_id="laptop-7")
    assert [(e.line, e.seq) for e in held] == [
        (0, 1),
        (0, 2),
        (0, 3),
        (0, 4),
        (0, 5),
        (1, 3),
        (1, 4),
    ]
    assert await store.audit_tail("laptop-7") == (4, restored[-1].hash)
    more = _chain("laptop-7", 1, start=(4, restored[-1].hash))
    await store.receive_audit("laptop-7", more)
    assert [e.line for e in await store.audit_entries(replica_id="laptop-7", after_seq=4)] == [0, 1]
    assert verify_trail(await store.audit_entries()).ok


async def test_the_sqlite_trail_cannot_be_changed_or_removed(tmp_path: Path) -> None:
    path = tmp_path / "laptop.db"
    async with SQLiteStore.open(path) as store:
        await _own(store)
        await store.append_audit([READ, WRITE])
    raw = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("UPDATE audit_trail SET actor = 'dr.b'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("DELETE FROM audit_trail")
    finally:
        raw.close()
    async with SQLiteStore.open(path) as store:
        assert [e.actor for e in await store.audit_entries()] == ["dr.a", "dr.a"]


async def test_a_line_from_the_start_verifies_and_lines_are_bounded(store: Store) -> None:
    await store.set_identity(Identity("server-1", "server"))
    await store.receive_audit("laptop-7", _chain("laptop-7", 2))
    # A copy taken before the laptop's first entry starts again from the beginning.
    for n in range(MAX_LINES - 1):
        await store.receive_audit("laptop-7", _chain("laptop-7", 1, actor=f"dr.{n}"))
    assert verify_trail(await store.audit_entries()).ok
    with pytest.raises(AuditError, match="no more are kept"):
        await store.receive_audit("laptop-7", _chain("laptop-7", 1, actor="dr.z"))
    lines = {e.line for e in await store.audit_entries(replica_id="laptop-7")}
    assert lines == set(range(MAX_LINES))
