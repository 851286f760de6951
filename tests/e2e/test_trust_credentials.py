"""A replica is a credential; a session is bound to one account and one replica.

Each test is one of the attacks the trust-nothing issue reproduced, played
against a real server on 127.0.0.1 with real SQLite files: an insider acting
as a colleague's laptop, a stolen session token, and what a token may no
longer do once its replica is revoked, its password changed or its account
disabled.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from tests.e2e.hostile import Hostile
from tests.e2e.live_helpers import (
    LIMIT_S,
    PASSWORD,
    enrolled,
    live,
    raw_session,
    start_server,
)

from caresync.credentials import sha256_hex
from caresync.exceptions import AuthenticationError, SyncRefusedError
from caresync.protocol import Authenticated, PushAck
from caresync.records import Record
from caresync.replica import Replica, ReplicaState
from caresync.server import SyncServer


async def test_an_insider_cannot_push_as_a_colleagues_laptop(tmp_path: Path) -> None:
    """Why 1: dr.b names dr.a's replica in Hello and logs in with dr.b's own password."""
    server = await start_server(tmp_path)
    victim = await enrolled(tmp_path, server, "victim", user="dr.a")
    other = await enrolled(tmp_path, server, "other", user="dr.a")
    try:
        record = await victim.create_record()
        await victim.sync()
        for secret in (None, b"\x00" * 32):
            insider = await Hostile.connect(
                server.url,
                replica_id=victim.replica_id,
                server_id=server.server_id,
                organisation="clinic-a",
            )
            insider.protocol.authenticate("dr.b", PASSWORD, "clinic-a", secret)
            refused = await insider.refused()
            assert isinstance(refused, AuthenticationError)
            assert "did not prove its secret" in str(refused)
            await insider.close()
        # The victim's later edits are all stored and reach everyone.
        allergy = await victim.add_entry(
            record,
            "allergies",
            {"substance": "penicillin", "reaction": "anaphylaxis"},
            author="dr.a",
        )
        report = await victim.sync()
        assert report.uploaded == 1  # the new entry, acknowledged because stored
        assert (await victim.status()).pending == 0
        await other.sync()
        view = await other.record(record)
        assert view.value(f"allergies/{allergy}/reaction") == "anaphylaxis"
    finally:
        await victim.close()
        await other.close()
        await server.close()


async def test_no_number_a_replica_claims_makes_the_server_skip_its_edits(
    tmp_path: Path,
) -> None:
    """Why 1, the other half: a push numbered 2**52 does not swallow later smaller numbers."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    other = await enrolled(tmp_path, server, "other")
    try:
        record = await laptop.create_record()
        await laptop.sync()
        async with raw_session(server, laptop) as session:
            stored = await laptop.store.load(record)
            assert stored is not None
            sneaky = Record.from_update(record, stored, replica=laptop.replica_id)
            update = _edit(sneaky, "note", "pushed with a huge number")
            assert isinstance(await session.push(2**52, record, update), PushAck)
        await laptop.set(record, "birthDate", "1990-01-02", author="dr.a")
        await laptop.sync()
        await other.sync()
        fields = await other.fields(record)
        assert fields["birthDate"].value == "1990-01-02"  # stored although its seq is small
        assert fields["note"].value == "pushed with a huge number"
    finally:
        await laptop.close()
        await other.close()
        await server.close()


def _edit(record: Record, path: str, value: str) -> bytes:
    before = record.state_vector()
    record.set(path, value, author="dr.a")
    return record.update_since(before)


async def test_session_tokens_are_hashed_at_rest_and_never_extended(tmp_path: Path) -> None:
    """Why 6: the server keeps only a hash; resuming gives the same absolute expiry."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        token = await laptop.store.get_meta("session.token")
        assert token
        await server.store.close()  # flush the WAL into the file, then read every byte
        raw = await asyncio.to_thread(_bytes_of_files, tmp_path, "server.db")
        assert token.encode() not in raw
        assert sha256_hex(token).encode() in raw
        server = await SyncServer.open(tmp_path / "server.db")  # the same database, reopened
        await server.serve("127.0.0.1", 0)
        secret = laptop._secret
        first = await _resume(server, laptop, token, secret)
        second = await _resume(server, laptop, token, secret)
        assert first.expires_at_ms == second.expires_at_ms  # a resume never extends it
        assert first.session_token == token
    finally:
        await laptop.close()
        await server.close()


def _bytes_of_files(folder: Path, prefix: str) -> bytes:
    """Every byte of every file whose name starts with ``prefix`` (database, WAL, ...)."""
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith(prefix))


async def _resume(
    server: SyncServer, laptop: Replica, token: str, secret: bytes | None
) -> Authenticated:
    identity = laptop.identity
    client = await Hostile.connect(
        server.url,
        replica_id=identity.replica_id,
        server_id=identity.server_id,
        organisation=identity.organisation,
    )
    try:
        return await client.resume(token, secret)
    finally:
        await client.close()


async def test_a_stolen_token_is_useless_without_the_laptops_secret(tmp_path: Path) -> None:
    """Why 6: a thief with the token (and the replica id) neither resumes nor enrols."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        token = await laptop.store.get_meta("session.token")
        assert token
        identity = laptop.identity
        thief = await Hostile.connect(
            server.url,
            replica_id=identity.replica_id,
            server_id=identity.server_id,
            organisation=identity.organisation,
        )
        thief.protocol.resume_session(token, b"\x01" * 32)
        assert isinstance(await thief.refused(), AuthenticationError)
        await thief.close()
        # Without naming the replica, a token resumes nothing (and cannot enrol anything).
        stranger = await Hostile.connect(server.url)
        stranger.protocol.resume_session(token, None)
        assert isinstance(await stranger.refused(), AuthenticationError)
        await stranger.close()
        # A resumed session, even a genuine one, may not enrol a new replica.
        genuine = await Hostile.connect(
            server.url,
            replica_id=identity.replica_id,
            server_id=identity.server_id,
            organisation=identity.organisation,
        )
        await genuine.resume(token, laptop._secret)
        with pytest.raises(Exception, match="already enrolled"):
            genuine.protocol.enrol("thief")
        await genuine.close()
        assert len(await server.replicas()) == 1
    finally:
        await laptop.close()
        await server.close()


@pytest.mark.parametrize("ending", ["revoke", "password", "disable"])
async def test_sessions_end_on_revocation_new_password_and_disabled_account(
    tmp_path: Path, ending: str
) -> None:
    """Why 6: the token stops working; a live connection is closed at once."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        token = await laptop.store.get_meta("session.token")
        assert token
        async with live(laptop) as run, asyncio.timeout(LIMIT_S):
            await run.states.reach(ReplicaState.ONLINE)
            if ending == "revoke":
                await server.revoke(laptop.replica_id)
            elif ending == "password":
                await server.set_password("clinic-a", "dr.a", "a brand new passphrase")
            else:
                await server.disable_user("clinic-a", "dr.a")
            error = await run.outcome()  # told at once, never retried: a refusal
            assert isinstance(error, SyncRefusedError)
        assert await server.store.get_session(sha256_hex(token)) is None
        with pytest.raises(SyncRefusedError):
            await laptop.sync()  # the stored token is dead
        if ending == "disable":
            with pytest.raises(AuthenticationError, match="disabled"):
                await laptop.sync(username="dr.a", password=PASSWORD)
    finally:
        await laptop.close()
        await server.close()


async def test_a_session_ended_by_another_process_closes_the_live_connection(
    tmp_path: Path,
) -> None:
    """Revocation from the command line (another store handle) reaches a running server."""
    from caresync.storage import SQLiteStore

    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        async with live(laptop) as run, asyncio.timeout(LIMIT_S):
            await run.states.reach(ReplicaState.ONLINE)
            # What `caresync replica revoke` does, beside the running server.
            async with SQLiteStore.open(tmp_path / "server.db", accounts_only=True) as admin:
                await admin.revoke_replica(laptop.replica_id)
            error = await run.outcome()  # the server's watcher noticed and told it
            assert error is not None
            assert laptop.locked
    finally:
        await laptop.close()
        await server.close()


async def test_expired_sessions_are_deleted(tmp_path: Path) -> None:
    now = [1_800_000_000_000]
    server = await start_server(tmp_path)
    server.gate.now_ms = lambda: now[0]
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        token = await laptop.store.get_meta("session.token")
        assert token
        assert await server.store.get_session(sha256_hex(token)) is not None
        now[0] += int(server.session_ttl_s * 1000) + 1
        with pytest.raises(AuthenticationError, match="expired"):
            await laptop.sync()
        await laptop.sync(username="dr.a", password=PASSWORD)  # a new login clears old ones
        assert await server.store.get_session(sha256_hex(token)) is None
    finally:
        await laptop.close()
        await server.close()


async def test_hello_alone_does_not_mark_a_replica_seen(tmp_path: Path) -> None:
    """Why 10: an unauthenticated Hello naming a replica writes nothing."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        [before] = await server.replicas()
        stranger = await Hostile.connect(
            server.url,
            replica_id=laptop.replica_id,
            server_id=server.server_id,
            organisation="clinic-a",
        )
        await stranger.close()
        [after] = await server.replicas()
        assert after.last_seen_ms == before.last_seen_ms
        await laptop.sync()
        [synced] = await server.replicas()
        assert synced.last_seen_ms is not None
    finally:
        await laptop.close()
        await server.close()


async def test_enrolment_stores_the_secret_and_pins_the_server_key(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        stored = await laptop.store.get_meta("replica.secret")
        assert stored is not None
        assert base64.b64decode(stored) == laptop._secret
        assert laptop.pinned_server_key == await server.server_key_fingerprint()
        [info] = await server.replicas()
        assert info.device_name is None  # enrolled without a device name
        assert await server.store.replica_secret_hash(laptop.replica_id) == sha256_hex(
            laptop._secret or b""
        )
    finally:
        await laptop.close()
        await server.close()


async def test_a_revoked_replica_is_refused_even_with_a_fresh_password_login(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        await server.revoke(laptop.replica_id)
        with pytest.raises(SyncRefusedError, match="revoked"):
            await laptop.sync(username="dr.a", password=PASSWORD)
        assert laptop.locked
    finally:
        await laptop.close()
        await server.close()
