"""The key of a laptop's encrypted database: made with it, unlocked by a user's password.

Theory of operation
-------------------
A laptop database opened with a user's password is encrypted whole (AEGIS-256:
pages, write-ahead log and journal; :mod:`caresync.storage._cipher`). Its key is
random; the key file beside it (``<db>.keys``, :class:`~caresync.storage.KeyRing`)
holds one copy per user, wrapped under a key derived from that user's password with
argon2id. So:

* the database is made encrypted when a :class:`~caresync.replica.Replica` creates
  it with a username and password (``caresync enrol`` does, unless told
  ``--no-encrypt``): the first user's copy is made then;
* every later open needs the password of a user who has a copy; each attempt costs
  one argon2id derivation (a wrong password tries every user's copy);
* every online login wraps the key again for that user under the password the
  server just accepted: a new user gains a copy, and a changed password replaces
  the old copy (the old password no longer opens the database).

**Guessing is locked out here**, since a wrong password opens no database to count
in: every attempt to unlock is counted in the key file *before* any password is
tried (:meth:`~caresync.storage.KeyRing.change_attempts`, under the file's lock),
and a right password takes it back. After
:data:`~caresync.lockout.OFFLINE_LOGIN_ATTEMPTS` failures in a row no password is
tried at all (no argon2id derivation) until the lock has passed:
:class:`~caresync.exceptions.LoginLockedError`, as for an offline login on a
plain laptop (same policy, :mod:`caresync.lockout`). An attempt that cannot be
counted (a key file on read-only media, a full disk) is refused untried, with a
:class:`~caresync.exceptions.KeyFileError`. What this protects against: someone
at the laptop using caresync. Not: a thief who copies the files, who can
restore the key file's count as often as they like; against them the cost of
one argon2id derivation per guess and per user is the protection.

**Failed attempts are remembered** in the key file (the name as typed, the wall
time; at most :data:`~caresync.lockout.MAX_FAILED_KEPT`, the oldest dropped and
counted) until a caller has recorded them elsewhere: a successful unlock returns
them (:attr:`LaptopKey.failed_logins`), and :meth:`LaptopKey.failures_recorded`
clears them from the file.

**Removing a copy, rotating the key.** :func:`remove_laptop_user` removes one
user's copy, on the word of another user whose password opens the key now: the
removed password no longer opens the database, but the key is the same, so
whoever opened it before may have kept it. :func:`rotate_laptop_key` rewrites the
database under a new random key and leaves a key file with the acting user's copy
only (the others get one again at their next online login); the new key file is
written beside the old one (``<db>.keys.rotated``) before the database is
replaced, and renamed over the old one after, so a crash leaves a database that
one of them opens: :func:`unlock_laptop_key` finishes a rotation stopped between
the two, with the rotating user's password.

A database with no key file is a plain one, opened as before. The key and the
passwords are never stored, logged or shown.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from caresync.exceptions import (
    DatabaseKeyError,
    DatabaseNotFoundError,
    InvalidInputError,
    KeyFileError,
    LoginLockedError,
    PasswordNeededError,
    StorageError,
    WrongPasswordError,
)
from caresync.lockout import (
    NAME_WITHOUT_KEY,
    FailedLogin,
    UnlockAttempts,
    lock_seconds,
    locked_error,
)
from caresync.storage._cipher import KEY_BYTES, connect
from caresync.storage._lock import WriterLock
from caresync.storage.encrypt_in_place import rekey_in_place
from caresync.storage.keyring import (
    DEFAULT_KDF,
    KdfParams,
    KeyRing,
    check_password,
    fsync_directory,
    key_file_for,
)
from caresync.storage.schema import SQLITE_MAGIC

__all__ = [
    "MAX_USERS_TRIED",
    "FailedLogin",
    "LaptopKey",
    "Rotation",
    "create_laptop_key",
    "is_encrypted",
    "is_plain_database",
    "remove_laptop_user",
    "rotate_laptop_key",
    "rotated_key_file_for",
    "unlock_key_file",
    "unlock_laptop_key",
]

MAX_USERS_TRIED = 16
"""Users whose copies of the key are tried when no name is given (one derivation each)."""


def _wall_ms() -> int:
    """The wall clock, in milliseconds (what the guessing lock is timed by)."""
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class LaptopKey:
    """An unlocked database key, with the key file it came from."""

    ring: KeyRing
    key: bytes = field(repr=False)
    unlocked_by: str
    """The user whose password unlocked it (or who created it)."""
    params: KdfParams = DEFAULT_KDF
    failed_logins: tuple[FailedLogin, ...] = ()
    """The failed attempts to unlock this laptop since the failures were last recorded,
    oldest first, as the key file held them when this key was unlocked (empty for a
    key just made). Kept in the key file until :meth:`failures_recorded`."""
    failed_logins_dropped: int = 0
    """Failed attempts left out of :attr:`failed_logins` (beyond the most recent
    :data:`~caresync.lockout.MAX_FAILED_KEPT`)."""

    def remember(self, username: str, password: str) -> None:
        """Wrap the key for ``username`` under ``password`` (a new copy, or a new
        password replacing the old one), and save the key file. Blocks for one
        argon2id derivation: call it in a thread."""
        self.ring.add_user(username, password, self.key, params=self.params)

    def opens_for(self, username: str, password: str) -> bool:
        """Whether ``password`` (the one that unlocked this key) opens ``username``'s
        copy too: two users who share a password are both who it names. Blocks for one
        argon2id derivation (none when it is :attr:`unlocked_by`'s); not counted
        against the guessing lock, since this password opened the database already."""
        if username == self.unlocked_by:
            return True
        try:
            return hmac.compare_digest(self.ring.unlock(username, password), self.key)
        except (WrongPasswordError, KeyFileError, InvalidInputError):
            return False

    def failures_recorded(self) -> None:
        """Say that :attr:`failed_logins` (and the dropped count) were recorded elsewhere,
        such as an audit trail: they are cleared from the key file, and from here.
        Failures that came since this key was unlocked stay in the file.

        Call it only once they are durably recorded: until then, every successful
        unlock returns them again (so a crash in between shows them twice, never
        loses them). Blocks for one write of the key file (KeyFileError if it
        cannot be written: then nothing is cleared).
        """
        failed, dropped = self.failed_logins, self.failed_logins_dropped
        if failed or dropped:
            self.ring.change_attempts(lambda attempts: attempts.recorded(failed, dropped))
        self.failed_logins, self.failed_logins_dropped = (), 0


def is_encrypted(database: str | os.PathLike[str]) -> bool:
    """True when the database has a key file beside it (it is opened with a password)."""
    return key_file_for(database).exists()


def create_laptop_key(
    database: str | os.PathLike[str],
    username: str,
    password: str,
    *,
    params: KdfParams = DEFAULT_KDF,
    key: bytes | None = None,
) -> LaptopKey:
    """A new random key for a new database (or ``key``, made beforehand), wrapped for
    ``username``, in a new key file.

    Blocks for one argon2id derivation. KeyFileError if a key file is there already.
    """
    ring, made = KeyRing.create(key_file_for(database), username, password, params=params, key=key)
    return LaptopKey(ring, made, username, params)


def unlock_laptop_key(
    database: str | os.PathLike[str],
    password: str,
    username: str | None = None,
    *,
    params: KdfParams = DEFAULT_KDF,
) -> LaptopKey:
    """The database's key, unlocked by ``username``'s password (by any user's, when no
    name is given: each is tried, one argon2id derivation each).

    Guarded against guessing (see the module docstring): LoginLockedError while
    the laptop is locked, and for the failure that locks it. WrongPasswordError
    if no copy opens with it (the message says how a user who has no copy yet
    gets one); PasswordNeededError without a password; KeyFileError for a
    missing or damaged key file, or one the attempt cannot be counted in;
    DatabaseKeyError for a plain database beside a key file (an interrupted
    ``caresync encrypt``). Blocks: call it in a thread.

    After a key rotation interrupted once the database was rewritten under the new
    key (:func:`rotate_laptop_key`), the password of the user who rotated it finishes
    the rotation (the new key file takes the old one's place) and opens it; any
    other user's is refused with a WrongPasswordError that says so.
    """
    return _unlock_laptop(Path(database), password, username, params)


def _unlock_laptop(
    path: Path,
    password: str,
    username: str | None,
    params: KdfParams,
    *,
    excluding: str | None = None,
) -> LaptopKey:
    if is_plain_database(path):
        raise DatabaseKeyError(
            f"{path} is a plain (unencrypted) database, yet a key file is beside it: a "
            f"`caresync encrypt` was interrupted (run `caresync encrypt --db {path}` again "
            "to finish it; the plain database is whole), or the file was replaced by a "
            "plain one. Nothing was changed"
        )
    unlocked = _unlock(
        key_file_for(path), password, username, params, laptop=path, excluding=excluding
    )
    if rotated_key_file_for(path).exists():
        return _after_a_rotation(path, unlocked, password, username, params)
    return unlocked


def unlock_key_file(
    key_file: str | os.PathLike[str],
    password: str,
    username: str | None = None,
    *,
    params: KdfParams = DEFAULT_KDF,
) -> LaptopKey:
    """The key a key file holds, unlocked as :func:`unlock_laptop_key` does, guarded
    alike (a laptop's ``<db>.keys``, read for instance to import that laptop's
    encrypted export)."""
    return _unlock(Path(key_file), password, username, params, laptop=None)


def _unlock(
    key_file: Path,
    password: str,
    username: str | None,
    params: KdfParams,
    *,
    laptop: Path | None,
    excluding: str | None = None,
) -> LaptopKey:
    database = laptop if laptop is not None else Path(str(key_file).removesuffix(".keys"))
    if not isinstance(password, str) or not password:
        raise PasswordNeededError(
            f"{database} is encrypted: a password is needed to open it, that of a user who "
            "logged in online on this laptop (on the command line: CARESYNC_PASSWORD, or "
            "the prompt)"
        )
    check_password(password)
    ring = KeyRing.load(key_file)
    users = ring.users() if username is None else [username]
    if excluding is not None:
        if username == excluding:
            raise InvalidInputError(
                f"the password must be that of another user than {excluding!r}; no password "
                "was tried"
            )
        users = [user for user in users if user != excluding]
        if not users:
            raise InvalidInputError(
                f"{key_file} holds no other user's copy of the key than {excluding!r}'s; no "
                "password was tried"
            )
    if len(users) > MAX_USERS_TRIED:
        # Each try costs an argon2id derivation: a file listing thousands of users
        # (a hand-edited one) must not make opening take hours.
        raise InvalidInputError(
            f"{key_file} holds {len(users)} users' copies of the key; name the user "
            f"(at most {MAX_USERS_TRIED} are tried without a name)"
        )
    now_ms = _wall_ms()
    this: list[FailedLogin] = []
    holders = frozenset(ring.users())

    def count(attempts: UnlockAttempts) -> UnlockAttempts:
        locked = locked_error(attempts.locked_until_ms, now_ms)
        if locked is not None:
            raise locked
        # A name that holds no copy is not kept: it may be a password typed in the
        # name's field, and the key file beside the database is plain text.
        kept = username if username is None or username in holders else NAME_WITHOUT_KEY
        counted, attempt = attempts.attempt(kept, now_ms)
        this.append(attempt)
        return counted

    try:
        counted = ring.change_attempts(count)
    except KeyFileError as exc:
        if not ring.holds_the_key_of(key_file):
            raise KeyFileError(
                f"{exc}; its key was changed meanwhile (`caresync keys rotate`), so no "
                "password was tried: try again"
            ) from exc
        raise KeyFileError(
            f"{exc}; the attempt could not be counted, so no password was tried (the key "
            "file must be writable: copy a read-only one somewhere writable)"
        ) from exc
    for user in users:
        try:
            key = ring.unlock(user, password)
        except WrongPasswordError:
            continue
        after = ring.change_attempts(lambda attempts: attempts.succeeded(this[0]))
        return LaptopKey(ring, key, user, params, after.failed, after.dropped)
    message = _no_copy_opens(database, username, laptop=laptop is not None)
    if counted.locked_until_ms > now_ms:
        lock_s = lock_seconds(counted.failures)
        raise LoginLockedError(
            f"{message} {counted.failures} failed attempts in a row: this laptop tries no "
            f"password for {lock_s:.0f} s",
            retry_after_s=lock_s,
        )
    raise WrongPasswordError(message)


def _no_copy_opens(database: Path, username: str | None, *, laptop: bool) -> str:
    who = "any user who logged in on that laptop" if username is None else username
    message = (
        f"{database}: this password does not open the database for {who}; nothing in it "
        "was read or changed."
    )
    if not laptop:
        return message
    user = username if username is not None else "USER"
    return (
        f"{message} A wrong password, or a user whose password does not open it yet (no "
        "online login on this laptop, or a password changed on the server since): log in "
        f"online once with `caresync sync --db {database} --username {user} --unlock`, "
        "CARESYNC_UNLOCK_PASSWORD set to a password that opens it now (the user's old one, "
        "or a colleague's). An account disabled on the server no longer opens it (the "
        "laptop removed its copy when it learnt of it): `caresync status` on the laptop "
        "says whose offline login ended, and why."
    )


# ---------------------------------------------------------- changing the key file


def remove_laptop_user(
    database: str | os.PathLike[str],
    username: str,
    password: str,
    by: str | None = None,
    *,
    params: KdfParams = DEFAULT_KDF,
) -> list[str]:
    """Remove ``username``'s copy of the key of the encrypted laptop database at
    ``database``, on the word of another user of it: ``by`` (any other user, when
    None), whose ``password`` must unlock the key now. Returns the users who still
    have a copy.

    From then on ``username``'s password no longer opens this database (until they
    get a copy again at an online login on this laptop while it is open). The key
    itself is unchanged: whoever unlocked the database before may have kept it,
    and copies of the key file (backups) still hold the removed copy. Rotate the
    key for that (:func:`rotate_laptop_key`).

    The password is tried as every unlock is, counted against the laptop's
    guessing lock (WrongPasswordError, LoginLockedError). Refused, with nothing
    changed: no database (DatabaseNotFoundError), a plain one or no key file
    (KeyFileError), ``username`` with no copy (UnknownKeyUserError, before any
    password is tried), the last copy, or ``by`` naming ``username``
    (InvalidInputError). Blocks for argon2id derivations: call it in a thread.
    """
    path = Path(database)
    _refuse_without_key_file(path, "remove a user's copy of")
    KeyRing.load(key_file_for(path)).check_removable(username)
    unlocked = _unlock_laptop(path, password, by, params, excluding=username)
    unlocked.ring.remove_user(username)
    return unlocked.ring.users()


@dataclass(frozen=True, slots=True)
class Rotation:
    """What :func:`rotate_laptop_key` did."""

    database: Path
    username: str
    """The user whose password opens the database now (the only copy of the new key)."""
    dropped: tuple[str, ...]
    """The other users who had a copy of the old key: none of the new one yet."""


def rotate_laptop_key(
    database: str | os.PathLike[str],
    password: str,
    username: str | None = None,
    *,
    params: KdfParams = DEFAULT_KDF,
) -> Rotation:
    """Encrypt the laptop database at ``database`` under a new random key, in place,
    and replace its key file with one holding only the copy of the user whose
    ``password`` unlocked the old key (``username``, or whoever's it opens).

    Other users' copies cannot be made without their passwords: each gets one
    again at their next online login on this laptop while it is open (``caresync
    sync --username NAME --unlock``), as after ``caresync encrypt``. The failed
    unlock attempts the key file holds are kept.

    The steps are :func:`~caresync.storage.encrypt_in_place.rekey_in_place`'s: a
    copy under the new key beside the database, verified row by row; the new key
    file written beside the old one (``<db>.keys.rotated``); the copy renamed over
    the database; the new key file renamed over the old one. A crash at any step
    leaves a database that the old key file opens (until the database is
    replaced) or the new one (after): :func:`unlock_laptop_key` finishes a
    rotation interrupted between the last two renames, with the rotating user's
    password.

    Refused, with nothing changed: no database (DatabaseNotFoundError), a plain
    one or no key file (KeyFileError), a database another process has open
    (StorageError: a running replica holds its writer lock), a wrong password
    (WrongPasswordError, LoginLockedError; counted as every unlock is). Blocks
    for a copy of the database and argon2id derivations: call it in a thread.
    """
    path = Path(database)
    _refuse_without_key_file(path, "rotate the key of")
    WriterLock.acquire(path).release()  # in use: refused before a password is tried
    old = _unlock_laptop(path, password, username, params)
    new_key = secrets.token_bytes(KEY_BYTES)
    pending = rotated_key_file_for(path)
    made: list[KeyRing] = []
    installs: list[Callable[[], None]] = []
    held = contextlib.ExitStack()

    def write_key_file() -> None:
        # Under the writer lock, the database just read with the old key: a file
        # left here by an interrupted rotation is stale.
        pending.unlink(missing_ok=True)
        ring, _ = KeyRing.create(pending, old.unlocked_by, password, params=params, key=new_key)
        made.append(ring)
        # The old key file stays locked until the new one replaces it: a copy removed
        # meanwhile (`keys remove-user`) is neither undone by it nor, if it was the
        # rotating user's, ignored (refused here, before the database is replaced).
        installs.append(
            held.enter_context(ring.replacing_file_of(old.ring, keeping=old.unlocked_by))
        )

    def install_key_file() -> None:
        installs[0]()
        held.close()
        pending.unlink(missing_ok=True)
        fsync_directory(path.parent)

    try:
        rekey_in_place(path, old.key, new_key, write_key_file, install_key_file)
    except BaseException as exc:
        held.close()
        if not made:
            raise
        if _opens(path, old.key):
            pending.unlink(missing_ok=True)  # the database was not replaced: of no use
            raise
        if isinstance(exc, Exception) and pending.exists():
            raise StorageError(
                f"{exc}. {path} is under its new key already, which only "
                f"{old.unlocked_by}'s password opens (its new key file waits beside the old "
                f"one, {pending.name}): open the database once with that password (any "
                "command) to finish the rotation"
            ) from exc
        raise
    dropped = tuple(user for user in old.ring.users() if user != old.unlocked_by)
    return Rotation(path, old.unlocked_by, dropped)


def rotated_key_file_for(database: str | os.PathLike[str]) -> Path:
    """Where a key rotation writes the new key file before it replaces the old one:
    ``<database>.keys.rotated``."""
    keys = key_file_for(database)
    return keys.with_name(keys.name + ".rotated")


def _refuse_without_key_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DatabaseNotFoundError(f"there is no database at {path}; nothing was changed")
    keys = key_file_for(path)
    if keys.exists():
        return
    if is_plain_database(path):
        raise KeyFileError(
            f"cannot {what} {path}: it is a plain (unencrypted) database, with no key file "
            "beside it (`caresync encrypt` encrypts a laptop's); nothing was changed"
        )
    raise KeyFileError(
        f"cannot {what} {path}: there is no key file beside it ({keys}), where a laptop's "
        "encrypted database keeps its key (a server's key is its operator's, "
        "CARESYNC_DATABASE_KEY); nothing was changed"
    )


def _after_a_rotation(
    path: Path, unlocked: LaptopKey, password: str, username: str | None, params: KdfParams
) -> LaptopKey:
    """``unlocked`` (from the key file), or the rotated key a rotation left beside it.

    A rotation interrupted before its copy replaced the database left a stale new
    key file: the old key still opens the database (the next rotation removes
    the file). Interrupted after: only the new key opens it; the rotating user's
    password unlocks it and the new key file takes the old one's place.
    """
    if not path.is_file() or _opens(path, unlocked.key):
        return unlocked  # no database to open (nor to create here): the store says why
    pending = rotated_key_file_for(path)
    try:
        ring = KeyRing.load(pending)
    except KeyFileError:
        if pending.exists():
            raise
        # Installed meanwhile by the rotation itself: the key file holds the new key.
        return _unlock(key_file_for(path), password, username, params, laptop=path)
    rotator = ring.users()
    for user in rotator if username is None else [username]:
        try:
            key = ring.unlock(user, password)
        except WrongPasswordError:
            continue
        if not _opens(path, key):
            return unlocked  # neither opens it: opening says so (DatabaseKeyError)
        ring.replace_file_of(unlocked.ring)
        pending.unlink(missing_ok=True)
        fsync_directory(path.parent)
        return LaptopKey(
            ring, key, user, params, unlocked.failed_logins, unlocked.failed_logins_dropped
        )
    names = ", ".join(rotator)
    raise WrongPasswordError(
        f"{path}: a key rotation (`caresync keys rotate`) was interrupted after the database "
        f"was rewritten under its new key, which only {names}'s password opens: open it once "
        f"with that password (any command, or `caresync keys rotate --db {path}` again), "
        "which finishes the rotation; the other users then log in online once with "
        "`caresync sync --username NAME --unlock`. Nothing was changed"
    )


def _opens(path: Path, key: bytes) -> bool:
    """Whether ``key`` opens the database at ``path`` (page 1 is read; nothing written)."""
    if not path.is_file():
        return False  # and connect() must not make one
    try:
        conn = connect(path, key=key)
    except DatabaseKeyError:
        return False
    conn.close()
    return True


def is_plain_database(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a plain SQLite file (an encrypted one starts with a salt);
    False for a missing or unreadable one."""
    try:
        with Path(path).open("rb") as file:
            return file.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False  # missing or unreadable: the store says why
