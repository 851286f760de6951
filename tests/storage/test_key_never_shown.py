"""A database key is never shown: not in an error's message, nor in the errors chained to it.

The defect these tests hold: an encrypted copy is written with ``VACUUM INTO`` a URI that
carries the new key (``...&key=<64 hex digits>``), and SQLite names the file it cannot
open by that whole URI. So a conversion (``caresync encrypt``), a rotation (``keys
rotate``) or a rewrite (``reencrypt``) that could not open its copy raised a StorageError
whose message, printed by the command line and kept in whatever log the application
writes, held the database key: with it, a stolen laptop opens without any password.

Real SQLite files in tmp_path; the copy is sent into a directory that does not exist.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import tempfile
import traceback
from pathlib import Path

import pytest

import caresync.storage.encrypt_in_place as conversion
from caresync.exceptions import StorageError
from caresync.storage import _cipher as cipher_module
from caresync.storage._cipher import SQLITE_ERRORS, copy_encrypted

if cipher_module.NEW_DATABASE_CIPHER != cipher_module.AEGIS:
    pytest.skip(
        "VACUUM INTO an encrypted copy needs SQLite3 Multiple Ciphers", allow_module_level=True
    )


def _plain(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x TEXT)")
    conn.execute("INSERT INTO t VALUES ('a patient')")
    conn.commit()
    conn.close()
    return path


def _everything_shown(error: BaseException) -> str:
    """The error's message and its whole chain, as a log or a traceback would show them."""
    shown = "".join(traceback.format_exception(error))
    seen: BaseException | None = error
    for _ in range(20):  # bounded: a chain is a few errors long
        if seen is None:
            break
        shown += f"\n{seen!s} {seen!r} {seen.args!r}"
        seen = seen.__cause__ or seen.__context__
    return shown


def test_a_copy_that_cannot_be_opened_does_not_show_the_key(tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    target = tmp_path / "no such directory" / "copy.db"
    with pytest.raises(SQLITE_ERRORS) as raised:
        copy_encrypted(_plain(tmp_path / "plain.db"), None, target, key)
    shown = _everything_shown(raised.value)
    assert key.hex() not in shown
    assert key.hex()[:16] not in shown
    assert "unable to open" in str(raised.value)  # what went wrong is still said
    assert str(target) in str(raised.value)  # and where


def test_a_conversion_that_cannot_write_its_copy_does_not_show_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = _plain(tmp_path / "laptop.db")
    gone = tmp_path / "gone"
    mkstemp = tempfile.mkstemp

    def copy_in_a_missing_directory(**kwargs: object) -> tuple[int, str]:
        fd, _name = mkstemp(dir=tmp_path, suffix=".unused")
        return fd, os.fspath(gone / "laptop.db.encrypting")

    monkeypatch.setattr(conversion.tempfile, "mkstemp", copy_in_a_missing_directory)
    key = secrets.token_bytes(32)
    with pytest.raises(StorageError, match="unable to open") as raised:
        conversion.encrypt_in_place(database, key, None)
    shown = _everything_shown(raised.value)
    assert key.hex() not in shown
    assert key.hex()[:16] not in shown
    assert database.read_bytes().startswith(b"SQLite format 3\x00")  # left as it was
