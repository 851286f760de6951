"""Laptops of ``bench_server_scale``'s many-laptops case, in a process of their own.

``python -m benchmarks.fanout_clients [--decode-at-arrival] COUNT FIRST URL [URL ...]``
joins ``COUNT`` laptops (the ``k``-th on ``URL[(FIRST + k) % len(URLs)]``), subscribes
them and prints ``{"ready": COUNT}``; then answers one line per command on its
standard input:

* ``wait N``: once every laptop has received ``N`` live updates, the time each
  received its ``N``-th (``time.perf_counter``, the system's monotonic clock, the
  same in every process of this machine): ``{"arrivals": [...]}``;
* ``cpu``: this process's CPU time so far, ``{"cpu_s": ...}``;
* ``stop`` (or the end of input): close every laptop and exit.

Several such processes share the laptops so that their decoding, not the server,
is not what the fan-out's time measures (see ``bench_server_scale``).

Each laptop joins, logs in and subscribes through websockets and caresync's
``ClientProtocol``; then :class:`FrameTimer` reads the server's websocket frames off its
socket itself, times each binary message as it is complete and keeps it; every
laptop decodes what it kept (``RawLaptop.decode_kept``, every check of the protocol,
each frame the live update of the edit awaited) once all of its process's have the
edit, before answering ``wait N``. So no laptop's reading delays another's arrival
beyond the bytes' own way through the kernel, as it would not when each laptop is a
machine of its own (here the 2,000 share the server's 2 cores). Control frames
(ping, pong, close) go to websockets as they came. The process runs at a lower
priority than the server (:data:`LAPTOPS_NICENESS`), for the same reason.

``--decode-at-arrival`` is the way of session 26 and before: each laptop reads
through websockets and decodes each frame as it arrives, before it is timed, at the
server's priority.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time

from benchmarks.bench_sync import Counted, RawLaptop
from caresync.protocol import PullBatch

JOIN_AT_ONCE = 20  # logins in flight at once per process
MAX_COMMANDS = 1_000_000  # commands answered at most (each wait bounded by LIMIT_S)
LAPTOPS_NICENESS = 10  # added to this process's niceness (see main)
_BINARY_WHOLE = 0x82  # FIN and opcode 2: a binary message in one frame
_CONTROL = 0x08  # opcodes 8 to 15: close, ping, pong


class FrameTimer(asyncio.Protocol):
    """Reads a laptop's open websocket connection in websockets' place: each
    unfragmented binary message goes to ``RawLaptop.keep`` as it is complete; control
    frames go to websockets' own protocol (which answers pings and closes); anything
    else (text, fragments, a masked frame) is recorded in :attr:`problem` and the
    laptop's messages no longer counted, so that its ``wait`` fails."""

    def __init__(self, laptop: RawLaptop, websocket: asyncio.Protocol) -> None:
        self._laptop = laptop
        self._websocket = websocket
        self._buffer = bytearray()
        self.problem: str | None = None

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while self.problem is None and len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            length, start = second & 0x7F, 2
            if length == 126:
                length, start = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                length, start = int.from_bytes(buffer[2:10], "big"), 10
            end = start + length
            if len(buffer) < end or len(buffer) < start:
                return
            if second & 0x80:
                self.problem = "the server masked a frame"
            elif first == _BINARY_WHOLE:
                self._laptop.keep(bytes(buffer[start:end]))
            elif first & _CONTROL:
                self._websocket.data_received(bytes(buffer[:end]))
            else:
                self.problem = f"a frame of first byte {first:#x}, not a whole binary message"
            del buffer[:end]

    def eof_received(self) -> bool | None:
        return self._websocket.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._websocket.connection_lost(exc)

    def pause_writing(self) -> None:
        self._websocket.pause_writing()

    def resume_writing(self) -> None:
        self._websocket.resume_writing()


async def read_frames_here(laptop: RawLaptop) -> FrameTimer:
    """Stop ``laptop``'s websockets reader and read its connection with a
    :class:`FrameTimer` (nothing may be on its way: subscribed, no edit made yet)."""
    if laptop.reader is not None:
        laptop.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await laptop.reader
        laptop.reader = None
    websocket = laptop.channel._connection  # type: ignore[attr-defined]
    timer = FrameTimer(laptop, websocket)
    websocket.transport.set_protocol(timer)
    return timer


def checked_arrivals(
    laptops: list[RawLaptop], timers: list[FrameTimer], n: int, *, decode: bool
) -> list[float]:
    """Once every laptop has ``n`` arrivals: the time each had its ``n``-th; ``decode``,
    after every laptop decoded what it kept, each frame the live update of an edit."""
    arrivals = [x.received[n - 1] for x in laptops]
    problems = {t.problem for t in timers if t.problem is not None}
    if problems:
        raise RuntimeError(f"a laptop's connection: {sorted(problems)}")
    if decode:
        for laptop in laptops:
            laptop.decode_kept()
            seqs = laptop.live_seqs
            if len(seqs) != n or (n > 1 and seqs[-2] >= seqs[-1]):
                raise RuntimeError(f"a laptop holds {len(seqs)} live updates, not {n}")
            # Each stamp a kept frame's: one stamped otherwise (by websockets' reader,
            # before FrameTimer took over) would make the n-th stamp an earlier edit's.
            if len(laptop.received) != n:
                raise RuntimeError(f"a laptop has {len(laptop.received)} stamps for {n} frames")
    return arrivals


async def serve(count: int, first: int, urls: list[str], *, decode_at_arrival: bool) -> None:
    laptops: list[RawLaptop] = []
    for start in range(0, count, JOIN_AT_ONCE):
        batch = range(start, min(count, start + JOIN_AT_ONCE))
        laptops.extend(
            await asyncio.gather(*(RawLaptop.join(urls[(first + k) % len(urls)]) for k in batch))
        )
    arrived = Counted()
    timers: list[FrameTimer] = []
    for laptop in laptops:
        laptop.on_live = arrived
        laptop.protocol.subscribe(0)
        # The server serves a connection's messages in order: the pull's answer says
        # its Subscribe was served (its backlog read), so "ready" means subscribed on
        # the server's side too, and the first edit does not wait behind the last
        # laptops' subscriptions.
        laptop.protocol.request_pull(0)
        await laptop.flush()
    answers = await asyncio.gather(*(laptop.expect(PullBatch) for laptop in laptops))
    if any(answer.items for answer in answers):
        raise RuntimeError("a laptop pulled entries from a feed that should be empty")
    if not decode_at_arrival:
        for laptop in laptops:
            timers.append(await read_frames_here(laptop))
    print(json.dumps({"ready": count}), flush=True)
    loop = asyncio.get_running_loop()
    try:
        for _ in range(MAX_COMMANDS):
            line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not line or line[0] == "stop":
                return
            if line[0] == "cpu":
                print(json.dumps({"cpu_s": time.process_time()}), flush=True)
            elif line[0] == "wait":
                n = int(line[1])
                # Every laptop gets one frame an edit: look at each only once the count
                # says all may be in (not at every arrival: that is laptops² a round).
                await arrived.wait_until(
                    lambda n=n: (
                        arrived.count >= n * len(laptops)
                        and all(len(x.received) >= n for x in laptops)
                    )
                )
                arrivals = checked_arrivals(laptops, timers, n, decode=not decode_at_arrival)
                print(json.dumps({"arrivals": arrivals}), flush=True)
    finally:
        for laptop in laptops[: len(timers)]:
            websocket = laptop.channel._connection  # type: ignore[attr-defined]
            websocket.transport.set_protocol(websocket)  # websockets closes it
        await asyncio.gather(*(laptop.close() for laptop in laptops))


def main(argv: list[str]) -> int:
    decode_at_arrival = argv[:1] == ["--decode-at-arrival"]
    count, first, *urls = argv[1:] if decode_at_arrival else argv
    if not decode_at_arrival:
        # The laptops yield the cores to the server while it writes: as laptops that
        # are machines of their own would not take its CPU. Their arrivals are timed
        # when they run, so waiting for a core makes them later, never earlier.
        os.nice(LAPTOPS_NICENESS)
    asyncio.run(serve(int(count), int(first), urls, decode_at_arrival=decode_at_arrival))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
