"""End to end with real parts: a websocket server on 127.0.0.1 and laptops on SQLite files."""

from __future__ import annotations

from pathlib import Path

import pytest

from caresync import (
    AuthenticationError,
    ConnectionLostError,
    NotEnrolledError,
    WrongOrganisationError,
    WrongServerError,
)
from caresync.replica import Replica
from caresync.server import SyncServer

PASSWORD = "correct horse battery staple"


async def start_server(tmp_path: Path, name: str = "server") -> SyncServer:
    server = await SyncServer.open(tmp_path / f"{name}.db")
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    await server.add_user("clinic-a", "dr.b", PASSWORD)
    await server.add_user("clinic-b", "dr.x", PASSWORD)
    await server.serve("127.0.0.1", 0)
    return server


async def enrolled(tmp_path: Path, server: SyncServer, name: str, user: str = "dr.a") -> Replica:
    laptop = await Replica.open(tmp_path / f"{name}.db")
    await laptop.enrol(server.url, username=user, password=PASSWORD, organisation="clinic-a")
    return laptop


async def test_two_laptops_see_the_same_conflict_and_converge_after_resolving(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    a = await enrolled(tmp_path, server, "laptop-a")
    b = await enrolled(tmp_path, server, "laptop-b", user="dr.b")
    record_id = await a.create_record()
    await a.set(record_id, "birthDate", "1990-01-01", author="dr.a")
    await a.sync()
    report = await b.sync()
    assert report.downloaded >= 1
    assert (await b.record(record_id)).value("birthDate") == "1990-01-01"

    # Both offline: the same field changed on each.
    await a.set(record_id, "birthDate", "1990-01-02", author="dr.a")
    await b.set(record_id, "birthDate", "1991-01-01", author="dr.b")
    await a.sync()
    await b.sync()
    await a.sync()

    conflicts_a, conflicts_b = await a.conflicts(), await b.conflicts()
    assert len(conflicts_a) == 1
    assert conflicts_a == conflicts_b
    assert {c.value for c in conflicts_a[0].candidates} == {"1990-01-02", "1991-01-01"}
    server_rows = await server.store.conflicts()
    assert [row.id for row in server_rows] == [conflicts_a[0].id]

    await b.resolve(conflicts_b[0].id, choose=0, author="dr.b")
    await b.sync()
    await a.sync()
    assert await a.conflicts() == [] == await b.conflicts()
    assert await server.store.count_conflicts() == 0
    value = (await a.record(record_id)).value("birthDate")
    assert value == (await b.record(record_id)).value("birthDate")
    status = await a.status()
    assert status.pending == 0
    assert status.last_sync is not None
    for replica in (a, b):
        await replica.close()
    await server.close()


async def test_a_laptop_offline_across_many_server_changes_catches_up(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    a = await enrolled(tmp_path, server, "laptop-a")
    b = await enrolled(tmp_path, server, "laptop-b")
    ids = [await a.create_record() for _ in range(30)]
    for i, record_id in enumerate(ids):
        for j in range(5):
            await a.set(record_id, "visits", i * 10 + j, author="dr.a")
    await a.sync()
    report = await b.sync()
    assert report.downloaded >= 30
    for i, record_id in enumerate(ids):
        assert (await b.record(record_id)).value("visits") == i * 10 + 4
    await a.close()
    await b.close()
    await server.close()


async def test_pending_changes_survive_a_failed_sync_and_go_up_later(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    url = server.url
    a = await enrolled(tmp_path, server, "laptop-a")
    record_id = await a.create_record()
    await a.set(record_id, "name", "Ann", author="dr.a")
    await server.close()  # the clinic server is down
    with pytest.raises(ConnectionLostError, match="cannot connect"):
        await a.sync()
    assert (await a.status()).pending == 2
    server = await SyncServer.open(tmp_path / "server.db")
    await server.serve("127.0.0.1", int(url.rsplit(":", 1)[1]))
    report = await a.sync()
    assert report.uploaded == 2
    assert (await a.status()).pending == 0
    assert await server.store.has_record(record_id)
    await a.close()
    await server.close()


async def test_refusals_name_what_is_wrong_and_move_nothing(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    other = await start_server(tmp_path, "other-server")
    a = await enrolled(tmp_path, server, "laptop-a")
    record_id = await a.create_record()
    await a.set(record_id, "name", "Ann", author="dr.a")

    with pytest.raises(WrongServerError) as info:
        await a.sync(url=other.url)
    assert server.server_id in str(info.value)
    assert other.server_id in str(info.value)
    assert await other.store.count_records() == 0
    assert (await a.status()).pending == 2

    with pytest.raises(AuthenticationError):
        await a.sync(username="dr.a", password="wrong")
    with pytest.raises(AuthenticationError):
        await a.sync(username="dr.x", password=PASSWORD)  # not a user of clinic-a
    with pytest.raises(WrongOrganisationError):
        await a.sync(username="dr.x", password=PASSWORD, organisation="clinic-b")
    assert await server.store.count_records() == 0

    fresh = await Replica.open(tmp_path / "fresh.db")
    with pytest.raises(NotEnrolledError):
        await fresh.sync()
    with pytest.raises(AuthenticationError):
        await fresh.login_offline("dr.a", PASSWORD)
    await a.login_offline("dr.a", PASSWORD)
    with pytest.raises(AuthenticationError):
        await a.login_offline("dr.a", "wrong")
    for closable in (a, fresh, server, other):
        await closable.close()


async def test_a_laptop_is_never_sent_its_own_updates_back(tmp_path: Path) -> None:
    """Why the laptop keeps no memory of what it pushed, to skip it when pulled back:
    the server leaves a replica's own updates out of its pulls and live feed, so a
    pushed edit never comes back (its stored log does not grow, nothing is received)."""
    server = await start_server(tmp_path)
    a = await enrolled(tmp_path, server, "laptop-a")
    b = await enrolled(tmp_path, server, "laptop-b", user="dr.b")
    record_id = await a.create_record()
    await a.set(record_id, "birthDate", "1990-01-01")
    received: list[tuple[str, ...]] = []
    a.on_received(received.append)
    first = await a.sync()
    assert first.uploaded >= 1
    assert first.downloaded == 0
    log = await a.store.log_length(record_id)
    await b.sync()
    await b.set(record_id, "gender", "female")
    await b.sync()
    second = await a.sync()
    assert second.downloaded == 1  # b's edit, not a's own
    assert received == [(record_id,)]
    assert await a.store.log_length(record_id) == log + 1
    for replica in (a, b):
        await replica.close()
    await server.close()
