"""Two laptops whose random Yjs client ids collide never wedge each other's outbox.

Each opening of a record on a laptop draws a new pycrdt client id (53 random bits). A
server binds a client id to the replica that first writes with it, so that nobody can
write under another laptop's id (forge its next ops). Bound across the whole deployment,
two laptops drawing the same id, in any two records, left the second one's push refused
at every sync. A client id means something only within one record: it is bound per
record. The same id in one record is still refused (the second laptop's edit would
clash with the first's ops), and so is a write under another replica's id in a record
where it wrote, with bindings written before this change too.

Real parts: a server on 127.0.0.1 with its SQLite file, laptops on SQLite files, and
hand-made pushes (a raw session of a laptop) for what a correct laptop never sends.
The collision is forced by giving pycrdt documents a chosen client id in the test only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pycrdt
from tests.e2e.live_helpers import enrolled, raw_session, start_server
from tests.e2e.restore_helpers import port_of, serve

from caresync import Record
from caresync.protocol import Error, ErrorCode, PushAck, PushBatch
from caresync.records import record as record_module
from caresync.server import SyncServer

CLIENT = 4_503_599_627_370_495  # 2**52 - 1: any id a laptop could draw


@contextmanager
def yjs_client(client: int) -> Iterator[None]:
    """Every document made meanwhile writes as Yjs client ``client``."""

    def doc() -> pycrdt.Doc[Any]:
        return pycrdt.Doc(client_id=client)

    with mock.patch.object(record_module, "Doc", doc):
        yield


def edited_as(
    client: int, record_id: str, stored: bytes, replica: str, author: str, value: str
) -> bytes:
    """An update of the stored record written on ``replica`` as Yjs client ``client``."""
    with yjs_client(client):
        record = Record.from_update(record_id, stored, replica=replica)
    before = record.state_vector()
    record.set("birthDate", value, author=author)
    return record.update_since(before)


def assert_refused_as_taken(reply: object, record_id: str, client: int) -> None:
    assert isinstance(reply, Error), reply
    assert reply.code == ErrorCode.BAD_MESSAGE
    assert not reply.fatal
    assert reply.in_reply_to == PushBatch.TYPE_CODE
    assert record_id in reply.message
    assert f"Yjs client {client}" in reply.message
    assert "nothing stored" in reply.message


async def test_two_laptops_drawing_one_client_id_for_two_records_both_sync(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    a = await enrolled(tmp_path, server, "laptop-a")
    b = await enrolled(tmp_path, server, "laptop-b", user="dr.b")
    try:
        with yjs_client(CLIENT):
            first = await a.create_record()
            await a.set(first, "name", "Awa Diop", author="dr.a")
            second = await b.create_record()
            await b.set(second, "name", "Fatou Ba", author="dr.b")
        await a.sync()
        await b.sync()  # refused at every sync when client ids were bound deployment-wide
        await a.sync()
        assert (await b.status()).pending == 0
        assert (await a.status()).pending == 0
        owners = await server.store.client_owners([(first, CLIENT), (second, CLIENT)])
        assert owners == {(first, CLIENT): a.replica_id, (second, CLIENT): b.replica_id}
        for laptop in (a, b):
            assert (await laptop.record(first)).value("name") == "Awa Diop"
            assert (await laptop.record(second)).value("name") == "Fatou Ba"
        # And they go on writing with it, each in its own record.
        with yjs_client(CLIENT):
            await b.set(second, "birthDate", "1990-01-01", author="dr.b")
        await b.sync()
        await a.sync()
        assert (await b.status()).pending == 0
        assert (await a.record(second)).value("birthDate") == "1990-01-01"
    finally:
        await a.close()
        await b.close()
        await server.close()


async def test_one_client_id_drawn_by_two_laptops_in_one_record_is_refused_not_lost(
    tmp_path: Path,
) -> None:
    """Both laptops open the record and draw the same id: the second edit takes the same
    clocks as the first. It is refused, every time, never acknowledged as held."""
    server = await start_server(tmp_path)
    a = await enrolled(tmp_path, server, "laptop-a")
    b = await enrolled(tmp_path, server, "laptop-b", user="dr.b")
    try:
        record_id = await a.create_record()
        await a.set(record_id, "name", "Awa Diop", author="dr.a")
        await a.sync()
        stored = await server.store.load(record_id)
        assert stored is not None
        mine = edited_as(CLIENT, record_id, stored, a.replica_id, "dr.a", "1990-01-01")
        theirs = edited_as(CLIENT, record_id, stored, b.replica_id, "dr.b", "1991-02-02")
        head = await server.store.feed_head()
        async with raw_session(server, a) as session:
            assert isinstance(await session.push(1_000, record_id, mine), PushAck)
        async with raw_session(server, b) as session:
            for seq in (1_000, 1_001):  # sent again: refused again
                reply = await session.push(seq, record_id, theirs)
                assert_refused_as_taken(reply, record_id, CLIENT)
        assert await server.store.feed_head() == head + 1
        # The owner sending its own again is harmless.
        async with raw_session(server, a) as session:
            assert isinstance(await session.push(1_001, record_id, mine), PushAck)
        assert await server.store.feed_head() == head + 1
    finally:
        await a.close()
        await b.close()
        await server.close()


async def _forged_in_place(
    server: SyncServer, record_id: str, owner: str, forger_laptop: Any, client: int
) -> None:
    """The forger writes as ``client``, from its next clock, in the record where
    ``owner`` wrote with it: refused, nothing stored."""
    stored = await server.store.load(record_id)
    assert stored is not None
    forged = edited_as(client, record_id, stored, forger_laptop.replica_id, "dr.b", "1880-01-01")
    head = await server.store.feed_head()
    async with raw_session(server, forger_laptop) as session:
        assert_refused_as_taken(await session.push(2_000, record_id, forged), record_id, client)
    assert await server.store.feed_head() == head
    owners = await server.store.client_owners([(record_id, client)])
    assert owners == {(record_id, client): owner}


async def test_a_write_under_another_replicas_client_in_its_record_is_refused(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    a = await enrolled(tmp_path, server, "laptop-a")
    b = await enrolled(tmp_path, server, "laptop-b", user="dr.b")
    try:
        with yjs_client(CLIENT):
            record_id = await a.create_record()
            await a.set(record_id, "name", "Awa Diop", author="dr.a")
        await a.sync()
        await b.sync()
        await _forged_in_place(server, record_id, a.replica_id, b, CLIENT)
    finally:
        await a.close()
        await b.close()
        await server.close()


def _as_version_20(path: Path) -> None:
    """The server's file as the release before per-record bindings left it: each client
    bound deployment-wide to its first writer (``yjs_clients``), nothing per record."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute(
            "INSERT OR IGNORE INTO yjs_clients (client, replica_id)"
            " SELECT client, replica_id FROM record_clients"
        )
        conn.execute("DROP TABLE record_clients")
        conn.execute("DROP TABLE outbox_aside")  # version 22's
        conn.execute("DROP TABLE set_aside")
        conn.execute("PRAGMA user_version = 20")
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_bindings_of_before_the_upgrade_still_refuse_a_forger_and_wedge_nobody(
    tmp_path: Path,
) -> None:
    """A server database of the release before: its deployment-wide binding of a client
    still guards the record where that client wrote, and no longer refuses the client
    in another record (a laptop that drew it too)."""
    server = await start_server(tmp_path)
    a = await enrolled(tmp_path, server, "laptop-a")
    b = await enrolled(tmp_path, server, "laptop-b", user="dr.b")
    try:
        with yjs_client(CLIENT):
            record_id = await a.create_record()
            await a.set(record_id, "name", "Awa Diop", author="dr.a")
        await a.sync()
        await b.sync()
        port = port_of(server)
        await server.close()
        _as_version_20(tmp_path / "server.db")
        server = await serve(tmp_path / "server.db", port)  # where the laptops find it
        assert server.store.migrated_from == 20  # type: ignore[attr-defined]
        await _forged_in_place(server, record_id, a.replica_id, b, CLIENT)
        # The owner writes on with it in its record.
        stored = await server.store.load(record_id)
        assert stored is not None
        more = edited_as(CLIENT, record_id, stored, a.replica_id, "dr.a", "1990-01-01")
        async with raw_session(server, a) as session:
            assert isinstance(await session.push(3_000, record_id, more), PushAck)
        # Laptop b drew the same id for a record of its own: its push goes through.
        with yjs_client(CLIENT):
            other = await b.create_record()
            await b.set(other, "name", "Fatou Ba", author="dr.b")
        await b.sync()
        assert (await b.status()).pending == 0
        owners = await server.store.client_owners([(record_id, CLIENT), (other, CLIENT)])
        assert owners == {(record_id, CLIENT): a.replica_id, (other, CLIENT): b.replica_id}
    finally:
        await a.close()
        await b.close()
        await server.close()
