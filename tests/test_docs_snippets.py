"""Every Python and shell snippet of README.md and docs/quickstart.md, run as a reader would.

Each document's snippets run in a temporary folder of their own, with the ``caresync`` and
``python`` of this environment first on PATH and no ``CARESYNC_PASSWORD`` set beforehand.
Python snippets run as scripts in a subprocess (the README's, which use ``asyncio.run``,
twice in the same folder: they must run again); a snippet that defines a test runs under
pytest, as the reader's own test file would. A document's shell snippets are one session:
the lines before ``caresync serve`` (the first terminal), the server itself, started here on
127.0.0.1 and a free port (``--port 0``; the documented ``8765`` is replaced by the port it
got), and the lines after it (the second terminal). Every run is bounded in time.

Snippets not run are listed in SKIPPED with the reason; each must still be in its document.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.cli.clitools import read_line

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ("README.md", "docs/quickstart.md")
TIMEOUT_S = 180
DOCUMENTED_URL = "ws://127.0.0.1:8765"
LISTENING = "caresync server listening on "
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)

SKIPPED = {
    "bash scripts/demo": "the demo at full size (20 laptops, 200 patients) and this very test "
    "suite (scripts/test): the demo runs at test size in tests/test_exports.py",
    "python -m venv .venv && .venv/bin/pip install -e .": "installs into a new virtualenv from "
    "the package index: scripts/bootstrap and scripts/pythons do exactly this",
    'pip install -e ".[postgres]"': "a clinic on a PostgreSQL server the reader has (a "
    "database `clinic` owned by `caresync`): tests/cli/test_cli_postgres.py runs these "
    "commands on the tests' own PostgreSQL database",
}
"""A fragment of each snippet not run here, and why."""


@dataclass
class Snippet:
    document: str
    language: str
    code: str
    line: int

    @property
    def name(self) -> str:
        return f"{self.document}:{self.line}"


def snippets(document: str) -> list[Snippet]:
    text = (ROOT / document).read_text()
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        found.append(Snippet(document, match.group(1), match.group(2), line))
    return found


def skipped(snippet: Snippet) -> bool:
    return any(fragment in snippet.code for fragment in SKIPPED)


def runnable(language: str) -> list[Snippet]:
    return [
        s
        for document in DOCUMENTS
        for s in snippets(document)
        if s.language == language and not skipped(s)
    ]


def environment() -> dict[str, str]:
    """This environment's commands first on PATH; no password set before a snippet sets it."""
    env = {k: v for k, v in os.environ.items() if k not in ("CARESYNC_PASSWORD", "PYTHONPATH")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_every_snippet_is_run_or_skipped_for_a_reason() -> None:
    every = [s for document in DOCUMENTS for s in snippets(document)]
    assert {s.language for s in every} <= {"bash", "python"}, "a snippet of another language"
    for fragment in SKIPPED:
        assert sum(fragment in s.code for s in every) >= 1, f"{fragment!r} is no longer there"
    assert runnable("python")
    assert runnable("bash")
    for snippet in runnable("python"):
        if "serve(" in snippet.code:  # only on 127.0.0.1, on a port the system picks
            assert 'serve("127.0.0.1", 0)' in snippet.code, snippet.name


def run(args: list[str], cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        **kwargs,
    )


@pytest.mark.parametrize("snippet", runnable("python"), ids=lambda s: s.name)
def test_python_snippet_runs(snippet: Snippet, tmp_path: Path) -> None:
    if re.search(r"^(async )?def test_", snippet.code, re.MULTILINE):
        (tmp_path / "test_snippet.py").write_text(snippet.code)
        (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")
        done = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert re.search(r"\b[1-9]\d* passed\b", done.stdout), done.stdout
        return
    (tmp_path / "snippet.py").write_text(snippet.code)
    runs = 2 if snippet.document == "README.md" else 1  # the README's run again, as they are
    for _ in range(runs):
        done = run([sys.executable, "snippet.py"], tmp_path)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        assert done.stdout.strip(), "the snippet prints what it shows"


# ----------------------------------------------------------------------- shell


def logical_lines(code: str) -> list[str]:
    """The snippet's lines, a line ending in a backslash joined with the next."""
    lines: list[str] = []
    pending = ""
    for raw in code.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    return lines


def shell_session(document: str) -> tuple[list[str], list[str], list[str]]:
    """(lines before the server, the `caresync serve` command, lines after it)."""
    lines = [
        line for s in runnable("bash") if s.document == document for line in logical_lines(s.code)
    ]
    [at] = [i for i, line in enumerate(lines) if line.startswith("caresync serve ")]
    return lines[:at], shlex.split(lines[at], comments=True), lines[at + 1 :]


def bash(lines: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    script = "set -euo pipefail\n" + "\n".join(lines) + "\n"
    return run(["bash", "-c", script], cwd)


class Server:
    """The document's `caresync serve` on 127.0.0.1 and the port given (0: any free one)."""

    def __init__(self, command: list[str], port: int, cwd: Path) -> None:
        assert command[:2] == ["caresync", "serve"]
        at = command.index("--port")
        command = [*command[: at + 1], str(port), *command[at + 2 :]]
        assert "--host" not in command  # 127.0.0.1, the default
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            line = read_line(self.proc, TIMEOUT_S)
        except BaseException:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT_S)
            raise
        assert line.startswith(LISTENING), line
        self.url = line.removeprefix(LISTENING).strip()
        assert self.url.startswith("ws://127.0.0.1:")
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=TIMEOUT_S)
        assert self.proc.returncode == 0, err
        assert b"Traceback" not in err


def run_session(document: str, folder: Path, port: int = 0) -> tuple[int, str]:
    """Run the document's shell session in ``folder``; the server's port and what it printed."""
    before, serve, after = shell_session(document)
    first = bash(before, folder)
    assert first.returncode == 0, first.stderr
    server = Server(serve, port, folder)
    try:
        second = bash([line.replace(DOCUMENTED_URL, server.url) for line in after], folder)
        assert second.returncode == 0, second.stderr
        assert "Traceback" not in second.stderr
    finally:
        server.stop()
    return server.port, second.stdout


DOCUMENTED_PASSWORD = "a long passphrase"
"""The password the documents' sessions export: it opens the laptops they enrol (encrypted)."""


def status(db: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "caresync", "status", "--db", str(db), "--json"],
        cwd=db.parent,
        env={**environment(), "CARESYNC_PASSWORD": DOCUMENTED_PASSWORD},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert isinstance(data, dict)
    return data


def test_the_readme_shell_session_runs_and_runs_again(tmp_path: Path) -> None:
    port, printed = run_session("README.md", tmp_path)
    [synced] = [json.loads(line) for line in printed.splitlines() if '"uploaded"' in line]
    assert synced["uploaded"] >= 1  # `sync --json` pushed the new record...
    assert synced["pending"] == 0  # ...and nothing is left to send
    # Run again in the same folder, the server on the same port as a reader's 8765 would be.
    run_session("README.md", tmp_path, port)
    laptop = status(tmp_path / "laptop.db")
    assert laptop["records"] == 2
    assert laptop["pending"] == 0


def test_the_quickstart_shell_session_settles_the_conflict(tmp_path: Path) -> None:
    _, printed = run_session("docs/quickstart.md", tmp_path)
    assert "CONFLICT" in printed  # `record show` on south showed the conflict
    for laptop in ("north.db", "south.db"):
        done = status(tmp_path / laptop)
        assert done["pending"] == 0  # as the quick start's last comment says
        assert done["conflicts_open"] == 0
