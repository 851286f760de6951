"""A decision on a finding across linked records is checked against them as stored.

``resolve`` and ``acknowledge`` read the records linked to the one they write before
taking the write lock; a commit to a linked record in between (an import, a sync)
left them deciding a finding the stored records no longer make: the other chart's
allergy was already entered in error, yet the prescription was stopped (and the
decision recorded) as if it stood. Each test holds a commit to the linked record
open while the decision waits for the lock, as it raced.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import pytest
from tests.test_pool_readers import HeldStore

from caresync import DEFAULT_RULEBOOK, Record
from caresync.exceptions import UnknownConflictError
from caresync.records.persons import DIFFERENT_PEOPLE, DUPLICATE_RULE, link_path
from caresync.replica import Replica
from caresync.storage import Identity


class WatchedLock(asyncio.Lock):
    """A lock that says when someone waits for it while it is held."""

    def __init__(self) -> None:
        super().__init__()
        self.contended = asyncio.Event()

    async def acquire(self) -> Literal[True]:
        if self.locked():
            self.contended.set()
        return await super().acquire()


async def one_person(criticality: str) -> tuple[Replica, HeldStore, WatchedLock, str, str, str]:
    """Two linked charts: a penicillin allergy on one, Augmentin prescribed on the other."""
    store = HeldStore()
    identity = Identity("replica-1", "laptop", None, None, None)
    await store.set_identity(identity)
    replica = Replica(store, identity, rulebook=DEFAULT_RULEBOOK)
    lock = WatchedLock()
    replica._write_lock = lock
    prescribed = await replica.create_record()
    await replica.add_entry(
        prescribed, "medications", {"drug": "Augmentin 625 mg", "status": "active"}, author="dr.a"
    )
    allergic = await replica.create_record()
    allergy = await replica.add_entry(
        allergic,
        "allergies",
        {"substance": "penicillin", "criticality": criticality, "status": "active"},
        author="dr.a",
    )
    await replica.link_records(prescribed, allergic, author="dr.a")
    return replica, store, lock, prescribed, allergic, allergy


async def import_held(
    replica: Replica, store: HeldStore, allergic: str, allergy: str
) -> asyncio.Task[None]:
    """An import marking the allergy entered in error, held inside the write lock."""
    stored = await store.load(allergic)
    assert stored is not None
    chart = Record.from_update(allergic, stored, replica=replica.replica_id)
    seen = chart.state_vector()
    chart.set_status("allergies", allergy, "entered-in-error", author="dr.c")
    store.many.on = True
    task = asyncio.create_task(replica.commit_records([(chart, chart.update_since(seen))]))
    await store.many.reached.wait()  # the import holds the write lock
    return task


async def test_a_block_decided_while_the_linked_allergy_is_entered_in_error_is_refused() -> None:
    replica, store, lock, prescribed, allergic, allergy = await one_person("high")
    [finding] = [
        c for c in await replica.conflicts(prescribed) if c.rule == "allergy-vs-prescription"
    ]
    assert finding.candidates[0].value == "stop Augmentin 625 mg"
    imported = await import_held(replica, store, allergic, allergy)
    decision = asyncio.create_task(replica.resolve(finding.id, choose=0, author="dr.b"))
    await lock.contended.wait()  # the decision has read the linked chart, and waits
    store.many.gate.set()
    await imported
    with pytest.raises(UnknownConflictError):
        await decision
    chart = await replica.record(prescribed)
    [medication] = chart.entry_ids("medications")
    assert chart.value(f"medications/{medication}/status") == "active"  # nothing written
    assert await replica.conflicts(prescribed) == []
    await replica.close()


async def test_a_flag_acknowledged_while_the_linked_allergy_is_entered_in_error_is_refused() -> (
    None
):
    replica, store, lock, prescribed, allergic, allergy = await one_person("low")
    [finding] = [
        c for c in await replica.conflicts(prescribed) if c.rule == "allergy-vs-prescription"
    ]
    imported = await import_held(replica, store, allergic, allergy)
    decision = asyncio.create_task(replica.acknowledge(finding.id, author="dr.b"))
    await lock.contended.wait()
    store.many.gate.set()
    await imported
    with pytest.raises(UnknownConflictError):
        await decision
    assert (await replica.record(prescribed)).history(f"_ack/{finding.id}") == []
    await replica.close()


async def test_a_pair_decided_while_another_decision_arrives_is_refused() -> None:
    # The possible duplicate was listed; another laptop's "different people" on both
    # records is imported while the resolution waits: it must not be written over unseen.
    store = HeldStore()
    identity = Identity("replica-1", "laptop", None, None, None)
    await store.set_identity(identity)
    replica = Replica(store, identity, rulebook=DEFAULT_RULEBOOK)
    lock = WatchedLock()
    replica._write_lock = lock
    charts = []
    for _ in range(2):
        rid = await replica.create_record()
        await replica.set(rid, "name", "Awa Diop", author="dr.a")
        await replica.set(rid, "birthDate", "1990-04-12", author="dr.a")
        charts.append(rid)
    first, second = charts
    [finding] = await replica.conflicts(first)
    assert finding.rule == DUPLICATE_RULE
    decided = []
    for rid, other in ((first, second), (second, first)):
        stored = await store.load(rid)
        assert stored is not None
        chart = Record.from_update(rid, stored, replica="laptop-2")
        seen = chart.state_vector()
        chart.set(link_path(other), DIFFERENT_PEOPLE, author="dr.c")
        decided.append((chart, chart.update_since(seen)))
    store.many.on = True
    imported = asyncio.create_task(replica.commit_records(decided))
    await store.many.reached.wait()  # the import holds the write lock
    decision = asyncio.create_task(replica.resolve(finding.id, choose=0, author="dr.b"))
    await lock.contended.wait()  # the resolution found the finding open, and waits
    store.many.gate.set()
    await imported
    with pytest.raises(UnknownConflictError):
        await decision
    assert await replica.linked_records(first) == []
    assert (await replica.record(first)).value(link_path(second)) == DIFFERENT_PEOPLE
    assert await replica.conflicts(first) == []
    await replica.close()
