"""Channels over websockets (``ws://`` and ``wss://``), on the asyncio implementation.

websockets' exceptions never escape: a dropped connection is ConnectionLostError,
an oversized frame FrameTooLargeError, a refused handshake ConnectionLostError.
"""

from __future__ import annotations

import email.utils
import functools
import http
import ipaddress
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI, PayloadTooBig
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Side, State

from caresync.exceptions import (
    ConnectionLostError,
    FrameTooLargeError,
    InsecureConnectionError,
    InvalidInputError,
    RemoteProtocolError,
)
from caresync.transport.base import DEFAULT_MAX_FRAME_BYTES, ChannelHandler
from caresync.transport.forwarded import ClientAddress, TrustedProxies, forwarded_client

__all__ = [
    "HttpAnswer",
    "HttpHandler",
    "HttpRequest",
    "WebSocketChannel",
    "WebSocketConnector",
    "WebSocketListener",
    "check_server_url",
    "connect_websocket",
    "is_loopback_host",
    "serve_websockets",
]


class HttpAnswer(NamedTuple):
    """A plain HTTP answer on the websocket port (a health check, metrics, a page)."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    """Further headers (a challenge, a content security policy), after the usual ones."""


class HttpRequest(NamedTuple):
    """What a plain HTTP request on the websocket port says beyond its method and path.

    Requests have no body here: websockets refuses one before a handler runs.
    """

    headers: tuple[tuple[str, str], ...]
    """Every header as sent (names as the client spelled them), in order."""
    remote_host: str | None
    """The peer's address (no port), or None if unknown."""
    tls: bool
    """True when the request came over TLS (``wss``/``https``)."""

    def header(self, name: str) -> str | None:
        """The one value of header ``name`` (any case); None when it is absent or sent
        more than once (an ambiguous request is treated as one without it)."""
        found = [value for key, value in self.headers if key.lower() == name.lower()]
        return found[0] if len(found) == 1 else None


HttpHandler = Callable[[str, str, HttpRequest], Awaitable[HttpAnswer | None]]
"""Given a request's method, path and the rest of it, an answer, or None to go on with
the websocket handshake."""


class WebSocketChannel:
    """A :class:`~caresync.transport.base.Channel` over one websocket connection."""

    def __init__(
        self,
        connection: ClientConnection | ServerConnection,
        peer: str,
        *,
        client_host: str | None = None,
    ) -> None:
        """``client_host``: the client's address when a trusted proxy gave it (see
        :mod:`caresync.transport.forwarded`); else the connection's own peer is."""
        self._connection = connection
        self._peer = peer
        self._client_host = client_host

    @property
    def peer(self) -> str:
        return self._peer

    @property
    def closed(self) -> bool:
        return self._connection.close_code is not None

    @property
    def remote_host(self) -> str | None:
        if self._client_host is not None:
            return self._client_host
        address = self._connection.remote_address
        return str(address[0]) if address else None

    @property
    def channel_binding(self) -> bytes | None:
        ssl_object = self._connection.transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        binding: bytes | None = ssl_object.get_channel_binding("tls-unique")
        return binding

    def set_limits(self, *, max_frame_bytes: int, max_queued_frames: int) -> None:
        """Change the limits of the running connection (websockets reads them per frame)."""
        for name, value in (
            ("max_frame_bytes", max_frame_bytes),
            ("max_queued_frames", max_queued_frames),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInputError(f"{name} must be a positive int, not {value!r}")
        self._connection.protocol.max_message_size = max_frame_bytes
        # The reader pauses above ``high`` queued frames and resumes below ``low``.
        assembler = self._connection.recv_messages
        assembler.high, assembler.low = max_queued_frames, max(1, max_queued_frames // 4)

    async def send(self, frame: bytes) -> None:
        try:
            await self._connection.send(frame)
        except ConnectionClosed as exc:
            raise ConnectionLostError(f"connection to {self._peer} closed: {exc}") from None

    def send_nowait(self, frames: Sequence[bytes], *, shared: bool = True) -> bool:
        """Write ``frames`` now, in order, without waiting, if the connection is open,
        sends no fragmented message and its write buffer is under its high-water mark
        (the level at which :meth:`send` would wait); otherwise write nothing and return
        False (then :meth:`send` them). So what waits unsent here stays bounded by the
        high-water mark plus one call's frames.

        Small frames go in one write: one system call here, and one read for the peer,
        where :meth:`send` makes one of each per frame.

        A server's frames are not masked, so the same frame handed to many connections
        (a live update fanned out, ``shared``) is framed once: the websocket frame of
        the last few such frames sent is kept (see :func:`_server_frame`); frames sent
        once (``shared=False``: a reply) are framed without being kept."""
        connection = self._connection
        protocol = connection.protocol
        transport = connection.transport
        if not _writable_now(connection):
            return False
        framed: list[bytes]
        if protocol.side is Side.SERVER and not protocol.extensions:
            if shared:
                framed = [_server_frame(frame) for frame in frames]
            else:
                framed = [Frame(Opcode.BINARY, frame).serialize(mask=False) for frame in frames]
        else:
            for frame in frames:
                protocol.send_binary(frame)
            # Only these frames: websockets had nothing of its own waiting (checked above).
            framed = protocol.data_to_send()
        if len(framed) > 1 and sum(map(len, framed)) <= _JOINED_MAX_BYTES:
            transport.write(b"".join(framed))
        else:
            for data in framed:
                transport.write(data)
        return True

    def send_closing_nowait(self, frames: Sequence[bytes], reason: str = "") -> bool:
        """Write ``frames`` and then the closing frame (code 1000, ``reason``) in one
        write, now, where :meth:`send_nowait` would write small frames; otherwise write
        nothing and return False. The peer then reads the last words and the close
        together; :meth:`close` waits for the closing handshake to end (at most its
        timeout, then the connection is aborted), as after any close."""
        connection = self._connection
        protocol = connection.protocol
        transport = connection.transport
        if not _writable_now(connection) or sum(map(len, frames)) > _JOINED_MAX_BYTES:
            return False
        for frame in frames:
            protocol.send_binary(frame)
        protocol.send_close(1000, reason[:120])
        data = protocol.data_to_send()
        written = [chunk for chunk in data if chunk]
        transport.write(b"".join(written))
        if len(written) < len(data) and transport.can_write_eof():
            transport.write_eof()  # websockets' end of stream, as its own send_data does
        return True

    async def recv(self) -> bytes:
        try:
            message = await self._connection.recv()
        except ConnectionClosed as exc:
            if isinstance(exc.__cause__, PayloadTooBig) or (exc.rcvd and exc.rcvd.code == 1009):
                raise FrameTooLargeError(f"{self._peer} sent a frame over the limit") from None
            raise ConnectionLostError(f"connection to {self._peer} closed: {exc}") from None
        if isinstance(message, str):
            await self.close("text frames are not part of the protocol")
            raise RemoteProtocolError(f"{self._peer} sent a text frame; caresync frames are binary")
        return message

    async def close(self, reason: str = "") -> None:
        try:
            await self._connection.close(1000, reason[:120])
        except ConnectionClosed:
            return  # already closed: closing is idempotent


_JOINED_MAX_BYTES = 64 * 1024
"""Frames written in one call of :meth:`WebSocketChannel.send_nowait` are joined into
one write up to this many bytes in all (larger ones are not copied to be joined)."""

_FRAMED: list[tuple[bytes, bytes]] = []  # (frame, its websocket frame), newest first
_FRAMED_KEPT = 4
_FRAMED_MAX_BYTES = 256 * 1024  # larger frames are framed each time: at most ~2 MiB kept


def _writable_now(connection: ClientConnection | ServerConnection) -> bool:
    """Whether frames may be written to ``connection`` now, ahead of websockets' ``send``:
    it is open, sends no fragmented message, holds no bytes of its own not yet written
    (their order is kept) and its write buffer is under its high-water mark (the level
    at which ``send`` would wait)."""
    protocol = connection.protocol
    return not (
        protocol.state is not State.OPEN
        or connection.send_in_progress is not None
        or protocol.expect_continuation_frame
        or protocol.writes
        or connection.transport.get_write_buffer_size() >= connection.write_limit_high
    )


def _server_frame(frame: bytes) -> bytes:
    """``frame`` as an unmasked binary websocket frame with no extension (a server's),
    made once for the same object handed to many connections: the last
    :data:`_FRAMED_KEPT` of at most :data:`_FRAMED_MAX_BYTES` are kept, found by
    identity (a strong reference is kept, so an identity is never reused while kept)."""
    for kept, framed in _FRAMED:
        if kept is frame:
            return framed
    framed = Frame(Opcode.BINARY, frame).serialize(mask=False)
    if len(frame) <= _FRAMED_MAX_BYTES:
        _FRAMED.insert(0, (frame, framed))
        del _FRAMED[_FRAMED_KEPT:]
    return framed


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_server_url(url: object, *, insecure: bool = False) -> str:
    """A server URL, checked: ``ws://`` or ``wss://``, a host, a valid port.

    Plain ``ws://`` is refused (InsecureConnectionError) unless the host is this
    machine (loopback) or ``insecure`` says the network is trusted: without TLS,
    a password, a token and every record cross the network readable by anyone.
    A malformed URL is an InvalidInputError that says what is wrong.
    """
    if not isinstance(url, str):
        raise InvalidInputError(f"a server URL must be a string, not {type(url).__name__}")
    return _checked_server_url(url, insecure)


@functools.lru_cache(maxsize=64)
def _checked_server_url(url: str, insecure: bool) -> str:
    """:func:`check_server_url` of a string, remembered: a laptop checks the same URL at
    every sync, twice (the parse and the address cost more than the rest of a no-op's
    checks). Only answers are remembered; a refusal is raised again each time."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise InvalidInputError(f"not a valid server URL {url!r:.200}: {exc}") from None
    if parts.scheme not in ("ws", "wss"):
        raise InvalidInputError(f"server URL must start with ws:// or wss://, got {url!r:.200}")
    if not host:
        raise InvalidInputError(f"server URL {url!r:.200} names no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidInputError(
            f"server URL {url!r:.200} carries a user name or password: credentials go in "
            "the login, never in a URL (it is stored and shown)"
        )
    try:
        url.encode("utf-8")
        host.encode("idna")  # a label over 63 characters, or not encodable at all
    except UnicodeError as exc:
        raise InvalidInputError(f"not a valid server URL {url!r:.200}: {exc}") from None
    if port == 0:
        raise InvalidInputError(f"server URL {url!r:.200}: port 0 cannot be connected to")
    if parts.scheme == "ws" and not insecure and not is_loopback_host(host):
        raise InsecureConnectionError(
            f"refusing plain ws:// to {host}: the password, the session and every record "
            "would cross the network unencrypted. Use wss:// (see docs/operations.md), or "
            "allow it explicitly on a network you trust (insecure=True, --insecure)"
        )
    return url


async def connect_websocket(
    url: str,
    *,
    ssl: ssl_module.SSLContext | None = None,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    open_timeout: float = 10.0,
) -> WebSocketChannel:
    """Open a channel to ``url`` (``ws://`` or ``wss://``); ConnectionLostError if it fails.

    The URL is checked first (:func:`check_server_url`, ``insecure=True``: the
    policy on plain ``ws://`` is the caller's).
    """
    check_server_url(url, insecure=True)
    if url.startswith("wss://") and ssl is None:
        ssl = ssl_module.create_default_context()
    kwargs: dict[str, Any] = {"ssl": ssl} if url.startswith("wss://") else {}
    try:
        connection = await connect(
            url,
            max_size=max_frame_bytes,
            open_timeout=open_timeout,
            compression=None,  # updates are already compact; deflate costs latency
            proxy=None,
            **kwargs,
        )
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        raise ConnectionLostError(f"cannot connect to {url}: {exc}") from None
    except ValueError as exc:
        raise InvalidInputError(f"not a valid server URL {url!r:.200}: {exc}") from None
    return WebSocketChannel(connection, url)


class WebSocketConnector:
    """The default :class:`~caresync.transport.base.Connector`: websockets over TCP.

    URLs are checked by :func:`check_server_url` (plain ``ws://`` beyond loopback
    is refused unless ``insecure``); channels are opened by :func:`connect_websocket`.
    """

    def __init__(
        self, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, open_timeout: float = 10.0
    ) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.open_timeout = open_timeout

    def check_url(self, url: object, *, insecure: bool = False) -> str:
        return check_server_url(url, insecure=insecure)

    async def connect(
        self, url: str, *, ssl: ssl_module.SSLContext | None = None
    ) -> WebSocketChannel:
        return await connect_websocket(
            url, ssl=ssl, max_frame_bytes=self.max_frame_bytes, open_timeout=self.open_timeout
        )


class WebSocketListener:
    """A websocket server running a handler per channel. Use :func:`serve_websockets`."""

    def __init__(self, server: Server, url: str) -> None:
        self._server = server
        self._url = url

    @property
    def url(self) -> str:
        return self._url

    @property
    def port(self) -> int:
        """The TCP port bound (useful with port 0)."""
        port: int = next(iter(self._server.sockets)).getsockname()[1]
        return port

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def __aenter__(self) -> WebSocketListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve_websockets(
    handler: ChannelHandler,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ssl: ssl_module.SSLContext | None = None,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    max_queued_frames: int = 16,
    http_handler: HttpHandler | None = None,
    proxies: TrustedProxies = (),
) -> WebSocketListener:
    """Listen on ``host:port`` (port 0 picks a free one) and run ``handler`` per channel.

    ``max_frame_bytes`` and ``max_queued_frames`` apply from a connection's first
    byte; a handler may raise them for its channel (``set_limits``).
    ``http_handler`` answers plain HTTP requests on the same port (it sees each
    request's path first; None lets the websocket handshake go on).
    ``proxies``: reverse proxies whose ``X-Forwarded-For`` and ``X-Forwarded-Proto``
    say who a connection's client is (:mod:`caresync.transport.forwarded`); from any
    other peer those headers are ignored.
    """

    def client_of(connection: ServerConnection, request: Request) -> ClientAddress:
        address = connection.remote_address
        return forwarded_client(
            str(address[0]) if address else None,
            connection.transport.get_extra_info("ssl_object") is not None,
            tuple(request.headers.raw_items()),
            proxies,
        )

    async def process_request(connection: ServerConnection, request: Request) -> Response | None:
        answer = None
        if http_handler is not None:
            client = client_of(connection, request)
            about = HttpRequest(tuple(request.headers.raw_items()), client.host, client.tls)
            answer = await http_handler(request.method, request.path, about)
        if connection.protocol.eof_sent:
            # The peer sent bytes after its request that are no websocket frame (an empty
            # line, a pipelined request): websockets failed the connection and ended our
            # side of it already, then fails an assertion sending any answer (an
            # "unexpected internal error" logged for anyone's request). No answer can go
            # out now: close, and websockets sends none.
            connection.transport.abort()
            await connection.wait_closed()
            return None
        if answer is None:
            return None
        status = http.HTTPStatus(answer.status)
        headers = Headers(
            [
                ("Date", email.utils.formatdate(usegmt=True)),
                ("Connection", "close"),
                ("Content-Length", str(len(answer.body))),
                ("Content-Type", answer.content_type),
                ("Cache-Control", "no-store"),
                *answer.headers,
            ]
        )
        return Response(status.value, status.phrase, headers, answer.body)

    async def on_connection(connection: ServerConnection) -> None:
        address = connection.remote_address
        peer = f"{address[0]}:{address[1]}" if address else "unknown"
        request = connection.request
        client = None if request is None or not proxies else client_of(connection, request)
        if client is not None and client.via_proxy:
            await handler(
                WebSocketChannel(connection, f"{client.host} via {peer}", client_host=client.host)
            )
        else:
            await handler(WebSocketChannel(connection, peer))

    try:
        server = await serve(
            on_connection,
            host,
            port,
            ssl=ssl,
            max_size=max_frame_bytes,
            max_queue=max_queued_frames,
            compression=None,
            process_request=process_request,
            server_header=None,  # no "Server: Python/3.x websockets/y" to anyone who asks
        )
    except ValueError as exc:  # a host that is not one (a NUL, an over-long label)
        raise InvalidInputError(f"cannot listen on {host!r:.100}: {exc}") from None
    except OSError as exc:
        raise ConnectionLostError(f"cannot listen on {host}:{port}: {exc}") from None
    bound = next(iter(server.sockets)).getsockname()[1]
    scheme = "wss" if ssl is not None else "ws"
    shown = f"[{host}]" if ":" in host else host
    return WebSocketListener(server, f"{scheme}://{shown}:{bound}")
