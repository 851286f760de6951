"""The review of the server's ``enrol`` and ``revoke`` audit entries: a revocation is
recorded once (revoking a revoked laptop again changes nothing and writes nothing); the
two actions are the server's own, so a laptop's chain that holds one (a hostile or broken
laptop claiming an enrolment or revocation) is refused, and a laptop's application cannot
write one; ``audit verify`` and ``audit export`` (FHIR) take a trail that holds them.

Real parts: a server on an SQLite file on 127.0.0.1, laptops on SQLite files, the
command line run in this process.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from tests.cli.clitools import run_main
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server
from tests.postgres import fresh_schema

from caresync.audit import AuditEvent
from caresync.exceptions import InvalidInputError
from caresync.server import SyncServer


async def _actions(server: SyncServer, replica_id: str, action: str) -> list[str | None]:
    entries = await server.store.audit_entries(replica_id=replica_id, after_seq=0, limit=10_000)
    return [e.detail for e in entries if e.action == action]


async def test_a_laptop_revoked_twice_is_on_the_trail_once(tmp_path: Path) -> None:
    """Before: ``SyncServer.revoke`` wrote a ``revoke`` entry at every call, a laptop
    revoked already included (the command line wrote one only the first time)."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        await server.revoke(laptop.replica_id, by="dr.admin")
        await server.revoke(laptop.replica_id, by="dr.other")
        assert await _actions(server, server.server_id, "revoke") == [laptop.replica_id]
        await server.close()
        again = await asyncio.to_thread(
            run_main, "replica", "revoke", "--db", tmp_path / "server.db", laptop.replica_id,
            "--json",
        )  # fmt: skip
        assert again.code == 0, again.stderr
        assert again.json()["already"] is True
        server = await SyncServer.open(tmp_path / "server.db")
        assert await _actions(server, server.server_id, "revoke") == [laptop.replica_id]
    finally:
        await laptop.close()
        await server.close()


async def test_a_laptops_chain_may_not_claim_an_enrolment_or_revocation(tmp_path: Path) -> None:
    """``enrol`` and ``revoke`` are what the server did: a laptop's chain holding one is
    refused whole (its records still sync), and ``Replica.audit`` refuses to write one."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        for action in ("enrol", "revoke"):
            with pytest.raises(InvalidInputError, match="the server's own"):
                await laptop.audit(action, None, "laptop-x")  # type: ignore[arg-type]
        # A hostile laptop writes its store directly.
        await laptop.store.append_audit([AuditEvent("dr.a", "revoke", None, "laptop-x")])
        record_id = await laptop.create_record()
        await laptop.set(record_id, "name", "Awa")
        await laptop.sync()
        assert await server.store.has_record(record_id)  # the records' sync went on
        assert await _actions(server, laptop.replica_id, "revoke") == []
        status = await laptop.status()
        assert status.audit_refused is not None
        assert "revoke" in status.audit_refused
    finally:
        await laptop.close()
        await server.close()


async def test_audit_verify_and_export_take_enrol_and_revoke(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    one = await enrolled(tmp_path, server, "one")
    try:
        await server.revoke(one.replica_id, by="dr.admin")
    finally:
        await one.close()
        await server.close()
    db = tmp_path / "server.db"
    verified = await asyncio.to_thread(run_main, "audit", "verify", "--db", db, "--json")
    assert verified.code == 0, verified.stderr
    out = tmp_path / "trail.ndjson"
    exported = await asyncio.to_thread(run_main, "audit", "export", "--db", db, "--out", out)
    assert exported.code == 0, exported.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    network = [e for e in events if e["type"]["code"] == "110108"]
    assert [e["type"]["display"] for e in network] == ["Network Entry", "Network Entry"]
    assert {e["outcome"] for e in network} == {"0"}
    again = await asyncio.to_thread(run_main, "audit", "verify", "--file", out, "--json")
    assert again.code == 0, again.stderr


async def test_on_postgresql_enrol_and_revoke_are_once_and_the_servers_own(
    tmp_path: Path, postgres_database: str
) -> None:
    """The same on a PostgreSQL server store: one ``enrol``, one ``revoke`` however many
    times it is revoked, and a laptop's claimed ``revoke`` refused."""
    async with fresh_schema(postgres_database) as url:
        server = await SyncServer.open(url)
        await server.add_user("clinic-a", "dr.a", PASSWORD)
        await server.serve("127.0.0.1", 0)
        laptop = await enrolled(tmp_path, server, "laptop")
        other = await enrolled(tmp_path, server, "other")
        try:
            await laptop.store.append_audit([AuditEvent("dr.a", "revoke", None, "laptop-x")])
            await laptop.sync()
            assert await _actions(server, laptop.replica_id, "revoke") == []
            await server.revoke(other.replica_id, by="dr.admin")
            await server.revoke(other.replica_id, by="dr.admin")
            assert await _actions(server, server.server_id, "revoke") == [other.replica_id]
            assert await _actions(server, server.server_id, "enrol") == [
                laptop.replica_id,
                other.replica_id,
            ]
        finally:
            await laptop.close()
            await other.close()
            await server.close()
