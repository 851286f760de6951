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
from argon2 import PasswordHasher
from tests.e2e.live_helpers import (
    LIMIT_S,
    PASSWORD,
    Signal,
    enrolled,
    live,
    start_server,
    until,
)

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


def _revoke_in_the_read(
    server: SyncServer, server_db: Path, method: str, replica_id: str, *, skip: int = 0
) -> asyncio.Event:
    """Make the server store's ``method`` read as asked, and, at the call after the
    first ``skip``, then have another process revoke ``replica_id`` and the server's
    watcher go round over its connections, before that read's answer reaches the
    login. Returns an event set once it did."""
    store = server.store
    original = getattr(store, method)
    original_generation = store.accounts_generation
    generation_reads = Signal()
    calls: list[object] = []
    done = asyncio.Event()

    async def accounts_generation() -> int:
        generation = await original_generation()
        generation_reads()
        return generation

    async def read(*args: object, **kwargs: object) -> object:
        answer = await original(*args, **kwargs)
        calls.append(args)
        if len(calls) == skip + 1:
            async with SQLiteStore.open(server_db, accounts_only=True) as admin:
                await admin.revoke_replica(replica_id)  # as another process does
            # A read of the generation may have begun before the commit: the third one
            # after it comes only once the watcher's re-check of the new one has ended.
            seen = generation_reads.count
            await until(_true_when(lambda: generation_reads.count >= seen + 3), generation_reads)
            done.set()
        return answer

    store.accounts_generation = accounts_generation  # type: ignore[method-assign]
    server.security_poll_s = 0.01
    setattr(store, method, read)
    return done


def _true_when(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition()

    return check


@pytest.mark.parametrize("login", ["password", "resumed"])
async def test_a_revocation_between_the_logins_checks_and_its_connection_ends_it(
    tmp_path: Path, login: str
) -> None:
    """A revocation committed after the login's last read, and seen by the watcher
    before the connection counted as logged in, still ends the connection.

    The watcher re-checks only logged-in connections, then takes the change as handled:
    before, this connection was passed by while its login was under way and never looked
    at again (a revoked laptop served, live, until its session's end, up to 12 h).
    """
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        replica_id, db = laptop.replica_id, tmp_path / "server.db"
        assert replica_id is not None
        if login == "password":  # the gate's re-check reads it second (after the proof)
            done = _revoke_in_the_read(server, db, "replica_secret_hash", replica_id, skip=1)
        else:
            done = _revoke_in_the_read(server, db, "read_resume", replica_id)
        async with asyncio.timeout(LIMIT_S):
            if login == "password":
                with pytest.raises(SyncRefusedError, match="revoked"):
                    await laptop.sync(username="dr.a", password=PASSWORD)
            else:
                async with live(laptop) as run:
                    error = await run.outcome()  # before: online, and never told
                assert isinstance(error, SyncRefusedError)
                assert "revoked" in str(error)
        assert done.is_set()
        assert laptop.locked
    finally:
        await laptop.close()
        await server.close()


async def test_a_password_hashed_again_during_a_login_is_still_its_password(
    tmp_path: Path,
) -> None:
    """The login's re-check asks whether the password is still the account's, not
    whether its hash is unchanged: the same password hashed again (at a higher cost,
    ``set_password_hash(..., end_sessions=False)``, as an application that upgrades
    hashes at login does) refused the login as a changed password and counted a failed
    guess against the account and the address, though the password was right."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        stronger = PasswordHasher(time_cost=3, memory_cost=16 * 1024)

        async def rehash() -> None:
            new_hash = await asyncio.to_thread(stronger.hash, PASSWORD)
            await server.store.set_password_hash("clinic-a", "dr.a", new_hash, end_sessions=False)

        stored = _act_before_the_session_is_stored(server, rehash)
        async with asyncio.timeout(LIMIT_S):
            report = await laptop.sync(username="dr.a", password=PASSWORD)
            assert report.conflicts_open == 0
            [session] = stored
            assert await server.store.get_session(session.token_hash) is not None
            await laptop.sync()  # the session stands, and resumes
    finally:
        await laptop.close()
        await server.close()
