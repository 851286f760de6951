"""A sync's first pull request travels with the login when nothing must go before it.

A laptop that resumes its session with an empty outbox and its first copy done sends
its ``PullRequest`` right after ``ResumeSession``, before ``Authenticated`` arrives: one
round trip less. What goes first otherwise (a push, the first copy) still goes first,
and a request sent ahead that the login makes wrong (a copy restored from an older one,
which must pull its own updates back) is answered, and its reply dropped unread.
Real SQLite files and a real websocket server on 127.0.0.1 throughout.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.e2e.live_helpers import LIMIT_S, PASSWORD, TracingConnector, enrolled, start_server

from caresync.exceptions import AuthenticationError
from caresync.protocol import (
    Authenticate,
    Authenticated,
    OutboxReport,
    PullBatch,
    PullRequest,
    PushBatch,
    ResumeSession,
)
from caresync.replica import Replica, SyncReport
from caresync.server import SyncServer
from caresync.storage import OutboxSummary


class HeldLoginServer(SyncServer):
    """Answers each login only once ``release`` is set."""

    release: asyncio.Event

    async def _on_login(self, conn: object, login: Authenticate | ResumeSession) -> None:  # type: ignore[override]
        await self.release.wait()
        await super()._on_login(conn, login)  # type: ignore[arg-type]


@dataclass
class HeldLogins:
    """A server that answers logins only when told, a laptop whose frames are logged,
    and another laptop that wrote a record for it to pull."""

    server: HeldLoginServer
    connector: TracingConnector
    laptop: Replica
    other: Replica
    record: str
    syncing: asyncio.Task[SyncReport] | None = None

    async def sync_held(self) -> list[tuple[str, str]]:
        """Start the laptop's sync with its login held until the pull request went
        ahead without it; the sync's frames (so far)."""
        first = len(self.connector.logs)  # the sync's connection
        self.server.release.clear()
        self.syncing = asyncio.create_task(self.laptop.sync())
        async with asyncio.timeout(LIMIT_S):
            await self.connector.until(("send", PullRequest.__name__), first)
        return self.connector.logs[first]

    async def finish(self) -> SyncReport:
        """Answer the login; the sync's report."""
        assert self.syncing is not None
        self.server.release.set()
        async with asyncio.timeout(LIMIT_S):
            return await self.syncing


@asynccontextmanager
async def held_logins(tmp_path: Path) -> AsyncIterator[HeldLogins]:
    server = await start_server(tmp_path, server_class=HeldLoginServer)
    assert isinstance(server, HeldLoginServer)
    server.release = asyncio.Event()
    server.release.set()  # the enrolments' logins go through
    connector = TracingConnector()
    laptop = await enrolled(tmp_path, server, "laptop", connector=connector)
    other = await enrolled(tmp_path, server, "other")
    held: HeldLogins | None = None
    try:
        record = await other.create_record()
        await other.set(record, "name", "Awa Diop", author="dr.a")
        await other.sync()
        held = HeldLogins(server, connector, laptop, other, record)
        yield held
    finally:
        server.release.set()
        if held is not None and held.syncing is not None:
            await asyncio.wait({held.syncing})
        await laptop.close()
        await other.close()
        await server.close()


async def test_a_sync_with_nothing_to_push_asks_its_pull_before_the_login_is_answered(
    tmp_path: Path,
) -> None:
    async with held_logins(tmp_path) as held:
        # The server holds its answer to the login: the request went without it.
        log = await held.sync_held()
        sync = len(held.connector.logs) - 1
        async with asyncio.timeout(LIMIT_S):  # the outbox's report goes along with it
            await held.connector.until(("send", OutboxReport.__name__), sync)
        assert ("recv", Authenticated.__name__) not in log
        assert log[-3:] == [
            ("send", ResumeSession.__name__),
            ("send", PullRequest.__name__),
            ("send", OutboxReport.__name__),
        ]
        report = await held.finish()
        assert report.downloaded > 0
        assert (await held.laptop.record(held.record)).value("name") == "Awa Diop"
        assert log.count(("send", PullRequest.__name__)) == 1
        assert log.count(("send", OutboxReport.__name__)) == 1  # said once, not again


async def test_a_laptop_with_edits_waiting_pushes_them_before_it_asks_to_pull(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    connector = TracingConnector()
    laptop = await enrolled(tmp_path, server, "laptop", connector=connector)
    try:
        record = await laptop.create_record()
        await laptop.set(record, "name", "Awa Diop", author="dr.a")
        report = await laptop.sync()
        assert report.uploaded == 2  # the record's creation and its name
        log = connector.logs[-1]
        assert log.index(("recv", Authenticated.__name__)) < log.index(("send", PushBatch.__name__))
        assert log.index(("send", PushBatch.__name__)) < log.index(("send", PullRequest.__name__))
    finally:
        await laptop.close()
        await server.close()


async def test_a_password_login_and_a_push_only_sync_ask_nothing_ahead(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    connector = TracingConnector()
    laptop = await enrolled(tmp_path, server, "laptop", connector=connector)
    try:
        await laptop.sync(pull=False)
        assert ("send", PullRequest.__name__) not in connector.logs[-1]
        await laptop.sync(username="dr.a", password=PASSWORD)
        log = connector.logs[-1]
        assert log.index(("recv", Authenticated.__name__)) < log.index(
            ("send", PullRequest.__name__)
        )
    finally:
        await laptop.close()
        await server.close()


async def test_a_restored_copy_drops_the_reply_asked_ahead_and_gets_its_own_edits_back(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    connector = TracingConnector()
    laptop = await enrolled(tmp_path, server, "laptop")
    path, saved = tmp_path / "laptop.db", tmp_path / "saved.db"
    restored: Replica | None = None
    try:
        record = await laptop.create_record()
        await laptop.set(record, "name", "Awa Diop", author="dr.a")
        await laptop.sync()
        await laptop.close()
        await asyncio.to_thread(shutil.copyfile, path, saved)
        laptop = await Replica.open(path)
        # After the copy: edits pushed and acknowledged (the server's mark moves on).
        for dose in ("5 mg", "7.5 mg"):
            await laptop.set(record, "warfarin", dose, author="dr.a")
        await laptop.sync()
        await laptop.close()
        await asyncio.to_thread(shutil.copyfile, saved, path)
        for suffix in ("-wal", "-shm"):
            await asyncio.to_thread(Path(f"{path}{suffix}").unlink, missing_ok=True)

        # The restored copy has nothing to push: its pull is asked ahead, without its own
        # updates; the login then says it is older than the replica.
        restored = await Replica.open(path, connector=connector)
        assert (await restored.status()).pending == 0
        report = await restored.sync()
        asked, answered = ("send", PullRequest.__name__), ("recv", PullBatch.__name__)
        log = connector.logs[-1]
        assert [entry for entry in log if entry in (asked, answered)] == [
            asked,  # ahead, with the login
            answered,  # its reply, dropped
            asked,  # asked again, with own updates
            answered,
        ], log
        assert report.downloaded >= 2
        assert (await restored.record(record)).value("warfarin") == "7.5 mg"
        # And the next sync pulls nothing again: the checkpoint is past them.
        assert (await restored.sync()).downloaded == 0
    finally:
        if restored is not None:
            await restored.close()
        await server.close()


async def test_an_edit_made_while_the_login_travels_is_pushed_and_the_pull_asked_ahead_still_read(
    tmp_path: Path,
) -> None:
    # The request went ahead with an empty outbox; an edit made before Authenticated
    # arrives is pushed first, and the push's wait for PushAck must not pass over the
    # PullBatch (and hub report) answering the request sent ahead: the pull then waited
    # for a reply already read, for ever.
    async with held_logins(tmp_path) as held:
        laptop, other = held.laptop, held.other
        mine = await laptop.create_record()
        await laptop.sync()
        await other.set(held.record, "name", "Awa Ndiaye", author="dr.a")  # to pull
        await other.sync()
        await held.sync_held()
        await laptop.set(mine, "name", "Fatou Sow", author="dr.a")  # while the login travels
        report = await held.finish()
        assert report.uploaded == 1
        assert report.downloaded > 0
        assert (await laptop.record(held.record)).value("name") == "Awa Ndiaye"
        assert (await laptop.status()).pending == 0
        await other.sync()
        assert (await other.record(mine)).value("name") == "Fatou Sow"


async def test_a_login_refused_before_the_request_goes_ahead_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server refuses the session (expired) before the laptop has read what to ask:
    # the sync must fail with that refusal, not with the protocol's complaint that a
    # request cannot be sent on a failed connection.
    server = await SyncServer.open(tmp_path / "short.db", session_ttl_s=0.0, security_poll_s=3600)
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    await server.serve("127.0.0.1", 0)
    connector = TracingConnector()
    laptop = await Replica.open(tmp_path / "laptop.db", connector=connector)
    try:
        await laptop.enrol(server.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
        read = laptop.store.outbox_summary
        sync_connection = len(connector.logs)

        async def read_after_the_refusal() -> OutboxSummary:
            await connector.until(("recv", "Error"), sync_connection)
            return await read()

        monkeypatch.setattr(laptop.store, "outbox_summary", read_after_the_refusal)
        async with asyncio.timeout(LIMIT_S):
            with pytest.raises(AuthenticationError, match="session_expired"):
                await laptop.sync()
    finally:
        await laptop.close()
        await server.close()
