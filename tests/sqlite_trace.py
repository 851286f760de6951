"""What an SQLite store's connection runs, from SQLite's own trace: to count transactions.

A call that must be one transaction is checked by the write transactions
(``BEGIN IMMEDIATE`` ... ``COMMIT``) it made and the statements inside each.
Read snapshots (a plain ``BEGIN``) are not writes and are left out.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from caresync.storage import SQLiteStore

__all__ = ["traced", "write_transactions"]


@asynccontextmanager
async def traced(store: SQLiteStore) -> AsyncIterator[list[str]]:
    """The statements the store's connection runs meanwhile (traced on its own thread)."""
    statements: list[str] = []

    def install(callback: Callable[[str], object] | None) -> Callable[[sqlite3.Connection], None]:
        return lambda raw: raw.set_trace_callback(callback)

    await store._run("tracing", install(statements.append))
    try:
        yield statements
    finally:
        await store._run("tracing", install(None))


def write_transactions(statements: list[str]) -> list[list[str]]:
    """The statements of each committed write transaction, in order."""
    done: list[list[str]] = []
    current: list[str] | None = None
    for statement in statements:
        word = " ".join(statement.split()).upper()
        if word == "BEGIN IMMEDIATE":
            current = []
        elif word == "COMMIT" and current is not None:
            done.append(current)
            current = None
        elif current is not None:
            current.append(statement)
    return done
