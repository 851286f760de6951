"""The command line without a server: opening rules, parsing, exit codes, simulate."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from tests.cli.clitools import digest, files_at, inproc, sh

from caresync.cli.common import parse_value
from caresync.cli.errors import CliError, ExitCode, exit_code_for, one_line
from caresync.cli.replicas import replica_report
from caresync.exceptions import (
    AuthenticationError,
    ConnectionLostError,
    DatabaseNotFoundError,
    FieldConflictError,
    InvalidPathError,
    NotACaresyncDatabaseError,
    RemoteProtocolError,
    UnknownRecordError,
    WrongServerError,
)
from caresync.replica import Replica
from caresync.storage import ReplicaInfo, SQLiteStore

HOUR_MS = 3_600_000

# Every command that must not create a database, with its other arguments.
NON_CREATING = [
    "sync --db {db}",
    "status --db {db}",
    "record new --db {db} --author x",
    "record set --db {db} r birthDate 1 --author x",
    "record add-entry --db {db} r allergies --author x",
    "record show --db {db} r",
    "conflicts list --db {db}",
    "conflicts resolve --db {db} c-1 --choose 0 --author x",
    "conflicts acknowledge --db {db} c-1 --author x",
    "export --db {db} --out {db}.export",
    "import --db {db} {db}.export",
    "replicas --db {db}",
    "replica revoke --db {db} replica-1",
    "user passwd --db {db} --org o --username u",
    "backup --db {db} --out {db}.copy",
]


def test_commands_never_create_a_missing_database(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    as_subprocess = sh("status --db {db} --json", db=missing)
    assert as_subprocess.code == ExitCode.NOT_FOUND
    assert as_subprocess.json()["error"]["code"] == ExitCode.NOT_FOUND
    assert str(missing) in as_subprocess.error_line()
    for template in NON_CREATING:
        result = inproc(template, db=missing)
        assert result.code == ExitCode.NOT_FOUND, (template, result.stderr)
        assert str(missing) in result.error_line()
        assert list(tmp_path.iterdir()) == [], template


def test_a_file_that_is_not_caresyncs_is_left_alone(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    foreign = tmp_path / "other.sqlite"
    conn = sqlite3.connect(foreign)
    with conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    for path in (text, foreign):
        before, beside = digest(path), files_at(path)
        result = sh("status --db {db}", db=path)
        assert result.code == ExitCode.DATABASE
        assert str(path) in result.error_line()
        for template in (
            "record new --db {db} --author x",
            "user add --db {db} --org o --username u",
            "enrol --db {db} --server ws://127.0.0.1:1 --org o --username u",
            "replicas --db {db}",
            "export --db {db} --out {db}.out",
        ):
            result = inproc(template, db=path)
            assert result.code == ExitCode.DATABASE, (template, result.stderr)
            assert str(path) in result.error_line()
        assert digest(path) == before
        assert files_at(path) == beside


def test_a_server_database_is_not_a_laptop_and_accounts_are_checked(tmp_path: Path) -> None:
    server = tmp_path / "server.db"
    added = sh("user add --db {db} --org clinic --username dr.a --json", db=server).ok().json()
    assert added["username"] == "dr.a"
    assert added["server_id"].startswith("server-")
    before = digest(server)
    for template in (
        "record new --db {db} --author x",
        "sync --db {db}",
        "conflicts resolve --db {db} c-1 --choose 0 --author x",
        "export --db {db} --out {db}.out",
    ):
        result = inproc(template, db=server)
        assert result.code == ExitCode.DATABASE, (template, result.stderr)
        assert "server" in result.error_line()
    taken = inproc("user add --db {db} --org clinic --username dr.a", db=server)
    assert taken.code == ExitCode.USAGE
    assert "dr.a" in taken.error_line()
    unknown = inproc("user passwd --db {db} --org clinic --username nobody", db=server)
    assert unknown.code == ExitCode.NOT_FOUND
    assert "nobody" in unknown.error_line()
    revoke = inproc("replica revoke --db {db} replica-unknown", db=server)
    assert revoke.code == ExitCode.NOT_FOUND
    assert "replica-unknown" in revoke.error_line()
    assert digest(server) == before
    listed = inproc("replicas --db {db} --json", db=server).ok().json()
    assert listed == {"replicas": [], "stale": 0, "stale_hours": 24.0}


def test_command_line_errors_are_one_line(tmp_path: Path) -> None:
    cases = [
        ("", "required"),
        ("teleport --db x", "invalid choice"),
        ("status", "--db"),
        ("record", "required"),
        ("serve --db {db} --port 70000", "0..65535"),
        ("serve --db {db} --tls-cert only.pem", "--tls-key"),
        ("replicas --db {db} --stale-hours -1", "more than 0"),
        ("simulate --laptops 0 --patients 1", "at least 1"),
        ("simulate --laptops 1 --patients 1 --conflict-rate 2", "between 0 and 1"),
        ("simulate --laptops 1 --patients 1 --pool-size 0", "at least 1"),
    ]
    for template, fragment in cases:
        result = inproc(template, db=tmp_path / "x.db")
        assert result.code == ExitCode.USAGE, (template, result.stderr)
        assert fragment in result.error_line(), result.stderr
    assert list(tmp_path.iterdir()) == []
    assert inproc("--help").code == 0
    assert "caresync" in inproc("--version").stdout


def test_one_process_reads_each_command_line_afresh(tmp_path: Path) -> None:
    # main() keeps one parser a process: nothing of one command line may reach the next.
    db = tmp_path / "laptop.db"

    async def make_laptop() -> None:
        replica = await Replica.open(db, create=True)
        try:
            await replica.create_record()
        finally:
            await replica.close()

    asyncio.run(make_laptop())
    as_json = inproc("status --db {db} --json", db=db)
    assert as_json.code == 0, as_json.stderr
    assert json.loads(as_json.stdout)["records"] == 1
    refused = inproc("status --db {db} --stale-hours -1 --json", db=db)
    assert refused.code == ExitCode.USAGE
    plain = inproc("status --db {db}", db=db)
    assert plain.code == 0, plain.stderr
    assert not plain.stdout.lstrip().startswith("{"), plain.stdout  # --json not kept
    assert "records" in plain.stdout


def test_the_installed_console_script_runs() -> None:
    script = Path(sys.executable).with_name("caresync")
    if not script.exists():
        pytest.skip("the package is not installed with its console script here")
    done = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0
    assert done.stdout.startswith("caresync ")


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("42", 42),
        ("-1.5", -1.5),
        ('"42"', "42"),
        ("42 mg", "42 mg"),
        ("true", True),
        ("null", None),
        ("[1, 2]", [1, 2]),
        ('{"a": {"b": 1}}', {"a": {"b": 1}}),
        ("", ""),
        ("NaN", "NaN"),
        ("-Infinity", "-Infinity"),
        ("1e999", "1e999"),
        ("{not json", "{not json"),
        ("1988-04-21", "1988-04-21"),
    ],
)
def test_values_are_json_when_they_parse_as_json(raw: str, value: object) -> None:
    assert parse_value(raw) == value
    assert type(parse_value(raw)) is type(value)


def test_errors_map_to_documented_exit_codes() -> None:
    assert exit_code_for(DatabaseNotFoundError("x")) == ExitCode.NOT_FOUND
    assert exit_code_for(UnknownRecordError("x")) == ExitCode.NOT_FOUND
    assert exit_code_for(InvalidPathError("x")) == ExitCode.USAGE
    assert exit_code_for(NotACaresyncDatabaseError("x")) == ExitCode.DATABASE
    assert exit_code_for(WrongServerError("x")) == ExitCode.REFUSED
    assert exit_code_for(AuthenticationError("x")) == ExitCode.REFUSED
    assert exit_code_for(ConnectionLostError("x")) == ExitCode.CONNECTION
    assert exit_code_for(RemoteProtocolError("x")) == ExitCode.PROTOCOL
    conflict = FieldConflictError("x", path="p", conflict_id="c")
    assert exit_code_for(conflict) == ExitCode.CONFLICT
    assert exit_code_for(CliError("x", ExitCode.REFUSED)) == ExitCode.REFUSED
    assert exit_code_for(RuntimeError("bug")) == ExitCode.INTERNAL
    assert one_line(ValueError("two\nlines  here")) == "two lines here"
    assert one_line(ValueError()) == "ValueError"


def _info(**changes: object) -> ReplicaInfo:
    fields: dict[str, object] = {
        "replica_id": "replica-1",
        "organisation": "clinic",
        "enrolled_by": "dr.a",
        "enrolled_ms": 0,
        "last_seen_ms": 100 * HOUR_MS,
        "revoked_ms": None,
    }
    fields.update(changes)
    return ReplicaInfo(**fields)  # type: ignore[arg-type]


def test_a_laptop_is_stale_when_not_seen_or_holding_changes_too_long() -> None:
    now = 130 * HOUR_MS
    day = 24 * HOUR_MS

    def report(**changes: object) -> dict[str, object]:
        return replica_report(_info(**changes), now_ms=now, stale_ms=day)

    seen_now = report(last_seen_ms=now - HOUR_MS)
    assert seen_now["stale"] is False
    assert seen_now["last_seen_age_h"] == 1.0
    assert report(last_seen_ms=now - day - 1)["reasons"] == ["not seen"]
    assert report(last_seen_ms=None, enrolled_ms=now - 2 * day)["reasons"] == ["never seen"]
    assert report(last_seen_ms=None, enrolled_ms=now - HOUR_MS)["stale"] is False
    revoked = report(last_seen_ms=0, revoked_ms=1)
    assert revoked["stale"] is False
    assert revoked["revoked"] is True
    stuck = report(last_seen_ms=now - HOUR_MS, pending=3, oldest_pending_ms=now - 2 * day)
    assert stuck["reasons"] == ["changes pending"]
    assert stuck["pending"] == 3
    assert stuck["oldest_pending_age_h"] == 48.0
    both = report(last_seen_ms=now - 3 * day, pending=1, oldest_pending_ms=now - 4 * day)
    assert both["reasons"] == ["not seen", "changes pending"]
    assert (
        report(last_seen_ms=now - HOUR_MS, pending=3, oldest_pending_ms=now - HOUR_MS)["stale"]
        is False
    )
    assert report(last_seen_ms=now - HOUR_MS, pending=0, oldest_pending_ms=None)["stale"] is False


def test_simulate_runs_a_small_simulation_as_a_subprocess(tmp_path: Path) -> None:
    result = sh(
        "simulate --laptops 2 --patients 4 --edits-per-laptop 3 --seed 7 --workdir {w} --json",
        w=tmp_path,
    )
    assert result.code == 0, result.stderr
    data = result.json()
    for key in (
        "converged",
        "lost_values",
        "conflicts_open",
        "duration_s",
        "first_copy_s",
        "final_sync_s",
        "bytes_up",
        "bytes_down",
    ):
        assert key in data
    assert data["converged"] is True
    assert data["lost_values"] == 0


def _prompted(db: Path, typed: list[bytes]) -> tuple[int, str, bytes]:
    """`user add` on a terminal (a pty) with no CARESYNC_PASSWORD; ``typed`` answers each prompt."""
    environment = {k: v for k, v in os.environ.items() if k != "CARESYNC_PASSWORD"}
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "caresync",
            "user",
            "add",
            "--db",
            str(db),
            "--org",
            "clinic",
            "--username",
            "dr.t",
            "--json",
        ],
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=environment,
        start_new_session=True,  # the pty is its terminal: getpass prompts there
    )
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + 30
    try:
        for prompt, answer in zip((b"New password", b"Repeat the password"), typed, strict=False):
            while prompt not in seen:
                ready, _, _ = select.select([controller], [], [], deadline - time.monotonic())
                assert ready, f"no prompt {prompt!r} within 30 s: {seen!r}"
                seen += os.read(controller, 1024)
            os.write(controller, answer + b"\n")
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        os.close(controller)
    return proc.returncode, out.decode(), seen


def test_the_password_is_asked_on_the_terminal_twice_and_not_echoed(tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    mismatch, _, _ = _prompted(db, [b"first try", b"second try"])
    assert mismatch == ExitCode.USAGE
    assert files_at(db) == []

    code, out, seen = _prompted(db, [b"typed secret", b"typed secret"])
    assert code == 0, seen
    assert json.loads(out)["username"] == "dr.t"
    assert b"typed secret" not in seen  # not echoed

    async def stored_hash() -> str:
        async with SQLiteStore.open(db, create=False, read_only=True) as store:
            account = await store.get_user("clinic", "dr.t")
            assert account is not None
            return account.password_hash

    assert PasswordHasher().verify(asyncio.run(stored_hash()), "typed secret")
