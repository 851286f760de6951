"""What a laptop takes from an authenticated server, the server untrusted.

Real parts: a server on 127.0.0.1 and SQLite files, made to misbehave: its store
written past its admission (as a server before admission, or a hostile one, could
have stored it), so that the check it sends fits what the laptop's record becomes;
its pull batches written past its own protocol checks; its live frames sent faster
than the laptop commits them. The laptop must refuse, or keep aside, what it would
without the check, end every pull, and hold a bounded backlog.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.live_helpers import LIMIT_S, enrolled, live, start_server, until, watch
from tests.e2e.test_first_copy_index import rows_by_record, seed

import caresync.replication.session
from caresync import Record
from caresync.exceptions import RemoteProtocolError
from caresync.protocol import LiveBatch, LiveUpdate, PullBatch, ServerProtocol
from caresync.protocol.states import RequestKind
from caresync.replica import Replica, ReplicaState, SyncLimits
from caresync.replication import meta
from caresync.replication.epochs import FeedPosition
from caresync.replication.pool import conflict_rows
from caresync.replication.session import Session
from caresync.storage import IncomingUpdate


async def test_a_checked_update_that_renames_a_record_is_kept_aside(tmp_path: Path) -> None:
    """A check fits the state after an update that makes the record another's: the
    record is still built, and the update kept aside (stored with the check, every
    later read of the record failed with RecordMismatchError)."""
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    laptop = await enrolled(tmp_path, server, "laptop", user="dr.b")
    try:
        held = await writer.create_record()
        await writer.set(held, "name", "Awa Diop")
        await writer.sync()
        await laptop.sync()
        await laptop.close()
        laptop = await Replica.open(tmp_path / "laptop.db")  # nothing of it in memory
        renamed = Record.from_update(held, await server.store.load(held) or b"", replica="evil")
        before = renamed.state_vector()
        renamed._meta["id"] = "another-record"  # no public API writes a record's id
        moved = renamed.update_since(before)
        # Into the record and the feed, past admission: the server's check of the
        # record now describes the state with the renaming update.
        await server.store.write_remote(
            [IncomingUpdate(held, moved, None, "clinic-a")], to_feed=True
        )
        await laptop.sync()
        [kept] = await laptop.quarantined()
        assert kept.record_id == held
        assert kept.update == moved
        assert "another-record" in kept.reason
        assert (await laptop.record(held)).value("name") == "Awa Diop"  # still readable
        stored = await laptop.store.load(held)
        assert stored is not None
        Record.from_update(held, stored, replica="check")  # still its own
    finally:
        await laptop.close()
        await writer.close()
        await server.close()


async def test_a_pull_that_says_more_but_covers_nothing_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that answers every pull with no entry, its checkpoint where the request
    started and more to come: the laptop asked again for ever (the sync never ended).
    Every honest batch that says more covers at least one feed entry."""
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    laptop = await enrolled(
        tmp_path, server, "laptop", user="dr.b", limits=SyncLimits(pull_limit=1)
    )
    batches = 0

    def stalling(
        self: ServerProtocol, items: Iterable[Any], *, checkpoint: int, head_seq: int, **_: Any
    ) -> None:
        # Past the server's own checks, as a hostile server would be.
        nonlocal batches
        batches += 1
        after = self.outstanding[RequestKind.PULL].after_seq  # type: ignore[attr-defined]
        self._send(PullBatch((), after, max(head_seq, after + 1)))

    try:
        for _ in range(3):
            await writer.create_record()
        await writer.sync()
        checkpoint = await laptop.store.get_meta(meta.CHECKPOINT)
        monkeypatch.setattr(ServerProtocol, "send_pull_batch", stalling)
        async with asyncio.timeout(LIMIT_S):
            with pytest.raises(RemoteProtocolError, match="covers no feed entry"):
                await laptop.sync()
        assert batches <= 2  # the one refused, and perhaps the one asked for ahead
        assert await laptop.store.get_meta(meta.CHECKPOINT) == checkpoint
    finally:
        await laptop.close()
        await writer.close()
        await server.close()


def _update_bytes(frame: LiveUpdate | LiveBatch) -> int:
    if isinstance(frame, LiveUpdate):
        return len(frame.update)
    return sum(len(item.update) for item in frame.items)


async def test_live_frames_waiting_for_their_commit_are_bounded_in_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live frames read while the laptop commits are held in memory: bounded by their
    bytes, not only by their count (10,000 frames of up to a frame's size each: a server
    sending faster than the laptop commits filled its memory). The reader stops reading
    until the committer has caught up, and nothing is lost."""
    budget = 50_000
    monkeypatch.setattr(caresync.replication.session, "LIVE_QUEUE_BYTES", budget, raising=False)
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    laptop = await enrolled(tmp_path, server, "laptop", user="dr.b")
    signal = watch(laptop)  # and each frame read, below
    # The committer's queue holds each frame with its size, as the reader counted it.
    queued: list[asyncio.Queue[tuple[LiveUpdate | LiveBatch, int]]] = []
    put = 0
    waiting = False
    commit_live = Session._commit_live
    room_for_live = getattr(Session, "_room_for_live", None)

    async def counted_commit(
        self: Session, updates: asyncio.Queue[tuple[LiveUpdate | LiveBatch, int]]
    ) -> None:
        queued.append(updates)
        put_event = updates.put

        async def counted_put(event: tuple[LiveUpdate | LiveBatch, int]) -> None:
            nonlocal put
            put += 1
            signal()
            await put_event(event)

        updates.put = counted_put  # type: ignore[method-assign]
        await commit_live(self, updates)

    async def watched_room(self: Session, size: int) -> None:
        nonlocal waiting
        waiting = bool(self._live_held) and self._live_held + size > budget
        signal()
        assert room_for_live is not None
        await room_for_live(self, size)
        waiting = False

    monkeypatch.setattr(Session, "_commit_live", counted_commit)
    monkeypatch.setattr(Session, "_room_for_live", watched_room, raising=False)
    frames = 8
    try:
        async with live(laptop) as run:
            async with asyncio.timeout(LIMIT_S):
                await run.states.reach(ReplicaState.ONLINE)
            async with laptop._write_lock:  # the laptop's committer waits for it
                for index in range(frames):  # one push, so one live frame, each
                    record_id = await writer.create_record()
                    await writer.set(record_id, "note", f"{index} " + "x" * 20_000)
                    await writer.sync()

                async def read_all_or_stopped() -> bool:
                    return put == frames or waiting

                async with asyncio.timeout(LIMIT_S):
                    await until(read_all_or_stopped, signal)
                [queue] = queued
                held = [queue.get_nowait() for _ in range(queue.qsize())]
                for frame in held:
                    queue.put_nowait(frame)  # as they were, for the committer
                assert sum(_update_bytes(frame) for frame, _size in held) <= budget
                assert put < frames  # the rest wait on the server's side

            async def caught_up() -> bool:
                head = await server.store.feed_head()
                return FeedPosition.parse(await laptop.store.get_meta(meta.CHECKPOINT)).seq == head

            async with asyncio.timeout(LIMIT_S):
                await until(caught_up, signal)
        assert len(await laptop.record_ids()) == frames  # nothing lost
    finally:
        await laptop.close()
        await writer.close()
        await server.close()


async def test_a_first_copy_keeps_aside_a_record_whose_bytes_name_another(
    tmp_path: Path,
) -> None:
    """A first copy stores the server's records without building them: one whose bytes
    make it another's (stored past admission) was stored all the same, and every read
    of it failed, the list of conflicts too (a record with rows is read to list them:
    one such record hid every conflict of the laptop). Kept aside, as when built."""
    server = await start_server(tmp_path)
    await seed(server)  # records indexed by the server, some in conflict
    one = Record.create(replica="desk-a")
    one.set("name", "Awa Diop", author="registrar")
    two = Record.from_update(one.record_id, one.update_since(), replica="desk-b")
    one.set("birthDate", "1980-01-01", author="dr.a")
    two.set("birthDate", "1981-01-01", author="dr.b")
    one.apply_update(two.update_since())
    rows = conflict_rows(one, server.rulebook)
    assert rows  # in the index: the laptop's list of conflicts reads it
    one._meta["id"] = "another-record"  # no public API writes a record's id
    renamed = one.update_since()
    await server.store.write_remote(
        [IncomingUpdate(one.record_id, renamed, rows, "clinic-a")], to_feed=True
    )
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        listed = {conflict.record_id for conflict in await laptop.conflicts()}
        assert listed == set(await rows_by_record(server)) - {one.record_id}
        [kept] = await laptop.quarantined()
        assert kept.record_id == one.record_id
        assert kept.update == renamed
        assert "another-record" in kept.reason
        assert one.record_id not in await laptop.record_ids()
    finally:
        await laptop.close()
        await server.close()


async def test_a_pulled_link_decision_that_is_not_text_fails_no_sync(tmp_path: Path) -> None:
    """A revision at links/<record> whose value is a list (stored past admission, which
    takes only the decisions' words there): the laptop that built the record to take
    it in computed its person card, which raised TypeError (unhashable), failing the
    sync at every try. Not a decision: the card leaves it out."""
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    laptop = await enrolled(tmp_path, server, "laptop", user="dr.b")
    try:
        held = await writer.create_record()
        await writer.set(held, "name", "Awa Diop")
        await writer.sync()
        await laptop.sync()
        assert (await laptop.record(held)).value("name") == "Awa Diop"  # loaded: built
        odd = Record.from_update(held, await server.store.load(held) or b"", replica="evil")
        seen = odd.state_vector()
        revision = {"p": "links/another-record", "v": ["same-person"], "ps": []}
        revision |= {"a": "dr.a", "r": "evil", "t": 1_700_000_000_000, "c": 0}
        odd._revisions["odd-link"] = json.dumps(revision)  # no public API writes this
        planted = odd.update_since(seen)
        await server.store.write_remote(
            [IncomingUpdate(held, planted, None, "clinic-a")], to_feed=True
        )
        await laptop.sync()
        assert (await laptop.record(held)).value("name") == "Awa Diop"
        card = (await laptop.store.person_cards([held]))[held]
        assert card.links == ()
    finally:
        await laptop.close()
        await writer.close()
        await server.close()
