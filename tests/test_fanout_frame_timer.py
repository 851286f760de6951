"""The fan-out benchmark's frame reader (``benchmarks.fanout_clients.FrameTimer``):
it must count each whole binary message once, whatever way the bytes arrive, pass
control frames to websockets untouched, and refuse what it cannot count."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from benchmarks.fanout_clients import FrameTimer
from websockets.frames import Frame, Opcode


class _Laptop:
    def __init__(self) -> None:
        self.kept: list[bytes] = []

    def keep(self, frame: bytes) -> None:
        self.kept.append(frame)


class _Websocket(asyncio.Protocol):
    def __init__(self) -> None:
        self.data: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.data.append(data)


def _server_frame(opcode: Opcode, payload: bytes, *, fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin=fin).serialize(mask=False)


def _timer() -> tuple[FrameTimer, _Laptop, _Websocket]:
    laptop, websocket = _Laptop(), _Websocket()
    timer = FrameTimer(laptop, websocket)  # type: ignore[arg-type]
    return timer, laptop, websocket


@pytest.mark.parametrize("size", [0, 5, 125, 126, 300, 65_535, 65_536, 200_000])
@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_each_binary_message_is_kept_once_however_its_bytes_arrive(size: int, chunk: int) -> None:
    payloads = [bytes([n]) * size for n in (1, 2, 3)]
    stream = b"".join(_server_frame(Opcode.BINARY, p) for p in payloads)
    timer, laptop, websocket = _timer()
    step = chunk if size < 1000 else max(chunk, 4096)  # bounded calls for large frames
    for at in range(0, len(stream), step):
        timer.data_received(stream[at : at + step])
    assert timer.problem is None
    assert laptop.kept == payloads
    assert websocket.data == []


def test_control_frames_go_to_websockets_as_they_came() -> None:
    ping = _server_frame(Opcode.PING, b"keepalive")
    close = _server_frame(Opcode.CLOSE, b"\x03\xe8bye")
    timer, laptop, websocket = _timer()
    timer.data_received(ping + _server_frame(Opcode.BINARY, b"live") + close)
    assert laptop.kept == [b"live"]
    assert websocket.data == [ping, close]


@pytest.mark.parametrize(
    "frame",
    [
        _server_frame(Opcode.TEXT, b"text"),
        _server_frame(Opcode.BINARY, b"part", fin=False),
        Frame(Opcode.BINARY, b"masked").serialize(mask=True),
    ],
    ids=["text", "fragment", "masked"],
)
def test_what_it_cannot_count_is_a_problem_and_nothing_after_it_counts(frame: bytes) -> None:
    timer, laptop, _websocket = _timer()
    timer.data_received(frame + _server_frame(Opcode.BINARY, b"after"))
    assert timer.problem is not None
    assert laptop.kept == []


def test_connection_events_reach_websockets() -> None:
    seen: list[Any] = []

    class Watching(_Websocket):
        def connection_lost(self, exc: Exception | None) -> None:
            seen.append(("lost", exc))

        def eof_received(self) -> bool | None:
            seen.append("eof")
            return None

    websocket = Watching()
    timer = FrameTimer(_Laptop(), websocket)  # type: ignore[arg-type]
    timer.eof_received()
    timer.connection_lost(None)
    assert seen == ["eof", ("lost", None)]
