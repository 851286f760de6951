"""The server stores only what the record schema allows, from anyone.

Each push below is what the trust-nothing issue reproduced end to end: an
update that deletes a colleague's revision, one dated in the far future, a
value far over the limit, damaged bytes that made pycrdt panic, a bare
collection path, a status that is not text, a record of another organisation.
The pusher is an enrolled replica of the clinic (it proved its secret): an
authenticated colleague is untrusted too. Each is refused with a non-fatal
``bad_message`` (or ``forbidden``), nothing of it is stored, and the session
goes on.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Map, Text
from tests.e2e.hostile import Hostile, refusal
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server

from caresync.protocol import ErrorCode, PushAck
from caresync.records import Record
from caresync.replica import Replica
from caresync.server import SyncServer

PANIC_CLIENT = 8782226636114342
PANIC_BYTES = bytes.fromhex(
    "0100a693eed7b7ecccff7f0f002801046d657461026964017701722801097265766973696f6e73036b30"
    "6101770f7b2270223a2278222c2276223a317d2801097265766973696f6e73036b316101770f7b227022"
    "3a2278222c2276223a317d2801097265766973696f6e73036b3261013e0f7b2270223a2278222c227622"
    "3a317d00"
)


async def _attacker(server: SyncServer) -> Hostile:
    """An enrolled replica of clinic-a, driven by hand (dr.b's own laptop)."""
    client = await Hostile.connect(server.url)
    await client.login("dr.b", PASSWORD, "clinic-a")
    await client.enrol("mallory")
    return client


async def _victim(tmp_path: Path, server: SyncServer) -> tuple[Replica, str, str]:
    """dr.a's laptop with a patient whose allergy is synced; (laptop, record, revision id)."""
    laptop = await enrolled(tmp_path, server, "victim")
    record = await laptop.create_record()
    revision = await laptop.set(record, "allergies-note", "penicillin: anaphylaxis", author="dr.a")
    await laptop.sync()
    return laptop, record, revision.id


def _doc_of(record: Record) -> tuple[Doc[Any], bytes]:
    doc: Doc[Any] = Doc()
    doc.apply_update(record.update_since())
    return doc, doc.get_state()


def _revision_json(replica: str, path: str, value: object, *, t: int = 1_700_000_000_000) -> str:
    return json.dumps(
        {"p": path, "v": value, "ps": [], "a": "dr.b", "r": replica, "t": t, "c": 0},
        separators=(",", ":"),
    )


def _write(doc: Doc[Any], key: str, value: object) -> None:
    doc.get("revisions", type=Map)[key] = value


async def _held_unchanged(server: SyncServer, record: str, revision: str, head: int) -> None:
    assert await server.store.feed_head() == head
    stored = await server.store.load(record)
    assert stored is not None
    rebuilt = Record.from_update(record, stored, replica="check")
    kept = rebuilt.revision(revision)
    assert kept is not None
    assert kept.value == "penicillin: anaphylaxis"


@pytest.mark.parametrize(
    "attack",
    [
        "delete",
        "overwrite",
        "collection-root",
        "entry-root",
        "status-number",
        "far-future",
        "huge-value",
        "nested-type",
        "malformed-json",
        "reserved-path",
    ],
)
async def test_a_hostile_push_is_refused_whole_and_nothing_is_stored(
    tmp_path: Path, attack: str
) -> None:
    server = await start_server(tmp_path)
    victim, record, revision = await _victim(tmp_path, server)
    attacker = await _attacker(server)
    other = await enrolled(tmp_path, server, "other")
    try:
        copy = await attacker.pull_record(record)
        doc, before = _doc_of(copy)
        rev = functools.partial(_revision_json, attacker.replica_id)
        entry = "e" * 32
        if attack == "delete":
            del doc.get("revisions", type=Map)[revision]
        elif attack == "overwrite":
            _write(doc, revision, rev("allergies-note", "none known"))
        elif attack == "collection-root":
            _write(doc, "a" * 16, rev("allergies", "penicillin"))
        elif attack == "entry-root":
            _write(
                doc,
                "a" * 16,
                rev(f"allergies/{entry}", "penicillin"),
            )
        elif attack == "status-number":
            _write(doc, "a" * 16, rev(f"allergies/{entry}/status", 5))
        elif attack == "far-future":
            _write(doc, "a" * 16, rev("weight", 70, t=10**15))
        elif attack == "huge-value":
            _write(doc, "a" * 16, rev("note", "x" * 12_000_000))
        elif attack == "nested-type":
            _write(doc, "a" * 16, Text("not a revision"))
        elif attack == "malformed-json":
            _write(doc, "a" * 16, '{"p": "weight"')
        else:
            _write(doc, "a" * 16, rev("_secret/path", 1))
        update = doc.get_update(before)
        head = await server.store.feed_head()
        reply = refusal(await attacker.push(1, record, update))
        assert reply.code == ErrorCode.BAD_MESSAGE
        assert record in reply.message
        assert "nothing stored" in reply.message
        await _held_unchanged(server, record, revision, head)
        # The session goes on: an honest write on the same connection is taken.
        honest = Record.from_update(record, copy.update_since(), replica=attacker.replica_id)
        sv = honest.state_vector()
        honest.set("height", 180, author="dr.b")
        assert isinstance(await attacker.push(2, record, honest.update_since(sv)), PushAck)
        await other.sync()
        fields = await other.fields(record)
        assert fields["allergies-note"].value == "penicillin: anaphylaxis"
        assert fields["height"].value == 180
        assert set(fields) == {"allergies-note", "height"}
    finally:
        await attacker.close()
        await victim.close()
        await other.close()
        await server.close()


async def test_damaged_bytes_that_make_pycrdt_panic_are_refused_and_the_session_goes_on(
    tmp_path: Path,
) -> None:
    """Why 5: the panic reproducer, pushed for a record whose document it breaks."""
    server = await start_server(tmp_path)
    attacker = await _attacker(server)
    try:
        base = Doc(client_id=PANIC_CLIENT)
        revisions = base.get("revisions", type=Map)
        meta = base.get("meta", type=Map)
        with base.transaction():
            meta["id"] = "r"
            for i in range(3):
                revisions[f"k{i}a"] = '{"p":"x","v":1}'
        reply = refusal(await attacker.push(1, "r", PANIC_BYTES))
        assert reply.code == ErrorCode.BAD_MESSAGE
        assert await server.store.feed_head() == 0
        assert await server.store.load("r") is None
        # Still served: the connection is up and takes an honest record.
        honest = Record.create(replica=attacker.replica_id)
        honest.set("name", "Awa", author="dr.b")
        assert isinstance(await attacker.push(2, honest.record_id, honest.update_since()), PushAck)
    finally:
        await attacker.close()
        await server.close()


async def test_a_record_of_another_organisation_is_forbidden_without_a_hint(
    tmp_path: Path,
) -> None:
    """Why 10: a clinic-b user pushing to a clinic-a record gets ``forbidden``, not a crash."""
    server = await start_server(tmp_path)
    victim, record, _revision = await _victim(tmp_path, server)
    outsider = await Hostile.connect(server.url)
    try:
        await outsider.login("dr.x", PASSWORD, "clinic-b")
        await outsider.enrol("outsider")
        forged = Record(record, replica=outsider.replica_id)
        forged.set("name", "stolen", author="dr.x")
        head = await server.store.feed_head()
        reply = refusal(await outsider.push(1, record, forged.update_since()))
        assert reply.code == ErrorCode.FORBIDDEN
        assert reply.message == f"record {record} cannot be written by this replica"
        assert await server.store.feed_head() == head
        # A record id nobody holds gets no other answer but acceptance (a new record).
        fresh = Record.create(replica=outsider.replica_id)
        fresh.set("name", "a new patient", author="dr.x")
        assert isinstance(await outsider.push(2, fresh.record_id, fresh.update_since()), PushAck)
    finally:
        await outsider.close()
        await victim.close()
        await server.close()


async def test_a_laptop_whose_push_is_refused_keeps_it_and_says_why(tmp_path: Path) -> None:
    """A laptop's own refused push is kept, set aside; the sync says the record and why."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        record = await laptop.create_record()
        await laptop.sync()
        # A far-future clock on this laptop: its edit is refused by the server.
        pool_clock = laptop._pool.clock
        real_now = pool_clock._now
        pool_clock._now = lambda: real_now() + 10 * 24 * 3600 * 1000
        await laptop.set(record, "weight", 70, author="dr.a")
        pool_clock._now = real_now
        [held] = (await laptop.sync()).set_aside
        assert held.record_id == record
        assert "check the laptop's clock" in held.reason
        status = await laptop.status()
        assert status.pending == 1  # kept, for a person to look at
        assert status.set_aside == (held,)
    finally:
        await laptop.close()
        await server.close()
