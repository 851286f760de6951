"""Transports: channels that carry frames, over websockets or in memory."""

from caresync.transport.base import DEFAULT_MAX_FRAME_BYTES, Channel, ChannelHandler, Listener
from caresync.transport.memory import MemoryChannel, MemoryListener, memory_pipe
from caresync.transport.websocket import (
    WebSocketChannel,
    WebSocketListener,
    connect_websocket,
    serve_websockets,
)

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "Channel",
    "ChannelHandler",
    "Listener",
    "MemoryChannel",
    "MemoryListener",
    "WebSocketChannel",
    "WebSocketListener",
    "connect_websocket",
    "memory_pipe",
    "serve_websockets",
]
