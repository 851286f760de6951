"""`caresync sync --live`: a laptop that stays connected prints each change of state, one
JSON object a line, and `caresync status` on the same laptop shows that state meanwhile.

Real parts: `caresync serve` and `caresync sync --live` as processes on 127.0.0.1, SQLite files.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.cli.clitools import COMMAND_TIMEOUT_S, ServerProcess, env, inproc

LINE_TIMEOUT_S = 30.0


class Lines:
    """The JSON lines a process writes on standard output, one at a time, each waited for
    at most LINE_TIMEOUT_S."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.buffer = b""

    def next(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + LINE_TIMEOUT_S
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self.buffer:
                left = deadline - time.monotonic()
                assert left > 0, f"no line within {LINE_TIMEOUT_S} s: {self.buffer!r}"
                if selector.select(left):
                    chunk = os.read(self.proc.stdout.fileno(), 4096)
                    assert chunk, f"the process ended ({self.proc.wait()})"
                    self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return dict(json.loads(line))

    def until(self, state: str) -> list[dict[str, Any]]:
        """Every line up to and with the first in ``state`` (at most 20 lines)."""
        seen = []
        for _ in range(20):
            seen.append(self.next())
            if seen[-1]["state"] == state:
                return seen
        raise AssertionError(f"never {state}: {seen}")


def test_a_live_laptop_prints_its_states_and_status_shows_them(tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    inproc("user add --db {db} --org clinic --username dr.a", db=db).ok()
    server = ServerProcess(db)
    laptop = tmp_path / "laptop.db"
    live: subprocess.Popen[bytes] | None = None
    try:
        inproc(
            "enrol --db {db} --server {url} --org clinic --username dr.a", db=laptop, url=server.url
        ).ok()
        inproc("record new --db {db}", db=laptop).ok()
        live = subprocess.Popen(
            [sys.executable, "-m", "caresync", "sync", "--db", str(laptop), "--live", "--json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env(),
        )
        lines = Lines(live)
        seen = lines.until("online")
        assert seen[-1]["pending"] == 0  # the new record went up on connecting
        assert "synchronising" in [line["state"] for line in seen]
        status = inproc("status --db {db} --json", db=laptop).ok().json()
        assert (status["state"], status["live"]) == ("online", True)
        # The server goes away: the laptop says so and keeps trying.
        code, err = server.stop()
        assert code == 0, err
        lines.until("offline")
        assert inproc("status --db {db} --json", db=laptop).ok().json()["state"] in (
            "offline",
            "connecting",
        )
        live.send_signal(signal.SIGTERM)
        assert lines.until("stopped")[-1] == {"state": "stopped", "pending": 0}
        assert live.wait(timeout=COMMAND_TIMEOUT_S) == 0
        status = inproc("status --db {db} --json", db=laptop).ok().json()
        assert (status["state"], status["live"]) == ("offline", False)
    finally:
        if live is not None and live.poll() is None:
            live.kill()
            live.wait(timeout=COMMAND_TIMEOUT_S)
        if live is not None and live.stdout is not None:
            live.stdout.close()
        server.kill()


def test_a_live_mark_left_by_a_killed_process_reads_as_not_live(tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    inproc("user add --db {db} --org clinic --username dr.a", db=db).ok()
    server = ServerProcess(db)
    laptop = tmp_path / "laptop.db"
    try:
        inproc(
            "enrol --db {db} --server {url} --org clinic --username dr.a", db=laptop, url=server.url
        ).ok()
        live = subprocess.Popen(
            [sys.executable, "-m", "caresync", "sync", "--db", str(laptop), "--live", "--json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env(),
        )
        try:
            Lines(live).until("online")
            live.kill()  # no clean stop: its mark stays
            live.wait(timeout=COMMAND_TIMEOUT_S)
        finally:
            if live.stdout is not None:
                live.stdout.close()
        status = inproc("status --db {db} --json", db=laptop).ok().json()
        assert (status["state"], status["live"]) == ("offline", False)
    finally:
        server.kill()
