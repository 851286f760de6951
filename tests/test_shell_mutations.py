"""Damaged updates through the shells: a server's push path and a laptop's pull path.

The pure entry points are covered by ``tests/test_update_mutations.py``; here
the same damaged updates (bit flips, truncation, splices, varuint inflation)
reach a real :class:`SyncServer` (over an in-memory channel, with its in-memory
store) as a push from an enrolled replica, and a laptop's commit of what it
pulled. Either way: never a crash or an untyped error, nothing stored that a
replica could not load, the session goes on, and the store stays sound.
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from hypothesis import assume, example, given, settings
from tests.e2e.hostile import Hostile
from tests.test_update_mutations import CORPUS, RECORD_ID, ZERO_STRUCTS, damaged_updates

from caresync.conflicts import DEFAULT_RULEBOOK
from caresync.protocol import Error, ErrorCode, PushAck
from caresync.records import Record
from caresync.replica import Replica
from caresync.server import SyncServer
from caresync.storage import Identity, IncomingUpdate, MemoryStore
from caresync.transport import MemoryListener

EXAMPLES = settings(max_examples=max(20, settings.default.max_examples), deadline=None)
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ORG = "clinic"


async def _push_damaged(update: bytes) -> None:
    store = await MemoryStore.open()
    server = SyncServer(store, "server-1", password_hasher=CHEAP)
    await server.add_user(ORG, "dr.a", "a passphrase")
    await store.write_remote([IncomingUpdate(RECORD_ID, CORPUS.base, None, ORG)], to_feed=True)
    listener = MemoryListener(server.handle)
    client = await Hostile.over(await listener.connect())
    try:
        await client.login("dr.a", "a passphrase", ORG)
        await client.enrol("fuzzer")
        reply = await client.push(1, RECORD_ID, update)
        if isinstance(reply, Error):
            assert not reply.fatal
            # Bytes that are no update are a bad message; a damage that leaves a well-formed
            # revision written on another replica (the corpus's) is refused as forbidden.
            assert reply.code in {ErrorCode.BAD_MESSAGE, ErrorCode.FORBIDDEN}
        else:
            assert isinstance(reply, PushAck)
        # Whatever was stored, any replica can load it.
        stored = await store.load(RECORD_ID)
        assert stored is not None
        Record.from_update(RECORD_ID, stored, replica="any-replica")
        assert await store.check() == []
        # And the session goes on.
        honest = Record.from_update(RECORD_ID, stored, replica=client.replica_id)
        edits: list[bytes] = []  # what a laptop pushes: the update of its edit's transaction
        stop = honest.on_update(lambda update, local: edits.append(update) if local else None)
        honest.set("checked", True, author="dr.a")
        stop()
        assert isinstance(await client.push(2, RECORD_ID, edits[0]), PushAck)
    finally:
        await client.close()
        await listener.close()
        await server.close()


@EXAMPLES
@given(damaged_updates())
@example(ZERO_STRUCTS)
def test_the_server_takes_or_refuses_a_damaged_push_and_goes_on(update: bytes) -> None:
    assume(update)  # the protocol itself refuses an empty update before it is sent
    asyncio.run(_push_damaged(update))


async def _pull_damaged(update: bytes) -> None:
    store = await MemoryStore.open()
    identity = Identity("replica-1", "laptop", "server-1", "ws://127.0.0.1:1", ORG)
    await store.set_identity(identity)
    replica = Replica(store, identity, rulebook=DEFAULT_RULEBOOK)
    # What a session hands its replica to commit (the pull path, without a server).
    await replica._host.take_in(
        [(RECORD_ID, CORPUS.base), (RECORD_ID, update)], checkpoint=("sync.checkpoint", "2")
    )
    assert await store.get_meta("sync.checkpoint") == "2"  # the sync went on
    stored = await store.load(RECORD_ID)
    assert stored is not None
    Record.from_update(RECORD_ID, stored, replica="any-replica")
    assert await store.check() == []
    for kept in await store.quarantined():
        assert kept.update == update


@EXAMPLES
@given(damaged_updates())
@example(ZERO_STRUCTS)
def test_a_laptop_takes_or_keeps_aside_damaged_pulled_bytes_and_finishes(update: bytes) -> None:
    asyncio.run(_pull_damaged(update))
