"""Two PostgreSQL stores (two server processes, or a server and `caresync replica revoke`)
writing one database at once take their locks in one order: no deadlock, so neither
call fails. Real transactions on 127.0.0.1, interleaved by a third connection's locks.
Needs PostgreSQL (see tests/postgres.py): skips without it, unless
CARESYNC_REQUIRE_POSTGRES=1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest
from tests.postgres import fresh_schema

from caresync.audit import AuditEvent
from caresync.exceptions import StorageError
from caresync.storage.postgres import PostgresStore

LIMIT_S = 30.0
SERVER = "server-1"


@pytest.fixture
async def schema_url(postgres_database: str) -> AsyncIterator[str]:
    """A URL naming an empty schema of this test's own."""
    async with fresh_schema(postgres_database) as url:
        yield url


async def _until_waiting(url: str, count: int) -> None:
    """Until PostgreSQL shows ``count`` statements waiting for a lock. PostgreSQL signals
    no lock wait, so each check is a round trip to it (no fixed sleep), bounded in count
    and time; autocommit, so each look is a new snapshot of pg_stat_activity."""
    connecting = psycopg.AsyncConnection.connect(url, autocommit=True)
    async with await connecting as admin, asyncio.timeout(LIMIT_S):
        for _ in range(100_000):
            cursor = await admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            )
            row = await cursor.fetchone()
            if row is not None and row[0] >= count:
                return
    raise AssertionError(f"{count} statements never waited for a lock")


async def test_a_login_entry_and_a_revocation_of_its_replica_at_once_both_commit(
    schema_url: str,
) -> None:
    """Reproduced: a login's audit entry noting the replica's last contact took the
    server's audit chain lock, then the replica's row; a revocation of that replica
    through another process (or the CLI) took the row, then the chain lock. Met at once,
    PostgreSQL found a deadlock and failed one of them (StorageError after a second).
    Here the login's entry is held between its two locks (its INSERT waits for a third
    connection's SHARE lock on audit_trail) while the revocation starts. Now the entry
    takes the row first, as every replica write does: the revocation waits, both commit,
    and the chain holds both entries, one after the other."""
    async with PostgresStore.open(schema_url) as one, PostgresStore.open(schema_url) as two:
        await one.enrol_replica("laptop-1", "clinic-a", enrolled_by="dr.a")
        async with await psycopg.AsyncConnection.connect(schema_url) as holder:
            async with holder.transaction():
                await holder.execute("LOCK TABLE audit_trail IN SHARE MODE")
                login = asyncio.create_task(
                    two.append_audit(
                        [AuditEvent("dr.a", "login", None, "laptop-1")],
                        replica_id=SERVER,
                        seen=("laptop-1", 5_000),
                    )
                )
                await _until_waiting(schema_url, 1)  # the entry's INSERT waits for the holder
                revoke = asyncio.create_task(
                    one.revoke_replica(
                        "laptop-1",
                        audit=[AuditEvent("admin", "revoke", None, "laptop-1")],
                        audit_as=SERVER,
                    )
                )
                await _until_waiting(schema_url, 2)  # the revocation waits too
            async with asyncio.timeout(LIMIT_S):
                entries = await login
                revoked = await revoke
        assert [e.action for e in entries] == ["login"]
        assert revoked
        info = await one.get_replica("laptop-1")
        assert info is not None
        assert info.revoked
        assert info.last_seen_ms == 5_000
        chain = await one.audit_entries(replica_id=SERVER)
        assert [e.seq for e in chain] == [1, 2]
        assert chain[1].prev_hash == chain[0].hash
        assert await one.check() == []


async def test_a_lock_wait_given_up_is_said_as_such_not_as_a_lost_connection(
    schema_url: str,
) -> None:
    """Reproduced: a statement that gave up waiting for a lock (the role's lock_timeout)
    or that PostgreSQL chose as a deadlock's victim failed with "lost or refused the
    connection ... check that the server runs and is reachable": the operator was sent
    to look for a network fault. It now says that the database gave up the call because
    of other transactions, nothing of it stored, and to try again; the connection is
    kept (the next call runs on it)."""
    patient_url = schema_url.replace("options=", "options=-clock_timeout%3D200%20", 1)
    async with PostgresStore.open(patient_url) as store:
        pid = await store._run("reading the backend", lambda raw: raw.info.backend_pid)
        connecting = psycopg.AsyncConnection.connect(schema_url)
        async with await connecting as holder, holder.transaction():
            await holder.execute("LOCK TABLE feed_epochs IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StorageError) as failed:
                await store.begin_feed_epoch(7)
        message = str(failed.value)
        assert "lost or refused the connection" not in message
        assert "other transactions" in message
        assert "nothing of it was stored" in message
        assert "try again" in message
        assert await store.feed_epochs() == []  # nothing stored
        await store.begin_feed_epoch(7)
        assert [e.epoch for e in await store.feed_epochs()] == [7]
        assert await store._run("reading the backend", lambda raw: raw.info.backend_pid) == pid
