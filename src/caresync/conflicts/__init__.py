"""Conflicts and clinical safety rules, derived from a record's state alone (pure)."""

from caresync.conflicts.builtin import (
    ENTERED_IN_ERROR,
    INACTIVE_ALLERGY_STATUSES,
    INACTIVE_MEDICATION_STATUSES,
    TERMINAL_ENCOUNTER_STATUSES,
    Rule,
    allergy_versus_prescription,
    builtin_rules,
    duplicate_allergy,
    entered_in_error_versus_edit,
    note_changed_while_signed,
    stopped_versus_dose_change,
    terminal_encounter_clash,
)
from caresync.conflicts.describe import Readable, describe_entry, describe_path
from caresync.conflicts.duplicates import linked_group, pair_conflicts, paired_record
from caresync.conflicts.fingerprint import (
    DERIVATION_VERSION,
    FINGERPRINT_FORMAT,
    rule_fingerprint,
    versioned,
)
from caresync.conflicts.model import (
    Candidate,
    Conflict,
    ConflictKind,
    Finding,
    Outcome,
    Severity,
)
from caresync.conflicts.rulebook import DEFAULT_RULEBOOK, Rulebook
from caresync.conflicts.substances import (
    DEFAULT_SUBSTANCES,
    Match,
    MatchKind,
    Reading,
    SubstanceTable,
)
from caresync.conflicts.view import RecordView

__all__ = [
    "describe_entry",
    "describe_path",
    "DEFAULT_RULEBOOK",
    "DEFAULT_SUBSTANCES",
    "DERIVATION_VERSION",
    "ENTERED_IN_ERROR",
    "FINGERPRINT_FORMAT",
    "INACTIVE_ALLERGY_STATUSES",
    "INACTIVE_MEDICATION_STATUSES",
    "TERMINAL_ENCOUNTER_STATUSES",
    "Candidate",
    "Conflict",
    "ConflictKind",
    "Finding",
    "Outcome",
    "Match",
    "MatchKind",
    "Reading",
    "Readable",
    "RecordView",
    "Rule",
    "Rulebook",
    "Severity",
    "SubstanceTable",
    "allergy_versus_prescription",
    "builtin_rules",
    "duplicate_allergy",
    "entered_in_error_versus_edit",
    "linked_group",
    "note_changed_while_signed",
    "pair_conflicts",
    "paired_record",
    "rule_fingerprint",
    "stopped_versus_dose_change",
    "terminal_encounter_clash",
    "versioned",
]
