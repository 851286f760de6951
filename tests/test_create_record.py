"""``create_record`` with an id makes a new record: an id stored here already is refused.

Reproduced: the creation of a record with an id this replica held was merged into it,
and the new, empty record was kept loaded in its place: every read showed it empty, an
edit built on it, and the record's conflict rows and person card were replaced by the
empty record's (its open conflict gone from the index).
"""

from __future__ import annotations

import pytest

from caresync import DEFAULT_RULEBOOK, Record
from caresync.exceptions import InvalidInputError
from caresync.replica import Replica
from caresync.storage import Identity
from caresync.storage.memory import MemoryStore


async def test_a_record_id_stored_here_already_is_refused_and_the_record_kept() -> None:
    store = MemoryStore()
    identity = Identity("replica-1", "laptop", None, None, None)
    await store.set_identity(identity)
    replica = Replica(store, identity, rulebook=DEFAULT_RULEBOOK)
    rid = await replica.create_record()
    theirs = Record.from_update(rid, await store.load(rid) or b"", replica="laptop-b")
    seen = theirs.state_vector()
    await replica.set(rid, "name", "Ann", author="dr.a")
    theirs.set("name", "Anne", author="dr.b")  # a disagreement, from a sync
    await replica._host.take_in([(rid, theirs.update_since(seen))], ("sync.checkpoint", "1"))
    assert await replica.count_conflicts() == 1
    pending = await store.pending_count()
    with pytest.raises(InvalidInputError, match="exists"):
        await replica.create_record(record_id=rid)
    assert (await replica.record(rid)).get("name").in_conflict
    assert await replica.count_conflicts() == 1
    assert await store.pending_count() == pending  # nothing written
    await replica.close()
