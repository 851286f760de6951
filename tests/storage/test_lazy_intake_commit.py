"""A laptop's intake committed without waiting for the disk, in the SQLite store.

``write_remote(durable=False)`` and ``write_copy(durable=False)`` commit under
``synchronous = NORMAL`` and put ``FULL`` back; the batch and its checkpoint are one
transaction, kept whole through a killed process; the next durable commit that writes
syncs the whole write-ahead log, so ``make_durable`` then has nothing left to do.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.sqlite_trace import traced, write_transactions

from caresync.storage import Identity, SQLiteStore
from caresync.testing.store_data import Patient
from caresync.testing.store_suite import remote


async def _laptop(path: Path) -> SQLiteStore:
    store = await SQLiteStore.open(path)
    await store.set_identity(Identity("laptop-1", "laptop"))
    return store


async def _synchronous(store: SQLiteStore) -> int:
    return int(
        await store._run("reading", lambda raw: raw.execute("PRAGMA synchronous").fetchone()[0])
    )


async def _make_durable_writes(store: SQLiteStore) -> bool:
    async with traced(store) as statements:
        await store.make_durable()
    return write_transactions(statements) != []


async def test_a_lazy_pull_batch_commits_under_normal_and_puts_full_back(tmp_path: Path) -> None:
    async with await _laptop(tmp_path / "laptop.db") as store:
        a = Patient("laptop-b")
        async with traced(store) as statements:
            await store.write_remote(
                [remote(a, a.created)], checkpoint=("pull", "1"), durable=False
            )
        said = [" ".join(s.split()).upper() for s in statements]
        assert said.index("PRAGMA SYNCHRONOUS = NORMAL") < said.index("COMMIT")
        assert said[-1] == "PRAGMA SYNCHRONOUS = FULL"
        assert await _synchronous(store) == 2  # FULL again for what follows
        assert await _make_durable_writes(store)  # the lazy batch waited for it
        assert not await _make_durable_writes(store)


async def test_a_durable_commit_after_a_lazy_batch_leaves_make_durable_nothing(
    tmp_path: Path,
) -> None:
    async with await _laptop(tmp_path / "laptop.db") as store:
        a, b = Patient("laptop-b"), Patient("laptop-c")
        await store.write_remote([remote(a, a.created)], checkpoint=("pull", "1"), durable=False)
        await store.write_remote([remote(b, b.created)], checkpoint=("pull", "2"))  # synced
        assert not await _make_durable_writes(store)


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from caresync.storage import Identity, SQLiteStore
    from caresync.testing.store_data import Patient
    from caresync.testing.store_suite import remote

    async def main():
        store = await SQLiteStore.open(sys.argv[1])
        await store.set_identity(Identity("laptop-1", "laptop"))
        a = Patient("laptop-b", record_id="rec-a")
        await store.write_remote([remote(a, a.created)], checkpoint=("pull", "7"), durable=False)
        print("committed", flush=True)
        sys.stdin.readline()  # killed while waiting here, the store still open

    asyncio.run(main())
    """
)


async def test_a_lazy_batch_and_its_checkpoint_survive_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "laptop.db"
    child = subprocess.Popen(  # noqa: ASYNC220 - a child to kill, not a wait in the loop
        [sys.executable, "-c", _CHILD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "committed"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    async with SQLiteStore.open(path) as store:
        assert await store.get_meta("pull") == "7"
        assert await store.has_record("rec-a")
        assert await store.check() == []
