"""Every error caresync raises on purpose.

A caller catches :class:`CaresyncError` to catch them all; nothing from pycrdt,
msgpack, sqlite3 or websockets escapes the public API untranslated.

.. code-block:: text

    CaresyncError
     ├── InvalidInputError            bad input from the caller; nothing was stored
     │    ├── InvalidPathError         a field path the record model does not accept
     │    ├── InvalidValueError        a value that is not JSON-like, or fails its schema
     │    ├── UnknownCollectionError   an entry in a collection the schema does not declare
     │    ├── AuthorError              an author who is not the account logged in here
     │    ├── AuditError               an audit entry or trail that is malformed or does not chain
     │    ├── InvalidFhirError         a FHIR file or resource that cannot be imported
     │    ├── UnknownKeyUserError      a user with no copy of a laptop's key in its key file
     │    └── InvalidOptionError       an option out of its range (a record pool's size)
     ├── RecordError                  a record cannot do what was asked
     │    ├── UnknownRecordError       no record with that id
     │    ├── UnknownEntryError        no entry with that id in that collection
     │    ├── FieldConflictError       the field has several candidates; choose one first
     │    ├── ImmutableFieldError      the field belongs to a signed note; add an addendum
     │    ├── InvalidUpdateError       bytes that are not a valid update for this record
     │    │    └── RefusedUpdateError  a valid update a server does not admit from a peer
     │    └── RecordMismatchError      an update or document that belongs to another record
     ├── ConflictError                a conflict cannot be resolved as asked
     │    ├── UnknownConflictError     no open conflict with that id (resolved, or never was)
     │    └── InvalidResolutionError   a choice out of range, or choose and value both given
     ├── RuleError                    a safety rule misbehaved (raised, or returned junk)
     ├── StorageError                 the local database cannot do what was asked
     │    ├── NotACaresyncDatabaseError the file is not a caresync database; left untouched
     │    │    └── DatabaseKeyError    encrypted and no key or a wrong one, or a key for a
     │    │         │                  plain file; left untouched
     │    │         └── PasswordNeededError encrypted, and no password was given to open it
     │    ├── AlreadyEncryptedError    asked to encrypt a database that is encrypted already
     │    ├── DatabaseTooNewError      written by a newer caresync; left untouched
     │    ├── CorruptDatabaseError     the consistency check failed
     │    ├── DatabaseNotFoundError    no database at that path, and creating one was not asked
     │    ├── ExportFileError          an export of unsynced changes is damaged or unreadable
     │    ├── UnsyncedChangesError     refused: it would delete changes not yet acknowledged
     │    └── KeyFileError             a database key file is damaged, edited or unreadable
     ├── ProtocolError                a sync peer broke the protocol
     │    ├── LocalProtocolError       we tried an illegal move (a bug in the caller)
     │    └── RemoteProtocolError      the peer sent something malformed or illegal
     │         └── FrameTooLargeError  a frame over the negotiated maximum size
     ├── SyncRefusedError             the server, or the replica, refused to sync
     │    ├── WrongServerError         enrolled to another server
     │    ├── WrongOrganisationError   enrolled to another organisation
     │    ├── AuthenticationError      bad username or password, or an expired session
     │    │    ├── LoginLockedError    too many failed offline logins: wait, then try again
     │    │    ├── NotLoggedInError    nobody is logged in on this laptop (or it went idle)
     │    │    └── WrongPasswordError  this user and password do not unlock the database key
     │    ├── ReplicaRevokedError      the replica was revoked; it is locked
     │    ├── NotEnrolledError         the replica has not been enrolled yet
     │    ├── ClientTooOldError        the server accepts only newer caresync clients: update
     │    ├── FeedDivergedError        the server's feed is not the one read (restored from a
     │    │                            backup): a sync resends and pulls from 0 by itself
     │    └── InsecureConnectionError  plain ws:// beyond this machine, not allowed
     ├── ConnectionLostError          the connection dropped; unsynced work is kept
     │    └── ServerSilentError       the server sent no reply in time; the sync was ended
     ├── NotImplementedFeatureError   a documented feature that is not built yet
     └── MissingExtraError            an optional extra (pip install "caresync[fhir]") is missing
"""

from __future__ import annotations

__all__ = [
    "AlreadyEncryptedError",
    "AuditError",
    "AuthenticationError",
    "AuthorError",
    "CaresyncError",
    "ClientTooOldError",
    "ConflictError",
    "ConnectionLostError",
    "CorruptDatabaseError",
    "DatabaseKeyError",
    "DatabaseNotFoundError",
    "DatabaseTooNewError",
    "ExportFileError",
    "FeedDivergedError",
    "FieldConflictError",
    "FrameTooLargeError",
    "ImmutableFieldError",
    "InsecureConnectionError",
    "InvalidFhirError",
    "InvalidInputError",
    "InvalidOptionError",
    "InvalidPathError",
    "InvalidResolutionError",
    "InvalidUpdateError",
    "InvalidValueError",
    "KeyFileError",
    "LocalProtocolError",
    "LoginLockedError",
    "MissingExtraError",
    "NotACaresyncDatabaseError",
    "NotEnrolledError",
    "NotImplementedFeatureError",
    "NotLoggedInError",
    "PasswordNeededError",
    "ProtocolError",
    "RecordError",
    "RecordMismatchError",
    "RefusedUpdateError",
    "RemoteProtocolError",
    "ReplicaRevokedError",
    "RuleError",
    "StorageError",
    "ServerSilentError",
    "SyncRefusedError",
    "UnknownCollectionError",
    "UnknownConflictError",
    "UnknownEntryError",
    "UnknownKeyUserError",
    "UnknownRecordError",
    "UnsyncedChangesError",
    "WrongOrganisationError",
    "WrongPasswordError",
    "WrongServerError",
]


class CaresyncError(Exception):
    """Root of every error caresync raises on purpose."""


class InvalidInputError(CaresyncError, ValueError):
    """The caller passed something caresync cannot accept; nothing was stored."""


class InvalidOptionError(InvalidInputError):
    """An option given to open a replica, a server or a simulation is out of its range.

    Raised before anything is opened or written; the message names the option,
    its range and the value given.
    """


class InvalidPathError(InvalidInputError):
    """A field path the record model does not accept."""


class InvalidValueError(InvalidInputError):
    """A value that is not JSON-like, or that its schema rejects."""


class UnknownCollectionError(InvalidInputError):
    """An entry was added to a collection the schema does not declare."""


class AuthorError(InvalidInputError):
    """An entry named as its author someone other than the account logged in on the
    laptop: every entry is written as that account."""


class AuditError(InvalidInputError):
    """An audit entry or trail that is malformed, or does not continue the chain it claims."""

    line: int | None = None
    """For an export file: the line (from 1) that holds no entry of a trail."""


class RecordError(CaresyncError):
    """A record cannot do what was asked."""


class UnknownRecordError(RecordError, LookupError):
    """No record with that id is stored here."""


class UnknownEntryError(RecordError, LookupError):
    """No entry with that id exists in that collection of the record."""


class FieldConflictError(RecordError):
    """The field has several concurrent candidates; a person must choose one.

    ``conflict_id`` names the conflict to pass to ``resolve``.
    """

    def __init__(self, message: str, *, path: str, conflict_id: str) -> None:
        super().__init__(message)
        self.path = path
        self.conflict_id = conflict_id


class ImmutableFieldError(RecordError):
    """The field belongs to a signed note: it can no longer change; add an addendum."""


class InvalidUpdateError(RecordError):
    """Bytes that are not a valid update for this record."""


class RefusedUpdateError(InvalidUpdateError):
    """A valid Yjs update that a server does not admit into a record from a peer.

    An update may only add new, well-formed revisions (see
    :mod:`caresync.records.admission`); the message names the record and says
    what is wrong, for the developer of the client that sent it. ``record_id``
    names the record.
    """

    def __init__(self, message: str, *, record_id: str = "") -> None:
        super().__init__(message)
        self.record_id = record_id


class RecordMismatchError(RecordError):
    """An update or a document that belongs to a different record."""


class ConflictError(CaresyncError):
    """A conflict cannot be resolved as asked."""


class UnknownConflictError(ConflictError, LookupError):
    """No open conflict has that id: it was resolved already, or never existed here."""


class InvalidResolutionError(ConflictError, InvalidInputError):
    """A resolution that does not fit its conflict (bad choice index, or none given)."""


class RuleError(CaresyncError):
    """A safety rule raised, or returned something that is not a finding."""


class StorageError(CaresyncError):
    """The local database cannot do what was asked."""


class NotACaresyncDatabaseError(StorageError):
    """The file is not a caresync database. It was left untouched."""


class DatabaseTooNewError(StorageError):
    """The database was written by a newer caresync. It was left untouched."""


class CorruptDatabaseError(StorageError):
    """The store's consistency check failed."""


class DatabaseNotFoundError(StorageError, FileNotFoundError):
    """No database at that path, and the caller asked not to create one. Nothing was created."""


class ExportFileError(StorageError):
    """A file of exported unsynced changes is missing, damaged, not one, or from a newer version."""


class UnsyncedChangesError(StorageError):
    """Refused: the operation would delete changes the server has not acknowledged."""


class ProtocolError(CaresyncError):
    """A sync peer broke the protocol."""


class LocalProtocolError(ProtocolError):
    """This side tried a move the protocol does not allow in its current state."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed, unknown or illegal in the current state."""


class FrameTooLargeError(RemoteProtocolError):
    """A frame larger than the maximum frame size."""


class SyncRefusedError(CaresyncError):
    """The server or the replica refused to sync; nothing moved."""


class WrongServerError(SyncRefusedError):
    """The replica is enrolled to another server."""


class WrongOrganisationError(SyncRefusedError):
    """The replica is enrolled to another organisation."""


class AuthenticationError(SyncRefusedError):
    """Bad username or password, or a session that is no longer valid."""


class LoginLockedError(AuthenticationError):
    """Too many failed offline logins on this laptop: no password is checked until
    ``retry_after_s`` seconds have passed."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotLoggedInError(AuthenticationError):
    """Nobody is logged in on this laptop, or the login expired after a time idle:
    log in (online, or offline with a password already used here) to write."""


class ReplicaRevokedError(SyncRefusedError):
    """The replica was revoked by its server; it is locked, its unsynced work kept."""


class NotEnrolledError(SyncRefusedError):
    """The replica has not been enrolled to a server yet."""


class ClientTooOldError(SyncRefusedError):
    """The server accepts only newer caresync clients than this one: update caresync.

    Nothing was sent: the outbox is untouched, and syncs once caresync is updated.
    """


class InsecureConnectionError(SyncRefusedError):
    """A plain ``ws://`` URL to another machine: passwords and records would cross the
    network unencrypted. Use ``wss://``, or allow it explicitly (``insecure=True``)."""


class ConnectionLostError(CaresyncError):
    """The connection dropped; unsynced work stays in the outbox."""


class ServerSilentError(ConnectionLostError):
    """The server sent no reply within ``SyncLimits.reply_timeout_s``: the session was
    ended (a server that hangs, or a link that carries nothing); unsynced work stays in
    the outbox, and a later sync tries again."""


class FeedDivergedError(SyncRefusedError):
    """The server's change feed is not the one this laptop read: it ends before the
    laptop's checkpoint, or labels it with another feed epoch (a server restored from
    an older backup). A sync answers it by itself (it sends again what this laptop
    wrote and pulls from the feed's start, see ``SyncReport.server_went_back``); an
    application sees it only from a server that refuses again right after."""


class NotImplementedFeatureError(CaresyncError, NotImplementedError):
    """A documented feature that is not built yet (see the README's list)."""


class InvalidFhirError(InvalidInputError):
    """A FHIR file, Bundle or resource that caresync cannot import; nothing was stored.

    The message says where (the line or entry, the resource) and what is wrong.
    """


class MissingExtraError(CaresyncError, ImportError):
    """A feature needs an optional extra that is not installed; the message says what to
    install (``pip install "caresync[fhir]"``)."""


class DatabaseKeyError(NotACaresyncDatabaseError):
    """An encrypted database opened with no key or a wrong one, or a plain database
    opened with a key. The file (and its -wal and -shm) was left untouched."""


class PasswordNeededError(DatabaseKeyError):
    """An encrypted laptop database was opened without a password: give the password of
    a user who logged in online on that laptop (on the command line, in
    ``CARESYNC_PASSWORD`` or at the prompt). Nothing was read or changed."""


class AlreadyEncryptedError(StorageError):
    """Asked to encrypt a database (``caresync encrypt``) that is encrypted already.
    Nothing was changed."""


class KeyFileError(StorageError):
    """A database key file is damaged, was edited by hand, or cannot be read or written.
    The message names the file."""


class UnknownKeyUserError(InvalidInputError, LookupError):
    """Asked to remove a user's copy of a laptop's database key, and that user has none in
    the key file (the message names them, and who has one). Nothing was changed."""


class WrongPasswordError(AuthenticationError):
    """This username and password do not unlock the database key on this laptop: a
    wrong password, or a user who never logged in online here."""
