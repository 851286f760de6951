"""Helpers for the store tests: records whose every write's update bytes are captured.

Most live in :mod:`caresync.testing.store_data`, shared with the exported conformance suite.
"""

from __future__ import annotations

from pathlib import Path

from caresync.testing.store_data import (
    FakeClock,
    Patient,
    conflict,
    digest,
    revision_ids,
    same_vector,
)

__all__ = ["FakeClock", "Patient", "conflict", "digest", "revision_ids", "same_vector", "snapshot"]


def snapshot(directory: Path) -> dict[str, str]:
    """Every file in a directory and its digest."""
    return {p.name: digest(p) for p in sorted(directory.iterdir()) if p.is_file()}
