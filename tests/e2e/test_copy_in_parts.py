"""A record larger than one frame reaches a new laptop's first copy, in parts (version 15).

Real parts: a server on 127.0.0.1 (an SQLite file), caresync laptops over real websockets,
and a hand-driven client. Frames are 256 KiB here (the smallest a side may take is 64
KiB), so a record of two 150,000-character fields is larger than one. Before version 15
a first copy was refused at such a record, and every new laptop's enrolment stopped
there: a colleague could make one so with two pushes of a frame each.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.hostile import Hostile, refusal
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server

import caresync.replication.session
import caresync.server
from caresync.exceptions import ProtocolError
from caresync.protocol import (
    RECORD_PARTS_SINCE,
    SUPPORTED_VERSIONS,
    ClientProtocol,
    ErrorCode,
    RecordPart,
    ServerProtocol,
)
from caresync.replica import Replica
from caresync.replication.parts import NextPart, PartsTaken

FRAME = 256 * 1024
FIELD = 150_000  # characters: two such fields make a record larger than FRAME


def frames_of(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers and caresync laptops that take frames of FRAME bytes."""
    monkeypatch.setattr(
        caresync.server, "ServerProtocol", functools.partial(ServerProtocol, max_frame_bytes=FRAME)
    )
    monkeypatch.setattr(
        caresync.replication.session,
        "ClientProtocol",
        functools.partial(ClientProtocol, max_frame_bytes=FRAME),
    )


class _CountedParts(PartsTaken):
    """PartsTaken counting the parts it takes, for the test to see how the record came."""

    taken: list[int] = []  # noqa: RUF012 - one list for the test, reset by it

    def add(self, updates: tuple[bytes, ...]) -> None:
        super().add(updates)
        _CountedParts.taken.append(len(updates))


async def _large_record(writer: Replica) -> str:
    """A record larger than one frame, made by pushes that each fit one, between others."""
    await writer.set(await writer.create_record(), "note", "before")
    record_id = await writer.create_record()
    for field in ("note", "summary"):
        await writer.set(record_id, field, field[0] * FIELD)
        assert (await writer.sync()).uploaded >= 1
    await writer.set(await writer.create_record(), "note", "after")
    await writer.sync()
    return record_id


async def test_a_record_larger_than_one_frame_is_first_copied_in_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames_of(monkeypatch)
    _CountedParts.taken = []
    monkeypatch.setattr(caresync.replication.session, "PartsTaken", _CountedParts)
    on_loop: list[bool] = []  # where the server cut each part: off its event loop
    cut = caresync.server.next_part

    def watched(*args: Any, **kwargs: Any) -> NextPart | None:
        on_loop.append(threading.current_thread() is threading.main_thread())
        return cut(*args, **kwargs)

    monkeypatch.setattr(caresync.server, "next_part", watched)
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    reader = None
    try:
        large = await _large_record(writer)
        stored = await server.store.load(large)
        assert stored is not None
        assert len(stored) > FRAME  # no frame carries it whole
        reader = await enrolled(tmp_path, server, "reader", user="dr.b")
        assert len(_CountedParts.taken) >= 2  # it came in parts, over several frames
        assert on_loop == [False] * len(_CountedParts.taken)
        assert sorted(await reader.record_ids()) == sorted(await writer.record_ids())
        record = await reader.record(large)
        assert record.value("note") == "n" * FIELD
        assert record.value("summary") == "s" * FIELD
        assert await reader.conflicts() == []
        # The copy went on past it, and later changes of it come by pulls as ever.
        await writer.set(large, "weightKg", 70)
        assert (await writer.sync()).uploaded == 1
        await reader.sync()
        assert (await reader.record(large)).value("weightKg") == 70
    finally:
        if reader is not None:
            await reader.close()
        await writer.close()
        await server.close()


async def test_a_laptop_before_version_15_is_still_told_which_record_stops_its_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    older = tuple(v for v in SUPPORTED_VERSIONS if 4 <= v < RECORD_PARTS_SINCE)
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    reader = await Replica.open(tmp_path / "reader.db")
    try:
        frames_of(monkeypatch)
        large = await _large_record(writer)
        monkeypatch.setattr(caresync.replication.session, "_PROTOCOL_VERSIONS", older)
        with pytest.raises(ProtocolError, match=f"record {large} takes .* bytes"):
            await reader.enrol(
                server.url, username="dr.b", password=PASSWORD, organisation="clinic-a"
            )
    finally:
        await reader.close()
        await writer.close()
        await server.close()


async def test_a_part_is_given_only_of_a_record_of_the_laptops_organisation(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    other = await enrolled(tmp_path, server, "other")
    client = None
    try:
        theirs = await other.create_record()  # clinic-a's
        await other.sync()
        client = await Hostile.connect(server.url)
        await client.login("dr.x", PASSWORD, "clinic-b")
        await client.enrol("clinic b laptop")
        for record_id in (theirs, "no-such-record"):
            client.protocol.request_part(record_id, b"\x00")
            error = refusal(await client.next_event())
            assert error.code == ErrorCode.FORBIDDEN
            assert error.message == f"record {record_id} is not a record this replica copies"
    finally:
        if client is not None:
            await client.close()
        await other.close()
        await server.close()


async def test_a_part_continues_from_the_state_vector_the_laptop_names(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    client = None
    try:
        record_id = await writer.create_record()
        await writer.set(record_id, "note", "hello")
        await writer.sync()
        client = await Hostile.connect(server.url)
        await client.login("dr.b", PASSWORD, "clinic-a")
        await client.enrol("parts by hand")
        taken = PartsTaken(record_id, None)
        client.protocol.request_part(record_id, taken.vector())
        part = await client.next_event()
        assert isinstance(part, RecordPart)
        assert part.final  # a small record: the rest in one part
        taken.add(part.updates)
        client.protocol.request_part(record_id, taken.vector())
        again = await client.next_event()
        assert isinstance(again, RecordPart)
        assert again.updates == ()  # it holds everything
        assert again.final
        client.protocol.request_part(record_id, b"\xff\xff")  # not a state vector
        assert refusal(await client.next_event()).code == ErrorCode.BAD_MESSAGE
    finally:
        if client is not None:
            await client.close()
        await writer.close()
        await server.close()
