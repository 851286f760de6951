"""A server restored from an older backup, at timings and from peers the first tests
of feed epochs left out: real SQLite files, a real server on 127.0.0.1, ``caresync
backup`` for the backup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.e2e.live_helpers import PASSWORD, enrolled
from tests.e2e.test_server_restored import _backup, _restore, _serve, _values

from caresync.exceptions import CaresyncError, RemoteProtocolError
from caresync.protocol import ErrorCode
from caresync.protocol.states import RequestKind
from caresync.replica import Replica
from caresync.server import SyncServer


@pytest.mark.xfail(
    strict=True,
    reason="known gap, needs a protocol change: a push acknowledged after the backup and "
    "never pulled past (sync(pull=False), a round cut after the ack, a live laptop whose "
    "checkpoint stays behind its own pushes) leaves the laptop's checkpoint inside the "
    "restored feed with the same epoch: the restored server is not told apart, the "
    "acknowledged edit is lost and the next edit of the record is refused for ever",
)
async def test_a_push_only_sync_after_the_backup_is_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "server.db"
    saved = tmp_path / "backup.db"
    server = await _serve(path)
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    port = int(server.url.rsplit(":", 1)[1])
    a = await enrolled(tmp_path, server, "a", user="dr.a")
    try:
        chart = await a.create_record()
        await a.set(chart, "name", "Awa Diop", author="dr.a")
        await a.sync()
        await _backup(path, saved)
        await a.set(chart, "birthDate", "1990-04-12", author="dr.a")
        assert (await a.sync(pull=False)).uploaded == 1
        assert (await a.status()).pending == 0

        await server.close()
        await _restore(saved, path)
        server = await _serve(path, port)
        await a.sync()
        await a.set(chart, "birthDate", "1990-04-13", author="dr.a")
        await a.sync()
        fresh = await enrolled(tmp_path, server, "fresh", user="dr.a")
        try:
            assert await _values(fresh, chart, "name", "birthDate") == {
                "name": "Awa Diop",
                "birthDate": "1990-04-13",
            }
        finally:
            await fresh.close()
    finally:
        await a.close()
        await server.close()


async def test_a_server_that_always_says_diverged_does_not_grow_the_outbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proved server that refuses every push and says feed_diverged to every pull:
    each sync may queue the laptop's writes again once, never once more per sync."""
    server = await _serve(tmp_path / "server.db")
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    a = await enrolled(tmp_path, server, "a", user="dr.a")
    try:
        for name in ("Awa Diop", "Moussa Sarr", "Fatou Ba"):
            chart = await a.create_record()
            await a.set(chart, "name", name, author="dr.a")
        await a.sync()

        async def refuse_push(self: SyncServer, conn: Any, batch: object) -> None:
            conn.protocol.refuse(RequestKind.PUSH, ErrorCode.BAD_MESSAGE, "no")

        async def always(self: SyncServer, request: object, head: int) -> str:
            return "hostile"

        monkeypatch.setattr(SyncServer, "_on_push", refuse_push)
        monkeypatch.setattr(SyncServer, "_diverged", always)
        await a.set(chart, "note", "seen", author="dr.a")
        pending = []
        for _ in range(4):
            with pytest.raises(CaresyncError):
                await a.sync()
            pending.append((await a.status()).pending)
        # The note, and the three charts queued again once; a refusal of the pull from
        # the feed's start that followed is the server's fault, not a second restore.
        assert pending == [4, 4, 4, 4]
        with pytest.raises(RemoteProtocolError, match="from the start"):
            await a.sync()
    finally:
        await a.close()
        await server.close()


async def test_an_account_that_logged_in_after_the_backup_is_let_through_by_a_password_sync(
    tmp_path: Path,
) -> None:
    path = tmp_path / "server.db"
    saved = tmp_path / "backup.db"
    server = await _serve(path)
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    await server.add_user("clinic-a", "dr.b", PASSWORD)
    port = int(server.url.rsplit(":", 1)[1])
    a = await enrolled(tmp_path, server, "a", user="dr.a")
    try:
        chart = await a.create_record()
        await a.set(chart, "name", "Awa Diop", author="dr.a")
        await a.sync()
        await _backup(path, saved)
        await a.set(chart, "birthDate", "1990-04-12", author="dr.a")
        await a.sync(username="dr.b", password=PASSWORD)  # dr.b's first login here
        await a.set(chart, "note", "seen by b", author="dr.b")
        await a.sync()
        assert (await a.status()).pending == 0

        await server.close()
        await _restore(saved, path)
        server = await _serve(path, port)
        # dr.b's session began after the backup: a password is asked for. dr.a's
        # password login finds the server went back; the entries re-sent name dr.b, who
        # never logged in on this laptop as far as the restored server knows.
        with pytest.raises(CaresyncError, match="session"):
            await a.sync()
        with pytest.raises(CaresyncError, match=r"dr\.b") as refused:
            await a.sync(username="dr.a", password=PASSWORD)
        assert "forbidden" in str(refused.value)
        waiting = (await a.status()).pending
        assert waiting >= 1
        with pytest.raises(CaresyncError, match=r"dr\.b"):  # again: nothing lost, nothing added
            await a.sync()
        assert (await a.status()).pending == waiting
        await a.sync(username="dr.b", password=PASSWORD)
        assert (await a.status()).pending == 0
        fresh = await enrolled(tmp_path, server, "fresh", user="dr.a")
        try:
            assert await _values(fresh, chart, "name", "note", "birthDate") == {
                "name": "Awa Diop",
                "note": "seen by b",
                "birthDate": "1990-04-12",
            }
        finally:
            await fresh.close()
    finally:
        await a.close()
        await server.close()


async def test_a_record_written_in_two_openings_of_the_laptop_is_sent_again_whole(
    tmp_path: Path,
) -> None:
    """Each opening of a record on the laptop writes as a new Yjs client: what goes
    again after a restore holds several clients of this replica."""
    path = tmp_path / "server.db"
    saved = tmp_path / "backup.db"
    server = await _serve(path)
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    port = int(server.url.rsplit(":", 1)[1])
    a = await enrolled(tmp_path, server, "a", user="dr.a")
    a_path = tmp_path / "a.db"
    try:
        chart = await a.create_record()
        await a.set(chart, "name", "Awa Diop", author="dr.a")
        await a.sync()
        await _backup(path, saved)
        await a.close()
        a = await Replica.open(a_path)
        await a.login_offline("dr.a", PASSWORD)
        await a.set(chart, "birthDate", "1990-04-12", author="dr.a")
        await a.sync()
        await a.close()
        a = await Replica.open(a_path)
        await a.login_offline("dr.a", PASSWORD)
        await a.set(chart, "note", "seen", author="dr.a")
        await a.sync()

        await server.close()
        await _restore(saved, path)
        server = await _serve(path, port)
        report = await a.sync()
        assert report.server_went_back is True
        assert (await a.status()).pending == 0
        fresh = await enrolled(tmp_path, server, "fresh", user="dr.a")
        try:
            assert await _values(fresh, chart, "name", "birthDate", "note") == {
                "name": "Awa Diop",
                "birthDate": "1990-04-12",
                "note": "seen",
            }
        finally:
            await fresh.close()
    finally:
        await a.close()
        await server.close()
