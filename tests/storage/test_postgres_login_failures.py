"""Failed logins in PostgreSQL (``login_failures``): what the conformance suite cannot
see from one connection. Two connections failing on one key at the same instant both
count; idle rows go at a failure, a bounded number at a time; a spray of unique names
keeps at most ``max_tracked`` rows; the table comes with schema version 6 (a version 5
database gains it when opened); a throttle read that meets a lost connection fails the
login. Needs PostgreSQL (tests/postgres.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Literal

import psycopg
import pytest
from argon2 import PasswordHasher
from tests.postgres import fresh_schema

from caresync.exceptions import StorageError
from caresync.gate import Gatekeeper, Refused
from caresync.protocol import ErrorCode
from caresync.storage import UserAccount
from caresync.storage.postgres import PostgresStore
from caresync.storage.postgres.logins import PRUNE_ROWS
from caresync.storage.postgres.schema import FORMAT_VALUE, SCHEMA_STEPS, SCHEMA_VERSION
from caresync.throttle import LoginThrottle, ThrottlePolicy, key_text

LIMIT_S = 30.0
"""Upper bound for one wait; a passing test never comes near it."""

POLICY = ThrottlePolicy(
    first_lock_ms=1_000, max_lock_ms=300_000, forget_after_ms=60_000, max_tracked=1_000
)
KEY = key_text(("account", "clinic-a", "dr.a"))


@pytest.fixture
async def schema_url(postgres_database: str) -> AsyncIterator[str]:
    async with fresh_schema(postgres_database) as url:
        yield url


async def _row(url: str, key: str) -> tuple[int, int, int] | None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT failures, last_ms, locked_until_ms FROM login_failures WHERE key = %s",
            (key,),
        )
        row = await cursor.fetchone()
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]))


async def _rows(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute("SELECT count(*) FROM login_failures")
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_two_connections_failing_on_one_key_at_the_same_instant_both_count(
    schema_url: str,
) -> None:
    """Both processes' statements wait on the key's row (held by a third connection),
    so they run at the same instant once it is let go: each must count, and the lock
    must be the third failure's (two free)."""
    now = 10_000_000
    async with PostgresStore.open(schema_url) as one, PostgresStore.open(schema_url) as two:
        await one.login_failed([(KEY, 2)], now, POLICY)
        async with await psycopg.AsyncConnection.connect(schema_url) as holder:
            async with holder.transaction():
                await holder.execute(
                    "SELECT 1 FROM login_failures WHERE key = %s FOR UPDATE", (KEY,)
                )
                failing = [
                    asyncio.create_task(store.login_failed([(KEY, 2)], now, POLICY))
                    for store in (one, two)
                ]
                await _until_waiting_on_a_row(schema_url, 2)
                assert not any(task.done() for task in failing)
            async with asyncio.timeout(LIMIT_S):
                await asyncio.gather(*failing)
        assert await _row(schema_url, KEY) == (3, now, now + 1_000)
        for store in (one, two):
            assert await store.login_wait_ms([KEY], now, POLICY.forget_after_ms) == 1_000


async def test_many_failures_from_two_connections_all_count(schema_url: str) -> None:
    """Two connections, each with 25 failures under way on one key and its address at
    once, unhindered: 50 counted on each key, none lost to a race."""
    address = key_text(("address", "10.1.2.3"))
    policy = ThrottlePolicy(
        first_lock_ms=1_000, max_lock_ms=1_000, forget_after_ms=60_000, max_tracked=1_000
    )
    async with PostgresStore.open(schema_url) as one, PostgresStore.open(schema_url) as two:
        async with asyncio.timeout(LIMIT_S):
            await asyncio.gather(
                *(
                    store.login_failed([(KEY, 5), (address, 20)], 20_000_000, policy)
                    for _ in range(25)
                    for store in (one, two)
                )
            )
    assert await _row(schema_url, KEY) == (50, 20_000_000, 20_001_000)
    assert await _row(schema_url, address) == (50, 20_000_000, 20_001_000)


async def test_idle_rows_go_at_a_failure_a_bounded_number_at_a_time(schema_url: str) -> None:
    idle = 2 * PRUNE_ROWS + 10
    async with PostgresStore.open(schema_url) as store:
        for n in range(idle):
            await store.login_failed([(key_text(("address", f"10.0.{n}")), 20)], 1_000 + n, POLICY)
        assert await _rows(schema_url) == idle
        later = 1_000 + POLICY.forget_after_ms + idle  # every one idle now
        await store.login_failed([(KEY, 5)], later, POLICY)
        assert await _rows(schema_url) == idle - PRUNE_ROWS + 1  # the oldest went first
        assert await _row(schema_url, key_text(("address", "10.0.0"))) is None
        assert await _row(schema_url, key_text(("address", f"10.0.{PRUNE_ROWS}"))) is not None
        await store.login_failed([(KEY, 5)], later, POLICY)
        await store.login_failed([(KEY, 5)], later, POLICY)
        assert await _rows(schema_url) == 1  # only the key failing now
        # A key failing within forget_after_ms is kept, however old its first failure.
        await store.login_failed([(KEY, 5)], later + POLICY.forget_after_ms - 1, POLICY)
        assert await _row(schema_url, KEY) == (4, later + POLICY.forget_after_ms - 1, 0)


async def test_a_spray_of_unique_names_keeps_at_most_max_tracked_rows(schema_url: str) -> None:
    """A guesser trying 300 made-up names from one address: the table stays at
    ``max_tracked`` rows, and the address's row (failing with each) is among them."""
    policy = ThrottlePolicy(
        first_lock_ms=1_000, max_lock_ms=300_000, forget_after_ms=3_600_000, max_tracked=40
    )
    address = key_text(("address", "203.0.113.9"))
    async with PostgresStore.open(schema_url) as store:
        for n in range(300):
            account = key_text(("account", "clinic-a", f"guess-{n}"))
            await store.login_failed([(account, 5), (address, 20)], 1_000_000 + n, policy)
            assert await _rows(schema_url) <= policy.max_tracked
        assert await _rows(schema_url) == policy.max_tracked
        row = await _row(schema_url, address)
        assert row is not None
        assert row[0] == 300
        assert await store.login_wait_ms([address], 1_000_299, policy.forget_after_ms) > 0


async def test_the_table_comes_with_schema_version_6(schema_url: str) -> None:
    async with PostgresStore.open(schema_url):
        pass
    async with await psycopg.AsyncConnection.connect(schema_url) as conn:
        cursor = await conn.execute("SELECT version FROM caresync_schema")
        assert await cursor.fetchone() == (SCHEMA_VERSION,)  # 6, or a later one
        assert SCHEMA_VERSION >= 6
        cursor = await conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'login_failures' ORDER BY 1"
        )
        assert [r[0] for r in await cursor.fetchall()] == [
            "login_failures_by_last",
            "login_failures_pkey",
        ]


async def test_a_version_5_database_gains_the_table_and_keeps_its_accounts(
    schema_url: str,
) -> None:
    """A server database of the release before (schema version 5) is migrated when a
    process opens it: the table is added empty, the accounts stay, and failures count."""
    with psycopg.connect(schema_url, autocommit=True) as conn, conn.transaction():
        for step in range(1, 6):
            for statement in SCHEMA_STEPS[step]:
                conn.execute(statement)
        conn.execute(
            "INSERT INTO caresync_schema (singleton, format, version) VALUES (1, %s, 5)",
            (FORMAT_VALUE,),
        )
        conn.execute(
            "INSERT INTO users (organisation, username, password_hash, created_ms)"
            " VALUES ('clinic-a', 'dr.a', 'hash', 1)"
        )
    async with PostgresStore.open(schema_url) as store:
        assert store.migrated_from == 5
        assert await _rows(schema_url) == 0
        user = await store.get_user("clinic-a", "dr.a")
        assert user is not None
        for _ in range(2):
            await store.login_failed([(KEY, 1)], 1_000, POLICY)
        assert await store.login_wait_ms([KEY], 1_000, POLICY.forget_after_ms) == 1_000


async def _until_waiting_on_a_row(url: str, count: int) -> None:
    """Until PostgreSQL shows ``count`` statements on ``login_failures`` waiting for a
    lock. PostgreSQL signals no lock wait, so each check is a round trip to it (no
    fixed sleep), bounded in count and time. Autocommit: within one transaction
    ``pg_stat_activity`` is one snapshot, and a first look taken before the statements
    waited would be all every later look saw (reproduced under the full suite's load)."""
    connecting = psycopg.AsyncConnection.connect(url, autocommit=True)
    async with await connecting as admin, asyncio.timeout(LIMIT_S):
        for _ in range(100_000):
            cursor = await admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%%INSERT INTO login_failures%%'"
            )
            row = await cursor.fetchone()
            if row is not None and row[0] >= count:
                return
    raise AssertionError(f"{count} statements never waited on the row")


async def test_a_throttle_read_that_meets_a_lost_connection_fails_the_login(
    schema_url: str,
) -> None:
    """The database connection breaks (here: its backend terminated) before a login: the
    throttle's read is the first to meet it, and the login fails (StorageError, as any
    login without its database does), the account never read nor its password checked;
    the next login reconnects and is throttled as before."""
    hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    async with PostgresStore.open(schema_url) as store:
        await store.add_user("clinic-a", "dr.a", hasher.hash("right"))
        gate = Gatekeeper(
            store,
            server_id="server-1",
            hasher=hasher,
            session_ttl_s=3600,
            now_ms=lambda: 0,
            throttle=LoginThrottle(account_free=1, first_lock_s=60),
        )
        for _ in range(2):  # locked now
            refused = await gate.check_password("clinic-a", "dr.a", "wrong", "10.0.0.7")
            assert isinstance(refused, Refused)
        async with await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND query LIKE '%%login_failures%%'"  # the store's: its last statement
            )
        reads: list[str] = []
        real_get_user = store.get_user

        async def get_user(organisation: str, username: str) -> UserAccount | None:
            reads.append(username)
            return await real_get_user(organisation, username)

        store.get_user = get_user  # type: ignore[method-assign]
        with pytest.raises(StorageError, match="connection"):
            await gate.check_password("clinic-a", "dr.a", "right", "10.0.0.7")
        assert reads == []
        refused = await gate.check_password("clinic-a", "dr.a", "right", "10.0.0.7")
        assert isinstance(refused, Refused)
        assert refused.code == ErrorCode.THROTTLED
        assert reads == []


async def test_concurrent_guesses_through_two_connections_get_the_checks_of_one_guesser(
    schema_url: str,
) -> None:
    """Twenty guessers at one account at the same instant, through two stores (two
    processes' connections) and their gates: each gate reads the account unlocked
    before any guess is checked, yet a guess is counted before its password is checked,
    atomically with the lock's check, so only the five free ones and the one that earns
    the first lock are checked; the rest are refused unchecked."""
    checked: list[str] = []

    class Counting(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            checked.append(str(password))
            return super().verify(hash, password)

    hasher = Counting(time_cost=1, memory_cost=8, parallelism=1)
    async with PostgresStore.open(schema_url) as one, PostgresStore.open(schema_url) as two:
        await one.add_user("clinic-a", "dr.a", hasher.hash("right"))
        gates = [
            Gatekeeper(
                store,
                server_id="server-1",
                hasher=hasher,
                session_ttl_s=3600,
                now_ms=lambda: 0,
                throttle=LoginThrottle(first_lock_s=60),
            )
            for store in (one, two)
        ]
        results = await asyncio.gather(
            *(
                gates[n % 2].check_password("clinic-a", "dr.a", f"guess-{n}", f"10.0.{n}.1")
                for n in range(20)
            )
        )
    codes = [r.code if isinstance(r, Refused) else "ok" for r in results]
    assert len(checked) == 6
    assert codes.count(ErrorCode.BAD_CREDENTIALS) == 6
    assert codes.count(ErrorCode.THROTTLED) == 14
    row = await _row(schema_url, KEY)
    assert row is not None
    assert row[0] == 6  # the refused ones counted nothing
