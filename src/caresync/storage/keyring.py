"""The database key of an encrypted laptop, wrapped once per user, in a file beside it.

Theory of operation
-------------------
An encrypted database (:mod:`caresync.storage._cipher`) is opened with a random
256-bit key. The key itself is never stored. A *key file* beside the database
(by convention ``<database>.keys``, :func:`key_file_for`) holds one wrapped copy
per user who logged in online on the laptop: the key sealed with AES-256-GCM
under a key derived from that user's password with argon2id (a random salt per
wrap; the username is the associated data, so a wrapped copy cannot be moved to
another user's entry). Any of those users unlocks the database offline; a
password change wraps the same key again for that user only.
:meth:`KeyRing.remove_user` removes one user's copy (never the last); a new
key (a rotation, :func:`caresync.storage.laptop_key.rotate_laptop_key`) comes
with a new key file that replaces this one whole (:meth:`KeyRing.replace_file_of`).

The file is JSON, one object::

    {"format": "caresync-keyring", "version": 1,
     "check": "<HMAC-SHA256 of a fixed label under the key, hex>",
     "users": {"amina": {"kdf": "argon2id", "time_cost": 3, "memory_kib": 65536,
                         "parallelism": 4, "salt": "<b64>", "cipher": "AES-256-GCM",
                         "nonce": "<b64>", "wrapped": "<b64>"}, ...},
     "attempts": {"failures": 0, "locked_until_ms": 0, "dropped": 0,
                  "failed": [{"username": "amina", "at_ms": 1767225600000}, ...]}}

The argon2 parameters are stored with each wrap, so they can be raised later
(the next rewrap uses the new ones) and a file written with cheaper ones (tests,
simulations) still opens. ``check`` lets :meth:`KeyRing.add_user` refuse a key
that is not this file's without knowing any password; it reveals nothing of a
random 256-bit key. Usernames are in clear (they are not secret on a laptop).

``attempts`` (optional: a file without it has none) is the guessing lock of an
encrypted laptop (:class:`~caresync.lockout.UnlockAttempts`): failed unlock
attempts in a row, the time before which no password is tried, and the failed
attempts not yet recorded elsewhere. A caresync that predates it ignores it.

The file is untrusted input: every field is checked when it is loaded, and
anything malformed, including argon2 parameters too large to be honest, is a
:class:`~caresync.exceptions.KeyFileError` naming the file. It is created
exclusively with mode 0600 and replaced atomically (a new file beside it,
fsynced, renamed over it, the directory fsynced), so a crash leaves the old
file or the new one, never half of one. Several processes may change one key
file (a reader counts a wrong password too, while the laptop's writer adds a
user's copy), so every change is a read-modify-write under an exclusive
``flock`` of the file itself: the file is read again under the lock (if it was
replaced meanwhile, the new one is locked instead), changed and replaced.

Nothing here logs, shows or keeps a key or a password: :class:`KeyRing` holds
only wrapped copies.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from argon2.exceptions import HashingError
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from caresync.exceptions import (
    InvalidInputError,
    KeyFileError,
    UnknownKeyUserError,
    WrongPasswordError,
)
from caresync.lockout import UnlockAttempts
from caresync.names import check_username
from caresync.storage._cipher import KEY_BYTES, check_key
from caresync.storage._fsync import sync_file
from caresync.storage.unsynced import PRIVATE_FILE_MODE

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: changes are not serialised
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_KDF",
    "KEYRING_FORMAT",
    "KEYRING_VERSION",
    "SERVER_KEY_VARIABLE",
    "KdfParams",
    "KeyRing",
    "check_password",
    "key_file_for",
    "server_database_key",
]

KEYRING_FORMAT = "caresync-keyring"
KEYRING_VERSION = 1
_CIPHER = "AES-256-GCM"
_KDF = "argon2id"
_SALT_BYTES = 16
_NONCE_BYTES = 12
_WRAPPED_BYTES = KEY_BYTES + 16  # the key and the GCM tag
_AAD_PREFIX = b"caresync-keyring v1 user\x00"
_CHECK_LABEL = b"caresync-keyring v1 key check"
_MAX_FILE_BYTES = 1024 * 1024
_MAX_PASSWORD_BYTES = 4096

SERVER_KEY_VARIABLE = "CARESYNC_DATABASE_KEY"
"""The environment variable that may hold a server's database key (64 hex digits)."""


@dataclass(frozen=True, slots=True)
class KdfParams:
    """argon2id's cost: passes, memory in KiB, lanes. Checked when built.

    The bounds refuse a key file whose parameters would make unlocking take
    unbounded time or memory (a hand-edited file is untrusted input).
    """

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 4

    def __post_init__(self) -> None:
        for name, value, low, high in (
            ("time_cost", self.time_cost, 1, 16),
            ("parallelism", self.parallelism, 1, 64),
            ("memory_kib", self.memory_kib, 8, 1024 * 1024),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise InvalidInputError(f"argon2 {name} must be an integer from {low} to {high}")
        if self.memory_kib < 8 * self.parallelism:
            raise InvalidInputError("argon2 memory_kib must be at least 8 times parallelism")


DEFAULT_KDF = KdfParams()
"""RFC 9106's second recommended setting (argon2-cffi's default): 3 passes, 64 MiB, 4 lanes."""


def key_file_for(database: str | os.PathLike[str]) -> Path:
    """The key file beside ``database``: ``<database>.keys``."""
    path = Path(database)
    return path.with_name(path.name + ".keys")


def server_database_key(
    *,
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    variable: str = SERVER_KEY_VARIABLE,
) -> bytes | None:
    """A server's database key: from the file at ``path``, else the environment; or None.

    A server has no person to type a password, so its key (64 hex digits;
    make one with ``python -c "import secrets; print(secrets.token_hex(32))"``)
    comes from a file readable by its owner only (mode 0600 or 0400:
    KeyFileError otherwise, and for any other content) or from the
    environment variable ``variable`` (InvalidInputError if it is set but not
    a key). None when neither is given: the database is plain.
    """
    if path is not None:
        target = Path(path)
        try:
            with target.open("rb") as file:
                mode = os.fstat(file.fileno()).st_mode
                text = file.read(1024)
        except OSError as exc:
            raise KeyFileError(f"cannot read the database key file {target}: {exc}") from exc
        if mode & 0o077:
            raise KeyFileError(
                f"{target} can be read by other users (mode {mode & 0o777:o}); "
                f"chmod 600 {target}, and make a new key if others may have read it"
            )
        key = _hex_key(text.strip())
        if key is None:
            raise KeyFileError(f"{target} does not hold a database key (64 hex digits)")
        return key
    value = (os.environ if environ is None else environ).get(variable)
    if value is None or not value.strip():
        return None
    key = _hex_key(value.strip().encode("ascii", "replace"))
    if key is None:
        raise InvalidInputError(f"the environment variable {variable} is not a key (64 hex digits)")
    return key


def _hex_key(text: bytes) -> bytes | None:
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return key if len(key) == KEY_BYTES else None


@dataclass(frozen=True, slots=True)
class _Wrap:
    """One user's wrapped copy of the key (no secret in clear)."""

    params: KdfParams
    salt: bytes
    nonce: bytes
    wrapped: bytes


class KeyRing:
    """The wrapped copies of one database key, as stored in one key file.

    Build one with :meth:`create` (a new random key, wrapped for a first user)
    or :meth:`load`. It holds no key and no password; :meth:`unlock` returns
    the key to a user who gives the right password.
    """

    __slots__ = ("_attempts", "_check", "_users", "path")

    def __init__(
        self,
        path: Path,
        check: bytes,
        users: dict[str, _Wrap],
        attempts: UnlockAttempts | None = None,
    ) -> None:
        self.path = path
        self._check = check
        self._users = users
        self._attempts = attempts if attempts is not None else UnlockAttempts()

    def __repr__(self) -> str:
        return f"KeyRing({str(self.path)!r}, users={self.users()!r})"

    # ------------------------------------------------------------ making one

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        username: str,
        password: str,
        *,
        params: KdfParams = DEFAULT_KDF,
        key: bytes | None = None,
    ) -> tuple[Self, bytes]:
        """A new random database key, wrapped for ``username``, in a new file at ``path``.

        Returns the key ring and the key (to open the database with). Never
        overwrites a file: KeyFileError if ``path`` exists. ``key`` wraps a key
        made beforehand instead (a database being encrypted in place is written
        with its key before its key file is).
        """
        check_username(username)
        secret = _password_bytes(password)
        key = secrets.token_bytes(KEY_BYTES) if key is None else check_key(key)
        ring = cls(Path(path), _key_check(key), {username: _wrap(key, username, secret, params)})
        ring._write(exclusive=True)
        return ring, key

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Read and check the key file at ``path``; KeyFileError naming it if it is not sound."""
        target = Path(path)
        try:
            with target.open("rb") as file:
                data = file.read(_MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            raise KeyFileError(f"there is no key file at {target}") from None
        except OSError as exc:
            raise KeyFileError(f"cannot read the key file {target}: {exc}") from exc
        if len(data) > _MAX_FILE_BYTES:
            raise KeyFileError(f"{target} is too large to be a caresync key file")
        return cls(target, *_parse(target, data))

    # ------------------------------------------------------------- using one

    def users(self) -> list[str]:
        """The users who can unlock the key, sorted."""
        return sorted(self._users)

    @property
    def attempts(self) -> UnlockAttempts:
        """The failed unlock attempts, as the file held them when last read or written."""
        return self._attempts

    def change_attempts(self, change: Callable[[UnlockAttempts], UnlockAttempts]) -> UnlockAttempts:
        """Apply ``change`` to the attempts the file holds *now* and save the result, in
        one step under the file's lock; returns what was saved.

        ``change`` may raise (a locked laptop): then nothing is written. A file
        that cannot be written is a KeyFileError, and nothing is changed.
        """
        with self._latest():
            changed = change(self._attempts)
            if changed != self._attempts:
                before, self._attempts = self._attempts, changed
                try:
                    self._write(exclusive=False)
                except BaseException:
                    self._attempts = before
                    raise
            return self._attempts

    def holds_the_key_of(self, path: str | os.PathLike[str]) -> bool:
        """Whether the key file at ``path`` is (still) one of this ring's key; True when
        it cannot be read (then that is what is wrong, not the key)."""
        try:
            other = type(self).load(path)
        except KeyFileError:
            return True
        return hmac.compare_digest(other._check, self._check)

    def unlock(self, username: str, password: str) -> bytes:
        """The database key, for a user of this file and their password.

        WrongPasswordError for a wrong password or a user with no copy here
        (the same error either way). Costs one argon2id derivation.
        """
        secret = _password_bytes(password)
        wrap = self._users.get(username) if isinstance(username, str) else None
        if wrap is None:
            # Spend what a real attempt costs, so timing does not tell who has a copy.
            _derive(secret, bytes(_SALT_BYTES), DEFAULT_KDF)
            raise _wrong_password(username)
        kek = _derive(secret, wrap.salt, wrap.params)
        try:
            key = AESGCM(kek).decrypt(wrap.nonce, wrap.wrapped, _aad(username))
        except InvalidTag:
            raise _wrong_password(username) from None
        if len(key) != KEY_BYTES or not hmac.compare_digest(_key_check(key), self._check):
            raise KeyFileError(
                f"{self.path}: {username}'s copy of the key is not the key the file was made "
                "for (the file was edited)"
            )
        return key

    def add_user(
        self, username: str, password: str, key: bytes, *, params: KdfParams = DEFAULT_KDF
    ) -> None:
        """Wrap ``key`` for one more user (or again for one already here), and save.

        The caller proves it holds the key by giving it (a user unlocked it, or
        it was just created): a key that is not this file's is refused with
        InvalidInputError and nothing is written.
        """
        check_username(username)
        self._set(username, password, key, params)

    def rewrap(
        self, username: str, new_password: str, key: bytes, *, params: KdfParams = DEFAULT_KDF
    ) -> None:
        """After a password change: wrap ``key`` under the user's new password, and save.

        The old password no longer unlocks it; other users' copies are
        unchanged. InvalidInputError for a user with no copy here, or a key
        that is not this file's.
        """
        if username not in self._users:
            raise InvalidInputError(f"{username!r} has no copy of the key in {self.path}")
        self._set(username, new_password, key, params)

    def remove_user(self, username: str) -> None:
        """Remove ``username``'s copy of the key, and save: their password no longer
        unlocks it. The other users' copies, and the key itself, are unchanged.

        Checked against the file as it is *now*, under its lock (another process may
        have changed it): UnknownKeyUserError, naming them, for a user with no copy
        there; InvalidInputError for the last copy (nobody could unlock the database
        any more). Nothing is written then. A file that cannot be written is a
        KeyFileError, and nothing is changed.

        Whoever unlocked the key before may have kept the key itself: removing a copy
        does not take it back from them (rotate the key for that:
        :func:`caresync.storage.laptop_key.rotate_laptop_key`).
        """
        with self._latest():
            self.check_removable(username)
            removed = self._users.pop(username)
            try:
                self._write(exclusive=False)
            except BaseException:
                self._users[username] = removed
                raise

    def check_removable(self, username: str) -> None:
        """What :meth:`remove_user` checks first, on the file as last read:
        UnknownKeyUserError for a user with no copy, InvalidInputError for the last copy."""
        if not isinstance(username, str) or username not in self._users:
            raise UnknownKeyUserError(
                f"{username!r} has no copy of the key in {self.path} (the users with one: "
                f"{', '.join(self.users())}); nothing was changed"
            )
        if len(self._users) == 1:
            raise InvalidInputError(
                f"{username!r} holds the last copy of the key in {self.path}: without it "
                "nobody could unlock the database any more, so it is kept; nothing was "
                "changed"
            )

    def replace_file_of(self, old: KeyRing) -> None:
        """Write this key ring (a new key's) over ``old``'s file, keeping the failed
        unlock attempts that file holds at this moment; from then on this ring is at
        ``old.path``.

        Read and replaced under the old file's lock, atomically (a crash leaves the old
        file or this one). For a rotated key: the database must already be the one this
        ring's key opens. KeyFileError if the old file cannot be read or written (then
        nothing was replaced).
        """
        with self.replacing_file_of(old) as install:
            install()

    @contextlib.contextmanager
    def replacing_file_of(
        self, old: KeyRing, *, keeping: str | None = None
    ) -> Iterator[Callable[[], None]]:
        """Hold ``old``'s file lock for the block, and give it a function that writes
        this ring over that file as :meth:`replace_file_of` does.

        Checked first, under the lock: the file still holds ``old``'s key, or this
        one's (KeyFileError otherwise) and, with ``keeping``, that user's copy of it
        (UnknownKeyUserError: it was removed meanwhile, and this ring must not give it
        back). No other process changes the file while the block runs (a removal,
        an unlock attempt wait for it, then find the new file), so nothing it does
        is lost or undone by the write.
        """
        with _locked(old.path) as data:
            check, users, attempts = _parse(old.path, data)
            if not (
                hmac.compare_digest(check, old._check) or hmac.compare_digest(check, self._check)
            ):
                raise KeyFileError(
                    f"{old.path} was replaced by the key file of another key meanwhile; "
                    "nothing was written"
                )
            if keeping is not None and keeping not in users:
                raise UnknownKeyUserError(
                    f"{keeping!r}'s copy of the key was removed from {old.path} meanwhile "
                    "(`caresync keys remove-user`), so the key was not rotated (its new copy would "
                    "have been theirs alone); "
                    "nothing was changed"
                )

            def install() -> None:
                before = (self.path, self._attempts)
                self.path, self._attempts = old.path, attempts
                try:
                    self._write(exclusive=False)
                except BaseException:
                    self.path, self._attempts = before
                    raise

            yield install

    # -------------------------------------------------------------- internals

    def _set(self, username: str, password: str, key: bytes, params: KdfParams) -> None:
        secret = _password_bytes(password)
        check_key(key)
        if not hmac.compare_digest(_key_check(key), self._check):
            raise InvalidInputError(f"that is not the key of {self.path}; nothing was written")
        wrap = _wrap(key, username, secret, params)  # the slow part, before the lock
        with self._latest():
            before = self._users.get(username)
            self._users[username] = wrap
            try:
                self._write(exclusive=False)
            except BaseException:
                if before is None:
                    del self._users[username]
                else:
                    self._users[username] = before
                raise

    @contextlib.contextmanager
    def _latest(self) -> Iterator[None]:
        """Hold the file's lock, with this ring read again from the file (another
        process may have changed it): the body's change is then made to the latest."""
        with _locked(self.path) as data:
            check, users, attempts = _parse(self.path, data)
            if not hmac.compare_digest(check, self._check):
                raise KeyFileError(
                    f"{self.path} was replaced by the key file of another key meanwhile; "
                    "nothing was written"
                )
            self._users, self._attempts = users, attempts
            yield

    def _write(self, *, exclusive: bool) -> None:
        """Save the file: a new file beside it, fsynced, then linked or renamed into place."""
        data = _encode(self._check, self._users, self._attempts)
        directory = self.path.parent
        try:
            fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".new", dir=directory)
        except OSError as exc:
            raise KeyFileError(f"cannot write the key file {self.path}: {exc}") from exc
        tmp = Path(name)
        try:
            # mkstemp made it 0600 less the umask, so no one else could ever read it;
            # exactly 0600 from here on.
            os.fchmod(fd, PRIVATE_FILE_MODE)
            with os.fdopen(fd, "wb") as file:
                fd = -1
                file.write(data)
                file.flush()
                sync_file(file.fileno())
            if exclusive:
                os.link(tmp, self.path)  # never over an existing file
            else:
                os.replace(tmp, self.path)
            fsync_directory(directory)
        except FileExistsError:
            raise KeyFileError(
                f"{self.path} exists already; a new key file never replaces one"
            ) from None
        except OSError as exc:
            raise KeyFileError(f"cannot write the key file {self.path}: {exc}") from exc
        finally:
            if fd != -1:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


# ------------------------------------------------------------------ crypto


def check_password(password: object) -> None:
    """InvalidInputError unless ``password`` is one a key file can be unlocked with
    (non-empty text of at most 4096 bytes in UTF-8)."""
    _password_bytes(password)


def _password_bytes(password: object) -> bytes:
    if not isinstance(password, str) or not password:
        raise InvalidInputError("a password is a non-empty string")
    secret = password.encode("utf-8", "surrogatepass")
    if len(secret) > _MAX_PASSWORD_BYTES:
        raise InvalidInputError(f"a password is at most {_MAX_PASSWORD_BYTES} bytes")
    return secret


def _derive(secret: bytes, salt: bytes, params: KdfParams) -> bytes:
    """The key-encryption key: argon2id of the password."""
    try:
        return hash_secret_raw(
            secret,
            salt,
            time_cost=params.time_cost,
            memory_cost=params.memory_kib,
            parallelism=params.parallelism,
            hash_len=KEY_BYTES,
            type=Type.ID,
        )
    except HashingError as exc:  # e.g. not enough memory for the stored parameters
        raise KeyFileError(f"argon2 could not derive the key ({exc})") from None


def _wrap(key: bytes, username: str, secret: bytes, params: KdfParams) -> _Wrap:
    salt, nonce = secrets.token_bytes(_SALT_BYTES), secrets.token_bytes(_NONCE_BYTES)
    wrapped = AESGCM(_derive(secret, salt, params)).encrypt(nonce, key, _aad(username))
    return _Wrap(params, salt, nonce, wrapped)


def _aad(username: str) -> bytes:
    return _AAD_PREFIX + username.encode("utf-8")


def _key_check(key: bytes) -> bytes:
    return hmac.new(key, _CHECK_LABEL, hashlib.sha256).digest()


def _wrong_password(username: object) -> WrongPasswordError:
    return WrongPasswordError(
        f"that password does not unlock this laptop's database for {username!r}: the password "
        "is wrong, or that user has not logged in online on this laptop yet"
    )


# --------------------------------------------------------------- the file


def _encode(check: bytes, users: dict[str, _Wrap], attempts: UnlockAttempts) -> bytes:
    return (
        json.dumps(
            {
                "format": KEYRING_FORMAT,
                "version": KEYRING_VERSION,
                "check": check.hex(),
                "users": {
                    name: {
                        "kdf": _KDF,
                        "time_cost": w.params.time_cost,
                        "memory_kib": w.params.memory_kib,
                        "parallelism": w.params.parallelism,
                        "salt": _b64(w.salt),
                        "cipher": _CIPHER,
                        "nonce": _b64(w.nonce),
                        "wrapped": _b64(w.wrapped),
                    }
                    for name, w in sorted(users.items())
                },
                "attempts": attempts.to_json(),
            },
            indent=1,
            sort_keys=True,
        ).encode("utf-8")
        + b"\n"
    )


def _parse(path: Path, data: bytes) -> tuple[bytes, dict[str, _Wrap], UnlockAttempts]:
    def bad(why: str) -> KeyFileError:
        return KeyFileError(f"{path} is not a sound caresync key file ({why}); it was not changed")

    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad("not JSON") from None
    if not isinstance(obj, dict) or obj.get("format") != KEYRING_FORMAT:
        raise bad("not a key file")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad("no valid version")
    if version > KEYRING_VERSION:
        raise KeyFileError(
            f"{path} was written by a newer caresync (key file version {version}; this one "
            f"reads up to {KEYRING_VERSION}); upgrade caresync"
        )
    check = obj.get("check")
    try:
        check_bytes = bytes.fromhex(check) if isinstance(check, str) else b""
    except ValueError:
        check_bytes = b""
    if len(check_bytes) != hashlib.sha256().digest_size:
        raise bad("no valid key check")
    entries = obj.get("users")
    if not isinstance(entries, dict) or not entries:
        raise bad("no users")
    users: dict[str, _Wrap] = {}
    for name, entry in entries.items():
        try:
            check_username(name)
        except InvalidInputError:
            raise bad("a user's name is not valid") from None
        users[name] = _parse_wrap(entry, bad, name)
    attempts = UnlockAttempts()
    if "attempts" in obj:
        try:
            attempts = UnlockAttempts.from_json(obj["attempts"])
        except ValueError as exc:
            raise bad(str(exc)) from None
    return check_bytes, users, attempts


_Bad = Callable[[str], KeyFileError]


def _parse_wrap(entry: object, bad: _Bad, name: str) -> _Wrap:
    if not isinstance(entry, dict):
        raise bad(f"{name!r}: not an object")
    if entry.get("kdf") != _KDF or entry.get("cipher") != _CIPHER:
        raise bad(f"{name!r}: an unknown kdf or cipher")
    time_cost, memory_kib, parallelism = (
        entry.get(k) for k in ("time_cost", "memory_kib", "parallelism")
    )
    if not (
        isinstance(time_cost, int) and isinstance(memory_kib, int) and isinstance(parallelism, int)
    ):
        raise bad(f"{name!r}: argon2 parameters are not integers")
    try:
        params = KdfParams(time_cost, memory_kib, parallelism)
    except InvalidInputError as exc:
        raise bad(f"{name!r}: {exc}") from None
    return _Wrap(
        params,
        _unb64(entry.get("salt"), _SALT_BYTES, bad, name, "salt"),
        _unb64(entry.get("nonce"), _NONCE_BYTES, bad, name, "nonce"),
        _unb64(entry.get("wrapped"), _WRAPPED_BYTES, bad, name, "wrapped key"),
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, size: int, bad: _Bad, name: str, what: str) -> bytes:
    raw = b""
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raw = b""
    if len(raw) != size:
        raise bad(f"{name!r}: no valid {what}")
    return raw


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bytes]:
    """The bytes of the key file at ``path``, read while holding an exclusive ``flock``
    of it, held until the block ends.

    The file is replaced by a rename, so the lock is taken on the file that is at
    ``path`` once locked: if another process renamed a new file there while this
    one waited, the new file is locked instead.
    """
    for _ in range(1000):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise KeyFileError(f"there is no key file at {path}") from None
        except OSError as exc:
            raise KeyFileError(f"cannot read the key file {path}: {exc}") from exc
        try:
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                current = os.path.samestat(os.fstat(fd), os.stat(path))
                data = b""
                if current:
                    with open(fd, "rb", closefd=False) as file:
                        data = file.read(_MAX_FILE_BYTES + 1)
            except FileNotFoundError:
                current = False
            except OSError as exc:
                raise KeyFileError(f"cannot lock and read the key file {path}: {exc}") from exc
            if current:
                if len(data) > _MAX_FILE_BYTES:
                    raise KeyFileError(f"{path} is too large to be a caresync key file")
                yield data
                return
        finally:
            os.close(fd)
    raise KeyFileError(f"{path} kept being replaced while it was read; try again")


def fsync_directory(directory: Path) -> None:
    """Make the file's new directory entry durable (where directories can be fsynced)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
