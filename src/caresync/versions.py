"""Which caresync a laptop runs, and whether its server asks for a newer one (pure).

At each login (protocol version 7 on) a laptop says its caresync version and the
server answers with the newest it knows and the oldest it accepts
(``caresync serve --client-min-version``); a laptop older than that is refused
before anything moves, its outbox untouched, with
:class:`~caresync.exceptions.ClientTooOldError`. Versions compare as PEP 440
versions (``0.9.2 < 0.10.0``, ``1.0.0rc1 < 1.0.0``).
"""

from __future__ import annotations

from typing import Final

from packaging.version import InvalidVersion, Version

from caresync import __version__
from caresync.exceptions import InvalidInputError

__all__ = ["CLIENT_VERSION", "check_version", "is_older"]

CLIENT_VERSION: Final = __version__
"""The version of caresync this process runs, as a laptop tells its server."""


def check_version(text: str, what: str = "a version") -> str:
    """``text`` if it is a PEP 440 version (InvalidInputError otherwise)."""
    try:
        Version(text)
    except (InvalidVersion, TypeError) as exc:
        raise InvalidInputError(
            f"{what} must be a version such as 0.1.0 or 1.2.0rc1, not {text!r:.40}"
        ) from exc
    return text


def is_older(version: str | None, than: str) -> bool:
    """True when ``version`` is older than ``than``; a version not said, or not one,
    counts as older (a client too old to say it, or one that says nonsense)."""
    if version is None:
        return True
    try:
        return Version(version) < Version(than)
    except InvalidVersion:
        return True
