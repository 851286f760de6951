"""A pull's new state vectors worked out once (issue 18): what a laptop read off the
updates' headers to compare with the server's checks is what the store plans with
(``IncomingUpdate.advances``), only while it still holds, and only where it fits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from store_helpers import Patient

from caresync import DEFAULT_RULEBOOK
from caresync.exceptions import InvalidInputError
from caresync.replication.absorb import absorb
from caresync.replication.checked import advance_simply
from caresync.replication.index import read_checks
from caresync.replication.pool import RecordPool
from caresync.storage import IncomingUpdate, Store
from caresync.storage._updates import same_state_vector
from caresync.storage._writes import Write, plan_writes
from caresync.storage.cache import CachedRecord
from caresync.storage.memory import MemoryStore

MARK = b"\x01\x07marked"
"""A state vector no planning could work out: seen only if the hint was taken."""


def _no_full(record_id: str) -> bytes:
    raise AssertionError(f"{record_id} should not be read whole")


def test_a_fitting_hint_is_planned_with_as_given() -> None:
    p = Patient(replica="desk")
    before = p.record.state_vector()
    edit = p.edit()
    known = {p.id: CachedRecord(before, "clinic", False, key=7)}
    write = Write(p.id, edit, None, None, advances=(before, MARK))
    plan = plan_writes([write], known, _no_full, skip_duplicates=True)[p.id]
    assert plan.state_vector == MARK
    assert (plan.changed, plan.pending, plan.is_new, plan.key) == (True, False, False, 7)
    assert plan.appended == [0]
    assert plan.appended_bytes == len(edit)


@pytest.mark.parametrize("case", ["stale", "waiting", "twice", "new"])
def test_a_hint_that_does_not_fit_is_ignored(case: str) -> None:
    """Stale (the stored vector moved on), a record with waiting items, a record written
    twice in the batch, a record new here: the store works the vector out itself."""
    p = Patient(replica="desk")
    older = p.record.state_vector()
    p.edit()
    before = p.record.state_vector()
    edit = p.edit()
    stored = older if case == "stale" else before
    known = {p.id: CachedRecord(stored, None, case == "waiting", merged=p.created)}
    if case == "new":
        known = {}
    writes = [Write(p.id, edit, None, None, advances=(before, MARK))]
    if case == "twice":
        writes.append(Write(p.id, p.edit(), None, None, advances=(before, MARK)))

    def full(record_id: str) -> bytes:
        return p.record.update_since()

    plan = plan_writes(writes, known, full, skip_duplicates=True)[p.id]
    assert plan.state_vector != MARK


def test_advance_simply_is_what_vector_after_works_out() -> None:
    p = Patient(replica="desk")
    before = p.record.state_vector()
    edits = [p.edit(), p.edit("name", "Awa Ndiaye")]
    simply = advance_simply(before, edits)
    assert simply is not None
    after, changed = simply
    assert changed
    assert same_state_vector(after, p.record.state_vector())
    # Held already: nothing added, the vector as it was.
    assert advance_simply(p.record.state_vector(), edits[:1]) == (p.record.state_vector(), False)
    # An update that would wait for one not held: not decided here.
    assert advance_simply(before, edits[1:]) is None


async def test_the_stored_state_is_the_same_with_a_hint_or_without(store: Store) -> None:
    """Every store: the hint (true, or stale) leaves what the write leaves without one."""
    patients = [Patient(replica="desk") for _ in range(3)]
    await store.write_remote([IncomingUpdate(p.id, p.created, (), "clinic") for p in patients])
    befores = [p.record.state_vector() for p in patients]
    olders = list(befores)
    patients[2].edit()
    await store.write_remote([IncomingUpdate(patients[2].id, patients[2].updates[-1], None)])
    befores[2] = patients[2].record.state_vector()
    edits = [p.edit() for p in patients]
    items = [
        # A true hint; a stale one (a wrong "after": it must not be taken); none.
        IncomingUpdate(
            patients[0].id,
            edits[0],
            None,
            advances=(befores[0], patients[0].record.state_vector()),
        ),
        IncomingUpdate(patients[2].id, edits[2], None, advances=(olders[2], MARK)),
        IncomingUpdate(patients[1].id, edits[1], None),
    ]
    await store.write_remote(items)
    vectors = await store.state_vectors([p.id for p in patients])
    for p in patients:
        assert same_state_vector(vectors[p.id][0], p.record.state_vector())
        assert vectors[p.id][1] is False
        assert await store.load(p.id) is not None
    assert await store.check() == []


@pytest.mark.parametrize(
    "advances",
    [(b"\x00",), (b"\x00", "text"), [b"\x00", b"\x00"], (bytearray(b"\x00"), b"\x00"), b"\x00"],
)
def test_a_malformed_hint_is_refused(advances: object) -> None:
    with pytest.raises(InvalidInputError, match="advances"):
        IncomingUpdate("r1", b"\x00\x00", None, advances=advances)  # type: ignore[arg-type]


class _Watched(MemoryStore):
    """A memory store that keeps what each write_remote was given."""

    def __init__(self) -> None:
        super().__init__()
        self.given: list[IncomingUpdate] = []

    async def write_remote(  # type: ignore[override]
        self, items: Sequence[IncomingUpdate], **kwargs: Any
    ) -> list[int]:
        self.given.extend(items)
        return await super().write_remote(items, **kwargs)


async def test_a_checked_pull_tells_the_store_what_it_worked_out() -> None:
    """A record the batch leaves in the checked state is written with (its stored state
    vector, the new one): the one the laptop compared with the server's check."""
    server, laptop = MemoryStore(), _Watched()
    p = Patient(replica="desk")
    await laptop.write_remote([IncomingUpdate(p.id, p.created, (), "clinic")])
    before = p.record.state_vector()
    edit = p.edit()
    await server.write_remote([IncomingUpdate(p.id, p.record.update_since(), (), "clinic")])
    checks = await read_checks(server, [p.id])
    pool = RecordPool(laptop, replica="laptop", rulebook=DEFAULT_RULEBOOK)
    laptop.given.clear()
    done = await absorb(
        pool, laptop, [(p.id, edit)], checkpoint=None, organisation="clinic", checked=checks
    )
    assert done.taken[p.id].record is None  # taken as the server checked it, not built
    (given,) = laptop.given
    assert given.advances is not None
    assert given.advances[0] == before
    assert same_state_vector(given.advances[1], p.record.state_vector())
    assert await laptop.state_vectors([p.id]) == {p.id: (given.advances[1], False)}
