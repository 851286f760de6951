"""What the tests of a server restored from an older backup share: a server on an SQLite
file served on 127.0.0.1, its backup by ``caresync backup`` (SQLite's online backup, run
in this process), and the restore as docs/operations.md does it (the server stopped, the
side files moved away, the file replaced)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from tests.cli.clitools import run_main

from caresync.replica import Replica
from caresync.server import SyncServer

__all__ = ["back_up", "port_of", "put_back", "serve", "values"]


async def serve(path: Path, port: int = 0) -> SyncServer:
    """A server on the database at ``path``, listening on 127.0.0.1 (``port``: 0 for a
    free one, or the one a restored server takes again)."""
    server = await SyncServer.open(path)
    await server.serve("127.0.0.1", port)
    return server


def port_of(server: SyncServer) -> int:
    """The port a running server listens on."""
    return int(server.url.rsplit(":", 1)[1])


async def back_up(source: Path, target: Path) -> None:
    """``caresync backup`` of the database at ``source`` (it may be serving) to ``target``."""
    # The command line in this process (on a thread: it runs its own event loop).
    result = await asyncio.to_thread(run_main, "backup", "--db", source, "--out", target, "--json")
    assert result.code == 0, result.stderr


async def put_back(saved: Path, path: Path) -> None:
    """Put the backup ``saved`` in place of the stopped server's database at ``path``."""
    for suffix in ("-wal", "-shm"):
        await asyncio.to_thread(Path(f"{path}{suffix}").unlink, missing_ok=True)
    await asyncio.to_thread(shutil.copyfile, saved, path)


async def values(replica: Replica, record_id: str, *paths: str) -> dict[str, object]:
    """The values of ``paths`` in a record, as ``replica`` holds it (an unaudited read)."""
    record = await replica.record(record_id, audited=False)
    return {path: record.value(path) for path in paths}
