"""The server as it grows: SQLite, PostgreSQL, and two processes on one PostgreSQL database.

Three clinics, each a server database with its ``caresync serve`` processes in
processes of their own (``benchmarks/sync_peer.py``), the laptops in this process:

* ``sqlite``: one process on an SQLite file (the embedded default);
* ``postgres``: one process on a PostgreSQL database;
* ``postgres x2``: two processes on one PostgreSQL database, the laptops spread
  over both (a laptop's updates reach laptops of the other process through the
  database: LISTEN/NOTIFY, then a feed read).

Cases, on each clinic:

* **latency to 50 laptops**: one laptop writes (on the first process), 50
  subscribed laptops receive; each delivery is a sample (edit sent → update
  received), and the time until the last of the 50 has it; :data:`ROUNDS` rounds,
  the median of each round's figure reported with its min and max;
* **sustained edits/s with 50 laptops writing at once**: as in ``bench_sync``, each
  laptop pushes at a fixed rate and receives everyone's; every acknowledged edit
  is then looked for in the database (none may be missing);
* **many connected laptops** (2,000): every laptop logs in, enrols and subscribes;
  then one laptop writes, edit after edit, and each edit's fan-out is timed until
  the last laptop has it; each server's resident memory is read before the
  laptops connect, once they are connected and after each round (flat means the
  live path keeps nothing per edit).

Laptops here are protocol clients (``ClientProtocol`` over a websocket) that decode
what they receive and keep nothing: the figures are the servers'. This machine
has 2 cores for the servers and this client process together, so the two-process
clinic gains no core of its own: it shows what a second process costs, not what
a second machine gains. Accounts are made with a cheap argon2id (1 pass, 1 MiB)
so that 2,000 logins measure the server, not password hashing (a real account's
check costs about 0.1 s of one core: see ``bench_login``).

Without a PostgreSQL server (``CARESYNC_TEST_POSTGRES``, default
``postgresql://postgres@127.0.0.1:5432/test``) the PostgreSQL clinics are left
out, and the results say so; with ``CARESYNC_REQUIRE_POSTGRES=1`` that is an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from argon2 import PasswordHasher

from benchmarks.bench_sync import (
    LIMIT_S,
    ORG,
    PASSWORD,
    USER,
    Counted,
    EditMaker,
    RawLaptop,
    ServerProcess,
    pace,
    pct,
)
from benchmarks.common import parse_args, write_results
from caresync.protocol import PushAck
from caresync.server import SyncServer

ROUNDS = 5
TINY_ROUNDS = 2  # --tiny: enough for a median of rounds, the code run through, not measured
LAPTOP_PROCESSES = 4  # processes sharing the 2,000 laptops (see many_laptops_case)
JOIN_AT_ONCE = 20  # logins in flight at once (the server bounds pending logins)
_CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
_DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


# ------------------------------------------------------------------------ clinics


class Clinic:
    """A server database and the processes serving it."""

    def __init__(
        self, name: str, database: str, processes: list[ServerProcess], rounds: int = ROUNDS
    ) -> None:
        self.name = name
        self.database = database
        self.processes = processes
        self.rounds = rounds
        """How many rounds each case measures."""

    def url_for(self, k: int) -> str:
        """The server the ``k``-th laptop connects to: spread over the processes."""
        return self.processes[k % len(self.processes)].url

    async def rss_kb(self) -> int:
        """The servers' resident memory now, summed over the processes (KiB)."""
        return sum([int((await p.stats())["VmRSS"]) for p in self.processes])

    async def fan_out_s(self) -> float:
        """The time the servers spent in their fan-out so far, summed over the processes."""
        return sum([float((await p.stats())["fan_out_s"]) for p in self.processes])

    async def cpu_s(self) -> float:
        """The CPU time the servers used so far, summed over the processes."""
        return sum([float((await p.stats())["cpu_s"]) for p in self.processes])

    async def stop(self) -> None:
        for process in self.processes:
            await process.stop()

    def feed_updates(self) -> set[bytes]:
        """Every update in the server's change feed (after the servers stopped)."""
        if self.database.startswith("postgresql://"):
            import psycopg

            with psycopg.connect(self.database) as conn:
                return {bytes(r[0]) for r in conn.execute("SELECT data FROM feed")}
        with contextlib.closing(sqlite3.connect(self.database)) as conn:
            return {bytes(r[0]) for r in conn.execute("SELECT data FROM feed")}


def postgres_server() -> str | None:
    """The PostgreSQL server's URL, or None when none answers (an error if required)."""
    url = os.environ.get("CARESYNC_TEST_POSTGRES") or _DEFAULT_POSTGRES
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=5):
            return url
    except Exception as exc:  # no driver or no server: the PostgreSQL clinics are left out
        if os.environ.get("CARESYNC_REQUIRE_POSTGRES") == "1":
            raise RuntimeError(f"no PostgreSQL at {url}: {exc}") from exc
        return None


@contextlib.asynccontextmanager
async def postgres_database(server: str) -> AsyncIterator[str]:
    """A new database on ``server`` for one clinic; dropped at the end."""
    import psycopg
    from psycopg import sql

    name = f"caresync_bench_{secrets.token_hex(6)}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextlib.asynccontextmanager
async def clinic(
    name: str, work: Path, postgres: str | None, rounds: int = ROUNDS
) -> AsyncIterator[Clinic]:
    """A new clinic of the named kind, its account made, its processes started."""
    async with contextlib.AsyncExitStack() as stack:
        if name == "sqlite":
            database = str(work / f"server-{secrets.token_hex(4)}.db")
        else:
            if postgres is None:
                raise RuntimeError("no PostgreSQL server")
            database = await stack.enter_async_context(postgres_database(postgres))
        server = await SyncServer.open(database, password_hasher=_CHEAP)
        await server.add_user(ORG, USER, PASSWORD)
        await server.close()
        processes: list[ServerProcess] = []
        for _ in range(2 if name.endswith("x2") else 1):
            process = ServerProcess("caresync", database)  # a URL is no Path
            stack.callback(process.kill)
            processes.append(process)
        yield Clinic(name, database, processes, rounds)


async def join_all(place: Clinic, count: int, first: int = 0) -> list[RawLaptop]:
    """``count`` new laptops, the ``k``-th on ``place.url_for(first + k)``."""
    laptops: list[RawLaptop] = []
    for start in range(0, count, JOIN_AT_ONCE):
        batch = range(start, min(count, start + JOIN_AT_ONCE))
        laptops.extend(
            await asyncio.gather(*(RawLaptop.join(place.url_for(first + k)) for k in batch))
        )
    return laptops


async def subscribe_all(laptops: list[RawLaptop], on_live: Counted) -> None:
    for laptop in laptops:
        laptop.on_live = on_live
        laptop.protocol.subscribe(0)
        await laptop.flush()


async def close_all(laptops: list[RawLaptop]) -> None:
    await asyncio.gather(*(laptop.close() for laptop in laptops))


# ------------------------------------------------------------------------- cases


def nearest_rank(values: list[float], q: float) -> float:
    """The ``q`` quantile by nearest rank: the ceil(q * n)-th smallest (of 100 values,
    p99 is the 99th; ``pct`` takes the 100th, the largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of per-round figures, in ms."""
    return {
        "median_ms": round(statistics.median(values) * 1000, 2),
        "min_ms": round(min(values) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
    }


Arrivals = Callable[[int], Awaitable[list[float]]]
"""Given how many edits every reader has had so far, once each has them all, the time
(``time.perf_counter``) each reader received the last."""


async def fan_out_rounds(
    place: Clinic,
    writer: RawLaptop,
    arrivals_of: Arrivals,
    edits: int,
    after_round: Callable[[], Awaitable[None]] | None = None,
    client_cpu_s: Callable[[], Awaitable[float]] | None = None,
) -> dict[str, Any]:
    """``place.rounds`` rounds of ``edits`` edits, one at a time, each awaited at every reader.

    Beside the times: the servers' CPU time per edit (all processes), which the
    laptops' own decoding, in this process, does not inflate; the time the servers
    spent in their fan-out per edit (wall time, summed over processes: writing the edit
    to every connection written at once, queueing it for the others); and, given
    ``client_cpu_s``, the laptops' processes' CPU time per edit.
    """
    maker = EditMaker(writer.replica_id)
    prepared = maker.make(edits * place.rounds - 1)  # the record's creation is the first edit
    seq = 0
    per_delivery_p99: list[float] = []
    per_delivery_median: list[float] = []
    last_median: list[float] = []
    last_p99: list[float] = []
    cpu_per_edit: list[float] = []
    fan_out_per_edit: list[float] = []
    client_cpu_per_edit: list[float] = []
    every_last: list[float] = []  # each edit's last arrival, every round, in order
    for round_ in range(place.rounds):
        samples: list[float] = []
        last: list[float] = []
        cpu_before = await place.cpu_s()
        fan_out_before = await place.fan_out_s()
        client_before = await client_cpu_s() if client_cpu_s is not None else 0.0
        for rid, update in prepared[round_ * edits : (round_ + 1) * edits]:
            seq += 1
            t0 = time.perf_counter()
            writer.protocol.push([(seq, rid, update)])
            await writer.flush()
            arrivals = [t - t0 for t in await arrivals_of(seq)]
            await writer.expect(PushAck)
            samples.extend(arrivals)
            last.append(max(arrivals))
        cpu_per_edit.append((await place.cpu_s() - cpu_before) / edits)
        fan_out_per_edit.append((await place.fan_out_s() - fan_out_before) / edits)
        if client_cpu_s is not None:
            client_cpu_per_edit.append((await client_cpu_s() - client_before) / edits)
        per_delivery_median.append(statistics.median(samples))
        per_delivery_p99.append(pct(samples, 0.99))
        last_median.append(statistics.median(last))
        last_p99.append(pct(last, 0.99))
        every_last.extend(last)
        if after_round is not None:
            await after_round()
    return {
        "delivery_median": spread(per_delivery_median),
        "delivery_p99": spread(per_delivery_p99),
        "last_laptop_median": spread(last_median),
        # Each round's p99 of its edits (of 20: the slowest), median of the rounds.
        "last_laptop_p99": spread(last_p99),
        # The same over every edit of every round at once (the first edit after the
        # laptops connected included, which a median of rounds can leave out).
        "last_laptop_every_edit": {
            "edits": len(every_last),
            "p99_ms": round(nearest_rank(every_last, 0.99) * 1000, 2),
            "max_ms": round(max(every_last) * 1000, 2),
            "first_edit_ms": round(every_last[0] * 1000, 2),
        },
        "server_cpu_per_edit": spread(cpu_per_edit),
        "server_fan_out_per_edit": spread(fan_out_per_edit),
        **(
            {"laptops_cpu_per_edit": spread(client_cpu_per_edit)}
            if client_cpu_s is not None
            else {}
        ),
        "rounds": place.rounds,
        "edits_per_round": edits,
    }


def arrivals_in_process(readers: list[RawLaptop], arrived: Counted) -> Arrivals:
    """:data:`Arrivals` of laptops in this process (each receives every edit)."""

    async def arrivals_of(n: int) -> list[float]:
        await arrived.wait_until(lambda: all(len(r.received) >= n for r in readers))
        return [r.received[n - 1] for r in readers]

    return arrivals_of


class ClientProcess:
    """Laptops in a process of their own (``benchmarks/fanout_clients.py``)."""

    def __init__(
        self, count: int, first: int, urls: list[str], *, decode_at_arrival: bool = False
    ) -> None:
        how = ["--decode-at-arrival"] if decode_at_arrival else []
        command = [sys.executable, "-m", "benchmarks.fanout_clients", *how, str(count)]
        self.proc = subprocess.Popen(
            [*command, str(first), *urls],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parent.parent,
        )

    def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("a laptops' process exited early")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def answer(self) -> dict[str, Any]:
        async with asyncio.timeout(LIMIT_S):
            return await asyncio.to_thread(self._line)

    async def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return await self.answer()

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        await asyncio.to_thread(self.proc.wait, LIMIT_S)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def latency_case(place: Clinic, laptops: int, edits: int) -> dict[str, Any]:
    clients = await join_all(place, laptops + 1)
    writer, readers = clients[0], clients[1:]
    arrived = Counted()
    await subscribe_all(readers, arrived)
    try:
        figures = await fan_out_rounds(place, writer, arrivals_in_process(readers, arrived), edits)
    finally:
        await close_all(clients)
    return {
        "case": f"latency of an edit reaching {laptops} connected laptops",
        "clinic": place.name,
        **figures,
    }


async def throughput_case(
    place: Clinic, laptops: int, rate: float, seconds: float
) -> dict[str, Any]:
    """Every laptop pushes at ``rate`` edits/s; ``place.rounds`` runs of ``seconds``."""
    clients = await join_all(place, laptops)
    arrived = Counted()
    await subscribe_all(clients, arrived)
    per_laptop = int(rate * seconds * place.rounds * 1.5) + 10
    prepared = [EditMaker(c.replica_id).make(per_laptop) for c in clients]
    made = [0] * laptops
    acked = [0] * laptops
    wake = [asyncio.Event() for _ in range(laptops)]
    draining = asyncio.Event()

    async def pusher(i: int) -> None:
        client = clients[i]
        while True:
            if made[i] > acked[i]:
                client.protocol.push(
                    [(seq + 1, *prepared[i][seq]) for seq in range(acked[i], made[i])]
                )
                ack = await client.expect(PushAck)
                acked[i] = ack.up_to_local_seq
            elif draining.is_set():
                return
            else:
                wake[i].clear()
                await wake[i].wait()  # set by the writer when it makes an edit

    async def writer(i: int) -> None:
        async def tick(due: int) -> None:
            made[i] = min(len(prepared[i]), made[i] + due)
            wake[i].set()

        await pace(rate, seconds, tick)

    pushers = [asyncio.create_task(pusher(i)) for i in range(laptops)]
    acknowledged: list[float] = []
    delivered: list[float] = []
    try:
        for _ in range(place.rounds):
            acked_before, received_before = sum(acked), arrived.count
            t0 = time.perf_counter()
            await asyncio.gather(*(writer(i) for i in range(laptops)))
            elapsed = time.perf_counter() - t0
            acknowledged.append((sum(acked) - acked_before) / elapsed)
            delivered.append((arrived.count - received_before) / elapsed)
        # No more edits: each pusher sends what is left, has it acknowledged, and ends.
        draining.set()
        for event in wake:
            event.set()
        async with asyncio.timeout(LIMIT_S):
            await asyncio.gather(*pushers)
    finally:
        for task in pushers:
            task.cancel()
        await asyncio.gather(*pushers, return_exceptions=True)
        await close_all(clients)
    await place.stop()
    stored = place.feed_updates()
    lost = sum(
        1 for i in range(laptops) for seq in range(acked[i]) if prepared[i][seq][1] not in stored
    )
    return {
        "case": f"sustained edits/s, {laptops} laptops writing at once",
        "clinic": place.name,
        "offered_per_s": round(rate * laptops),
        "acknowledged_per_s": _rates(acknowledged),
        "delivered_live_per_s": _rates(delivered),
        "acknowledged": sum(acked),
        "acknowledged_then_lost": lost,
        "rounds": place.rounds,
    }


def _rates(values: list[float]) -> dict[str, int]:
    return {
        "median": round(statistics.median(values)),
        "min": round(min(values)),
        "max": round(max(values)),
    }


async def many_laptops_case(
    place: Clinic, laptops: int, edits: int, processes: int, *, decode_at_arrival: bool = False
) -> dict[str, Any]:
    """The fan-out to ``laptops`` laptops spread over ``processes`` processes of their
    own (:class:`ClientProcess`), so that their decoding is not one process's queue;
    the writer is in this process. Each laptop decodes what it received once all of
    its process's have it (``fanout_clients``), or, ``decode_at_arrival``, as it
    arrives, delaying the arrivals at the laptops of its process after it."""
    memory = {"before_laptops_kb": await place.rss_kb()}
    t0 = time.perf_counter()
    writer = (await join_all(place, 1))[0]
    shares = [laptops // processes + (p < laptops % processes) for p in range(processes)]
    firsts = [1 + sum(shares[:p]) for p in range(processes)]
    urls = [p.url for p in place.processes]
    clients = [
        ClientProcess(n, first, urls, decode_at_arrival=decode_at_arrival)
        for n, first in zip(shares, firsts, strict=True)
    ]
    try:
        for client in clients:
            await client.answer()  # ready: joined and subscribed
        joined_s = time.perf_counter() - t0
        memory["connected_kb"] = await place.rss_kb()
        after_rounds: list[int] = []

        async def measure() -> None:
            after_rounds.append(await place.rss_kb())

        async def arrivals_of(n: int) -> list[float]:
            answers = await asyncio.gather(*(c.ask(f"wait {n}") for c in clients))
            return [t for answer in answers for t in answer["arrivals"]]

        async def client_cpu_s() -> float:
            answers = await asyncio.gather(*(c.ask("cpu") for c in clients))
            return sum(float(answer["cpu_s"]) for answer in answers)

        figures = await fan_out_rounds(place, writer, arrivals_of, edits, measure, client_cpu_s)
        for client in clients:
            await client.stop()
    finally:
        for client in clients:
            client.kill()
        await writer.close()
    return {
        "case": f"fan-out of an edit to {laptops} connected laptops",
        "clinic": place.name,
        "laptop_processes": processes,
        "laptops_decode": "as each frame arrives" if decode_at_arrival else "once all have it",
        "laptops_joined_in_s": round(joined_s, 1),
        **figures,
        "server_rss_kb": {**memory, "after_each_round_kb": after_rounds},
        "per_laptop_kb": round((memory["connected_kb"] - memory["before_laptops_kb"]) / laptops, 1),
    }


# -------------------------------------------------------------------------- main


async def run(tiny: bool) -> list[dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    postgres = postgres_server()
    names = ["sqlite"] + ([] if postgres is None else ["postgres", "postgres x2"])
    laptops, edits = (3, 2) if tiny else (50, 40)
    many, many_edits = (10, 2) if tiny else (2000, 20)
    processes = 2 if tiny else LAPTOP_PROCESSES
    rate, seconds = (10.0, 0.3) if tiny else (20.0, 3.0)
    rounds = TINY_ROUNDS if tiny else ROUNDS
    cases: list[dict[str, Any]] = []
    if postgres is None:
        cases.append({"case": "PostgreSQL clinics", "left_out": "no PostgreSQL server answered"})
    try:
        for name in names:
            async with clinic(name, work, postgres, rounds) as place:
                cases.append(await latency_case(place, laptops, edits))
            async with clinic(name, work, postgres, rounds) as place:
                cases.append(await many_laptops_case(place, many, many_edits, processes))
            if name == "sqlite":
                # The way of session 26 and before, for comparison in the same run.
                async with clinic(name, work, postgres, rounds) as place:
                    cases.append(
                        await many_laptops_case(
                            place, many, many_edits, processes, decode_at_arrival=True
                        )
                    )
            async with clinic(name, work, postgres, rounds) as place:
                cases.append(await throughput_case(place, laptops, rate, seconds))
        return cases
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, "server_scale")
    cases = asyncio.run(run(args.tiny))
    write_results(args.out, "server_scale", cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
