"""The PostgreSQL store, composed of its parts (one module per role)."""

from __future__ import annotations

from caresync.storage.postgres.accounts import AccountsPart
from caresync.storage.postgres.audit import AuditPart
from caresync.storage.postgres.feed import FeedPart
from caresync.storage.postgres.hub import HubPart
from caresync.storage.postgres.maintenance import MaintenancePart
from caresync.storage.postgres.meta import MetaPart
from caresync.storage.postgres.reading import ReadingPart
from caresync.storage.postgres.sessions import SessionsPart
from caresync.storage.postgres.shared import SharedPart
from caresync.storage.postgres.writes import RecordWritesPart

__all__ = ["PostgresStore"]


class PostgresStore(
    MetaPart,
    ReadingPart,
    RecordWritesPart,
    FeedPart,
    HubPart,
    AuditPart,
    MaintenancePart,
    AccountsPart,
    SessionsPart,
    SharedPart,
):
    """A clinic server's records, change feed and accounts in a PostgreSQL database.

    Open it with :meth:`open`; it satisfies :class:`~caresync.storage.base.ServerStore`
    (and nothing of :class:`~caresync.storage.base.LaptopStore`: a laptop keeps SQLite).
    Each part is a mixin on :class:`~caresync.storage.postgres.core.PostgresCore`.
    """
