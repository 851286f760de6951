"""A stateful property test of SQLite schema 18 (a record's state kept with its newest
log row): whatever mix of writes reaches a record (local edits, pulls in any order,
feed writes, first copies, compaction), every reader of its state, on a warm cache and
on an empty one, says what pycrdt makes of the updates it was given."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pycrdt
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from store_helpers import same_vector

from caresync import Record
from caresync.exceptions import InvalidInputError
from caresync.records.spans import advance_vector
from caresync.storage import CopiedRecords, IncomingUpdate, SQLiteStore

T = TypeVar("T")
RECORDS = ("rec-a", "rec-b", "rec-c")


def _oracle(updates: list[bytes]) -> tuple[bytes, bool]:
    """pycrdt's state vector of a document given ``updates``, and whether any wait."""
    doc: pycrdt.Doc = pycrdt.Doc()
    for update in updates:
        doc.apply_update(update)
    vector = doc.get_state()
    whole = pycrdt.merge_updates(*updates) if len(updates) > 1 else updates[0]
    rest = pycrdt.get_update(whole, vector)
    return vector, rest[:1] != b"\x00"


class LogHeadsAgreeWithPycrdt(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.directory = Path(tempfile.mkdtemp(prefix="caresync-heads-"))
        self.path = self.directory / "replica.db"
        self.store = self.run(self._open())
        self.origin = {rid: Record.create(replica="origin", record_id=rid) for rid in RECORDS}
        self.made: dict[str, list[bytes]] = {rid: [] for rid in RECORDS}
        for rid, record in self.origin.items():
            record.on_update(lambda u, local, rid=rid: self.made[rid].append(u) if local else None)
            self.made[rid].append(record.update_since())
        self.given: dict[str, list[bytes]] = {rid: [] for rid in RECORDS}

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coroutine)

    async def _open(self) -> SQLiteStore:
        return await SQLiteStore.open(self.path)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.runner.close()
        shutil.rmtree(self.directory)  # the test's own temporary directory

    def _stored(self) -> list[str]:
        return [rid for rid in RECORDS if self.given[rid]]

    # ------------------------------------------------------------------- rules

    @rule(record=st.sampled_from(RECORDS), value=st.integers(0, 9))
    def origin_edits(self, record: str, value: int) -> None:
        self.origin[record].set("birthDate", f"199{value}-01-01", author="dr.a")

    @rule(data=st.data(), to_feed=st.booleans())
    def pull(self, data: st.DataObject, to_feed: bool) -> None:
        """Updates made at the origin, in any order, some twice, into the log or the feed."""
        made = [(rid, u) for rid in RECORDS for u in self.made[rid]]
        batch = data.draw(st.lists(st.sampled_from(made), min_size=1, max_size=5))
        self.run(
            self.store.write_remote([IncomingUpdate(r, u, None) for r, u in batch], to_feed=to_feed)
        )
        for rid, update in batch:
            self.given[rid].append(update)

    @rule(record=st.sampled_from(RECORDS), value=st.integers(0, 9))
    def local_edit(self, record: str, value: int) -> None:
        """An edit made here: on the origin's document as this store holds it."""
        if not self.given[record]:
            return
        here = Record.from_update(record, pycrdt.merge_updates(*self.given[record]), replica="here")
        before = here.state_vector()
        here.set("name", f"n{value}", author="dr.b")
        update = here.update_since(before)
        self.run(self.store.write_local(record, update, conflicts=None))
        self.given[record].append(update)
        self.origin[record].apply_update(update)

    @rule(data=st.data())
    def pull_with_advances(self, data: st.DataObject) -> None:
        """A laptop's pull: one update per record, with the state vector after it worked
        out from the held one (as absorb does), or a new record with its own vector."""
        record = data.draw(st.sampled_from(RECORDS))
        update = data.draw(st.sampled_from(self.made[record]))
        held = self.run(self.store.held_states([record])).get(record)
        item = IncomingUpdate(record, update, None)
        if held is None:
            doc: pycrdt.Doc = pycrdt.Doc()
            doc.apply_update(update)
            item = IncomingUpdate(record, update, None, state_vector=doc.get_state())
        elif not held.pending:
            moved = advance_vector(held.state_vector, [update])
            if moved is not None and moved[1]:
                item = IncomingUpdate(record, update, None, advances=(held.state_vector, moved[0]))
        self.run(self.store.write_remote([item]))
        self.given[record].append(update)

    @rule(data=st.data(), value=st.integers(0, 9))
    def local_edits_in_one_batch(self, data: st.DataObject, value: int) -> None:
        """Two edits of a record, and an update it holds already, in one commit."""
        stored = self._stored()
        if not stored:
            return
        record = data.draw(st.sampled_from(stored))
        here = Record.from_update(record, pycrdt.merge_updates(*self.given[record]), replica="here")
        held = self.given[record][-1]
        edits = []
        for path in ("name", "address/city"):
            before = here.state_vector()
            here.set(path, f"v{value}", author="dr.b")
            edits.append(here.update_since(before))
        self.run(
            self.store.write_local_many(
                [IncomingUpdate(record, u, None) for u in (edits[0], held, edits[1])]
            )
        )
        self.given[record].extend(edits)
        for update in edits:
            self.origin[record].apply_update(update)

    @rule(data=st.data())
    def failed_write(self, data: st.DataObject) -> None:
        """A batch refused inside its transaction (a record claimed by two organisations):
        nothing of it stays, in the file or the cache."""
        made = [(rid, u) for rid in RECORDS for u in self.made[rid]]
        (rid, update), (other, more) = (
            data.draw(st.sampled_from(made)),
            data.draw(st.sampled_from(made)),
        )
        batch = [
            IncomingUpdate(other, more, None),
            IncomingUpdate(rid, update, None, organisation="org-1"),
            IncomingUpdate(rid, update, None, organisation="org-2"),
        ]
        try:
            self.run(self.store.write_remote(batch))
        except InvalidInputError:
            return
        raise AssertionError("a record claimed by two organisations was stored")

    @rule(data=st.data(), whole=st.booleans())
    def first_copy(self, data: st.DataObject, whole: bool) -> None:
        """A first copy's batch of two records: each as the origin holds it, or one of
        its updates alone (which may wait for another); the ordinary way when either is
        stored here already."""
        records = data.draw(st.lists(st.sampled_from(RECORDS), min_size=1, max_size=2, unique=True))
        updates, vectors = [], []
        for record in records:
            if whole:
                update = self.origin[record].update_since()
            else:
                update = data.draw(st.sampled_from(self.made[record]))
            doc: pycrdt.Doc = pycrdt.Doc()
            doc.apply_update(update)
            updates.append(update)
            vectors.append(doc.get_state())
            self.given[record].append(update)
        self.run(self.store.write_copy(CopiedRecords(records, updates, vectors, None, {}, {})))

    @precondition(lambda self: self._stored())
    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        record = data.draw(st.sampled_from(self._stored()))
        self.run(self.store.compact(record))
        assert self.run(self.store.log_length(record)) == 0

    @rule()
    def reopen(self) -> None:
        self.run(self.store.close())
        self.store = self.run(self._open())

    # -------------------------------------------------------------- invariants

    def _readers_agree(self) -> None:
        stored = self._stored()
        vectors = self.run(self.store.state_vectors(stored))
        held = self.run(self.store.held_states(stored))
        for rid in stored:
            vector, pending = _oracle(self.given[rid])
            assert same_vector(vectors[rid][0], vector), rid
            assert vectors[rid][1] == pending, rid
            assert same_vector(held[rid].state_vector, vector), rid
            assert held[rid].pending == pending, rid
            one = self.run(self.store.state_vector(rid))
            assert one is not None
            assert same_vector(one, vector), rid
            loaded = self.run(self.store.load(rid))
            assert loaded is not None
            doc: pycrdt.Doc = pycrdt.Doc()
            doc.apply_update(loaded)
            assert same_vector(doc.get_state(), vector), rid
        for rid in RECORDS:
            if not self.given[rid]:
                assert self.run(self.store.state_vector(rid)) is None

    @invariant()
    def every_reader_says_what_pycrdt_makes_of_the_updates(self) -> None:
        self._readers_agree()
        self.store.cache.clear()  # and as read from the file alone
        self._readers_agree()

    @invariant()
    def log_length_counts_the_records_pieces(self) -> None:
        conn = sqlite3.connect(self.path)
        try:
            for rid in self._stored():
                key, folded = conn.execute(
                    "SELECT rk, feed_folded FROM records WHERE record_id = ?", (rid,)
                ).fetchone()
                (pieces,) = conn.execute(
                    "SELECT (SELECT COUNT(*) FROM log WHERE rk = ?)"
                    " + (SELECT COUNT(*) FROM feed WHERE rk = ? AND seq > ?)",
                    (key, key, folded),
                ).fetchone()
                assert self.run(self.store.log_length(rid)) == pieces, rid
        finally:
            conn.close()

    @invariant()
    def the_store_checks_out(self) -> None:
        assert self.run(self.store.check()) == []


LogHeadsAgreeWithPycrdt.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_log_heads_agree_with_pycrdt = LogHeadsAgreeWithPycrdt.TestCase
