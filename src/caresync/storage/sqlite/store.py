"""The SQLite store, composed of its parts (one module per role)."""

from __future__ import annotations

from caresync.storage.sqlite.accounts import AccountsPart
from caresync.storage.sqlite.audit import AuditPart
from caresync.storage.sqlite.feed import FeedPart
from caresync.storage.sqlite.hub import HubPart
from caresync.storage.sqlite.logins import LoginsPart
from caresync.storage.sqlite.maintenance import MaintenancePart
from caresync.storage.sqlite.meta import MetaPart
from caresync.storage.sqlite.reading import ReadingPart
from caresync.storage.sqlite.sessions import SessionsPart
from caresync.storage.sqlite.unsynced_work import UnsyncedPart

__all__ = ["SQLiteStore"]


class SQLiteStore(
    MetaPart,
    ReadingPart,
    UnsyncedPart,  # with the outbox and the record writes it builds on
    FeedPart,
    HubPart,
    AuditPart,
    MaintenancePart,
    AccountsPart,
    SessionsPart,
    LoginsPart,
):
    """A replica's records, outbox, change feed and accounts in one SQLite file.

    Open it with :meth:`open`; it satisfies :class:`~caresync.storage.base.Store`.
    Each part is a mixin on :class:`~caresync.storage.sqlite.core.SQLiteCore` (the
    connection, its thread and its transactions), so a call is a plain method call.
    """
