"""The pycrdt boundary (caresync.records.crdt): nothing pycrdt raises escapes untranslated.

pycrdt's Rust core panics on some damaged updates, and pyo3 raises the panic as
``pyo3_runtime.PanicException``, a BaseException that passes ``except Exception``.
The reproducer below panics deterministically (yrs ``BlockSet::exclude``); the
panic also prints a Rust backtrace to stderr, which is expected.
"""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pycrdt
import pytest
from pycrdt import Doc, Map

from caresync import CaresyncError, InvalidUpdateError, Record, RecordMismatchError
from caresync.records import crdt
from caresync.storage import _updates

RECORD_ID = "r"
CLIENT_ID = 8782226636114342
# The reproducer's base update with three changes: its struct count zeroed, its
# client id re-encoded as a longer varuint, and the last item's info byte altered.
PANICKING = bytes.fromhex(
    "0100a693eed7b7ecccff7f0f002801046d657461026964017701722801097265766973696f6e73036b30"
    "6101770f7b2270223a2278222c2276223a317d2801097265766973696f6e73036b316101770f7b2270"
    "223a2278222c2276223a317d2801097265766973696f6e73036b3261013e0f7b2270223a2278222c22"
    "76223a317d00"
)
SRC = Path(__file__).resolve().parent.parent / "src" / "caresync"


def base_update() -> bytes:
    """The record the reproducer damages: an id and three revisions, from one client."""
    base: Doc[Any] = Doc(client_id=CLIENT_ID)
    revisions = base.get("revisions", type=Map)
    meta = base.get("meta", type=Map)
    with base.transaction():
        meta["id"] = RECORD_ID
        for i in range(3):
            revisions[f"k{i}a"] = '{"p":"x","v":1}'
    return base.get_update()


def panic_type() -> type[BaseException]:
    """pyo3's PanicException, caught from pycrdt itself (pyo3_runtime cannot be imported)."""
    doc: Doc[Any] = Doc()
    doc.apply_update(base_update())
    try:
        doc.apply_update(PANICKING)
    except Exception:  # noqa: BLE001 - a panic is not an Exception; anything else fails below
        pytest.fail("pycrdt raised an Exception, not a panic: the reproducer no longer panics")
    except BaseException as exc:  # noqa: BLE001 - the panic is what this catches
        return type(exc)
    pytest.fail("pycrdt took the damaged update: the reproducer no longer panics")


def test_the_reproducer_still_makes_pycrdt_panic() -> None:
    # Without this, every test below could pass without ever meeting a panic.
    panic = panic_type()
    assert panic.__name__ == "PanicException"
    assert not issubclass(panic, Exception)


def assert_panic_translated(error: pytest.ExceptionInfo[InvalidUpdateError]) -> None:
    assert type(error.value.__cause__).__name__ == "PanicException"
    message = str(error.value)
    assert f"record {RECORD_ID}" in message
    assert "not a valid Yjs update" in message
    assert "pycrdt panicked" in message


# ------------------------------------------------------------------ through Record


def test_apply_update_turns_the_panic_into_invalid_update_error() -> None:
    record = Record.from_update(RECORD_ID, base_update(), replica="laptop-a")
    with pytest.raises(InvalidUpdateError) as error:
        record.apply_update(PANICKING)
    assert_panic_translated(error)


def test_from_updates_turns_the_panic_into_invalid_update_error() -> None:
    with pytest.raises(InvalidUpdateError) as error:
        Record.from_updates(RECORD_ID, [base_update(), PANICKING], replica="laptop-a")
    assert_panic_translated(error)


def test_a_record_that_met_a_panic_refuses_further_use() -> None:
    record = Record.from_update(RECORD_ID, base_update(), replica="laptop-a")
    with pytest.raises(InvalidUpdateError):
        record.apply_update(PANICKING)
    refusals: list[Callable[[], object]] = [
        lambda: record.apply_update(base_update()),
        lambda: record.set("birthDate", "1970-01-01", author="dr.a"),
        lambda: record.add_entry("allergies", {"substance": "latex"}, author="dr.a"),
        record.state_vector,
        record.update_since,
    ]
    for refused in refusals:
        with pytest.raises(InvalidUpdateError, match="no longer usable") as error:
            refused()
        assert "load the record again" in str(error.value)
    assert record.get("birthDate").heads == ()  # the refused write left nothing


def test_a_record_refusing_undecodable_bytes_stays_usable() -> None:
    # pycrdt refuses bytes it cannot decode before touching the document.
    record = Record.create(replica="laptop-a", record_id=RECORD_ID)
    vector = record.state_vector()
    with pytest.raises(InvalidUpdateError, match="not a valid Yjs update"):
        record.apply_update(b"\x01\x02garbage")
    assert record.state_vector() == vector
    record.set("birthDate", "1970-01-01", author="dr.a")
    assert record.value("birthDate") == "1970-01-01"
    with pytest.raises(InvalidUpdateError, match="not a valid Yjs state vector"):
        record.update_since(b"\xff\xff")
    assert record.value("birthDate") == "1970-01-01"


def test_the_listeners_own_errors_are_not_blamed_on_the_bytes() -> None:
    # pycrdt raises what observers raised as one group when the transaction ends.
    writer = Record.create(replica="laptop-a", record_id=RECORD_ID)
    reader = Record.from_update(RECORD_ID, writer.update_since(), replica="laptop-b")
    writer.set("birthDate", "1970-01-01", author="dr.a")

    def failing(update: bytes, is_local: bool) -> None:
        raise RecordMismatchError("a listener's own failure")

    reader.on_update(failing)
    with pytest.raises(BaseExceptionGroup) as group:
        reader.apply_update(writer.update_since())
    assert group.group_contains(RecordMismatchError)
    assert reader.value("birthDate") == "1970-01-01"  # applied, and not broken
    assert reader.state_vector() == writer.state_vector()


# --------------------------------------------------------- through each crdt wrapper


def test_the_document_wrapper_turns_the_panic_into_invalid_update_error() -> None:
    doc: Doc[Any] = Doc()
    crdt.apply_update(doc, base_update(), record_id=RECORD_ID)
    with pytest.raises(InvalidUpdateError) as error:
        crdt.apply_update(doc, PANICKING, record_id=RECORD_ID)
    assert_panic_translated(error)
    assert not crdt.doc_untouched(error.value)


def test_the_byte_wrappers_take_the_reproducer_or_refuse_it() -> None:
    # On these bytes pycrdt's byte functions do not panic; they must not raise
    # anything but InvalidUpdateError either.
    base = base_update()
    vector = crdt.state_vector_of(base)
    for call in (
        lambda: crdt.merge([base, PANICKING], record_id=RECORD_ID),
        lambda: crdt.state_vector_of(PANICKING, record_id=RECORD_ID),
        lambda: crdt.diff_update(PANICKING, vector, record_id=RECORD_ID),
        lambda: crdt.diff_update(base, PANICKING, record_id=RECORD_ID),
    ):
        try:
            result = call()
        except InvalidUpdateError:
            continue
        assert isinstance(result, bytes)


def _wrapper_calls() -> dict[str, tuple[str, Callable[[], object]]]:
    """Each wrapper, with the pycrdt callable it goes through (patched by name below)."""
    base = base_update()
    doc: Doc[Any] = Doc()
    doc.apply_update(base)
    vector = doc.get_state()
    return {
        "merge": ("_merge_updates", lambda: crdt.merge([base, base], record_id=RECORD_ID)),
        "state_vector_of": ("_get_state", lambda: crdt.state_vector_of(base, record_id=RECORD_ID)),
        "diff_update": (
            "_get_update",
            lambda: crdt.diff_update(base, vector, record_id=RECORD_ID),
        ),
        "apply_update": (
            "Doc.apply_update",
            lambda: crdt.apply_update(Doc(), base, record_id=RECORD_ID),
        ),
        "encode_state_vector": (
            "Doc.get_state",
            lambda: crdt.encode_state_vector(doc, record_id=RECORD_ID),
        ),
        "encode_state_as_update": (
            "Doc.get_update",
            lambda: crdt.encode_state_as_update(doc, vector, record_id=RECORD_ID),
        ),
    }


WRAPPERS = sorted(_wrapper_calls())


def patch_pycrdt(monkeypatch: pytest.MonkeyPatch, target: str, exc: BaseException) -> None:
    """Make the pycrdt callable a wrapper uses raise ``exc``."""

    def raising(*args: object, **kwargs: object) -> bytes:
        raise exc

    if target.startswith("Doc."):
        monkeypatch.setattr(crdt.Doc, target.removeprefix("Doc."), raising)
    else:
        monkeypatch.setattr(crdt, target, raising)


@pytest.mark.parametrize("name", WRAPPERS)
@pytest.mark.parametrize("kind", ["panic", "ValueError", "RuntimeError", "MemoryError"])
def test_every_wrapper_translates_whatever_pycrdt_raises(
    monkeypatch: pytest.MonkeyPatch, name: str, kind: str
) -> None:
    target, call = _wrapper_calls()[name]
    raised: BaseException
    if kind == "panic":
        raised = panic_type()("called `Option::unwrap()` on a `None` value")
    else:
        raised = {"ValueError": ValueError, "RuntimeError": RuntimeError}.get(kind, MemoryError)(
            "boom"
        )
    patch_pycrdt(monkeypatch, target, raised)
    with pytest.raises(InvalidUpdateError) as error:
        call()
    assert error.value.__cause__ is raised
    assert f"record {RECORD_ID}" in str(error.value)
    assert ("pycrdt panicked" in str(error.value)) == (kind == "panic")


@pytest.mark.parametrize("name", WRAPPERS)
@pytest.mark.parametrize(
    "stop", [KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError]
)
def test_no_wrapper_swallows_a_request_to_stop(
    monkeypatch: pytest.MonkeyPatch, name: str, stop: type[BaseException]
) -> None:
    target, call = _wrapper_calls()[name]
    raised = stop()
    patch_pycrdt(monkeypatch, target, raised)
    with pytest.raises(stop) as error:
        call()
    assert error.value is raised  # the very exception, not a translation


def test_a_record_lets_a_keyboard_interrupt_through_and_stays_usable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    record = Record.create(replica="laptop-a", record_id=RECORD_ID)
    writer = Record.from_update(RECORD_ID, record.update_since(), replica="laptop-b")
    writer.set("birthDate", "1970-01-01", author="dr.b")
    with monkeypatch.context() as patched:
        patch_pycrdt(patched, "Doc.apply_update", KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            record.apply_update(writer.update_since())
    record.apply_update(writer.update_since())  # not marked broken by an interrupt
    assert record.value("birthDate") == "1970-01-01"


def test_errors_already_translated_pass_through_unchanged() -> None:
    raised = InvalidUpdateError("inner")
    with pytest.raises(InvalidUpdateError) as error, crdt.pycrdt_errors(record_id=RECORD_ID):
        raise raised
    assert error.value is raised
    with pytest.raises(CaresyncError) as other, crdt.pycrdt_errors():
        raise RecordMismatchError("not ours")
    assert type(other.value) is RecordMismatchError


def test_doc_untouched_only_for_bytes_that_did_not_decode() -> None:
    with pytest.raises(InvalidUpdateError) as undecodable:
        crdt.apply_update(Doc(), b"\x01\x02garbage")
    assert crdt.doc_untouched(undecodable.value)
    assert not crdt.doc_untouched(InvalidUpdateError("no cause"))


def test_storage_helpers_refuse_through_the_boundary() -> None:
    with pytest.raises(InvalidUpdateError, match="record r: not a valid update"):
        _updates.merge([b"\x01\x02garbage"], record_id=RECORD_ID)
    with pytest.raises(InvalidUpdateError):
        _updates.state_vector_of(b"\xff" * 12, record_id=RECORD_ID)
    with pytest.raises(InvalidUpdateError):
        _updates.has_pending(base_update(), b"\xff\xff")
    with pytest.raises(InvalidUpdateError):
        _updates.covered_by(b"garbage", b"\x00")
    assert _updates.merge([], record_id=RECORD_ID) == crdt.EMPTY_UPDATE
    # The check builds documents from the pieces: a panic there is a finding too.
    vector = crdt.state_vector_of(base_update())
    found = _updates.verify_compaction(base_update(), [PANICKING], base_update(), vector)
    assert found is not None
    assert "cannot be decoded" in found


# --------------------------------------------------------------- one door, checked


def pycrdt_importers() -> list[str]:
    """Modules under src/caresync that import pycrdt, as paths relative to it."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            if any(n == "pycrdt" or n.startswith("pycrdt.") for n in names):
                found.append(path.relative_to(SRC).as_posix())
                break
    return found


def test_only_the_boundary_imports_pycrdt() -> None:
    assert pycrdt_importers() == ["records/crdt.py"], (
        "import pycrdt names from caresync.records.crdt, the one boundary around pycrdt"
    )


def test_the_boundary_keeps_the_pure_layer_free_of_io_shells() -> None:
    probe = (
        "import sys, caresync.records.crdt, caresync.records; "
        "print(sorted(m for m in ('aiosqlite', 'websockets', 'asyncio') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_the_reexported_names_are_pycrdts() -> None:
    for name in ("Doc", "Map", "MapEvent", "Subscription", "TransactionEvent"):
        assert getattr(crdt, name) is getattr(pycrdt, name)
