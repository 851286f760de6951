"""The audit trail: who read or changed which patient record, when and where.

Pure parts: :mod:`caresync.audit.chain` (entries and their hash chain) and
:mod:`caresync.audit.fhir_events` (entries as FHIR AuditEvent resources, one per
line). Stores keep the chains (``Store.append_audit``, ``Store.audit_entries``);
replicas write an entry in the same transaction as what it records.
"""

from caresync.audit.chain import (
    ACTIONS,
    ANONYMOUS,
    GENESIS,
    SERVER_ACTIONS,
    AuditAction,
    AuditEntry,
    AuditEvent,
    ChainVerdict,
    TrailVerdict,
    attempted_name,
    check_entry,
    link,
    verify_chain,
    verify_trail,
)

__all__ = [
    "ACTIONS",
    "SERVER_ACTIONS",
    "ANONYMOUS",
    "GENESIS",
    "AuditAction",
    "AuditEntry",
    "AuditEvent",
    "ChainVerdict",
    "TrailVerdict",
    "attempted_name",
    "check_entry",
    "link",
    "verify_chain",
    "verify_trail",
]
