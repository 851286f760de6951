"""Running the `caresync` command line as real subprocesses, for the CLI tests.

Every call is bounded in time; the server's URL is read from the line it
prints when it listens (no sleeps, no polling of the port).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import selectors
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PASSWORD = "correct horse battery staple"
COMMAND_TIMEOUT_S = 60.0
START_TIMEOUT_S = 30.0
LISTENING = "caresync server listening on "


@dataclass
class Result:
    """What a finished command did."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        """The one JSON object the command wrote (and nothing else on stdout)."""
        lines = self.stdout.splitlines()
        assert len(lines) == 1, f"expected one line of JSON, got {self.stdout!r}"
        data = json.loads(lines[0])
        assert isinstance(data, dict)
        return data

    def ok(self) -> Result:
        assert self.code == 0, f"exit {self.code}: {self.stderr}"
        return self

    def error_line(self) -> str:
        """The one-line error a failed command printed (no traceback)."""
        lines = self.stderr.strip().splitlines()
        assert self.code != 0
        assert len(lines) == 1, f"expected one error line, got {self.stderr!r}"
        assert "Traceback" not in self.stderr
        return lines[0]


def env(password: str | None = PASSWORD, **extra: str) -> dict[str, str]:
    """The environment of a command: CARESYNC_PASSWORD set (or removed with None)."""
    result = {k: v for k, v in os.environ.items() if k not in ("CARESYNC_PASSWORD",)}
    if password is not None:
        result["CARESYNC_PASSWORD"] = password
    result.update(extra)
    return result


def cli(*args: str | Path, password: str | None = PASSWORD, cwd: Path | None = None) -> Result:
    """Run ``python -m caresync ARGS`` to completion (stdin closed: nothing to prompt on)."""
    done = subprocess.run(
        [sys.executable, "-m", "caresync", *map(str, args)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env(password),
        timeout=COMMAND_TIMEOUT_S,
        cwd=cwd,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def digest(path: Path) -> str:
    """SHA-256 of a file's bytes (to show a refused command left it untouched)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_at(path: Path) -> list[str]:
    """The database at ``path`` and every file beside it that starts with its name."""
    return sorted(p.name for p in path.parent.glob(path.name + "*"))


class ServerProcess:
    """`caresync serve` in a subprocess on 127.0.0.1, port 0; the URL read from its stdout."""

    def __init__(self, db: Path, *extra: str) -> None:
        self.db = db
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "caresync", "serve", "--db", str(db), "--port", "0", *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env(),
        )
        self.url = ""
        # The server logs on standard error as it runs: read it as it comes, or a
        # full pipe would stop the server mid-test.
        self._err = bytearray()
        self._logged = threading.Condition()
        self._err_reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._err_reader.start()
        try:
            line = read_line(self.proc, START_TIMEOUT_S)
            assert line.startswith(LISTENING), line
            self.url = line[len(LISTENING) :].strip()
        except BaseException:
            self.kill()
            raise

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for chunk in iter(lambda: self.proc.stderr.read1(65536), b""):  # type: ignore[union-attr]
            with self._logged:
                self._err.extend(chunk)
                self._logged.notify_all()

    def wait_log(self, text: str, count: int = 1, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the server's log holds ``text`` ``count`` times (woken by each write)."""
        with self._logged:
            done = self._logged.wait_for(lambda: self.stderr.count(text) >= count, timeout)
        assert done, f"the server never logged {text!r} {count} time(s): {self.stderr[-2000:]}"

    @property
    def stderr(self) -> str:
        """What the server wrote on standard error so far (its log)."""
        return self._err.decode(errors="replace")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        """Signal the server and wait for it; returns its exit code and standard error."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=COMMAND_TIMEOUT_S)
            self._err_reader.join(timeout=COMMAND_TIMEOUT_S)  # ends at the pipe's end
        finally:
            self.kill()
        return self.proc.returncode, self.stderr

    def kill(self) -> None:
        """SIGKILL (no clean shutdown), and reap the process."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=COMMAND_TIMEOUT_S)
        self._err_reader.join(timeout=COMMAND_TIMEOUT_S)  # the pipe ends with the process
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The first line the process writes on stdout, waiting at most ``timeout`` seconds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line from the server within {timeout}s: {buffer!r}")
            if not selector.select(left):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"the server exited ({proc.wait()}): {err}")
            buffer += chunk
    return buffer.split(b"\n", 1)[0].decode()


def run_main(*args: str | Path, password: str | None = PASSWORD) -> Result:
    """Run ``caresync.cli.main(ARGS)`` in this process (cheap cases that need no subprocess).

    Standard input is empty and not a terminal, as in :func:`cli`.
    """
    from caresync.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = os.environ.get("CARESYNC_PASSWORD")
    saved_stdin = sys.stdin
    try:
        if password is None:
            os.environ.pop("CARESYNC_PASSWORD", None)
        else:
            os.environ["CARESYNC_PASSWORD"] = password
        sys.stdin = io.StringIO("")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        sys.stdin = saved_stdin
        if saved is None:
            os.environ.pop("CARESYNC_PASSWORD", None)
        else:
            os.environ["CARESYNC_PASSWORD"] = saved
    return Result(code, out.getvalue(), err.getvalue())


def words(template: str, **values: object) -> list[str]:
    """A command line written as text: ``words("status --db {db}", db=path)``.

    Values are quoted, so paths and values with spaces stay one argument.
    """
    return shlex.split(template.format(**{k: shlex.quote(str(v)) for k, v in values.items()}))


def sh(template: str, *, password: str | None = PASSWORD, **values: object) -> Result:
    """:func:`cli` (a real subprocess) with a command line written as text."""
    return cli(*words(template, **values), password=password)


def inproc(template: str, *, password: str | None = PASSWORD, **values: object) -> Result:
    """:func:`run_main` (in this process) with a command line written as text."""
    return run_main(*words(template, **values), password=password)
