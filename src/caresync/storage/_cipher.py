"""One way to open an SQLite connection, plain or encrypted (SQLCipher).

Theory of operation
-------------------
Every connection the store makes goes through :func:`connect`. Without a key
it is exactly ``sqlite3.connect``. With a key it is SQLCipher's DB-API module
(``sqlcipher3.dbapi2``, from the ``sqlcipher3-binary`` wheel), and before
anything else runs:

1. ``PRAGMA key = "x'<64 hex digits>'"``: a *raw* 256-bit key, so SQLCipher
   runs no PBKDF2 over it at each open (the key is random; the password
   stretching happened once, with argon2id, in :mod:`caresync.storage.keyring`);
2. the cipher settings, set explicitly (:data:`CIPHER_PRAGMAS`) rather than
   left to the library's defaults, so that a later SQLCipher whose defaults
   change (as 3 to 4 did) still opens every database we wrote;
3. a read of ``sqlite_schema``: the first read of page 1, which fails with
   "file is not a database" when the key is wrong (its HMAC does not verify).
   That becomes :class:`~caresync.exceptions.DatabaseKeyError`.

SQLCipher encrypts every page it writes to the database, the write-ahead log
and a rollback journal (AES-256 in CBC mode with a random IV per page write,
and an HMAC-SHA512 per page that detects tampering); the ``-shm`` file holds
only the WAL index (frame numbers and checksums), never page content. Temporary
tables stay in memory (``temp_store = MEMORY``, :mod:`caresync.storage.schema`).

SQLCipher's module raises its own exception classes, which are not sqlite3's;
the store catches both through :data:`SQLITE_ERRORS` and its siblings. Its
log of failed page checks (to stderr) is turned off when this module loads.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from types import ModuleType
from typing import cast
from urllib.parse import unquote

from caresync.exceptions import DatabaseKeyError, InvalidInputError, StorageError
from caresync.storage.schema import SQLITE_MAGIC

__all__ = [
    "AVAILABLE",
    "CIPHER_PRAGMAS",
    "DATABASE_ERRORS",
    "INTEGRITY_ERRORS",
    "KEY_BYTES",
    "SQLITE_ERRORS",
    "check_key",
    "connect",
    "refuse_plain",
    "refuse_unless_plain",
]

KEY_BYTES = 32
"""The length of a database key: 256 random bits."""

CIPHER_PRAGMAS = (
    # Named, not left to the library's defaults, so that a changed default (as
    # SQLCipher 3 to 4 changed them) cannot lock us out of a database we wrote.
    "PRAGMA cipher_page_size = 4096",  # SQLite's own default page size
    # HMAC-SHA256 rather than SQLCipher 4's HMAC-SHA512: a 256-bit tag is ample,
    # and with the SHA extensions of current x86-64 and ARM CPUs it costs less
    # per page written (5.7 instead of 7.8 us a 4 KiB page more than plain
    # SQLite, on the machine of docs/performance.md).
    "PRAGMA cipher_hmac_algorithm = HMAC_SHA256",
    # Only stretch a passphrase (a raw key skips them, bar a 2-round derivation
    # of the HMAC key at open). Pinned all the same.
    "PRAGMA cipher_kdf_algorithm = PBKDF2_HMAC_SHA256",
    "PRAGMA kdf_iter = 256000",
    "PRAGMA cipher_use_hmac = ON",
    # The whole of page 1 is encrypted: no header byte says "SQLite" or "caresync".
    "PRAGMA cipher_plaintext_header_size = 0",
)
"""Cipher settings, run right after ``PRAGMA key`` on every encrypted connection."""


def _load_sqlcipher() -> ModuleType | None:
    """SQLCipher's DB-API module, or None where it is not installed.

    ``sqlcipher3-binary`` (a dependency on Linux x86_64, where PyPI has its
    wheels) and ``sqlcipher3`` (built against a system libsqlcipher, e.g. on
    macOS) both provide it. Without it, plain databases work as ever and
    opening one with a key raises StorageError saying what to install.
    """
    try:
        import sqlcipher3.dbapi2 as module
    except ImportError:
        return None
    # SQLCipher logs a failed page HMAC to stderr; the store raises a typed error
    # instead. The setting is process-wide and touches no database.
    quiet = module.connect(":memory:")
    try:
        quiet.execute("PRAGMA cipher_log_level = NONE")
    finally:
        quiet.close()
    return cast(ModuleType, module)


_sqlcipher = _load_sqlcipher()

AVAILABLE = _sqlcipher is not None
"""True where SQLCipher is installed, so a store can be opened with a key."""

SQLITE_ERRORS: tuple[type[sqlite3.Error], ...] = (sqlite3.Error,) + (
    () if _sqlcipher is None else (cast(type[sqlite3.Error], _sqlcipher.Error),)
)
"""Every error a plain or an encrypted connection raises."""
DATABASE_ERRORS: tuple[type[sqlite3.DatabaseError], ...] = (sqlite3.DatabaseError,) + (
    () if _sqlcipher is None else (cast(type[sqlite3.DatabaseError], _sqlcipher.DatabaseError),)
)
INTEGRITY_ERRORS: tuple[type[sqlite3.IntegrityError], ...] = (sqlite3.IntegrityError,) + (
    () if _sqlcipher is None else (cast(type[sqlite3.IntegrityError], _sqlcipher.IntegrityError),)
)

_PAGE_MULTIPLE = 512  # the smallest SQLite page: every database file is a multiple of it


def check_key(key: object) -> bytes:
    """``key`` if it is a database key (32 bytes); InvalidInputError otherwise.

    The message never shows the key.
    """
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise InvalidInputError(f"a database key is {KEY_BYTES} bytes")
    return key


def connect(
    database: str | Path,
    *,
    key: bytes | None,
    uri: bool = False,
    timeout: float = 5.0,
) -> sqlite3.Connection:
    """A connection to ``database``: plain sqlite3 without a key, SQLCipher with one.

    Autocommit mode (``isolation_level=None``): the store runs its own ``BEGIN``.

    With a key, the key and the cipher settings are the connection's first
    statements, and page 1 is read once to prove the key: a wrong key raises
    DatabaseKeyError (nothing is written). Other errors are left to the
    caller's translation. The SQLCipher connection is typed as an
    ``sqlite3.Connection``: its DB-API is the same.
    """
    if key is None:
        return sqlite3.connect(database, uri=uri, timeout=timeout, isolation_level=None)
    pragma_key = f"PRAGMA key = \"x'{check_key(key).hex()}'\""
    if _sqlcipher is None:
        raise StorageError(
            "opening an encrypted database needs SQLCipher, which is not installed: "
            "pip install sqlcipher3-binary (Linux x86_64), or sqlcipher3 built against "
            "the system's libsqlcipher"
        )
    conn = cast(
        sqlite3.Connection,
        _sqlcipher.connect(os.fspath(database), uri=uri, timeout=timeout, isolation_level=None),
    )
    try:
        conn.execute(pragma_key)
        for pragma in CIPHER_PRAGMAS:
            conn.execute(pragma)
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
    except DATABASE_ERRORS as exc:
        conn.close()
        if "not a database" in str(exc).lower():
            raise DatabaseKeyError(
                f"the key given does not open {_name(database)}: it is encrypted with another "
                "key, or it is damaged. Unlock it with a password that belongs to it; "
                "it was left untouched"
            ) from None
        raise
    except BaseException:
        conn.close()
        raise
    return conn


def refuse_plain(path: Path) -> None:
    """DatabaseKeyError if ``path`` is a plain (unencrypted) SQLite file.

    Used before opening with a key: SQLCipher would only say "file is not a
    database". Reads the first 16 bytes; writes nothing.
    """
    if _head(path) == SQLITE_MAGIC:
        raise DatabaseKeyError(
            f"{path} is a plain, unencrypted database, and a key was given: open it without "
            "a key. It was left untouched"
        )


def refuse_unless_plain(path: Path) -> None:
    """DatabaseKeyError if ``path`` looks like an encrypted database.

    Used when a file without SQLite's header is opened without a key: a file of
    whole SQLite pages that does not start with the header is most likely
    encrypted (SQLCipher's page 1 starts with its random salt). Anything else
    is left to the caller's "not a database" error. Writes nothing.
    """
    try:
        size = path.stat().st_size
    except OSError:
        return
    if size >= _PAGE_MULTIPLE and size % _PAGE_MULTIPLE == 0 and _head(path) != SQLITE_MAGIC:
        raise DatabaseKeyError(
            f"{path} is not a plain SQLite database: it is encrypted (open it with its key, "
            "which a user's password unlocks), or it is not a database at all. "
            "It was left untouched"
        )


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            return file.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc


def _name(database: str | Path) -> str:
    """The file a connection target names (a ``file:`` URI loses its scheme and query)."""
    text = os.fspath(database)
    if text.startswith("file:"):
        text = unquote(text.removeprefix("file:").split("?", 1)[0].removeprefix("//"))
    return text
