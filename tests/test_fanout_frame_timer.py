"""The fan-out benchmark's frame reader (``benchmarks.fanout_clients.FrameTimer``):
it must count each whole binary message once, whatever way the bytes arrive, pass
control frames to websockets untouched, and refuse what it cannot count."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from benchmarks.fanout_clients import FrameTimer, checked_arrivals
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


class _Decoding:
    """A laptop as ``checked_arrivals`` sees it: its stamps, its kept frames' seqs."""

    def __init__(self, stamps: list[float], kept_seqs: list[int]) -> None:
        self.received = stamps
        self.live_seqs: list[int] = []
        self._kept = kept_seqs

    def decode_kept(self) -> None:
        self.live_seqs += self._kept
        self._kept = []


def test_the_arrivals_are_those_of_the_decoded_frames() -> None:
    laptop = _Decoding([1.0, 2.0], [7, 8])
    assert checked_arrivals([laptop], [], 2, decode=True) == [2.0]  # type: ignore[list-item]


def test_a_stamp_without_a_kept_frame_fails_the_wait() -> None:
    """A live update read before ``FrameTimer`` took over (by websockets' reader, which
    stamps as it decodes) is stamped but never kept: the ``n``-th stamp is then the
    edit before's, earlier than edit ``n``'s arrival, though ``n`` frames were decoded."""
    laptop = _Decoding([0.5, 1.0, 2.0], [7, 8])
    with pytest.raises(RuntimeError, match="stamp"):
        checked_arrivals([laptop], [], 2, decode=True)  # type: ignore[list-item]


@pytest.mark.parametrize("size", [5, 126, 300, 65_536, 70_000])
@pytest.mark.parametrize("cut", range(1, 12))
def test_a_message_is_kept_only_when_its_last_byte_is_in(size: int, cut: int) -> None:
    """The stamp is the moment of ``keep``: never before the whole frame is read, however
    the header (2, 4 or 10 bytes, the length itself split) and the payload are cut."""
    frame = _server_frame(Opcode.BINARY, bytes(size))
    stream = _server_frame(Opcode.PING, b"p") + frame
    start, cut = len(stream) - len(frame), min(cut, len(frame) - 1)
    timer, laptop, _websocket = _timer()
    for piece in (stream[: start + cut], stream[start + cut : -1]):
        timer.data_received(piece)
        assert laptop.kept == []
    timer.data_received(stream[-1:])
    assert laptop.kept == [bytes(size)]
    assert timer.problem is None
