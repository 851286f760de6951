"""Hostile command lines: every argument of every command, and never an internal error.

The commands are read from the parser itself (:func:`caresync.cli.app.build_parser`),
so a command added later is covered without touching this file. Each argument
of each command gets each hostile value in turn (malformed URLs, out-of-range
ports, JSON nested thousands deep, lone surrogates, NUL, long strings, negative
numbers, database paths that are a directory, missing, not a database ...),
every other argument keeping a sound value. Whatever a command makes of it,
it must exit with a code of its own (never 70, an internal error), print one
line on standard error (never a traceback), and a command line refused as
such must leave every file as it was.

The commands run in this process, with standard output and error encoding
UTF-8 as a real terminal does (strictly for output, with escapes for errors,
as Python's own streams do), so text that cannot be written is caught here.
``serve`` gets a laptop's database and a port already taken, so it is refused
before it listens; ``simulate`` gets an out-of-range ``--laptops`` after the
hostile argument, so it never starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from tests.cli.clitools import PASSWORD, Result, cli

import caresync.cli.status
import caresync.cli.users
from caresync.cli import main
from caresync.cli.app import build_parser
from caresync.cli.errors import ExitCode
from caresync.replica import Replica

# ------------------------------------------------------------------ commands


@dataclass(frozen=True)
class Command:
    """A leaf command (``record set``) and the actions of its parser."""

    words: tuple[str, ...]
    parser: argparse.ArgumentParser

    @property
    def name(self) -> str:
        return " ".join(self.words)

    def arguments(self) -> list[argparse.Action]:
        """Every argument that takes a value (not --help, --json and other flags)."""
        return [
            a
            for a in self.parser._actions
            if a.nargs != 0 and not isinstance(a, argparse._SubParsersAction)
        ]

    def groups(self) -> list[list[argparse.Action]]:
        return [g._group_actions for g in self.parser._mutually_exclusive_groups]


def _leaves(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> Iterator[Command]:
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subcommands:
        yield Command(words, parser)
        return
    for action in subcommands:
        for name, sub in action.choices.items():
            yield from _leaves(sub, (*words, name))


COMMANDS = list(_leaves(build_parser(), ()))
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
SERVER_COMMANDS = {"user add", "user passwd", "replicas", "replica revoke"}
"""Commands that need a server's database; every other one gets a laptop's."""
ALWAYS_GIVEN = {"serve": {"port"}}
"""Options always given (soundly, unless hostile): `serve` on a taken port never listens."""


# ---------------------------------------------------------------- the values


@dataclass
class Place:
    """The files the commands work on, and the sockets that keep them off the network."""

    dir: Path
    laptop: Path
    server: Path
    record_id: str
    refusing_port: int  # bound, not listening: a connection is refused at once
    busy_port: int  # listening: `serve` cannot bind it
    counter: int = 0

    def fresh(self, name: str) -> Path:
        """A path where nothing is yet (each call a new one)."""
        self.counter += 1
        return self.dir / f"{name}-{self.counter}"


Value = Callable[[Place], str]


def _const(value: str) -> Value:
    return lambda _: value


def _not_a_database(place: Place) -> str:
    path = place.fresh("notes.txt")
    path.write_text("not a database\n")
    return str(path)


def _empty_file(place: Place) -> str:
    path = place.fresh("empty")
    path.write_bytes(b"")
    return str(path)


def _a_directory(place: Place) -> str:
    path = place.fresh("a-directory")
    path.mkdir()
    return str(path)


HOSTILE: dict[str, Value] = {
    "empty": _const(""),
    "space": _const(" "),
    "lone surrogate": _const("a\udcffb"),
    "surrogate no file name holds": _const("\ud800"),
    "NUL": _const("a\x00b"),
    "line break": _const("dr\nb"),
    "terminal escape": _const("\x1b[31mred\x1b[0m"),
    "bidi override": _const("abc\u202edef"),
    "long": _const("x" * 100_000),
    "negative": _const("-1"),
    "huge negative": _const("-" + "9" * 30),
    "huge": _const("9" * 5000),
    "out-of-range port": _const("99999"),
    "exponent": _const("1e308"),
    "nan": _const("nan"),
    "inf": _const("inf"),
    "non-ASCII digit": _const("\u0663"),
    "malformed IPv6 URL": _const("ws://[::1"),
    "URL port out of range": _const("ws://127.0.0.1:99999"),
    "URL with a password": _const("ws://dr.a:secret@127.0.0.1:1"),
    "URL with a bad host": _const("ws://" + "a" * 300 + ":1"),
    "URL not ws": _const("http://127.0.0.1:1"),
    "deep JSON list": _const("[" * 5000 + "]" * 5000),
    "deep JSON object": _const('{"a":' * 3000 + "1" + "}" * 3000),
    "JSON surrogate escape": _const('"\\udcff"'),
    "JSON huge integer": _const("9" * 400),
    "option-like": _const("--json"),
    "a directory": _a_directory,
    "missing": lambda place: str(place.fresh("missing")),
    "missing directory": lambda place: str(place.fresh("no-such-dir") / "file"),
    "missing, undecodable name": lambda place: str(place.fresh("missing-\udcff")),
    "not a database": _not_a_database,
    "empty file": _empty_file,
    "/dev/null": _const(os.devnull),
    "name too long": lambda place: str(place.dir / ("n" * 300)),
}


def _sound(command: Command, action: argparse.Action, place: Place) -> str:
    """A value the argument accepts (so that the hostile one is the only thing wrong)."""
    dest = action.dest
    if dest == "db":
        return str(place.server if command.name in SERVER_COMMANDS else place.laptop)
    if dest in ("out", "file", "workdir", "cafile", "tls_cert", "tls_key"):
        return str(place.fresh(dest))
    if dest == "server":
        return f"ws://127.0.0.1:{place.refusing_port}"
    if dest == "port":
        return str(place.busy_port)
    if dest in ("record_id", "record"):
        return place.record_id
    if dest == "fields":
        return '{"substance": "latex"}'
    if dest == "collection":
        return "allergies"
    if dest == "host":
        return "127.0.0.1"
    if dest in ("conflict_rate",):
        return "0.5"
    if dest in ("choose", "seed", "edits_per_laptop"):
        return "0"
    if dest in ("laptops", "patients", "stale_hours"):
        return "1"
    return {"org": "clinic", "username": "dr.a", "author": "dr.a", "device_name": "x"}.get(
        dest, "value"
    )


def command_line(
    command: Command, place: Place, target: argparse.Action | None, value: str
) -> list[str]:
    """The command with ``target`` set to ``value``, every required argument soundly set."""
    excluded: set[str] = set()
    chosen: set[str] = set()
    for group in command.groups():  # one member of a group; the target's if it is in one
        members = {a.dest for a in group}
        if target is not None and target.dest in members:
            chosen.add(target.dest)
        else:
            chosen.add(group[0].dest)
        excluded |= members
    argv = list(command.words)
    positionals: list[str] = []
    for action in command.arguments():
        wanted = (
            action.required
            or action.dest in chosen
            or action.dest in ALWAYS_GIVEN.get(command.name, ())
            or action is target
        )
        if action.dest in excluded and action.dest not in chosen:
            wanted = False
        if not wanted:
            continue
        text = value if action is target else _sound(command, action, place)
        if action.option_strings:
            argv.append(f"{action.option_strings[-1]}={text}")  # a value starting '-' stays one
        else:
            positionals.append(text)
    if positionals:
        argv += ["--", *positionals]
    if command.name == "simulate":
        argv.append("--laptops=0")  # refused after the hostile argument: it never starts
    return argv


# --------------------------------------------------------------- the runner


def run_strict(argv: list[str], *, password: str | None = PASSWORD) -> Result:
    """``main(argv)`` in this process, its output encoded as a terminal's would be.

    Standard output is UTF-8 and strict (text it cannot encode fails, as it
    does for a real ``caresync``); standard error escapes what it cannot
    encode, as Python's does. Standard input is empty and not a terminal.
    """
    out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(
        err_bytes, encoding="utf-8", errors="backslashreplace", write_through=True
    )
    saved_password, saved_stdin = os.environ.get("CARESYNC_PASSWORD"), sys.stdin
    try:
        if password is None:
            os.environ.pop("CARESYNC_PASSWORD", None)
        else:
            os.environ["CARESYNC_PASSWORD"] = password
        sys.stdin = io.StringIO("")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        sys.stdin = saved_stdin
        if saved_password is None:
            os.environ.pop("CARESYNC_PASSWORD", None)
        else:
            os.environ["CARESYNC_PASSWORD"] = saved_password
    return Result(code, out_bytes.getvalue().decode(), err_bytes.getvalue().decode())


def check(result: Result, what: str) -> None:
    """Never an internal error; a failure is one line on standard error, no traceback."""
    assert result.code != ExitCode.INTERNAL, f"{what}: {result.stderr}"
    assert "Traceback" not in result.stderr, what
    if result.code != ExitCode.OK:
        lines = result.stderr.splitlines()
        assert len(lines) == 1, f"{what}: {result.stderr!r}"
        assert lines[0].startswith("caresync"), f"{what}: {lines[0]!r}"
        assert ": error: " in lines[0], f"{what}: {lines[0]!r}"


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``directory``, with its size and modification time."""
    found: dict[str, tuple[int, int]] = {}
    for path in directory.rglob("*"):
        stat = path.stat()
        found[os.fsdecode(path.relative_to(directory))] = (stat.st_size, stat.st_mtime_ns)
    return found


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def sockets() -> Iterator[tuple[int, int]]:
    """A port that refuses connections and a port that is taken, both on 127.0.0.1."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as refusing,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy,
    ):
        refusing.bind(("127.0.0.1", 0))
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        yield refusing.getsockname()[1], busy.getsockname()[1]


@pytest.fixture
def place(tmp_path: Path, sockets: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> Place:
    """A server database with an account, and a laptop database with one record.

    The working directory is ``tmp_path``: a relative path (" ") lands there.
    """
    monkeypatch.chdir(tmp_path)
    # Accounts are hashed with argon2id's cheapest settings: what is tested here is
    # what happens to the arguments, not how long a hash takes.
    monkeypatch.setattr(caresync.cli.users, "hash_password", FAST_HASHER.hash)
    server = tmp_path / "server.db"
    assert (
        run_strict(
            ["user", "add", "--db", str(server), "--org", "clinic", "--username", "dr.a"]
        ).code
        == 0
    )
    laptop = tmp_path / "laptop.db"

    async def make_laptop() -> str:
        replica = await Replica.open(laptop, create=True)
        try:
            record_id = await replica.create_record()
            await replica.set(record_id, "birthDate", "1988-04-21", author="dr.a")
            return record_id
        finally:
            await replica.close()

    record_id = asyncio.run(make_laptop())
    return Place(tmp_path, laptop, server, record_id, *sockets)


# ---------------------------------------------------------------------- tests


def test_the_commands_are_read_from_the_parser() -> None:
    names = {c.name for c in COMMANDS}
    assert {"serve", "simulate", "user add", "record set", "backup", "replica revoke"} <= names
    assert len(names) == len(COMMANDS) >= 17
    for command in COMMANDS:
        assert command.arguments(), command.name  # each has something to be hostile to


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name.replace(" ", "-"))
def test_no_argument_ends_in_an_internal_error(command: Command, place: Place) -> None:
    sound = run_strict(command_line(command, place, None, ""))
    check(sound, f"{command.name} (sound arguments)")
    runs = 0
    for action in command.arguments():
        for label, make in HOSTILE.items():
            value = make(place)
            argv = command_line(command, place, action, value)
            before = snapshot(place.dir)
            result = run_strict(argv)
            what = f"{command.name}: {action.dest} = {label}"
            check(result, what)
            if result.code == ExitCode.USAGE and result.stderr.startswith("caresync "):
                # Refused as a command line: nothing was opened, created or written.
                assert snapshot(place.dir) == before, what
            runs += 1
    assert runs == len(command.arguments()) * len(HOSTILE)


def test_a_missing_database_given_to_serve_is_not_left_behind(place: Place) -> None:
    db = place.fresh("new-server.db")
    result = run_strict(["serve", "--db", str(db), "--port", str(place.busy_port)])
    assert result.code == ExitCode.CONNECTION
    assert "cannot listen" in result.stderr
    assert not [p for p in place.dir.iterdir() if p.name.startswith(db.name)]


# ------------------------------------------- the defects the review reproduced


def _record(place: Place) -> str:
    shown = run_strict(["record", "show", "--db", str(place.laptop), place.record_id, "--json"])
    assert shown.code == 0, shown.stderr
    return shown.stdout


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ws://[::1", "Invalid IPv6 URL"),
        ("ws://127.0.0.1:99999", "out of range"),
        ("ws://127.0.0.1:-1", "Port could not be cast"),
        ("ws://" + "a" * 64 + ":1", "not a host name"),
        ("ws://dr.a:secret@127.0.0.1:1", "user or password"),
        ("ws://127.0.0.1:0", "port 0"),
        ("http://127.0.0.1:1", "ws:// or wss://"),
    ],
)
def test_a_malformed_server_url_is_refused_before_anything_is_made(
    place: Place, url: str, why: str
) -> None:
    laptop = place.fresh("new-laptop.db")
    enrol = run_strict(
        ["enrol", "--db", str(laptop), "--server", url, "--org", "clinic", "--username", "dr.a"]
    )
    check(enrol, url)
    assert enrol.code == ExitCode.USAGE
    assert "argument --server" in enrol.stderr
    assert why in enrol.stderr
    assert not list(place.dir.glob(laptop.name + "*"))  # no database, no side file
    sync = run_strict(["sync", "--db", str(place.laptop), "--server", url])
    assert sync.code == ExitCode.USAGE
    assert "argument --server" in sync.stderr


def test_a_port_out_of_range_is_refused(place: Place) -> None:
    for port in ("99999", "65536", "-1", "8_0", "\u0663", " 80"):
        result = run_strict(["serve", "--db", str(place.laptop), "--port", port])  # never serves
        check(result, port)
        assert result.code == ExitCode.USAGE
        assert "0..65535" in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["record", "set", "{db}", "{rid}", "weightKg", "{deep}"],
        ["record", "add-entry", "{db}", "{rid}", "allergies", "{deep_object}"],
        ["conflicts", "resolve", "{db}", "c-1", "--value", "{deep}"],
    ],
    ids=["record-set", "record-add-entry", "conflicts-resolve"],
)
def test_json_nested_thousands_deep_is_refused_and_nothing_is_written(
    place: Place, argv: list[str]
) -> None:
    values = {
        "{db}": f"--db={place.laptop}",
        "{rid}": place.record_id,
        "{deep}": "[" * 5000 + "]" * 5000,
        "{deep_object}": '{"a":' * 5000 + "1" + "}" * 5000,
    }
    before = _record(place)
    result = run_strict([values.get(word, word) for word in argv] + ["--author", "dr.a"])
    check(result, " ".join(argv))
    assert result.code == ExitCode.USAGE
    assert "nested" in result.stderr
    assert _record(place) == before


def test_a_lone_surrogate_is_refused_in_text_and_kept_in_a_file_name(place: Place) -> None:
    note = ["record", "set", "--db", str(place.laptop), place.record_id, "note"]
    value = run_strict([*note, "a\udcffb", "--author", "dr.a"])
    assert value.code == ExitCode.USAGE
    assert "argument VALUE" in value.stderr
    assert "\\udcff" in value.stderr  # shown escaped
    escaped = run_strict([*note, '"\\udcff"', "--author", "dr.a"])
    assert escaped.code == ExitCode.USAGE
    assert "lone surrogate" in escaped.stderr
    # A file's name may hold bytes that are not UTF-8: the copy is made at that very name,
    # and the name is written escaped (standard output is strict UTF-8 here, as for real).
    target = place.dir / "copy-\udcff.db"
    human = run_strict(["backup", "--db", str(place.laptop), "--out", str(target)])
    assert human.code == 0, human.stderr
    assert os.fsencode(target).endswith(b"copy-\xff.db")
    assert target.exists()
    assert "copy-\\udcff.db" in human.stdout
    as_json = run_strict(
        ["export", "--db", str(place.laptop), "--out", str(place.dir / "out-\udcff"), "--json"]
    )
    assert as_json.code == 0, as_json.stderr
    assert json.loads(as_json.stdout)["file"] == str(place.dir / "out-\udcff")


def test_a_nul_or_a_terminal_escape_never_reaches_the_terminal(place: Place) -> None:
    nul = run_strict(["status", "--db", "a\x00b"])
    assert nul.code == ExitCode.USAGE
    assert "NUL" in nul.stderr
    assert "\x00" not in nul.stderr
    escape = run_strict(["status", "--db", str(place.dir / "\x1b]0;owned\x07.db")])
    assert escape.code == ExitCode.NOT_FOUND
    assert "\x1b" not in escape.stderr
    assert "\x07" not in escape.stderr
    assert "\\x1b]0;owned\\x07.db" in escape.stderr


def test_stale_hours_too_large_to_count_is_refused(place: Place) -> None:
    for hours in ("1e308", "inf", "nan", "0", "876001"):
        result = run_strict(["replicas", "--db", str(place.server), "--stale-hours", hours])
        check(result, hours)
        assert result.code == ExitCode.USAGE
        assert "--stale-hours" in result.stderr


def test_a_password_the_protocol_cannot_carry_is_refused(place: Place) -> None:
    db = place.fresh("server.db")
    add = ["user", "add", "--db", str(db), "--org", "clinic", "--username", "dr.z"]
    undecodable = run_strict(add, password="secret-\udcff")
    assert undecodable.code == ExitCode.USAGE
    assert "UTF-8" in undecodable.stderr
    too_long = run_strict(add, password="p" * 1025)
    assert too_long.code == ExitCode.USAGE
    assert "at most 1024" in too_long.stderr
    assert not list(place.dir.glob(db.name + "*"))


def test_simulate_with_a_file_for_its_workdir_never_starts(place: Place) -> None:
    a_file = Path(_not_a_database(place))
    result = run_strict(["simulate", "--laptops", "1", "--patients", "1", "--workdir", str(a_file)])
    check(result, "simulate --workdir FILE")
    assert result.code == ExitCode.USAGE
    assert "not a directory" in result.stderr
    assert a_file.read_text() == "not a database\n"


def test_as_a_real_process_undecodable_bytes_and_a_bad_url_are_handled(place: Place) -> None:
    """The reported cases through a real ``caresync`` process (argv bytes, real streams)."""
    target = place.dir / "copy-\udcff.db"  # the argument's bytes end in 0xFF: not UTF-8
    copied = cli("backup", "--db", place.laptop, "--out", target)
    assert copied.code == 0, copied.stderr
    assert target.exists()
    assert "copy-\\udcff.db" in copied.stdout
    bad_url = cli(
        "enrol", "--db", place.dir / "new.db", "--server", "ws://[::1", "--org", "c",
        "--username", "dr.a",
    )  # fmt: skip
    assert bad_url.code == ExitCode.USAGE
    assert bad_url.error_line().startswith("caresync enrol: error: argument --server:")
    assert not (place.dir / "new.db").exists()


def test_a_panic_in_native_code_is_still_one_line(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyo3's PanicException (pycrdt) is a BaseException: the last resort catches it too."""

    class PanicException(BaseException):
        pass

    def panics(path: str) -> object:
        raise PanicException("called `Result::unwrap()` on an `Err` value")

    # What the handler calls, not the handler: main() keeps one parser, which holds
    # the handlers it was built with.
    monkeypatch.setattr(caresync.cli.status, "_status", panics)
    result = run_strict(["status", "--db", str(place.laptop)])
    assert result.code == ExitCode.INTERNAL
    assert result.stderr.count("\n") == 1
    assert "internal error (PanicException: called `Result::unwrap()`" in result.stderr
    assert "Traceback" not in result.stderr
