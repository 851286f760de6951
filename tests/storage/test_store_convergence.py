"""The foundation's convergence state machine, run with every replica on a SQLite store.

Each replica of ``tests.convergence_model.Network`` writes every update it
makes (``write_local``) or receives (``write_remote``, the bytes as received)
to its own SQLite file.
Restarting a replica closes its store, reopens the file and rebuilds the
replica from the stored bytes only; compaction may run at any time. On top of
the foundation's invariants (same revisions, same view; nothing written is
lost), every store must hold exactly what its replica holds.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import tests.test_convergence_properties as foundation
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, rule
from store_helpers import same_vector
from tests.convergence_model import Network, _continue_ids, revision_ids

from caresync import Record
from caresync.storage import IncomingUpdate, SQLiteStore

T = TypeVar("T")


async def open_store(path: Path, *, create: bool = True) -> SQLiteStore:
    return await SQLiteStore.open(path, create=create)


@dataclass
class StoredNetwork(Network):
    """A Network whose replicas persist every update to their own SQLite store."""

    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="caresync-")))
    runner: asyncio.Runner = field(default_factory=asyncio.Runner)
    stores: dict[int, SQLiteStore] = field(default_factory=dict)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coroutine)

    @classmethod
    def start_stored(cls, n: int) -> StoredNetwork:
        net = cls([])
        first = net._make(Record.create, "laptop-0", record_id="rec-0")
        net.replicas.append(first)
        for i in range(1, n):
            net.replicas.append(
                net._make(Record.from_update, f"laptop-{i}", first.record_id, first.update_since())
            )
        for i, replica in enumerate(net.replicas):
            store = net.stores[i] = net.run(open_store(net.directory / f"laptop-{i}.db"))
            if i == 0:  # the record was created here; the others received a copy
                net.run(store.write_local("rec-0", replica.update_since(), conflicts=None))
            else:
                net.run(store.write_remote([IncomingUpdate("rec-0", replica.update_since(), None)]))
        return net

    def _make(self, factory: Any, replica: str, *args: Any, **kwargs: Any) -> Record:
        record = super()._make(factory, replica, *args, **kwargs)
        index = int(replica.split("-")[1])
        record.on_update(lambda update, local: self._persist_local(index, update, local))
        # Received bytes are stored as received, before they are applied: a
        # transaction's own update can be empty when an update arrives early.
        apply_update = record.apply_update

        def persist_then_apply(update: bytes) -> None:
            store = self.stores.get(index)
            if store is not None:
                self.run(store.write_remote([IncomingUpdate("rec-0", update, None)]))
            apply_update(update)

        record.apply_update = persist_then_apply  # type: ignore[method-assign]
        return record

    def _persist_local(self, index: int, update: bytes, is_local: bool) -> None:
        store = self.stores.get(index)
        if store is not None and is_local:
            self.run(store.write_local("rec-0", update, conflicts=None))

    def restart(self, i: int) -> None:
        """Close replica i's store, reopen the file, rebuild the replica from it alone."""
        old = self.replicas[i]
        self.run(self.stores[i].close())
        self.stores[i] = self.run(open_store(self.directory / f"laptop-{i}.db", create=False))
        stored = self.run(self.stores[i].load(old.record_id))
        assert stored is not None
        self.replicas[i] = self._make(Record.from_update, f"laptop-{i}", old.record_id, stored)
        self.replicas[i]._new_id = _continue_ids(old)

    def close(self) -> None:
        for store in self.stores.values():
            self.run(store.close())
        self.runner.close()
        shutil.rmtree(self.directory)  # the test's own temporary directory


class ReplicasConvergeOnStores(foundation.ReplicasConverge):
    net: StoredNetwork

    @initialize(n=st.integers(min_value=2, max_value=4))
    def start(self, n: int) -> None:
        self.net = StoredNetwork.start_stored(n)

    @rule(i=foundation.replica_index)
    def compact(self, i: int) -> None:
        store = self.net.stores[self.pick(i)]
        self.net.run(store.compact("rec-0"))

    @invariant()
    def every_store_holds_what_its_replica_holds(self) -> None:
        if not hasattr(self, "net"):
            return
        for i, replica in enumerate(self.net.replicas):
            store = self.net.stores[i]
            stored = self.net.run(store.load("rec-0"))
            assert stored is not None
            reread = Record.from_update("rec-0", stored, replica="reader")
            assert revision_ids(reread) == revision_ids(replica)
            vector = self.net.run(store.state_vector("rec-0"))
            assert vector is not None
            assert same_vector(vector, replica.state_vector())

    def teardown(self) -> None:
        if not hasattr(self, "net"):
            return
        try:
            super().teardown()
            self.every_store_holds_what_its_replica_holds()
            for store in self.net.stores.values():
                assert self.net.run(store.check()) == []
        finally:
            self.net.close()


TestReplicasConvergeOnStores = ReplicasConvergeOnStores.TestCase
TestReplicasConvergeOnStores.settings = settings(settings(), stateful_step_count=40)
