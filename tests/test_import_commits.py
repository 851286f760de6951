"""An import plans its records from the store before it takes the write lock: what a
sync commits meanwhile is in the conflict rows and cards it commits.

Reproduced: a FHIR import read a record, a live update of the same field committed
while it planned, and the import stored the record's rows without that update's
disagreement; `conflicts()` and `count_conflicts()` read the index and hid it.
"""

from __future__ import annotations

import asyncio

import pytest
from tests.test_pool_readers import HeldStore

from caresync import DEFAULT_RULEBOOK, Record
from caresync.fhir import bundle_bytes, export_record, import_fhir
from caresync.replica import Replica
from caresync.replication.pool import conflict_rows
from caresync.storage import Identity


async def test_an_update_committed_while_an_import_plans_is_in_its_conflict_rows() -> None:
    pytest.importorskip("fhir.resources")
    store = HeldStore()
    identity = Identity("replica-1", "laptop", None, None, None)
    await store.set_identity(identity)
    replica = Replica(store, identity, rulebook=DEFAULT_RULEBOOK)
    rid = await replica.create_record()
    await replica.set(rid, "name", "Awa Ba", author="dr.a")
    await replica.set(rid, "birthDate", "1950-01-01", author="dr.a")
    bundle = bundle_bytes(await export_record(replica, rid)).replace(b"1950-01-01", b"1950-02-02")
    # Another laptop's concurrent birth date, as a sync brings it.
    theirs = Record.from_update(rid, await store.load(rid) or b"", replica="laptop-b")
    seen = theirs.state_vector()
    theirs.set("birthDate", "1951-01-01", author="dr.b")
    store.many.on = True
    imported = asyncio.create_task(import_fhir(replica, bundle, author="dr.a"))
    await store.many.reached.wait()  # the import has read the record; a sync commits now
    await replica._host.take_in([(rid, theirs.update_since(seen))], ("sync.checkpoint", "1"))
    store.many.gate.set()
    await imported
    record = Record.from_update(rid, await store.load(rid) or b"", replica="check")
    assert record.get("birthDate").in_conflict  # the import's and the sync's values
    expected = conflict_rows(record, DEFAULT_RULEBOOK)
    assert [r.id for r in expected]  # a conflict the index must hold
    assert sorted(r.id for r in await store.conflicts()) == sorted(r.id for r in expected)
    assert await replica.count_conflicts() == len(await replica.conflicts(rid))
    await replica.close()
