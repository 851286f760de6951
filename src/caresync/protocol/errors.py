"""Error codes carried by :class:`~caresync.protocol.messages.Error`, and what they mean.

Each code maps to exactly one caresync exception class; :func:`error_for` builds the
exception a receiving side raises. A code this version does not know (sent by a newer
peer) maps to :class:`~caresync.exceptions.SyncRefusedError`, so an old replica still
refuses cleanly.

=====================  ==============================  ==========================================
code                   exception on the receiving side  meaning
=====================  ==============================  ==========================================
unsupported_version    SyncRefusedError                 no protocol version in common
wrong_server           WrongServerError                 enrolled to another server
wrong_organisation     WrongOrganisationError           enrolled to, or logged in to, another org
bad_credentials        AuthenticationError              bad user name or password, or a
                                                        replica that did not prove its secret
throttled              AuthenticationError              too many failed logins; wait
session_expired        AuthenticationError              session token unknown or expired
revoked                ReplicaRevokedError              this replica was revoked; it must lock
not_enrolled           NotEnrolledError                 a sync request before enrolment
forbidden              SyncRefusedError                 a record this user may not see or write
bad_message            ProtocolError                    the receiver found a frame malformed/illegal
too_large              ProtocolError                    a frame over the receiver's maximum size
busy                   ConnectionLostError              the server is overloaded; retry later
going_away             ConnectionLostError              the server is shutting down; retry later
internal               ConnectionLostError              the server failed; nothing was committed
client_too_old         ClientTooOldError                this caresync is older than the oldest the
                                                        server accepts (v7 on): update it
feed_diverged          FeedDivergedError                the server's change feed does not reach,
                                                        or labels otherwise, the position the
                                                        pull starts from (restored from an
                                                        older backup): resend, pull from 0
=====================  ==============================  ==========================================

``bad_message`` and ``too_large`` map to the plain :class:`~caresync.exceptions.ProtocolError`:
the peer says *we* broke the protocol, which is neither our caller's illegal move
(``LocalProtocolError``) nor the peer's (``RemoteProtocolError``). The three
``ConnectionLostError`` codes mean "try again later; unsynced work is kept".
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from caresync.exceptions import (
    AuthenticationError,
    CaresyncError,
    ClientTooOldError,
    ConnectionLostError,
    FeedDivergedError,
    NotEnrolledError,
    ProtocolError,
    ReplicaRevokedError,
    SyncRefusedError,
    WrongOrganisationError,
    WrongServerError,
)

__all__ = ["ERROR_CLASSES", "ErrorCode", "error_for"]


class ErrorCode(enum.StrEnum):
    """The error codes this version of the protocol defines (see the module table)."""

    UNSUPPORTED_VERSION = "unsupported_version"
    WRONG_SERVER = "wrong_server"
    WRONG_ORGANISATION = "wrong_organisation"
    BAD_CREDENTIALS = "bad_credentials"
    THROTTLED = "throttled"
    SESSION_EXPIRED = "session_expired"
    REVOKED = "revoked"
    NOT_ENROLLED = "not_enrolled"
    FORBIDDEN = "forbidden"
    BAD_MESSAGE = "bad_message"
    TOO_LARGE = "too_large"
    BUSY = "busy"
    GOING_AWAY = "going_away"
    INTERNAL = "internal"
    CLIENT_TOO_OLD = "client_too_old"
    FEED_DIVERGED = "feed_diverged"


ERROR_CLASSES: Mapping[str, type[CaresyncError]] = MappingProxyType(
    {
        ErrorCode.UNSUPPORTED_VERSION: SyncRefusedError,
        ErrorCode.WRONG_SERVER: WrongServerError,
        ErrorCode.WRONG_ORGANISATION: WrongOrganisationError,
        ErrorCode.BAD_CREDENTIALS: AuthenticationError,
        ErrorCode.THROTTLED: AuthenticationError,
        ErrorCode.SESSION_EXPIRED: AuthenticationError,
        ErrorCode.REVOKED: ReplicaRevokedError,
        ErrorCode.NOT_ENROLLED: NotEnrolledError,
        ErrorCode.FORBIDDEN: SyncRefusedError,
        ErrorCode.BAD_MESSAGE: ProtocolError,
        ErrorCode.TOO_LARGE: ProtocolError,
        ErrorCode.BUSY: ConnectionLostError,
        ErrorCode.GOING_AWAY: ConnectionLostError,
        ErrorCode.INTERNAL: ConnectionLostError,
        ErrorCode.CLIENT_TOO_OLD: ClientTooOldError,
        ErrorCode.FEED_DIVERGED: FeedDivergedError,
    }
)
"""The exception class each known code maps to."""


def error_for(code: str, message: str) -> CaresyncError:
    """The exception that an :class:`~caresync.protocol.messages.Error` with ``code`` means.

    The exception's text is ``"<code>: <message>"``. Unknown codes give a
    :class:`~caresync.exceptions.SyncRefusedError`.
    """
    cls = ERROR_CLASSES.get(code, SyncRefusedError)
    return cls(f"{code}: {message}" if message else code)
