"""The server session a laptop keeps is resumed only by its own account.

A sync without a password resumes the session of the last online login, and that session
acts on the server as its account. Before, whoever opened an encrypted laptop with their
own password (or logged in offline there) synced with it: a colleague whose account was
disabled on the server since, or whose password was changed there (both still open the
laptop offline until their next online login), pulled the clinic's newest records as the
colleague who last logged in online, and the server's trail named that colleague.

Real parts: a server on 127.0.0.1 and an encrypted SQLite laptop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.e2e.live_helpers import LIMIT_S, PASSWORD, enrolled, live, start_server

from caresync.exceptions import AuthenticationError
from caresync.replica import Replica
from caresync.server import SyncServer
from caresync.storage import KdfParams

CHEAP = KdfParams(time_cost=1, memory_kib=8, parallelism=1)
NURSE_PASSWORD = "nurse's own password"
NOT_HERS = r"session kept on this laptop is dr\.a's, and nurse\.c is at it"


async def _server_logins(server: SyncServer) -> list[str]:
    entries = await server.store.audit_entries(replica_id=server.server_id)
    return [e.actor for e in entries if e.action == "login"]


async def test_a_colleague_does_not_sync_with_the_session_kept_here(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    await server.add_user("clinic-a", "nurse.c", NURSE_PASSWORD)
    db = tmp_path / "laptop.db"
    laptop = await enrolled(
        tmp_path, server, "laptop", username="dr.a", password=PASSWORD, kdf=CHEAP
    )
    try:
        assert laptop.encrypted
        await laptop.sync(username="nurse.c", password=NURSE_PASSWORD, organisation="clinic-a")
        await laptop.sync(username="dr.a", password=PASSWORD, organisation="clinic-a")
        await laptop.close()  # the session kept is dr.a's
        # nurse.c leaves the clinic: her password still opens the laptop offline.
        await server.disable_user("clinic-a", "nurse.c")
        logins = await _server_logins(server)

        laptop = await Replica.open(db, password=NURSE_PASSWORD, kdf=CHEAP)
        async with asyncio.timeout(LIMIT_S):
            with pytest.raises(AuthenticationError, match=NOT_HERS):
                await laptop.sync()
            # Logged in offline as herself: the session is still dr.a's.
            await laptop.login_offline("nurse.c", NURSE_PASSWORD)
            with pytest.raises(AuthenticationError, match=NOT_HERS):
                await laptop.sync(pull=False)
            async with live(laptop) as run:  # nor does live mode resume it
                error = await run.outcome()
            assert isinstance(error, AuthenticationError)
            assert NOT_HERS.replace("\\", "") in str(error)
        assert await _server_logins(server) == logins  # the server saw no login at all
        await laptop.close()

        # dr.a's own password: his session resumes, as before.
        laptop = await Replica.open(db, username="dr.a", password=PASSWORD, kdf=CHEAP)
        async with asyncio.timeout(LIMIT_S):
            await laptop.sync()
        assert await _server_logins(server) == [*logins, "dr.a"]
    finally:
        await laptop.close()
        await server.close()
