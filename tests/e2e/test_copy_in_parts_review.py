"""A first copy in parts (version 15) under attack: a server that names a record in
parts and sends none of it, copies cut during the parts and right after their commit,
the sync's report, and a laptop asking for another organisation's record.

Real parts: a server on 127.0.0.1 (an SQLite file), caresync laptops over real
websockets, the server's protocol made to lie where a test says so, and a hand-driven
client. Frames are 256 KiB (see tests/e2e/test_copy_in_parts.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.e2e.hostile import Hostile, refusal
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server
from tests.e2e.test_copy_in_parts import FIELD, _large_record, frames_of

import caresync.replication.session
from caresync.exceptions import RemoteProtocolError
from caresync.protocol import ErrorCode, ServerProtocol
from caresync.replica import Replica
from caresync.replication import meta
from caresync.replication.parts import PartsTaken
from caresync.replication.session import Session


class _Cut(Exception):
    """The link lost at a chosen point of the copy (raised by the test's hooks)."""


async def _enrol(laptop: Replica, url: str) -> None:
    await laptop.enrol(url, username="dr.b", password=PASSWORD, organisation="clinic-a")


async def test_a_server_that_sends_none_of_a_record_it_named_in_parts_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record named in parts, then a first part that says ``final`` with nothing in
    it, to a laptop that holds nothing of the record: the laptop went on past the record
    (its resume point after it), the copy counting it copied, and never had it."""
    frames_of(monkeypatch)
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    laptop = await Replica.open(tmp_path / "laptop.db")
    send = ServerProtocol.send_record_part

    def nothing(self: ServerProtocol, updates: Any, *, final: bool) -> None:
        send(self, (), final=True)

    try:
        large = await _large_record(writer)
        monkeypatch.setattr(ServerProtocol, "send_record_part", nothing)
        with pytest.raises(
            RemoteProtocolError,
            match=f"named record {large} to copy in parts, then sent none of it",
        ):
            await _enrol(laptop, server.url)
        assert await laptop.store.get_meta(meta.COPY_DONE_MS) is None  # not done
        assert (await laptop.store.get_meta(meta.COPY_RESUME) or "") < large
        monkeypatch.setattr(ServerProtocol, "send_record_part", send)
        await laptop.sync()  # resumes at the record, which comes whole
        assert sorted(await laptop.record_ids()) == sorted(await writer.record_ids())
        assert (await laptop.record(large)).value("summary") == "s" * FIELD
    finally:
        await laptop.close()
        await writer.close()
        await server.close()


async def test_a_record_copied_in_parts_counts_in_the_sync_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames_of(monkeypatch)
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    laptop = await Replica.open(tmp_path / "laptop.db")
    try:
        await _large_record(writer)  # three records, one of them in parts
        report = await laptop.enrol(
            server.url, username="dr.b", password=PASSWORD, organisation="clinic-a"
        )
        assert len(await laptop.record_ids()) == 3
        assert report.downloaded == 3
    finally:
        await laptop.close()
        await writer.close()
        await server.close()


async def test_a_copy_cut_during_the_parts_resumes_and_takes_every_record_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames_of(monkeypatch)
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    laptop = await Replica.open(tmp_path / "laptop.db")
    parts = 0

    class CutAfterOnePart(PartsTaken):
        def add(self, updates: tuple[bytes, ...]) -> None:
            nonlocal parts
            parts += 1
            if parts == 2:
                raise _Cut("the link is lost after the record's first part")
            super().add(updates)

    try:
        large = await _large_record(writer)
        monkeypatch.setattr(caresync.replication.session, "PartsTaken", CutAfterOnePart)
        with pytest.raises(_Cut):
            await _enrol(laptop, server.url)
        assert await laptop.store.load(large) is None  # no part is kept alone
        assert (await laptop.store.get_meta(meta.COPY_RESUME) or "") < large
        # The record grows meanwhile: the resumed copy takes it as it then is.
        await writer.set(large, "weightKg", 70)
        await writer.sync()
        monkeypatch.setattr(caresync.replication.session, "PartsTaken", PartsTaken)
        await laptop.sync()
        ids = await laptop.record_ids()
        assert len(ids) == len(set(ids))
        assert sorted(ids) == sorted(await writer.record_ids())
        record = await laptop.record(large)
        assert record.value("note") == "n" * FIELD
        assert record.value("summary") == "s" * FIELD
        assert record.value("weightKg") == 70
        assert await laptop.store.get_meta(meta.COPY_DONE_MS) is not None
    finally:
        await laptop.close()
        await writer.close()
        await server.close()


async def test_a_copy_cut_right_after_the_parts_commit_resumes_after_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames_of(monkeypatch)
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    laptop = await Replica.open(tmp_path / "laptop.db")
    taken_in = Session._copy_in_parts
    named: list[str | None] = []
    send_batch = ServerProtocol.send_copy_batch

    async def cut_after(self: Session, record_id: str) -> None:
        await taken_in(self, record_id)
        raise _Cut("the link is lost once the record in parts is committed")

    def noted(self: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        named.append(kwargs.get("in_parts"))
        send_batch(self, *args, **kwargs)

    try:
        large = await _large_record(writer)
        monkeypatch.setattr(ServerProtocol, "send_copy_batch", noted)
        monkeypatch.setattr(Session, "_copy_in_parts", cut_after)
        with pytest.raises(_Cut):
            await _enrol(laptop, server.url)
        assert await laptop.store.get_meta(meta.COPY_RESUME) == large
        assert await laptop.store.get_meta(meta.COPY_DONE_MS) is None
        assert named.count(large) == 1
        monkeypatch.setattr(Session, "_copy_in_parts", taken_in)
        await laptop.sync()  # the final batch counts every record (checked by the laptop)
        assert named.count(large) == 1  # not named again: the copy went on after it
        ids = await laptop.record_ids()
        assert len(ids) == len(set(ids))
        assert sorted(ids) == sorted(await writer.record_ids())
        assert (await laptop.record(large)).value("summary") == "s" * FIELD
    finally:
        await laptop.close()
        await writer.close()
        await server.close()


async def test_a_part_of_another_organisations_record_is_not_read_to_refuse_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused alike, and alike in cost: the server read the record whole (a large one
    takes time, which told a laptop of clinic-b that the id exists in another clinic,
    and cost the server a load per request) before it looked at whose it is."""
    server = await start_server(tmp_path)
    other = await enrolled(tmp_path, server, "other")
    client = None
    loads: list[str] = []
    load = type(server.store).load

    async def counted(self: Any, record_id: str) -> bytes | None:
        loads.append(record_id)
        return await load(self, record_id)

    try:
        theirs = await other.create_record()
        await other.set(theirs, "note", "private")
        await other.sync()
        client = await Hostile.connect(server.url)
        await client.login("dr.x", PASSWORD, "clinic-b")
        await client.enrol("clinic b laptop")
        monkeypatch.setattr(type(server.store), "load", counted)
        client.protocol.request_part(theirs, b"\x00")
        assert refusal(await client.next_event()).code == ErrorCode.FORBIDDEN
        assert theirs not in loads
    finally:
        if client is not None:
            await client.close()
        await other.close()
        await server.close()
