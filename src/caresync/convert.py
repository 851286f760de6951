"""Converting a plain laptop database into an encrypted one (``caresync encrypt``).

A laptop enrolled with ``--no-encrypt``, or made plain by an application, holds
patients in clear. :func:`encrypt_laptop` encrypts it in place for the account
logged in on it, whose password (checked against the hash its last online login
left, with the offline-login lock) wraps the new key in ``<db>.keys``. The file
steps, and why a crash at any of them loses nothing, are in
:mod:`caresync.storage.encrypt_in_place`.

Only that user has a copy of the key afterwards: every other user of the laptop
gets one at their next online login, opening the laptop then with a password
that opens it (``caresync sync --username NAME --unlock``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

from argon2 import PasswordHasher

from caresync.exceptions import (
    AlreadyEncryptedError,
    DatabaseNotFoundError,
    NotLoggedInError,
    StorageError,
)
from caresync.logins import LaptopLogins
from caresync.storage import DEFAULT_KDF, KdfParams, SQLiteStore, key_file_for
from caresync.storage._cipher import KEY_BYTES
from caresync.storage.encrypt_in_place import encrypt_in_place
from caresync.storage.laptop_key import (
    create_laptop_key,
    is_encrypted,
    is_plain_database,
    unlock_key_file,
)

__all__ = ["encrypt_laptop"]


async def encrypt_laptop(
    path: str | os.PathLike[str], password: str, *, kdf: KdfParams = DEFAULT_KDF
) -> str:
    """Encrypt the plain laptop database at ``path`` in place; returns the user whose
    password now opens it (the account logged in there).

    Refused, with nothing changed: no file (DatabaseNotFoundError), an encrypted
    database (AlreadyEncryptedError), a server's database or one that holds no
    replica (StorageError), nobody logged in (NotLoggedInError), a wrong password
    (AuthenticationError; it counts towards the offline-login lock,
    LoginLockedError), a database another process has open (StorageError). A
    plain database beside a key file is an interrupted conversion: this finishes
    it, with the key that file holds.
    """
    database = Path(path)
    if not await asyncio.to_thread(database.is_file):
        raise DatabaseNotFoundError(f"there is no database at {database}: nothing was changed")
    resuming = await asyncio.to_thread(is_encrypted, database)
    if resuming and not await asyncio.to_thread(is_plain_database, database):
        raise AlreadyEncryptedError(
            f"{database} is encrypted already (its key file is {key_file_for(database)}); "
            "nothing was changed"
        )
    user = await _check_login(database, password)
    if resuming:
        unlocked = await asyncio.to_thread(unlock_key_file, key_file_for(database), password, user)
        key = unlocked.key
    else:
        key = secrets.token_bytes(KEY_BYTES)
    wrote: list[bool] = []

    def write_key_file() -> None:
        create_laptop_key(database, user, password, params=kdf, key=key)
        wrote.append(True)

    try:
        await asyncio.to_thread(
            encrypt_in_place, database, key, None if resuming else write_key_file
        )
    except BaseException:
        # Still plain: the key file just written would only make it look encrypted.
        still_plain = await asyncio.to_thread(is_plain_database, database)
        if wrote and still_plain:
            key_file_for(database).unlink(missing_ok=True)
        raise
    return user


async def _check_login(database: Path, password: str) -> str:
    """The account logged in on the plain laptop at ``database``, once ``password`` is
    checked as an offline login (which counts a failure towards the lock)."""
    # Its kind first, read-only: a running server's database is named as such, not "in use".
    async with await SQLiteStore.open(database, create=False, read_only=True) as reader:
        identity = await reader.get_identity()
    if identity is None:
        raise StorageError(
            f"{database} holds no replica yet: enrol it (`caresync enrol`); nothing was changed"
        )
    if identity.role != "laptop":
        raise StorageError(
            f"{database} is a server's database: `caresync encrypt` converts a laptop's "
            "(a server's is made encrypted by `caresync serve --encrypt`); nothing was changed"
        )
    store = await SQLiteStore.open(database, create=False)
    try:
        logins = LaptopLogins(store, hasher=PasswordHasher())
        await logins.load()
        user = logins.user
        if user is None:
            raise NotLoggedInError(
                f"nobody is logged in on {database}: log in first (`caresync login --db "
                f"{database} --username NAME`), then encrypt it with that password; nothing "
                "was changed"
            )
        await logins.login_offline(user, password)
        return user
    finally:
        await store.close()
