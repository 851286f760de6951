"""The cost passwords are hashed at: argon2id's recommended one, outside this suite.

The suite hashes at argon2id's lowest cost in its own process (``tests/conftest.py``);
this test, marked to keep the library's default, proves that default is what servers
and laptops use when nobody says otherwise.
"""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

import caresync.replica
from caresync.server import hash_password

RECOMMENDED = "$argon2id$v=19$m=65536,t=3,p=4$"
"""RFC 9106's second recommended setting: 3 passes over 64 MiB, 4 lanes."""


@pytest.mark.real_password_cost
def test_servers_and_laptops_hash_at_the_recommended_cost_by_default() -> None:
    assert hash_password("a long passphrase").startswith(RECOMMENDED)
    assert caresync.replica._hasher.hash("a long passphrase").startswith(RECOMMENDED)


def test_this_suite_hashes_cheaply_elsewhere() -> None:
    cheap = hash_password("a long passphrase")
    assert not cheap.startswith(RECOMMENDED)
    assert PasswordHasher().verify(cheap, "a long passphrase")  # the cost is in the hash
