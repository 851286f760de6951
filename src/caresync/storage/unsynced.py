"""The file format for exported unsynced changes (pure encoding, plus careful file I/O).

An export is what a user keeps before the outbox may be emptied without the
server's acknowledgement (promise 3). It is a UTF-8 text file of JSON lines::

    {"count": 2, "exported_ms": 1700000000000, "format": "caresync-unsynced",
     "replica_id": "laptop-7", "version": 1}
    {"created_ms": ..., "organisation": "clinic-a", "record_id": "...", "seq": 41,
     "update": "<base64 of the Yjs update>"}
    {"created_ms": ..., ...                                           "seq": 42, ...}
    {"sha256": "<hex digest of every byte above this line>"}

(each object on one line; keys sorted). The first line names the format and
its version; a reader refuses a version it does not know. The last line is a
SHA-256 checksum of everything before it, so a truncated or damaged file is
refused as a whole, never half-imported. Files are created exclusively: an
export never overwrites an existing file. They are created with mode 0600
(only their owner may read them), whatever the umask.

**Encrypted exports.** Given a key (an encrypted store passes its database
key), the file is one header line, then the whole plain export above sealed
with AES-256-GCM::

    {"cipher": "AES-256-GCM", "format": "caresync-unsynced-encrypted",
     "kdf": "HKDF-SHA256", "nonce": "<base64>", "salt": "<base64>", "version": 1}
    <ciphertext and tag: binary, to the end of the file>

The file's own key is HKDF-SHA256 of the given key with the file's random salt
(so the database key itself never encrypts anything but pages, and no two files
share a key); the header line is the associated data, so it cannot be changed
either. A wrong key, or any changed byte, is refused as a whole with
:class:`~caresync.exceptions.ExportFileError`. Readers still read plain exports.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from caresync.exceptions import ExportFileError
from caresync.storage._fsync import sync_file

__all__ = [
    "ENCRYPTED_EXPORT_FORMAT",
    "ENCRYPTED_EXPORT_VERSION",
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "PRIVATE_FILE_MODE",
    "ExportedUpdate",
    "UnsyncedExport",
    "content_key",
    "decode_export",
    "encode_export",
    "private_opener",
    "read_export_file",
    "write_export_file",
]

EXPORT_FORMAT = "caresync-unsynced"
PRIVATE_FILE_MODE = 0o600
"""The mode of every file caresync writes that holds patient data or secrets."""
EXPORT_VERSION = 1
ENCRYPTED_EXPORT_FORMAT = "caresync-unsynced-encrypted"
ENCRYPTED_EXPORT_VERSION = 1
_CIPHER = "AES-256-GCM"
_KDF = "HKDF-SHA256"
_HKDF_INFO = b"caresync unsynced export v1"
_KEY_BYTES = 32
_SALT_BYTES = 16
_NONCE_BYTES = 12
_MAX_SEALED_BYTES = 2**31 - 1 - 16  # one AES-GCM call (cryptography's limit), less the tag
_MAX_EXPORT_BYTES = 4 * 1024 * 1024 * 1024
# Directory fsync is not supported everywhere; the file itself was fsynced already.
_DIR_FSYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES})


@dataclass(frozen=True, slots=True)
class ExportedUpdate:
    """One unsynced local update as exported."""

    seq: int
    record_id: str
    organisation: str | None
    created_ms: int
    update: bytes

    @property
    def key(self) -> tuple[str, bytes]:
        """What identifies the update's content: see :func:`content_key`."""
        return content_key(self.record_id, self.update)


@dataclass(frozen=True, slots=True)
class UnsyncedExport:
    """The content of an export file."""

    replica_id: str | None
    exported_ms: int
    updates: tuple[ExportedUpdate, ...]

    def keys(self) -> set[tuple[str, bytes]]:
        """The content keys of every update in the file."""
        return {u.key for u in self.updates}


def content_key(record_id: str, update: bytes) -> tuple[str, bytes]:
    """What identifies an update's content: its record and the SHA-256 of its bytes."""
    return (record_id, hashlib.sha256(update).digest())


def encode_export(export: UnsyncedExport, *, key: bytes | None = None) -> bytes:
    """The file's bytes for ``export``: plain, or encrypted under ``key`` (32 bytes)."""
    if key is not None:
        return _seal(_encode_plain(export), key)
    return _encode_plain(export)


def _encode_plain(export: UnsyncedExport) -> bytes:
    header = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "replica_id": export.replica_id,
        "exported_ms": export.exported_ms,
        "count": len(export.updates),
    }
    lines = [_line(header)]
    lines.extend(
        _line(
            {
                "seq": u.seq,
                "record_id": u.record_id,
                "organisation": u.organisation,
                "created_ms": u.created_ms,
                "update": base64.b64encode(u.update).decode("ascii"),
            }
        )
        for u in export.updates
    )
    body = b"".join(lines)
    return body + _line({"sha256": hashlib.sha256(body).hexdigest()})


def decode_export(data: bytes, *, key: bytes | None = None) -> UnsyncedExport:
    """Parse and verify an export; ExportFileError for anything but a sound, known file.

    An encrypted export needs the ``key`` it was written with; a plain one is
    read with or without a key.
    """
    first, _, _ = data.partition(b"\n")
    header = _json_object(first)
    if header is not None and header.get("format") == ENCRYPTED_EXPORT_FORMAT:
        data = _open_sealed(data, header, key)
        first, _, _ = data.partition(b"\n")
        header = _json_object(first)
    if header is None or header.get("format") != EXPORT_FORMAT:
        raise ExportFileError("not an export of caresync unsynced changes")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ExportFileError("the export's header has no valid version")
    if version > EXPORT_VERSION:
        raise ExportFileError(
            f"the export was written by a newer caresync (format version {version}; "
            f"this one reads up to {EXPORT_VERSION})"
        )
    if not data.endswith(b"\n"):
        raise ExportFileError("the export is incomplete (no checksum line at its end)")
    body, _, last = data[:-1].rpartition(b"\n")
    body += b"\n"
    trailer = _json_object(last)
    digest = trailer.get("sha256") if trailer is not None else None
    if not isinstance(digest, str) or hashlib.sha256(body).hexdigest() != digest:
        raise ExportFileError("the export is damaged or incomplete: its checksum does not match")
    lines = body.split(b"\n")[1:-1]
    count = header.get("count")
    if count != len(lines):
        raise ExportFileError(f"the export's header says {count} updates, it holds {len(lines)}")
    replica_id = header.get("replica_id")
    exported_ms = header.get("exported_ms")
    if not (replica_id is None or isinstance(replica_id, str)) or not isinstance(exported_ms, int):
        raise ExportFileError("the export's header is malformed")
    return UnsyncedExport(replica_id, exported_ms, tuple(_entry(line) for line in lines))


def write_export_file(
    path: str | os.PathLike[str], export: UnsyncedExport, *, key: bytes | None = None
) -> None:
    """Create ``path`` (never overwriting a file) with ``export``, flushed to disk.

    The file holds patient data: it is created readable and writable by its
    owner only (mode 0600, whatever the umask), so no other user can read it,
    not even while it is being written. With ``key`` it is encrypted (see the
    module's docstring).
    """
    target = Path(path)
    data = encode_export(export, key=key)
    try:
        with open(target, "xb", opener=private_opener) as file:
            file.write(data)
            file.flush()
            sync_file(file.fileno())
    except FileExistsError:
        raise ExportFileError(
            f"{target} exists already; an export never overwrites a file, choose a new name"
        ) from None
    except OSError as exc:
        raise ExportFileError(f"cannot write the export to {target}: {exc}") from exc
    _fsync_directory(target.parent)


def private_opener(path: str | os.PathLike[str], flags: int) -> int:
    """An ``opener`` for :func:`open`: a file created with mode 0600, whatever the umask.

    The mode is set as the file is created (``os.open``), never after it was
    written, so at no moment can another user read it. A umask that would take
    the owner's own bits away is overridden too (``fchmod`` on the new file
    of a file this call created exclusively: others have no access from the start).
    """
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE_MODE)
    try:
        if flags & os.O_EXCL and hasattr(os, "fchmod"):  # a file this call created
            os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_export_file(path: str | os.PathLike[str], *, key: bytes | None = None) -> UnsyncedExport:
    """Read and verify the export file at ``path`` (an encrypted one needs its ``key``)."""
    target = Path(path)
    try:
        if target.stat().st_size > _MAX_EXPORT_BYTES:
            raise ExportFileError(f"{target} is too large to be an export")
        data = target.read_bytes()
    except FileNotFoundError:
        raise ExportFileError(f"there is no export file at {target}") from None
    except OSError as exc:
        raise ExportFileError(f"cannot read the export at {target}: {exc}") from exc
    return decode_export(data, key=key)


def _seal(plain: bytes, key: bytes) -> bytes:
    """An encrypted export of the plain export bytes ``plain``."""
    if len(plain) > _MAX_SEALED_BYTES:
        raise ExportFileError("the export is too large to encrypt in one piece (over 2 GiB)")
    salt, nonce = os.urandom(_SALT_BYTES), os.urandom(_NONCE_BYTES)
    header = _line(
        {
            "format": ENCRYPTED_EXPORT_FORMAT,
            "version": ENCRYPTED_EXPORT_VERSION,
            "cipher": _CIPHER,
            "kdf": _KDF,
            "salt": base64.b64encode(salt).decode("ascii"),
            "nonce": base64.b64encode(nonce).decode("ascii"),
        }
    )
    return header + AESGCM(_file_key(key, salt)).encrypt(nonce, plain, header)


def _open_sealed(data: bytes, header: dict[str, object], key: bytes | None) -> bytes:
    """The plain export inside an encrypted one; ExportFileError if it does not open."""
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ExportFileError("the encrypted export's header has no valid version")
    if version > ENCRYPTED_EXPORT_VERSION:
        raise ExportFileError(
            f"the export was encrypted by a newer caresync (format version {version}; "
            f"this one reads up to {ENCRYPTED_EXPORT_VERSION})"
        )
    if header.get("cipher") != _CIPHER or header.get("kdf") != _KDF:
        raise ExportFileError("the encrypted export names a cipher this caresync does not know")
    if key is None:
        raise ExportFileError(
            "the export is encrypted: read it with the key of the database that wrote it"
        )
    salt, nonce = _b64_field(header, "salt", _SALT_BYTES), _b64_field(header, "nonce", _NONCE_BYTES)
    head_end = data.find(b"\n") + 1
    if head_end == 0:
        raise ExportFileError("the encrypted export is incomplete (nothing after its header)")
    try:
        return AESGCM(_file_key(key, salt)).decrypt(nonce, data[head_end:], data[:head_end])
    except InvalidTag:
        raise ExportFileError(
            "the export does not open with this key: it was written by another database "
            "(another laptop, or one enrolled again), or it was damaged or changed"
        ) from None


def _file_key(key: bytes, salt: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) != _KEY_BYTES:
        raise ExportFileError(f"an export key is {_KEY_BYTES} bytes")
    return HKDF(algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=salt, info=_HKDF_INFO).derive(
        key
    )


def _b64_field(header: dict[str, object], name: str, size: int) -> bytes:
    value = header.get(name)
    try:
        raw = base64.b64decode(str(value).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = b""
    if not isinstance(value, str) or len(raw) != size:
        raise ExportFileError(f"the encrypted export's header has no valid {name}")
    return raw


def _line(obj: dict[str, object]) -> bytes:
    return (
        json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"
    )


def _json_object(line: bytes) -> dict[str, object] | None:
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _entry(line: bytes) -> ExportedUpdate:
    obj = _json_object(line)
    if obj is None:
        raise ExportFileError("the export holds a line that is not an update")
    seq, record_id = obj.get("seq"), obj.get("record_id")
    organisation, created_ms, update = (
        obj.get("organisation"),
        obj.get("created_ms"),
        obj.get("update"),
    )
    if (
        not isinstance(seq, int)
        or not isinstance(record_id, str)
        or not record_id
        or not (organisation is None or isinstance(organisation, str))
        or not isinstance(created_ms, int)
        or not isinstance(update, str)
    ):
        raise ExportFileError("the export holds a malformed update line")
    try:
        raw = base64.b64decode(update.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ExportFileError("the export holds an update that is not base64") from None
    return ExportedUpdate(seq, record_id, organisation, created_ms, raw)


def _fsync_directory(directory: Path) -> None:
    """Make the new file's directory entry durable too."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:
        if exc.errno in _DIR_FSYNC_UNSUPPORTED:
            return
        raise ExportFileError(f"cannot open {directory} to flush it: {exc}") from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise ExportFileError(f"cannot flush {directory}: {exc}") from exc
    finally:
        os.close(fd)
