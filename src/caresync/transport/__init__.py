"""Transports: channels that carry frames, over websockets or in memory.

A laptop reaches a server through a :class:`Connector` (default
:class:`WebSocketConnector`; in memory, a :class:`MemoryLink` of a
:class:`MemoryNetwork`); a server listens through an :class:`Acceptor`
(websockets: ``SyncServer.serve``; in memory, ``network.host(name)``).
"""

from caresync.transport.base import (
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_QUEUED_FRAMES,
    NOWAIT_REPLY_BYTES,
    Acceptor,
    Channel,
    ChannelHandler,
    ClosingSend,
    Connector,
    Listener,
    NowaitSend,
    closing_sender,
    nowait_sender,
    reply_nowait,
    send_reply,
)
from caresync.transport.memory import MemoryChannel, MemoryListener, memory_pipe
from caresync.transport.network import MemoryHost, MemoryLink, MemoryNetwork
from caresync.transport.websocket import (
    HttpAnswer,
    HttpHandler,
    HttpRequest,
    WebSocketChannel,
    WebSocketConnector,
    WebSocketListener,
    check_server_url,
    connect_websocket,
    is_loopback_host,
    serve_websockets,
)

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_QUEUED_FRAMES",
    "NOWAIT_REPLY_BYTES",
    "Acceptor",
    "Channel",
    "ChannelHandler",
    "ClosingSend",
    "Connector",
    "HttpAnswer",
    "HttpHandler",
    "HttpRequest",
    "Listener",
    "MemoryChannel",
    "MemoryHost",
    "MemoryLink",
    "MemoryListener",
    "MemoryNetwork",
    "NowaitSend",
    "WebSocketChannel",
    "WebSocketConnector",
    "WebSocketListener",
    "check_server_url",
    "closing_sender",
    "connect_websocket",
    "is_loopback_host",
    "memory_pipe",
    "nowait_sender",
    "reply_nowait",
    "send_reply",
    "serve_websockets",
]
