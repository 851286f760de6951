"""Identifiers that every replica computes alike from the same document state."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable

__all__ = ["conflict_id_for", "finding_id_for", "new_entry_id", "new_record_id", "new_revision_id"]


def new_record_id() -> str:
    """A fresh record id (a UUID4 string)."""
    return str(uuid.uuid4())


def new_entry_id() -> str:
    """A fresh, stable id for a collection entry."""
    return uuid.uuid4().hex


def new_revision_id() -> str:
    """A fresh revision id: 64 random bits, hex."""
    return os.urandom(8).hex()


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()[:20]


def conflict_id_for(record_id: str, path: str, head_ids: Iterable[str]) -> str:
    """The id of the conflict formed by these heads of ``path``: the same everywhere."""
    return "c-" + _digest(record_id, path, *sorted(head_ids))


def finding_id_for(record_id: str, rule: str, key: str, revision_ids: Iterable[str]) -> str:
    """The id of a safety-rule finding over these revisions: the same everywhere."""
    return "f-" + _digest(record_id, rule, key, *sorted(revision_ids))
