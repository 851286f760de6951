"""The pytest plugin of caresync (entry point ``pytest11: caresync``): fixtures, nothing heavy.

pytest loads this module wherever caresync is installed. It holds only the
fixtures ``clinic``, ``clinic_factory``, ``caresync_rulebook`` and
``caresync_transport``, the check that pytest-asyncio runs them, and the options
``--caresync-substances`` and ``--caresync-transport``; the harness,
the server, the replica and websockets are imported when a test asks for a
fixture, so every pytest run stays as fast as without caresync. Switch it off
with ``pytest -p no:caresync``. See docs/testing.md.
"""

from __future__ import annotations

import pytest

from caresync.testing.fixtures import (
    ClinicFactory,
    caresync_asyncio,
    caresync_rulebook,
    caresync_transport,
    clinic,
    clinic_factory,
    pytest_addoption,
)

# The conformance suites are test code that ships in the package: their asserts are the
# checks an adapter's tests run. Rewritten by pytest, they say what differed, and they
# hold under ``python -O`` too (a bare assert would vanish there and pass everything).
pytest.register_assert_rewrite("caresync.testing.store_suite", "caresync.testing.channel_suite")

__all__ = [
    "ClinicFactory",
    "caresync_asyncio",
    "caresync_rulebook",
    "caresync_transport",
    "clinic",
    "clinic_factory",
    "pytest_addoption",
]
