"""A client that speaks the protocol by hand, as a broken or hostile peer might.

It drives a real :class:`ClientProtocol` over a real websocket to a real server,
but decides for itself what to claim: which replica it says it is, which secret
it shows, what it pushes. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any

from caresync.credentials import verify_server_signature
from caresync.exceptions import CaresyncError, ConnectionLostError
from caresync.protocol import (
    Authenticated,
    ClientProtocol,
    Enrolled,
    Error,
    HubItem,
    HubReport,
    PullBatch,
    ServerProof,
    Welcome,
    server_proof_payload,
)
from caresync.records import Record
from caresync.transport import Channel, connect_websocket

WAIT_S = 10.0


@dataclass
class Hostile:
    """One hand-driven connection."""

    protocol: ClientProtocol
    channel: Channel
    events: list[object] = field(default_factory=list)
    replica_id: str = "hostile"
    """The replica it is (set by :meth:`enrol`), which revisions it writes must name."""

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        replica_id: str | None = None,
        server_id: str | None = None,
        organisation: str | None = None,
        **hello: Any,
    ) -> Hostile:
        """Connect, say Hello (naming a replica, or none), get Welcome, check the server's proof.

        ``hello``: more of :class:`ClientProtocol`'s arguments (``max_frame_bytes``,
        ``protocol_versions``)."""
        return await cls.over(
            await connect_websocket(url),
            replica_id=replica_id,
            server_id=server_id,
            organisation=organisation,
            **hello,
        )

    @classmethod
    async def over(
        cls,
        channel: Channel,
        *,
        replica_id: str | None = None,
        server_id: str | None = None,
        organisation: str | None = None,
        **hello: Any,
    ) -> Hostile:
        """The same over a channel already open (an in-memory link, say)."""
        protocol = ClientProtocol(
            replica_id=replica_id, server_id=server_id, organisation=organisation, **hello
        )
        client = cls(protocol, channel)
        protocol.send_hello()
        await client.expect(Welcome)
        nonce = os.urandom(32)
        protocol.prove_server(nonce)
        proof = await client.expect(ServerProof)
        payload = server_proof_payload(
            nonce, protocol.server_id or "", replica_id, client.channel.channel_binding
        )
        assert verify_server_signature(proof.server_key, payload, proof.signature)
        protocol.confirm_server()
        return client

    async def next_event(self) -> object:
        """The next event from the server (raises the refusal a fatal Error means)."""
        async with asyncio.timeout(WAIT_S):
            while not self.events:
                for frame in self.protocol.data_to_send():
                    await self.channel.send(frame)
                self.protocol.receive_data(await self.channel.recv())
                self.events.extend(self.protocol.events_received())
        return self.events.pop(0)

    async def expect(self, kind: type[object]) -> object:
        event = await self.next_event()
        if not isinstance(event, kind):
            raise AssertionError(f"expected {kind.__name__}, got {event!r}")
        return event

    async def login(
        self, username: str, password: str, organisation: str, secret: bytes | None = None
    ) -> Authenticated:
        self.protocol.authenticate(username, password, organisation, secret)
        session = await self.expect(Authenticated)
        assert isinstance(session, Authenticated)
        return session

    async def resume(self, token: str, secret: bytes | None) -> Authenticated:
        self.protocol.resume_session(token, secret)
        session = await self.expect(Authenticated)
        assert isinstance(session, Authenticated)
        return session

    async def enrol(self, device: str = "hostile") -> Enrolled:
        self.protocol.enrol(device)
        enrolled = await self.expect(Enrolled)
        assert isinstance(enrolled, Enrolled)
        self.replica_id = enrolled.replica_id  # what an honest client writes its revisions as
        return enrolled

    async def push(self, seq: int, record_id: str, update: bytes) -> object:
        """Push one item; the PushAck or the (non-fatal) Error that answers it."""
        self.protocol.push([(seq, record_id, update)])
        return await self.next_event()

    async def pull_record(self, record_id: str, replica: str = "hostile") -> Record:
        """The record as the server holds it, rebuilt from a full pull of the feed."""
        self.protocol.request_pull(0, 100_000, include_own=True)
        batch = await self.expect(PullBatch)
        assert isinstance(batch, PullBatch)
        await self.hub_report(batch)
        updates = [item.update for item in batch.items if item.record_id == record_id]
        return Record.from_updates(record_id, updates, replica=replica)

    async def hub_report(self, batch: PullBatch) -> list[HubItem]:
        """After a pull's last batch, the HubReport frames a version 7 server sends."""
        version = self.protocol.protocol_version or 0
        if batch.more or version < HubReport.SINCE_VERSION:
            return []
        items: list[HubItem] = []
        for _frame in range(100):  # bounded: each frame holds many items
            report = await self.expect(HubReport)
            assert isinstance(report, HubReport)
            items.extend(report.items)
            if report.final:
                return items
        raise AssertionError("a hub report of more than 100 frames")

    async def refused(self) -> CaresyncError:
        """Wait for the fatal Error that ends this connection; the error it maps to."""
        try:
            event = await self.next_event()
        except CaresyncError as exc:
            return exc
        raise AssertionError(f"expected a refusal, got {event!r}")

    async def close(self) -> None:
        await self.channel.close()


def refusal(reply: object) -> Error:
    """``reply`` as a non-fatal Error (an AssertionError otherwise)."""
    assert isinstance(reply, Error), reply
    assert not reply.fatal, reply
    return reply


async def closed_by_server(channel: Channel) -> bool:
    """Wait (bounded) until the server closes ``channel``; True once it has."""
    async with asyncio.timeout(WAIT_S):
        while True:
            try:
                await channel.recv()
            except ConnectionLostError:
                return True
            except CaresyncError:
                return True
