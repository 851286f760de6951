"""The pytest plugin of caresync (entry point ``pytest11: caresync``): two fixtures, nothing heavy.

pytest loads this module wherever caresync is installed. It holds only the
fixtures ``clinic`` and ``clinic_factory`` (and the check that pytest-asyncio
runs them); the harness, the server, the replica and websockets are imported
when a test asks for a fixture, so every pytest run stays as fast as without
caresync. Switch it off with ``pytest -p no:caresync``. See docs/testing.md.
"""

from __future__ import annotations

from caresync.testing.fixtures import ClinicFactory, caresync_asyncio, clinic, clinic_factory

__all__ = ["ClinicFactory", "caresync_asyncio", "clinic", "clinic_factory"]
