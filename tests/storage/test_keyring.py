"""The key file: the database key wrapped per user under argon2id, and nothing in clear."""

from __future__ import annotations

import base64
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caresync import (
    AuthenticationError,
    InvalidInputError,
    KeyFileError,
    StorageError,
    WrongPasswordError,
)
from caresync.storage import KdfParams, KeyRing, key_file_for, server_database_key

CHEAP = KdfParams(time_cost=1, memory_kib=8, parallelism=1)
"""argon2id at its cheapest: these tests check the wrapping, not the cost."""


def make(path: Path, username: str = "amina", password: str = "correct horse") -> bytes:
    _, key = KeyRing.create(path, username, password, params=CHEAP)
    return key


def test_create_then_unlock_returns_the_key(tmp_path: Path) -> None:
    path = tmp_path / "replica.db.keys"
    ring, key = KeyRing.create(path, "amina", "correct horse", params=CHEAP)
    assert len(key) == 32
    assert ring.users() == ["amina"]
    assert ring.unlock("amina", "correct horse") == key
    assert KeyRing.load(path).unlock("amina", "correct horse") == key


def test_each_key_file_gets_its_own_random_key(tmp_path: Path) -> None:
    assert make(tmp_path / "a.keys") != make(tmp_path / "b.keys")


def test_the_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "replica.db.keys"
    make(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="exists already"):
        KeyRing.create(path, "bo", "another", params=CHEAP)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replica.db.keys"]


def test_the_key_file_sits_beside_its_database(tmp_path: Path) -> None:
    assert key_file_for(tmp_path / "replica.db") == tmp_path / "replica.db.keys"


def test_a_wrong_password_or_unknown_user_is_refused_alike(tmp_path: Path) -> None:
    path = tmp_path / "k.keys"
    make(path)
    ring = KeyRing.load(path)
    for username, password in (("amina", "Correct horse"), ("nobody", "correct horse")):
        with pytest.raises(WrongPasswordError, match="does not unlock") as raised:
            ring.unlock(username, password)
        assert isinstance(raised.value, AuthenticationError)
        assert "correct horse" not in str(raised.value).lower()


def test_add_user_lets_another_user_unlock_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "k.keys"
    ring, key = KeyRing.create(path, "amina", "pw-amina", params=CHEAP)
    ring.add_user("bo", "pw-bo", key, params=CHEAP)
    again = KeyRing.load(path)
    assert again.users() == ["amina", "bo"]
    assert again.unlock("bo", "pw-bo") == key
    assert again.unlock("amina", "pw-amina") == key
    with pytest.raises(WrongPasswordError):
        again.unlock("bo", "pw-amina")


def test_add_user_refuses_a_key_that_is_not_the_files(tmp_path: Path) -> None:
    path = tmp_path / "k.keys"
    ring, _ = KeyRing.create(path, "amina", "pw", params=CHEAP)
    before = path.read_bytes()
    with pytest.raises(InvalidInputError, match="not the key"):
        ring.add_user("bo", "pw-bo", os.urandom(32), params=CHEAP)
    with pytest.raises(InvalidInputError):
        ring.add_user("bo", "pw-bo", b"short", params=CHEAP)
    assert path.read_bytes() == before
    assert ring.users() == ["amina"]


def test_rewrap_after_a_password_change(tmp_path: Path) -> None:
    path = tmp_path / "k.keys"
    ring, key = KeyRing.create(path, "amina", "old password", params=CHEAP)
    ring.add_user("bo", "pw-bo", key, params=CHEAP)
    bo_entry = json.loads(path.read_text())["users"]["bo"]
    ring.rewrap("amina", "new password", key, params=CHEAP)
    again = KeyRing.load(path)
    with pytest.raises(WrongPasswordError):
        again.unlock("amina", "old password")
    assert again.unlock("amina", "new password") == key
    assert again.unlock("bo", "pw-bo") == key
    assert json.loads(path.read_text())["users"]["bo"] == bo_entry  # untouched
    with pytest.raises(InvalidInputError, match="no copy"):
        ring.rewrap("carol", "pw", key, params=CHEAP)


def test_stronger_parameters_are_stored_with_the_wrap(tmp_path: Path) -> None:
    path = tmp_path / "k.keys"
    ring, key = KeyRing.create(path, "amina", "pw", params=CHEAP)
    stronger = KdfParams(time_cost=2, memory_kib=64, parallelism=2)
    ring.rewrap("amina", "pw", key, params=stronger)
    entry = json.loads(path.read_text())["users"]["amina"]
    assert (entry["time_cost"], entry["memory_kib"], entry["parallelism"]) == (2, 64, 2)
    assert KeyRing.load(path).unlock("amina", "pw") == key


def test_the_default_parameters_are_rfc_9106s(tmp_path: Path) -> None:
    path = tmp_path / "k.keys"
    KeyRing.create(path, "amina", "pw")
    entry = json.loads(path.read_text())["users"]["amina"]
    assert (entry["time_cost"], entry["memory_kib"], entry["parallelism"]) == (3, 65536, 4)


def test_the_key_file_holds_no_key_or_password_in_clear(tmp_path: Path) -> None:
    path = tmp_path / "k.keys"
    password = "Sunflower-Passw0rd"
    ring, key = KeyRing.create(path, "amina", password, params=CHEAP)
    ring.add_user("bo", "Other-Passw0rd", key, params=CHEAP)
    data = path.read_bytes()
    forms = [
        key,
        key.hex().encode(),
        key.hex().upper().encode(),
        base64.b64encode(key),
        base64.urlsafe_b64encode(key),
    ]
    for secret in (password, "Other-Passw0rd"):
        forms += [secret.encode(), secret.encode("utf-16-le"), secret.lower().encode()]
    for form in forms:
        assert form not in data
    assert password not in repr(ring)
    assert key.hex() not in repr(ring)


def test_a_wrap_moved_to_another_user_does_not_unlock(tmp_path: Path) -> None:
    path = tmp_path / "k.keys"
    ring, key = KeyRing.create(path, "amina", "same", params=CHEAP)
    ring.add_user("bo", "same", key, params=CHEAP)
    obj = json.loads(path.read_text())
    obj["users"]["amina"], obj["users"]["bo"] = obj["users"]["bo"], obj["users"]["amina"]
    path.write_text(json.dumps(obj))
    with pytest.raises(WrongPasswordError):
        KeyRing.load(path).unlock("amina", "same")


def test_a_wrap_of_another_key_is_an_edited_file(tmp_path: Path) -> None:
    path, other = tmp_path / "k.keys", tmp_path / "other.keys"
    make(path, "amina", "pw")
    make(other, "amina", "pw")
    obj = json.loads(path.read_text())
    obj["users"]["amina"] = json.loads(other.read_text())["users"]["amina"]
    path.write_text(json.dumps(obj))
    with pytest.raises(KeyFileError, match="edited"):
        KeyRing.load(path).unlock("amina", "pw")


def _edit(obj: dict[str, Any], change: str) -> Any:
    entry = obj["users"]["amina"]
    if change == "format":
        obj["format"] = "something-else"
    elif change == "newer":
        obj["version"] = 99
    elif change == "version-bool":
        obj["version"] = True
    elif change == "no-users":
        obj["users"] = {}
    elif change == "users-list":
        obj["users"] = ["amina"]
    elif change == "bad-check":
        obj["check"] = "zz"
    elif change == "bad-name":
        obj["users"]["bad name\n"] = obj["users"].pop("amina")
    elif change == "short-salt":
        entry["salt"] = base64.b64encode(b"1234").decode()
    elif change == "not-base64":
        entry["nonce"] = "***"
    elif change == "short-wrap":
        entry["wrapped"] = base64.b64encode(b"x" * 10).decode()
    elif change == "huge-memory":
        entry["memory_kib"] = 2**40
    elif change == "bool-cost":
        entry["time_cost"] = True
    elif change == "string-cost":
        entry["parallelism"] = "4"
    elif change == "kdf":
        entry["kdf"] = "pbkdf2"
    elif change == "entry-list":
        obj["users"]["amina"] = [1, 2]
    else:  # pragma: no cover - a typo in the parameters
        raise AssertionError(change)
    return obj


@pytest.mark.parametrize(
    "change",
    [
        "format",
        "newer",
        "version-bool",
        "no-users",
        "users-list",
        "bad-check",
        "bad-name",
        "short-salt",
        "not-base64",
        "short-wrap",
        "huge-memory",
        "bool-cost",
        "string-cost",
        "kdf",
        "entry-list",
    ],
)
def test_an_edited_key_file_is_refused_naming_it(tmp_path: Path, change: str) -> None:
    path = tmp_path / "k.keys"
    make(path)
    path.write_text(json.dumps(_edit(json.loads(path.read_text()), change)))
    before = path.read_bytes()
    with pytest.raises(KeyFileError) as raised:
        KeyRing.load(path)
    assert str(path) in str(raised.value)
    assert isinstance(raised.value, StorageError)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"\xff\xfe", b"[]", b"null", b"{}", b'{"format": "caresync-keyring"}'],
)
def test_a_damaged_key_file_is_refused_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k.keys"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match=str(path)):
        KeyRing.load(path)


def test_a_truncated_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.keys"
    make(path)
    data = path.read_bytes()
    for cut in (1, len(data) // 2, len(data) - 3):
        path.write_bytes(data[:cut])
        with pytest.raises(KeyFileError):
            KeyRing.load(path)


def test_a_missing_or_oversized_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no key file"):
        KeyRing.load(tmp_path / "missing.keys")
    big = tmp_path / "big.keys"
    big.write_bytes(b" " * (1024 * 1024 + 1))
    with pytest.raises(KeyFileError, match="too large"):
        KeyRing.load(big)


@pytest.mark.parametrize(
    ("username", "password"),
    [("amina", ""), ("amina", None), ("", "pw"), ("bad name\n", "pw"), ("amina", "x" * 5000)],
)
def test_bad_names_and_passwords_are_refused_before_anything_is_written(
    tmp_path: Path, username: Any, password: Any
) -> None:
    with pytest.raises(InvalidInputError):
        KeyRing.create(tmp_path / "k.keys", username, password, params=CHEAP)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "params",
    [
        {"time_cost": 0},
        {"memory_kib": 4},
        {"parallelism": 0},
        {"parallelism": 8, "memory_kib": 32},
        {"time_cost": 1.5},
    ],
)
def test_kdf_parameters_are_checked(params: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        KdfParams(**params)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    password=st.text(min_size=1, max_size=40),
    other=st.text(min_size=1, max_size=40),
)
def test_unlock_returns_the_wrapped_key_for_its_password_only(password: str, other: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "k.keys"
        ring, key = KeyRing.create(path, "amina", password, params=CHEAP)
        assert KeyRing.load(path).unlock("amina", password) == key
        if other != password:
            with pytest.raises(WrongPasswordError):
                ring.unlock("amina", other)


def test_a_servers_key_comes_from_a_private_file_or_the_environment(tmp_path: Path) -> None:
    key = os.urandom(32)
    assert server_database_key(environ={}) is None
    assert server_database_key(environ={"CARESYNC_DATABASE_KEY": f" {key.hex()}\n"}) == key
    path = tmp_path / "server.key"
    path.write_text(key.hex().upper() + "\n")
    path.chmod(0o600)
    assert server_database_key(path=path, environ={}) == key
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="other users"):
        server_database_key(path=path)
    path.write_text("not a key")
    path.chmod(0o400)
    with pytest.raises(KeyFileError, match="64 hex digits"):
        server_database_key(path=path)
    with pytest.raises(KeyFileError, match="cannot read"):
        server_database_key(path=tmp_path / "missing.key")
    for bad in ("abc", "zz" * 32, key.hex()[:-2], "\u00e9" * 64):
        with pytest.raises(InvalidInputError, match="CARESYNC_DATABASE_KEY"):
            server_database_key(environ={"CARESYNC_DATABASE_KEY": bad})
