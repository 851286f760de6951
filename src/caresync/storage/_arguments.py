"""The arguments of the store calls, checked once for both stores.

The SQLite store and its in-memory twin call these before they touch anything,
so a bad argument raises the same InvalidInputError, with the same message,
from either. Each function checks in the order its call's parameters come (the
first bad one is the one named). A call whose checks are one helper of
:mod:`caresync.storage.base` calls that helper itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from caresync.audit.chain import AuditEvent
from caresync.exceptions import InvalidInputError
from caresync.names import check_display_name, check_organisation, check_username, shown
from caresync.records.persons import PairState, PersonCard
from caresync.storage._audit import check_events
from caresync.storage._writes import Write, check_meta_key
from caresync.storage.base import (
    OUTBOX_SEQ_LIMIT,
    ConflictRow,
    HubMark,
    HubOutcome,
    IncomingUpdate,
    QuarantinedUpdate,
    RecordClient,
    SessionRow,
    check_bytes,
    check_client_claims,
    check_conflicts,
    check_count,
    check_hub_marks,
    check_optional_text,
    check_pair_state,
    check_person,
    check_quarantine,
    check_text,
    check_write_remote,
    import_conflicts,
    import_persons,
)
from caresync.storage.unsynced import ExportedUpdate

__all__ = [
    "RemoteBatch",
    "check_audit_append",
    "check_binding",
    "check_conflict_page",
    "check_enrolment",
    "check_feed_query",
    "check_hub_attempt",
    "check_hub_changes",
    "check_hub_due",
    "check_hub_outcome",
    "check_meta",
    "check_admin_flag",
    "check_new_user",
    "check_outbox_page",
    "check_pair_query",
    "check_password_change",
    "check_record_page",
    "check_renumbering",
    "check_secret_hash",
    "check_session",
    "check_user",
    "check_user_admin",
    "check_user_display_name",
    "check_write_local",
    "check_write_remote_call",
    "imported_writes",
]


def check_meta(key: object, value: object) -> None:
    """``set_meta``: a key the store does not keep for itself, and a string value."""
    check_meta_key(key)
    if not isinstance(value, str):
        raise InvalidInputError("meta values must be strings")


def check_write_local(
    record_id: object,
    update: object,
    conflicts: Sequence[ConflictRow] | None,
    organisation: object,
    person: object,
    audit: Sequence[AuditEvent],
) -> tuple[Write, tuple[AuditEvent, ...]]:
    """``write_local``: the edit as a checked write, and its audit events."""
    record = check_text(record_id, "record_id")
    events = check_events(audit)
    write = Write(
        record,
        check_bytes(update, "update"),
        None if conflicts is None else check_conflicts(record, conflicts),
        check_optional_text(organisation, "organisation"),
        check_person(record, person),
    )
    return write, events


class RemoteBatch(NamedTuple):
    """What ``write_remote`` was given, checked (unpack it)."""

    writes: list[IncomingUpdate]
    kept_aside: tuple[QuarantinedUpdate, ...]
    claims: dict[RecordClient, str]
    marks: dict[str, HubMark]


def check_write_remote_call(
    items: Sequence[IncomingUpdate],
    checkpoint: tuple[str, str] | None,
    to_feed: bool,
    origin: str | None,
    quarantine: object,
    claim_clients: object,
    hub: object,
) -> RemoteBatch:
    """``write_remote``: every argument, checked (the checkpoint's key last)."""
    writes = check_write_remote(items, checkpoint, to_feed, origin)
    kept_aside = check_quarantine(quarantine)
    claims = check_client_claims(claim_clients)
    marks = check_hub_marks(hub, to_feed)
    if checkpoint is not None:
        check_meta_key(checkpoint[0])
    return RemoteBatch(writes, kept_aside, claims, marks)


def check_hub_attempt(record_id: object, attempted_ms: object) -> None:
    """``record_hub_attempt``: a record id and a time."""
    check_text(record_id, "record_id")
    check_count(attempted_ms, "attempted_ms")


_MAX_INT64 = 2**63 - 1  # what an SQL integer column holds


def check_hub_changes(organisation: object, after: object, limit: object) -> None:
    """``hub_changes``: an organisation, a mark (from 0) and a limit (from 1), each within
    what an SQL integer holds (the stores read one row past the limit)."""
    check_text(organisation, "organisation")
    if check_count(after, "after") > _MAX_INT64:
        raise InvalidInputError(f"after must be at most {_MAX_INT64}, not {after!r}")
    if check_count(limit, "limit", minimum=1) > _MAX_INT64 - 1:
        raise InvalidInputError(f"limit must be at most {_MAX_INT64 - 1}, not {limit!r}")


def check_hub_due(
    now_ms: object, limit: object, after: object, held: object = True
) -> tuple[int, str] | None:
    """``hub_due``: a time, a limit (from 1), None or the (next_attempt_ms, record_id)
    of the last row of the page before, and a bool (held ones too); returns ``after``."""
    if type(held) is not bool:
        raise InvalidInputError(f"held must be a bool, not {held!r:.40}")
    if check_count(now_ms, "now_ms") > _MAX_INT64:
        raise InvalidInputError(f"now_ms must be at most {_MAX_INT64}, not {now_ms!r}")
    if check_count(limit, "limit", minimum=1) > _MAX_INT64:
        raise InvalidInputError(f"limit must be at most {_MAX_INT64}")
    if after is None:
        return None
    if type(after) is not tuple or len(after) != 2:
        raise InvalidInputError(
            f"after must be None or a (next_attempt_ms, record_id) tuple, not {after!r:.80}"
        )
    at, record_id = after
    if check_count(at, "after's next_attempt_ms") > _MAX_INT64:
        raise InvalidInputError(f"after's next_attempt_ms must be at most {_MAX_INT64}")
    # "" is before every record id: (t, "") starts at the rows due at t.
    if not isinstance(record_id, str) or len(record_id) > 2048:
        raise InvalidInputError(f"after's record_id must be a string, not {record_id!r:.80}")
    return at, record_id


def check_hub_outcome(record_id: object, version: object, outcome: object) -> None:
    """``record_hub_outcome``: a record id, a version (from 1) and a HubOutcome."""
    check_text(record_id, "record_id")
    check_count(version, "version", minimum=1)
    if not isinstance(outcome, HubOutcome):
        raise InvalidInputError(f"outcome must be a HubOutcome, not {type(outcome).__name__}")


def check_record_page(organisation: object, after: object, limit: object) -> int | None:
    """``record_ids``: whose records, after which id, how many; returns the limit."""
    check_optional_text(organisation, "organisation")
    check_optional_text(after, "after")
    return None if limit is None else check_count(limit, "limit")


def check_conflict_page(record_id: object, limit: object) -> int | None:
    """``conflicts``: of which record (or all), how many; returns the limit."""
    check_optional_text(record_id, "record_id")
    return None if limit is None else check_count(limit, "limit")


def check_pair_query(record_id: object, state: object, organisation: object) -> PairState | None:
    """``person_pairs``: which pairs; returns the state asked for, if any."""
    check_optional_text(record_id, "record_id")
    wanted = check_pair_state(state)
    check_optional_text(organisation, "organisation")
    return wanted


def check_outbox_page(limit: object, after_seq: object) -> None:
    """``pending``: how many, after which seq."""
    check_count(limit, "limit")
    check_count(after_seq, "after_seq")


def check_renumbering(above: object, checkpoint: tuple[str, str] | None) -> None:
    """``renumber_outbox``: a seq (at most :data:`OUTBOX_SEQ_LIMIT`: room left for
    the edits after it), and a checkpoint to set with it (or None)."""
    if check_count(above, "above") > OUTBOX_SEQ_LIMIT:
        raise InvalidInputError(
            f"above must be at most {OUTBOX_SEQ_LIMIT} (room for later edits), not {above}"
        )
    if checkpoint is not None:
        check_meta_key(checkpoint[0])
        check_text(checkpoint[1], "checkpoint value", max_length=4096)


def check_queue_again(items: object, checkpoint: tuple[str, str] | None) -> list[tuple[str, bytes]]:
    """``queue_again``: (record id, update) pairs, and a checkpoint to set with them."""
    if not isinstance(items, Sequence):
        raise InvalidInputError("items must be a sequence of (record_id, update) pairs")
    checked: list[tuple[str, bytes]] = []
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2:
            raise InvalidInputError("items must be (record_id, update) pairs")
        checked.append((check_text(item[0], "record_id"), check_bytes(item[1], "update")))
    check_renumbering(0, checkpoint)
    return checked


def check_feed_query(
    after_seq: object, limit: object, organisation: object, exclude_origin: object
) -> None:
    """``feed_since``: where to start, how many, whose records, whose updates to leave out."""
    check_count(after_seq, "after_seq")
    check_count(limit, "limit")
    check_optional_text(organisation, "organisation")
    if exclude_origin is not None:
        check_text(exclude_origin, "exclude_origin")


MAX_FEED_EPOCH = 2**63 - 1
"""The largest feed epoch id (a signed 64-bit integer in both databases)."""


def check_feed_epoch(epoch: object) -> int:
    """``begin_feed_epoch``: an epoch id, 1 to :data:`MAX_FEED_EPOCH`."""
    value = check_count(epoch, "epoch", minimum=1)
    if value > MAX_FEED_EPOCH:
        raise InvalidInputError(f"epoch must be at most {MAX_FEED_EPOCH}, got {value}")
    return value


def check_audit_append(events: Sequence[AuditEvent], replica_id: object) -> tuple[AuditEvent, ...]:
    """``append_audit``: the events, and the replica whose chain it is (or None)."""
    checked = check_events(events)
    if replica_id is not None:
        check_text(replica_id, "replica_id")
    return checked


def check_seen(seen: object) -> tuple[str, int] | None:
    """``append_audit``'s ``seen``: None, or (an enrolled replica's id, a time in ms)."""
    if seen is None:
        return None
    if not isinstance(seen, tuple) or len(seen) != 2:
        raise InvalidInputError("seen must be (replica_id, seen_ms) or None")
    replica_id, seen_ms = seen
    check_text(replica_id, "seen replica_id")
    return replica_id, check_count(seen_ms, "seen_ms")


def imported_writes(
    updates: Sequence[ExportedUpdate],
    conflicts: Mapping[str, Sequence[ConflictRow]] | None,
    persons: Mapping[str, PersonCard] | None,
) -> list[Write]:
    """``import_unsynced``: an export's updates as local writes, each record's last one
    carrying the conflict rows and person card given for it (checked)."""
    ids = [u.record_id for u in updates]
    rows_at = import_conflicts(ids, conflicts)
    cards_at = import_persons(ids, persons)
    return [
        Write(u.record_id, u.update, rows_at.get(i), u.organisation, cards_at.get(i))
        for i, u in enumerate(updates)
    ]


def check_new_user(
    organisation: object,
    username: object,
    password_hash: object,
    display_name: object,
    admin: object = False,
) -> None:
    """``add_user``: names as :mod:`caresync.names` allows them, a password hash, and
    the administrator flag (a bool)."""
    check_organisation(organisation)
    check_username(username)
    check_text(password_hash, "password_hash", max_length=4096)
    if display_name is not None:
        check_display_name(display_name)
    check_admin_flag(admin)


def check_admin_flag(admin: object) -> bool:
    """The administrator flag of an account: True or False, nothing else."""
    if not isinstance(admin, bool):
        raise InvalidInputError(f"admin must be True or False, not {shown(admin)}")
    return admin


def check_user_admin(organisation: object, username: object, admin: object) -> None:
    """``set_user_admin``: the account, and the flag."""
    check_user(organisation, username)
    check_admin_flag(admin)


def check_user(organisation: object, username: object) -> None:
    """An account named by its organisation and username."""
    check_text(organisation, "organisation")
    check_text(username, "username")


def check_password_change(organisation: object, username: object, password_hash: object) -> None:
    """``set_password_hash``: the account, and its new hash."""
    check_user(organisation, username)
    check_text(password_hash, "password_hash", max_length=4096)


def check_user_display_name(organisation: object, username: object, display_name: object) -> None:
    """``set_display_name``: the account, and its new display name (or None)."""
    check_user(organisation, username)
    if display_name is not None:
        check_display_name(display_name)


def check_enrolment(
    replica_id: object,
    organisation: object,
    enrolled_by: object,
    device_name: object,
    secret_hash: object,
) -> None:
    """``enrol_replica``: the replica, its organisation, and what is said of it."""
    check_text(replica_id, "replica_id")
    check_text(organisation, "organisation")
    check_optional_text(enrolled_by, "enrolled_by")
    check_optional_text(device_name, "device_name")
    check_optional_text(secret_hash, "secret_hash")


def check_secret_hash(replica_id: object, secret_hash: object) -> None:
    """``set_replica_secret_hash``: the replica, and the hash of its secret."""
    check_text(replica_id, "replica_id")
    check_text(secret_hash, "secret_hash")


def check_reissue(
    replica_id: object, organisation: object, enrolled_by: object, secret_hash: object
) -> None:
    """``reissue_replica_secret``: the replica, who may take it again, its new secret."""
    check_text(replica_id, "replica_id")
    check_text(organisation, "organisation")
    check_text(enrolled_by, "enrolled_by")
    check_text(secret_hash, "secret_hash")


def check_binding(token_hash: object, replica_id: object) -> None:
    """``bind_session``: the session's token hash, and the replica it enrolled."""
    check_text(token_hash, "token_hash")
    check_text(replica_id, "replica_id")


def check_session(session: object) -> SessionRow:
    """``add_session``: a SessionRow (its fields were checked when it was built)."""
    if not isinstance(session, SessionRow):
        raise InvalidInputError(f"a session must be a SessionRow, not {type(session).__name__}")
    return session


# Refusals that depend on what is stored: each store finds the case its own way, and
# raises the one error made here.


def user_exists(organisation: str, username: str) -> InvalidInputError:
    """``add_user`` of a name taken in that organisation."""
    return InvalidInputError(f"user {username!r} exists in {organisation!r}")


def no_user(organisation: str, username: str) -> InvalidInputError:
    """A change to an account the organisation does not have."""
    return InvalidInputError(f"no user {username!r} in {organisation!r}")


def enrolled_already(replica_id: str) -> InvalidInputError:
    """``enrol_replica`` of a replica id known here."""
    return InvalidInputError(f"replica {replica_id!r} is enrolled already")


def not_enrolled(replica_id: str) -> InvalidInputError:
    """A change to a replica that is not enrolled here."""
    return InvalidInputError(f"no replica {replica_id!r} is enrolled here")


def secret_refused(replica_id: str) -> InvalidInputError:
    """``set_replica_secret_hash`` of an unknown replica, or of one with a secret."""
    return InvalidInputError(
        f"replica {replica_id!r} is not enrolled here, or has a secret already"
    )


def session_stored() -> InvalidInputError:
    """``add_session`` of a token hash stored already."""
    return InvalidInputError("that session token is stored already")


def no_unbound_session() -> InvalidInputError:
    """``bind_session`` of a token that is unknown or bound already."""
    return InvalidInputError("no unbound session with that token")


def beyond_outbox(up_to_seq: int, head: int) -> InvalidInputError:
    """``acknowledge`` of a seq this replica never gave out."""
    return InvalidInputError(
        f"cannot acknowledge up to {up_to_seq}: this replica's outbox has only reached {head}"
    )
