"""A laptop sends nothing to a server until it has proved it is the one enrolled with.

Why 7 of the trust-nothing issue: an impostor that echoed the server id the
laptop announced was believed, and got the token, the password and the outbox.
Here the impostor is a real caresync server on 127.0.0.1 with the same server id
and another key, and a man in the middle is a real TLS relay on 127.0.0.1 with
another certificate that the laptop trusts (as a corporate proxy's would be).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trustme
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from caresync.exceptions import InsecureConnectionError, WrongServerError
from caresync.protocol import Authenticate, PushBatch, ResumeSession, decode_frame
from caresync.replica import Replica
from caresync.server import SyncServer
from caresync.storage import SQLiteStore
from caresync.transport import check_server_url

SECRET_MESSAGES = (Authenticate, ResumeSession, PushBatch)


class Impostor(SyncServer):
    """A real server under a borrowed server id and its own key; it notes what it was sent."""

    received: list[str]

    async def _on_event(self, conn: object, event: object) -> None:
        self.received.append(type(event).__name__)
        await super()._on_event(conn, event)  # type: ignore[arg-type]


async def _impostor(tmp_path: Path, server_id: str) -> Impostor:
    store = await SQLiteStore.open(tmp_path / "impostor.db")
    impostor = Impostor(store, server_id)
    impostor.received = []

    async def welcome_anyone(hello: object) -> None:
        return None  # an impostor refuses nobody: it wants what they send

    impostor.gate.check_hello = welcome_anyone  # type: ignore[assignment, method-assign]
    await impostor.add_user("clinic-a", "dr.a", PASSWORD)
    await impostor.serve("127.0.0.1", 0)
    return impostor


async def test_an_impostor_echoing_the_server_id_gets_nothing(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    impostor = await _impostor(tmp_path, server.server_id)
    try:
        record = await laptop.create_record()
        await laptop.set(record, "name", "Awa Diop", author="dr.a")
        with pytest.raises(WrongServerError, match="not the key"):
            await laptop.sync(url=impostor.url)  # with the stored token
        with pytest.raises(WrongServerError, match="not the key"):
            await laptop.sync(url=impostor.url, username="dr.a", password=PASSWORD)
        assert set(impostor.received) <= {"Hello", "ProveServer"}
        assert await impostor.store.feed_head() == 0
        assert (await laptop.status()).pending == 2  # kept for the real server
        await laptop.sync()  # which still works
        assert (await laptop.status()).pending == 0
    finally:
        await laptop.close()
        await impostor.close()
        await server.close()


async def test_enrolment_checks_the_server_key_it_was_given(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    impostor = await _impostor(tmp_path, server.server_id)
    laptop = await Replica.open(tmp_path / "laptop.db")
    try:
        expected = await server.server_key_fingerprint()
        with pytest.raises(WrongServerError, match="not the expected"):
            await laptop.enrol(
                impostor.url,
                username="dr.a",
                password=PASSWORD,
                organisation="clinic-a",
                server_key=expected,
            )
        assert "Authenticate" not in impostor.received
        assert not laptop.enrolled
        await laptop.enrol(
            server.url,
            username="dr.a",
            password=PASSWORD,
            organisation="clinic-a",
            server_key=expected,
        )
        assert laptop.pinned_server_key == expected
    finally:
        await laptop.close()
        await impostor.close()
        await server.close()


async def test_plain_ws_beyond_this_machine_is_refused_before_connecting(tmp_path: Path) -> None:
    laptop = await Replica.open(tmp_path / "laptop.db")
    try:
        for url in ("ws://10.0.0.5:8765", "ws://clinic.example.org", "ws://[2001:db8::1]:80"):
            with pytest.raises(InsecureConnectionError, match="wss://"):
                await laptop.enrol(url, username="dr.a", password=PASSWORD, organisation="c")
        assert check_server_url("ws://10.0.0.5:8765", insecure=True) == "ws://10.0.0.5:8765"
        for url in ("ws://127.0.0.1:1", "ws://[::1]:1", "ws://localhost:1", "wss://x.org"):
            assert check_server_url(url) == url
    finally:
        await laptop.close()


def _tls(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1, and a client context trusting ca."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


@asynccontextmanager
async def _relay(
    target: str, server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, seen: list[object]
) -> AsyncIterator[str]:
    """A TLS-terminating relay on 127.0.0.1 that forwards every frame both ways."""

    async def pump(source: object, sink: object, note: bool) -> None:
        try:
            async for frame in source:  # type: ignore[attr-defined]
                if note:
                    try:
                        seen.append(decode_frame(frame)[1])
                    except Exception as exc:  # noqa: BLE001 - a relay forwards whatever comes
                        seen.append(exc)
                await sink.send(frame)  # type: ignore[attr-defined]
        except ConnectionClosed:
            return

    async def handler(laptop_side: ServerConnection) -> None:
        async with connect(target, ssl=client_ssl, compression=None) as server_side:
            await asyncio.wait(
                {
                    asyncio.create_task(pump(laptop_side, server_side, True)),
                    asyncio.create_task(pump(server_side, laptop_side, False)),
                },
                return_when=asyncio.FIRST_COMPLETED,
            )

    async with serve(handler, "127.0.0.1", 0, ssl=server_ssl, compression=None) as relay:
        port = next(iter(relay.sockets)).getsockname()[1]
        yield f"wss://127.0.0.1:{port}"


async def test_a_relay_with_another_valid_certificate_is_refused(tmp_path: Path) -> None:
    """The real server's proof is bound to its own TLS connection, not the relay's."""
    ca = trustme.CA()
    server_tls, client_tls = _tls(ca)
    relay_tls, _ = _tls(ca)  # another certificate, just as valid to the laptop
    server = await SyncServer.open(tmp_path / "server.db")
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    await server.serve("127.0.0.1", 0, ssl=server_tls)
    laptop = await Replica.open(tmp_path / "laptop.db")
    seen: list[object] = []
    try:
        await laptop.enrol(
            server.url, username="dr.a", password=PASSWORD, organisation="clinic-a", ssl=client_tls
        )
        await laptop.create_record()
        async with _relay(server.url, relay_tls, client_tls, seen) as relayed:
            with pytest.raises(WrongServerError, match="could not prove its identity"):
                await laptop.sync(url=relayed, ssl=client_tls)
        assert seen, "the relay forwarded the laptop's first frames"
        assert not [m for m in seen if isinstance(m, SECRET_MESSAGES)]
        assert (await laptop.status()).pending == 1
        await laptop.sync(ssl=client_tls)  # straight to the server: fine
        assert (await laptop.status()).pending == 0
    finally:
        await laptop.close()
        await server.close()
