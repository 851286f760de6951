"""Account names: usernames, organisations and device names (caresync.names, and the CLI).

A name with a line break, a control character, a lone surrogate or spaces at
its ends is refused with a message that says why; every name accepted is one
the wire protocol can carry.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.cli.clitools import run_main

from caresync.cli.errors import ExitCode
from caresync.exceptions import InvalidInputError, LocalProtocolError
from caresync.names import (
    MAX_DEVICE_NAME_LENGTH,
    MAX_ORGANISATION_LENGTH,
    MAX_USERNAME_LENGTH,
    check_device_name,
    check_organisation,
    check_username,
    shown,
)
from caresync.protocol.messages import Authenticate, Enrol

GOOD_NAMES = ["dr.a", "a", "Dr. Anna Müller", "医生", "o'brien-smith_2", "x" * 128]

BAD_ACCOUNT_NAMES = {
    "": "empty",
    " ": "empty or only spaces",
    "   ": "empty or only spaces",
    "dr\nb": "a line break",
    "dr\rb": "a carriage return",
    "dr\tb": "a tab",
    "dr\x00b": "a NUL",
    "dr\x1b[31m": "U+001B",
    "dr\u202eb": "U+202E",  # a right-to-left override: text that reads otherwise
    "dr\u200bb": "U+200B",  # a zero-width space: two names that look alike
    "dr\u00a0b": "U+00A0",  # a no-break space
    "dr\udcffb": "lone surrogate",  # bytes that are not UTF-8, as Python decodes them
    " dr.a": "start or end with a space",
    "dr.a ": "start or end with a space",
}


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names_pass_unchanged_and_go_on_the_wire(name: str) -> None:
    assert check_username(name) == name
    assert check_organisation(name) == name
    assert check_device_name(name) == name
    Authenticate(username=name, password="pw", organisation=name)
    Enrol(device_name=name)


@pytest.mark.parametrize(("name", "why"), list(BAD_ACCOUNT_NAMES.items()))
def test_bad_usernames_and_organisations_are_refused_saying_why(name: str, why: str) -> None:
    for check, what in ((check_username, "a username"), (check_organisation, "an organisation")):
        with pytest.raises(InvalidInputError) as refused:
            check(name)
        message = str(refused.value)
        assert message.startswith(what)
        assert why in message
        assert "\n" not in message
        assert "\x1b" not in message


def test_the_lengths_are_the_protocols() -> None:
    assert MAX_USERNAME_LENGTH == MAX_DEVICE_NAME_LENGTH == 256
    assert MAX_ORGANISATION_LENGTH == 128
    assert check_username("u" * 256) == "u" * 256
    assert check_organisation("o" * 128) == "o" * 128
    assert check_device_name("d" * 256) == "d" * 256
    for check, longest in (
        (check_username, 256),
        (check_organisation, 128),
        (check_device_name, 256),
    ):
        with pytest.raises(InvalidInputError, match=f"at most {longest} characters"):
            check("n" * (longest + 1))
    # One more than the protocol carries: the wire refuses it too.
    with pytest.raises(LocalProtocolError):
        Authenticate(username="u" * 257, password="pw", organisation="o")
    with pytest.raises(LocalProtocolError):
        Authenticate(username="u", password="pw", organisation="o" * 129)


def test_a_device_name_may_be_empty_but_not_unprintable() -> None:
    assert check_device_name("") == ""
    assert check_device_name(" north laptop ") == " north laptop "
    for bad in ("north\nlaptop", "\x07", "a\udcff"):
        with pytest.raises(InvalidInputError, match="printable"):
            check_device_name(bad)


def test_a_name_that_is_not_text_is_refused() -> None:
    for check in (check_username, check_organisation, check_device_name):
        for value in (None, 42, b"dr.a", ["dr.a"]):
            with pytest.raises(InvalidInputError, match="must be text"):
                check(value)


def test_a_long_name_is_shown_shortened_and_escaped() -> None:
    assert shown("dr\nb") == "'dr\\nb'"
    long = shown("x" * 10_000)
    assert len(long) < 100
    assert "10000 characters" in long
    with pytest.raises(InvalidInputError) as refused:
        check_username("\n" * 10_000)
    assert len(str(refused.value)) < 200


# ------------------------------------------------------------------ the CLI


def test_user_add_refuses_a_username_with_a_line_break(tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    refused = run_main("user", "add", "--db", db, "--org", "clinic", "--username", "dr\nb")
    assert refused.code == ExitCode.USAGE
    line = refused.error_line()
    assert line.startswith("caresync user add: error: argument --username:")
    assert "line break" in line
    assert list(tmp_path.iterdir()) == []  # nothing created
    added = run_main("user", "add", "--db", db, "--org", "clinic", "--username", "Dr. Müller")
    assert added.ok().stdout.count("Dr. Müller") == 1


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["user", "add", "--org", " clinic", "--username", "dr.a"], "--org"),
        (["user", "passwd", "--org", "clinic", "--username", "dr.a\t"], "--username"),
        (["replicas", "--org", "clinic\n"], "--org"),
        (["enrol", "--server", "ws://127.0.0.1:1", "--device-name", "a\nb"], "--device-name"),
        (["enrol", "--server", "ws://127.0.0.1:1", "--org", "c" * 129, "--username", "a"], "--org"),
        (["sync", "--username", "u" * 257], "--username"),
    ],
)
def test_every_command_checks_the_names_it_is_given(
    tmp_path: Path, argv: list[str], option: str
) -> None:
    db = tmp_path / "some.db"
    refused = run_main(*argv, "--db", db)
    assert refused.code == ExitCode.USAGE, refused.stderr
    assert f"argument {option}:" in refused.error_line()
    assert list(tmp_path.iterdir()) == []
