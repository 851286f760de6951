"""A stateful property test: a store agrees with a plain in-memory model, whatever happens.

A laptop edits records locally (``write_local``); peers edit their own copies,
and their updates reach the store in any order, in batches, duplicated or
late (``write_remote`` with a checkpoint, sometimes into the change feed).
Compactions, acknowledgements and (for SQLite) closing and reopening the file
happen in between. After every step the store must hold exactly the revisions
a document given the same updates holds, the same state vector, the outbox of
every unacknowledged local edit, and pass its own check. The same machine
runs against the in-memory and the SQLite store.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from store_helpers import same_vector

from caresync import Record
from caresync.storage import IncomingUpdate, MemoryStore, SQLiteStore, Store

T = TypeVar("T")
RECORDS = ("rec-a", "rec-b")
PATHS = ("birthDate", "name", "address/city")
VALUES = st.sampled_from(["a", "b", "c", 1, 2, None, [1, 2]])


class Captured:
    def __init__(self, record: Record) -> None:
        self.record = record
        self.last = b""
        record.on_update(self._on_update)

    def _on_update(self, update: bytes, is_local: bool) -> None:
        if is_local:
            self.last = update

    def write(self, path: str, value: Any, author: str) -> bytes:
        self.record.set(path, value, author=author)
        return self.last


class StoreAgreesWithModel(RuleBasedStateMachine):
    sqlite = False

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.directory = Path(tempfile.mkdtemp(prefix="caresync-prop-"))
        self.store: Store = self.run(self.open())
        self.mine: dict[str, Captured] = {}
        self.peers: dict[str, list[Captured]] = {}
        self.given: dict[str, list[bytes]] = {}
        self.outbox: dict[int, bytes] = {}
        self.in_flight: list[tuple[str, bytes]] = []
        self.remote: set[bytes] = set()
        self.server = False
        self.pulls = 0
        for record_id in RECORDS:
            laptop = Captured(Record.create(replica="laptop", record_id=record_id))
            created = laptop.record.update_since()
            seq = self.run(self.store.write_local(record_id, created, conflicts=None))
            self.outbox[seq] = created
            self.given[record_id] = [created]
            self.mine[record_id] = laptop
            self.peers[record_id] = [
                Captured(Record.from_update(record_id, created, replica=f"peer-{n}"))
                for n in range(2)
            ]

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coroutine)

    async def open(self) -> Store:
        if self.sqlite:
            return await SQLiteStore.open(self.directory / "replica.db")
        return MemoryStore()

    def teardown(self) -> None:
        self.run(self.store.close())
        self.runner.close()
        shutil.rmtree(self.directory)  # the test's own temporary directory

    # ------------------------------------------------------------------- rules

    @initialize(server=st.booleans())
    def choose_role(self, server: bool) -> None:
        """A server puts every received update in its change feed; a laptop never does."""
        self.server = server

    @rule(record=st.sampled_from(RECORDS), path=st.sampled_from(PATHS), value=VALUES)
    def local_edit(self, record: str, path: str, value: Any) -> None:
        update = self.mine[record].write(path, value, "dr.local")
        seq = self.run(self.store.write_local(record, update, conflicts=None))
        assert seq not in self.outbox
        assert all(seq > s for s in self.outbox)
        self.outbox[seq] = update
        self.given[record].append(update)

    @rule(
        record=st.sampled_from(RECORDS),
        peer=st.integers(0, 1),
        path=st.sampled_from(PATHS),
        value=VALUES,
    )
    def peer_edit(self, record: str, peer: int, path: str, value: Any) -> None:
        update = self.peers[record][peer].write(path, value, f"dr.peer{peer}")
        self.in_flight.append((record, update))

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), keep=st.booleans())
    def deliver(self, data: st.DataObject, keep: bool) -> None:
        picked = data.draw(
            st.lists(st.sampled_from(range(len(self.in_flight))), min_size=1, max_size=6)
        )
        batch = [self.in_flight[i] for i in picked]  # any order, maybe twice
        if not keep:
            self.in_flight = [m for i, m in enumerate(self.in_flight) if i not in set(picked)]
        self.pulls += 1
        self.run(
            self.store.write_remote(
                [IncomingUpdate(r, u, None) for r, u in batch],
                checkpoint=("pull", str(self.pulls)),
                to_feed=self.server,
            )
        )
        for record, update in batch:
            self.given[record].append(update)
            self.mine[record].record.apply_update(update)
            self.remote.add(update)

    @rule(record=st.sampled_from(RECORDS))
    def compact(self, record: str) -> None:
        self.run(self.store.compact(record))
        assert self.run(self.store.log_length(record)) == 0

    @precondition(lambda self: self.outbox)
    @rule(data=st.data())
    def acknowledge(self, data: st.DataObject) -> None:
        up_to = data.draw(st.sampled_from(sorted(self.outbox)))
        self.run(self.store.acknowledge(up_to))
        self.outbox = {s: u for s, u in self.outbox.items() if s > up_to}

    @precondition(lambda self: self.sqlite)
    @rule()
    def reopen(self) -> None:
        self.run(self.store.close())
        self.store = self.run(self.open())

    # -------------------------------------------------------------- invariants

    @invariant()
    def records_hold_what_a_document_given_the_same_updates_holds(self) -> None:
        for record_id, updates in self.given.items():
            model = Record(record_id, replica="model")
            for update in updates:
                model.apply_update(update)
            stored = self.run(self.store.load(record_id))
            assert stored is not None
            got = Record.from_update(record_id, stored, replica="reader")
            assert {r.id for r in got.revisions()} == {r.id for r in model.revisions()}
            for path in PATHS:
                assert [h.id for h in got.get(path).heads] == [h.id for h in model.get(path).heads]
            vector = self.run(self.store.state_vector(record_id))
            assert vector is not None
            assert same_vector(vector, model.state_vector())

    @invariant()
    def the_outbox_holds_every_unacknowledged_local_edit(self) -> None:
        pending = self.run(self.store.pending(10_000))
        assert {i.seq: i.update for i in pending} == self.outbox

    @invariant()
    def the_feed_and_checkpoint_follow_the_pulls(self) -> None:
        feed = self.run(self.store.feed_since(0, limit=100_000))
        # Every distinct update once at least (a resent one is usually recognised).
        assert {f.update for f in feed} == (self.remote if self.server else set())
        assert [f.seq for f in feed] == list(range(1, len(feed) + 1))
        expected = str(self.pulls) if self.pulls else None
        assert self.run(self.store.get_meta("pull")) == expected

    @invariant()
    def the_store_checks_out(self) -> None:
        assert self.run(self.store.check()) == []


class SQLiteStoreAgreesWithModel(StoreAgreesWithModel):
    sqlite = True


StoreAgreesWithModel.TestCase.settings = settings(stateful_step_count=25, deadline=None)
SQLiteStoreAgreesWithModel.TestCase.settings = settings(stateful_step_count=25, deadline=None)
TestMemoryStoreAgreesWithModel = StoreAgreesWithModel.TestCase
TestSQLiteStoreAgreesWithModel = SQLiteStoreAgreesWithModel.TestCase
