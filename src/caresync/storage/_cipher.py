"""One way to open an SQLite connection, plain or encrypted.

Theory of operation
-------------------
Every connection the store makes goes through :func:`connect`. Without a key
it is exactly ``sqlite3.connect``. With a key it is the DB-API module of an
SQLite built with an encryption codec, and before anything else runs:

1. the cipher settings of the database's format, set explicitly rather than
   left to the library's defaults, so that a later release whose defaults
   change still opens every database we wrote;
2. the key;
3. a read of ``sqlite_schema``: the first read of page 1, which fails with
   "file is not a database" when the key is wrong (its tag does not verify).
   That becomes :class:`~caresync.exceptions.DatabaseKeyError`.

Two formats, one key
--------------------
* :data:`AEGIS` (what a new database is written in): SQLite3 Multiple Ciphers'
  AEGIS-256 cipher, through APSW built with it (the ``apsw-sqlite3mc`` wheel,
  behind :mod:`caresync.storage._apsw_dbapi`). AEGIS-256 is an authenticated
  cipher (CAESAR final portfolio, an IRTF CFRG draft): each page written gets
  a fresh random 256-bit nonce and a 256-bit tag, under a one-time key derived
  from the database key, the nonce and the page number, so a page changed, or
  moved to another place, is refused, not read. On CPUs with AES instructions
  it costs a fraction of AES-CBC plus an HMAC (docs/performance.md: the CPU
  time of a durable edit, +46% of the plain one in SQLCipher's format, is
  within a few percent of it in AEGIS through APSW).
* :data:`SQLCIPHER` (databases written by caresync before AEGIS): SQLCipher 4
  pages (AES-256-CBC with a random IV per page write, HMAC-SHA256 over page
  and page number), with the settings in :data:`SQLCIPHER_SETTINGS`. SQLite3
  Multiple Ciphers reads and writes this format too, so such a database opens
  and works as it did; :mod:`caresync.storage.encrypt_in_place` rewrites it in
  AEGIS (``reencrypt_in_place``).

An existing file is tried in AEGIS first, then in SQLCipher's format: each
failed try reads page 1 and writes nothing. Where ``apsw-sqlite3mc`` is
missing but SQLCipher's own module (``sqlcipher3``) is installed, the SQLCipher
format is the only one, for new databases too.

Why APSW
--------
One binding on every CPython we support (3.11 to 3.13), maintained, and fast:
a row through APSW costs about half what it does through the standard
library's ``sqlite3`` (docs/performance.md). The ``pysqlite3mc-binary`` wheels
used before are a fork of an older ``sqlite3`` module, slower per row, and the
CPython 3.12 one is broken (its extension is installed outside its package and
its SQLite has no ciphers); files they wrote, in either format, open here
unchanged.

Every page SQLite writes is encrypted: the database, the write-ahead log and a
rollback journal; the ``-shm`` file holds only the WAL index (frame numbers
and checksums), never page content. Temporary tables stay in memory
(``temp_store = MEMORY``, :mod:`caresync.storage.schema`).

The libraries raise their own exception classes, which are not sqlite3's; the
store catches all of them through :data:`SQLITE_ERRORS` and its siblings.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Final, cast
from urllib.parse import unquote

from caresync.exceptions import DatabaseKeyError, InvalidInputError, StorageError
from caresync.storage.schema import SQLITE_MAGIC

__all__ = [
    "AEGIS",
    "AEGIS_SETTINGS",
    "AVAILABLE",
    "CIPHERS",
    "DATABASE_ERRORS",
    "INTEGRITY_ERRORS",
    "KEY_BYTES",
    "NEW_DATABASE_CIPHER",
    "SQLCIPHER",
    "SQLCIPHER_SETTINGS",
    "SQLITE_ERRORS",
    "check_key",
    "cipher_of",
    "connect",
    "copy_encrypted",
    "refuse_plain",
    "refuse_unless_plain",
]

KEY_BYTES = 32
"""The length of a database key: 256 random bits."""

AEGIS: Final = "aegis"
"""The format of a new encrypted database: SQLite3 Multiple Ciphers' AEGIS-256."""
SQLCIPHER: Final = "sqlcipher"
"""The format caresync wrote before AEGIS: SQLCipher 4 with :data:`SQLCIPHER_SETTINGS`."""
CIPHERS: Final = (AEGIS, SQLCIPHER)
"""Every format :func:`connect` opens, in the order an existing file is tried."""

AEGIS_SETTINGS = (
    "PRAGMA cipher = 'aegis'",
    "PRAGMA algorithm = 'aegis-256'",  # 256-bit key, nonce and tag (the 128-bit variants: no)
    # The key string is run through Argon2id to give the page key. Our key is 256
    # random bits (the password stretching happened once, in caresync.storage.keyring),
    # so the derivation adds nothing to guess against: the smallest cost it allows,
    # which keeps an open (and a wrong key's refusal) at microseconds. Pinned, as
    # everything here: a changed default must never lock us out of a database.
    "PRAGMA tcost = 1",
    "PRAGMA mcost = 8",  # KiB, Argon2's minimum for one lane
    "PRAGMA pcost = 1",
    # The whole of page 1 is encrypted: no header byte says "SQLite" or "caresync".
    "PRAGMA plaintext_header_size = 0",
)
"""Settings run before the key on every connection to an :data:`AEGIS` database."""

SQLCIPHER_SETTINGS = (
    # Through SQLite3 Multiple Ciphers: its SQLCipher scheme, at SQLCipher 4's
    # defaults (legacy = 4), less what caresync always changed: HMAC-SHA256
    # rather than SHA-512, and the same for the (unused: raw key) PBKDF2.
    "PRAGMA cipher = 'sqlcipher'",
    "PRAGMA legacy = 4",
    "PRAGMA legacy_page_size = 4096",
    "PRAGMA kdf_iter = 256000",
    "PRAGMA fast_kdf_iter = 2",
    "PRAGMA hmac_use = 1",
    "PRAGMA hmac_pgno = 1",
    "PRAGMA hmac_salt_mask = 0x3a",
    "PRAGMA kdf_algorithm = 1",  # PBKDF2-HMAC-SHA256
    "PRAGMA hmac_algorithm = 1",  # HMAC-SHA256
    "PRAGMA plaintext_header_size = 0",
)
"""The same format's settings, by SQLite3 Multiple Ciphers' names."""

_SQLCIPHER_OWN_SETTINGS = (
    # The same settings by SQLCipher's own names (its module, where apsw-sqlite3mc is
    # missing): what caresync's first encrypted databases were written with.
    "PRAGMA cipher_page_size = 4096",
    "PRAGMA cipher_hmac_algorithm = HMAC_SHA256",
    "PRAGMA cipher_kdf_algorithm = PBKDF2_HMAC_SHA256",
    "PRAGMA kdf_iter = 256000",
    "PRAGMA cipher_use_hmac = ON",
    "PRAGMA cipher_plaintext_header_size = 0",
)


def _load_mc() -> ModuleType | None:
    """SQLite3 Multiple Ciphers' DB-API, or None where it is not installed.

    That is APSW built with SQLite3 Multiple Ciphers (``apsw-sqlite3mc``, a
    dependency on Linux x86_64, where PyPI has its wheels for every CPython we
    support), behind :mod:`caresync.storage._apsw_dbapi`, which gives the store's
    statements (and aiosqlite) the ``sqlite3`` surface they use, and raises
    ``sqlite3``'s own exceptions.
    """
    try:
        from caresync.storage import _apsw_dbapi as module
    except ImportError:
        return None
    # A plain apsw in its place (same import name) has no ciphers: it would write plain files.
    try:
        module.sqlite3mc_version()
    except sqlite3.Error:
        return None
    return module


def _load_sqlcipher() -> ModuleType | None:
    """SQLCipher's DB-API module (``sqlcipher3``), or None where it is not installed.

    Only looked for where ``apsw-sqlite3mc`` is missing (it reads SQLCipher's
    format itself): e.g. on macOS, ``sqlcipher3`` built against a system
    libsqlcipher.
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


_mc = _load_mc()
_sqlcipher = None if _mc is not None else _load_sqlcipher()

AVAILABLE = _mc is not None or _sqlcipher is not None
"""True where an encrypting SQLite is installed, so a store can be opened with a key."""

NEW_DATABASE_CIPHER: str = AEGIS if _mc is not None else SQLCIPHER
"""The format :func:`connect` writes a new encrypted database in."""

# The APSW adapter raises sqlite3's own exceptions; SQLCipher's module has its own.
_MODULES = () if _sqlcipher is None else (_sqlcipher,)

SQLITE_ERRORS: tuple[type[sqlite3.Error], ...] = (
    sqlite3.Error,
    *(cast(type[sqlite3.Error], m.Error) for m in _MODULES),
)
"""Every error a plain or an encrypted connection raises."""
DATABASE_ERRORS: tuple[type[sqlite3.DatabaseError], ...] = (
    sqlite3.DatabaseError,
    *(cast(type[sqlite3.DatabaseError], m.DatabaseError) for m in _MODULES),
)
INTEGRITY_ERRORS: tuple[type[sqlite3.IntegrityError], ...] = (
    sqlite3.IntegrityError,
    *(cast(type[sqlite3.IntegrityError], m.IntegrityError) for m in _MODULES),
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
    cipher: str | None = None,
) -> sqlite3.Connection:
    """A connection to ``database``: plain sqlite3 without a key, encrypted with one.

    Autocommit mode (``isolation_level=None``): the store runs its own ``BEGIN``.

    With a key: a new (missing or empty) file is written in ``cipher``, by
    default :data:`NEW_DATABASE_CIPHER`; an existing one is opened in
    ``cipher`` if given, else in whichever of :data:`CIPHERS` its key opens.
    The settings and the key are the connection's first statements, and page 1
    is read once to prove the key: a wrong key raises DatabaseKeyError
    (nothing is written). Other errors are left to the caller's translation.
    The connection is typed as an ``sqlite3.Connection``: with a key it has the part
    of that surface the store (and aiosqlite) use (:mod:`caresync.storage._apsw_dbapi`).
    """
    if key is None:
        return sqlite3.connect(database, uri=uri, timeout=timeout, isolation_level=None)
    check_key(key)
    if cipher is not None and cipher not in CIPHERS:
        raise InvalidInputError(f"unknown database cipher {cipher!r}; known: {CIPHERS}")
    if _mc is None and _sqlcipher is None:
        raise StorageError(
            "opening an encrypted database needs SQLite3 Multiple Ciphers, which is not "
            "installed: pip install apsw-sqlite3mc; elsewhere, "
            "sqlcipher3 built against the system's libsqlcipher opens the SQLCipher format"
        )
    if cipher is not None:
        tries: Sequence[str] = (cipher,)
    elif _is_new(database):
        tries = (NEW_DATABASE_CIPHER,)
    else:
        tries = CIPHERS if _mc is not None else (SQLCIPHER,)
    for attempt in tries:
        conn = _open(database, key, attempt, uri=uri, timeout=timeout)
        if conn is not None:
            return conn
    hint = (
        ""
        if _mc is not None
        else " (or it is in the AEGIS format, which needs pip install apsw-sqlite3mc)"
    )
    raise DatabaseKeyError(
        f"the key given does not open {_name(database)}: it is encrypted with another "
        f"key, or it is damaged{hint}. Unlock it with a password that belongs to it; "
        "it was left untouched"
    )


def cipher_of(conn: sqlite3.Connection) -> str:
    """The format of the encrypted database ``conn`` was opened on (by :func:`connect`).

    A copy made with SQLite's backup API must be in the same format: the two
    keep a different number of bytes per page for their nonce and tag.
    """
    if _mc is not None and isinstance(conn, _mc.Connection):
        row = conn.execute("PRAGMA cipher").fetchone()
        if row is not None and str(row[0]) in CIPHERS:
            return str(row[0])
    return SQLCIPHER


def copy_encrypted(source: Path, key: bytes | None, target: Path, new_key: bytes) -> None:
    """Write the database at ``source`` into the empty file ``target``, in AEGIS.

    ``source`` is plain (``key`` None) or encrypted in either format. SQLite's
    ``VACUUM INTO`` writes a fresh, compact copy (every table, index, row and
    the header's ``user_version`` and ``application_id``) through the codec of
    the target, whose settings and key are given in its URI: the backup API
    cannot copy between files that keep different room per page (plain: none;
    SQLCipher: 48 bytes; AEGIS: 64). Only where SQLite3 Multiple Ciphers is
    installed (StorageError otherwise). ``source`` is only read.
    """
    check_key(new_key)
    if _mc is None:
        raise StorageError(
            "writing the AEGIS format needs SQLite3 Multiple Ciphers: pip install apsw-sqlite3mc"
        )
    read_only = source.resolve().as_uri() + "?mode=ro"
    if key is None:
        conn = cast(sqlite3.Connection, _mc.connect(read_only, uri=True, isolation_level=None))
    else:
        conn = connect(read_only, key=key, uri=True)
    settings = "&".join(
        pragma.removeprefix("PRAGMA ").replace(" = ", "=").replace("'", "")
        for pragma in AEGIS_SETTINGS
    )
    # The same key string as connect's (see _open). The URI stays in this process:
    # it is a bound parameter, never logged, and never in an error (below).
    target_uri = f"{target.resolve().as_uri()}?{settings}&key={new_key.hex()}"
    failed: sqlite3.Error | None = None
    try:
        conn.execute("VACUUM INTO ?", (target_uri,))
    except SQLITE_ERRORS as exc:
        failed = _without_key(exc, target_uri, target, new_key)
    finally:
        conn.close()
    if failed is not None:
        # Raised outside the handler: SQLite names a file it cannot open by the whole
        # URI, key included, and the original errors (chained, or as the context a
        # traceback prints) would carry it into every log.
        raise failed


def _without_key(exc: sqlite3.Error, uri: str, target: Path, key: bytes) -> sqlite3.Error:
    """An error of the same kind as ``exc``, its message naming ``target`` where it named
    ``uri``, and never holding ``key``; SQLite's result code kept."""
    message = str(exc).replace(uri, str(target)).replace(key.hex(), "<the key>")
    error = type(exc)(message)
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        error.sqlite_errorcode = code
    return error


def _open(
    database: str | Path, key: bytes, cipher: str, *, uri: bool, timeout: float
) -> sqlite3.Connection | None:
    """A connection in ``cipher`` whose key read page 1, or None if the key does not."""
    if _mc is not None:
        module = _mc
        settings = AEGIS_SETTINGS if cipher == AEGIS else SQLCIPHER_SETTINGS
    elif cipher == SQLCIPHER and _sqlcipher is not None:
        module = _sqlcipher
        settings = _SQLCIPHER_OWN_SETTINGS
    else:
        raise StorageError(
            f"the {cipher} format needs SQLite3 Multiple Ciphers: pip install apsw-sqlite3mc"
        )
    if cipher == AEGIS:
        # The key as a string of 64 hex digits, run through Argon2id (see
        # AEGIS_SETTINGS) -- not as x'...': newer releases read that form as a
        # raw key, which would derive another page key and lock us out.
        pragma_key = f"PRAGMA key = '{key.hex()}'"
    else:
        # SQLCipher's raw key: no PBKDF2 over it (the key is random).
        pragma_key = f"PRAGMA key = \"x'{key.hex()}'\""
    conn = cast(
        sqlite3.Connection,
        module.connect(os.fspath(database), uri=uri, timeout=timeout, isolation_level=None),
    )
    try:
        if module is _sqlcipher:
            conn.execute(pragma_key)  # SQLCipher: the key first, then its settings
            for pragma in settings:
                conn.execute(pragma)
        else:
            for pragma in settings:  # Multiple Ciphers: the settings, then the key
                conn.execute(pragma)
            conn.execute(pragma_key)
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
    except DATABASE_ERRORS as exc:
        conn.close()
        if "not a database" in str(exc).lower():
            return None
        raise
    except BaseException:
        conn.close()
        raise
    return conn


def _is_new(database: str | Path) -> bool:
    """True if the file a connection would open is missing or empty (to be created)."""
    try:
        return Path(_name(database)).stat().st_size == 0
    except OSError:
        return True


def refuse_plain(path: Path) -> None:
    """DatabaseKeyError if ``path`` is a plain (unencrypted) SQLite file.

    Used before opening with a key: the library would only say "file is not a
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
    encrypted (both formats start page 1 with a random salt). Anything else
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
