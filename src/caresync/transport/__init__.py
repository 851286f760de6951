"""Transports: channels that carry frames, over websockets or in memory."""

from caresync.transport.base import DEFAULT_MAX_FRAME_BYTES, Channel, ChannelHandler, Listener
from caresync.transport.memory import MemoryChannel, MemoryListener, memory_pipe
from caresync.transport.websocket import (
    HttpAnswer,
    HttpHandler,
    WebSocketChannel,
    WebSocketListener,
    check_server_url,
    connect_websocket,
    is_loopback_host,
    serve_websockets,
)

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "Channel",
    "ChannelHandler",
    "HttpAnswer",
    "HttpHandler",
    "Listener",
    "MemoryChannel",
    "MemoryListener",
    "WebSocketChannel",
    "WebSocketListener",
    "check_server_url",
    "connect_websocket",
    "is_loopback_host",
    "memory_pipe",
    "serve_websockets",
]
