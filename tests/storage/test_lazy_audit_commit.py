"""A login's audit entry committed without waiting for the disk, in the SQLite store.

``append_audit(durable=False)`` commits under ``synchronous = NORMAL`` (in WAL mode: no
sync at the commit) and puts ``FULL`` back; the next commit that writes syncs the whole
write-ahead log, and ``make_durable`` writes one row so that it does, only when a lazy
commit waits. What every store does with it is in the conformance suite.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.sqlite_trace import traced, write_transactions

from caresync.audit import AuditEvent
from caresync.storage import Identity, SQLiteStore

LOGIN = AuditEvent("ada", "login", None, "laptop-7")


async def _server(path: Path) -> SQLiteStore:
    store = await SQLiteStore.open(path)
    await store.set_identity(Identity("server-1", "server"))
    await store.enrol_replica("laptop-7", "org-1", enrolled_by="ada")
    return store


async def _synchronous(store: SQLiteStore) -> int:
    return int(
        await store._run("reading", lambda raw: raw.execute("PRAGMA synchronous").fetchone()[0])
    )


async def test_a_lazy_append_commits_without_a_sync_and_puts_full_back(tmp_path: Path) -> None:
    store = await _server(tmp_path / "server.db")
    try:
        async with traced(store) as statements:
            await store.append_audit([LOGIN], seen=("laptop-7", 5), durable=False)
        said = [" ".join(s.split()).upper() for s in statements]
        lazy, begin, full = (
            said.index("PRAGMA SYNCHRONOUS = NORMAL"),
            said.index("BEGIN IMMEDIATE"),
            said.index("PRAGMA SYNCHRONOUS = FULL"),
        )
        assert lazy < begin < said.index("COMMIT") < full
        assert await _synchronous(store) == 2  # FULL: every other commit syncs, as before
        async with traced(store) as statements:
            await store.append_audit([LOGIN])  # durable: no change of setting
        assert not any("SYNCHRONOUS" in s.upper() for s in statements)
    finally:
        await store.close()


async def test_make_durable_writes_once_and_only_while_a_lazy_commit_waits(tmp_path: Path) -> None:
    store = await _server(tmp_path / "server.db")
    try:
        async with traced(store) as statements:
            await store.make_durable()  # nothing lazy yet
        assert write_transactions(statements) == []
        await store.append_audit([LOGIN], durable=False)
        async with traced(store) as statements:
            await store.make_durable()
            await store.make_durable()  # the first synced it: nothing left
        assert len(write_transactions(statements)) == 1
        # A commit that writes syncs the log, lazy commits before it included.
        await store.append_audit([LOGIN], durable=False)
        await store.append_audit([LOGIN])
        async with traced(store) as statements:
            await store.make_durable()
        assert write_transactions(statements) == []
        assert await store.check() == []
        assert len(await store.audit_entries()) == 3
    finally:
        await store.close()


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from caresync.audit import AuditEvent
    from caresync.storage import Identity, SQLiteStore

    async def main():
        store = await SQLiteStore.open(sys.argv[1])
        await store.set_identity(Identity("server-1", "server"))
        await store.append_audit([AuditEvent("ada", "login", None, "x")], durable=False)
        print("appended", flush=True)
        sys.stdin.readline()  # killed while waiting here, the store still open

    asyncio.run(main())
    """
)


async def test_a_lazy_commit_is_kept_when_the_server_process_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "server.db"
    child = subprocess.Popen(  # noqa: ASYNC220 - a child to kill, not a wait in the loop
        [sys.executable, "-c", _CHILD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "appended"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    async with SQLiteStore.open(path) as store:
        [entry] = await store.audit_entries()
        assert (entry.actor, entry.action, entry.detail) == ("ada", "login", "x")
        assert await store.check() == []
