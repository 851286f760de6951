"""Trusting the server's checks stores exactly what building and checking would.

A differential property test over generated histories: desks (other replicas)
edit a few patient records, concurrently or not, sync with a server, resolve what
conflicts; a laptop edits too (some of its edits still unacknowledged when it
pulls) and pulls the server's feed in batches of any size. Two copies of that
laptop take in the same pulled batches: one with the server's checks (its state
vectors, conflict rows and person cards read from the server's store after each
commit, carried through a version 8 frame and parsed as a laptop parses them),
one without (every record built, every rule run). After every pull both stores
must hold the same: each record's state and revisions, conflict rows, person
cards and pairs, and nothing kept aside.

Two more copies take the same batches as protocol version 9 may send them, every
check referring to what the laptop holds instead of carrying it: one with each
card as a reference (rows in full), one with the card and rows together as one
reference (no rows). A reference to what the copy does not hold must make it build
the record; so they too must hold exactly what building gives.

Everything runs on the in-memory store, through the real absorb path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caresync import DEFAULT_RULEBOOK, Record
from caresync.protocol import (
    PullBatch,
    card_reference,
    decode_frame,
    encode_frame,
    held_reference,
)
from caresync.replication.absorb import OnBadUpdate, Taken, WriteOptions, absorb
from caresync.replication.checked import ServerCheck, from_wire, to_wire
from caresync.replication.index import read_checks, read_wire_checks
from caresync.replication.pool import RecordPool
from caresync.storage._updates import decode_state_vector
from caresync.storage.memory import MemoryStore

ORG = "clinic-a"
LAPTOP = "laptop-1"
RECORDS = 3
DESKS = 3
NAMES = ("Awa Ndiaye", "Awa Ndiaye", "Jan de Vries")  # two records may be one person
FIELDS = ("name", "birthDate", "dose", "status", "drug", "substance")
VALUES = {
    "name": NAMES,
    "birthDate": ("1990-04-12", "1990-04-21", "1985-01-01"),
    "dose": ("5 mg", "7.5 mg", "10 mg"),
    "status": ("active", "stopped"),
    "drug": ("amoxicillin", "paracetamol"),
    "substance": ("penicillin", "latex"),
}


def path_of(record: Record, name: str) -> str:
    """A field's path: top-level, or the record's one medication or allergy entry."""
    if name in ("dose", "status", "drug"):
        return f"medications/{record.entry_ids('medications')[0]}/{name}"
    if name == "substance":
        return f"allergies/{record.entry_ids('allergies')[0]}/substance"
    return name


@dataclass
class Laptop:
    """One copy of the laptop: its store and its pool of loaded records."""

    store: MemoryStore = field(default_factory=MemoryStore)
    pool: RecordPool = field(init=False)
    unbuilt: int = 0  # records stored with the server's check, over the run

    def __post_init__(self) -> None:
        self.pool = RecordPool(self.store, replica=LAPTOP, rulebook=DEFAULT_RULEBOOK)


@dataclass
class World:
    server: MemoryStore = field(default_factory=MemoryStore)
    server_pool: RecordPool = field(init=False)
    trusting: Laptop = field(default_factory=Laptop)
    building: Laptop = field(default_factory=Laptop)
    card_referring: Laptop = field(default_factory=Laptop)  # version 9: cards as references
    held_referring: Laptop = field(default_factory=Laptop)  # version 9: card and rows
    desks: list[dict[str, Record]] = field(default_factory=list)
    sent: dict[tuple[int, str], bytes] = field(default_factory=dict)
    unpushed: list[tuple[str, bytes]] = field(default_factory=list)  # the laptop's outbox
    checkpoint: int = 0
    record_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server_pool = RecordPool(self.server, replica="server", rulebook=DEFAULT_RULEBOOK)

    @property
    def laptops(self) -> tuple[Laptop, ...]:
        return (self.trusting, self.building, self.card_referring, self.held_referring)

    async def push(self, origin: str, items: list[tuple[str, bytes]]) -> None:
        """What the server does with a push: one commit, each update a feed entry."""

        async def vet(_taken: Mapping[str, Taken]) -> WriteOptions:
            return WriteOptions(to_feed=True, origin=origin)

        await absorb(
            self.server_pool,
            self.server,
            items,
            checkpoint=None,
            organisation=ORG,
            keep_each=True,
            on_bad=OnBadUpdate.REFUSE,
            vet=vet,
        )

    async def setup(self) -> None:
        first = []
        for i in range(RECORDS):
            record = Record.create(replica="desk-0")
            with record.batch():
                record.set("name", NAMES[i], author="registrar")
                record.add_entry("medications", {"drug": "amoxicillin"}, author="registrar")
                record.add_entry("allergies", {"substance": "latex"}, author="registrar")
            first.append((record.record_id, record.update_since()))
            self.record_ids.append(record.record_id)
        await self.push("desk-0", first)
        for desk in range(DESKS):
            copies = {}
            for record_id, update in first:
                copies[record_id] = Record.from_update(record_id, update, replica=f"desk-{desk}")
                self.sent[(desk, record_id)] = copies[record_id].state_vector()
            self.desks.append(copies)

    async def desk_edit(self, desk: int, index: int, name: str, choice: int) -> None:
        record = self.desks[desk][self.record_ids[index]]
        values = VALUES[name]
        record.set(path_of(record, name), values[choice % len(values)], author=f"dr.{desk}")

    async def desk_sync(self, desk: int) -> None:
        """The desk pushes what it wrote, then takes in everything the server holds."""
        items = []
        for record_id, record in self.desks[desk].items():
            update = record.update_since(self.sent[(desk, record_id)])
            if update != record.update_since(record.state_vector()):
                items.append((record_id, update))
        if items:
            await self.push(f"desk-{desk}", items)
        for record_id, record in self.desks[desk].items():
            held = await self.server.load(record_id)
            assert held is not None
            record.apply_update(held)
            self.sent[(desk, record_id)] = record.state_vector()

    async def laptop_edit(self, index: int, name: str, choice: int) -> None:
        """An edit on the laptop, stored on both copies, not yet pushed."""
        record_id = self.record_ids[index]
        stored = await self.trusting.store.load(record_id)
        if stored is None:
            return  # not pulled yet
        record = Record.from_update(record_id, stored, replica=LAPTOP)
        before = record.state_vector()
        values = VALUES[name]
        record.set(path_of(record, name), values[choice % len(values)], author="dr.laptop")
        update = record.update_since(before)
        for laptop in self.laptops:
            await absorb(
                laptop.pool, laptop.store, [(record_id, update)], checkpoint=None, organisation=ORG
            )
        self.unpushed.append((record_id, update))

    async def laptop_push(self) -> None:
        if self.unpushed:
            await self.push(LAPTOP, self.unpushed)
            self.unpushed = []

    def evict(self) -> None:
        """The laptop's pool forgets every loaded record (as its LRU would)."""
        for record_id in self.record_ids:
            for laptop in self.laptops:
                laptop.pool.forget(record_id)

    async def pull(self, limit: int) -> None:
        """One pull batch, as the server sends it and each laptop copy takes it in."""
        head = (await self.server.feed_since(0, limit=10_000))[-1].seq
        items = await self.server.feed_since(
            self.checkpoint, limit=limit, organisation=ORG, exclude_origin=LAPTOP
        )
        checkpoint = items[-1].seq if len(items) == limit else head
        checks = await read_checks(self.server, [i.record_id for i in items])
        wire = [to_wire(rid, check) for rid, check in checks.items()]
        order = list(dict.fromkeys(i.record_id for i in items))
        wire.sort(key=lambda c: order.index(c.state.record_id))
        batch = PullBatch(
            tuple((i.seq, i.record_id, i.update) for i in items),
            checkpoint,
            head,
            tuple(c.state for c in wire),
            tuple(row for c in wire for row in c.rows),
        )
        _version, received = decode_frame(encode_frame(batch, version=8))
        assert isinstance(received, PullBatch)
        parsed = from_wire(received.checked, received.conflicts)
        # Version 9, whatever the laptop holds: every card as a reference, or every
        # card and rows as one (then no rows), as a server that misjudged would send.
        by_card = PullBatch(
            batch.items,
            checkpoint,
            head,
            tuple(
                c.state._replace(card=card_reference(c.state.card))
                if c.state.card is not None
                else c.state
                for c in wire
            ),
            batch.conflicts,
        )
        held = PullBatch(
            batch.items,
            checkpoint,
            head,
            tuple(c.state._replace(card=held_reference(c.state.card, c.rows)) for c in wire),
            (),
        )
        referred = []
        for frame in (by_card, held):
            version, got = decode_frame(encode_frame(frame, version=9))
            assert version == 9
            assert isinstance(got, PullBatch)
            referred.append(from_wire(got.checked, got.conflicts))
        updates = [(i.record_id, i.update) for i in received.items]
        for laptop, checked in (
            (self.trusting, parsed),
            (self.building, None),
            (self.card_referring, referred[0]),
            (self.held_referring, referred[1]),
        ):
            done = await absorb(
                laptop.pool,
                laptop.store,
                updates,
                checkpoint=("sync.checkpoint", str(checkpoint)),
                organisation=ORG,
                checked=checked,
            )
            laptop.unbuilt += sum(1 for t in done.taken.values() if t.record is None)
        assert self.building.unbuilt == 0
        self.checkpoint = checkpoint


async def snapshot(store: MemoryStore) -> dict[str, object]:
    """Everything a laptop's store keeps of its records, comparable."""
    ids = sorted(await store.record_ids())
    vectors = await store.state_vectors(ids)
    loaded = await store.load_many(ids)
    revisions = {}
    for record_id in ids:
        record = Record.from_update(record_id, loaded[record_id], replica="reader")
        revisions[record_id] = sorted(record.revisions(), key=lambda r: r.id)
    rows = await store.conflict_rows(ids)
    return {
        "vectors": {rid: (decode_state_vector(v), p) for rid, (v, p) in vectors.items()},
        "revisions": revisions,
        "rows": {rid: sorted(rows.get(rid, ()), key=lambda r: r.id) for rid in ids},
        "listed": await store.conflicts(),
        "cards": await store.person_cards(ids),
        "pairs": await store.person_pairs(),
        "quarantined": await store.quarantined(),
        "checkpoint": await store.get_meta("sync.checkpoint"),
    }


STEP = st.one_of(
    st.tuples(
        st.just("desk_edit"),
        st.integers(0, DESKS - 1),
        st.integers(0, RECORDS - 1),
        st.sampled_from(FIELDS),
        st.integers(0, 5),
    ),
    st.tuples(st.just("desk_sync"), st.integers(0, DESKS - 1)),
    st.tuples(
        st.just("laptop_edit"),
        st.integers(0, RECORDS - 1),
        st.sampled_from(FIELDS),
        st.integers(0, 5),
    ),
    st.tuples(st.just("laptop_push")),
    st.tuples(st.just("evict")),
    st.tuples(st.just("pull"), st.integers(1, 6)),
)


async def run(steps: list[tuple[object, ...]]) -> World:
    world = World()
    await world.setup()
    for step in steps:
        kind, *args = step
        if kind == "desk_edit":
            await world.desk_edit(*args)  # type: ignore[arg-type]
        elif kind == "desk_sync":
            await world.desk_sync(*args)  # type: ignore[arg-type]
        elif kind == "laptop_edit":
            await world.laptop_edit(*args)  # type: ignore[arg-type]
        elif kind == "laptop_push":
            await world.laptop_push()
        elif kind == "evict":
            world.evict()
        else:
            await world.pull(*args)  # type: ignore[arg-type]
            expected = await snapshot(world.building.store)
            for laptop in (world.trusting, world.card_referring, world.held_referring):
                assert await snapshot(laptop.store) == expected
    # Catch up at the end: everything pulled, both copies alike.
    for desk in range(DESKS):
        await world.desk_sync(desk)
    for _ in range(100):  # bounded: each pull moves the checkpoint forward
        await world.pull(6)
        if world.checkpoint >= (await world.server.feed_since(0, limit=10_000))[-1].seq:
            break
    expected = await snapshot(world.building.store)
    for laptop in (world.trusting, world.card_referring, world.held_referring):
        assert await snapshot(laptop.store) == expected
    return world


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(STEP, max_size=40))
def test_trusting_the_servers_checks_stores_what_building_would(
    steps: list[tuple[object, ...]],
) -> None:
    asyncio.run(run(steps))


def test_the_trusted_path_is_taken_and_local_edits_are_rebuilt() -> None:
    """Not vacuous: a history where checks are used, and a local edit is not trusted."""
    steps: list[tuple[object, ...]] = [
        ("desk_edit", 0, 0, "birthDate", 0),
        ("desk_edit", 1, 0, "birthDate", 1),  # concurrent: a conflict
        ("desk_sync", 0),
        ("desk_sync", 1),
        ("desk_edit", 2, 0, "status", 1),
        ("desk_edit", 1, 0, "dose", 2),  # stopped against a concurrent dose change
        ("desk_edit", 2, 1, "substance", 0),  # penicillin, while on amoxicillin
        ("desk_sync", 2),
        ("desk_sync", 1),
        ("pull", 50),
        ("laptop_edit", 2, "name", 0),  # unacknowledged when the next pull comes
        ("evict",),
        ("desk_edit", 0, 2, "birthDate", 0),
        ("desk_sync", 0),
        ("pull", 50),
        ("desk_edit", 2, 1, "dose", 1),  # its card does not change
        ("desk_sync", 2),
        ("evict",),  # a loaded record is built, whatever the check
        ("pull", 50),
    ]
    world = asyncio.run(run(steps))
    assert world.trusting.unbuilt >= RECORDS  # new records and desk edits, unbuilt
    assert world.building.unbuilt == 0
    # References to what the laptop held were taken too (the rest built).
    assert 0 < world.card_referring.unbuilt < world.trusting.unbuilt
    assert 0 < world.held_referring.unbuilt < world.trusting.unbuilt
    rows = asyncio.run(world.trusting.store.conflict_rows(world.record_ids))
    assert len(rows[world.record_ids[0]]) >= 2  # two conflicts on one record, carried
    assert rows[world.record_ids[1]]  # the allergy against the medication


def test_a_check_of_another_state_is_not_taken() -> None:
    """A record the batch leaves short of the checked state is built, not trusted."""

    async def go() -> None:
        world = World()
        await world.setup()
        await world.desk_edit(0, 0, "birthDate", 0)
        await world.desk_sync(0)
        items = await world.server.feed_since(0, limit=10_000)
        first = [(i.record_id, i.update) for i in items if i.seq == items[0].seq]
        # The server's check is of the record as it is now, after the later edit.
        checks: dict[str, ServerCheck] = await read_checks(world.server, [rid for rid, _ in first])
        done = await absorb(
            world.trusting.pool,
            world.trusting.store,
            first,
            checkpoint=None,
            organisation=ORG,
            checked=checks,
        )
        [taken] = done.taken.values()
        assert taken.record is not None  # built: its state is not the checked one

    asyncio.run(go())


def test_the_server_reads_checks_as_frames_carry_them() -> None:
    """read_wire_checks (cards as stored, not parsed) gives what to_wire of read_checks does."""

    async def go() -> None:
        world = World()
        await world.setup()
        await world.desk_edit(0, 0, "birthDate", 0)
        await world.desk_edit(1, 0, "birthDate", 1)
        await world.desk_sync(0)
        await world.desk_sync(1)
        ids = world.record_ids
        checks = await read_checks(world.server, ids)
        wired = await read_wire_checks(world.server, ids)
        assert wired == {rid: to_wire(rid, check) for rid, check in checks.items()}
        assert all(w.state.card is not None for w in wired.values())
        assert wired[ids[0]].rows  # the two birth dates: a conflict, carried

    asyncio.run(go())
