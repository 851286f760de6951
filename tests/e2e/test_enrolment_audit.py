"""The server's audit trail says who enrolled which laptop, which enrolment replaced a
secret, and who revoked a laptop (actions ``enrol`` and ``revoke``): before, only the
replicas table kept the first enrolment, and a secret given again or a revocation left
no entry in the chained trail.

Real parts: a server on an SQLite file on 127.0.0.1, laptops on SQLite files, the
command line run in this process.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.cli.clitools import run_main
from tests.e2e.enrol_helpers import EnrolCuttingServer
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server

from caresync import ConnectionLostError
from caresync.audit import verify_trail
from caresync.replica import Replica
from caresync.server import SyncServer


async def _trail(server: SyncServer, action: str) -> list[tuple[str, str | None]]:
    entries = await server.store.audit_entries(
        replica_id=server.server_id, after_seq=0, limit=10_000
    )
    return [(e.actor, e.detail) for e in entries if e.action == action]


async def test_enrolments_and_a_secret_given_again_are_on_the_trail(tmp_path: Path) -> None:
    server = await start_server(tmp_path, server_class=EnrolCuttingServer)
    assert isinstance(server, EnrolCuttingServer)
    first = await enrolled(tmp_path, server, "first", user="dr.b")
    late = await Replica.open(tmp_path / "late.db")
    try:
        server.cut_next_enrol = True
        with pytest.raises(ConnectionLostError):
            await late.enrol(
                server.url, username="dr.a", password=PASSWORD, organisation="clinic-a"
            )
        await late.enrol(server.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
        assert await _trail(server, "enrol") == [
            ("dr.b", first.replica_id),
            ("dr.a", late.replica_id),
            ("dr.a", f"{late.replica_id} again: a new secret"),
        ]
        entries = await server.store.audit_entries(
            replica_id=server.server_id, after_seq=0, limit=10_000
        )
        assert verify_trail(entries).ok
    finally:
        await first.close()
        await late.close()
        await server.close()


async def test_a_revocation_is_on_the_trail_by_whoever_revoked(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    one = await enrolled(tmp_path, server, "one")
    two = await enrolled(tmp_path, server, "two")
    try:
        await server.revoke(one.replica_id, by="dr.admin")
        assert await _trail(server, "revoke") == [("dr.admin", one.replica_id)]
        await server.close()
        result = await asyncio.to_thread(
            run_main, "replica", "revoke", "--db", tmp_path / "server.db", two.replica_id, "--json"
        )
        assert result.code == 0, result.stderr
        server = await SyncServer.open(tmp_path / "server.db")
        [by_api, by_cli] = await _trail(server, "revoke")
        assert by_api == ("dr.admin", one.replica_id)
        assert by_cli[0].startswith("os:")
        assert by_cli[1] == two.replica_id
    finally:
        await one.close()
        await two.close()
        await server.close()
