"""What a laptop takes from a server that has not proved who it is: nothing lasting.

A refusal that arrives before the server's proof (right after Welcome) could come
from anyone who answers at the server's address. A "revoked" refusal locked the
laptop for good (no sync ever again, its unsynced work stuck on it), from an
impostor that only echoed the server id. The real server proves itself first and
then refuses; an unproven refusal is an error of this connection only.
Real parts: servers on 127.0.0.1 and SQLite files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server

from caresync.exceptions import ReplicaRevokedError, WrongServerError
from caresync.gate import Refused
from caresync.protocol import ErrorCode, Hello
from caresync.replica import Replica, ReplicaState
from caresync.server import SyncServer
from caresync.storage import SQLiteStore


class _Impostor(SyncServer):
    """A real server under the borrowed id and its own key, that calls every replica
    revoked: at once, after Welcome (``at_once``), or after a proof with its own key."""

    at_once: bool

    async def _on_event(self, conn: Any, event: object) -> None:
        if isinstance(event, Hello) and self.at_once:
            conn.protocol.reject(ErrorCode.REVOKED, f"replica {event.replica_id} was revoked")
            return
        await super()._on_event(conn, event)


async def _impostor(tmp_path: Path, server_id: str, at_once: bool) -> SyncServer:
    impostor = _Impostor(await SQLiteStore.open(tmp_path / "impostor.db"), server_id)
    impostor.at_once = at_once

    async def revoked(hello: Hello) -> Refused:
        return Refused(ErrorCode.REVOKED, f"replica {hello.replica_id} was revoked")

    impostor.gate.check_hello = revoked  # type: ignore[method-assign]
    await impostor.serve("127.0.0.1", 0)
    return impostor


@pytest.mark.parametrize(
    ("at_once", "why"),
    [(True, "before it proved.*have it upgraded"), (False, "not the key .* pinned")],
)
async def test_an_impostors_revocation_does_not_lock_the_laptop(
    tmp_path: Path, at_once: bool, why: str
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    impostor = await _impostor(tmp_path, server.server_id, at_once)
    try:
        record = await laptop.create_record()
        await laptop.set(record, "name", "Awa Diop", author="dr.a")
        with pytest.raises(WrongServerError, match=why):
            await laptop.sync(url=impostor.url)
        assert not laptop.locked
        assert (await laptop.status()).state is not ReplicaState.LOCKED
        await laptop.close()
        laptop = await Replica.open(tmp_path / "laptop.db")  # nothing lasting on disk
        assert not laptop.locked
        assert (await laptop.status()).pending == 2
        await laptop.sync()  # the real server takes its work
        assert (await laptop.status()).pending == 0
    finally:
        await laptop.close()
        await impostor.close()
        await server.close()


@pytest.mark.parametrize("password_login", [False, True])
async def test_the_real_server_proves_itself_then_the_revoked_laptop_locks(
    tmp_path: Path, password_login: bool
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        await laptop.create_record()
        await laptop.sync()  # a sync done: the next sends its proof request with Hello
        await laptop.create_record()  # unsynced, and kept
        await server.revoke(laptop.replica_id)
        login = {"username": "dr.a", "password": PASSWORD} if password_login else {}
        with pytest.raises(ReplicaRevokedError, match="revoked"):
            await laptop.sync(**login)  # type: ignore[arg-type]
        assert laptop.locked
        await laptop.close()
        laptop = await Replica.open(tmp_path / "laptop.db")
        assert laptop.locked
        assert (await laptop.status()).pending == 1
    finally:
        await laptop.close()
        await server.close()
