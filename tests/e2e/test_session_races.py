"""A session ended while its login is still being checked stays ended.

A password login checks the password, the account and the laptop's secret, and only
then stores its session: a few store trips and an argon2 check apart. An administrator
who changes the password, disables the account or revokes the laptop in between
(``caresync user passwd`` beside the running server, say) ends the user's sessions in
that moment, before the new one is stored. Each test plays that moment against a real
server on 127.0.0.1 with real SQLite files: the store's ``add_session`` first lets the
administrator act, then stores the session as it was asked to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from tests.e2e.live_helpers import LIMIT_S, PASSWORD, enrolled, live, start_server

from caresync.exceptions import AuthenticationError, StorageError, SyncRefusedError
from caresync.replica import ReplicaState
from caresync.server import SyncServer
from caresync.storage import ReplicaInfo, SessionRow, SQLiteStore

NEW_PASSWORD = "a brand new passphrase"


def _act_before_the_session_is_stored(
    server: SyncServer, act: Callable[[], Awaitable[None]]
) -> list[SessionRow]:
    """Make the next ``add_session`` run ``act`` first (once); the sessions stored."""
    store = server.store
    original = store.add_session
    stored: list[SessionRow] = []

    async def add_session(session: SessionRow) -> None:
        if not stored:
            await act()
        stored.append(session)
        await original(session)

    store.add_session = add_session  # type: ignore[method-assign]
    return stored


@pytest.mark.parametrize("ending", ["password", "disable", "revoke"])
async def test_a_login_checked_before_its_session_ended_opens_nothing(
    tmp_path: Path, ending: str
) -> None:
    """The login is refused, its session is deleted, and no token outlives the change."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        replica_id = laptop.replica_id
        assert replica_id is not None

        async def act() -> None:
            if ending == "password":
                await server.set_password("clinic-a", "dr.a", NEW_PASSWORD)
            elif ending == "disable":
                await server.disable_user("clinic-a", "dr.a")
            else:
                await server.revoke(replica_id)

        stored = _act_before_the_session_is_stored(server, act)
        async with asyncio.timeout(LIMIT_S):
            with pytest.raises((AuthenticationError, SyncRefusedError)) as refused:
                await laptop.sync(username="dr.a", password=PASSWORD)
            expected = {
                "password": "password of dr.a in clinic-a changed",
                "disable": "is disabled",
                "revoke": "was revoked",
            }[ending]
            assert expected in str(refused.value)
            [session] = stored  # the login did reach the point of storing it
            assert await server.store.get_session(session.token_hash) is None
            # Nothing the login might have left behind resumes.
            with pytest.raises((AuthenticationError, SyncRefusedError)):
                await laptop.sync()
            if ending == "password":
                await laptop.sync(username="dr.a", password=NEW_PASSWORD)  # the new one works
            if ending == "revoke":
                assert laptop.locked
    finally:
        await laptop.close()
        await server.close()


async def test_a_revocation_seen_while_the_store_failed_is_looked_at_again(
    tmp_path: Path,
) -> None:
    """The watcher's re-check that meets a failing store is tried again next round.

    A laptop revoked by another process (``caresync replica revoke`` beside the server) is
    ended by the server's watcher when the accounts generation moves. If the first
    re-check after the move fails (a busy disk, a dropped PostgreSQL connection), the
    generation must not count as handled: before, it did, and the revoked laptop stayed
    connected, live, until some other account changed or its session expired (12 h).
    """
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    store = server.store
    original = store.get_replica
    failures: list[str] = []
    armed = asyncio.Event()

    async def get_replica(replica_id: str) -> ReplicaInfo | None:
        if armed.is_set() and not failures:
            failures.append(replica_id)
            raise StorageError("database is locked (the disk is busy)")
        return await original(replica_id)

    store.get_replica = get_replica  # type: ignore[method-assign]
    try:
        async with live(laptop) as run, asyncio.timeout(LIMIT_S):
            await run.states.reach(ReplicaState.ONLINE)
            async with SQLiteStore.open(tmp_path / "server.db", accounts_only=True) as admin:
                assert laptop.replica_id is not None
                await admin.revoke_replica(laptop.replica_id)
            armed.set()
            error = await run.outcome()  # told and closed, once the store answers again
            assert isinstance(error, SyncRefusedError)
            assert failures == [laptop.replica_id]  # the first re-check did fail
            assert laptop.locked
    finally:
        await laptop.close()
        await server.close()
