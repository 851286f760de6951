"""A loopback link between one laptop and the clinic server, which a test can cut.

A TCP relay on 127.0.0.1: the laptop is enrolled to the link's address, and the link
forwards each connection to the server. Bytes pass unchanged, so both ends run their
real code (websockets, TLS, keepalive). :meth:`Link.cut` aborts every relayed
connection, so both ends see the link drop at once, and turns away new connections
until :meth:`Link.restore`: while cut, the laptop cannot reach the server at all, as
on a ward with no network.
"""

from __future__ import annotations

import asyncio
import contextlib

from caresync.exceptions import InvalidInputError

__all__ = ["Link"]

_CHUNK = 64 * 1024


class _Pair:
    """One relayed connection: the laptop's side and the server's side."""

    def __init__(self, laptop: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.laptop = laptop
        self.server = server

    def abort(self) -> None:
        # abort, not close: a cut drops what is in flight, as a dead network does.
        self.laptop.transport.abort()
        self.server.transport.abort()


class Link:
    """A cuttable relay from ``127.0.0.1:<port>`` to a server. Make one with :meth:`open`."""

    def __init__(self, server: asyncio.Server, target_host: str, target_port: int) -> None:
        self._listener = server
        self._host = target_host
        self._port = target_port
        self._up = True
        self._closed = False
        self._pairs: set[_Pair] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, target_host: str, target_port: int) -> Link:
        """Listen on a free loopback port and relay to ``target_host:target_port``."""
        link: Link | None = None

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if link is None:  # pragma: no cover - nothing can connect before open() returns
                writer.transport.abort()
                return
            await link._relay(reader, writer)

        listener = await asyncio.start_server(accept, "127.0.0.1", 0)
        link = cls(listener, target_host, target_port)
        return link

    @property
    def port(self) -> int:
        """The loopback port the laptop connects to."""
        port: int = self._listener.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """The ``ws://`` address to enrol the laptop to."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def up(self) -> bool:
        """False while the link is cut."""
        return self._up

    @property
    def connections(self) -> int:
        """How many connections the link relays right now."""
        return len(self._pairs)

    def cut(self) -> None:
        """Drop every relayed connection now and refuse new ones until :meth:`restore`."""
        self._up = False
        pairs, self._pairs = self._pairs, set()
        for pair in pairs:
            pair.abort()

    def restore(self) -> None:
        """Let connections through again (existing ones stay dropped: the laptop reconnects)."""
        if self._closed:
            raise InvalidInputError("this link is closed; make a new one")
        self._up = True

    def retarget(self, target_host: str, target_port: int) -> None:
        """Send new connections to another address (a restarted server's new port)."""
        self._host, self._port = target_host, target_port

    async def close(self) -> None:
        """Cut every connection, stop listening, and wait for the relays to end."""
        self._closed = True
        self.cut()
        self._listener.close()
        await self._listener.wait_closed()
        if self._handlers:
            await asyncio.wait(set(self._handlers))

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            if not self._up:
                writer.transport.abort()  # no network: the laptop's connect fails at once
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
            except OSError:
                writer.transport.abort()  # the server is down: the laptop sees a failed connect
                return
            pair = _Pair(writer, up_writer)
            if not self._up:  # cut while connecting
                pair.abort()
                return
            self._pairs.add(pair)
            try:
                await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
            finally:
                self._pairs.discard(pair)
                pair.abort()
        finally:
            if task is not None:
                self._handlers.discard(task)


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy bytes one way until the source ends; then close the sink after what was written."""
    try:
        # A reset or a cut (OSError) ends the copy like an end of stream does.
        with contextlib.suppress(OSError):
            while data := await source.read(_CHUNK):
                sink.write(data)
                await sink.drain()
    finally:
        # close() sends what is buffered before closing; the peer's reader then ends,
        # which ends the other pump.
        with contextlib.suppress(OSError):
            sink.close()
