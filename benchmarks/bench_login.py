"""What a password guesser gets from a server, with and without login throttling.

A real server on 127.0.0.1 (SQLite, argon2id with the library's defaults) and
an attacker on the same machine, in the same run:

* **guesses per second** against one account, from one address, in a 10 s
  window (5 runs, each on a new server; median, min and max), with the throttle
  off (what the server did before the trust-nothing work) and on (the default
  :class:`caresync.throttle.LoginThrottle`); four connections at once;
* **the cost of an answer** for an unknown user and for a wrong password
  (medians of N, with min and max): equal costs tell an attacker nothing about
  which accounts exist.

Each guess is a whole login: connect, Hello, the server's proof, Authenticate,
the refusal. Loopback only; every loop ends by count or by time.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import parse_args, write_results
from caresync.exceptions import CaresyncError
from caresync.protocol import Authenticated, ClientProtocol, ErrorCode, ServerProof, Welcome
from caresync.server import SyncServer
from caresync.throttle import LoginThrottle
from caresync.transport import connect_websocket

ORG, USER, PASSWORD = "clinic", "dr.a", "a long clinic passphrase"


async def _guess(url: str, username: str, password: str) -> str:
    """One whole login attempt; the server's answer (an error code, or "ok")."""
    channel = await connect_websocket(url)
    protocol = ClientProtocol()
    try:
        protocol.send_hello()
        for expected in (Welcome, ServerProof):
            for frame in protocol.data_to_send():
                await channel.send(frame)
            protocol.receive_data(await channel.recv())
            [event] = protocol.events_received()
            if not isinstance(event, expected):
                return f"unexpected {type(event).__name__}"
            if expected is Welcome:
                protocol.prove_server(os.urandom(32))
        protocol.confirm_server()  # a guesser does not care who answers
        protocol.authenticate(username, password, ORG)
        for frame in protocol.data_to_send():
            await channel.send(frame)
        try:
            protocol.receive_data(await channel.recv())
        except CaresyncError:
            error = protocol.peer_error
            return error.code if error is not None else "closed"
        events = protocol.events_received()
        return "ok" if any(isinstance(e, Authenticated) for e in events) else "other"
    finally:
        await channel.close()


async def _guessing(url: str, seconds: float, attackers: int) -> dict[str, int]:
    """Wrong passwords for one account for ``seconds``; the answers, counted."""
    answers: dict[str, int] = {}
    deadline = time.perf_counter() + seconds

    async def attacker(n: int) -> None:
        tries = 0
        while time.perf_counter() < deadline and tries < 100_000:
            tries += 1
            answer = await _guess(url, USER, f"guess-{n}-{tries}")
            answers[answer] = answers.get(answer, 0) + 1

    await asyncio.gather(*(attacker(n) for n in range(attackers)))
    return answers


async def _answer_costs(url: str, username: str, count: int) -> list[float]:
    costs = []
    for n in range(count):
        start = time.perf_counter()
        await _guess(url, username, f"wrong-{n}")
        costs.append((time.perf_counter() - start) * 1000)
    return costs


async def _server(folder: Path, name: str, throttle: LoginThrottle | None) -> SyncServer:
    server = await SyncServer.open(folder / f"{name}.db", throttle=throttle)
    await server.add_user(ORG, USER, PASSWORD)
    await server.serve("127.0.0.1", 0)
    return server


def _summary(costs: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(costs), 2),
        "min_ms": round(min(costs), 2),
        "max_ms": round(max(costs), 2),
    }


async def run(tiny: bool) -> list[dict[str, Any]]:
    seconds = 0.5 if tiny else 10.0
    runs = 1 if tiny else 5
    samples = 3 if tiny else 25
    attackers = 4
    cases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for label in ("throttle off", "throttle on (default)"):
            rates: list[float] = []
            refused: list[int] = []
            for n in range(runs):  # a new server each run: the throttle starts afresh
                throttle = None if label == "throttle off" else LoginThrottle()
                server = await _server(folder, f"{label.split()[1]}-{n}", throttle)
                try:
                    answers = await _guessing(server.url, seconds, attackers)
                    rates.append(answers.get(ErrorCode.BAD_CREDENTIALS, 0) / seconds)
                    refused.append(answers.get(ErrorCode.THROTTLED, 0))
                    if throttle is None and n == 0:
                        unknown = await _answer_costs(server.url, "nobody-here", samples)
                        wrong = await _answer_costs(server.url, USER, samples)
                        cases.append({"case": "answer to an unknown user", **_summary(unknown)})
                        cases.append({"case": "answer to a wrong password", **_summary(wrong)})
                finally:
                    await server.close()
            cases.append(
                {
                    "case": f"passwords checked per second, one account, {label}",
                    "window_s": seconds,
                    "runs": runs,
                    "attackers": attackers,
                    "median": round(statistics.median(rates), 2),
                    "min": round(min(rates), 2),
                    "max": round(max(rates), 2),
                    "refused_unchecked_median": statistics.median(refused),
                }
            )
    return cases


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, "login")
    cases = asyncio.run(run(args.tiny))
    write_results(args.out, "login", cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
