"""Test configuration shared by the whole suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from argon2 import PasswordHasher
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "dev", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "soak", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """The URL of a PostgreSQL database of this test session's own (see tests/postgres.py)."""
    from tests.postgres import session_database

    yield from session_database()


CHEAP_PASSWORDS = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
"""argon2id at its lowest cost: what this suite's in-process servers and laptops hash
passwords with unless a test says otherwise."""


@pytest.fixture(autouse=True)
def _cheap_password_hashing(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hash passwords at argon2id's lowest cost in this process, as Django's test settings
    do with a fast hasher: the library's default (3 passes over 64 MiB) took a third to
    half of a second per hash or check on this suite's busy 2-core machine, over a
    thousand times in the end-to-end tests alone. Verifying reads the cost from the hash,
    so every path is the one production runs, only cheaper. Servers and laptops in
    subprocesses keep the real cost, and a test marked ``real_password_cost`` does too.
    """
    if request.node.get_closest_marker("real_password_cost") is not None:
        return
    import caresync.replica
    import caresync.server

    monkeypatch.setattr(caresync.server, "_hasher", CHEAP_PASSWORDS)
    monkeypatch.setattr(caresync.replica, "_hasher", CHEAP_PASSWORDS)
