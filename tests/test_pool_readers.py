"""Readers take no lock: a record they load while a writer works is never left stale.

Reproduced first end to end (tests/e2e/test_live_mode.py, under load): a live laptop
read a record between the two live updates that made it; the second, checked by the
server, was stored without building the record, and the copy the reader had loaded
stayed in the pool without it, so every later read showed the record without its
name. Each test here holds one read at the point where it raced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from caresync import DEFAULT_RULEBOOK, Record
from caresync.records.persons import person_card
from caresync.replica import Replica
from caresync.replication.absorb import absorb
from caresync.replication.checked import ServerCheck
from caresync.replication.pool import RecordPool, conflict_rows
from caresync.storage import HeldState, Identity
from caresync.storage.memory import MemoryStore


class Hold:
    """One kind of store call held: it has its answer (``reached``) and waits for ``gate``."""

    def __init__(self) -> None:
        self.on = False
        self.reached = asyncio.Event()
        self.gate = asyncio.Event()

    async def __call__(self) -> None:
        if self.on:
            self.on = False  # the next call of the kind goes through
            self.reached.set()
            await self.gate.wait()


class HeldStore(MemoryStore):
    """A memory store whose chosen calls wait for a gate once they have their answer."""

    def __init__(self) -> None:
        super().__init__()
        self.states, self.loads, self.writes = Hold(), Hold(), Hold()
        self.many = Hold()

    async def held_states(self, record_ids: Sequence[str]) -> dict[str, HeldState]:
        found = await super().held_states(record_ids)
        await self.states()
        return found

    async def load(self, record_id: str) -> bytes | None:
        found = await super().load(record_id)
        await self.loads()
        return found

    async def load_many(self, record_ids: Sequence[str]) -> dict[str, bytes]:
        found = await super().load_many(record_ids)
        await self.many()
        return found

    async def write_local(self, *args: Any, **kwargs: Any) -> int:
        await self.writes()
        return await super().write_local(*args, **kwargs)


def named_twice() -> tuple[Record, bytes, bytes]:
    """A record's first update (a name), then a second edit (a birth date)."""
    record = Record.create(replica="laptop-a")
    record.set("name", "Ann", author="dr.a")
    first = record.update_since()
    seen = record.state_vector()
    record.set("birthDate", "1990-01-01", author="dr.a")
    return record, first, record.update_since(seen)


def check_of(record: Record) -> ServerCheck:
    return ServerCheck(
        record.state_vector(), conflict_rows(record, DEFAULT_RULEBOOK), person_card(record)
    )


async def stored_first(store: MemoryStore, first: bytes, record_id: str) -> RecordPool:
    pool = RecordPool(store, replica="here", rulebook=DEFAULT_RULEBOOK)
    await absorb(pool, store, [(record_id, first)], checkpoint=None, organisation="clinic-a")
    pool.forget(record_id)  # not loaded: the next batch may be stored unbuilt
    return pool


async def test_a_record_a_reader_loads_while_a_checked_batch_reads_is_read_anew_after() -> None:
    store = HeldStore()
    record, first, second = named_twice()
    rid = record.record_id
    pool = await stored_first(store, first, rid)
    store.states.on = True
    batch = asyncio.create_task(
        absorb(
            pool,
            store,
            [(rid, second)],
            checkpoint=("sync.checkpoint", "2"),
            organisation="clinic-a",
            checked={rid: check_of(record)},
        )
    )
    await store.states.reached.wait()  # the batch reads what is held; a reader comes now
    assert (await pool.get(rid)).value("birthDate") is None
    store.states.gate.set()
    absorbed = await batch
    assert absorbed.taken[rid].record is None  # stored unbuilt, as the server checked it
    assert (await pool.get(rid)).value("birthDate") == "1990-01-01"


async def test_a_readers_load_that_a_commit_overtakes_is_not_kept() -> None:
    store = HeldStore()
    record, first, second = named_twice()
    rid = record.record_id
    pool = await stored_first(store, first, rid)
    store.loads.on = True
    reader = asyncio.create_task(pool.get(rid))
    await store.loads.reached.wait()  # the reader has the record as it stood before
    await absorb(pool, store, [(rid, second)], checkpoint=None, organisation="clinic-a")
    store.loads.gate.set()
    assert (await reader).value("birthDate") is None  # what it read, as it stood then
    assert (await pool.get(rid)).value("birthDate") == "1990-01-01"


async def test_an_edit_stays_loaded_when_a_readers_load_lands_while_it_commits() -> None:
    store = HeldStore()
    identity = Identity("replica-1", "laptop", None, None, None)
    await store.set_identity(identity)
    replica = Replica(store, identity, rulebook=DEFAULT_RULEBOOK)
    rid = await replica.create_record()
    await replica.set(rid, "name", "Ann", author="dr.a")
    replica._pool.forget(rid)  # the race starts with nothing loaded
    store.loads.on = True
    reader = asyncio.create_task(replica.record(rid))
    await store.loads.reached.wait()  # a reader's load, as the record stood before
    store.writes.on = True
    edit = asyncio.create_task(replica.set(rid, "birthDate", "1990-01-01", author="dr.a"))
    await store.writes.reached.wait()  # the editor loaded the record itself, and edited it
    store.loads.gate.set()
    assert (await reader).value("birthDate") is None  # its read, kept as the loaded copy
    store.writes.gate.set()
    await edit
    assert (await replica.record(rid)).value("birthDate") == "1990-01-01"
    assert (await replica.record(rid)).value("name") == "Ann"
    await replica.close()


async def test_a_batch_record_a_reader_loads_after_its_eviction_is_read_anew_after() -> None:
    # A batch may hold more records than the pool: a record it built is evicted by the
    # next before the commit, and a reader that loads it while the batch waits for the
    # store (here: reading a record whose update does not merge) reads it from before.
    store = HeldStore()
    record, first, second = named_twice()
    other, other_first, other_second = named_twice()
    rid, bad = record.record_id, Record.create(replica="laptop-a").record_id
    pool = await stored_first(store, first, rid)
    stored = [(other.record_id, other_first)]
    await absorb(pool, store, stored, checkpoint=None, organisation="clinic-a")
    pool = RecordPool(store, replica="here", rulebook=DEFAULT_RULEBOOK, max_records=1)
    store.loads.on = True  # the batch's one load from the store: the record that fails
    batch = asyncio.create_task(
        absorb(
            pool,
            store,
            [(rid, second), (other.record_id, other_second), (bad, b"not an update")],
            checkpoint=("sync.checkpoint", "2"),
            organisation="clinic-a",
        )
    )
    await store.loads.reached.wait()  # the first record was built, then evicted
    assert pool.peek(rid) is None
    assert (await pool.get(rid)).value("birthDate") is None  # a reader's, from before
    store.loads.gate.set()
    absorbed = await batch
    assert absorbed.taken[rid].record is not None  # built, and committed
    assert [q.record_id for q in absorbed.quarantined] == [bad]
    assert (await pool.get(rid)).value("birthDate") == "1990-01-01"
