"""Laptops of ``bench_server_scale``'s many-laptops case, in a process of their own.

``python -m benchmarks.fanout_clients COUNT FIRST URL [URL ...]`` joins ``COUNT``
laptops (the ``k``-th on ``URL[(FIRST + k) % len(URLs)]``), subscribes them and
prints ``{"ready": COUNT}``; then answers one line per command on its standard input:

* ``wait N``: once every laptop has received ``N`` live updates, the time each
  received its ``N``-th (``time.perf_counter``, the system's monotonic clock, the
  same in every process of this machine): ``{"arrivals": [...]}``;
* ``cpu``: this process's CPU time so far, ``{"cpu_s": ...}``;
* ``stop`` (or the end of input): close every laptop and exit.

Several such processes share the laptops so that their decoding, not the server,
is not what the fan-out's time measures (see ``bench_server_scale``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from benchmarks.bench_sync import Counted, RawLaptop

JOIN_AT_ONCE = 20  # logins in flight at once per process
MAX_COMMANDS = 1_000_000  # commands answered at most (each wait bounded by LIMIT_S)


async def serve(count: int, first: int, urls: list[str]) -> None:
    laptops: list[RawLaptop] = []
    for start in range(0, count, JOIN_AT_ONCE):
        batch = range(start, min(count, start + JOIN_AT_ONCE))
        laptops.extend(
            await asyncio.gather(*(RawLaptop.join(urls[(first + k) % len(urls)]) for k in batch))
        )
    arrived = Counted()
    for laptop in laptops:
        laptop.on_live = arrived
        laptop.protocol.subscribe(0)
        await laptop.flush()
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
                await arrived.wait_until(lambda n=n: all(len(x.received) >= n for x in laptops))
                arrivals = [x.received[n - 1] for x in laptops]
                print(json.dumps({"arrivals": arrivals}), flush=True)
    finally:
        await asyncio.gather(*(laptop.close() for laptop in laptops))


def main(argv: list[str]) -> int:
    count, first, *urls = argv
    asyncio.run(serve(int(count), int(first), urls))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
