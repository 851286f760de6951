"""A loaded record keeps only what it needs, and the record pool's size is an option.

No memory is measured here (that is ``benchmarks/bench_memory.py``): these tests
check that the leaner index computes the same heads as the definition, in every
order revisions may arrive, and that what a loaded record no longer keeps is
made when it is needed.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from caresync import (
    DEFAULT_RULEBOOK,
    InvalidInputError,
    InvalidOptionError,
    Record,
    Replica,
    SyncServer,
)
from caresync.records.clock import Timestamp
from caresync.records.index import RevisionIndex
from caresync.records.revision import NO_SEEN, Revision
from caresync.replication.pool import MAX_POOL_SIZE, RecordPool, check_pool_size
from caresync.simulation import SimulationConfig
from caresync.storage.memory import MemoryStore


def rev(rev_id: str, *parents: str, path: str = "name") -> Revision:
    return Revision(rev_id, path, rev_id, parents, "dr", "r1", Timestamp(1, 0))


def heads_by_definition(revisions: list[Revision]) -> dict[str, list[str]]:
    """Per path: its revisions that no revision of the same path names as a parent."""
    heads: dict[str, list[str]] = {}
    for r in revisions:
        named = {p for o in revisions if o.path == r.path for p in o.parents}
        if r.id not in named:
            heads.setdefault(r.path, []).append(r.id)
    return {path: sorted(ids) for path, ids in heads.items()}


# A small history with every shape the index must handle: a chain, a fork, a
# merge of the fork, a revision naming itself, one naming a parent never held,
# and one naming a revision of another path.
HISTORY = [
    rev("a"),
    rev("b", "a"),
    rev("c", "a"),
    rev("d", "b", "c"),
    rev("e", "e"),
    rev("f", "ghost"),
    rev("x", path="birthDate"),
    rev("y", "x", "d", path="birthDate"),
]


@pytest.mark.parametrize("shift", range(len(HISTORY)))
def test_heads_are_the_same_in_every_order_one_by_one_and_at_once(shift: int) -> None:
    expected = heads_by_definition(HISTORY)
    for order in itertools.islice(itertools.permutations(HISTORY), shift, None, 997):
        one_by_one, at_once = RevisionIndex(), RevisionIndex()
        for r in order:
            one_by_one.add(r, None)
        at_once.add_all(order, lambda _path: None)
        for index in (one_by_one, at_once):
            assert {p: sorted(s.heads) for p, s in index.paths.items()} == expected, order
            # What is still awaited: only the parents no revision of the path is.
            assert index.paths["name"].pending == {"ghost"}
            assert index.paths["birthDate"].pending == {"d"}


def test_a_parent_arriving_after_its_child_stops_being_awaited() -> None:
    index = RevisionIndex()
    index.add(rev("b", "a"), None)
    assert index.paths["name"].heads == ("b",)
    assert index.paths["name"].pending == {"a"}
    index.add(rev("a"), None)
    assert index.paths["name"].heads == ("b",)
    assert index.paths["name"].pending is None


def chart() -> Record:
    record = Record.create(replica="clinic")
    record.set("name", "Awa", author="dr")
    record.set("name", "Awa Diop", author="dr")
    record.add_entry("allergies", {"substance": "penicillin"}, author="dr")
    return record


def test_a_loaded_record_keeps_no_write_caches_until_it_writes() -> None:
    source = chart()
    loaded = Record.from_update(source.record_id, source.update_since(), replica="laptop")
    assert loaded._revisions_map is None
    assert loaded._checked_paths is None
    assert loaded._listeners is None
    assert loaded._totals is None
    # A revision that saw nothing shares one empty mapping instead of a dict each.
    assert loaded.history("name")[0].seen is NO_SEEN
    assert loaded.value("name") == "Awa Diop"
    loaded.set("name", "Awa N. Diop", author="nurse")
    assert loaded._revisions_map is not None
    assert loaded._checked_paths is not None
    again = Record.from_update(source.record_id, loaded.update_since(), replica="other")
    assert again.value("name") == "Awa N. Diop"
    assert [r.id for r in again.history("name")] == [r.id for r in loaded.history("name")]


def test_a_merged_change_reaches_a_lean_record_and_its_listeners() -> None:
    source = chart()
    loaded = Record.from_update(source.record_id, source.update_since(), replica="laptop")
    heard: list[bool] = []
    unsubscribe = loaded.on_update(lambda _update, local: heard.append(local))
    before = source.state_vector()
    source.set("name", "Awa Ba", author="dr")
    loaded.apply_update(source.update_since(before))
    unsubscribe()
    assert loaded.value("name") == "Awa Ba"
    assert heard == [False]
    assert loaded._listeners == {}


@pytest.mark.parametrize("bad", [0, -1, MAX_POOL_SIZE + 1, True, 1.5, "10", None])
def test_a_bad_pool_size_is_refused_with_a_typed_error(bad: object) -> None:
    with pytest.raises(InvalidOptionError, match="pool_size") as raised:
        check_pool_size(bad)
    assert isinstance(raised.value, InvalidInputError)
    with pytest.raises(InvalidOptionError, match="max_records"):
        RecordPool(MemoryStore(), replica="r", rulebook=DEFAULT_RULEBOOK, max_records=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="pool_size"):
        SimulationConfig(laptops=1, patients=1, pool_size=bad)  # type: ignore[arg-type]


def test_a_pool_keeps_as_many_records_as_its_size() -> None:
    pool = RecordPool(MemoryStore(), replica="laptop", rulebook=DEFAULT_RULEBOOK, max_records=2)
    assert pool.max_records == 2
    records = [chart() for _ in range(3)]
    for record in records:
        pool.load_bytes(record.record_id, record.update_since())
    assert pool.loaded == 2
    assert pool.peek(records[0].record_id) is None  # the least recently used went
    assert pool.peek(records[2].record_id) is not None
    assert check_pool_size(1) == 1
    assert check_pool_size(MAX_POOL_SIZE) == MAX_POOL_SIZE


async def test_replica_and_server_take_a_pool_size_and_refuse_a_bad_one(tmp_path: Path) -> None:
    laptop_db, server_db = tmp_path / "laptop.db", tmp_path / "server.db"
    with pytest.raises(InvalidOptionError, match="pool_size"):
        await Replica.open(laptop_db, pool_size=0)
    with pytest.raises(InvalidOptionError, match="pool_size"):
        await SyncServer.open(server_db, pool_size="many")  # type: ignore[arg-type]
    assert not laptop_db.exists()  # refused before opening
    assert not server_db.exists()
    replica = await Replica.open(laptop_db, pool_size=3)
    try:
        assert replica._pool.max_records == 3
    finally:
        await replica.close()
    async with await SyncServer.open(server_db, pool_size=5) as server:
        assert server._pool.max_records == 5
    assert SimulationConfig(laptops=1, patients=1, pool_size=7).pool_size == 7


async def test_a_simulation_with_a_pool_of_one_record_converges_and_loses_nothing(
    tmp_path: Path,
) -> None:
    from caresync.simulation import run_simulation

    config = SimulationConfig(
        laptops=2,
        patients=6,
        edits_per_laptop=6,
        seed=3,
        transport="memory",
        workdir=tmp_path,
        pool_size=1,  # every other record read back from its store each time
    )
    result = await run_simulation(config)
    assert result.converged, result.details
    assert result.lost_values == 0
    assert result.edits > 0
