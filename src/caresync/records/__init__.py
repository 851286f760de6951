"""The record model: patient records whose fields never lose a value (pure, no I/O)."""

from caresync.records.admission import Admission, AdmissionLimits
from caresync.records.clock import MAX_CLOCK_AHEAD_MS, HybridLogicalClock, Timestamp
from caresync.records.ids import new_entry_id, new_record_id
from caresync.records.record import (
    ACK_PREFIX,
    ADDENDA_FIELD,
    NOTES_COLLECTION,
    SIGNATURE_FIELD,
    CountState,
    Entry,
    FieldState,
    Record,
    UpdateListener,
)
from caresync.records.revision import Revision
from caresync.records.schema import (
    COUNT_CHANGE,
    COUNT_TOTAL,
    DEFAULT_COLLECTIONS,
    DEFAULT_COUNTS,
    DEFAULT_SCHEMA,
    MAX_COUNT,
    STATUS_FIELD,
    FieldSpec,
    Schema,
    Validator,
    count_change,
)
from caresync.records.values import JSONValue, canonical_json

__all__ = [
    "ACK_PREFIX",
    "ADDENDA_FIELD",
    "COUNT_CHANGE",
    "COUNT_TOTAL",
    "DEFAULT_COLLECTIONS",
    "DEFAULT_COUNTS",
    "DEFAULT_SCHEMA",
    "MAX_CLOCK_AHEAD_MS",
    "MAX_COUNT",
    "NOTES_COLLECTION",
    "SIGNATURE_FIELD",
    "STATUS_FIELD",
    "Admission",
    "AdmissionLimits",
    "CountState",
    "Entry",
    "FieldSpec",
    "FieldState",
    "HybridLogicalClock",
    "JSONValue",
    "Record",
    "Revision",
    "Schema",
    "Timestamp",
    "UpdateListener",
    "Validator",
    "canonical_json",
    "count_change",
    "new_entry_id",
    "new_record_id",
]
