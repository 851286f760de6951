"""The PostgreSQL server store passes the exported conformance suite (its server part),
and what it promises of its own: URLs, opening, migrations, feed order across
connections. Needs PostgreSQL (see tests/postgres.py): skips without it, unless
CARESYNC_REQUIRE_POSTGRES=1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.postgres import fresh_schema, with_database

from caresync.audit import AuditEvent
from caresync.exceptions import (
    DatabaseNotFoundError,
    DatabaseTooNewError,
    InvalidInputError,
    NotACaresyncDatabaseError,
    NotImplementedFeatureError,
    StorageError,
)
from caresync.storage import HubChanges, HubMark, HubOutcome, Identity, IncomingUpdate
from caresync.storage.postgres import PostgresStore
from caresync.storage.postgres.schema import SCHEMA_VERSION
from caresync.testing.store_data import FakeClock, Patient
from caresync.testing.store_suite import ServerStoreSuite


class TestPostgresStore(ServerStoreSuite):
    """Every test of the replica and server parts, each in a schema of its own."""

    url: str

    @pytest.fixture(autouse=True)
    def _database(self, postgres_database: str) -> None:
        self.url = postgres_database

    def make_store(
        self, directory: Path, clock: FakeClock
    ) -> AbstractAsyncContextManager[PostgresStore]:
        @asynccontextmanager
        async def opened() -> AsyncIterator[PostgresStore]:
            async with fresh_schema(self.url) as url, PostgresStore.open(url, clock=clock) as s:
                yield s

        return opened()


# Not the suite's: what the PostgreSQL store promises of its own.


@pytest.fixture
async def schema_url(postgres_database: str) -> AsyncIterator[str]:
    """A URL naming an empty schema of this test's own."""
    async with fresh_schema(postgres_database) as url:
        yield url


@pytest.mark.parametrize(
    "url", ["sqlite:///x.db", "server.db", "postgresql://host:notaport/db", "postgresql://a b"]
)
async def test_a_bad_url_is_a_typed_error_naming_the_form(url: str) -> None:
    with pytest.raises(InvalidInputError, match="postgresql://"):
        await PostgresStore.open(url)


async def test_an_unreachable_server_is_a_storage_error_saying_what_to_check() -> None:
    # Port 9 (discard) on this machine: nothing listens; the refusal is immediate.
    with pytest.raises(StorageError, match="check that the server runs") as caught:
        await PostgresStore.open("postgresql://someone:secret@127.0.0.1:9/nowhere")
    assert "secret" not in str(caught.value)  # a password is never shown


async def test_a_missing_database_is_a_storage_error(postgres_database: str) -> None:
    url = with_database(postgres_database, "caresync_no_such_database")
    with pytest.raises(StorageError, match="database exists"):
        await PostgresStore.open(url)


async def test_a_store_keeps_what_it_committed_and_reopens_without_migrating(
    schema_url: str,
) -> None:
    p = Patient("laptop-b")
    async with PostgresStore.open(schema_url) as store:
        assert store.migrated_from is None
        await store.set_identity(Identity("server-1", "server"))
        assert await store.write_remote([IncomingUpdate(p.id, p.created, None)], to_feed=True) == [
            1
        ]
    async with PostgresStore.open(schema_url, create=False) as again:
        assert again.migrated_from is None
        assert await again.get_identity() == Identity("server-1", "server")
        assert await again.load(p.id) == p.created
        assert await again.check() == []


async def test_create_false_on_an_empty_schema_creates_nothing(schema_url: str) -> None:
    with pytest.raises(DatabaseNotFoundError, match="caresync serve"):
        await PostgresStore.open(schema_url, create=False)
    with pytest.raises(DatabaseNotFoundError):
        await PostgresStore.open(schema_url, read_only=True)
    async with await psycopg.AsyncConnection.connect(schema_url) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
        )
        assert await cursor.fetchone() == (0,)


async def test_another_applications_tables_are_refused_and_left_alone(schema_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE invoices (id integer PRIMARY KEY)")
        with pytest.raises(NotACaresyncDatabaseError, match="another application"):
            await PostgresStore.open(schema_url)
        cursor = await conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        )
        assert await cursor.fetchall() == [("invoices",)]


async def test_a_schema_from_a_newer_caresync_is_refused(schema_url: str) -> None:
    async with PostgresStore.open(schema_url):
        pass
    async with await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as conn:
        await conn.execute("UPDATE caresync_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(DatabaseTooNewError, match="Upgrade caresync"):
        await PostgresStore.open(schema_url)


async def test_a_read_only_store_reads_and_refuses_every_write(schema_url: str) -> None:
    p = Patient()
    async with PostgresStore.open(schema_url) as writer:
        await writer.write_remote([IncomingUpdate(p.id, p.created, None)], to_feed=True)
        async with PostgresStore.open(schema_url, read_only=True) as reader:
            assert await reader.load(p.id) == p.created
            with pytest.raises(StorageError, match="read-only"):
                await reader.set_meta("k", "v")
            with pytest.raises(StorageError, match="read-only"):
                await reader.add_user("org", "dr.a", "hash")
        assert await writer.get_meta("k") is None


async def test_backup_is_pg_dumps_job(schema_url: str, tmp_path: Path) -> None:
    async with PostgresStore.open(schema_url) as store:
        with pytest.raises(NotImplementedFeatureError, match="pg_dump"):
            await store.backup(tmp_path / "copy.db")
    assert not (tmp_path / "copy.db").exists()


async def test_the_audit_trail_is_append_only_in_the_database(schema_url: str) -> None:
    async with PostgresStore.open(schema_url) as store:
        await store.append_audit([AuditEvent("dr.a", "read", "r1", None)], replica_id="server-1")
    async with await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as conn:
        for statement in ("UPDATE audit_trail SET actor = 'x'", "DELETE FROM audit_trail"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                await conn.execute(statement)


async def test_concurrent_writers_number_the_feed_in_commit_order(schema_url: str) -> None:
    """Two stores (two connections, as two server processes would have) push at once:
    every update gets one number, numbers run 1..N without a gap, and each
    writer's numbers grow in the order its own writes committed."""
    async with PostgresStore.open(schema_url) as one, PostgresStore.open(schema_url) as two:
        patients = [Patient(f"laptop-{i}") for i in range(40)]

        async def push(store: PostgresStore, mine: list[Patient]) -> list[int]:
            seqs: list[int] = []
            for p in mine:
                seqs += await store.write_remote(
                    [IncomingUpdate(p.id, p.created, None, "org-1")], to_feed=True, origin=p.id
                )
            return seqs

        first, second = await asyncio.gather(push(one, patients[::2]), push(two, patients[1::2]))
        assert sorted(first + second) == list(range(1, len(patients) + 1))
        assert first == sorted(first)
        assert second == sorted(second)
        feed = await one.feed_since(0, limit=100)
        assert [item.seq for item in feed] == list(range(1, len(patients) + 1))
        assert {item.record_id for item in feed} == {p.id for p in patients}
        assert all(item.origin == item.record_id for item in feed)
        assert await two.check() == []


async def _marked(store: PostgresStore, patients: list[Patient]) -> None:
    """Push each patient (org-1), marked for the health hub."""
    await store.write_remote(
        [IncomingUpdate(p.id, p.record.update_since(), None, "org-1") for p in patients],
        to_feed=True,
        hub={p.id: HubMark(True) for p in patients},
    )


async def test_concurrent_hub_writers_give_each_change_its_own_mark(schema_url: str) -> None:
    """Two stores (two server processes) write the hub outbox at once: pushes, attempts
    and outcomes each take one mark, none twice, none lost."""
    async with PostgresStore.open(schema_url) as one, PostgresStore.open(schema_url) as two:
        patients = [Patient(f"laptop-{i}") for i in range(12)]
        await _marked(one, patients)
        start = (await one.hub_changes("org-1", 0, 100)).mark
        assert start == len(patients)

        async def touch(store: PostgresStore, mine: list[Patient]) -> None:
            for n, p in enumerate(mine):
                await store.record_hub_attempt(p.id, 1000 + n)
                p.edit()
                await _marked(store, [p])
                await store.record_hub_outcome(p.id, 1, HubOutcome("failed", "x", 1, 5))

        await asyncio.gather(touch(one, patients[::2]), touch(two, patients[1::2]))
        after = await two.hub_changes("org-1", start, 100)
        # 12 attempts, 12 pushes; the outcomes name version 1, which no row holds now.
        assert after.mark == start + 2 * len(patients)
        assert sorted(r.record_id for r in after.rows) == sorted(p.id for p in patients)
        marks = await one._run(
            "reading the marks",
            lambda raw: [r[0] for r in raw.execute("SELECT change FROM hub_outbox")],
        )
        assert len(set(marks)) == len(patients)


async def test_a_reader_never_passes_a_hub_mark_whose_change_commits_later(
    schema_url: str,
) -> None:
    """A writer holds mark n+1, uncommitted: another writer cannot take n+2 and commit
    first (it is held on the mark's lock: with a lock timeout it fails, storing
    nothing), and a reader sees mark n until the first commits; then both changes, in
    order."""

    def lock_timeout(setting: str) -> Callable[[Any], None]:
        def job(raw: Any) -> None:
            raw.execute(f"SET lock_timeout = '{setting}'")
            raw.commit()

        return job

    async with (
        PostgresStore.open(schema_url) as reader,
        PostgresStore.open(schema_url) as writer,
        await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as slow,
    ):
        a, b = Patient("laptop-a"), Patient("laptop-b")
        await _marked(reader, [a, b])
        n = (await reader.hub_changes("org-1", 0, 10)).mark
        async with slow.transaction():
            # What a hub write does, held open: lock the mark, take n+1, write it.
            cursor = await slow.execute("SELECT n FROM hub_mark WHERE singleton = 1 FOR UPDATE")
            assert await cursor.fetchone() == (n,)
            await slow.execute(
                "UPDATE hub_outbox SET last_attempt_ms = 1, change = %s WHERE record_id = %s",
                (n + 1, a.id),
            )
            await slow.execute("UPDATE hub_mark SET n = %s", (n + 1,))
            # The other writer waits on the mark's lock rather than take n+2: given a
            # lock timeout, it gives up there (a writer not held would store at once).
            await writer._run("setting a lock timeout", lock_timeout("200ms"))
            with pytest.raises(StorageError):
                await writer.record_hub_attempt(b.id, 2)
            await writer._run("clearing the lock timeout", lock_timeout("0"))
            held = await reader.hub_changes("org-1", n, 10)
            assert held == HubChanges((), (), n, False)
        await writer.record_hub_attempt(b.id, 2)
        both = await reader.hub_changes("org-1", n, 10)
        assert [(r.record_id, r.last_attempt_ms) for r in both.rows] == [(a.id, 1), (b.id, 2)]
        assert both.mark == n + 2


async def test_a_lost_connection_fails_one_call_whole_and_the_next_reconnects(
    schema_url: str,
) -> None:
    p = Patient()
    async with PostgresStore.open(schema_url) as store:
        await store.write_remote([IncomingUpdate(p.id, p.created, None)], to_feed=True)
        pid = await store._run("reading the backend", lambda raw: raw.info.backend_pid)
        async with await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as admin:
            # (PostgreSQL 14+: waits up to 10 s for the backend to be gone)
            await admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
        with pytest.raises(StorageError, match="check that the server runs"):
            await store.set_meta("k", "v")
        assert await store.get_meta("k") is None  # reconnected; the failed write left nothing
        await store.set_meta("k", "v")
        assert await store.load(p.id) == p.created


async def test_concurrent_writers_keep_feed_order_whatever_the_databases_isolation(
    schema_url: str,
) -> None:
    """Reproduced: with the database's default isolation at REPEATABLE READ or
    SERIALIZABLE, half of two stores' concurrent writes failed on a taken feed seq.
    The store sets READ COMMITTED (and a synchronous commit) on its connections."""
    strict = schema_url.replace(
        "options=", "options=-cdefault_transaction_isolation%3Dserializable%20", 1
    )
    async with PostgresStore.open(strict) as one, PostgresStore.open(strict) as two:
        patients = [Patient(f"laptop-{n}") for n in range(24)]

        async def push(store: PostgresStore, mine: list[Patient]) -> list[int]:
            seqs: list[int] = []
            for p in mine:
                seqs += await store.write_remote(
                    [IncomingUpdate(p.id, p.created, None, "org-1")], to_feed=True, origin=p.id
                )
            return seqs

        first, second = await asyncio.gather(push(one, patients[::2]), push(two, patients[1::2]))
        assert sorted(first + second) == list(range(1, 25))
        fed = await one.feed_since(0, limit=100)
        assert [item.seq for item in fed] == list(range(1, 25))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@127.0.0.1:5432/x?password=s3cret",
        "postgresql://u:%zzs3cret@127.0.0.1:5432/x",
        "postgresql://u:s3cret@[::1/x",
    ],
)
async def test_a_password_is_never_shown(url: str) -> None:
    """Reproduced: a password in the query, or one libpq could not parse, was shown."""
    from caresync.storage.servers import shown_database

    assert "s3cret" not in shown_database(url)
    with pytest.raises((InvalidInputError, StorageError)) as refused:
        await PostgresStore.open(url, create=False)
    assert "s3cret" not in str(refused.value)


async def test_make_durable_flushes_the_write_ahead_log_past_a_lazy_login_entry(
    schema_url: str,
) -> None:
    """Reproduced: make_durable committed a transaction that only took an xid
    (``SELECT pg_current_xact_id()``); PostgreSQL flushes nothing for a commit that
    wrote no WAL, so the login entries committed with ``synchronous_commit = off``
    were still only in memory when the server served the laptop."""
    async with (
        PostgresStore.open(schema_url) as store,
        await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as probe,
    ):
        await store.set_identity(Identity("server-1", "server"))
        await store.enrol_replica("laptop-7", "org-1", enrolled_by="ada")
        login = AuditEvent("ada", "login", None, "laptop-7")
        # Several rounds: PostgreSQL's WAL writer flushes lazy commits on its own
        # within wal_writer_delay, so one round alone could pass by its luck.
        for _round in range(5):
            await store.append_audit([login], seen=("laptop-7", 1000), durable=False)
            cursor = await probe.execute("SELECT pg_current_wal_insert_lsn()")
            row = await cursor.fetchone()
            assert row is not None
            committed = row[0]  # at or past the lazy commit's record
            await store.make_durable()
            cursor = await probe.execute(
                "SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn", (committed,)
            )
            assert await cursor.fetchone() == (True,)
