"""PostgreSQL for the tests that need it: one database of their own per test session.

The server is found at ``CARESYNC_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/test``); the session creates a database
with a random name there and drops it at the end. Each test gets a schema of its
own in it (:func:`fresh_schema`), dropped after the test. Without a reachable
server the tests skip, saying why, unless ``CARESYNC_REQUIRE_POSTGRES=1`` (CI):
then they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def server_url() -> str:
    """Where the tests' PostgreSQL server is."""
    return os.environ.get("CARESYNC_TEST_POSTGRES") or DEFAULT_URL


def _unavailable(reason: str) -> None:
    if os.environ.get("CARESYNC_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{reason} (CARESYNC_REQUIRE_POSTGRES=1 requires it)")
    pytest.skip(reason)


def with_database(url: str, name: str) -> str:
    """``url`` naming the database ``name`` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def with_schema(url: str, schema: str) -> str:
    """``url`` with caresync's tables in ``schema`` (libpq's ``options`` parameter)."""
    joiner = "&" if urlsplit(url).query else "?"
    return f"{url}{joiner}options=-csearch_path%3D{schema}"


def session_database() -> Iterator[str]:
    """Create a database of this session's own; yield its URL; drop it at the end."""
    url = server_url()
    try:
        admin = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        why = " ".join(str(exc).split())
        _unavailable(f"no PostgreSQL at {url} ({why}); set CARESYNC_TEST_POSTGRES")
        raise AssertionError("unreachable") from exc
    name = f"caresync_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield with_database(url, name)
        finally:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@asynccontextmanager
async def fresh_schema(database_url: str) -> AsyncIterator[str]:
    """A new, empty schema in the session's database; yields a URL that uses it."""
    schema = f"t_{secrets.token_hex(6)}"
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            yield with_schema(database_url, schema)
        finally:
            await admin.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )


@contextmanager
def fresh_schema_sync(database_url: str) -> Iterator[str]:
    """:func:`fresh_schema`, for a synchronous fixture."""
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            yield with_schema(database_url, schema)
        finally:
            admin.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )
