"""Which caresync a laptop runs: the server says the newest it knows and the oldest it
accepts at each login; a laptop records both (``status``), and one below the minimum is
refused before anything moves, its outbox untouched, with a message that says so.

Real parts: a server on 127.0.0.1, SQLite files, and `caresync serve` for the CLI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.cli.clitools import ServerProcess, cli, inproc, run_main
from tests.e2e.live_helpers import enrolled, start_server

from caresync.cli.errors import ExitCode
from caresync.exceptions import ClientTooOldError
from caresync.protocol import ClientProtocol, Error, ServerProof, Welcome
from caresync.transport import connect_websocket
from caresync.versions import CLIENT_VERSION, is_older


def test_versions_compare_as_releases() -> None:
    assert is_older("0.9.2", "0.10.0")
    assert is_older("1.0.0rc1", "1.0.0")
    assert not is_older("1.0.0", "1.0.0")
    assert is_older(None, "0.0.1")  # a client too old to say its version
    assert is_older("not a version", "0.0.1")


async def test_a_laptop_learns_of_a_newer_caresync_and_is_refused_below_the_minimum(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        status = await laptop.status()
        assert status.client_version == CLIENT_VERSION
        assert status.client_newest == server.client_newest_version == CLIENT_VERSION
        assert status.client_min is None
        assert not status.update_available
        assert not status.update_required

        server.client_newest_version = "99.0"  # a newer caresync is out; not required yet
        await laptop.sync()
        status = await laptop.status()
        assert status.update_available
        assert not status.update_required

        record = await laptop.create_record()
        await laptop.set(record, "birthDate", "1990-01-01")
        pending = (await laptop.status()).pending
        server.client_min_version = "99.0"
        with pytest.raises(ClientTooOldError, match=r"accepts caresync 99\.0 or newer"):
            await laptop.sync()
        status = await laptop.status()
        assert status.pending == pending  # nothing was sent, nothing was dropped
        assert status.update_required
        assert status.client_min == "99.0"
        assert await server.store.load(record) is None

        server.client_min_version = None  # updated (or the minimum lowered): it syncs
        assert (await laptop.sync()).uploaded == pending
    finally:
        await laptop.close()
        await server.close()


async def test_a_client_too_old_to_say_its_version_is_refused_when_a_minimum_is_set(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        server.client_min_version = CLIENT_VERSION
        await laptop.sync()  # says its version, which is the minimum: accepted
        identity = laptop.identity
        old = ClientProtocol(  # protocol version 6 carries no client version
            replica_id=identity.replica_id,
            server_id=identity.server_id,
            organisation=identity.organisation,
            protocol_versions=(6,),
        )
        channel = await connect_websocket(server.url)
        try:
            old.send_hello()
            for frame in old.data_to_send():
                await channel.send(frame)
            old.receive_data(await channel.recv())
            assert any(isinstance(e, Welcome) for e in old.events_received())
            old.prove_server(os.urandom(32))
            for frame in old.data_to_send():
                await channel.send(frame)
            old.receive_data(await channel.recv())
            assert any(isinstance(e, ServerProof) for e in old.events_received())
            old.confirm_server()
            token = await laptop.store.get_meta("session.token")
            assert token is not None
            old.resume_session(token, laptop._secret)
            for frame in old.data_to_send():
                await channel.send(frame)
            with pytest.raises(ClientTooOldError, match="too old to say its version"):
                old.receive_data(await channel.recv())
            assert isinstance(old.peer_error, Error)
        finally:
            await channel.close()
    finally:
        await laptop.close()
        await server.close()


def test_serve_client_min_version_through_the_command_line(tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    bad = cli("serve", "--db", db, "--client-min-version", "not-a-version")
    assert bad.code == ExitCode.USAGE
    assert "--client-min-version must be a version" in bad.stderr
    run_main("user", "add", "--db", db, "--org", "clinic-a", "--username", "dr.a").ok()
    laptop = tmp_path / "laptop.db"
    first = ServerProcess(db)
    try:
        inproc(
            "enrol --db {db} --server {url} --org clinic-a --username dr.a --json",
            db=laptop,
            url=first.url,
        ).ok()
    finally:
        first.stop()
    strict = ServerProcess(db, "--client-min-version", "99.0")
    try:
        refused = inproc("sync --db {db} --server {url} --json", db=laptop, url=strict.url)
        assert refused.code == ExitCode.REFUSED
        assert "update caresync" in refused.json()["error"]["message"].lower()
    finally:
        strict.stop()
    status = inproc("status --db {db} --json", db=laptop).ok().json()
    assert status["update_required"] is True
    assert status["update_available"] is True
    assert status["client_min"] == "99.0"
    assert status["client_version"] == CLIENT_VERSION
