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

A database with no key file is a plain one, opened as before. The key and the
passwords are never stored, logged or shown.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from caresync.exceptions import (
    DatabaseKeyError,
    InvalidInputError,
    KeyFileError,
    LoginLockedError,
    PasswordNeededError,
    WrongPasswordError,
)
from caresync.lockout import FailedLogin, UnlockAttempts, lock_seconds, locked_error
from caresync.storage.keyring import (
    DEFAULT_KDF,
    KdfParams,
    KeyRing,
    check_password,
    key_file_for,
)
from caresync.storage.schema import SQLITE_MAGIC

__all__ = [
    "MAX_USERS_TRIED",
    "FailedLogin",
    "LaptopKey",
    "create_laptop_key",
    "is_encrypted",
    "is_plain_database",
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
    """
    path = Path(database)
    if is_plain_database(path):
        raise DatabaseKeyError(
            f"{path} is a plain (unencrypted) database, yet a key file is beside it: a "
            f"`caresync encrypt` was interrupted (run `caresync encrypt --db {path}` again "
            "to finish it; the plain database is whole), or the file was replaced by a "
            "plain one. Nothing was changed"
        )
    return _unlock(key_file_for(path), password, username, params, laptop=path)


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
    if len(users) > MAX_USERS_TRIED:
        # Each try costs an argon2id derivation: a file listing thousands of users
        # (a hand-edited one) must not make opening take hours.
        raise InvalidInputError(
            f"{key_file} holds {len(users)} users' copies of the key; name the user "
            f"(at most {MAX_USERS_TRIED} are tried without a name)"
        )
    now_ms = _wall_ms()
    this: list[FailedLogin] = []

    def count(attempts: UnlockAttempts) -> UnlockAttempts:
        locked = locked_error(attempts.locked_until_ms, now_ms)
        if locked is not None:
            raise locked
        counted, attempt = attempts.attempt(username, now_ms)
        this.append(attempt)
        return counted

    try:
        counted = ring.change_attempts(count)
    except KeyFileError as exc:
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
        "or a colleague's)."
    )


def is_plain_database(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a plain SQLite file (an encrypted one starts with a salt);
    False for a missing or unreadable one."""
    try:
        with Path(path).open("rb") as file:
            return file.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False  # missing or unreadable: the store says why
