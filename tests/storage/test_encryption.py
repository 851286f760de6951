"""Encryption at rest: an SQLite store opened with a key, its backups and its exports."""

from __future__ import annotations

import base64
import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from store_helpers import snapshot

from caresync import (
    DatabaseKeyError,
    ExportFileError,
    InvalidInputError,
    NotACaresyncDatabaseError,
    Record,
    StorageError,
    UnsyncedChangesError,
)
from caresync.records.persons import person_card
from caresync.storage import KdfParams, KeyRing, SQLiteStore, key_file_for
from caresync.storage import _cipher as cipher_module
from caresync.storage.encrypt_in_place import reencrypt_in_place
from caresync.storage.unsynced import (
    ENCRYPTED_EXPORT_FORMAT,
    EXPORT_FORMAT,
    UnsyncedExport,
    decode_export,
    encode_export,
    read_export_file,
    write_export_file,
)

if not cipher_module.AVAILABLE:
    pytest.skip("no encrypting SQLite is installed here", allow_module_level=True)

NAME = "Zanele Okonkwo-Testname"
CHEAP = KdfParams(time_cost=1, memory_kib=8, parallelism=1)


async def write_named_patient(store: SQLiteStore, name: str = NAME) -> Record:
    """A record with a name, written through the store's API as a laptop writes an edit."""
    record = Record.create(replica="laptop-a")
    created = record.update_since()
    await store.write_local(record.record_id, created, conflicts=(), organisation="clinic")
    before = record.state_vector()
    record.set("name", name, author="dr.a")
    record.set("birthDate", "1984-03-02", author="dr.a")
    await store.write_local(
        record.record_id,
        record.update_since(before),
        conflicts=(),
        organisation="clinic",
        person=person_card(record),
    )
    return record


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def files_holding(directory: Path, text: str) -> list[str]:
    """Every file under ``directory`` whose bytes hold ``text`` (UTF-8 or UTF-16)."""
    forms = [text.encode(enc) for enc in ("utf-8", "utf-16-le", "utf-16-be")]
    forms += [text.split()[0].encode(), text.split()[-1].encode()]  # each name alone too
    for shift in range(3):  # base64 (a plain export's updates), at each alignment
        encoded = base64.b64encode(bytes(shift) + text.encode())
        forms.append(encoded[4:-4])
    return sorted(
        str(path.relative_to(directory))
        for path in directory.rglob("*")
        if path.is_file() and any(form in path.read_bytes() for form in forms)
    )


async def test_an_encrypted_store_round_trips(tmp_path: Path) -> None:
    path, key = tmp_path / "replica.db", os.urandom(32)
    async with SQLiteStore.open(path, key=key) as store:
        assert store.encrypted
        record = await write_named_patient(store)
        assert await store.check() == []
    async with SQLiteStore.open(path, key=key, create=False) as store:
        data = await store.load(record.record_id)
        assert data is not None
        assert Record.from_update(record.record_id, data, replica="laptop-b").value("name") == NAME
        assert await store.pending_count() == 2
        cards = await store.person_cards([record.record_id])
        assert cards[record.record_id].display.startswith(NAME)
    async with SQLiteStore.open(path, key=key, read_only=True) as reader:
        assert await reader.count_records() == 1


async def test_a_plain_store_is_as_before(tmp_path: Path) -> None:
    async with SQLiteStore.open(tmp_path / "plain.db") as store:
        assert not store.encrypted
        await write_named_patient(store)
    assert (tmp_path / "plain.db").read_bytes().startswith(b"SQLite format 3\x00")


async def test_a_known_name_is_in_no_file_the_laptop_writes(tmp_path: Path) -> None:
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    path = laptop / "replica.db"
    _, key = KeyRing.create(key_file_for(path), "amina", "pw", params=CHEAP)
    async with SQLiteStore.open(path, key=key) as store:
        for n in range(30):  # enough to spill pages into the write-ahead log
            await write_named_patient(store, NAME if n == 0 else f"Other Person{n}")
        # While it runs: the database, its -wal and -shm, the writer's lock, the key file.
        assert (laptop / "replica.db-wal").exists()
        assert files_holding(laptop, NAME) == []
        await store.export_unsynced(laptop / "unsynced.export")
        await store.backup(laptop / "backup.db")
        assert files_holding(laptop, NAME) == []
    assert files_holding(laptop, NAME) == []
    assert {"replica.db", "replica.db.keys", "unsynced.export", "backup.db"} <= set(names(laptop))


async def test_the_same_search_finds_the_name_in_a_plain_laptop(tmp_path: Path) -> None:
    """The search above is meaningful: without a key, the name is found."""
    path = tmp_path / "replica.db"
    async with SQLiteStore.open(path) as store:
        await write_named_patient(store)
        await store.export_unsynced(tmp_path / "unsynced.export")
    assert {"replica.db", "unsynced.export"} <= set(files_holding(tmp_path, NAME))


async def test_plain_sqlite3_cannot_read_an_encrypted_database(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    async with SQLiteStore.open(path, key=os.urandom(32)) as store:
        await write_named_patient(store)
    assert not path.read_bytes().startswith(b"SQLite format 3")
    before = snapshot(tmp_path)
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="file is not a database"):
            conn.execute("SELECT * FROM sqlite_schema").fetchall()
    finally:
        conn.close()
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("read_only", [False, True])
async def test_no_key_or_a_wrong_key_is_refused_and_the_files_untouched(
    tmp_path: Path, read_only: bool
) -> None:
    path, key = tmp_path / "replica.db", os.urandom(32)
    async with SQLiteStore.open(path, key=key) as store:
        await write_named_patient(store)
    before = snapshot(tmp_path)
    with pytest.raises(DatabaseKeyError, match="encrypted") as no_key:
        await SQLiteStore.open(path, read_only=read_only)
    assert "open it with its key" in str(no_key.value)
    assert isinstance(no_key.value, NotACaresyncDatabaseError)
    with pytest.raises(DatabaseKeyError, match="does not open") as wrong:
        await SQLiteStore.open(path, key=os.urandom(32), read_only=read_only)
    assert "left untouched" in str(wrong.value)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "replica.db-wal").exists()


async def test_a_wrong_key_leaves_a_database_with_a_live_log_untouched(tmp_path: Path) -> None:
    """While the writer runs, a reader (any reader, with the right key too) takes a read
    mark in the -shm, SQLite's shared-memory index: that is all a wrong key changes."""
    path, key = tmp_path / "replica.db", os.urandom(32)
    async with SQLiteStore.open(path, key=key) as store:
        await write_named_patient(store)
        before = snapshot(tmp_path)
        assert "replica.db-wal" in before
        with pytest.raises(DatabaseKeyError):
            await SQLiteStore.open(path, key=os.urandom(32), read_only=True)
        after = snapshot(tmp_path)
        assert after.keys() == before.keys()
        assert {n: d for n, d in after.items() if not n.endswith("-shm")} == {
            n: d for n, d in before.items() if not n.endswith("-shm")
        }
        assert await store.count_records() == 1


async def test_a_plain_database_opened_with_a_key_is_refused_and_untouched(
    tmp_path: Path,
) -> None:
    path = tmp_path / "plain.db"
    async with SQLiteStore.open(path) as store:
        await write_named_patient(store)
    before = snapshot(tmp_path)
    with pytest.raises(DatabaseKeyError, match="plain, unencrypted database") as raised:
        await SQLiteStore.open(path, key=os.urandom(32))
    assert "open it without a key" in str(raised.value)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("key", [b"", b"x" * 16, b"x" * 33, "k" * 32, bytearray(32)])
def test_a_key_is_32_bytes(tmp_path: Path, key: object) -> None:
    with pytest.raises(InvalidInputError, match="32 bytes"):
        SQLiteStore.open(tmp_path / "replica.db", key=key)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


async def test_a_key_ring_opens_its_database(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    ring, key = KeyRing.create(key_file_for(path), "amina", "pw-amina", params=CHEAP)
    async with SQLiteStore.open(path, key=key) as store:
        record = await write_named_patient(store)
    ring.add_user("bo", "pw-bo", ring.unlock("amina", "pw-amina"), params=CHEAP)
    unlocked = KeyRing.load(key_file_for(path)).unlock("bo", "pw-bo")
    async with SQLiteStore.open(path, key=unlocked, create=False) as store:
        assert await store.has_record(record.record_id)


async def test_a_backup_of_an_encrypted_store_is_encrypted_with_the_same_key(
    tmp_path: Path,
) -> None:
    path, copy, key = tmp_path / "replica.db", tmp_path / "copy.db", os.urandom(32)
    async with SQLiteStore.open(path, key=key) as store:
        record = await write_named_patient(store)
        await store.backup(copy)
    assert [n for n in names(tmp_path) if n.startswith(("copy", ".copy"))] == ["copy.db"]
    assert (copy.stat().st_mode & 0o777) == 0o600
    with pytest.raises(DatabaseKeyError):
        await SQLiteStore.open(copy, create=False, read_only=True)
    async with SQLiteStore.open(copy, key=key, create=False, read_only=True) as restored:
        assert await restored.has_record(record.record_id)
        assert await restored.pending_count() == 2
        assert await restored.check() == []


async def test_a_read_only_store_backs_up_while_its_writer_runs(tmp_path: Path) -> None:
    path, key = tmp_path / "replica.db", os.urandom(32)
    async with SQLiteStore.open(path, key=key) as writer:
        await write_named_patient(writer)
        async with SQLiteStore.open(path, key=key, read_only=True) as reader:
            await reader.backup(tmp_path / "copy.db")
        with pytest.raises(Exception, match="exists"):
            await writer.backup(tmp_path / "copy.db")
    async with SQLiteStore.open(tmp_path / "copy.db", key=key, create=False) as restored:
        assert await restored.count_records() == 1


async def test_a_backup_of_a_plain_store_is_plain(tmp_path: Path) -> None:
    async with SQLiteStore.open(tmp_path / "plain.db") as store:
        await write_named_patient(store)
        await store.backup(tmp_path / "copy.db")
    assert (tmp_path / "copy.db").read_bytes().startswith(b"SQLite format 3\x00")
    async with SQLiteStore.open(tmp_path / "copy.db", create=False) as restored:
        assert await restored.count_records() == 1


# ------------------------------------------------------------------- exports


async def test_an_encrypted_store_exports_encrypted_and_reads_its_export(tmp_path: Path) -> None:
    path, key = tmp_path / "replica.db", os.urandom(32)
    export = tmp_path / "unsynced.export"
    async with SQLiteStore.open(path, key=key) as store:
        await write_named_patient(store)
        assert await store.export_unsynced(export) == 2
        assert export.read_bytes().startswith(b'{"cipher":"AES-256-GCM"')
        assert f'"format":"{ENCRYPTED_EXPORT_FORMAT}"'.encode() in export.read_bytes()
        assert (export.stat().st_mode & 0o777) == 0o600
        assert await store.discard_unsynced(exported_to=export) == 2
        assert await store.import_unsynced(export) == 2
    assert len(read_export_file(export, key=key).updates) == 2


async def test_another_store_cannot_use_an_encrypted_export(tmp_path: Path) -> None:
    export = tmp_path / "unsynced.export"
    async with SQLiteStore.open(tmp_path / "a.db", key=os.urandom(32)) as store:
        await write_named_patient(store)
        await store.export_unsynced(export)
    async with SQLiteStore.open(tmp_path / "b.db", key=os.urandom(32)) as other:
        await write_named_patient(other)
        with pytest.raises(ExportFileError, match="does not open with this key"):
            await other.import_unsynced(export)
        with pytest.raises(UnsyncedChangesError):
            await other.discard_unsynced(exported_to=export)
        assert await other.pending_count() == 2
    async with SQLiteStore.open(tmp_path / "plain.db") as plain:
        with pytest.raises(ExportFileError, match="encrypted"):
            await plain.import_unsynced(export)


async def test_a_plain_export_is_still_read_with_or_without_a_key(tmp_path: Path) -> None:
    export = tmp_path / "plain.export"
    async with SQLiteStore.open(tmp_path / "plain.db") as plain:
        await write_named_patient(plain)
        await plain.export_unsynced(export)
    assert export.read_bytes().startswith(b'{"count":2,')
    assert f'"format":"{EXPORT_FORMAT}"'.encode() in export.read_bytes()
    async with SQLiteStore.open(tmp_path / "secret.db", key=os.urandom(32)) as store:
        assert await store.import_unsynced(export) == 2


def _sample_export(tmp_path: Path, key: bytes) -> Path:
    target = tmp_path / "sample.export"
    write_export_file(target, UnsyncedExport("laptop-7", 1, ()), key=key)
    return target


@pytest.mark.parametrize("where", ["header", "ciphertext", "tag", "truncated", "header-only"])
def test_a_changed_encrypted_export_is_refused_whole(tmp_path: Path, where: str) -> None:
    key = os.urandom(32)
    target = _sample_export(tmp_path, key)
    data = bytearray(target.read_bytes())
    header_end = data.index(b"\n")
    if where == "header":
        data[header_end - 3] ^= 0x01  # inside the base64 nonce
    elif where == "ciphertext":
        data[header_end + 2] ^= 0x01
    elif where == "tag":
        data[-1] ^= 0x01
    elif where == "truncated":
        del data[-5:]
    else:
        del data[header_end:]
    target.write_bytes(bytes(data))
    with pytest.raises(ExportFileError):
        read_export_file(target, key=key)


def test_an_encrypted_export_round_trips(tmp_path: Path) -> None:
    key = os.urandom(32)
    target = _sample_export(tmp_path, key)
    assert read_export_file(target, key=key) == UnsyncedExport("laptop-7", 1, ())
    with pytest.raises(ExportFileError, match="is encrypted"):
        read_export_file(target)
    with pytest.raises(ExportFileError, match="does not open"):
        read_export_file(target, key=os.urandom(32))


async def test_without_an_encrypting_sqlite_a_key_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cipher_module, "_mc", None)
    monkeypatch.setattr(cipher_module, "_sqlcipher", None)
    with pytest.raises(StorageError, match="pip install apsw-sqlite3mc"):
        await SQLiteStore.open(tmp_path / "replica.db", key=os.urandom(32))
    assert names(tmp_path) == []
    async with SQLiteStore.open(tmp_path / "plain.db") as plain:  # plain ones work as ever
        await write_named_patient(plain)


_KEY = bytes(range(32))
_SEALED = encode_export(UnsyncedExport("laptop-7", 1, ()), key=_KEY)


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_any_changed_byte_of_an_encrypted_export_is_refused(position: int, flip: int) -> None:
    data = bytearray(_SEALED)
    data[position % len(data)] ^= flip
    with pytest.raises(ExportFileError):
        decode_export(bytes(data), key=_KEY)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_any_bytes_are_an_export_or_an_export_file_error(data: bytes) -> None:
    header = _SEALED[: _SEALED.index(b"\n") + 1]
    for candidate in (data, header + data, header[:-1] + data):
        with pytest.raises(ExportFileError):
            decode_export(candidate, key=_KEY)


# ------------------------------------------------ formats: AEGIS, and SQLCipher's before it

LEGACY = Path(__file__).parent / "data" / "sqlcipher-v4-laptop.db"
"""A laptop database written by caresync before AEGIS (SQLCipher 4.12 through sqlcipher3,
HMAC-SHA256, 4 KiB pages, raw key ``bytes(range(32))``), with one patient, NAME."""
LEGACY_KEY = bytes(range(32))
LEGACY_RECORD = "0beca4f2-699c-4a45-8e79-14c24b5139ea"


def the_cipher_of(path: Path, key: bytes) -> str:
    conn = cipher_module.connect(path, key=key)
    try:
        return cipher_module.cipher_of(conn)
    finally:
        conn.close()


needs_mc = pytest.mark.skipif(
    cipher_module.NEW_DATABASE_CIPHER != cipher_module.AEGIS,
    reason="SQLite3 Multiple Ciphers (apsw-sqlite3mc) is not installed here",
)


@needs_mc
async def test_a_new_encrypted_database_is_in_the_aegis_format(tmp_path: Path) -> None:
    path, key = tmp_path / "replica.db", os.urandom(32)
    async with SQLiteStore.open(path, key=key) as store:
        await write_named_patient(store)
        backup = tmp_path / "backup.db"
        await store.backup(backup)
    assert the_cipher_of(path, key) == cipher_module.AEGIS
    assert the_cipher_of(backup, key) == cipher_module.AEGIS


async def test_a_database_written_in_sqlcipher_format_before_still_opens(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    path.write_bytes(LEGACY.read_bytes())
    async with SQLiteStore.open(path, key=LEGACY_KEY, create=False) as store:
        data = await store.load(LEGACY_RECORD)
        assert data is not None
        record = Record.from_update(LEGACY_RECORD, data, replica="laptop-b")
        assert record.value("name") == NAME
        assert await store.check() == []
        edited = await write_named_patient(store, "Another Patient")  # it writes, too
        await store.backup(tmp_path / "backup.db")  # in its own format
    with pytest.raises(DatabaseKeyError, match="does not open"):
        await SQLiteStore.open(path, key=os.urandom(32))
    async with SQLiteStore.open(path, key=LEGACY_KEY, create=False) as store:
        assert await store.has_record(edited.record_id)
    for copy in (path, tmp_path / "backup.db"):
        assert the_cipher_of(copy, LEGACY_KEY) == cipher_module.SQLCIPHER
    assert files_holding(tmp_path, NAME) == []


AEGIS_BEFORE = Path(__file__).parent / "data" / "aegis-pysqlite3mc-laptop.db"
"""A laptop database written in AEGIS by caresync through pysqlite3mc-binary 0.5.4 (SQLite3
Multiple Ciphers 2.0.2 on SQLite 3.48; the binding before APSW), key ``bytes(range(32))``,
with one patient, NAME."""
AEGIS_BEFORE_RECORD = "c2e4c381-a1ba-4ecb-9922-188cfcae2977"


@needs_mc
async def test_an_aegis_database_written_through_pysqlite3mc_still_opens(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    path.write_bytes(AEGIS_BEFORE.read_bytes())
    async with SQLiteStore.open(path, key=LEGACY_KEY, create=False) as store:
        data = await store.load(AEGIS_BEFORE_RECORD)
        assert data is not None
        record = Record.from_update(AEGIS_BEFORE_RECORD, data, replica="laptop-b")
        assert record.value("name") == NAME
        assert await store.check() == []
        edited = await write_named_patient(store, "Another Patient")
    with pytest.raises(DatabaseKeyError, match="does not open"):
        await SQLiteStore.open(path, key=os.urandom(32))
    async with SQLiteStore.open(path, key=LEGACY_KEY, create=False) as store:
        assert await store.has_record(edited.record_id)
    assert the_cipher_of(path, LEGACY_KEY) == cipher_module.AEGIS
    assert reencrypt_in_place(path, LEGACY_KEY) is False  # AEGIS already: nothing to do
    assert files_holding(tmp_path, NAME) == []


@needs_mc
async def test_a_sqlcipher_database_is_rewritten_in_aegis_with_the_same_key(
    tmp_path: Path,
) -> None:
    path = tmp_path / "replica.db"
    path.write_bytes(LEGACY.read_bytes())
    assert reencrypt_in_place(path, LEGACY_KEY) is True
    assert the_cipher_of(path, LEGACY_KEY) == cipher_module.AEGIS
    assert reencrypt_in_place(path, LEGACY_KEY) is False  # once is enough
    async with SQLiteStore.open(path, key=LEGACY_KEY, create=False) as store:
        data = await store.load(LEGACY_RECORD)
        assert data is not None
        assert Record.from_update(LEGACY_RECORD, data, replica="b").value("name") == NAME
        assert await store.check() == []
    assert files_holding(tmp_path, NAME) == []
    assert [n for n in names(tmp_path) if not n.endswith(".lock")] == ["replica.db"]
    with pytest.raises(DatabaseKeyError):
        reencrypt_in_place(path, os.urandom(32))


def _page_offsets(path: Path) -> tuple[int, int]:
    size = path.stat().st_size
    assert size % 4096 == 0
    assert size // 4096 > 8
    return 4096 * 3, 4096 * 4


@pytest.mark.parametrize("cipher", cipher_module.CIPHERS)
@pytest.mark.parametrize("change", ["flip", "swap"])
def test_a_changed_or_moved_page_is_refused_not_read(
    tmp_path: Path, cipher: str, change: str
) -> None:
    """Authentication: a page is read only as written, and only where it was written."""
    if cipher == cipher_module.AEGIS and cipher != cipher_module.NEW_DATABASE_CIPHER:
        pytest.skip("SQLite3 Multiple Ciphers (apsw-sqlite3mc) is not installed here")
    path, key = tmp_path / "t.db", os.urandom(32)
    conn = cipher_module.connect(path, key=key, cipher=cipher)
    try:
        conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, x TEXT)")
        conn.executemany("INSERT INTO t (x) VALUES (?)", [(f"row {n} " * 40,) for n in range(400)])
    finally:
        conn.close()
    data = bytearray(path.read_bytes())
    first, second = _page_offsets(path)
    if change == "flip":
        data[first + 1000] ^= 0x01
    else:
        data[first:second], data[second : second + 4096] = (
            data[second : second + 4096],
            data[first:second],
        )
    path.write_bytes(bytes(data))
    conn = cipher_module.connect(path, key=key, cipher=cipher)
    try:
        with pytest.raises(cipher_module.DATABASE_ERRORS, match=r"malformed|not a database"):
            conn.execute("SELECT x FROM t").fetchall()
    finally:
        conn.close()
