"""The PostgreSQL store, composed of its parts (one module per role)."""

from __future__ import annotations

from collections.abc import Sequence

from caresync.records.persons import PairState
from caresync.storage._resume import read_resume_one_by_one
from caresync.storage.base import OpenCounts, ResumeReads
from caresync.storage.postgres.accounts import AccountsPart
from caresync.storage.postgres.audit import AuditPart
from caresync.storage.postgres.feed import FeedPart
from caresync.storage.postgres.hub import HubPart
from caresync.storage.postgres.logins import LoginFailuresPart
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
    LoginFailuresPart,
    SharedPart,
):
    """A clinic server's records, change feed and accounts in a PostgreSQL database.

    Open it with :meth:`open`; it satisfies :class:`~caresync.storage.base.ServerStore`
    (and nothing of :class:`~caresync.storage.base.LaptopStore`: a laptop keeps SQLite).
    Each part is a mixin on :class:`~caresync.storage.postgres.core.PostgresCore`.
    """

    async def read_resume(
        self, token_hash: str, replica_id: str, *, meta_keys: Sequence[str] = ()
    ) -> ResumeReads:
        """A resumed login's reads (:class:`~caresync.storage.ResumeReads`), one by one
        (each its own trip to the database)."""
        return await read_resume_one_by_one(self, token_hash, replica_id, meta_keys)

    async def open_counts(self) -> OpenCounts:
        """The open conflict rows, the stored pairs and the linked pairs (three counts)."""
        return OpenCounts(
            await self.count_conflicts(),
            await self.count_person_pairs(),
            await self.count_person_pairs(PairState.LINKED),
        )
