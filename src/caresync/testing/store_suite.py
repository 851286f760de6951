"""The store conformance suite: what every caresync store must do, as pytest classes.

Our two stores (:class:`~caresync.storage.SQLiteStore` and its in-memory twin
:class:`~caresync.storage.MemoryStore`) run it, and so can any other store: subclass
the parts your store implements and say how to open a fresh, empty one::

    from caresync.testing.store_suite import ServerStoreSuite

    class TestPostgresStore(ServerStoreSuite):
        def make_store(self, directory, clock):
            return PostgresStore.open(DSN, clock=clock)   # an async context manager

The parts follow the store protocols of :mod:`caresync.storage.base`:

* :class:`ReplicaStoreSuite` — every replica (:class:`~caresync.storage.ReplicaStore`);
* :class:`LaptopStoreSuite` — adds the outbox and unsynced work
  (:class:`~caresync.storage.LaptopStore`);
* :class:`ServerStoreSuite` — adds the change feed, accounts, replicas and sessions
  (:class:`~caresync.storage.ServerStore`);
* :class:`StoreConformance` — both, and the tests that need a laptop's and a server's
  part in one store (:class:`~caresync.storage.Store`).

``make_store(directory, clock)`` gets an empty directory of the test's own (pytest's
``tmp_path``) and a :class:`~caresync.testing.store_data.FakeClock`: the store must
take its times (outbox rows, enrolments, sessions) from that clock, which the tests
move by hand. It returns an async context manager (what ``open()`` returns) whose
``__aenter__`` gives the open store; the suite closes it.

The tests are coroutines run by pytest-asyncio (``pip install "caresync[testing]"``).
Each class is marked ``asyncio`` and its ``store`` fixture is a pytest-asyncio fixture,
so the suite runs in pytest-asyncio's strict mode (its default) and in ``auto`` mode
alike. A few tests use the in-memory store to write an export file to import.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio

from caresync.audit import GENESIS, AuditEvent, link, verify_chain
from caresync.audit.chain import verify_trail
from caresync.exceptions import (
    AuditError,
    CaresyncError,
    ExportFileError,
    InvalidInputError,
    InvalidUpdateError,
    RefusedUpdateError,
    StorageError,
    UnknownRecordError,
    UnsyncedChangesError,
    WrongOrganisationError,
    WrongServerError,
)
from caresync.records import Record
from caresync.records.crdt import merge, state_vector_of
from caresync.records.persons import (
    DIFFERENT_PEOPLE,
    SAME_PERSON,
    PairState,
    PersonCard,
    link_path,
    pair_of,
    person_card,
)
from caresync.storage import (
    OUTBOX_SEQ_LIMIT,
    ConflictRow,
    FeedEpoch,
    HubChanges,
    HubMark,
    HubOutcome,
    HubRemoved,
    Identity,
    IncomingUpdate,
    LaptopStore,
    MemoryStore,
    QuarantinedUpdate,
    ReplicaStore,
    ServerStore,
    SessionRow,
    Store,
    card_digest,
)
from caresync.storage._audit import MAX_LINES
from caresync.storage.base import PASSWORD_MARK_BYTES
from caresync.testing.store_data import (
    READ,
    WRITE,
    FakeClock,
    Patient,
    audit_chain,
    card,
    conflict,
    digest,
    incoming,
    oracle,
    registered,
    revision_ids,
    same_vector,
    session_row,
    set_laptop_identity,
    whole,
)
from caresync.throttle import MAX_KEY_LENGTH, ThrottlePolicy, key_text

__all__ = [
    "LaptopStoreSuite",
    "ReplicaStoreSuite",
    "ServerStoreSuite",
    "StoreConformance",
]


async def _mark_hub(
    store: ServerStore, patients: Sequence[tuple[Patient, str | None]], held: str | None = None
) -> None:
    """Push a new edit of each patient (of that organisation) that marks it for the hub."""
    for p, _org in patients:
        p.edit()
    await store.write_remote(
        [IncomingUpdate(p.id, whole(p), None, org) for p, org in patients],
        to_feed=True,
        hub={p.id: HubMark(True, held) for p, _org in patients},
    )


def remote(patient: Patient, update: bytes, org: str | None = None) -> IncomingUpdate:
    """An update of ``patient`` as received from a peer (no conflict rows said)."""
    return IncomingUpdate(patient.id, update, None, org)


async def _cards_in_any_batches(store: ReplicaStore, seed: int, ways: Sequence[str]) -> None:
    """Random cards (few names and dates, so many collide), rewritten many times, in
    batches of the ``ways`` given ("remote", "local": a laptop's, "reindex"): the store
    holds what the final cards make, no more, no less."""
    rng = random.Random(seed)
    names = [("awa", "diop"), ("awa", "dioop"), ("moussa", "sow"), ("fatou", "sow"), ("awa",)]
    births = ["1984-02-03", "1984-03-02", "1984-02-04", "1984", "1990-01-01"]
    patients = [Patient() for _ in range(12)]
    orgs = {p.id: rng.choice([None, "org-1", "org-1"]) for p in patients}

    def random_card(p: Patient) -> PersonCard:
        links = tuple(
            sorted(
                {
                    (rng.choice(patients).id, rng.choice([SAME_PERSON, DIFFERENT_PEOPLE]))
                    for _ in range(rng.randrange(3) // 2)
                }
                - {(p.id, SAME_PERSON), (p.id, DIFFERENT_PEOPLE)}
            )
        )
        return PersonCard(
            p.id,
            names=(rng.choice(names),),
            birth_dates=(rng.choice(births),),
            sexes=(rng.choice(["female", "male"]),) if rng.random() < 0.3 else (),
            identifiers=(("nin", rng.choice(["A1234", "B5678"])),) if rng.random() < 0.2 else (),
            links=links,
        )

    final: dict[str, tuple[str | None, PersonCard]] = {}
    for p in patients:  # the records, some with a first card
        person = random_card(p) if rng.random() < 0.5 else None
        await store.write_remote([IncomingUpdate(p.id, p.created, None, orgs[p.id], person)])
        if person is not None:
            final[p.id] = (orgs[p.id], person)
    for _ in range(25):
        chosen = rng.sample(patients, rng.randrange(1, 6))
        way = rng.choice(ways)
        cards = {p.id: random_card(p) for p in chosen}
        if way == "remote":
            # Sometimes a record twice in one batch: its last card is the one kept.
            items = [IncomingUpdate(p.id, p.edit(), None, None, cards[p.id]) for p in chosen]
            if rng.random() < 0.3:
                early = random_card(chosen[0])
                items.insert(0, IncomingUpdate(chosen[0].id, chosen[0].edit(), None, None, early))
            await store.write_remote(items)
        elif way == "local":
            laptop = cast(LaptopStore, store)
            for p in chosen:
                await laptop.write_local(p.id, p.edit(), conflicts=None, person=cards[p.id])
        else:
            await store.set_conflicts_many({}, persons=cards)
        final.update((rid, (orgs[rid], c)) for rid, c in cards.items())
        assert await store.person_pairs() == oracle(final)
    assert await store.person_cards([p.id for p in patients]) == {
        p.id: final[p.id][1] for p in patients if p.id in final
    }
    assert await store.check() == []


class ReplicaStoreSuite:
    """What every replica's store must do: records, conflicts, identity, meta.

    Subclass it (or a part built on it) and implement :meth:`make_store`.
    """

    pytestmark = pytest.mark.asyncio

    def make_store(self, directory: Path, clock: FakeClock) -> AbstractAsyncContextManager[Any]:
        """An async context manager giving a new, empty store that reads ``clock``.

        ``directory`` is the test's own empty directory, for a store that needs files.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement make_store")

    @pytest.fixture
    def clock(self) -> FakeClock:
        """The clock the store reads; tests move it by hand."""
        return FakeClock()

    @pytest_asyncio.fixture
    async def store(self, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Any]:
        """A new, empty store of the kind :meth:`make_store` opens; closed after the test."""
        async with self.make_store(tmp_path, clock) as opened:
            yield opened

    # local edits

    async def test_unknown_records_read_as_none(self, store: ReplicaStore) -> None:
        assert await store.load("nobody") is None
        assert await store.state_vector("nobody") is None
        assert not await store.has_record("nobody")
        assert await store.log_length("nobody") == 0

    # remote updates and feed

    async def test_a_pulled_batch_commits_with_its_checkpoint(self, store: ReplicaStore) -> None:
        a, b = Patient("laptop-b"), Patient("laptop-c")
        items = [remote(a, a.created), remote(b, b.created), remote(a, a.edit("birthDate", "2001"))]
        assert await store.write_remote(items, checkpoint=("pull", "42")) == [0, 0, 0]
        assert await store.get_meta("pull") == "42"
        loaded = await store.load(a.id)
        assert loaded is not None
        assert Record.from_update(a.id, loaded, replica="x").value("birthDate") == "2001"
        assert await store.count_records() == 2

    async def test_a_batch_committed_without_waiting_for_the_disk_reads_as_any(
        self, store: ReplicaStore
    ) -> None:
        a, b = Patient("laptop-b"), Patient("laptop-c")
        await store.write_remote([remote(a, a.created)], checkpoint=("pull", "1"), durable=False)
        # Visible at once, with its checkpoint (the same transaction).
        assert await store.get_meta("pull") == "1"
        assert await store.has_record(a.id)
        await store.make_durable()
        await store.make_durable()  # nothing waits: nothing to do, no error
        await store.write_remote([remote(b, b.created)], checkpoint=("pull", "2"), durable=False)
        edit = a.edit("birthDate", "2001")
        await store.write_remote([remote(a, edit)], checkpoint=("pull", "3"))  # a durable one
        assert await store.get_meta("pull") == "3"
        assert await store.count_records() == 2
        with pytest.raises(InvalidInputError):  # checked as a durable batch is: nothing kept
            await store.write_remote(
                [remote(b, b.edit("birthDate", "1999"))], checkpoint=("", "4"), durable=False
            )
        assert await store.get_meta("pull") == "3"
        loaded = await store.load(b.id)
        assert loaded is not None
        assert Record.from_update(b.id, loaded, replica="x").value("birthDate") is None
        await store.make_durable()

    async def test_updates_arriving_out_of_order_are_all_kept(self, store: ReplicaStore) -> None:
        p = Patient("laptop-b")
        first, second = p.edit("birthDate", "1"), p.edit("birthDate", "2")
        await store.write_remote([remote(p, p.created)])
        await store.write_remote([remote(p, second)])  # its parent has not arrived yet
        await store.write_remote([remote(p, second)])
        await store.write_remote([remote(p, first)])
        loaded = await store.load(p.id)
        assert loaded is not None
        assert Record.from_update(p.id, loaded, replica="x").value("birthDate") == "2"
        vector = await store.state_vector(p.id)
        assert vector is not None
        assert same_vector(vector, p.record.state_vector())
        assert await store.check() == []

    async def test_record_ids_page_in_order_by_organisation(self, store: ReplicaStore) -> None:
        ids = []
        for n in range(12):
            p = Patient()
            org = "org-a" if n % 3 else "org-b"
            await store.write_remote([IncomingUpdate(p.id, p.created, None, org)])
            ids.append((p.id, org))
        everything = await store.record_ids()
        assert everything == sorted(i for i, _ in ids)
        paged: list[str] = []
        after = None
        while page := await store.record_ids(after=after, limit=5):
            paged += page
            after = page[-1]
        assert paged == everything
        assert await store.record_ids("org-b") == sorted(i for i, o in ids if o == "org-b")
        assert await store.count_records() == 12
        assert await store.count_records("org-b") == 4

    # reading in bulk

    async def test_load_many_reads_ids_past_one_query_and_records_written_since(
        self, store: ReplicaStore
    ) -> None:
        patients = [Patient() for _ in range(700)]
        await store.write_remote([remote(p, p.created) for p in patients])
        edited = patients[::50]
        await store.write_remote([remote(p, p.edit("birthDate", "2020")) for p in edited])
        # Known and unknown ids interleaved, more than one IN list holds.
        asked = [rid for p in patients for rid in (p.id, f"unknown-{p.id}")]
        first = await store.load_many(asked)
        assert list(first) == [p.id for p in patients]
        assert all(
            revision_ids(first[p.id], p.id) == {r.id for r in p.record.revisions()} for p in edited
        )
        # A write after a bulk load is seen by the next one (no stale copy kept).
        await store.write_remote([remote(p, p.edit("birthDate", "2021")) for p in edited])
        again = await store.load_many([p.id for p in edited])
        for p in edited:
            assert Record.from_update(p.id, again[p.id], replica="x").value("birthDate") == "2021"

    @pytest.mark.parametrize("bad", ["one-id", b"id", None, 5, [""], ["r", None], ["r" * 300]])
    async def test_bulk_reads_refuse_anything_but_a_sequence_of_ids(
        self, store: ReplicaStore, bad: object
    ) -> None:
        with pytest.raises(InvalidInputError):
            await store.load_many(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError):
            await store.conflict_rows(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError):
            await store.state_vectors(bad)  # type: ignore[arg-type]

    async def test_a_new_record_written_with_its_state_vector_is_stored_as_if_read(
        self, store: ReplicaStore
    ) -> None:
        p = Patient()
        whole = merge([p.created, p.edit("birthDate", "1990")], record_id=p.id)
        vector = state_vector_of(whole, record_id=p.id)
        await store.write_remote([IncomingUpdate(p.id, whole, None, state_vector=vector)])
        assert await store.state_vectors([p.id]) == {p.id: (vector, False)}
        assert revision_ids(await store.load(p.id) or b"", p.id) == {
            r.id for r in p.record.revisions()
        }
        # One that waits for an update not held is marked so, whatever vector it came with.
        q = Patient()
        q.edit("birthDate", "1")
        later = q.edit("birthDate", "2")
        alone = state_vector_of(later, record_id=q.id)
        await store.write_remote([IncomingUpdate(q.id, later, None, state_vector=alone)])
        assert (await store.state_vectors([q.id]))[q.id][1]

    async def test_state_vectors_say_each_records_state_and_waiting_items(
        self, store: ReplicaStore
    ) -> None:
        patients = [Patient() for _ in range(600)]  # more than one IN list holds
        await store.write_remote([remote(p, p.created) for p in patients])
        waiting = patients[0]
        first, second = waiting.edit("birthDate", "1"), waiting.edit("birthDate", "2")
        await store.write_remote([remote(waiting, second)])  # its parent has not arrived
        asked = [rid for p in reversed(patients) for rid in (p.id, f"unknown-{p.id}")]
        vectors = await store.state_vectors(asked)
        assert set(vectors) == {p.id for p in patients}
        for p in patients[1:]:
            vector, pending = vectors[p.id]
            assert not pending
            assert same_vector(vector, p.record.state_vector())
            assert vector == await store.state_vector(p.id)
        assert vectors[waiting.id][1]  # it holds an update that waits
        await store.write_remote([remote(waiting, first)])
        [(vector, pending)] = (await store.state_vectors([waiting.id])).values()
        assert not pending
        assert same_vector(vector, waiting.record.state_vector())
        assert await store.state_vectors([]) == {}

    async def test_held_states_say_the_state_vectors_and_each_stored_cards_digest(
        self, store: ReplicaStore
    ) -> None:
        """``held_states`` (what a pull compares with the server's checks) says what
        ``state_vectors`` says, and a card digest that, where the store gives one, is the
        digest of the card stored at that moment: through a card written, one rewritten
        by an edit of a name, an edit that leaves the card as it is, a reindex, and a
        record that has no card."""
        a = registered("Awa Diop")
        b = registered("Fatou Sow", replica="laptop-b")
        bare = Patient(replica="laptop-c")  # no identifying field: no card
        asked = [b.id, "nobody", a.id, bare.id, a.id]

        async def agree() -> dict[str, bytes | None]:
            held = await store.held_states(asked)
            vectors = await store.state_vectors(asked)
            assert held.keys() == vectors.keys() == {a.id, b.id, bare.id}  # unknown: absent
            cards = await store.person_card_bytes(asked)
            for record_id, state in held.items():
                assert (state.state_vector, state.pending) == vectors[record_id]
                if state.card_digest is not None:
                    assert state.card_digest == card_digest(cards[record_id])
            return {record_id: state.card_digest for record_id, state in held.items()}

        await store.write_remote(
            [
                incoming(a, "org-1"),
                incoming(b, "org-1"),
                IncomingUpdate(bare.id, bare.created, None),
            ]
        )
        first = await agree()
        assert first[bare.id] is None
        a.edit("name", "Awa Ndiaye")
        await store.write_remote([incoming(a, "org-1")])
        renamed = await agree()
        if first[a.id] is not None and renamed[a.id] is not None:
            assert renamed[a.id] != first[a.id]
        b.edit("birthDate", "1991-02-03")  # identifying, so the card changes too
        b.edit("address/city", "Thiès")
        await store.write_remote([incoming(b, "org-1")])
        await agree()
        await store.write_remote(
            [IncomingUpdate(b.id, b.edit("address/city", "Dakar"), None, "org-1")]
        )
        await agree()  # no card written: the digest stands
        await store.set_conflicts_many({a.id: []}, persons={a.id: card(a)})
        await agree()
        assert await store.held_states([]) == {}
        with pytest.raises(InvalidInputError):
            await store.held_states(42)  # type: ignore[arg-type]
        assert await store.check() == []

    async def test_conflict_rows_reads_ids_past_one_query(self, store: ReplicaStore) -> None:
        patients = [Patient() for _ in range(600)]
        await store.write_remote(
            [
                IncomingUpdate(
                    p.id, p.created, (conflict(p.id, 0), conflict(p.id, 1)) if n % 2 else ()
                )
                for n, p in enumerate(patients)
            ]
        )
        rows = await store.conflict_rows([p.id for p in reversed(patients)])
        assert list(rows) == [p.id for n, p in reversed(list(enumerate(patients))) if n % 2]
        assert sum(len(r) for r in rows.values()) == await store.count_conflicts() == 600

    # compaction

    async def test_compacting_an_unknown_record_is_a_typed_error(self, store: ReplicaStore) -> None:
        with pytest.raises(UnknownRecordError):
            await store.compact("nobody")

    # identity, meta

    async def test_identity_can_be_set_and_filled_in_but_never_rebound(
        self, store: ReplicaStore
    ) -> None:
        assert await store.get_identity() is None
        laptop = Identity("laptop-7", "laptop")
        await store.set_identity(laptop)
        assert await store.get_identity() == laptop
        enrolled = Identity("laptop-7", "laptop", "server-1", "wss://clinic", "org-1")
        await store.set_identity(enrolled)
        await store.set_identity(enrolled)
        moved = Identity("laptop-7", "laptop", "server-1", "wss://clinic.new", "org-1")
        await store.set_identity(moved)  # a server may move
        with pytest.raises(WrongServerError):
            await store.set_identity(Identity("laptop-7", "laptop", "server-2", None, "org-1"))
        with pytest.raises(WrongOrganisationError):
            await store.set_identity(Identity("laptop-7", "laptop", "server-1", None, "org-2"))
        with pytest.raises(InvalidInputError):
            await store.set_identity(Identity("laptop-8", "laptop", "server-1", None, "org-1"))
        with pytest.raises(InvalidInputError):
            await store.set_identity(Identity("laptop-7", "server", "server-1", None, "org-1"))
        assert await store.get_identity() == moved

    async def test_meta_keeps_settings_and_refuses_reserved_keys(self, store: ReplicaStore) -> None:
        assert await store.get_meta("checkpoint") is None
        await store.set_meta("checkpoint", "17")
        await store.set_meta("checkpoint", "18")
        assert await store.get_meta("checkpoint") == "18"
        with pytest.raises(InvalidInputError):
            await store.set_meta("caresync.format", "mine")
        with pytest.raises(InvalidInputError):
            await store.write_remote([], checkpoint=("caresync.x", "1"))
        with pytest.raises(InvalidInputError):
            await store.set_meta("k", 5)  # type: ignore[arg-type]

    # the audit trail

    async def test_entries_are_numbered_and_chained_in_order(self, store: ReplicaStore) -> None:
        await set_laptop_identity(store)
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

    async def test_without_an_identity_there_is_no_chain_to_append_to(
        self, store: ReplicaStore
    ) -> None:
        with pytest.raises(Exception, match="no replica yet"):
            await store.append_audit([READ])

    # sessions, secrets, client owners, the outbox summary, the quarantine

    async def test_record_organisations(self, store: ReplicaStore) -> None:
        a, b = Patient(), Patient()
        await store.write_remote([IncomingUpdate(a.id, a.created, None, "clinic")])
        await store.write_remote([IncomingUpdate(b.id, b.created, None, "other")])
        found = await store.record_organisations([a.id, b.id, "nope"])
        assert found == {a.id: "clinic", b.id: "other"}

    async def test_updates_kept_aside_are_stored_with_the_batch(self, store: ReplicaStore) -> None:
        patient = Patient()
        kept = QuarantinedUpdate(patient.id, b"\x01\x02 not an update", "not a valid update")
        await store.write_remote(
            [IncomingUpdate(patient.id, patient.created, None)],
            checkpoint=("sync.checkpoint", "7"),
            quarantine=[kept],
        )
        assert await store.count_quarantined() == 1
        [found] = await store.quarantined()
        assert (found.record_id, found.update, found.reason) == (
            patient.id,
            kept.update,
            kept.reason,
        )
        assert found.id >= 1
        assert await store.quarantined("another-record") == []
        assert await store.get_meta("sync.checkpoint") == "7"

    # the person index

    async def test_records_of_different_organisations_never_pair(self, store: ReplicaStore) -> None:
        one = [registered("Awa Diop", replica=f"laptop-{n}") for n in range(5)]
        one[4].edit(link_path(one[1].id), SAME_PERSON)  # a decision about a record it cannot see
        await store.write_remote(
            [
                incoming(one[0], "org-1"),
                incoming(one[1], "org-2"),
                incoming(one[2]),  # no organisation: pairs only with records of none
                incoming(one[3]),
                incoming(one[4], "org-3"),
            ]
        )
        [pair] = await store.person_pairs()
        assert set(pair.record_ids) == {one[2].id, one[3].id}
        assert await store.person_pairs(organisation="org-1") == []
        assert await store.person_pairs(one[1].id) == []
        assert await store.check() == []

    async def test_a_record_given_an_organisation_later_is_compared_within_it(
        self, store: ReplicaStore
    ) -> None:
        a, b = registered("Awa Diop"), registered("Awa Diop", replica="laptop-b")
        await store.write_remote([incoming(a, "org-1"), incoming(b, None)])
        assert await store.person_pairs() == []
        stored = card(b)
        await store.write_remote([IncomingUpdate(b.id, b.edit(), None, "org-1")])  # no new card
        assert await store.person_cards([b.id]) == {b.id: stored}
        [pair] = await store.person_pairs(organisation="org-1")
        assert set(pair.record_ids) == {a.id, b.id}
        assert await store.check() == []

    async def test_a_batch_that_fails_stores_none_of_its_cards(self, store: ReplicaStore) -> None:
        a, b = registered("Awa Diop"), registered("Awa Diop", replica="laptop-b")
        await store.write_remote([incoming(a)])
        with pytest.raises(InvalidUpdateError):
            await store.write_remote(
                [incoming(b), IncomingUpdate(a.id, b"not an update", None, person=card(a))]
            )
        assert await store.person_cards([a.id, b.id]) == {a.id: card(a)}
        assert await store.person_pairs() == []
        assert not await store.has_record(b.id)

    async def test_a_reindex_through_set_conflicts_many_rebuilds_the_pairs(
        self, store: ReplicaStore
    ) -> None:
        patients = [registered("Awa Diop", replica=f"laptop-{n}") for n in range(3)]
        patients[2].edit("name", "Fatou Sow")
        await store.write_remote([incoming(p, "org-1", person=False) for p in patients])
        assert await store.person_pairs() == []  # an index built before this version: empty
        cards = {p.id: card(p) for p in patients}
        await store.set_conflicts_many({p.id: [] for p in patients}, persons=cards)
        assert await store.person_pairs() == oracle({rid: ("org-1", c) for rid, c in cards.items()})
        assert len(await store.person_pairs(organisation="org-1")) == 1  # the stored organisation
        assert await store.person_cards(list(cards)) == cards
        assert await store.check() == []

    async def test_pair_counts_equal_the_pairs_listed_in_each_state(
        self, store: ReplicaStore
    ) -> None:
        """``count_person_pairs`` (what a sync's report reads) counts what ``person_pairs``
        lists, through pairs made, linked, and undone."""

        async def counted() -> dict[PairState | None, int]:
            states: list[PairState | None] = [None, *PairState]
            listed = {s: len(await store.person_pairs(state=s)) for s in states}
            assert {s: await store.count_person_pairs(s) for s in states} == listed
            together = await store.open_counts()  # the three counts a sync reports, at once
            assert together.pairs == listed[None]
            assert together.linked_pairs == listed[PairState.LINKED]
            assert (
                together.conflicts == await store.count_conflicts() == len(await store.conflicts())
            )
            return listed

        assert (await counted())[None] == 0
        a, b, c = (registered("Awa Diop", replica=f"laptop-{n}") for n in range(3))
        await store.write_remote([incoming(p, "org-1") for p in (a, b, c)])
        assert (await counted())[PairState.POSSIBLE] == 3
        a.edit(link_path(b.id), SAME_PERSON)
        await store.write_remote([incoming(a, "org-1")])
        found = await counted()
        assert (found[PairState.POSSIBLE], found[PairState.LINKED]) == (2, 1)
        c.edit("name", "Fatou Sow")
        await store.write_remote([incoming(c, "org-1")])
        d = Patient("laptop-d")
        await store.write_remote([IncomingUpdate(d.id, d.created, (conflict(d.id, 1),))])
        assert (await store.open_counts()).conflicts == 1
        assert await counted() == {
            None: 1,
            PairState.POSSIBLE: 0,
            PairState.LINKED: 1,
            PairState.DISPUTED: 0,
        }

    # what a store without an outbox is checked on too (records written as received)

    async def test_received_conflict_rows_list_in_order_page_and_are_replaced(
        self, store: ReplicaStore
    ) -> None:
        patients = [Patient("laptop-b") for _ in range(4)]
        await store.write_remote(
            [
                IncomingUpdate(p.id, p.created, tuple(conflict(p.id, n) for n in range(3)))
                for p in patients
            ]
        )
        everything = await store.conflicts()
        assert len(everything) == 12
        assert everything == sorted(everything, key=lambda c: (c.record_id, c.id))
        pages: list[ConflictRow] = []
        after = None
        while page := await store.conflicts(limit=5, after=after):
            pages.extend(page)
            after = (page[-1].record_id, page[-1].id)
        assert pages == everything
        first = patients[0]
        await store.write_remote([remote(first, first.edit())])  # None: the rows stay
        assert await store.count_conflicts(first.id) == 3
        await store.write_remote([IncomingUpdate(first.id, first.edit(), (conflict(first.id, 7),))])
        assert await store.conflict_rows([first.id]) == {first.id: (conflict(first.id, 7),)}
        await store.write_remote([IncomingUpdate(first.id, first.edit(), ())])
        assert await store.count_conflicts(first.id) == 0
        assert await store.count_conflicts() == 9
        assert await store.check() == []

    async def test_set_conflicts_of_received_records_all_or_nothing(
        self, store: ReplicaStore
    ) -> None:
        p, q, stranger = Patient("laptop-b"), Patient("laptop-b"), Patient("laptop-b")
        with pytest.raises(UnknownRecordError):
            await store.set_conflicts(p.id, [conflict(p.id)])
        await store.write_remote([remote(p, p.created), remote(q, q.created)])
        await store.set_conflicts(p.id, [conflict(p.id, 3)])
        assert await store.conflicts() == [conflict(p.id, 3)]
        before = await store.conflicts()
        with pytest.raises(UnknownRecordError, match=stranger.id):
            await store.set_conflicts_many(
                {p.id: [conflict(p.id, 7)], q.id: [], stranger.id: [conflict(stranger.id)]}
            )
        with pytest.raises(InvalidInputError):
            await store.set_conflicts_many({p.id: [conflict(p.id, 7)], q.id: [conflict(p.id)]})
        assert await store.conflicts() == before
        await store.set_conflicts_many({p.id: [], q.id: [conflict(q.id, 1)]})
        assert await store.conflict_rows([p.id, q.id]) == {q.id: (conflict(q.id, 1),)}
        assert await store.check() == []

    async def test_a_received_record_belongs_to_one_organisation(self, store: ReplicaStore) -> None:
        p = Patient("laptop-b")
        await store.write_remote([remote(p, p.created, "org-1")])
        await store.write_remote([remote(p, p.edit())])  # None: the record's own
        with pytest.raises(InvalidInputError):
            await store.write_remote([remote(p, p.edit(), "org-2")])
        assert await store.record_organisations([p.id]) == {p.id: "org-1"}
        assert await store.record_ids("org-2") == []

    async def test_a_closed_store_refuses_reads_and_writes(self, store: ReplicaStore) -> None:
        await store.close()
        await store.close()
        with pytest.raises(StorageError):
            await store.count_records()
        with pytest.raises(StorageError):
            await store.write_remote([])
        with pytest.raises(StorageError):
            await store.load_many([])
        with pytest.raises(StorageError):
            await store.get_meta("k")


class LaptopStoreSuite(ReplicaStoreSuite):
    """What a laptop's store must do besides: local writes, the outbox, unsynced work."""

    # local edits

    async def test_a_local_edit_is_stored_in_the_record_and_the_outbox(
        self, store: LaptopStore
    ) -> None:
        p = Patient()
        first = await store.write_local(p.id, p.created, conflicts=[])
        second = await store.write_local(p.id, p.edit("birthDate", "1990-01-01"), conflicts=[])
        assert second > first > 0
        loaded = await store.load(p.id)
        assert loaded is not None
        assert Record.from_update(p.id, loaded, replica="x").value("birthDate") == "1990-01-01"
        vector = await store.state_vector(p.id)
        assert vector is not None
        assert same_vector(vector, p.record.state_vector())
        assert same_vector(vector, state_vector_of(loaded))
        assert [(i.seq, i.update) for i in await store.pending()] == [
            (first, p.updates[0]),
            (second, p.updates[1]),
        ]
        assert await store.has_record(p.id)
        assert await store.log_length(p.id) == 2
        assert await store.check() == []

    async def test_a_bad_update_for_an_existing_record_changes_nothing(
        self, store: LaptopStore
    ) -> None:
        p = Patient()
        await store.write_local(p.id, p.created, conflicts=[])
        before = await store.load(p.id)
        with pytest.raises(InvalidUpdateError):
            await store.write_local(p.id, b"\x01\x02\x03", conflicts=[])
        assert await store.load(p.id) == before
        assert await store.pending_count() == 1
        assert await store.check() == []

    @pytest.mark.parametrize(
        ("record_id", "update"),
        [
            ("", b"\x00\x00"),
            (None, b"\x00\x00"),
            ("r", "text"),
            ("r", None),
            ("r" * 300, b"\x00\x00"),
        ],
    )
    async def test_bad_arguments_are_typed_errors(
        self, store: LaptopStore, record_id: object, update: object
    ) -> None:
        with pytest.raises(InvalidInputError):
            await store.write_local(record_id, update, conflicts=None)  # type: ignore[arg-type]

    async def test_outbox_numbers_only_grow_even_after_everything_was_acknowledged(
        self,
        store: LaptopStore,
    ) -> None:
        p = Patient()
        seqs = [await store.write_local(p.id, p.created, conflicts=None)]
        seqs += [await store.write_local(p.id, p.edit(), conflicts=None) for _ in range(3)]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == 4
        assert await store.acknowledge(seqs[-1]) == 4
        assert await store.pending_count() == 0
        later = await store.write_local(p.id, p.edit(), conflicts=None)
        assert later > seqs[-1]

    async def test_concurrent_local_writes_all_commit_with_distinct_numbers(
        self, store: LaptopStore
    ) -> None:
        patients = [Patient() for _ in range(20)]
        seqs = await asyncio.gather(
            *(store.write_local(p.id, p.created, conflicts=None) for p in patients)
        )
        assert len(set(seqs)) == 20
        assert await store.count_records() == 20
        assert await store.pending_count() == 20
        assert await store.check() == []

    # outbox

    async def test_pending_pages_in_order_and_acknowledge_keeps_the_records(
        self, store: LaptopStore, clock: FakeClock
    ) -> None:
        p = Patient()
        await store.write_local(p.id, p.created, conflicts=None)
        for _ in range(5):
            clock.advance(1000)
            await store.write_local(p.id, p.edit(), conflicts=None)
        everything = await store.pending()
        assert len(everything) == 6
        assert await store.pending(2) == everything[:2]
        assert await store.pending(2, after_seq=everything[1].seq) == everything[2:4]
        assert await store.oldest_pending_ms() == everything[0].created_ms
        assert everything[-1].created_ms - everything[0].created_ms == 5000

        assert await store.acknowledge(everything[2].seq) == 3
        assert await store.pending() == everything[3:]
        assert await store.oldest_pending_ms() == everything[3].created_ms
        assert await store.acknowledge(everything[2].seq) == 0  # a repeated ack is harmless
        # The record still holds every edit: acknowledging only empties the outbox.
        loaded = await store.load(p.id)
        assert loaded is not None
        assert revision_ids(loaded, p.id) == {r.id for r in p.record.revisions()}
        assert await store.acknowledge(everything[-1].seq) == 3
        assert await store.oldest_pending_ms() is None

    async def test_acknowledging_a_number_never_given_out_is_refused(
        self, store: LaptopStore
    ) -> None:
        p = Patient()
        seq = await store.write_local(p.id, p.created, conflicts=None)
        with pytest.raises(InvalidInputError):
            await store.acknowledge(seq + 1)
        with pytest.raises(InvalidInputError):
            await store.acknowledge(-1)
        assert await store.pending_count() == 1

    async def test_remote_updates_never_enter_the_outbox(self, store: LaptopStore) -> None:
        p = Patient("laptop-b")
        await store.write_remote([remote(p, p.created), remote(p, p.edit())])
        assert await store.pending_count() == 0
        assert await store.count_records() == 1

    # conflicts

    async def test_conflict_rows_are_replaced_with_the_update_that_changed_them(
        self, store: LaptopStore
    ) -> None:
        p, q = Patient(), Patient()
        await store.write_local(p.id, p.created, conflicts=[conflict(p.id, 0), conflict(p.id, 1)])
        await store.write_local(q.id, q.created, conflicts=[conflict(q.id, 0)])
        assert await store.count_conflicts() == 3
        assert await store.count_conflicts(p.id) == 2
        # None leaves the rows; a new list replaces them; an empty one clears them.
        await store.write_local(p.id, p.edit(), conflicts=None)
        assert await store.count_conflicts(p.id) == 2
        await store.write_local(p.id, p.edit(), conflicts=[conflict(p.id, 7)])
        assert [c.id for c in await store.conflicts(p.id)] == [conflict(p.id, 7).id]
        await store.write_remote([IncomingUpdate(p.id, p.edit(), ())])
        assert await store.conflicts(p.id) == []
        assert await store.conflicts() == [conflict(q.id, 0)]

    async def test_conflicts_list_in_order_and_page(self, store: LaptopStore) -> None:
        patients = [Patient() for _ in range(5)]
        for p in patients:
            await store.write_local(
                p.id, p.created, conflicts=[conflict(p.id, n) for n in range(3)]
            )
        everything = await store.conflicts()
        assert len(everything) == 15
        assert everything == sorted(everything, key=lambda c: (c.record_id, c.id))
        pages: list[ConflictRow] = []
        after = None
        while page := await store.conflicts(limit=4, after=after):
            pages.extend(page)
            after = (page[-1].record_id, page[-1].id)
        assert pages == everything
        one = patients[2].id
        assert (
            await store.conflicts(one, limit=2) == [c for c in everything if c.record_id == one][:2]
        )
        assert all(isinstance(c.payload, bytes) for c in everything)

    async def test_conflict_rows_of_another_record_or_twice_one_id_are_refused(
        self, store: LaptopStore
    ) -> None:
        p, q = Patient(), Patient()
        with pytest.raises(InvalidInputError):
            await store.write_local(p.id, p.created, conflicts=[conflict(q.id)])
        with pytest.raises(InvalidInputError):
            await store.write_local(p.id, p.created, conflicts=[conflict(p.id), conflict(p.id)])
        with pytest.raises(InvalidInputError):
            IncomingUpdate(p.id, p.created, (conflict(q.id),))
        assert await store.count_records() == 0

    async def test_set_conflicts_replaces_rows_of_a_stored_record_only(
        self, store: LaptopStore
    ) -> None:
        p = Patient()
        with pytest.raises(UnknownRecordError):
            await store.set_conflicts(p.id, [conflict(p.id)])
        await store.write_local(p.id, p.created, conflicts=None)
        await store.set_conflicts(p.id, [conflict(p.id, 3)])
        assert await store.conflicts() == [conflict(p.id, 3)]
        await store.set_conflicts(p.id, [])
        assert await store.count_conflicts() == 0

    async def test_set_conflicts_many_replaces_the_rows_of_the_records_named(
        self, store: LaptopStore
    ) -> None:
        p, q, r = Patient(), Patient(), Patient()
        for patient in (p, q, r):
            await store.write_local(patient.id, patient.created, conflicts=[conflict(patient.id)])
        await store.set_conflicts_many(
            {p.id: [conflict(p.id, 1), conflict(p.id, 2)], q.id: (), r.id: [conflict(r.id)]}
        )
        assert await store.conflict_rows([p.id, q.id, r.id]) == {
            p.id: (conflict(p.id, 1), conflict(p.id, 2)),
            r.id: (conflict(r.id),),
        }
        await store.set_conflicts_many({q.id: [conflict(q.id, 5)]})  # the others keep theirs
        assert await store.count_conflicts() == 4
        await store.set_conflicts_many({})
        assert await store.count_conflicts() == 4
        assert await store.check() == []

    async def test_set_conflicts_many_stores_nothing_half_way(self, store: LaptopStore) -> None:
        p, q, stranger = Patient(), Patient(), Patient()
        for patient in (p, q):
            await store.write_local(patient.id, patient.created, conflicts=[conflict(patient.id)])
        before = await store.conflicts()
        good = {p.id: [conflict(p.id, 7)], q.id: []}
        # The bad part comes last, so a store that wrote as it checked would be caught.
        with pytest.raises(UnknownRecordError, match=stranger.id):
            await store.set_conflicts_many({**good, stranger.id: [conflict(stranger.id)]})
        bad_inputs: list[object] = [
            {**good, "r-x": [conflict(p.id, 8)]},  # rows of another record
            {**good, q.id: [conflict(q.id, 1), conflict(q.id, 1)]},  # one id twice
            {**good, q.id: 5},  # not rows at all
            {**good, q.id: "rows"},
            {**good, 7: []},  # type: ignore[misc]  # not a record id
            [(p.id, [conflict(p.id, 7)])],  # not a mapping
        ]
        for bad in bad_inputs:
            with pytest.raises(InvalidInputError):
                await store.set_conflicts_many(bad)  # type: ignore[arg-type]
        assert await store.conflicts() == before
        assert await store.check() == []

    async def test_set_conflicts_many_names_the_first_unknown_record_and_how_many_more(
        self,
        store: LaptopStore,
    ) -> None:
        p, q, r = Patient(), Patient(), Patient()
        await store.write_local(q.id, q.created, conflicts=None)
        with pytest.raises(UnknownRecordError) as refused:
            await store.set_conflicts_many({p.id: [], q.id: [], r.id: []})
        assert p.id in str(refused.value)
        assert "1 more of the 3" in str(refused.value)

    # remote updates and feed

    async def test_a_record_belongs_to_one_organisation(self, store: LaptopStore) -> None:
        p = Patient()
        await store.write_local(p.id, p.created, conflicts=None, organisation="org-1")
        await store.write_local(p.id, p.edit(), conflicts=None)  # None: the record's own
        with pytest.raises(InvalidInputError):
            await store.write_local(p.id, p.edit(), conflicts=None, organisation="org-2")
        with pytest.raises(InvalidInputError):
            await store.write_remote([IncomingUpdate(p.id, p.edit(), None, "org-2")])
        assert await store.log_length(p.id) == 2
        assert await store.record_ids("org-1") == [p.id]
        assert await store.record_ids("org-2") == []

    # reading in bulk

    async def test_load_many_returns_what_load_returns_for_each_known_record(
        self, store: LaptopStore
    ) -> None:
        compacted, logged, fresh = Patient(), Patient("laptop-b"), Patient("laptop-c")
        await store.write_local(compacted.id, compacted.created, conflicts=None)
        await store.write_local(compacted.id, compacted.edit("birthDate", "1970"), conflicts=None)
        await store.compact(compacted.id)
        await store.write_local(compacted.id, compacted.edit("name", "Ada"), conflicts=None)
        await store.write_remote([remote(logged, logged.created), remote(logged, logged.edit())])
        await store.write_remote([remote(fresh, fresh.created)])
        asked = [fresh.id, "nobody", compacted.id, logged.id, compacted.id]
        loaded = await store.load_many(asked)
        assert list(loaded) == [fresh.id, compacted.id, logged.id]  # as asked, once, unknown absent
        for p in (compacted, logged, fresh):
            assert loaded[p.id] == await store.load(p.id)
            assert revision_ids(loaded[p.id], p.id) == {r.id for r in p.record.revisions()}
        assert Record.from_update(compacted.id, loaded[compacted.id], replica="x").value(
            "name"
        ) == ("Ada")
        assert await store.load_many([]) == {}
        assert await store.load_many(("nobody",)) == {}

    async def test_conflict_rows_of_many_records_in_one_call(self, store: LaptopStore) -> None:
        two, none, later = Patient(), Patient(), Patient()
        await store.write_local(
            two.id, two.created, conflicts=[conflict(two.id, 5), conflict(two.id, 1)]
        )
        await store.write_local(none.id, none.created, conflicts=[])
        await store.write_local(later.id, later.created, conflicts=None)
        rows = await store.conflict_rows([later.id, none.id, two.id, "nobody", two.id])
        # Records without rows (stored or not) are absent; each record's rows ordered by id.
        assert rows == {two.id: (conflict(two.id, 1), conflict(two.id, 5))}
        await store.set_conflicts(later.id, [conflict(later.id, 3)])
        await store.write_remote([IncomingUpdate(two.id, two.edit(), ())])  # cleared with an update
        rows = await store.conflict_rows([two.id, later.id])
        assert rows == {later.id: (conflict(later.id, 3),)}
        assert rows.get(two.id, ()) == ()
        assert await store.conflict_rows([]) == {}
        assert rows[later.id] == tuple(await store.conflicts(later.id))

    # compaction

    async def test_compaction_folds_the_log_and_keeps_every_revision_and_the_outbox(
        self,
        store: LaptopStore,
    ) -> None:
        p = Patient()
        peer = p.copy("laptop-b")
        await store.write_local(p.id, p.created, conflicts=None)
        for n in range(10):
            await store.write_local(p.id, p.edit("birthDate", f"19{n:02d}"), conflicts=None)
        await store.write_remote([remote(peer, peer.edit("name", "Ada"))])
        before = await store.load(p.id)
        vector = await store.state_vector(p.id)
        outbox = await store.pending()
        assert await store.compact(p.id) == 12
        assert await store.log_length(p.id) == 0
        after = await store.load(p.id)
        assert after is not None
        assert before is not None
        assert vector is not None
        assert await store.state_vector(p.id) == vector
        assert same_vector(vector, state_vector_of(after))
        assert revision_ids(after, p.id) == revision_ids(before, p.id)
        assert len(revision_ids(after, p.id)) == 11  # history is the audit trail: all kept
        assert await store.pending() == outbox
        assert await store.compact(p.id) == 0
        # Writing on after a compaction works as before.
        await store.write_local(p.id, p.edit("birthDate", "2000"), conflicts=None)
        loaded = await store.load(p.id)
        assert loaded is not None
        assert Record.from_update(p.id, loaded, replica="x").value("birthDate") == "2000"
        assert await store.check() == []

    # unsynced changes

    async def test_discarding_unsynced_changes_needs_an_export_that_holds_them_all(
        self, store: LaptopStore, tmp_path: Path
    ) -> None:
        p = Patient()
        await store.write_local(p.id, p.created, conflicts=None)
        await store.write_local(p.id, p.edit(), conflicts=None)
        export = tmp_path / "unsynced.caresync"
        with pytest.raises(UnsyncedChangesError):
            await store.discard_unsynced(exported_to=export)
        assert await store.export_unsynced(export) == 2
        await store.write_local(p.id, p.edit(), conflicts=None)  # not in the export
        with pytest.raises(UnsyncedChangesError):
            await store.discard_unsynced(exported_to=export)
        assert await store.pending_count() == 3
        complete = tmp_path / "complete.caresync"
        assert await store.export_unsynced(complete) == 3
        assert await store.discard_unsynced(exported_to=complete) == 3
        assert await store.pending_count() == 0
        loaded = await store.load(p.id)
        assert loaded is not None
        assert len(revision_ids(loaded, p.id)) == 2  # the records keep the edits

    async def test_a_record_set_aside_keeps_its_entries_apart_until_taken(
        self, store: LaptopStore, tmp_path: Path
    ) -> None:
        held, other = Patient(), Patient()
        first = await store.write_local(held.id, held.created, conflicts=None)
        await store.write_local(other.id, other.created, conflicts=None)
        assert await store.set_aside(held.id, "bad_message: refused") == 1
        # Not pushed, yet unsynced: counted, never acknowledged away, exported.
        assert [item.record_id for item in await store.pending()] == [other.id]
        assert await store.pending_count() == 2
        await store.acknowledge(first + 1)
        assert await store.pending_count() == 1
        [listed] = await store.set_aside_records()
        assert (listed.record_id, listed.reason, listed.entries) == (
            held.id,
            "bad_message: refused",
            1,
        )
        later = held.edit()
        await store.write_local(held.id, later, conflicts=None)  # builds on what was refused
        export = tmp_path / "unsynced.caresync"
        assert await store.export_unsynced(export) == 2
        assert (await store.set_aside_records())[0].entries == 2
        assert await store.check() == []
        # Queued again: the set-aside entry first, then the later one, after all else.
        assert await store.take_back_set_aside() == 2
        again = await store.pending()
        assert [item.update for item in again] == [held.created, later]
        assert again[0].seq > first + 1
        assert [r.record_id for r in await store.set_aside_records()] == [held.id]
        await store.acknowledge(again[-1].seq)  # taken: the record leaves the list
        assert await store.set_aside_records() == []
        assert await store.pending_count() == 0

    async def test_discarding_needs_an_export_holding_what_was_set_aside(
        self, store: LaptopStore, tmp_path: Path
    ) -> None:
        p = Patient()
        await store.write_local(p.id, p.created, conflicts=None)
        partial = tmp_path / "before.caresync"
        await store.export_unsynced(partial)
        await store.write_local(p.id, p.edit(), conflicts=None)
        await store.set_aside(p.id, "forbidden: refused")
        with pytest.raises(UnsyncedChangesError):
            await store.discard_unsynced(exported_to=partial)
        assert await store.pending_count() == 2
        complete = tmp_path / "complete.caresync"
        await store.export_unsynced(complete)
        assert await store.discard_unsynced(exported_to=complete) == 2
        assert await store.pending_count() == 0
        assert await store.set_aside_records() == []

    async def test_an_export_never_overwrites_a_file(
        self, store: LaptopStore, tmp_path: Path
    ) -> None:
        p = Patient()
        await store.write_local(p.id, p.created, conflicts=None)
        precious = tmp_path / "precious.txt"
        precious.write_text("the user's own file")
        before = digest(precious)
        with pytest.raises(ExportFileError):
            await store.export_unsynced(precious)
        assert digest(precious) == before
        with pytest.raises(UnsyncedChangesError):
            await store.discard_unsynced(exported_to=precious)
        assert await store.pending_count() == 1

    async def test_a_damaged_export_is_refused_whole(
        self, store: LaptopStore, tmp_path: Path
    ) -> None:
        p = Patient()
        await store.write_local(p.id, p.created, conflicts=None)
        await store.write_local(p.id, p.edit(), conflicts=None)
        export = tmp_path / "out.caresync"
        await store.export_unsynced(export)
        data = export.read_bytes()
        truncated = tmp_path / "truncated.caresync"
        truncated.write_bytes(data[: len(data) // 2])
        flipped = tmp_path / "flipped.caresync"
        flipped.write_bytes(data.replace(b'"seq":2', b'"seq":3'))
        for bad in (truncated, flipped):
            with pytest.raises(ExportFileError):
                await store.import_unsynced(bad)
            with pytest.raises(UnsyncedChangesError):
                await store.discard_unsynced(exported_to=bad)
        assert await store.pending_count() == 2

    async def test_an_import_reapplies_the_updates_as_local_writes(
        self, store: LaptopStore, tmp_path: Path
    ) -> None:
        p = Patient()
        source = MemoryStore()
        await source.write_local(p.id, p.created, conflicts=None, organisation="org-1")
        await source.write_local(p.id, p.edit("birthDate", "1980"), conflicts=None)
        export = tmp_path / "from-old-laptop.caresync"
        assert await source.export_unsynced(export) == 2
        assert await store.import_unsynced(export) == 2
        assert [i.update for i in await store.pending()] == p.updates
        assert await store.record_ids("org-1") == [p.id]
        loaded = await store.load(p.id)
        assert loaded is not None
        assert Record.from_update(p.id, loaded, replica="x").value("birthDate") == "1980"
        assert await store.check() == []

    async def test_an_import_stores_the_conflict_rows_given_in_the_same_write(
        self, store: LaptopStore, tmp_path: Path
    ) -> None:
        p, q, kept = Patient(), Patient(), Patient()
        await store.write_local(kept.id, kept.created, conflicts=[conflict(kept.id)])
        await store.write_local(q.id, q.created, conflicts=[conflict(q.id)])
        source = MemoryStore()
        for patient in (p, q):
            await source.write_local(patient.id, patient.created, conflicts=None, organisation="o")
            await source.write_local(patient.id, patient.edit(), conflicts=None)
        export = tmp_path / "unsynced.caresync"
        assert await source.export_unsynced(export) == 4
        rows = {p.id: [conflict(p.id, 1)], q.id: []}
        assert await store.import_unsynced(export, conflicts=rows) == 4
        assert await store.conflict_rows([p.id, q.id, kept.id]) == {
            p.id: (conflict(p.id, 1),),  # a record new to this store has its rows at once
            kept.id: (conflict(kept.id),),  # not touched, not named: kept
        }
        assert await store.pending_count() == 6
        assert await store.check() == []

    async def test_several_local_edits_commit_together_or_not_at_all(
        self, store: LaptopStore
    ) -> None:
        a, b = Patient(), Patient()
        edit = a.edit("birthDate", "1970-01-01")
        seqs = await store.write_local_many(
            [
                IncomingUpdate(a.id, a.created, (conflict(a.id),), "o"),
                IncomingUpdate(b.id, b.created, (), "o"),
                IncomingUpdate(a.id, edit, None, "o"),
            ]
        )
        assert len(seqs) == 3
        assert seqs == sorted(seqs)
        assert [item.update for item in await store.pending()] == [a.created, b.created, edit]
        assert sorted(await store.record_ids()) == sorted([a.id, b.id])
        assert await store.count_conflicts() == 1
        assert await store.write_local_many([]) == []

        c = Patient()
        before = await store.pending_count()
        with pytest.raises(InvalidUpdateError):  # one bad update: none of the batch is stored
            await store.write_local_many(
                [
                    IncomingUpdate(c.id, c.created, (), "o"),
                    IncomingUpdate(c.id, b"\x00 bad", (), "o"),
                ]
            )
        with pytest.raises(InvalidInputError):
            await store.write_local_many([(c.id, c.created)])  # type: ignore[list-item]
        assert await store.pending_count() == before
        assert c.id not in await store.record_ids()

    async def test_an_import_with_bad_conflict_rows_imports_nothing(
        self, store: LaptopStore, tmp_path: Path
    ) -> None:
        p, untouched = Patient(), Patient()
        await store.write_local(untouched.id, untouched.created, conflicts=None)
        source = MemoryStore()
        await source.write_local(p.id, p.created, conflicts=None, organisation="o")
        export = tmp_path / "unsynced.caresync"
        await source.export_unsynced(export)
        bad_inputs: list[object] = [
            {untouched.id: []},  # a record the import does not touch
            {p.id: [conflict(untouched.id)]},  # rows of another record
            {p.id: [conflict(p.id), conflict(p.id)]},  # one id twice
            [p.id],  # not a mapping
        ]
        for bad in bad_inputs:
            with pytest.raises(InvalidInputError):
                await store.import_unsynced(export, conflicts=bad)  # type: ignore[arg-type]
        assert await store.pending_count() == 1
        assert await store.record_ids() == [untouched.id]
        assert await store.count_conflicts() == 0

    # lifecycle

    async def test_a_closed_store_refuses_every_call(self, store: LaptopStore) -> None:
        await store.close()
        await store.close()
        with pytest.raises(StorageError):
            await store.pending_count()
        with pytest.raises(StorageError):
            await store.write_local("r", b"\x00\x00", conflicts=None)
        with pytest.raises(StorageError):
            await store.load_many([])
        with pytest.raises(StorageError):
            await store.conflict_rows(["r"])
        with pytest.raises(StorageError):
            await store.set_conflicts_many({"r": []})

    # the audit trail

    async def test_an_entry_commits_with_the_edit_it_records_or_not_at_all(
        self, store: LaptopStore
    ) -> None:
        await set_laptop_identity(store)
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

    # sessions, secrets, client owners, the outbox summary, the quarantine

    async def test_the_outbox_reads_agree_whatever_its_length_and_its_updates_sizes(
        self, store: LaptopStore, clock: FakeClock
    ) -> None:
        """Pages, the summary and the oldest time say what the whole outbox holds, from
        empty to past 16 updates (a store may read a few rows another way than many:
        SQLite's brief reads), with a large update among them or the oldest (a batch of
        large values, as an attachment made offline)."""
        large = Patient()
        writes = [Patient() for _ in range(3)]
        for patient in writes:
            clock.advance(1000)
            await store.write_local(patient.id, patient.created, conflicts=None)
        clock.advance(1000)
        await store.write_local(large.id, large.created, conflicts=None)
        clock.advance(1000)
        parts = [large.edit("note", f"{n}" + "x" * (100 * 1024)) for n in range(3)]
        big = merge(parts, record_id=large.id)
        await store.write_local(large.id, big, conflicts=None)
        for _ in range(14):
            patient = Patient()
            clock.advance(1000)
            await store.write_local(patient.id, patient.created, conflicts=None)
        everything = await store.pending(10_000)
        assert [item.seq for item in everything] == list(range(1, 20))
        assert everything[4].update == big
        assert [item.created_ms for item in everything] == sorted(
            {item.created_ms for item in everything}
        )
        for acknowledged in (0, 3, 4, 5, 17, 19):
            await store.acknowledge(acknowledged)
            waiting = everything[acknowledged:]
            summary = await store.outbox_summary()
            assert (summary.pending, summary.first_seq, summary.last_seq) == (
                len(waiting),
                waiting[0].seq if waiting else None,
                19,
            )
            assert summary.oldest_pending_ms == (waiting[0].created_ms if waiting else None)
            assert await store.oldest_pending_ms() == summary.oldest_pending_ms
            for after in (0, acknowledged, 4, 5, 18):
                for limit in (1, 2, 16, 17, 1000):
                    page = await store.pending(limit, after_seq=after)
                    assert page == [item for item in waiting if item.seq > after][:limit]

    async def test_the_outbox_summary_agrees_with_itself(self, store: LaptopStore) -> None:
        patient = Patient()
        empty = await store.outbox_summary()
        assert (empty.pending, empty.oldest_pending_ms, empty.first_seq, empty.last_seq) == (
            0,
            None,
            None,
            0,
        )
        for _ in range(3):
            await store.write_local(patient.id, patient.edit(), conflicts=None)
        summary = await store.outbox_summary()
        assert (summary.pending, summary.first_seq, summary.last_seq) == (3, 1, 3)
        assert summary.acknowledged_up_to == 0
        await store.acknowledge(2)
        summary = await store.outbox_summary()
        assert (summary.pending, summary.first_seq, summary.acknowledged_up_to) == (1, 3, 2)
        await store.acknowledge(3)
        assert (await store.outbox_summary()).acknowledged_up_to == 3

    async def test_an_acknowledgement_sets_its_checkpoint_in_its_transaction(
        self, store: LaptopStore
    ) -> None:
        """``acknowledge(checkpoint=...)``: the meta key with the rows dropped; a refused
        acknowledgement sets nothing."""
        patient = Patient()
        seqs = [await store.write_local(patient.id, patient.edit(), conflicts=None) for _ in "ab"]
        assert await store.acknowledge(seqs[0], checkpoint=("sync.acked", "1")) == 1
        assert await store.get_meta("sync.acked") == "1"
        with pytest.raises(InvalidInputError):
            await store.acknowledge(seqs[-1] + 1, checkpoint=("sync.acked", "9"))
        assert await store.get_meta("sync.acked") == "1"
        assert await store.pending_count() == 1

    async def test_renumbering_moves_waiting_updates_past_the_servers_mark(
        self, store: LaptopStore
    ) -> None:
        patient = Patient()
        for _ in range(3):
            await store.write_local(patient.id, patient.edit(), conflicts=None)
        await store.acknowledge(1)
        waiting = [(i.record_id, i.update) for i in await store.pending()]
        assert await store.renumber_outbox(10, checkpoint=("pull.include_own", "1")) == 2
        after = await store.pending()
        assert [i.seq for i in after] == [11, 12]
        assert [(i.record_id, i.update) for i in after] == waiting  # the same, in order
        assert await store.get_meta("pull.include_own") == "1"
        seq = await store.write_local(patient.id, patient.edit(), conflicts=None)
        assert seq == 13  # later writes follow
        # A mark below what this replica gave out renumbers after its own last number.
        assert await store.renumber_outbox(0) == 3
        assert [i.seq for i in await store.pending()] == [14, 15, 16]

    async def test_renumbering_past_the_limit_is_refused_and_moves_nothing(
        self, store: LaptopStore
    ) -> None:
        """A mark beyond ``OUTBOX_SEQ_LIMIT`` would leave no room for later edits (the
        SQLite outbox's numbering ends at 2**63 - 1): refused, nothing renumbered."""
        patient = Patient()
        await store.write_local(patient.id, patient.edit(), conflicts=None)
        for above in (OUTBOX_SEQ_LIMIT + 1, 2**63 - 1, 2**63):
            with pytest.raises(InvalidInputError, match="room for later edits"):
                await store.renumber_outbox(above, checkpoint=("pull.include_own", "1"))
        assert [i.seq for i in await store.pending()] == [1]
        assert await store.get_meta("pull.include_own") is None
        assert await store.renumber_outbox(OUTBOX_SEQ_LIMIT) == 1
        assert await store.write_local(patient.id, patient.edit(), conflicts=None) == (
            OUTBOX_SEQ_LIMIT + 2
        )

    async def test_updates_queued_again_go_ahead_of_the_waiting_ones_and_leave_records_alone(
        self, store: LaptopStore
    ) -> None:
        """``queue_again``: outbox entries ahead of the waiting ones (numbered after
        them, in order), with the checkpoint, in one transaction; the records' logs and
        state do not change."""
        patient = Patient()
        first = await store.write_local(patient.id, patient.edit(), conflicts=None)
        await store.write_local(patient.id, patient.edit(), conflicts=None)
        await store.acknowledge(first)
        held = await store.load(patient.id)
        log = await store.log_length(patient.id)
        [waiting] = await store.pending()
        assert held is not None
        queued = await store.queue_again(
            [(patient.id, held), (patient.id, b"\x00\x00")], checkpoint=("sync.checkpoint", "0")
        )
        assert queued == 2
        assert [(i.seq, i.record_id, i.update) for i in await store.pending()] == [
            (3, patient.id, held),
            (4, patient.id, b"\x00\x00"),
            (5, patient.id, waiting.update),  # renumbered after them
        ]
        assert await store.get_meta("sync.checkpoint") == "0"
        assert await store.load(patient.id) == held
        assert await store.log_length(patient.id) == log
        assert await store.queue_again([]) == 0
        with pytest.raises(InvalidInputError):
            await store.queue_again([(patient.id, "not bytes")])  # type: ignore[list-item]
        assert len(await store.pending()) == 3  # nothing stored by the refused call
        assert await store.write_local(patient.id, patient.edit(), conflicts=None) == 6

    # the person index

    async def test_two_matching_records_make_one_possible_pair_listed_for_either(
        self,
        store: LaptopStore,
    ) -> None:
        a, b = registered("Aissatou Ndiaye"), registered("Aïssatou N'Diaye", replica="laptop-b")
        other = registered("Moussa Diop", "1950-01-01", sex="male")
        await store.write_local(
            a.id, whole(a), conflicts=None, organisation="org-1", person=card(a)
        )
        await store.write_remote([incoming(b, "org-1"), incoming(other, "org-1")])
        [pair] = await store.person_pairs()
        assert pair == pair_of(card(a), card(b))
        assert pair.state is PairState.POSSIBLE
        assert set(pair.record_ids) == {a.id, b.id}
        assert await store.person_pairs(a.id) == [pair]
        assert await store.person_pairs(b.id) == [pair]
        assert await store.person_pairs(other.id) == []
        assert await store.person_pairs(state=PairState.POSSIBLE, organisation="org-1") == [pair]
        assert await store.person_pairs(a.id, state=PairState.LINKED) == []
        assert await store.person_pairs(organisation="org-2") == []
        assert await store.person_cards([b.id, "nobody", a.id]) == {b.id: card(b), a.id: card(a)}
        # Unparsed, as a card reference is made from them (protocol version 9).
        assert await store.person_card_bytes([b.id, "nobody", a.id]) == {
            b.id: card(b).to_bytes(),
            a.id: card(a).to_bytes(),
        }
        assert list(await store.person_card_bytes([b.id, a.id])) == [b.id, a.id]
        assert await store.check() == []

    @pytest.mark.parametrize("order", ["a then b", "b then a", "one batch", "one local, one batch"])
    async def test_the_pairs_do_not_depend_on_the_order_the_cards_arrive(
        self, tmp_path: Path, clock: FakeClock, order: str
    ) -> None:
        a = registered("Awa Diop", "1984-02-03")
        b = registered("Awa Diop", "1984-03-02", replica="laptop-b")  # day and month swapped
        c = registered("Fatou Sow", "1990-01-01")
        c.edit(link_path(a.id), SAME_PERSON)
        d = registered("Awa Diop", "1984-02-03", sex="male")  # the sexes differ: below threshold
        everyone = [a, b, c, d]
        expected = oracle({p.id: ("org-1", card(p)) for p in everyone})
        assert {p.state for p in expected} == {PairState.POSSIBLE, PairState.LINKED}
        directory = tmp_path / "fresh"
        directory.mkdir()
        async with self.make_store(directory, clock) as fresh:
            if order == "a then b":
                for p in everyone:
                    await fresh.write_remote([incoming(p, "org-1")])
            elif order == "b then a":
                for p in reversed(everyone):
                    await fresh.write_remote([incoming(p, "org-1")])
            elif order == "one batch":
                await fresh.write_remote([incoming(p, "org-1") for p in everyone])
            else:
                await fresh.write_local(
                    c.id, whole(c), conflicts=None, organisation="org-1", person=card(c)
                )
                await fresh.write_remote([incoming(p, "org-1") for p in (d, b, a)])
            assert await fresh.person_pairs() == expected
            for p in everyone:
                assert await fresh.person_pairs(p.id) == [
                    x for x in expected if p.id in x.record_ids
                ]
            assert await fresh.check() == []

    @pytest.mark.parametrize("seed", range(6))
    async def test_cards_in_any_batches_leave_exactly_the_pairs_of_the_final_cards(
        self, store: LaptopStore, seed: int
    ) -> None:
        """Random cards in batches of every kind (received, local, re-indexed)."""
        await _cards_in_any_batches(store, seed, ["remote", "local", "reindex"])

    async def test_a_card_that_no_longer_matches_removes_the_pair(self, store: LaptopStore) -> None:
        a, b = registered("Awa Diop"), registered("Awa Diop", replica="laptop-b")
        await store.write_remote([incoming(a), incoming(b)])
        assert len(await store.person_pairs()) == 1
        update = b.edit("name", "Mariama Ba")  # a typing error corrected
        await store.write_local(b.id, update, conflicts=None, person=card(b))
        assert await store.person_pairs() == []
        assert await store.person_pairs(a.id) == []
        assert await store.person_cards([b.id]) == {b.id: card(b)}
        update = b.edit("name", "Awa Diop")  # and back: the pair again
        await store.write_remote([IncomingUpdate(b.id, update, None, person=card(b))])
        assert await store.person_pairs(a.id) == [pair_of(card(a), card(b))]

    async def test_a_link_decision_makes_a_linked_pair_even_when_names_differ(
        self, store: LaptopStore
    ) -> None:
        a = registered("Aissatou Ndiaye", "1990-04-12")
        b = registered("Mme Awa Sow", "1971-11-30", replica="laptop-b")
        b.edit(link_path(a.id), SAME_PERSON)
        assert pair_of(card(a), card(b)) is not None
        await store.write_remote([incoming(a, "org-1")])
        await store.write_local(
            b.id, whole(b), conflicts=None, organisation="org-1", person=card(b)
        )
        [pair] = await store.person_pairs(a.id)
        assert pair.state is PairState.LINKED
        assert pair.score < 0  # nothing alike: the decision alone links them
        assert await store.person_pairs(state=PairState.LINKED) == [pair]
        assert await store.person_pairs(state=PairState.POSSIBLE) == []
        # a decides otherwise: the decisions disagree
        update = a.edit(link_path(b.id), DIFFERENT_PEOPLE)
        await store.write_remote([IncomingUpdate(a.id, update, None, person=card(a))])
        [pair] = await store.person_pairs(b.id)
        assert pair.state is PairState.DISPUTED
        assert await store.person_pairs(state="disputed") == [pair]  # type: ignore[arg-type]

    async def test_a_card_of_another_record_is_refused_and_nothing_is_written(
        self, store: LaptopStore
    ) -> None:
        p, q = registered("Awa Diop"), registered("Awa Diop", replica="laptop-b")
        with pytest.raises(InvalidInputError, match=q.id):
            await store.write_local(p.id, whole(p), conflicts=[conflict(p.id)], person=card(q))
        with pytest.raises(InvalidInputError, match=q.id):
            IncomingUpdate(p.id, whole(p), None, person=card(q))
        with pytest.raises(InvalidInputError):
            await store.write_local(p.id, whole(p), conflicts=None, person="card")  # type: ignore[arg-type]
        assert await store.count_records() == 0
        assert await store.pending_count() == 0
        await store.write_remote([incoming(p, person=False), incoming(q, person=False)])
        with pytest.raises(InvalidInputError, match=q.id):
            await store.set_conflicts_many({p.id: [conflict(p.id)]}, persons={p.id: card(q)})
        with pytest.raises(UnknownRecordError, match="nobody"):
            await store.set_conflicts_many(
                {p.id: [conflict(p.id)]}, persons={p.id: card(p), "nobody": PersonCard("nobody")}
            )
        assert await store.count_conflicts() == 0
        assert await store.person_cards([p.id, q.id]) == {}
        assert await store.person_pairs() == []

    async def test_no_card_keeps_the_stored_card_and_its_pairs(self, store: LaptopStore) -> None:
        a, b = registered("Awa Diop"), registered("Awa Diop", replica="laptop-b")
        await store.write_remote([incoming(a), incoming(b)])
        before = await store.person_pairs()
        assert len(before) == 1
        stale = card(a)
        a.edit("name", "Mariama Ba")  # changed, but the writer says nothing of the card
        await store.write_local(a.id, a.updates[-1], conflicts=None)
        await store.write_remote([IncomingUpdate(a.id, a.edit(), None)])
        await store.set_conflicts_many({a.id: [conflict(a.id)]})
        assert await store.person_cards([a.id]) == {a.id: stale}
        assert await store.person_pairs() == before

    async def test_an_import_indexes_the_cards_given_in_the_same_write(
        self, store: LaptopStore, tmp_path: Path
    ) -> None:
        a, b = registered("Awa Ndiaye"), registered("Awa N'Diaye", replica="laptop-b")
        await store.write_local(
            a.id, whole(a), conflicts=None, organisation="org-1", person=card(a)
        )
        source = MemoryStore()
        await source.write_local(b.id, whole(b), conflicts=None, organisation="org-1")
        export = tmp_path / "unsynced.caresync"
        assert await source.export_unsynced(export) == 1
        assert await store.import_unsynced(export, persons={b.id: card(b)}) == 1
        [pair] = await store.person_pairs(b.id)
        assert pair == pair_of(card(a), card(b))
        assert await store.check() == []

    async def test_an_import_refuses_a_card_of_a_record_it_does_not_touch(
        self, store: LaptopStore, tmp_path: Path
    ) -> None:
        a, b = registered("Awa Ndiaye"), registered("Awa N'Diaye", replica="laptop-b")
        source = MemoryStore()
        await source.write_local(b.id, whole(b), conflicts=None, organisation="org-1")
        export = tmp_path / "unsynced.caresync"
        await source.export_unsynced(export)
        with pytest.raises(InvalidInputError, match="does not touch"):
            await store.import_unsynced(export, persons={a.id: card(a)})
        assert await store.record_ids() == []  # nothing imported
        assert await store.person_cards([a.id, b.id]) == {}


class ServerStoreSuite(ReplicaStoreSuite):
    """What a server's store must do besides: the change feed, accounts, replicas, sessions."""

    # the change feed's epochs

    async def test_a_feed_epoch_labels_the_numbers_given_out_from_the_head_on(
        self, store: ServerStore
    ) -> None:
        """``begin_feed_epoch``: a row at the head + 1 (replacing one that labelled no
        number yet); ``feed_epochs`` lists them by first number."""
        assert await store.feed_epochs() == []
        assert await store.begin_feed_epoch(7) == FeedEpoch(1, 7)
        assert await store.begin_feed_epoch(8) == FeedEpoch(1, 8)  # nothing given out yet
        patient = Patient()
        await store.write_remote(
            [IncomingUpdate(patient.id, patient.created, None, "org-1")], to_feed=True
        )
        await store.write_remote(
            [IncomingUpdate(patient.id, patient.edit(), None, "org-1")], to_feed=True
        )
        assert await store.begin_feed_epoch(2**63 - 1) == FeedEpoch(3, 2**63 - 1)
        assert await store.feed_epochs() == [FeedEpoch(1, 8), FeedEpoch(3, 2**63 - 1)]
        for bad in (0, -1, 2**63, True, "5"):
            with pytest.raises(InvalidInputError, match="epoch"):
                await store.begin_feed_epoch(bad)  # type: ignore[arg-type]
        assert await store.feed_epochs() == [FeedEpoch(1, 8), FeedEpoch(3, 2**63 - 1)]

    # a first copy's pages

    async def test_a_copy_page_carries_the_person_pairs_of_its_later_records(
        self, store: ServerStore
    ) -> None:
        """``copy_page(pairs=True)``: each pair once, with the page of its second record,
        ordered by (second, first); ``person_pairs_ending`` reads the same."""
        records = []
        for name, org in [("Awa Ndiaye", "org-1")] * 3 + [
            ("Moussa Diallo", "org-1"),
            ("Ines Moreau", "org-1"),
            ("Awa Ndiaye", "org-2"),  # the same person elsewhere: never paired across
        ]:
            record = Record.create(replica="laptop-a")
            with record.batch():
                record.set("name", name, author="dr.a")
                record.set("birthDate", "1990-04-12", author="dr.a")
            records.append((record, org))
        await store.write_remote(
            [
                IncomingUpdate(r.record_id, r.update_since(), None, org, person_card(r))
                for r, org in records
            ],
            to_feed=True,
        )
        expected = sorted(
            (p.record_ids for p in await store.person_pairs(organisation="org-1")),
            key=lambda ids: (ids[1], ids[0]),
        )
        assert len(expected) == 3
        sent: list[tuple[str, str]] = []
        after: str | None = None
        for _ in range(10):  # bounded: 5 records in pages of 2
            page = await store.copy_page(
                "org-1", after=after, limit=2, rows=False, persons=True, pairs=True
            )
            ids = {record_id for record_id, _update in page.records}
            assert all(second in ids and first < second for first, second in page.pairs)
            sent.extend(page.pairs)
            if not page.more:
                break
            after = page.records[-1][0]
        assert [tuple(pair) for pair in sent] == expected
        org_1 = sorted(r.record_id for r, org in records if org == "org-1")
        assert [tuple(p) for p in await store.person_pairs_ending(org_1)] == expected
        unasked = await store.copy_page("org-1", after=None, limit=5, rows=False, persons=True)
        assert unasked.pairs == []

    # health-hub outbox: what changed after a mark

    async def test_hub_changes_number_every_outbox_change_and_read_those_after_a_mark(
        self, store: ServerStore
    ) -> None:
        """Each push, attempt and outcome of a summary takes the next hub mark; a read
        after a mark gives the rows changed since, as they stand, and the store's mark."""
        assert await store.hub_changes("org-1", 0, 10) == HubChanges((), (), 0, False)
        a, b, c = Patient("laptop-b"), Patient("laptop-b"), Patient("laptop-c")
        await _mark_hub(store, [(a, "org-1"), (b, "org-1"), (c, "org-2")])
        first = await store.hub_changes("org-1", 0, 10)
        assert sorted(row.record_id for row in first.rows) == sorted([a.id, b.id])
        assert first.removed == ()
        assert not first.more
        assert first.mark >= 3  # marks count every organisation's changes
        assert [r.record_id for r in (await store.hub_changes("org-2", 0, 10)).rows] == [c.id]
        assert await store.hub_changes("org-1", first.mark, 10) == HubChanges(
            (), (), first.mark, False
        )
        # A mark the store never gave (a reader ahead of a store gone back to an older
        # copy): nothing, and the store's mark, for the caller to compare.
        ahead = await store.hub_changes("org-1", first.mark + 100, 10)
        assert ahead == HubChanges((), (), first.mark, False)
        # An attempt, then an outcome, each a change of its own, read as the row stands.
        await store.record_hub_attempt(a.id, 1_700_000_000_000)
        attempted = await store.hub_changes("org-1", first.mark, 10)
        [row] = attempted.rows
        assert (row.record_id, row.last_attempt_ms) == (a.id, 1_700_000_000_000)
        assert attempted.mark > first.mark
        version = row.version
        assert await store.record_hub_outcome(a.id, version, HubOutcome("sent", None, 1, 0, True))
        sent = await store.hub_changes("org-1", attempted.mark, 10)
        assert [(r.record_id, r.state, r.sent_version) for r in sent.rows] == [
            (a.id, "sent", version)
        ]
        assert sent.mark > attempted.mark
        # A new version of b, pushed: b again, with it.
        await _mark_hub(store, [(b, "org-1")], held="an open conflict")
        pushed = await store.hub_changes("org-1", sent.mark, 10)
        assert [(r.record_id, r.state, r.reason) for r in pushed.rows] == [
            (b.id, "held", "an open conflict")
        ]
        # From mark 0: every row once, as hub_summaries lists them (another order).
        everything = await store.hub_changes("org-1", 0, 10)
        assert sorted(everything.rows, key=lambda r: r.record_id) == await store.hub_summaries(
            "org-1"
        )
        assert everything.mark == pushed.mark

    async def test_hub_changes_say_which_patients_left_the_list_after_a_mark(
        self, store: ServerStore
    ) -> None:
        """An unmarked patient's row goes and leaves a tombstone: read after a mark
        before it, never from mark 0 nor by another organisation; marked again, the
        patient is listed, no longer removed."""
        a, b = Patient("laptop-b"), Patient("laptop-b")
        await _mark_hub(store, [(a, "org-1"), (b, "org-1")])
        before = (await store.hub_changes("org-1", 0, 10)).mark
        removed_at = (
            await store.write_remote(
                [IncomingUpdate(a.id, a.edit(), None, "org-1")],
                to_feed=True,
                hub={a.id: HubMark(False)},
            )
        )[0]
        gone = await store.hub_changes("org-1", before, 10)
        assert gone.rows == ()
        assert gone.removed == (HubRemoved(a.id, removed_at),)
        assert gone.mark == before + 1
        assert [r.record_id for r in (await store.hub_changes("org-1", 0, 10)).rows] == [b.id]
        assert (await store.hub_changes("org-1", 0, 10)).removed == ()
        assert (await store.hub_changes("org-2", before, 10)).removed == ()
        assert [r.record_id for r in await store.hub_summaries("org-1")] == [b.id]
        # Unmarking what is not listed changes nothing: the mark stays.
        await store.write_remote(
            [IncomingUpdate(a.id, a.edit(), None, "org-1")],
            to_feed=True,
            hub={a.id: HubMark(False)},
        )
        assert (await store.hub_changes("org-1", gone.mark, 10)).mark == gone.mark
        # An attempt or an outcome for a row that is gone changes nothing either.
        await store.record_hub_attempt(a.id, 5)
        assert not await store.record_hub_outcome(a.id, 1, HubOutcome("sent", None, 1, 0, True))
        assert (await store.hub_changes("org-1", gone.mark, 10)).mark == gone.mark
        # Marked again: listed, and no longer removed, whatever mark one reads after.
        await _mark_hub(store, [(a, "org-1")])
        for after in (before, gone.mark):
            back = await store.hub_changes("org-1", after, 10)
            assert [r.record_id for r in back.rows] == [a.id]
            assert back.removed == ()

    async def test_a_record_given_an_organisation_later_moves_its_hub_row_there(
        self, store: ServerStore
    ) -> None:
        p = Patient("laptop-b")
        await _mark_hub(store, [(p, None)])
        assert (await store.hub_changes("org-1", 0, 10)).rows == ()
        mark = (await store.hub_changes("org-1", 0, 10)).mark
        await _mark_hub(store, [(p, "org-1")])
        moved = await store.hub_changes("org-1", mark, 10)
        assert [(r.record_id, r.organisation) for r in moved.rows] == [(p.id, "org-1")]

    async def test_hub_changes_page_in_the_order_they_were_made(self, store: ServerStore) -> None:
        """A page of ``limit`` changes says ``more`` and the mark of its last change;
        reading on from there gives every change once, removals among them."""
        patients = [Patient("laptop-b") for _ in range(5)]
        await _mark_hub(store, [(p, "org-1") for p in patients])
        start = (await store.hub_changes("org-1", 0, 10)).mark
        order = [patients[3], patients[0], patients[4]]
        for p in order:
            await store.record_hub_attempt(p.id, 7)
        await store.write_remote(
            [IncomingUpdate(patients[1].id, patients[1].edit(), None, "org-1")],
            to_feed=True,
            hub={patients[1].id: HubMark(False)},
        )
        seen: list[str] = []
        after, pages = start, 0
        for _ in range(10):  # bounded: four changes in pages of two
            page = await store.hub_changes("org-1", after, 2)
            pages += 1
            assert len(page.rows) + len(page.removed) <= 2
            seen += [r.record_id for r in page.rows] + [f"-{g.record_id}" for g in page.removed]
            assert page.mark > after
            after = page.mark
            if not page.more:
                break
        assert seen == [p.id for p in order] + [f"-{patients[1].id}"]
        assert pages == 2
        assert await store.hub_changes("org-1", after, 2) == HubChanges((), (), after, False)

    async def test_hub_changes_refuse_bad_arguments(self, store: ServerStore) -> None:
        huge = 2**63 - 1  # an SQL integer's largest: the stores read one row past a limit
        for args in [
            (None, 0, 1),
            ("", 0, 1),
            ("org-1", -1, 1),
            ("org-1", 0, 0),
            ("o", "1", 1),
            ("org-1", 0, huge),
            ("org-1", huge + 1, 1),
            ("org-1", 2**70, 10),
        ]:
            with pytest.raises(InvalidInputError):
                await store.hub_changes(*args)  # type: ignore[arg-type]
        assert await store.hub_changes("org-1", huge, huge - 1) == HubChanges((), (), 0, False)

    async def test_a_hub_outcome_that_changes_nothing_takes_no_mark(
        self, store: ServerStore
    ) -> None:
        """A summary found held again for the same reason (the sender looks at held ones
        again) is no change: no new mark, so no laptop's next report carries it; the
        outcome still says the version is the row's."""
        (a,) = [Patient("laptop-b")]
        await _mark_hub(store, [(a, "org-1")])
        row = await store.hub_summary(a.id)
        assert row is not None
        held = HubOutcome("held", "an open conflict", 0, 0)
        assert await store.record_hub_outcome(a.id, row.version, held)
        mark = (await store.hub_changes("org-1", 0, 10)).mark
        assert await store.record_hub_outcome(a.id, row.version, held)
        assert await store.hub_changes("org-1", mark, 10) == HubChanges((), (), mark, False)
        assert await store.hub_summary(a.id) == replace(
            row, state="held", reason="an open conflict"
        )
        # Sent and acknowledged, then told again: the second is no change either.
        sent = HubOutcome("sent", None, 1, 0, True)
        assert await store.record_hub_outcome(a.id, row.version, sent)
        mark = (await store.hub_changes("org-1", 0, 10)).mark
        assert await store.record_hub_outcome(a.id, row.version, sent)
        assert await store.hub_changes("org-1", mark, 10) == HubChanges((), (), mark, False)
        # Another version's outcome: not the row's (False), and no change.
        assert not await store.record_hub_outcome(a.id, row.version + 1, held)
        assert await store.hub_changes("org-1", mark, 10) == HubChanges((), (), mark, False)

    # health-hub outbox: what the sender and the counters read

    async def test_hub_summary_reads_one_records_row(self, store: ServerStore) -> None:
        assert await store.hub_summary("no-such-record") is None
        a, b = Patient("laptop-b"), Patient("laptop-b")
        await _mark_hub(store, [(a, "org-1"), (b, "org-2")])
        await store.record_hub_attempt(a.id, 42)
        listed = {row.record_id: row for row in await store.hub_summaries()}
        assert await store.hub_summary(a.id) == listed[a.id]
        assert listed[a.id].last_attempt_ms == 42
        assert await store.hub_summary(b.id) == listed[b.id]
        # Unmarked: its row is gone.
        await store.write_remote(
            [IncomingUpdate(b.id, b.edit(), None, "org-2")],
            to_feed=True,
            hub={b.id: HubMark(False)},
        )
        assert await store.hub_summary(b.id) is None
        for bad in (None, "", 7, "x" * 5000):
            with pytest.raises(InvalidInputError):
                await store.hub_summary(bad)  # type: ignore[arg-type]

    async def _hub_in_every_state(self, store: ServerStore) -> list[Patient]:
        """Eight marked patients (two organisations and none), in these states: pending
        due at 500, 100 and 0, and at 2000; held (at 0 and at 300); sent; failed."""
        patients = [Patient("laptop-b") for _ in range(8)]
        orgs = ["org-1", "org-1", "org-2", "org-1", "org-2", "org-1", None, "org-2"]
        await _mark_hub(store, list(zip(patients, orgs, strict=True)))
        outcomes = [
            HubOutcome("pending", "retrying: 503", 1, 500),
            HubOutcome("pending", "retrying: 503", 2, 100),
            HubOutcome("held", "an open conflict", 0, 0),
            HubOutcome("sent", None, 0, 0, acknowledged=True),
            HubOutcome("failed", "the hub answered 400", 1, 0),
            None,  # as pushed: pending, due at once
            HubOutcome("pending", "retrying: timeout", 3, 2000),
            HubOutcome("held", "a finding across linked records", 0, 300),
        ]
        for p, outcome in zip(patients, outcomes, strict=True):
            if outcome is not None:
                row = await store.hub_summary(p.id)
                assert row is not None
                assert await store.record_hub_outcome(p.id, row.version, outcome)
        return patients

    async def test_hub_due_gives_the_due_summaries_in_order_in_pages(
        self, store: ServerStore
    ) -> None:
        """Pending ones whose retry time has come and every held one, by (retry time,
        record id), as the whole outbox filtered and sorted gives them; read in pages
        after the last row's key, each once."""
        assert await store.hub_due(1000, 10) == []
        await self._hub_in_every_state(store)
        every = await store.hub_summaries()

        def due_at(now: int) -> list[Any]:
            due = [
                r
                for r in every
                if (r.state == "pending" and r.next_attempt_ms <= now) or r.state == "held"
            ]
            return sorted(due, key=lambda r: (r.next_attempt_ms, r.record_id))

        expected = due_at(1000)
        assert [r.next_attempt_ms for r in expected] == [0, 0, 100, 300, 500]
        assert await store.hub_due(1000, 10) == expected
        assert await store.hub_due(1000, 3) == expected[:3]
        assert await store.hub_due(0, 10) == due_at(0)  # held ones whenever
        assert [r.next_attempt_ms for r in due_at(0)] == [0, 0, 300]
        assert sorted(r.state for r in due_at(0)) == ["held", "held", "pending"]
        assert await store.hub_due(2000, 10) == due_at(2000)  # 2000 is due at 2000
        assert len(due_at(2000)) == 6
        # In pages of two, each after the last row's key: every due row once.
        seen: list[Any] = []
        after: tuple[int, str] | None = None
        for _ in range(10):  # bounded: five rows in pages of two
            page = await store.hub_due(1000, 2, after=after)
            assert len(page) <= 2
            seen += page
            if len(page) < 2:
                break
            after = (page[-1].next_attempt_ms, page[-1].record_id)
        assert seen == expected
        # After a key between rows, and after the last.
        middle = expected[2]
        assert (
            await store.hub_due(1000, 10, after=(middle.next_attempt_ms, middle.record_id))
            == (expected[3:])
        )
        assert await store.hub_due(1000, 10, after=(middle.next_attempt_ms, "")) == expected[2:]
        last = expected[-1]
        assert await store.hub_due(1000, 10, after=(last.next_attempt_ms, last.record_id)) == []

    async def test_hub_due_without_held_gives_the_pending_ones_only(
        self, store: ServerStore
    ) -> None:
        """``held=False``: the due pending ones, in the same order and pages; no held one."""
        await self._hub_in_every_state(store)
        every = await store.hub_summaries()
        expected = sorted(
            (r for r in every if r.state == "pending" and r.next_attempt_ms <= 1000),
            key=lambda r: (r.next_attempt_ms, r.record_id),
        )
        assert [r.next_attempt_ms for r in expected] == [0, 100, 500]
        assert await store.hub_due(1000, 10, held=False) == expected
        assert await store.hub_due(1000, 2, held=False) == expected[:2]
        first = expected[0]
        after = (first.next_attempt_ms, first.record_id)
        assert await store.hub_due(1000, 10, after=after, held=False) == expected[1:]
        assert await store.hub_due(0, 10, held=False) == expected[:1]
        with pytest.raises(InvalidInputError):
            await store.hub_due(1000, 10, held=cast(Any, 1))

    async def test_hub_due_refuses_bad_arguments(self, store: ServerStore) -> None:
        bad: list[tuple[Any, Any, Any]] = [
            (-1, 1, None),
            ("1", 1, None),
            (True, 1, None),
            (2**63, 1, None),
            (0, 0, None),
            (0, 2**63, None),
            (0, 1.0, None),
            (0, 1, (1,)),
            (0, 1, [1, "a"]),
            (0, 1, (1, None)),
            (0, 1, (1, "x" * 5000)),
            (0, 1, (-1, "a")),
            (0, 1, ("1", "a")),
            (0, 1, (1, 2)),
        ]
        for now_ms, limit, after in bad:
            with pytest.raises(InvalidInputError):
                await store.hub_due(now_ms, limit, after=after)

    async def test_hub_next_attempt_is_the_earliest_pending_retry(self, store: ServerStore) -> None:
        assert await store.hub_next_attempt_ms() is None
        patients = await self._hub_in_every_state(store)
        assert await store.hub_next_attempt_ms() == 0  # patients[5], as pushed
        row = await store.hub_summary(patients[5].id)
        assert row is not None
        await store.record_hub_outcome(patients[5].id, row.version, HubOutcome("sent", None, 0, 0))
        assert await store.hub_next_attempt_ms() == 100  # held ones wait for no time
        for p in patients[:2] + patients[6:7]:
            row = await store.hub_summary(p.id)
            assert row is not None
            await store.record_hub_outcome(p.id, row.version, HubOutcome("failed", "x", 1, 0))
        assert await store.hub_next_attempt_ms() is None

    async def test_hub_state_counts_count_each_state_per_organisation(
        self, store: ServerStore
    ) -> None:
        zero = {"pending": 0, "held": 0, "sent": 0, "failed": 0}
        assert await store.hub_state_counts() == zero
        assert await store.hub_state_counts("org-1") == zero
        await self._hub_in_every_state(store)
        assert await store.hub_state_counts() == {"pending": 4, "held": 2, "sent": 1, "failed": 1}
        assert await store.hub_state_counts("org-1") == {
            "pending": 3,
            "held": 0,
            "sent": 1,
            "failed": 0,
        }
        assert await store.hub_state_counts("org-2") == {
            "pending": 0,
            "held": 2,
            "sent": 0,
            "failed": 1,
        }
        assert await store.hub_state_counts("org-3") == zero
        # As the whole outbox counted gives them.
        every = await store.hub_summaries()
        for org in (None, "org-1", "org-2"):
            rows = [r for r in every if org is None or r.organisation == org]
            counts = await store.hub_state_counts(org)
            assert counts == {state: sum(r.state == state for r in rows) for state in zero}
        for bad in ("", 5, "x" * 5000):
            with pytest.raises(InvalidInputError):
                await store.hub_state_counts(bad)  # type: ignore[arg-type]

    # remote updates and feed

    async def test_updates_may_come_as_any_bytes_like_object(self, store: ServerStore) -> None:
        p = Patient("laptop-b")
        edit = p.edit("birthDate", "1999")
        items = [
            IncomingUpdate(p.id, bytearray(p.created), None),  # type: ignore[arg-type]
            IncomingUpdate(p.id, memoryview(edit), None),  # type: ignore[arg-type]
        ]
        assert await store.write_remote(items, to_feed=True) == [1, 2]
        assert [f.update for f in await store.feed_since(0, limit=5)] == [p.created, edit]
        loaded = await store.load(p.id)
        assert loaded is not None
        assert Record.from_update(p.id, loaded, replica="x").value("birthDate") == "1999"
        assert await store.check() == []

    async def test_the_feed_numbers_every_new_update_once(self, store: ServerStore) -> None:
        a, b = Patient("laptop-b"), Patient("laptop-c")
        seqs = await store.write_remote(
            [
                IncomingUpdate(a.id, a.created, None, "org-1"),
                IncomingUpdate(b.id, b.created, None, "org-2"),
            ],
            to_feed=True,
        )
        assert seqs == [1, 2]
        edit = a.edit()
        # A resent update (and a duplicate within a batch of one record) is stored once.
        assert await store.write_remote([remote(a, a.created)], to_feed=True) == [0]
        assert await store.write_remote([remote(a, edit), remote(b, b.edit())], to_feed=True) == [
            3,
            4,
        ]
        assert await store.feed_head() == 4
        feed = await store.feed_since(0, limit=10)
        assert [(f.seq, f.record_id, f.organisation) for f in feed] == [
            (1, a.id, "org-1"),
            (2, b.id, "org-2"),
            (3, a.id, "org-1"),
            (4, b.id, "org-2"),
        ]
        assert feed[2].update == edit
        assert [f.seq for f in await store.feed_since(1, limit=2)] == [2, 3]
        assert [f.seq for f in await store.feed_since(0, limit=10, organisation="org-1")] == [1, 3]
        assert await store.feed_since(4, limit=10) == []
        assert await store.log_length(a.id) == 2

    async def test_the_feed_keeps_who_sent_each_update_and_leaves_a_senders_own_out(
        self,
        store: ServerStore,
    ) -> None:
        a, b, c = Patient("laptop-a"), Patient("laptop-b"), Patient("admin")
        org = "org-1"
        await store.write_remote(
            [IncomingUpdate(a.id, a.created, None, org)], to_feed=True, origin="laptop-a"
        )
        await store.write_remote(
            [IncomingUpdate(b.id, b.created, None, org)], to_feed=True, origin="laptop-b"
        )
        await store.write_remote(
            [IncomingUpdate(c.id, c.created, None, org)], to_feed=True
        )  # none said
        edits = [IncomingUpdate(a.id, a.edit(), None), IncomingUpdate(a.id, a.edit(), None)]
        assert await store.write_remote(edits, to_feed=True, origin="laptop-a") == [4, 5]
        # A resend from another replica is stored once, with its first sender.
        assert await store.write_remote([edits[0]], to_feed=True, origin="laptop-b") == [0]
        feed = await store.feed_since(0, limit=10)
        assert [(f.seq, f.origin) for f in feed] == [
            (1, "laptop-a"),
            (2, "laptop-b"),
            (3, None),
            (4, "laptop-a"),
            (5, "laptop-a"),
        ]
        for_a = await store.feed_since(0, limit=10, organisation=org, exclude_origin="laptop-a")
        assert [f.seq for f in for_a] == [2, 3]  # rows of no origin are sent to everyone
        assert [f.seq for f in await store.feed_since(0, limit=1, exclude_origin="laptop-a")] == [2]
        assert [f.seq for f in await store.feed_since(3, limit=10, exclude_origin="laptop-a")] == []
        assert [f.seq for f in await store.feed_since(0, limit=10, exclude_origin="laptop-b")] == [
            1,
            3,
            4,
            5,
        ]
        assert await store.feed_since(0, limit=10, organisation="org-2", exclude_origin="x") == []
        assert await store.feed_head() == 5

    async def test_an_origin_outside_the_feed_or_not_an_id_is_refused(
        self, store: ServerStore
    ) -> None:
        p = Patient()
        with pytest.raises(InvalidInputError, match="to_feed"):
            await store.write_remote([remote(p, p.created)], origin="laptop-a")
        for bad in ("", 5, "x" * 300):
            with pytest.raises(InvalidInputError):
                await store.write_remote([remote(p, p.created)], to_feed=True, origin=bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidInputError):
                await store.feed_since(0, limit=5, exclude_origin=bad)  # type: ignore[arg-type]
        assert await store.count_records() == 0
        assert await store.feed_head() == 0

    # accounts

    async def test_users_are_kept_per_organisation(self, store: ServerStore) -> None:
        assert await store.get_user("org-1", "ada") is None
        await store.add_user("org-1", "ada", "$argon2id$one")
        await store.add_user("org-2", "ada", "$argon2id$two")
        with pytest.raises(InvalidInputError):
            await store.add_user("org-1", "ada", "$argon2id$three")
        user = await store.get_user("org-1", "ada")
        assert user is not None
        assert user.password_hash == "$argon2id$one"
        await store.set_password_hash("org-1", "ada", "$argon2id$rehashed")
        user = await store.get_user("org-1", "ada")
        assert user is not None
        assert user.password_hash == "$argon2id$rehashed"
        with pytest.raises(InvalidInputError):
            await store.set_password_hash("org-1", "bob", "$argon2id$x")

    async def test_accounts_have_display_names_listed_per_organisation(
        self, store: ServerStore
    ) -> None:
        await store.add_user("org-1", "ada", "$argon2id$one", display_name="Dr Ada Lovelace")
        await store.add_user("org-1", "bob", "$argon2id$two")
        await store.add_user("org-2", "cy", "$argon2id$three", display_name="Cy")
        user = await store.get_user("org-1", "ada")
        assert user is not None
        assert (user.display_name, user.shown_as) == ("Dr Ada Lovelace", "Dr Ada Lovelace")
        assert await store.organisation_accounts("org-1") == {
            "ada": "Dr Ada Lovelace",
            "bob": "bob",
        }
        await store.set_display_name("org-1", "bob", "Dr Bob Ba")
        await store.set_display_name("org-1", "ada", None)
        assert await store.organisation_accounts("org-1") == {"ada": "ada", "bob": "Dr Bob Ba"}
        assert await store.organisation_accounts("org-3") == {}
        with pytest.raises(InvalidInputError):
            await store.set_display_name("org-1", "nobody", "X")
        for bad in ("", " padded ", "two\nlines", "x" * 257):
            with pytest.raises(InvalidInputError):
                await store.add_user("org-1", "dee", "$argon2id$x", display_name=bad)
            with pytest.raises(InvalidInputError):
                await store.set_display_name("org-1", "bob", bad)
        assert await store.get_user("org-1", "dee") is None  # nothing stored half-way
        assert (await store.organisation_accounts("org-1"))["bob"] == "Dr Bob Ba"

    async def test_a_session_of_a_replica_records_who_logged_in_there(
        self, store: ServerStore
    ) -> None:
        await store.add_user("org-1", "ada", "$argon2id$one")
        await store.add_user("org-1", "bob", "$argon2id$two")
        await store.enrol_replica("laptop-1", "org-1", enrolled_by="ada")
        assert await store.replica_accounts(["laptop-1"]) == {}  # enrolling records no login
        await store.add_session(SessionRow("h-1", "org-1", "ada", None, 1, 10))  # before enrolment
        assert await store.replica_accounts(["laptop-1"]) == {}
        await store.bind_session("h-1", "laptop-1")
        await store.add_session(SessionRow("h-2", "org-1", "bob", "laptop-1", 2, 10))
        await store.add_session(SessionRow("h-3", "org-1", "bob", "laptop-1", 3, 10))  # again
        await store.add_session(SessionRow("h-4", "org-1", "ada", "laptop-2", 4, 10))
        assert await store.replica_accounts(["laptop-1", "laptop-2", "laptop-9"]) == {
            "laptop-1": frozenset({"ada", "bob"}),
            "laptop-2": frozenset({"ada"}),
        }
        # Sessions end; who logged in is kept (their entries stay theirs).
        await store.end_sessions(replica_id="laptop-1")
        assert await store.replica_accounts(["laptop-1"]) == {"laptop-1": frozenset({"ada", "bob"})}
        assert await store.replica_accounts([]) == {}

    async def test_replicas_enrol_are_seen_and_revoked(
        self, store: ServerStore, clock: FakeClock
    ) -> None:
        info = await store.enrol_replica("laptop-7", "org-1", enrolled_by="ada")
        assert info.enrolled_ms == clock.now
        assert not info.revoked
        with pytest.raises(InvalidInputError):
            await store.enrol_replica("laptop-7", "org-1")
        await store.enrol_replica("laptop-8", "org-2")
        clock.advance(500)
        await store.touch_replica("laptop-7")
        clock.advance(500)
        await store.revoke_replica("laptop-7")
        await store.revoke_replica("laptop-7")
        got = await store.get_replica("laptop-7")
        assert got is not None
        assert got.last_seen_ms == info.enrolled_ms + 500
        assert got.revoked
        assert got.revoked_ms == info.enrolled_ms + 1000
        assert [r.replica_id for r in await store.replicas()] == ["laptop-7", "laptop-8"]
        assert [r.replica_id for r in await store.replicas("org-2")] == ["laptop-8"]
        assert await store.get_replica("laptop-9") is None
        with pytest.raises(InvalidInputError):
            await store.revoke_replica("laptop-9")

    async def test_a_replica_reports_its_outbox_when_seen(
        self, store: ServerStore, clock: FakeClock
    ) -> None:
        await store.enrol_replica("laptop-7", "org-1")
        assert (await store.replicas())[0].pending is None  # nothing said yet
        await store.touch_replica("laptop-7", pending=3, oldest_pending_ms=clock.now - 90_000)
        got = await store.get_replica("laptop-7")
        assert got is not None
        assert (got.pending, got.oldest_pending_ms) == (3, clock.now - 90_000)
        clock.advance(10)
        await store.touch_replica("laptop-7")  # seen again, saying nothing: the report stays
        got = await store.get_replica("laptop-7")
        assert got is not None
        assert (got.last_seen_ms, got.pending) == (clock.now, 3)
        await store.touch_replica("laptop-7", pending=0)
        got = await store.get_replica("laptop-7")
        assert got is not None
        assert (got.pending, got.oldest_pending_ms) == (0, None)
        for bad in (
            {"pending": -1},
            {"oldest_pending_ms": 5},
            {"pending": 0, "oldest_pending_ms": 5},
        ):
            with pytest.raises(InvalidInputError):
                await store.touch_replica("laptop-7", **bad)
        got = await store.get_replica("laptop-7")
        assert got is not None
        assert (got.last_seen_ms, got.pending) == (clock.now, 0)  # nothing stored half-way

    # the audit trail

    async def test_a_server_keeps_a_replicas_chain_and_a_resend_once(
        self, store: ServerStore
    ) -> None:
        await store.set_identity(Identity("server-1", "server"))
        sent = audit_chain("laptop-7", 5)
        assert await store.receive_audit("laptop-7", sent[:3]) == 3
        assert await store.receive_audit("laptop-7", sent[1:]) == 5  # overlaps what is held
        assert await store.receive_audit("laptop-7", sent[:2]) == 2  # all held: nothing new
        held = await store.audit_entries(replica_id="laptop-7")
        assert held == sent
        assert await store.audit_tail("laptop-7") == (5, sent[-1].hash)
        await store.append_audit([AuditEvent("dr.a", "login")])  # the server's own chain
        assert verify_trail(await store.audit_entries()).ok

    async def test_a_login_entry_notes_the_replica_seen_in_the_same_commit(
        self, store: ServerStore, clock: FakeClock
    ) -> None:
        await store.set_identity(Identity("server-1", "server"))
        enrolled = await store.enrol_replica("laptop-7", "org-1", enrolled_by="ada")
        login = AuditEvent("ada", "login", None, "laptop-7")
        [entry] = await store.append_audit([login], seen=("laptop-7", clock.now + 700))
        got = await store.get_replica("laptop-7")
        assert got is not None
        assert got.last_seen_ms == clock.now + 700 != enrolled.last_seen_ms
        assert [e.hash for e in await store.audit_entries()] == [entry.hash]
        # A replica not enrolled here is not noted; the entry is kept all the same.
        assert len(await store.append_audit([login], seen=("laptop-9", clock.now))) == 1
        assert await store.get_replica("laptop-9") is None
        for bad in (("laptop-7",), ("laptop-7", -1), ("", 5), ["laptop-7", 5]):
            with pytest.raises(InvalidInputError):
                await store.append_audit([login], seen=bad)  # type: ignore[arg-type]
        assert len(await store.audit_entries()) == 2  # nothing kept of those
        got = await store.get_replica("laptop-7")
        assert got is not None
        assert got.last_seen_ms == clock.now + 700

    async def test_a_login_entry_committed_without_waiting_for_the_disk_is_kept_as_any(
        self, store: ServerStore, clock: FakeClock
    ) -> None:
        await store.set_identity(Identity("server-1", "server"))
        await store.enrol_replica("laptop-7", "org-1", enrolled_by="ada")
        login = AuditEvent("ada", "login", None, "laptop-7")
        [lazy] = await store.append_audit([login], seen=("laptop-7", clock.now), durable=False)
        # Visible at once, chained as any entry, the replica noted in the same commit.
        assert await store.audit_entries() == [lazy]
        got = await store.get_replica("laptop-7")
        assert got is not None
        assert got.last_seen_ms == clock.now
        await store.make_durable()
        await store.make_durable()  # nothing waits: nothing to do, no error
        [durable] = await store.append_audit([login])
        assert await store.audit_entries() == [lazy, durable]
        assert verify_trail([lazy, durable]).ok
        with pytest.raises(InvalidInputError):  # checked as a durable append is
            await store.append_audit([login], seen=("", 5), durable=False)
        assert len(await store.audit_entries()) == 2

    async def test_a_server_refuses_entries_that_continue_nothing_or_are_forged(
        self,
        store: ServerStore,
    ) -> None:
        await store.set_identity(Identity("server-1", "server"))
        sent = audit_chain("laptop-7", 4)
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

    async def test_a_copy_restored_from_an_older_one_goes_on_as_a_new_line(
        self, store: ServerStore
    ) -> None:
        await store.set_identity(Identity("server-1", "server"))
        lost = audit_chain("laptop-7", 5)
        await store.receive_audit("laptop-7", lost)
        # The restored copy had entries 1-2; it wrote 3-4 of its own since.
        restored = audit_chain("laptop-7", 2, start=(2, lost[1].hash), actor="dr.b")
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
        more = audit_chain("laptop-7", 1, start=(4, restored[-1].hash))
        await store.receive_audit("laptop-7", more)
        assert [e.line for e in await store.audit_entries(replica_id="laptop-7", after_seq=4)] == [
            0,
            1,
        ]
        assert verify_trail(await store.audit_entries()).ok

    async def test_a_line_from_the_start_verifies_and_lines_are_bounded(
        self, store: ServerStore
    ) -> None:
        await store.set_identity(Identity("server-1", "server"))
        await store.receive_audit("laptop-7", audit_chain("laptop-7", 2))
        # A copy taken before the laptop's first entry starts again from the beginning.
        for n in range(MAX_LINES - 1):
            await store.receive_audit("laptop-7", audit_chain("laptop-7", 1, actor=f"dr.{n}"))
        assert verify_trail(await store.audit_entries()).ok
        with pytest.raises(AuditError, match="no more are kept"):
            await store.receive_audit("laptop-7", audit_chain("laptop-7", 1, actor="dr.z"))
        lines = {e.line for e in await store.audit_entries(replica_id="laptop-7")}
        assert lines == set(range(MAX_LINES))

    # failed logins (caresync.throttle)

    async def test_failed_logins_lock_a_key_past_its_free_ones_for_doubling_times(
        self, store: ServerStore
    ) -> None:
        policy = ThrottlePolicy(
            first_lock_ms=1_000, max_lock_ms=4_000, forget_after_ms=60_000, max_tracked=100
        )
        account, address = key_text(("account", "org", "ada")), key_text(("address", "10.0.0.1"))
        keys = [account, address]
        now = 1_000_000
        assert await store.login_wait_ms(keys, now, policy.forget_after_ms) == 0
        for _ in range(2):  # two free failures for the account, five for the address
            await store.login_failed([(account, 2), (address, 5)], now, policy)
            assert await store.login_wait_ms(keys, now, policy.forget_after_ms) == 0
        locks = []
        for _ in range(5):  # each further failure: 1 s, 2 s, 4 s, then the 4 s cap
            await store.login_failed([(account, 2), (address, 5)], now, policy)
            locks.append(await store.login_wait_ms([account], now, policy.forget_after_ms))
            now += locks[-1]  # tried again once the lock has passed
            assert await store.login_wait_ms(keys, now, policy.forget_after_ms) == 0
        assert locks == [1_000, 2_000, 4_000, 4_000, 4_000]
        # The address failed seven times of its five free: locked too, 2 s from then.
        assert await store.login_wait_ms([address], now - 4_000, policy.forget_after_ms) == 2_000
        # A lock is read part-way through, and another key is not locked by these.
        await store.login_failed([(account, 2)], now, policy)
        assert await store.login_wait_ms(keys, now + 1_500, policy.forget_after_ms) == 2_500
        other = key_text(("account", "org", "bob"))
        assert await store.login_wait_ms([other], now, policy.forget_after_ms) == 0
        assert await store.login_wait_ms([], now, policy.forget_after_ms) == 0

    async def test_a_success_clears_the_account_and_idle_failures_are_forgotten(
        self, store: ServerStore
    ) -> None:
        policy = ThrottlePolicy(
            first_lock_ms=1_000, max_lock_ms=300_000, forget_after_ms=60_000, max_tracked=100
        )
        account, address = key_text(("account", "org", "ada")), key_text(("address", "10.0.0.1"))
        now = 5_000_000
        for _ in range(3):
            await store.login_failed([(account, 1), (address, 1)], now, policy)
        assert await store.login_wait_ms([account], now, policy.forget_after_ms) == 2_000
        # A right password clears the account's failures, not the address's.
        await store.login_succeeded(account)
        assert await store.login_wait_ms([account], now, policy.forget_after_ms) == 0
        assert await store.login_wait_ms([account, address], now, 60_000) == 2_000
        await store.login_failed([(account, 1)], now, policy)  # counted from none again
        assert await store.login_wait_ms([account], now, policy.forget_after_ms) == 0
        # Idle for forget_after_ms: nothing counts, and the next failure starts afresh
        # (a lock still running is forgotten too: 256 s, past the 60 s here).
        for _ in range(7):
            await store.login_failed([(address, 1)], now, policy)
        assert await store.login_wait_ms([address], now, policy.forget_after_ms) == 256_000
        later = now + policy.forget_after_ms
        assert await store.login_wait_ms([address], later - 1, policy.forget_after_ms) > 0
        assert await store.login_wait_ms([address], later, policy.forget_after_ms) == 0
        await store.login_failed([(address, 1)], later, policy)
        assert await store.login_wait_ms([address], later, policy.forget_after_ms) == 0
        await store.login_failed([(address, 1)], later, policy)
        assert await store.login_wait_ms([address], later, policy.forget_after_ms) == 1_000
        await store.login_succeeded(key_text(("account", "org", "nobody")))  # none: no-op

    async def test_a_claim_counts_a_failure_unless_the_key_is_locked(
        self, store: ServerStore
    ) -> None:
        """What a login does before checking a password: counted as a failure (a lock
        earned by it set), or, while locked, refused with the wait and nothing counted."""
        policy = ThrottlePolicy(
            first_lock_ms=1_000, max_lock_ms=300_000, forget_after_ms=60_000, max_tracked=100
        )
        key = key_text(("account", "org", "ada"))
        now = 7_000_000
        claims = [await store.login_claim(key, 2, now, policy) for _ in range(5)]
        assert claims == [0, 0, 0, 1_000, 1_000]  # the third earns the lock: 1 s
        assert await store.login_wait_ms([key], now, policy.forget_after_ms) == 1_000
        assert await store.login_claim(key, 2, now + 400, policy) == 600  # nothing counted
        assert await store.login_claim(key, 2, now + 1_000, policy) == 0  # the 4th: 2 s
        assert await store.login_wait_ms([key], now + 1_000, policy.forget_after_ms) == 2_000
        await store.login_failed([(key, 2)], now + 3_000, policy)  # the 5th: 4 s
        assert await store.login_claim(key, 2, now + 3_000, policy) == 4_000
        await store.login_succeeded(key)  # a right password clears its claim
        assert await store.login_claim(key, 2, now + 3_000, policy) == 0
        idle = now + 3_000 + policy.forget_after_ms  # idle: counted from none again
        assert await store.login_claim(key, 2, idle, policy) == 0
        assert await store.login_claim(key, 2, idle, policy) == 0
        assert await store.login_wait_ms([key], idle, policy.forget_after_ms) == 0
        with pytest.raises(InvalidInputError):
            await store.login_claim("", 2, now, policy)
        with pytest.raises(InvalidInputError):
            await store.login_claim(key, 0, now, policy)

    async def test_a_failure_dated_earlier_never_shortens_a_lock(self, store: ServerStore) -> None:
        """Processes' clocks differ a little: a failure another one dates earlier still
        counts, and leaves the lock where it was if its own would end sooner."""
        policy = ThrottlePolicy(
            first_lock_ms=10_000, max_lock_ms=10_000, forget_after_ms=60_000, max_tracked=100
        )
        key = key_text(("account", "org", "ada"))
        await store.login_failed([(key, 1)], 100_000, policy)
        await store.login_failed([(key, 1)], 100_000, policy)  # locked until 110,000
        await store.login_failed([(key, 1)], 95_000, policy)  # its lock: until 105,000
        assert await store.login_wait_ms([key], 100_000, policy.forget_after_ms) == 10_000

    async def test_at_most_max_tracked_keys_are_kept_the_least_recently_failed_going(
        self, store: ServerStore
    ) -> None:
        policy = ThrottlePolicy(
            first_lock_ms=50_000, max_lock_ms=50_000, forget_after_ms=60_000, max_tracked=3
        )
        keys = [key_text(("account", "org", f"user-{n}")) for n in range(5)]
        for n, key in enumerate(keys):  # each locked, one after the other
            await store.login_failed([(key, 1)], 1_000 + n, policy)
            await store.login_failed([(key, 1)], 1_000 + n, policy)
        waits = [await store.login_wait_ms([key], 2_000, 60_000) for key in keys]
        assert waits == [0, 0, 49_002, 49_003, 49_004]

    async def test_failed_logins_refuse_bad_arguments(self, store: ServerStore) -> None:
        policy = ThrottlePolicy(
            first_lock_ms=1_000, max_lock_ms=1_000, forget_after_ms=60_000, max_tracked=3
        )
        key = key_text(("account", "org", "ada"))
        bad_failures: list[Any] = [
            [("", 1)],
            [("k" * (MAX_KEY_LENGTH + 1), 1)],
            [(key, 0)],
            [(key, True)],
            [(key, 1), (key, 1)],
            [key],
            key,
        ]
        for bad in bad_failures:
            with pytest.raises(InvalidInputError):
                await store.login_failed(bad, 1_000, policy)
        with pytest.raises(InvalidInputError):
            await store.login_failed([(key, 1)], -1, policy)
        with pytest.raises(InvalidInputError):
            await store.login_failed([(key, 1)], 1_000, cast(Any, {"first_lock_ms": 1}))
        for keys, now, forget in (([""], 0, 1), ([key], -5, 1), ([key], 0, 0), (key, 0, 1)):
            with pytest.raises(InvalidInputError):
                await store.login_wait_ms(keys, now, forget)
        with pytest.raises(InvalidInputError):
            await store.login_succeeded("")
        assert await store.login_wait_ms([key], 1_000, 60_000) == 0  # nothing counted

    # sessions, secrets, client owners, the outbox summary, the quarantine

    async def test_sessions_are_stored_by_hash_bound_and_ended(self, store: ServerStore) -> None:
        await store.add_user("clinic", "dr.a", "argon-hash")
        await store.enrol_replica("r1", "clinic", enrolled_by="dr.a", secret_hash="s1")
        await store.add_session(session_row("a"))
        await store.add_session(session_row("b", replica=None))
        with pytest.raises(InvalidInputError, match="stored already"):
            await store.add_session(session_row("a"))
        assert await store.get_session("hash-a") == session_row("a")
        await store.bind_session("hash-b", "r1")
        with pytest.raises(InvalidInputError, match="no unbound session"):
            await store.bind_session("hash-b", "r2")  # bound once, for good
        assert (await store.get_session("hash-b")) == session_row("b")
        generation = await store.accounts_generation()
        assert await store.end_sessions(expired_at_ms=4_999) == 0
        assert await store.accounts_generation() == generation  # expiry ends nothing early
        await store.revoke_replica("r1")
        assert await store.get_session("hash-a") is None
        assert await store.get_session("hash-b") is None
        assert await store.accounts_generation() > generation

    async def test_a_new_password_and_a_disabled_account_end_the_users_sessions(
        self,
        store: ServerStore,
    ) -> None:
        await store.add_user("clinic", "dr.a", "argon-hash")
        await store.add_user("clinic", "dr.b", "argon-hash")
        await store.add_session(session_row("a"))
        await store.add_session(session_row("b", user="dr.b"))
        await store.set_password_hash("clinic", "dr.a", "rehash", end_sessions=False)
        assert await store.get_session("hash-a") is not None
        await store.set_password_hash("clinic", "dr.a", "new password's hash")
        assert await store.get_session("hash-a") is None
        assert await store.get_session("hash-b") is not None
        await store.set_user_disabled("clinic", "dr.b", True)
        assert await store.get_session("hash-b") is None
        account = await store.get_user("clinic", "dr.b")
        assert account is not None
        assert account.disabled
        await store.set_user_disabled("clinic", "dr.b", False)
        account = await store.get_user("clinic", "dr.b")
        assert account is not None
        assert not account.disabled
        with pytest.raises(InvalidInputError, match="no user"):
            await store.set_user_disabled("clinic", "nobody", True)

    async def test_account_standings_say_disabled_and_a_mark_that_changes_with_the_password(
        self, store: ServerStore
    ) -> None:
        """What laptops are told at a login (protocol version 16): per account of the
        organisation, its shown name, whether it is disabled, and a password mark that
        changes when a new password is set, and only then (a rehash keeps it)."""
        await store.add_user("clinic", "dr.a", "hash-a", display_name="Dr A")
        await store.add_user("clinic", "dr.b", "hash-b")
        await store.add_user("other", "dr.a", "hash-x")
        first = await store.account_standings("clinic")
        assert sorted(first) == ["dr.a", "dr.b"]
        assert (first["dr.a"].display_name, first["dr.b"].display_name) == ("Dr A", "dr.b")
        assert not first["dr.a"].disabled
        assert not first["dr.b"].disabled
        marks = [first["dr.a"].password_mark, first["dr.b"].password_mark]
        marks.append((await store.account_standings("other"))["dr.a"].password_mark)
        assert all(type(m) is bytes and len(m) == PASSWORD_MARK_BYTES for m in marks)
        assert len(set(marks)) == 3  # random: one account's mark tells nothing of another's
        assert all(b"hash" not in m for m in marks)

        await store.set_password_hash("clinic", "dr.a", "rehash-a", end_sessions=False)
        assert (await store.account_standings("clinic"))["dr.a"] == first["dr.a"]
        await store.set_password_hash("clinic", "dr.a", "new-a")
        changed = await store.account_standings("clinic")
        assert changed["dr.a"].password_mark != first["dr.a"].password_mark
        assert changed["dr.b"] == first["dr.b"]
        await store.set_user_disabled("clinic", "dr.b", True)
        disabled = (await store.account_standings("clinic"))["dr.b"]
        assert disabled.disabled
        assert disabled.password_mark == first["dr.b"].password_mark
        await store.set_user_disabled("clinic", "dr.b", False)
        assert (await store.account_standings("clinic"))["dr.b"] == first["dr.b"]
        with pytest.raises(InvalidInputError):
            await store.set_password_hash("clinic", "nobody", "x")
        assert await store.account_standings("nowhere") == {}

    async def test_the_admin_flag_is_kept_with_the_account(self, store: ServerStore) -> None:
        """An account is an administrator only when made one (``add_user(admin=True)``
        or ``set_user_admin``); the flag survives other account changes, leaves the
        sessions alone, and is refused when it is not a bool or the user unknown."""
        await store.add_user("clinic", "dr.a", "argon-hash")
        await store.add_user("clinic", "boss", "argon-hash", admin=True)
        await store.add_user("outreach", "boss", "argon-hash")
        plain, boss, namesake = (
            await store.get_user("clinic", "dr.a"),
            await store.get_user("clinic", "boss"),
            await store.get_user("outreach", "boss"),
        )
        assert plain is not None
        assert boss is not None
        assert namesake is not None
        assert (plain.admin, boss.admin, namesake.admin) == (False, True, False)
        await store.add_session(session_row("a"))
        await store.set_user_admin("clinic", "dr.a", True)
        assert await store.get_session("hash-a") is not None
        await store.set_user_admin("clinic", "boss", False)
        await store.set_user_disabled("clinic", "dr.a", True)
        await store.set_display_name("clinic", "dr.a", "Dr A")
        await store.set_password_hash("clinic", "dr.a", "new hash")
        plain, boss = await store.get_user("clinic", "dr.a"), await store.get_user("clinic", "boss")
        assert plain is not None
        assert boss is not None
        assert (plain.admin, boss.admin) == (True, False)
        with pytest.raises(InvalidInputError, match="no user"):
            await store.set_user_admin("clinic", "nobody", True)
        with pytest.raises(InvalidInputError, match="admin must be True or False"):
            await store.set_user_admin("clinic", "dr.a", 1)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="admin must be True or False"):
            await store.add_user("clinic", "dr.c", "argon-hash", admin="yes")  # type: ignore[arg-type]
        assert await store.get_user("clinic", "dr.c") is None

    async def test_end_sessions_takes_exactly_one_way_of_choosing(self, store: ServerStore) -> None:
        with pytest.raises(InvalidInputError, match="exactly one"):
            await store.end_sessions()
        with pytest.raises(InvalidInputError, match="exactly one"):
            await store.end_sessions(replica_id="r1", expired_at_ms=5)
        await store.add_session(session_row("a"))
        assert await store.end_sessions(token_hash="hash-a") == 1

    async def test_replica_secrets_are_given_once(self, store: ServerStore) -> None:
        await store.enrol_replica("r1", "clinic", device_name="ward laptop 3", secret_hash="s1")
        await store.enrol_replica("r2", "clinic")  # enrolled before secrets existed
        assert await store.replica_secret_hash("r1") == "s1"
        assert await store.replica_secret_hash("r2") is None
        with pytest.raises(InvalidInputError, match="has a secret already"):
            await store.set_replica_secret_hash("r1", "s1-again")
        await store.set_replica_secret_hash("r2", "s2")
        assert await store.replica_secret_hash("r2") == "s2"
        info = await store.get_replica("r1")
        assert info is not None
        assert info.device_name == "ward laptop 3"

    async def test_only_an_unused_replica_takes_a_new_secret_from_its_own_account(
        self, store: ServerStore
    ) -> None:
        """``reissue_replica_secret``: for an enrolment whose answer was lost on the way."""
        for replica_id in ("unused", "seen", "revoked"):
            await store.enrol_replica(replica_id, "clinic", enrolled_by="dr.a", secret_hash="s")
        await store.touch_replica("seen", 1_000)
        await store.revoke_replica("revoked")
        await store.add_session(SessionRow("h-1", "clinic", "dr.a", "unused", 1, 10))
        await store.add_session(SessionRow("h-2", "clinic", "dr.a", "seen", 1, 10))
        refused = [
            ("unused", "clinic", "dr.b"),
            ("unused", "other", "dr.a"),
            ("seen", "clinic", "dr.a"),
            ("revoked", "clinic", "dr.a"),
            ("unknown", "clinic", "dr.a"),
        ]
        for replica_id, organisation, user in refused:
            assert not await store.reissue_replica_secret(
                replica_id, organisation=organisation, enrolled_by=user, secret_hash="new"
            )
        assert await store.replica_secret_hash("unused") == "s"
        assert await store.replica_secret_hash("seen") == "s"
        assert await store.get_session("h-1") is not None
        assert await store.get_replica("unknown") is None
        assert await store.reissue_replica_secret(
            "unused", organisation="clinic", enrolled_by="dr.a", secret_hash="new"
        )
        assert await store.replica_secret_hash("unused") == "new"
        assert await store.get_session("h-1") is None  # its sessions end
        assert await store.get_session("h-2") is not None
        with pytest.raises(InvalidInputError, match="enrolled_by"):
            await store.reissue_replica_secret(
                "unused", organisation="clinic", enrolled_by="", secret_hash="newer"
            )
        assert await store.replica_secret_hash("unused") == "new"

    async def test_enrolments_and_revocations_keep_their_audit_entries_in_their_commit(
        self, store: ServerStore
    ) -> None:
        """``audit`` of ``enrol_replica``, ``reissue_replica_secret`` and
        ``revoke_replica``: on the store's own chain with the change, never without it."""
        await store.set_identity(Identity("server-1", "server"))
        enrolled = AuditEvent("dr.a", "enrol", None, "r1")
        await store.enrol_replica("r1", "clinic", enrolled_by="dr.a", audit=[enrolled])
        with pytest.raises(InvalidInputError):
            await store.enrol_replica("r1", "clinic", audit=[AuditEvent("dr.b", "enrol")])
        again = AuditEvent("dr.a", "enrol", None, "r1 again: a new secret")
        assert await store.reissue_replica_secret(
            "r1", organisation="clinic", enrolled_by="dr.a", secret_hash="s2", audit=[again]
        )
        assert not await store.reissue_replica_secret(
            "r1", organisation="clinic", enrolled_by="dr.b", secret_hash="s3", audit=[again]
        )
        revoked = AuditEvent("os:admin", "revoke", None, "r1")
        with pytest.raises(InvalidInputError, match="replica_id"):
            await store.revoke_replica("r1", audit=[revoked], audit_as="")  # no such chain
        assert await store.revoke_replica("r1", audit=[revoked])
        assert not await store.revoke_replica("r1", audit=[revoked])  # once
        trail = await store.audit_entries(replica_id="server-1", after_seq=0, limit=100)
        assert [(e.actor, e.action, e.detail) for e in trail] == [
            ("dr.a", "enrol", "r1"),
            ("dr.a", "enrol", "r1 again: a new secret"),
            ("os:admin", "revoke", "r1"),
        ]
        info = await store.get_replica("r1")
        assert info is not None
        assert info.revoked

    async def test_a_resumed_logins_reads_are_each_what_its_single_read_returns(
        self, store: ServerStore
    ) -> None:
        await store.set_identity(Identity("server-1", "server"))
        await store.add_user("clinic", "dr.a", "argon-hash", display_name="Dr A")
        await store.add_user("clinic", "dr.b", "argon-hash-b")
        await store.add_user("other", "dr.c", "argon-hash-c")
        await store.enrol_replica("r1", "clinic", enrolled_by="dr.a", secret_hash="s1")
        await store.touch_replica("r1", 1_500, pending=3, oldest_pending_ms=1_200)
        await store.add_session(session_row("a"))
        await store.set_meta("pushed:r1", "17")
        await store.receive_audit("r1", audit_chain("r1", 2))
        reads = await store.read_resume("hash-a", "r1", meta_keys=["pushed:r1", "absent"])
        assert reads.session == await store.get_session("hash-a")
        assert reads.replica == await store.get_replica("r1")
        assert reads.replica is not None
        assert reads.replica.pending == 3
        assert reads.secret_hash == await store.replica_secret_hash("r1") == "s1"
        assert reads.account == await store.get_user("clinic", "dr.a")
        assert reads.accounts == await store.organisation_accounts("clinic")
        assert reads.accounts == {"dr.a": "Dr A", "dr.b": "dr.b"}
        assert reads.standings == await store.account_standings("clinic")
        assert reads.audit_tail == await store.audit_tail("r1")
        assert reads.audit_tail[0] == 2
        assert reads.meta == {"pushed:r1": "17", "absent": None}
        # No such session, no such replica: each part as its single read says.
        none = await store.read_resume("hash-x", "r9")
        assert (none.session, none.replica, none.secret_hash) == (None, None, None)
        assert (none.account, none.accounts, none.meta) == (None, None, {})
        assert none.standings is None
        assert none.audit_tail == await store.audit_tail("r9")
        for bad in ("", None, 7):
            with pytest.raises(InvalidInputError):
                await store.read_resume(bad, "r1")  # type: ignore[arg-type]
            with pytest.raises(InvalidInputError):
                await store.read_resume("hash-a", bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError):
            await store.read_resume("hash-a", "r1", meta_keys=[""])
        with pytest.raises(InvalidInputError):
            await store.read_resume("hash-a", "r1", meta_keys="pushed:r1")

    async def test_yjs_clients_keep_their_first_owner(self, store: ServerStore) -> None:
        patient = Patient()
        rid = patient.id
        item = IncomingUpdate(rid, patient.created, None, "clinic")
        await store.write_remote(
            [item], to_feed=True, claim_clients={(rid, 7): "r1", (rid, 2**52): "r1"}
        )
        # A claim of a bound pair by another replica refuses the whole batch (two
        # processes racing to bind one id: exactly one wins); the same owner again is fine.
        edit = IncomingUpdate(rid, patient.edit("birthDate", "1990"), None, "clinic")
        with pytest.raises(RefusedUpdateError, match="Yjs client 7") as refused:
            await store.write_remote(
                [edit], to_feed=True, claim_clients={(rid, 7): "r2", (rid, 9): "r2"}
            )
        assert refused.value.record_id == rid
        assert await store.feed_head() == 1
        assert await store.client_owners([(rid, 9)]) == {}  # nothing of the batch kept
        await store.write_remote(
            [edit], to_feed=True, claim_clients={(rid, 7): "r1", (rid, 9): "r2"}
        )
        asked = [(rid, 7), (rid, 9), (rid, 2**52), (rid, 11)]
        assert await store.client_owners(asked) == {
            (rid, 7): "r1",
            (rid, 9): "r2",
            (rid, 2**52): "r1",
        }
        assert await store.feed_head() == 2
        with pytest.raises(InvalidInputError, match="Yjs client id"):
            await store.client_owners([(rid, 2**53)])
        with pytest.raises(InvalidInputError, match="record_id, client"):
            await store.client_owners([7])  # type: ignore[list-item]
        with pytest.raises(InvalidInputError, match="claim_clients"):
            await store.write_remote([edit], to_feed=True, claim_clients=[(rid, 7)])  # type: ignore[arg-type]

    async def test_yjs_clients_are_bound_per_record(self, store: ServerStore) -> None:
        """A client id means something only within one record: the same id bound in one
        record is free in every other (two laptops' random ids may collide), and each
        record keeps its own first owner."""
        first, second = Patient(), Patient()
        await store.write_remote(
            [IncomingUpdate(first.id, first.created, None, "clinic")],
            to_feed=True,
            claim_clients={(first.id, 7): "r1"},
        )
        assert await store.client_owners([(first.id, 7), (second.id, 7)]) == {(first.id, 7): "r1"}
        await store.write_remote(
            [IncomingUpdate(second.id, second.created, None, "clinic")],
            to_feed=True,
            claim_clients={(second.id, 7): "r2"},
        )
        assert await store.client_owners([(first.id, 7), (second.id, 7)]) == {
            (first.id, 7): "r1",
            (second.id, 7): "r2",
        }
        # Asked many at once (a large push), in as many reads as the store needs.
        many = [(record_id, client) for record_id in (first.id, second.id) for client in range(600)]
        assert await store.client_owners(many) == {(first.id, 7): "r1", (second.id, 7): "r2"}
        edit = IncomingUpdate(second.id, second.edit("birthDate", "1990"), None, "clinic")
        with pytest.raises(RefusedUpdateError, match=f"record {second.id}"):
            await store.write_remote([edit], to_feed=True, claim_clients={(second.id, 7): "r1"})
        assert await store.feed_head() == 2

    async def test_a_meta_value_set_if_absent_keeps_the_first(self, store: ServerStore) -> None:
        assert await store.set_meta_if_absent("server-key", "first") == "first"
        assert await store.set_meta_if_absent("server-key", "second") == "first"
        assert await store.get_meta("server-key") == "first"

    async def test_exclusive_commits_admit_one_holder_at_a_time(self, store: ServerStore) -> None:
        """Two holders in one process follow one another (across processes, a shared
        store's own tests show it); a commit inside the section is kept."""
        inside: list[str] = []
        entered = asyncio.Event()

        async def hold(name: str, release: asyncio.Event | None) -> None:
            async with store.exclusive_commits():
                inside.append(f"{name} in")
                entered.set()
                if release is not None:
                    await release.wait()
                inside.append(f"{name} out")

        release = asyncio.Event()
        first = asyncio.create_task(hold("a", release))
        await entered.wait()
        second = asyncio.create_task(hold("b", None))
        await asyncio.sleep(0)  # b runs up to the lock
        assert inside == ["a in"]
        release.set()
        await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert inside == ["a in", "a out", "b in", "b out"]
        p = Patient()
        async with store.exclusive_commits():
            assert await store.write_remote([remote(p, p.created)], to_feed=True) == [1]
        assert await store.feed_head() == 1

    async def test_hub_sending_is_one_holders_claim_per_record(self, store: ServerStore) -> None:
        """``hub_sending``: True for the first holder of a record, False for any other
        while it holds it (and a refused claim lets nothing go); another record is
        another claim; an error or a cancellation inside lets go. (Across processes, a
        shared store's own tests show it.)"""
        async with store.hub_sending("r1") as mine:
            assert mine
            async with store.hub_sending("r1") as again:
                assert not again
            async with store.hub_sending("r1") as still:
                assert not still  # the refusal above let nothing go
            async with store.hub_sending("r2") as other:
                assert other
        async with store.hub_sending("r1") as after:
            assert after

        async def fail() -> None:
            async with store.hub_sending("r1") as mine:
                assert mine
                raise RuntimeError("the attempt failed")

        with pytest.raises(RuntimeError):
            await fail()
        entered, never = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            async with store.hub_sending("r1") as held:
                assert held
                entered.set()
                await never.wait()

        holder = asyncio.create_task(hold())
        await asyncio.wait_for(entered.wait(), 10)
        holder.cancel()
        await asyncio.wait({holder}, timeout=10)
        assert holder.cancelled()
        async with store.hub_sending("r1") as after_cancel:
            assert after_cancel

    async def test_a_feed_write_wakes_a_waiter(self, store: ServerStore) -> None:
        waiting = asyncio.create_task(store.wait_for_feed(30))
        p = Patient()
        await store.write_remote([remote(p, p.created)], to_feed=True)
        # A (re)connected listener may wake at once too: either way it returns promptly.
        assert await asyncio.wait_for(waiting, 30)
        with pytest.raises(InvalidInputError, match="timeout_s"):
            await store.wait_for_feed(0)

    @pytest.mark.parametrize("seed", range(6))
    async def test_cards_received_or_reindexed_leave_exactly_the_pairs_of_the_final_cards(
        self, store: ServerStore, seed: int
    ) -> None:
        """Random cards in batches a server writes (received, re-indexed)."""
        await _cards_in_any_batches(store, seed, ["remote", "reindex"])

    # What StoreConformance checks with a laptop's part as well, for a server-only store.

    @pytest.mark.parametrize("garbage", [b"", b"\x00", b"not an update", b"\xff" * 40])
    async def test_a_server_refuses_bytes_that_are_not_an_update_and_stores_nothing(
        self, store: ServerStore, garbage: bytes
    ) -> None:
        p = Patient()
        good = IncomingUpdate(p.id, p.created, (conflict(p.id),), "org-1")
        for to_feed in (False, True):
            with pytest.raises(InvalidUpdateError):
                await store.write_remote(
                    [good, remote(p, garbage)], checkpoint=("k", "1"), to_feed=to_feed
                )
        assert await store.count_records() == 0
        assert await store.count_conflicts() == 0
        assert await store.get_meta("k") is None
        assert await store.feed_head() == 0
        assert await store.check() == []

    async def test_a_server_compacts_its_feed_and_log_rows_and_the_feed_keeps_them(
        self, store: ServerStore
    ) -> None:
        p, peer = Patient("laptop-b"), Patient("laptop-c")
        await store.write_remote([IncomingUpdate(p.id, p.created, None, "org-1")], to_feed=True)
        await store.write_remote([remote(p, p.edit("birthDate", "1980"))], to_feed=True)
        await store.write_remote([remote(p, p.edit("name", "Ada"))])  # not into the feed
        await store.write_remote(
            [IncomingUpdate(peer.id, peer.created, None, "org-1")], to_feed=True
        )
        feed = await store.feed_since(0, limit=100)
        assert await store.log_length(p.id) == 3
        assert await store.compact(p.id) == 3
        assert await store.log_length(p.id) == 0
        assert await store.compact(p.id) == 0  # nothing folded twice
        assert await store.feed_since(0, limit=100) == feed
        await store.write_remote([remote(p, p.edit("birthDate", "1981"))], to_feed=True)
        await store.write_remote([remote(p, p.edit("name", "Ada B."))])
        assert await store.log_length(p.id) == 2
        loaded = await store.load(p.id)
        assert loaded is not None
        assert revision_ids(loaded, p.id) == {r.id for r in p.record.revisions()}
        assert await store.check() == []
        assert await store.compact(p.id) == 2
        again = await store.load(p.id)
        assert again is not None
        assert revision_ids(again, p.id) == revision_ids(loaded, p.id)
        assert [f.seq for f in await store.feed_since(0, limit=100)] == [1, 2, 3, 4]
        assert await store.load_many([p.id, peer.id]) == {
            p.id: again,
            peer.id: await store.load(peer.id),
        }
        assert await store.check() == []

    async def test_every_error_of_a_server_store_is_a_caresync_error(
        self, store: ServerStore
    ) -> None:
        for call in (
            store.load(""),
            store.feed_since(0, limit=-5),
            store.feed_since(-1, limit=5),
            store.record_ids(limit=-1),
            store.write_remote(["not an item"]),  # type: ignore[list-item]
            store.get_user("", "x"),
            store.enrol_replica("r", ""),
        ):
            with pytest.raises(CaresyncError):
                await call


class StoreConformance(LaptopStoreSuite, ServerStoreSuite):
    """Every part, and what needs a laptop's and a server's part in one store."""

    # local edits

    @pytest.mark.parametrize("garbage", [b"", b"\x00", b"not an update", b"\xff" * 40])
    async def test_bytes_that_are_not_an_update_are_refused_and_nothing_is_stored(
        self, store: Store, garbage: bytes
    ) -> None:
        p = Patient()
        with pytest.raises(InvalidUpdateError):
            await store.write_local(p.id, garbage, conflicts=[conflict(p.id)])
        with pytest.raises(InvalidUpdateError):
            await store.write_remote(
                [remote(p, p.created), remote(p, garbage)], checkpoint=("k", "1")
            )
        assert await store.count_records() == 0
        assert await store.pending_count() == 0
        assert await store.count_conflicts() == 0
        assert await store.get_meta("k") is None
        assert await store.feed_head() == 0
        assert await store.check() == []

    # compaction

    async def test_a_server_compacts_what_it_wrote_into_the_feed_and_the_feed_keeps_it(
        self,
        store: Store,
    ) -> None:
        p, peer = Patient("laptop-b"), Patient("laptop-c")
        await store.write_remote([IncomingUpdate(p.id, p.created, None, "org-1")], to_feed=True)
        await store.write_remote([remote(p, p.edit("birthDate", "1980"))], to_feed=True)
        await store.write_remote([remote(p, p.edit("name", "Ada"))])  # not into the feed
        await store.write_remote(
            [IncomingUpdate(peer.id, peer.created, None, "org-1")], to_feed=True
        )
        feed = await store.feed_since(0, limit=100)
        assert await store.log_length(p.id) == 3
        assert await store.compact(p.id) == 3
        assert await store.log_length(p.id) == 0
        assert await store.compact(p.id) == 0  # nothing folded twice
        assert await store.feed_since(0, limit=100) == feed
        await store.write_remote([remote(p, p.edit("birthDate", "1981"))], to_feed=True)
        await store.write_local(p.id, p.edit("name", "Ada B."), conflicts=None)
        assert await store.log_length(p.id) == 2
        loaded = await store.load(p.id)
        assert loaded is not None
        assert revision_ids(loaded, p.id) == {r.id for r in p.record.revisions()}
        assert await store.check() == []
        assert await store.compact(p.id) == 2
        again = await store.load(p.id)
        assert again is not None
        assert revision_ids(again, p.id) == revision_ids(loaded, p.id)
        assert [f.seq for f in await store.feed_since(0, limit=100)] == [1, 2, 3, 4]
        assert await store.load_many([p.id, peer.id]) == {
            p.id: again,
            peer.id: await store.load(peer.id),
        }
        assert await store.check() == []

    # lifecycle

    async def test_every_error_is_a_caresync_error(self, store: Store) -> None:
        for call in (
            store.load(""),
            store.pending(-1),
            store.feed_since(0, limit=-5),
            store.record_ids(limit=-1),
            store.write_remote(["not an item"]),  # type: ignore[list-item]
        ):
            with pytest.raises(CaresyncError):
                await call
