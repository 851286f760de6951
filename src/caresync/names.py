"""Account names: what a username, an organisation or a device name may be.

Pure checks, shared by the command line, the server's API and the store, so
that a name one of them accepts is one every other accepts too, and one the
wire protocol can carry (:mod:`caresync.protocol.messages`: user and device
names are at most ``MAX_NAME_LENGTH`` printable characters, organisation ids
at most ``MAX_ID_LENGTH``).

* A **username** is 1 to 256 characters, all printable (``str.isprintable``:
  no newline, tab, control or format character, no lone surrogate), with no
  space at either end.
* An **organisation** follows the same rules, in at most 128 characters.
* A **device name** (what an administrator sees for a laptop) is 0 to 256
  printable characters.
* A **display name** (how people see an account, "Dr Aïcha Diallo") follows
  the username's rules.

Each check returns the name unchanged, or raises
:class:`~caresync.exceptions.InvalidInputError` with a message that says what
is wrong with it (and shows the name escaped, shortened if it is long).
"""

from __future__ import annotations

from caresync.exceptions import InvalidInputError
from caresync.protocol.messages import MAX_ID_LENGTH, MAX_NAME_LENGTH

__all__ = [
    "MAX_DEVICE_NAME_LENGTH",
    "MAX_ORGANISATION_LENGTH",
    "MAX_USERNAME_LENGTH",
    "check_device_name",
    "check_display_name",
    "check_organisation",
    "check_username",
    "shown",
]

MAX_USERNAME_LENGTH = MAX_NAME_LENGTH
MAX_ORGANISATION_LENGTH = MAX_ID_LENGTH
MAX_DEVICE_NAME_LENGTH = MAX_NAME_LENGTH

_SHOWN_LENGTH = 60


def shown(value: object, limit: int = _SHOWN_LENGTH) -> str:
    """``value`` as it appears in an error message: escaped (``repr``), shortened past ``limit``.

    A name may hold a newline, a terminal escape or a thousand characters: none
    of it reaches the message as is.
    """
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit + 2 else text[: limit + 2] + "…"


def check_username(value: object) -> str:
    """``value`` if it is a valid username, else InvalidInputError saying why."""
    return _check_account_name("a username", value, MAX_USERNAME_LENGTH)


def check_organisation(value: object) -> str:
    """``value`` if it is a valid organisation name, else InvalidInputError saying why."""
    return _check_account_name("an organisation", value, MAX_ORGANISATION_LENGTH)


def check_display_name(value: object) -> str:
    """``value`` if it is a valid display name of an account, else InvalidInputError."""
    return _check_account_name("a display name", value, MAX_USERNAME_LENGTH)


def check_device_name(value: object) -> str:
    """``value`` if it is a valid device name (the empty name included), else InvalidInputError."""
    what = "a device name"
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be text, not {type(value).__name__}")
    if len(value) > MAX_DEVICE_NAME_LENGTH:
        raise InvalidInputError(
            f"{what} is at most {MAX_DEVICE_NAME_LENGTH} characters; {shown(value)} is too long"
        )
    _check_printable(what, value)
    return value


def _check_account_name(what: str, value: object, max_length: int) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be text, not {type(value).__name__}")
    if not value.strip():
        raise InvalidInputError(f"{what} cannot be empty or only spaces")
    if len(value) > max_length:
        raise InvalidInputError(
            f"{what} is at most {max_length} characters; {shown(value)} is too long"
        )
    _check_printable(what, value)
    if value != value.strip():
        raise InvalidInputError(f"{what} cannot start or end with a space: {shown(value)}")
    return value


def _check_printable(what: str, value: str) -> None:
    bad = next((c for c in value if not c.isprintable()), None)
    if bad is not None:
        raise InvalidInputError(
            f"{what} must be printable characters on one line; {shown(value)} holds "
            f"{_character(bad)}"
        )


def _character(c: str) -> str:
    names = {"\n": "a line break", "\r": "a carriage return", "\t": "a tab", "\x00": "a NUL"}
    if c in names:
        return names[c]
    if 0xD800 <= ord(c) <= 0xDFFF:
        return f"U+{ord(c):04X}, a lone surrogate (bytes that are not UTF-8)"
    return f"U+{ord(c):04X}, which is not printable"
