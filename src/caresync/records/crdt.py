"""The one door to pycrdt: every call that can see foreign bytes goes through here.

pycrdt is a Rust extension. Bytes it cannot read make it raise a ``ValueError``,
but damaged bytes of some shapes make its Rust core panic instead, and pyo3
turns a panic into ``pyo3_runtime.PanicException``, which derives from
``BaseException``: it passes every ``except Exception`` and would end the
task, the connection or the process that met it. So, as httpx funnels every
transport call through ``map_httpcore_exceptions``, each wrapper here runs its
pycrdt call inside :func:`pycrdt_errors`, which turns whatever pycrdt raises
into :class:`~caresync.exceptions.InvalidUpdateError`, naming the record when
it is known, and keeping pycrdt's exception as ``__cause__``. Left untouched:

* ``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit`` and
  ``asyncio.CancelledError``: a request to stop, not a property of the bytes;
* :class:`~caresync.exceptions.CaresyncError`: translated already (an inner
  wrapper), or raised by caresync's own code;
* ``BaseExceptionGroup``: pycrdt collects what caresync's own observers raise
  during a transaction and raises it as one group when the transaction ends;
  that is the observer's failure, not the bytes'.

Only a failure to *decode* bytes is known to leave a document as it was
(:func:`doc_untouched`); after any other failure the document may hold part
of an update, so :class:`~caresync.records.record.Record` refuses further use.

Nothing else in the package imports pycrdt: the names the records package
needs of it (``Doc``, ``Map``, ``MapEvent``, ``Subscription``,
``TransactionEvent``) are re-exported from here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

from pycrdt import Doc, Map, MapEvent, Subscription, TransactionEvent
from pycrdt import merge_updates as _merge_updates

try:  # pycrdt's compiled functions, without the pure-Python wrapper's call (per record)
    from pycrdt._pycrdt import get_state as _get_state
    from pycrdt._pycrdt import get_update as _get_update
except ImportError:  # pragma: no cover - another layout of pycrdt
    from pycrdt import get_state as _get_state
    from pycrdt import get_update as _get_update

from caresync.exceptions import CaresyncError, InvalidUpdateError

__all__ = [
    "EMPTY_UPDATE",
    "Doc",
    "Map",
    "MapEvent",
    "Subscription",
    "TransactionEvent",
    "apply_update",
    "diff_update",
    "doc_untouched",
    "encode_state_as_update",
    "encode_state_vector",
    "merge",
    "pycrdt_errors",
    "state_vector_of",
    "state_vectors_of",
]

EMPTY_UPDATE = b"\x00\x00"
"""A Yjs v1 update that holds nothing: the state of a record before its first write."""

# What went wrong, for the message; pycrdt's own text follows in parentheses.
_AN_UPDATE = "not a valid update: the bytes are not a valid Yjs update"
_A_STATE_VECTOR = "not a valid state vector: the bytes are not a valid Yjs state vector"
_AN_UPDATE_OR_VECTOR = "not a valid Yjs update and state vector: pycrdt cannot compare them"
_A_DOCUMENT = "its document cannot be encoded"

# Never translated: stop requests, caresync's own errors, and the group in which
# pycrdt re-raises what caresync's observers raised (see the module docstring).
_PASS_THROUGH: tuple[type[BaseException], ...] = (
    KeyboardInterrupt,
    SystemExit,
    GeneratorExit,
    CaresyncError,
    BaseExceptionGroup,
)

# pycrdt reports bytes it could not decode with these; nothing was changed yet.
_DECODE_FAILURES = ("Cannot decode update", "Cannot decode state")


class _PycrdtErrors:
    """The context manager behind :func:`pycrdt_errors` (a class: it runs per apply)."""

    __slots__ = ("_record_id", "_subject")

    def __init__(self, record_id: str | None, subject: str) -> None:
        self._record_id = record_id
        self._subject = subject

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or _passes_through(exc):
            return  # nothing raised, or propagated as it is
        raise InvalidUpdateError(_message(exc, self._record_id, self._subject)) from exc


def pycrdt_errors(
    *, record_id: str | None = None, subject: str = _AN_UPDATE
) -> AbstractContextManager[None]:
    """A context manager that turns whatever pycrdt raises into InvalidUpdateError.

    The message names the record (if ``record_id`` is given), says what was
    wrong (``subject``, a phrase), then gives pycrdt's own text and whether it
    panicked. Stop requests (``KeyboardInterrupt``, ``SystemExit``,
    ``GeneratorExit``, ``asyncio.CancelledError``), caresync's own errors and
    observer error groups pass through unchanged.
    """
    return _PycrdtErrors(record_id, subject)


def _passes_through(exc: BaseException) -> bool:
    if isinstance(exc, _PASS_THROUGH):
        return True
    # Looked up, not imported: the pure layers do not load asyncio, and without
    # it loaded nothing can raise its CancelledError.
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


def _message(exc: BaseException, record_id: str | None, subject: str) -> str:
    where = f"record {record_id}: " if record_id else ""
    text = str(exc) or "no details"
    if type(exc).__name__ == "PanicException":  # pyo3_runtime's type is not importable
        how = f"pycrdt panicked: {text}"
    elif isinstance(exc, ValueError):
        how = f"pycrdt: {text}"
    else:
        how = f"pycrdt raised {type(exc).__name__}: {text}"
    return f"{where}{subject} ({how})"


def doc_untouched(error: BaseException) -> bool:
    """True if pycrdt refused bytes while decoding them, before changing any document.

    ``error`` is an InvalidUpdateError raised by this module. Any other failure
    (a panic, or an update that decoded but did not integrate) may have left
    the document holding part of the update.
    """
    cause = error.__cause__
    return isinstance(cause, ValueError) and str(cause).startswith(_DECODE_FAILURES)


# ------------------------------------------------------------ bytes only, no document


def merge(parts: Sequence[bytes], *, record_id: str | None = None) -> bytes:
    """Merge updates into one; InvalidUpdateError if any part is not a Yjs update.

    No parts merge to :data:`EMPTY_UPDATE`.
    """
    if not parts:
        return EMPTY_UPDATE
    with _PycrdtErrors(record_id, _AN_UPDATE):
        return _merge_updates(*parts)


def state_vector_of(update: bytes, *, record_id: str | None = None) -> bytes:
    """The state vector of (possibly merged) update bytes."""
    # What pycrdt_errors does, inline: this runs once per record of a first copy.
    try:
        state: bytes = _get_state(update)
    except BaseException as exc:
        if _passes_through(exc):
            raise
        raise InvalidUpdateError(_message(exc, record_id, _AN_UPDATE)) from exc
    return state


def state_vectors_of(updates: Sequence[bytes]) -> list[bytes] | None:
    """The state vector of each update, in one pass of pycrdt calls (a first copy's
    batch); None if any is not an update, for the caller to read them one by one
    with :func:`state_vector_of` and learn which."""
    try:
        return list(map(_get_state, updates))
    except BaseException as exc:
        if _passes_through(exc):
            raise
        return None


def diff_update(update: bytes, state_vector: bytes, *, record_id: str | None = None) -> bytes:
    """What of ``update`` a document at ``state_vector`` lacks, as an update (Yjs' diffUpdate)."""
    try:
        rest: bytes = _get_update(update, state_vector)
    except BaseException as exc:
        if _passes_through(exc):
            raise
        raise InvalidUpdateError(_message(exc, record_id, _AN_UPDATE_OR_VECTOR)) from exc
    return rest


# ------------------------------------------------------------------- documents


def apply_update(doc: Doc[Any], update: bytes, *, record_id: str | None = None) -> None:
    """Apply update bytes to ``doc``.

    Raises InvalidUpdateError for bytes pycrdt cannot take; unless
    :func:`doc_untouched` says otherwise, ``doc`` may then hold part of them.
    """
    with _PycrdtErrors(record_id, _AN_UPDATE):
        doc.apply_update(update)


def encode_state_vector(doc: Doc[Any], *, record_id: str | None = None) -> bytes:
    """The state vector of ``doc``: what it has seen."""
    with _PycrdtErrors(record_id, _A_DOCUMENT):
        return doc.get_state()


def encode_state_as_update(
    doc: Doc[Any], state_vector: bytes | None = None, *, record_id: str | None = None
) -> bytes:
    """Everything ``doc`` holds that a peer at ``state_vector`` lacks (all of it if None)."""
    if state_vector is None:
        with _PycrdtErrors(record_id, _A_DOCUMENT):
            return doc.get_update()
    with _PycrdtErrors(record_id, _A_STATE_VECTOR):
        return doc.get_update(state_vector)
