"""The one absorb-and-commit path, as a laptop and as a server use it (in-memory store)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from caresync import DEFAULT_RULEBOOK, InvalidUpdateError, Record
from caresync.exceptions import StorageError
from caresync.replication.absorb import OnBadUpdate, Taken, WriteOptions, absorb
from caresync.replication.pool import RecordPool
from caresync.storage.memory import MemoryStore

GARBAGE = b"\x01\x02 not an update"


def edits() -> tuple[str, list[bytes]]:
    """A new record's first update, then two edits of it by another laptop."""
    a = Record.create(replica="laptop-a")
    first = a.update_since()
    seen = a.state_vector()
    a.set("birthDate", "1980-01-01", author="dr.a")
    second = a.update_since(seen)
    seen = a.state_vector()
    a.set("birthDate", "1980-02-02", author="dr.a")
    return a.record_id, [first, second, a.update_since(seen)]


def fresh_pool(store: MemoryStore) -> RecordPool:
    return RecordPool(store, replica="here", rulebook=DEFAULT_RULEBOOK)


async def test_a_laptop_merges_a_records_updates_into_one_and_keeps_bad_bytes_aside() -> None:
    store = MemoryStore()
    pool = fresh_pool(store)
    record_id, updates = edits()
    batch = [(record_id, updates[0]), (record_id, GARBAGE), (record_id, updates[1])]
    absorbed = await absorb(
        pool, store, batch, checkpoint=("sync.checkpoint", "7"), organisation="clinic-a"
    )
    assert [q.update for q in absorbed.quarantined] == [GARBAGE]
    assert len(absorbed.written) == 1  # one merged update for the record
    assert await store.get_meta("sync.checkpoint") == "7"
    assert [q.update for q in await store.quarantined(record_id)] == [GARBAGE]
    loaded = pool.peek(record_id)
    assert loaded is not None
    assert loaded.value("birthDate") == "1980-01-01"


async def test_kept_each_a_quarantined_update_is_not_stored_and_rows_go_with_the_last() -> None:
    store = MemoryStore()
    pool = fresh_pool(store)
    record_id, updates = edits()
    batch = [(record_id, updates[0]), (record_id, updates[1]), (record_id, GARBAGE)]
    absorbed = await absorb(
        pool, store, batch, checkpoint=None, organisation="clinic-a", keep_each=True
    )
    assert [update for _seq, _rid, update in absorbed.written] == updates[:2]
    assert absorbed.taken[record_id].updates == tuple(updates[:2])
    assert await store.log_length(record_id) == 2


async def test_refused_bad_bytes_store_nothing_and_leave_nothing_loaded() -> None:
    store = MemoryStore()
    pool = fresh_pool(store)
    record_id, updates = edits()
    with pytest.raises(InvalidUpdateError):
        await absorb(
            pool,
            store,
            [(record_id, updates[0]), (record_id, GARBAGE)],
            checkpoint=("pushed:x", "1"),
            organisation="clinic-a",
            keep_each=True,
            on_bad=OnBadUpdate.REFUSE,
        )
    assert await store.load(record_id) is None
    assert await store.get_meta("pushed:x") is None
    assert pool.peek(record_id) is None


async def test_a_refusal_by_vet_stores_nothing_and_forgets_what_was_taken_in() -> None:
    store = MemoryStore()
    pool = fresh_pool(store)
    record_id, updates = edits()
    await absorb(pool, store, [(record_id, updates[0])], checkpoint=None, organisation=None)
    assert pool.peek(record_id) is not None
    seen: list[str] = []

    async def vet(taken: Mapping[str, Taken]) -> WriteOptions:
        seen.extend(taken)
        raise StorageError("refused by the vet")

    with pytest.raises(StorageError):
        await absorb(
            pool,
            store,
            [(record_id, updates[1])],
            checkpoint=("sync.checkpoint", "9"),
            organisation=None,
            vet=vet,
        )
    assert seen == [record_id]
    assert pool.peek(record_id) is None  # memory never runs ahead of the store
    assert await store.get_meta("sync.checkpoint") is None
    record = await pool.get(record_id)
    assert record.value("birthDate") is None


async def test_admit_sees_the_record_as_it_stood_before_the_batch() -> None:
    store = MemoryStore()
    pool = fresh_pool(store)
    record_id, updates = edits()
    await absorb(pool, store, [(record_id, updates[0])], checkpoint=None, organisation=None)
    pool.forget(record_id)  # stored, not loaded: admission must still see it
    before: list[object] = []

    def admit(rid: str, record: Record | None, arrived: object) -> None:
        before.append("new" if record is None else record.value("birthDate"))

    absorbed = await absorb(
        pool,
        store,
        [(record_id, updates[1]), (record_id, updates[2])],
        checkpoint=None,
        organisation=None,
        keep_each=True,
        admit=admit,
    )
    assert before == [None]  # the stored record (not a new one), before either edit
    found = absorbed.taken[record_id].record
    assert found is not None
    assert found.value("birthDate") == "1980-02-02"


async def test_a_record_the_batch_evicts_from_the_pool_is_still_taken_in_whole() -> None:
    """A record loaded when the batch starts and pushed out of the pool by the batch's own
    loads is still admitted and indexed with what it already holds (reproduced: it was
    taken for a new record, admitted with no history, indexed from the delta alone)."""
    store = MemoryStore()
    pool = RecordPool(store, replica="here", rulebook=DEFAULT_RULEBOOK, max_records=3)
    record = Record.create(replica="laptop-a")
    record.set("birthDate", "1980-01-01", author="dr.a")
    record.set("heightCm", 180, author="dr.a")
    await absorb(
        pool,
        store,
        [(record.record_id, record.update_since())],
        checkpoint=None,
        organisation=None,
        keep_each=True,
    )
    seen = record.state_vector()
    record.set("birthDate", "1990-09-09", author="dr.a")
    delta = record.update_since(seen)
    newcomers = []
    for _ in range(3):
        other = Record.create(replica="laptop-b")
        newcomers.append((other.record_id, other.update_since()))
    before: dict[str, Record | None] = {}

    def admit(rid: str, loaded: Record | None, arrived: object) -> None:
        before[rid] = loaded

    absorbed = await absorb(
        pool,
        store,
        [*newcomers, (record.record_id, delta)],
        checkpoint=None,
        organisation=None,
        keep_each=True,
        on_bad=OnBadUpdate.REFUSE,
        admit=admit,
    )
    seen_before = before[record.record_id]
    assert seen_before is not None
    taken = absorbed.taken[record.record_id].record
    assert taken is not None
    assert taken.value("heightCm") == 180  # what it held before the batch
    assert taken.value("birthDate") == "1990-09-09"
    assert pool.peek(record.record_id) is taken


async def test_a_prepared_copy_commits_what_the_unprepared_path_commits() -> None:
    """absorb given prepare_copy's result stores the same as the trusted path alone,
    bad bytes kept aside alike; a record that is not absent makes it ignore the
    preparation (the ordinary path then merges into what is stored)."""
    from caresync.replication.absorb import TrustedCopy, prepare_copy

    record_id, updates = edits()
    other = Record.create(replica="laptop-b")
    batch = [(record_id, updates[0]), (other.record_id, GARBAGE)]
    trusted = TrustedCopy({}, {})
    results = []
    for prepared_too in (False, True):
        store = MemoryStore()
        pool = fresh_pool(store)
        prepared = prepare_copy(batch, trusted, "clinic-a") if prepared_too else None
        absorbed = await absorb(
            pool,
            store,
            batch,
            checkpoint=("copy.resume", record_id),
            organisation="clinic-a",
            absent={record_id, other.record_id},
            trusted=trusted,
            prepared=prepared,
        )
        assert pool.peek(record_id) is None  # stored unbuilt
        results.append(
            (
                [(rid, update) for _seq, rid, update in absorbed.written],
                [q.update for q in absorbed.quarantined],
                await store.load(record_id),
                [q.update for q in await store.quarantined(other.record_id)],
                await store.get_meta("copy.resume"),
            )
        )
    assert results[0] == results[1]
    assert results[1][1] == [GARBAGE]

    # Not absent after all (stored here meanwhile): the preparation is not used.
    store = MemoryStore()
    pool = fresh_pool(store)
    await absorb(pool, store, [(record_id, updates[0])], checkpoint=None, organisation="clinic-a")
    pool.forget(record_id)
    assert pool.peek(record_id) is None
    prepared = prepare_copy([(record_id, updates[1])], trusted, "clinic-a")
    await absorb(
        pool,
        store,
        [(record_id, updates[1])],
        checkpoint=None,
        organisation="clinic-a",
        absent=set(),
        trusted=trusted,
        prepared=prepared,
    )
    # The ordinary path built it in the pool (the prepared one never does), merged.
    loaded = pool.peek(record_id)
    assert loaded is not None
    assert loaded.value("birthDate") == "1980-01-01"


def test_prepare_copy_reads_a_plain_batch_in_one_pass_as_record_by_record() -> None:
    """Each record once, all updates: state vectors in one pass. A bad update or a
    record twice takes the record-by-record way, which keeps the bad one aside and
    merges the parts; the records taken are the same either way."""
    from caresync.records.crdt import state_vector_of
    from caresync.replication.absorb import TrustedCopy, prepare_copy

    charts = []
    for i in range(5):
        chart = Record.create(replica="clinic")
        chart.set("name", f"Patient {i}", author="import")
        charts.append(chart)
    batch = [(c.record_id, c.update_since()) for c in charts]
    trusted = TrustedCopy({}, {})
    plain = prepare_copy(batch, trusted, "clinic-a")
    assert list(plain.records.record_ids) == [rid for rid, _ in batch]
    assert list(plain.records.state_vectors) == [state_vector_of(u) for _, u in batch]
    assert plain.records.waiting == [False] * 5  # read off the items: nothing waits
    assert plain.kept_aside == ()
    bad = Record.create(replica="clinic").record_id
    mixed = prepare_copy([*batch, (bad, GARBAGE)], trusted, "clinic-a")
    assert mixed.records == plain.records
    assert [(q.record_id, q.update) for q in mixed.kept_aside] == [(bad, GARBAGE)]
    assert mixed.record_ids == plain.record_ids | {bad}
    record_id, updates = edits()
    twice = prepare_copy([(record_id, updates[0]), (record_id, updates[1])], trusted, None)
    merged = Record.from_update(record_id, twice.records.updates[0], replica="x")
    assert merged.value("birthDate") == "1980-01-01"


def test_prepare_copy_hands_on_the_bytes_each_card_came_as() -> None:
    """The store is given each card's bytes as the server sent them (it keeps them as
    they are); a record kept aside takes neither its card nor its bytes."""
    from caresync.records.persons import person_card
    from caresync.replication.absorb import TrustedCopy, prepare_copy

    good = Record.create(replica="clinic")
    good.set("name", "Awa Ndiaye", author="import")
    bad = Record.create(replica="clinic")
    bad.set("name", "Fatou Ba", author="import")
    cards = {r.record_id: person_card(r) for r in (good, bad)}
    sent = {rid: card.to_bytes() for rid, card in cards.items()}
    batch = [(good.record_id, good.update_since()), (bad.record_id, GARBAGE)]
    prepared = prepare_copy(batch, TrustedCopy({}, cards, sent), "clinic-a")
    assert dict(prepared.records.persons) == {good.record_id: cards[good.record_id]}
    assert dict(prepared.records.card_bytes) == {good.record_id: sent[good.record_id]}


async def test_a_server_batch_lets_the_event_loop_run_between_its_records() -> None:
    """A push is merged on the server's event loop: between two records it yields, so a
    push of many large records (each a few seconds of merging and rules) does not hold
    every other connection for the whole batch (reproduced: one 16 MB push of eleven
    records held the server for 19 s). Another task scheduled while the first record
    is admitted has run by the time the second is."""
    import asyncio

    store = MemoryStore()
    pool = fresh_pool(store)
    records = [Record.create(replica="laptop-a") for _ in range(3)]
    ran = asyncio.Event()
    seen: list[bool] = []

    def admit(rid: str, loaded: Record | None, arrived: object) -> None:
        seen.append(ran.is_set())
        ran.clear()
        asyncio.get_running_loop().call_soon(ran.set)  # another connection's turn

    await absorb(
        pool,
        store,
        [(record.record_id, record.update_since()) for record in records],
        checkpoint=None,
        organisation=None,
        keep_each=True,
        on_bad=OnBadUpdate.REFUSE,
        admit=admit,
    )
    assert seen == [False, True, True]
