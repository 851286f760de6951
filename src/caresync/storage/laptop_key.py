"""The key of a laptop's encrypted database: made with it, unlocked by a user's password.

Theory of operation
-------------------
A laptop database opened with a user's password is encrypted whole (SQLCipher:
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

A database with no key file is a plain one, opened as before. The key and the
passwords are never stored, logged or shown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from caresync.exceptions import InvalidInputError, WrongPasswordError
from caresync.storage.keyring import DEFAULT_KDF, KdfParams, KeyRing, key_file_for

__all__ = [
    "MAX_USERS_TRIED",
    "LaptopKey",
    "create_laptop_key",
    "is_encrypted",
    "unlock_key_file",
    "unlock_laptop_key",
]

MAX_USERS_TRIED = 16
"""Users whose copies of the key are tried when no name is given (one derivation each)."""


@dataclass(slots=True)
class LaptopKey:
    """An unlocked database key, with the key file it came from."""

    ring: KeyRing
    key: bytes = field(repr=False)
    unlocked_by: str
    """The user whose password unlocked it (or who created it)."""
    params: KdfParams = DEFAULT_KDF

    def remember(self, username: str, password: str) -> None:
        """Wrap the key for ``username`` under ``password`` (a new copy, or a new
        password replacing the old one), and save the key file. Blocks for one
        argon2id derivation: call it in a thread."""
        self.ring.add_user(username, password, self.key, params=self.params)


def is_encrypted(database: str | os.PathLike[str]) -> bool:
    """True when the database has a key file beside it (it is opened with a password)."""
    return key_file_for(database).exists()


def create_laptop_key(
    database: str | os.PathLike[str],
    username: str,
    password: str,
    *,
    params: KdfParams = DEFAULT_KDF,
) -> LaptopKey:
    """A new random key for a new database, wrapped for ``username``, in a new key file.

    Blocks for one argon2id derivation. KeyFileError if a key file is there already.
    """
    ring, key = KeyRing.create(key_file_for(database), username, password, params=params)
    return LaptopKey(ring, key, username, params)


def unlock_laptop_key(
    database: str | os.PathLike[str],
    password: str,
    username: str | None = None,
    *,
    params: KdfParams = DEFAULT_KDF,
) -> LaptopKey:
    """The database's key, unlocked by ``username``'s password (by any user's, when no
    name is given: each is tried, one argon2id derivation each).

    WrongPasswordError if no copy opens with it; KeyFileError for a missing or
    damaged key file. Blocks: call it in a thread.
    """
    return unlock_key_file(key_file_for(database), password, username, params=params)


def unlock_key_file(
    key_file: str | os.PathLike[str],
    password: str,
    username: str | None = None,
    *,
    params: KdfParams = DEFAULT_KDF,
) -> LaptopKey:
    """The key a key file holds, unlocked as :func:`unlock_laptop_key` does (a laptop's
    ``<db>.keys``, read for instance to import that laptop's encrypted export)."""
    if not isinstance(password, str) or not password:
        raise InvalidInputError("a password is needed to open an encrypted database")
    ring = KeyRing.load(key_file)
    users = ring.users() if username is None else [username]
    if len(users) > MAX_USERS_TRIED:
        # Each try costs an argon2id derivation: a file listing thousands of users
        # (a hand-edited one) must not make opening take hours.
        raise InvalidInputError(
            f"{key_file} holds {len(users)} users' copies of the key; name the user "
            f"(at most {MAX_USERS_TRIED} are tried without a name)"
        )
    for user in users:
        try:
            return LaptopKey(ring, ring.unlock(user, password), user, params)
        except WrongPasswordError:
            continue
    who = "any user who logged in on that laptop" if username is None else username
    database = str(key_file).removesuffix(".keys")
    raise WrongPasswordError(
        f"{database}: this password does not open the database for {who}; "
        "nothing was read or changed"
    )
