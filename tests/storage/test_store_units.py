"""Small pure parts of the storage package: exports, the cache, the export format, vectors."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import caresync.storage
from caresync import ExportFileError, InvalidInputError, InvalidUpdateError
from caresync.storage import CachedRecord, RecordCache
from caresync.storage._updates import decode_state_vector, same_state_vector
from caresync.storage.unsynced import (
    EXPORT_VERSION,
    ExportedUpdate,
    UnsyncedExport,
    decode_export,
    encode_export,
)


def test_every_storage_module_declares_its_exports_and_the_package_reexports_them() -> None:
    names = caresync.storage.__all__
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(caresync.storage, name) is not None
    for info in pkgutil.iter_modules(caresync.storage.__path__):
        module = importlib.import_module(f"caresync.storage.{info.name}")
        assert isinstance(module.__all__, list), info.name
        for name in module.__all__:
            assert hasattr(module, name), f"{info.name}.{name}"


def entry(n: int, size: int = 10) -> CachedRecord:
    return CachedRecord(b"\x00", None, False, bytes([n % 256]) * size)


def test_the_cache_evicts_the_least_recently_used_first() -> None:
    cache = RecordCache(max_entries=3, max_bytes=10_000)
    for n in range(3):
        cache.put(f"r{n}", entry(n))
    assert cache.get("r0") is not None  # r0 is now the most recently used
    cache.put("r3", entry(3))
    assert cache.get("r1") is None
    assert [cache.get(f"r{n}") is not None for n in (0, 2, 3)] == [True, True, True]
    assert len(cache) == 3


def test_the_cache_bounds_its_bytes_and_skips_what_cannot_fit() -> None:
    size = entry(0).size
    cache = RecordCache(max_entries=100, max_bytes=5 * size)
    for n in range(10):
        cache.put(f"r{n}", entry(n))
    assert cache.size_bytes <= 5 * size
    assert len(cache) == 5
    cache.put("huge", entry(0, 10 * size))
    assert cache.get("huge") is None
    cache.put("r9", entry(9, 2 * size))  # replacing an entry accounts for the old size
    assert cache.size_bytes <= 5 * size
    cache.discard("r9")
    cache.clear()
    assert cache.size_bytes == 0
    assert len(cache) == 0
    with pytest.raises(InvalidInputError):
        RecordCache(max_entries=-1)


def test_a_disabled_cache_keeps_nothing() -> None:
    cache = RecordCache(max_entries=0)
    cache.put("r", entry(1))
    assert cache.get("r") is None


def sample() -> UnsyncedExport:
    return UnsyncedExport(
        "laptop-7",
        1_700_000_000_000,
        (
            ExportedUpdate(1, "rec-a", "org", 1, b"\x00\x00"),
            ExportedUpdate(5, "rec-b", None, 2, bytes(range(256))),
        ),
    )


def test_an_export_round_trips() -> None:
    assert decode_export(encode_export(sample())) == sample()
    empty = UnsyncedExport(None, 0, ())
    assert decode_export(encode_export(empty)) == empty


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b"",
        lambda b: b"hello\n",
        lambda b: b'{"format": "something-else", "version": 1}\n',
        lambda b: b[:-1],
        lambda b: b[: len(b) // 2],
        lambda b: b.replace(b'"rec-a"', b'"rec-x"'),
        lambda b: b.replace(b'"count":2', b'"count":3'),
        lambda b: b.replace(b"\n", b"\r\n"),
        lambda b: b + b"trailing\n",
    ],
)
def test_a_damaged_or_foreign_export_is_refused(mangle: object) -> None:
    data = encode_export(sample())
    with pytest.raises(ExportFileError):
        decode_export(mangle(data))  # type: ignore[operator]


def test_an_export_from_a_newer_version_is_refused_by_name() -> None:
    data = encode_export(sample()).replace(
        f'"version":{EXPORT_VERSION}'.encode(), f'"version":{EXPORT_VERSION + 1}'.encode()
    )
    with pytest.raises(ExportFileError, match="newer"):
        decode_export(data)


def test_state_vectors_compare_by_meaning_not_bytes() -> None:
    one = bytes([2, 1, 5, 2, 7])  # {1: 5, 2: 7}
    other = bytes([2, 2, 7, 1, 5])  # the same, clients the other way round
    with_zero = bytes([3, 2, 7, 1, 5, 9, 0])  # and a client seen at clock 0
    assert decode_state_vector(one) == {1: 5, 2: 7}
    assert same_state_vector(one, other)
    assert same_state_vector(one, with_zero)
    assert not same_state_vector(one, bytes([1, 1, 5]))
    with pytest.raises(InvalidUpdateError):
        decode_state_vector(b"\x02\x01")
