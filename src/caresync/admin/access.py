"""Who may open the admin page: HTTP Basic credentials, and where they may be sent (pure).

The page is answered before the websocket handshake, by websockets' HTTP parser,
which refuses any request with a body: a login form (``POST``) cannot be read
there, so the page uses HTTP Basic (RFC 7617), checked at every request. Basic
sends the password with each request, so it is accepted only over TLS, or from
the same machine (loopback: ``ssh -L``, or a TLS-terminating proxy beside the
server); anywhere else the page is refused before any password is asked for.

The user-id is ``username@organisation``, split at the *last* ``@`` (a username
may be an e-mail address; an organisation holding ``@`` cannot log in here).
"""

from __future__ import annotations

import base64
import binascii
from typing import NamedTuple

from caresync.exceptions import InvalidInputError
from caresync.names import check_organisation, check_username
from caresync.transport.websocket import is_loopback_host

__all__ = ["REALM", "BasicCredentials", "challenge", "may_send_password", "parse_basic"]

REALM = "caresync admin"

_MAX_HEADER = 4096


class BasicCredentials(NamedTuple):
    """An account and the password sent for it."""

    organisation: str
    username: str
    password: str


def challenge() -> tuple[str, str]:
    """The ``WWW-Authenticate`` header that asks a browser for credentials."""
    return ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')


def may_send_password(*, tls: bool, remote_host: str | None) -> bool:
    """True when a password may be asked for on this connection: TLS, or loopback."""
    return tls or (remote_host is not None and is_loopback_host(remote_host))


def parse_basic(header: str | None) -> BasicCredentials | None:
    """The credentials of an ``Authorization: Basic`` header; None if there is none.

    InvalidInputError for a header that is Basic but malformed: not base64, not
    UTF-8, no ``:``, a user-id without ``@``, or names :mod:`caresync.names` refuses.
    """
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    if len(header) > _MAX_HEADER:
        raise InvalidInputError("the Authorization header is too long")
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidInputError("the Basic credentials are not base64 of UTF-8 text") from None
    user_id, colon, password = decoded.partition(":")
    if not colon:
        raise InvalidInputError("the Basic credentials have no ':' between user and password")
    username, at, organisation = user_id.rpartition("@")
    if not at:
        raise InvalidInputError("log in as username@organisation")
    return BasicCredentials(check_organisation(organisation), check_username(username), password)
