"""Frames: messages in a versioned msgpack envelope, and nothing else (pure).

One websocket message is one frame. A frame is the msgpack encoding of::

    [protocol_version, type_code, body]

``protocol_version`` is the version the frame is written in (1..65535), ``type_code``
names the message class (:data:`~caresync.protocol.messages.MESSAGE_TYPES`) and
``body`` maps every field name of that class to its value: every field present, no
other key, no duplicate key. Strings are UTF-8 (msgpack str), updates are msgpack bin,
batch items are arrays. Extension types are refused.

:func:`decode_frame` turns any input at all into either a valid message or a
:class:`~caresync.exceptions.RemoteProtocolError` (a
:class:`~caresync.exceptions.FrameTooLargeError` for a frame over the limit): never an
exception from msgpack, never a ``KeyError``, ``IndexError`` or ``TypeError``.
:func:`encode_frame` raises :class:`~caresync.exceptions.LocalProtocolError` for a
frame that would be too large for the peer, before anything is queued.

Sizing a batch so its frame fits: a batch whose
``sum(item_wire_size(record_id, update)) + BATCH_OVERHEAD_BYTES`` is at most the peer's
maximum frame size always encodes within it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

import msgpack

from caresync.audit.chain import AuditEntry
from caresync.exceptions import FrameTooLargeError, LocalProtocolError, RemoteProtocolError
from caresync.protocol.messages import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_VERSION,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Message,
)

__all__ = [
    "BATCH_OVERHEAD_BYTES",
    "ITEM_OVERHEAD_BYTES",
    "audit_wire_size",
    "decode_frame",
    "encode_frame",
    "item_wire_size",
]

ITEM_OVERHEAD_BYTES = 24
"""Bytes a batch item costs on the wire beyond its record id (UTF-8) and its update."""

BATCH_OVERHEAD_BYTES = 4096
"""Bytes a batch frame costs beyond its items (envelope, other fields), at most."""


def item_wire_size(record_id: str, update: bytes) -> int:
    """An upper bound on the bytes one batch item takes in a frame."""
    # An ASCII id (the usual) is as many UTF-8 bytes as characters: no need to encode it.
    size = (
        len(record_id) if record_id.isascii() else len(record_id.encode("utf-8", "surrogatepass"))
    )
    return size + len(update) + ITEM_OVERHEAD_BYTES


def audit_wire_size(entry: AuditEntry) -> int:
    """An upper bound on the bytes one audit entry takes in an AuditBatch frame."""
    texts = (entry.replica_id, entry.actor, entry.action, entry.record_id or "", entry.detail or "")
    return sum(len(t.encode("utf-8", "surrogatepass")) for t in texts) + 2 * 34 + 64


def encode_frame(
    message: Message,
    *,
    version: int = PROTOCOL_VERSION,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> bytes:
    """Encode ``message`` as one frame in protocol ``version``.

    Raises :class:`~caresync.exceptions.LocalProtocolError` if ``message`` is not a
    message, or if the frame would exceed ``max_frame_bytes`` (the peer's limit).
    """
    if not isinstance(message, Message):
        raise LocalProtocolError(f"not a protocol message: {type(message).__name__}")
    if type(version) is not int or not 1 <= version <= MAX_VERSION:
        raise LocalProtocolError(f"protocol version must be an int in [1, {MAX_VERSION}]")
    if version < message.SINCE_VERSION:
        raise LocalProtocolError(
            f"{type(message).__name__} exists from protocol version {message.SINCE_VERSION}; "
            f"this connection speaks version {version}"
        )
    try:
        body = message.to_body(version)
        frame = msgpack.packb([version, message.TYPE_CODE, body], use_bin_type=True)
    except (ValueError, TypeError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode {type(message).__name__}: {exc}") from exc
    if len(frame) > max_frame_bytes:
        raise LocalProtocolError(
            f"{type(message).__name__} frame of {len(frame)} bytes exceeds the peer's maximum "
            f"of {max_frame_bytes} bytes; send smaller batches"
        )
    return frame


def _refuse_ext(code: int, data: bytes) -> NoReturn:
    raise ValueError(f"extension type {code} is not allowed")


def _unique_pairs(pairs: Sequence[tuple[Any, Any]]) -> dict[Any, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a map with a duplicate key")
    return result


def decode_frame(
    frame: bytes | bytearray | memoryview | str,
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> tuple[int, Message]:
    """Decode one frame into ``(protocol_version, message)``.

    A message whose layout is not frozen must be in one of
    :data:`~caresync.protocol.messages.SUPPORTED_VERSIONS`; the caller checks that the
    version is the one agreed on the connection.

    Raises :class:`~caresync.exceptions.FrameTooLargeError` for a frame over
    ``max_frame_bytes`` and :class:`~caresync.exceptions.RemoteProtocolError` for
    anything else that is not a valid frame (a ``str``, i.e. a websocket text frame,
    included).
    """
    if isinstance(frame, str):
        raise RemoteProtocolError("a text frame; caresync frames are binary")
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise LocalProtocolError(f"a frame must be bytes, not {type(frame).__name__}")
    size = frame.nbytes if isinstance(frame, memoryview) else len(frame)
    if size > max_frame_bytes:
        raise FrameTooLargeError(
            f"a frame of {size} bytes exceeds the maximum of {max_frame_bytes} bytes"
        )
    if size == 0:
        raise RemoteProtocolError("an empty frame")
    try:
        envelope = msgpack.unpackb(
            frame,
            raw=False,
            use_list=False,
            strict_map_key=True,
            max_ext_len=0,
            ext_hook=_refuse_ext,
            object_pairs_hook=_unique_pairs,
        )
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        raise RemoteProtocolError(f"not a valid msgpack frame: {exc}") from exc
    if type(envelope) is not tuple or len(envelope) != 3:
        raise RemoteProtocolError("not an envelope [protocol_version, type_code, body]")
    version, code, body = envelope
    if type(version) is not int or not 1 <= version <= MAX_VERSION:
        raise RemoteProtocolError(f"bad protocol version in envelope: {version!r:.40}")
    if type(code) is not int:
        raise RemoteProtocolError(f"bad message type code: {code!r:.40}")
    cls = MESSAGE_TYPES.get(code)
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {code}")
    if version not in SUPPORTED_VERSIONS and not cls.FROZEN_LAYOUT:
        raise RemoteProtocolError(f"{cls.__name__} in unsupported protocol version {version}")
    if version < cls.SINCE_VERSION:
        raise RemoteProtocolError(
            f"{cls.__name__} in protocol version {version}; it exists from version "
            f"{cls.SINCE_VERSION}"
        )
    if type(body) is not dict:
        raise RemoteProtocolError(f"{cls.__name__}: the body is not a map")
    expected = cls.fields_in(version)
    if len(body) != len(expected) or not all(name in body for name in expected):
        missing = sorted(set(expected) - set(body))
        unknown = sorted(str(key)[:40] for key in set(body) - set(expected))
        raise RemoteProtocolError(
            f"{cls.__name__}: missing fields {missing}, unknown fields {unknown[:5]}"
        )
    try:
        message = cls.from_body(version, body)
    except LocalProtocolError as exc:
        raise RemoteProtocolError(str(exc)) from exc
    return version, message
