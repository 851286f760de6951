"""One convention for every command: `--json` everywhere, errors as JSON too, no Python in
messages, nothing left behind by a command that fails before doing anything, and set-up
that can run twice (`--exist-ok`)."""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.cli.clitools import (
    COMMAND_TIMEOUT_S,
    START_TIMEOUT_S,
    Result,
    ServerProcess,
    env,
    files_at,
    inproc,
    read_line,
    sh,
)
from tests.cli.conftest import Clinic

from caresync.cli.app import build_parser
from caresync.cli.errors import ExitCode

PYTHON_SPELLING = re.compile(
    r"\b[a-z_]+=(True|False|None|N\b|\.\.\.)|\*\*kwargs|\bself\b|<class |Traceback"
)
"""What a message for a person at a shell must not hold: Python arguments and reprs."""


def json_error(result: Result, code: int) -> dict[str, Any]:
    """The failed command's one JSON object (the error), checked against its exit code."""
    assert result.code == code, result.stderr
    data = result.json()  # exactly one line, one object, on standard output
    assert set(data) == {"error"}
    error = data["error"]
    assert error["code"] == code
    assert error["kind"] == ExitCode(code).name.lower()
    assert isinstance(error["message"], str)
    assert error["message"]
    assert error["message"] in result.error_line()  # the same message on standard error
    return dict(error)


def leaf_parsers(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(leaf_parsers(sub, f"{prefix} {name}".strip()))
    return found or {prefix: parser}


def test_every_command_takes_json() -> None:
    leaves = leaf_parsers(build_parser())
    assert {"serve", "record list", "user add", "simulate", "server-key"} <= set(leaves)
    without = [
        name
        for name, parser in leaves.items()
        if not any("--json" in action.option_strings for action in parser._actions)
    ]
    assert without == []


@pytest.mark.parametrize(
    ("template", "code"),
    [
        ("status --db {missing}", ExitCode.NOT_FOUND),
        ("status", ExitCode.USAGE),  # refused by the parser: --db is required
        ("record new --db {missing} --author", ExitCode.USAGE),
        ("record show --db {server} no-such-record", ExitCode.NOT_FOUND),
        ("record new --db {server} --author dr.a", ExitCode.DATABASE),
        ("conflicts resolve --db {server} c-1 --choose 0 --author dr.a", ExitCode.DATABASE),
        ("server-key --db {missing}", ExitCode.NOT_FOUND),
        ("record list --db {missing}", ExitCode.NOT_FOUND),
    ],
)
def test_an_error_under_json_is_one_object_with_the_same_exit_code(
    tmp_path: Path, template: str, code: int
) -> None:
    server = tmp_path / "server.db"
    inproc("user add --db {db} --org clinic --username dr.a", db=server).ok()
    values = {"missing": tmp_path / "missing.db", "server": server}
    plain = inproc(template, **values)
    assert plain.code == code, plain.stderr
    assert plain.stdout == ""  # without --json: standard output stays empty
    error = json_error(inproc(template + " --json", **values), code)
    assert not PYTHON_SPELLING.search(error["message"]), error["message"]
    assert files_at(tmp_path / "missing.db") == []


def test_a_json_error_from_a_real_process(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    result = sh("status --db {db} --json", db=missing)
    error = json_error(result, ExitCode.NOT_FOUND)
    assert error["message"] == f"there is no caresync database at {missing}: nothing was created"
    assert files_at(missing) == []


def test_a_missing_database_is_named_without_python(tmp_path: Path) -> None:
    """`status --db nope.db` said `create=False`, a Python parameter."""
    for template in ("status --db {db}", "sync --db {db}", "backup --db {db} --out {db}.copy"):
        result = inproc(template, db=tmp_path / "nope.db")
        assert result.code == ExitCode.NOT_FOUND
        line = result.error_line()
        assert "no caresync database" in line
        assert not PYTHON_SPELLING.search(line), line
    assert list(tmp_path.iterdir()) == []


def test_plain_ws_to_another_machine_is_refused_naming_the_option(tmp_path: Path) -> None:
    """Refused before any connection is made (192.0.2.1 is TEST-NET-1: nothing is sent)."""
    laptop = tmp_path / "laptop.db"
    result = inproc(
        "enrol --db {db} --server ws://192.0.2.1:8765 --org clinic --username dr.a --json",
        db=laptop,
    )
    error = json_error(result, ExitCode.REFUSED)
    assert "--insecure" in error["message"]
    assert not PYTHON_SPELLING.search(error["message"]), error["message"]
    assert files_at(laptop) == []


def test_enrol_on_an_enrolled_laptop_says_so_and_exist_ok_syncs(clinic: Clinic) -> None:
    laptop = clinic.dir / "twice.db"
    # Plain (not encrypted): then the refusal of another organisation's user is the
    # server's, not the laptop's (dr.c has no copy of an encrypted laptop's key).
    enrol = "enrol --db {db} --server {url} --org clinic-a --username dr.a"
    inproc(enrol + " --no-encrypt", db=laptop, url=clinic.url).ok()
    again = inproc(enrol, db=laptop, url=clinic.url)
    assert again.code == ExitCode.USAGE
    line = again.error_line()
    assert "already enrolled" in line
    assert "caresync sync" in line
    assert "first copy" not in line  # it said "the first copy stopped ... run sync"
    inproc("record new --db {db} --author dr.a", db=laptop).ok()
    synced = inproc(enrol + " --exist-ok --json", db=laptop, url=clinic.url).ok().json()
    assert synced["already"] is True
    assert synced["uploaded"] == 1
    assert synced["pending"] == 0
    other_org = inproc(
        "enrol --db {db} --server {url} --org clinic-b --username dr.c --exist-ok",
        db=laptop,
        url=clinic.url,
    )
    assert other_org.code == ExitCode.REFUSED
    assert "clinic-b" in other_org.error_line()


def test_user_add_with_exist_ok_can_run_twice(tmp_path: Path) -> None:
    server = tmp_path / "server.db"
    add = "user add --db {db} --org clinic --username dr.a --json"
    first = inproc(add, db=server).ok().json()
    assert first["already"] is False
    second = inproc(add + " --exist-ok", db=server).ok().json()
    assert second == {**first, "already": True}
    taken = inproc(add, db=server)
    error = json_error(taken, ExitCode.USAGE)
    assert "--exist-ok" in error["message"]


def test_serve_json_writes_one_object_when_listening(tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "caresync", "serve", "--db", str(db), "--port", "0", "--json"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(),
    )
    try:
        listening = json.loads(read_line(proc, START_TIMEOUT_S))
        assert listening["url"] == f"ws://127.0.0.1:{listening['port']}"
        assert listening["server_key"].startswith("SHA256:")
        assert listening["server_id"].startswith("server-")
        assert listening["db"] == str(db)
        key = inproc("server-key --db {db} --json", db=db).ok().json()
        assert key["server_key"] == listening["server_key"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=COMMAND_TIMEOUT_S)
    assert proc.returncode == 0, err
    assert out == b""  # nothing after the one object (it was read above)
    assert b"Traceback" not in err


def test_serve_on_a_taken_port_leaves_no_file_and_says_so_in_json(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "server.db")
    try:
        second = tmp_path / "second.db"
        taken = sh("serve --db {db} --port {port} --json", db=second, port=server.port)
        error = json_error(taken, ExitCode.CONNECTION)
        assert "cannot listen" in error["message"]
        assert files_at(second) == []
    finally:
        code, err = server.stop()
    assert code == 0, err


def test_a_taken_port_is_refused_on_a_socket_caresync_does_not_own(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        db = tmp_path / "server.db"
        taken = inproc("serve --db {db} --port {port}", db=db, port=port)
    assert taken.code == ExitCode.CONNECTION
    assert files_at(db) == []


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize(
    ("template", "too_deep", "deep_enough"),
    [
        ("conflicts resolve --db {db} c-1 --value {v} --author dr.a", nested(40), nested(32)),
        ("record set --db {db} r-1 weightKg {v} --author dr.a", nested(40), nested(32)),
        (
            "record add-entry --db {db} r-1 notes {v} --author dr.a",
            '{"text": ' + nested(40) + "}",
            '{"text": ' + nested(32) + "}",
        ),
    ],
    ids=["conflicts-resolve", "record-set", "record-add-entry"],
)
def test_a_value_nested_too_deeply_is_refused_before_the_database_opens(
    tmp_path: Path, template: str, too_deep: str, deep_enough: str
) -> None:
    """On Python 3.13 the parser reads 5000 levels without a RecursionError, and `conflicts
    resolve` then looked the conflict up first (exit 3): the depth (32, the record model's)
    is checked by the command line itself, so the refusal is the same on every Python."""
    db = tmp_path / "missing.db"
    error = json_error(inproc(template + " --json", db=db, v=too_deep), ExitCode.USAGE)
    assert "levels deep" in error["message"]
    # 32 levels is a value: the command goes on, as far as the missing database.
    assert inproc(template, db=db, v=deep_enough).code == ExitCode.NOT_FOUND
    assert files_at(db) == []
