"""End to end: a laptop that has synced once sends its proof request with Hello (one
round trip less), and a server that changed its protocol version costs one more
connection, not a failed sync."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.e2e.live_helpers import LIMIT_S, PASSWORD, TracingConnector, start_server

from caresync.protocol import PROTOCOL_VERSION
from caresync.replica import Replica
from caresync.replication import meta


def handshake(log: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The frames of a connection up to the ServerProof."""
    end = log.index(("recv", "ServerProof"))
    return log[: end + 1]


async def test_a_laptop_that_synced_once_sends_its_proof_request_with_hello(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    connector = TracingConnector()
    laptop = await Replica.open(tmp_path / "laptop.db", connector=connector)
    try:
        async with asyncio.timeout(LIMIT_S):
            await laptop.enrol(
                server.url, username="dr.a", password=PASSWORD, organisation="clinic-a"
            )
            plain = [
                ("send", "Hello"),
                ("recv", "Welcome"),
                ("send", "ProveServer"),
                ("recv", "ServerProof"),
            ]
            assert handshake(connector.logs[0]) == plain  # enrolling: the server is new
            assert await laptop.store.get_meta(meta.SERVER_PROTOCOL) == str(PROTOCOL_VERSION)
            report = await laptop.sync()
            assert (report.uploaded, report.downloaded) == (0, 0)
            assert handshake(connector.logs[1]) == [
                ("send", "Hello"),
                ("send", "ProveServer"),  # before Welcome came back
                ("recv", "Welcome"),
                ("recv", "ServerProof"),
            ]
            assert len(connector.logs) == 2
    finally:
        await laptop.close()
        await server.close()


async def test_a_server_that_chose_another_version_costs_one_connection_more(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    connector = TracingConnector()
    laptop = await Replica.open(tmp_path / "laptop.db", connector=connector)
    try:
        async with asyncio.timeout(LIMIT_S):
            await laptop.enrol(
                server.url, username="dr.a", password=PASSWORD, organisation="clinic-a"
            )
            record_id = await laptop.create_record()
            await laptop.set(record_id, "name", "Awa", author="dr.a")
            # As if the server had spoken an older version last time (since upgraded).
            await laptop._known_meta.set_meta(meta.SERVER_PROTOCOL, str(PROTOCOL_VERSION - 1))
            report = await laptop.sync()
            assert report.uploaded == 2  # the record and its name: the sync went through
            assert len(connector.logs) == 3
            first, second = connector.logs[1], connector.logs[2]
            assert first[:3] == [("send", "Hello"), ("send", "ProveServer"), ("recv", "Welcome")]
            assert ("send", "ResumeSession") not in first  # nothing secret on that one
            assert handshake(second)[:3] == [
                ("send", "Hello"),
                ("recv", "Welcome"),
                ("send", "ProveServer"),
            ]
            assert await laptop.store.get_meta(meta.SERVER_PROTOCOL) == str(PROTOCOL_VERSION)
            assert (await laptop.status()).last_error is None
    finally:
        await laptop.close()
        await server.close()
