"""A resumed login's reads (:meth:`~caresync.storage.ServerStore.read_resume`): the
arguments checked, and the reads one by one for a store that has no cheaper way."""

from __future__ import annotations

from collections.abc import Sequence

from caresync.exceptions import InvalidInputError
from caresync.storage.base import ResumeReads, ServerStore, check_text

__all__ = ["check_resume_query", "read_resume_one_by_one"]


def check_resume_query(
    token_hash: object, replica_id: object, meta_keys: object
) -> tuple[str, str, tuple[str, ...]]:
    """The arguments of ``read_resume``, checked (InvalidInputError names the bad one)."""
    if not isinstance(meta_keys, (list, tuple)):
        raise InvalidInputError(
            f"meta_keys must be a list or tuple of meta keys, not {meta_keys!r:.80}"
        )
    keys = tuple(meta_keys)
    return (
        check_text(token_hash, "token_hash"),
        check_text(replica_id, "replica_id"),
        tuple(check_text(key, "meta key") for key in keys),
    )


async def read_resume_one_by_one(
    store: ServerStore, token_hash: str, replica_id: str, meta_keys: Sequence[str]
) -> ResumeReads:
    """:class:`ResumeReads` from the store's single reads, one after another."""
    token_hash, replica_id, keys = check_resume_query(token_hash, replica_id, meta_keys)
    session = await store.get_session(token_hash)
    account = accounts = standings = None
    if session is not None:
        account = await store.get_user(session.organisation, session.username)
        standings = await store.account_standings(session.organisation)
        accounts = {user: standing.display_name for user, standing in standings.items()}
    return ResumeReads(
        session=session,
        replica=await store.get_replica(replica_id),
        secret_hash=await store.replica_secret_hash(replica_id),
        account=account,
        accounts=accounts,
        audit_tail=await store.audit_tail(replica_id),
        meta={key: await store.get_meta(key) for key in keys},
        standings=standings,
    )
