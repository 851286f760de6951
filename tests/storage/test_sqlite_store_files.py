"""The SQLite store and the files it is given: recognise, refuse, create, migrate, never harm."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Map, merge_updates
from store_helpers import Patient, conflict, digest, revision_ids, snapshot

from caresync import (
    CaresyncError,
    DatabaseNotFoundError,
    DatabaseTooNewError,
    InvalidInputError,
    NotACaresyncDatabaseError,
    StorageError,
)
from caresync.storage import SCHEMA_VERSION, Identity, IncomingUpdate, SQLiteStore
from caresync.storage import migrations as migrations_module
from caresync.storage.migrations import create_schema
from caresync.storage.schema import SCHEMA_STEPS
from caresync.storage.sqlite import core as core_module
from caresync.storage.sqlite import files as sqlite_module


def make_old_database(path: Path, version: int) -> None:
    """A database as an older caresync laid it out (WAL, marks, schema ``version``)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        create_schema(conn, now_ms=1, version=version)
    finally:
        conn.close()


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_create_false_on_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(DatabaseNotFoundError):
        await SQLiteStore.open(tmp_path / "missing.db", create=False)
    assert names(tmp_path) == []


async def test_creating_leaves_only_the_database(tmp_path: Path) -> None:
    async with SQLiteStore.open(tmp_path / "new.db") as store:
        assert await store.check() == []
    # Beside it only SQLite's shared-memory index and the writer's lock file.
    assert [n for n in names(tmp_path) if not n.endswith(("-shm", "-writer.lock"))] == ["new.db"]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"Patient notes, not a database\n" * 10,
        b"SQLite format 3\x00" + b"\x00" * 50,  # a header cut short
        bytes(range(256)) * 64,
    ],
    ids=["empty", "text", "short-header", "binary"],
)
async def test_a_file_that_is_not_a_database_is_refused_and_untouched(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(content)
    before = snapshot(tmp_path)
    with pytest.raises(NotACaresyncDatabaseError):
        await SQLiteStore.open(path)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("journal", ["delete", "wal"])
async def test_another_applications_database_is_refused_and_untouched(
    tmp_path: Path, journal: str
) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode = {journal}")
    conn.execute("CREATE TABLE patients (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO patients (name) VALUES ('Ada')")
    conn.close()
    before = snapshot(tmp_path)
    with pytest.raises(NotACaresyncDatabaseError):
        await SQLiteStore.open(path)
    assert snapshot(tmp_path) == before


async def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotACaresyncDatabaseError):
        await SQLiteStore.open(tmp_path)


async def test_a_database_from_a_newer_caresync_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    async with SQLiteStore.open(path) as store:
        p = Patient()
        await store.write_local(p.id, p.created, conflicts=None)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = snapshot(tmp_path)
    with pytest.raises(DatabaseTooNewError):
        await SQLiteStore.open(path)
    assert snapshot(tmp_path) == before


async def test_a_newer_version_still_in_the_write_ahead_log_is_refused_too(
    tmp_path: Path,
) -> None:
    """The file's header says an old version; the WAL, not yet checkpointed, a newer one."""
    original = tmp_path / "original"
    original.mkdir()
    path = original / "replica.db"
    async with SQLiteStore.open(path):
        pass
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(path, copy / "replica.db")
    shutil.copy(Path(f"{path}-wal"), copy / "replica.db-wal")
    conn.close()
    before = {name: h for name, h in snapshot(copy).items()}
    with pytest.raises(DatabaseTooNewError):
        await SQLiteStore.open(copy / "replica.db")
    after = snapshot(copy)
    assert {n: after[n] for n in before} == before  # the database and its WAL, byte for byte


async def test_an_older_database_migrates_forward_keeping_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    make_old_database(path, version=1)
    p = Patient()
    edit = p.edit("birthDate", "1970-01-01")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "INSERT INTO records (record_id, organisation, state_vector, log_count,"
        " log_bytes, created_ms, updated_ms) VALUES (?, 'org-1', ?, 2, ?, 1, 1)",
        (p.id, p.record.state_vector(), len(p.created) + len(edit)),
    )
    conn.executemany(
        "INSERT INTO log (record_id, data, created_ms) VALUES (?, ?, 1)",
        [(p.id, p.created), (p.id, edit)],
    )
    conn.execute("INSERT INTO outbox (record_id, data, created_ms) VALUES (?, ?, 1)", (p.id, edit))
    conn.close()
    async with SQLiteStore.open(path) as store:
        assert store.migrated_from == 1
        assert await store.check() == []
        loaded = await store.load(p.id)
        assert loaded is not None
        assert revision_ids(loaded, p.id) == {r.id for r in p.record.revisions()}
        assert [i.update for i in await store.pending()] == [edit]
        await store.set_conflicts(p.id, [conflict(p.id)])  # a table version 2 added
        await store.add_user("org-1", "ada", "$argon2id$x")
        await store.enrol_replica("laptop-1", "org-1")
        await store.touch_replica("laptop-1", pending=2, oldest_pending_ms=5)  # version 3
    async with SQLiteStore.open(path) as again:
        assert again.migrated_from is None
        assert await again.count_conflicts() == 1


def fill_like_an_old_server(path: Path) -> dict[str, Patient]:
    """Rows as caresync up to version 3 wrote them: every feed update also in the log.

    ``fed`` was compacted after two updates and written once more; ``fresh``
    has one update; ``local`` is a laptop's record (log and outbox, no feed).
    """
    fed, fresh, local = Patient("laptop-b"), Patient("laptop-c"), Patient("laptop-a")
    fed_updates = [fed.created, fed.edit("birthDate", "1970"), fed.edit("name", "Ada")]
    local_updates = [local.created, local.edit("birthDate", "1999")]
    conn = sqlite3.connect(path, isolation_level=None)
    records = [
        (fed.id, fed.record.state_vector(), 1, len(fed_updates[2])),
        (fresh.id, fresh.record.state_vector(), 1, len(fresh.created)),
        (local.id, local.record.state_vector(), 2, sum(map(len, local_updates))),
    ]
    conn.executemany(
        "INSERT INTO records (record_id, organisation, state_vector, log_count, log_bytes,"
        " created_ms, updated_ms) VALUES (?, 'org-1', ?, ?, ?, 1, 1)",
        records,
    )
    conn.execute(
        "INSERT INTO states (record_id, state) VALUES (?, ?)",
        (fed.id, merge_updates(*fed_updates[:2])),
    )
    log = [(fed.id, fed_updates[2]), (fresh.id, fresh.created)]
    log += [(local.id, u) for u in local_updates]
    conn.executemany("INSERT INTO log (record_id, data, created_ms) VALUES (?, ?, 1)", log)
    feed = [(fed.id, u) for u in fed_updates[:2]] + [(fresh.id, fresh.created)]
    feed += [(fed.id, fed_updates[2])]
    conn.executemany(
        "INSERT INTO feed (record_id, organisation, data) VALUES (?, 'org-1', ?)", feed
    )
    conn.execute(
        "INSERT INTO outbox (record_id, data, created_ms) VALUES (?, ?, 1)",
        (local.id, local_updates[1]),
    )
    conn.close()
    return {"fed": fed, "fresh": fresh, "local": local}


@pytest.mark.parametrize("version", [1, 2, 3])
async def test_an_old_server_migrates_to_integer_keys_and_a_feed_that_is_its_log(
    tmp_path: Path, version: int
) -> None:
    path = tmp_path / f"v{version}.db"
    make_old_database(path, version=version)
    patients = fill_like_an_old_server(path)
    fed, fresh, local = patients["fed"], patients["fresh"], patients["local"]
    async with SQLiteStore.open(path) as store:
        assert store.migrated_from == version
        assert await store.check() == []
        for p in patients.values():
            loaded = await store.load(p.id)
            assert loaded is not None
            assert revision_ids(loaded, p.id) == {r.id for r in p.record.revisions()}
        feed = await store.feed_since(0, limit=10)
        assert [(f.seq, f.record_id) for f in feed] == [
            (1, fed.id),
            (2, fed.id),
            (3, fresh.id),
            (4, fed.id),
        ]
        assert [await store.log_length(p.id) for p in (fed, fresh, local)] == [1, 1, 2]
        assert [f.origin for f in feed] == [None] * 4  # sent to everyone, as before
        assert len(await store.feed_since(0, limit=10, exclude_origin="laptop-b")) == 4
        assert [i.record_id for i in await store.pending()] == [local.id]
        # Writing on: into the feed (stored once), compacting, a new record.
        new = Patient("laptop-d")
        seqs = await store.write_remote(
            [IncomingUpdate(fed.id, fed.edit("birthDate", "1971"), None), remote_of(new)],
            to_feed=True,
            origin="laptop-d",
        )
        assert seqs == [5, 6]
        assert len(await store.feed_since(0, limit=10, exclude_origin="laptop-d")) == 4
        assert await store.log_length(fed.id) == 2
        assert await store.compact(fed.id) == 2
        assert await store.log_length(fed.id) == 0
        assert len(await store.feed_since(0, limit=10)) == 6
        assert await store.check() == []
    async with SQLiteStore.open(path) as again:
        assert again.migrated_from is None
        loaded = await again.load(fed.id)
        assert loaded is not None
        assert revision_ids(loaded, fed.id) == {r.id for r in fed.record.revisions()}
        assert await again.has_record(new.id)
        assert await again.check() == []


def remote_of(p: Patient) -> IncomingUpdate:
    return IncomingUpdate(p.id, p.created, None, "org-1")


@pytest.mark.parametrize(
    ("table", "orphan"),
    [
        ("log", "INSERT INTO log (record_id, data, created_ms) VALUES ('gone', x'0000', 1)"),
        ("feed", "INSERT INTO feed (record_id, organisation, data) VALUES ('gone', 'o', x'0000')"),
    ],
)
async def test_a_row_of_no_record_stops_the_migration_and_nothing_is_lost(
    tmp_path: Path, table: str, orphan: str
) -> None:
    path = tmp_path / "v3.db"
    make_old_database(path, version=3)
    fill_like_an_old_server(path)
    conn = sqlite3.connect(path, isolation_level=None)
    before = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    conn.execute(orphan)
    conn.close()
    with pytest.raises(StorageError, match="NOT NULL"):
        await SQLiteStore.open(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == before + 1
    conn.close()


async def test_a_failed_migration_leaves_the_old_version_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "v1.db"
    make_old_database(path, version=1)
    broken = dict(SCHEMA_STEPS)
    broken[2] = (*SCHEMA_STEPS[2], "THIS IS NOT SQL")
    monkeypatch.setattr(migrations_module, "SCHEMA_STEPS", broken)
    with pytest.raises(StorageError):
        await SQLiteStore.open(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    conn.close()
    assert "conflicts" not in tables
    monkeypatch.undo()
    async with SQLiteStore.open(path) as store:
        assert store.migrated_from == 1


async def test_one_process_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    async with SQLiteStore.open(path) as first:
        with pytest.raises(StorageError, match="in use"):
            await SQLiteStore.open(path)
        p = Patient()
        await first.write_local(p.id, p.created, conflicts=None)
    async with SQLiteStore.open(path) as second:
        assert await second.pending_count() == 1


_WRITER_CHILD = """
import asyncio, sys
sys.path.insert(0, sys.argv[2])
from store_helpers import Patient
from caresync.storage import SQLiteStore

async def main() -> None:
    async with SQLiteStore.open(sys.argv[1]) as store:
        for _ in range(2):
            p = Patient()
            await store.write_local(p.id, p.created, conflicts=None)
            print(p.id, flush=True)
            sys.stdin.readline()  # the parent has read; write the next one

asyncio.run(main())
"""


async def test_a_reader_reads_while_another_process_writes(tmp_path: Path) -> None:
    path = tmp_path / "server.db"
    await (await SQLiteStore.open(path)).close()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WRITER_CHILD,
        str(path),
        str(Path(__file__).parent),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdin is not None
    assert child.stdout is not None

    async def line() -> str:
        assert child.stdout is not None
        return (await asyncio.wait_for(child.stdout.readline(), 30)).decode().strip()

    try:
        first = await line()  # committed before it was printed
        with pytest.raises(StorageError, match="in use by another process"):
            await SQLiteStore.open(path)
        async with SQLiteStore.open(path, read_only=True) as reader:
            assert reader.read_only
            assert await reader.record_ids() == [first]
            assert await reader.load(first) is not None
            with pytest.raises(StorageError, match="read-only"):
                await reader.set_meta("x", "y")
            child.stdin.write(b"\n")
            second = await line()
            assert sorted(await reader.record_ids()) == sorted([first, second])  # no stale cache
        child.stdin.write(b"\n")
        assert await asyncio.wait_for(child.wait(), 30) == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    async with SQLiteStore.open(path) as writer:  # the lock went with the child
        assert await writer.pending_count() == 2


async def test_accounts_change_beside_a_running_writer(tmp_path: Path) -> None:
    path = tmp_path / "server.db"
    async with SQLiteStore.open(path) as writer:
        await writer.set_identity(Identity("server-1", "server"))
        await writer.enrol_replica("laptop-1", "org-1")
        async with SQLiteStore.open(path, accounts_only=True) as admin:
            await admin.add_user("org-1", "ada", "$argon2id$x")
            await admin.set_password_hash("org-1", "ada", "$argon2id$y")
            await admin.revoke_replica("laptop-1")
            p = Patient()
            with pytest.raises(StorageError, match="for accounts only"):
                await admin.write_local(p.id, p.created, conflicts=None)
            with pytest.raises(StorageError, match="for accounts only"):
                await admin.set_meta("x", "y")
            assert await admin.count_records() == 0
        # The running writer sees the changes at once (it caches no accounts).
        user = await writer.get_user("org-1", "ada")
        assert user is not None
        assert user.password_hash == "$argon2id$y"
        replica = await writer.get_replica("laptop-1")
        assert replica is not None
        assert replica.revoked
        await writer.write_local(p.id, p.created, conflicts=None)  # and writes on
    with pytest.raises(InvalidInputError):
        await SQLiteStore.open(path, read_only=True, accounts_only=True)
    with pytest.raises(DatabaseNotFoundError):
        await SQLiteStore.open(tmp_path / "missing.db", accounts_only=True)


async def test_read_only_creates_and_migrates_nothing(tmp_path: Path) -> None:
    with pytest.raises(DatabaseNotFoundError):
        await SQLiteStore.open(tmp_path / "missing.db", read_only=True)
    assert names(tmp_path) == []
    path = tmp_path / "v2.db"
    make_old_database(path, version=2)
    before = path.read_bytes()
    with pytest.raises(StorageError, match="Open it once for writing"):
        await SQLiteStore.open(path, read_only=True)
    assert path.read_bytes() == before


async def test_everything_survives_closing_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    p, q = Patient(), Patient("laptop-b")
    identity = Identity("laptop-a", "laptop", "server-1", "wss://x", "org-1")
    async with SQLiteStore.open(path) as store:
        await store.set_identity(identity)
        await store.write_local(p.id, p.created, conflicts=[conflict(p.id)])
        await store.write_local(p.id, p.edit(), conflicts=None)
        await store.write_remote([IncomingUpdate(q.id, q.created, None)], checkpoint=("pull", "9"))
        before = (await store.load(p.id), await store.pending(), await store.conflicts())
    async with SQLiteStore.open(path, create=False) as store:
        assert await store.get_identity() == identity
        assert (await store.load(p.id), await store.pending(), await store.conflicts()) == before
        assert await store.get_meta("pull") == "9"
        assert await store.has_record(q.id)
        assert await store.check() == []


async def test_durability_settings(tmp_path: Path) -> None:
    async with SQLiteStore.open(tmp_path / "replica.db") as store:

        def pragmas(raw: sqlite3.Connection) -> tuple[Any, ...]:
            return tuple(
                raw.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "synchronous", "locking_mode")
            )

        # Normal locking, so that readers can read while it runs: the writer lock
        # (a file lock beside the database) keeps other writers out.
        assert await store._run("pragmas", pragmas) == ("wal", 2, "normal")


async def test_commits_pass_the_drive_cache_on_macos_too(tmp_path: Path) -> None:
    # The bug: on macOS fsync() leaves the data in the drive's cache (F_FULLFSYNC flushes
    # it), so synchronous = FULL alone did not keep a returned edit through a power cut.
    path = tmp_path / "laptop.db"
    key = bytes(range(32))

    def pragmas(raw: sqlite3.Connection) -> tuple[Any, ...]:
        return tuple(
            raw.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("fullfsync", "checkpoint_fullfsync")
        )

    async with SQLiteStore.open(tmp_path / "plain.db") as plain:
        assert await plain._run("pragmas", pragmas) == (1, 1)
    async with (
        SQLiteStore.open(path, key=key) as writer,
        SQLiteStore.open(path, key=key, accounts_only=True) as accounts,
    ):
        assert await writer._run("pragmas", pragmas) == (1, 1)
        assert (await accounts._run("pragmas", pragmas))[0] == 1  # it writes accounts


# -------------------------------------------------- what opening and listing read


class Traced(sqlite3.Connection):
    statements: list[str] = []  # noqa: RUF012 - one list, reset by the fixture

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_trace_callback(Traced.statements.append)


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    def connection(target: Any, *, key: bytes | None, uri: bool) -> sqlite3.Connection:
        assert key is None
        return sqlite3.connect(target, uri=uri, isolation_level=None, factory=Traced)

    monkeypatch.setattr(core_module, "_connection", connection)
    Traced.statements = []
    return Traced.statements


async def test_opening_reads_no_record(tmp_path: Path, traced: list[str]) -> None:
    path = tmp_path / "replica.db"
    async with SQLiteStore.open(path) as store:
        patients = [Patient() for _ in range(300)]
        await store.write_remote([IncomingUpdate(p.id, p.created, None) for p in patients])
    traced.clear()
    async with SQLiteStore.open(path) as store:
        opened = list(traced)
        assert len(store.cache) == 0
    touching = [s for s in opened if " records" in s or " log" in s or " outbox" in s]
    assert touching == []
    assert len(opened) < 30


async def test_listing_conflicts_reads_only_the_conflict_index(
    tmp_path: Path, traced: list[str]
) -> None:
    async with SQLiteStore.open(tmp_path / "replica.db") as store:
        patients = [Patient() for _ in range(50)]
        await store.write_remote(
            [IncomingUpdate(p.id, p.created, (conflict(p.id),)) for p in patients]
        )
        traced.clear()
        assert len(await store.conflicts()) == 50
        assert await store.count_conflicts() == 50
        statements = list(traced)

        def plan(raw: sqlite3.Connection) -> list[str]:
            return [
                str(row[-1])
                for s in statements
                for row in raw.execute(f"EXPLAIN QUERY PLAN {s}", _dummy_args(s))
            ]

        details = await store._run("plan", plan)
    assert statements
    # The list reads the index; the count reads the one row the triggers keep.
    assert all(("FROM conflicts" in s or "FROM counts" in s) for s in statements)
    assert all("records" not in s for s in statements)
    assert [s for s in statements if "COUNT(" in s.upper()] == []
    assert all("records" not in d and "log" not in d for d in details)


async def test_bulk_reads_take_a_few_queries_not_one_per_record(
    tmp_path: Path, traced: list[str]
) -> None:
    async with SQLiteStore.open(tmp_path / "replica.db", cache_entries=0) as store:
        patients = [Patient() for _ in range(1200)]
        await store.write_remote(
            [IncomingUpdate(p.id, p.created, (conflict(p.id),)) for p in patients]
        )
        await store.write_remote([IncomingUpdate(p.id, p.edit(), None) for p in patients])
        await store.compact(patients[0].id)
        ids = [p.id for p in patients]
        traced.clear()
        loaded = await store.load_many(ids)
        rows = await store.conflict_rows(ids)
        statements = list(traced)
    assert len(loaded) == len(rows) == 1200
    assert revision_ids(loaded[patients[0].id], patients[0].id) == {
        r.id for r in patients[0].record.revisions()
    }
    # Three slices of ids: per slice a query of records, of their log and of their feed rows;
    # one of conflicts per slice.
    assert len([s for s in statements if s.startswith("SELECT")]) == 12
    assert len(statements) <= 16  # and a read transaction around each call


async def test_a_read_only_store_reads_in_bulk_and_sees_each_commit(tmp_path: Path) -> None:
    path = tmp_path / "server.db"
    p, q = Patient(), Patient("laptop-b")
    async with SQLiteStore.open(path) as writer:
        await writer.write_local(p.id, p.created, conflicts=[conflict(p.id)])
        async with SQLiteStore.open(path, read_only=True) as reader:
            assert await reader.load_many([p.id, q.id]) == {p.id: await writer.load(p.id)}
            assert await reader.conflict_rows([p.id, q.id]) == {p.id: (conflict(p.id),)}
            await writer.write_remote([IncomingUpdate(q.id, q.created, (conflict(q.id, 2),))])
            await writer.write_local(p.id, p.edit("birthDate", "1999"), conflicts=[])
            loaded = await reader.load_many([p.id, q.id])
            assert loaded == await writer.load_many([p.id, q.id])
            assert revision_ids(loaded[p.id], p.id) == {r.id for r in p.record.revisions()}
            assert await reader.conflict_rows([p.id, q.id]) == {q.id: (conflict(q.id, 2),)}


async def test_reading_a_record_and_the_feed_searches_indexes_and_never_sorts(
    tmp_path: Path, traced: list[str]
) -> None:
    async with SQLiteStore.open(tmp_path / "server.db", cache_entries=0) as store:
        patients = [Patient() for _ in range(20)]
        await store.write_remote([remote_of(p) for p in patients], to_feed=True)
        await store.write_remote([IncomingUpdate(p.id, p.edit(), None) for p in patients])
        await store.write_remote(
            [IncomingUpdate(p.id, p.edit(), None) for p in patients[:5]], to_feed=True
        )
        traced.clear()
        await store.load(patients[0].id)
        await store.load_many([p.id for p in patients])
        await store.feed_since(3, limit=10, organisation="org-1")
        await store.feed_since(3, limit=10)
        await store.compact(patients[1].id)
        statements = [s for s in traced if s.startswith(("SELECT", "DELETE"))]

        def plan(raw: sqlite3.Connection) -> list[str]:
            return [
                str(row[-1])
                for s in statements
                for row in raw.execute(f"EXPLAIN QUERY PLAN {s}", _dummy_args(s))
            ]

        details = await store._run("plan", plan)
    assert any("FROM feed" in s and "rk" in s for s in statements)
    assert any("FROM log" in s for s in statements)
    scans = [d for d in details if d.startswith("SCAN") and "sqlite_sequence" not in d]
    assert scans == []
    assert not [d for d in details if "TEMP B-TREE" in d]


def _dummy_args(statement: str) -> tuple[object, ...]:
    return tuple("" for _ in range(statement.count("?")))


# ------------------------------------------------------------- cache and damage


async def test_the_record_cache_stays_within_its_bounds(tmp_path: Path) -> None:
    async with SQLiteStore.open(tmp_path / "replica.db", cache_entries=8) as store:
        patients = [Patient() for _ in range(50)]
        for p in patients:
            await store.write_local(p.id, p.created, conflicts=None)
            await store.write_local(p.id, p.edit("name", p.id), conflicts=None)
        assert len(store.cache) <= 8
        for p in patients:
            loaded = await store.load(p.id)
            assert loaded is not None
            assert revision_ids(loaded, p.id) == {r.id for r in p.record.revisions()}
        assert len(store.cache) <= 8
        assert await store.check() == []
    async with SQLiteStore.open(tmp_path / "small.db", cache_bytes=64) as store:
        p = Patient()
        await store.write_local(p.id, p.created, conflicts=None)
        assert store.cache.size_bytes <= 64
        assert await store.load(p.id) is not None


async def test_a_damaged_file_gives_caresync_errors_only(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    async with SQLiteStore.open(path) as store:
        patients = [Patient() for _ in range(200)]
        for p in patients:
            p.edit("name", "x" * 500)
        await store.write_remote(
            [IncomingUpdate(p.id, p.record.update_since(), None) for p in patients]
        )
    data = bytearray(path.read_bytes())
    assert len(data) > 8 * 4096
    for offset in range(4 * 4096, len(data) - 4096, 4096 * 3):
        data[offset + 100 : offset + 400] = b"\xa5" * 300
    path.write_bytes(bytes(data))
    # Opening may refuse the file, or open it and find the damage: either way with
    # caresync's errors, never sqlite3's.
    try:
        async with SQLiteStore.open(path) as store:
            assert await store.check()
            for p in patients:
                await store.load(p.id)
    except CaresyncError:
        return


def test_a_new_database_never_replaces_a_file_that_appeared_meanwhile(tmp_path: Path) -> None:
    finished = tmp_path / ".replica.db.x.creating"
    finished.write_bytes(b"a finished database")
    theirs = tmp_path / "replica.db"
    theirs.write_bytes(b"a file someone made in the meantime")
    before = digest(theirs)
    sqlite_module._link_into_place(finished, theirs)
    assert digest(theirs) == before


async def test_version_9_learns_who_logged_in_on_each_replica_from_before(
    tmp_path: Path,
) -> None:
    """Enrolments and sessions written before version 9 become logins on their replicas."""
    path = tmp_path / "v8.db"
    make_old_database(path, version=8)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executemany(
        "INSERT INTO replicas (replica_id, organisation, enrolled_by, enrolled_ms)"
        " VALUES (?, 'org-1', ?, 5)",
        [("laptop-1", "ada"), ("laptop-2", None)],
    )
    conn.executemany(
        "INSERT INTO sessions (token_hash, organisation, username, replica_id, created_ms,"
        " expires_ms) VALUES (?, 'org-1', ?, ?, ?, 99)",
        [("h-1", "bob", "laptop-1", 7), ("h-2", "bob", "laptop-1", 6), ("h-3", "cy", None, 8)],
    )
    conn.execute(
        "INSERT INTO users (organisation, username, password_hash, created_ms)"
        " VALUES ('org-1', 'ada', '$argon2id$x', 1)"
    )
    conn.close()
    async with SQLiteStore.open(path) as store:
        assert store.migrated_from == 8
        assert await store.replica_accounts(["laptop-1", "laptop-2"]) == {
            "laptop-1": frozenset({"ada", "bob"})
        }
        user = await store.get_user("org-1", "ada")
        assert user is not None
        assert user.display_name is None
        assert user.shown_as == "ada"


def _damage_the_log_root(path: Path) -> None:
    """Overwrite the root page of the records' log, as a bad sector would."""
    with sqlite3.connect(path) as conn:
        [(root,)] = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'log'")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(path.read_bytes())
    data[(root - 1) * page : root * page] = b"\xa5" * page
    path.write_bytes(bytes(data))


async def test_quick_check_false_skips_only_the_integrity_check_at_open(tmp_path: Path) -> None:
    """The check is what finds the damage: skipped, the same file opens as sound (the
    simulation skips it only when reopening a file it checked and closed itself)."""
    path = tmp_path / "laptop.db"
    async with SQLiteStore.open(path) as store:
        await store.write_remote(
            [IncomingUpdate(f"rec-{n}", _small_update(n), (), None) for n in range(40)]
        )
    _damage_the_log_root(path)
    async with SQLiteStore.open(path) as checked:
        assert checked.damaged is not None
    async with SQLiteStore.open(path, quick_check=False) as unchecked:
        assert unchecked.damaged is None


def _small_update(n: int) -> bytes:
    doc = Doc()
    doc["fields"] = fields = Map()
    fields["note"] = f"patient {n} " + "x" * 2000
    return doc.get_update()
