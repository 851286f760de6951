"""Every key a replica keeps in its store's meta table, in one place.

Meta is a small key → text table beside the records (``Store.get_meta`` /
``set_meta``; a write may also travel with a batch as its ``checkpoint``).
Keys are part of the database format: renaming one is a migration. Laptop
and server keys share one namespace, so they are listed together here, each
with what it holds; the modules that own them import them from here.
"""

from __future__ import annotations

from caresync.storage.base import ReplicaStore

__all__ = [
    "ACCOUNT_NAMES",
    "ACCOUNT_MARKS",
    "ACKED",
    "AUDIT_REFUSED",
    "AUDIT_SENT",
    "CHECKPOINT",
    "CLIENT_MIN",
    "CLIENT_NEWEST",
    "COPY_CHECKPOINT",
    "COPY_DONE_MS",
    "COPY_RESUME",
    "CURRENT_LOGIN",
    "HUB_MARK",
    "HUB_REPORT",
    "KNOWN_KEYS",
    "INDEX_RULEBOOK",
    "KnownMeta",
    "LAST_SYNC_MS",
    "LIVE_CLI",
    "LOCKED",
    "OFFLINE_FAILURES",
    "OFFLINE_LOGIN_PREFIX",
    "PINNED_KEY",
    "PULL_OWN",
    "PUSHED_PREFIX",
    "SECRET",
    "SERVER_KEY",
    "SERVER_PROTOCOL",
    "SESSION_TOKEN",
    "SESSION_USER",
    "LAST_SYNC_SAVE_MS",
    "note_last_sync",
    "write_if_changed",
]

# --- a laptop's sync state
CHECKPOINT = "sync.checkpoint"
"""How far the server's change feed was read (a feed seq)."""
LAST_SYNC_MS = "sync.last_ms"
"""Wall time (ms) of the last completed round or live session."""
COPY_RESUME = "copy.resume"
"""The last record id the first copy committed: where an interrupted copy resumes."""
COPY_CHECKPOINT = "copy.checkpoint"
"""The server's feed head when the first copy started: where pulling begins after it."""
COPY_DONE_MS = "copy.done_ms"
"""Wall time (ms) the first copy finished; absent until then."""
PULL_OWN = "pull.include_own"
""""1" after a restore from an older copy: pull this replica's own updates back too."""
ACKED = "sync.acked"
"""The highest outbox seq the server acknowledged (its mark of this replica's pushes as
this laptop last heard it): a server that says less at a login lost acknowledged pushes."""

# --- a laptop's credentials and its server
SESSION_TOKEN = "session.token"
"""The session token of the last online login (resumed by later syncs)."""
SESSION_USER = "session.user"
"""The account that session belongs to."""
SECRET = "replica.secret"
"""Base64: the secret this replica proves at every login."""
ENROLLING = "replica.enrolling"
"""The account that asked the server to enrol this laptop (or enrol it again), written
once its login was accepted and before Enrol goes, until the binding (or, enrolled again,
the new secret) is stored: a server that knows the id meanwhile took that enrolment and
lost its answer on the way, and gives that account a new secret for it. "" (or absent):
none waits. Dropped too at a login as this laptop with its secret, and when the server
gives the id to no one (used or revoked): a stale note would make ``enrol_again`` skip
its probe."""
PINNED_KEY = "server.pinned_key"
"""Base64: the server's public key, pinned at enrolment."""
LOCKED = "replica.locked"
"""Why the server revoked this replica; set once, kept."""
SERVER_PROTOCOL = "server.protocol"
"""The protocol version the server chose at the last connection: the next sends its
proof request with Hello, written in that version (one round trip less)."""
CLIENT_NEWEST = "server.client_newest"
"""The newest caresync version the server knows of."""
CLIENT_MIN = "server.client_min"
"""The oldest caresync version the server accepts ("" when it asks for none)."""
AUDIT_SENT = "audit.sent_up_to"
"""The last entry of this laptop's audit chain the server acknowledged."""
AUDIT_REFUSED = "audit.refused"
"""Why the server last refused this laptop's audit entries ("" once accepted)."""
HUB_REPORT = "hub.report"
"""What the server last said of the health-hub summaries (JSON)."""
HUB_MARK = "hub.mark"
"""The server's hub mark of that report (protocol version 13 on; "0": none): the next
pull names it, and gets only the summaries changed since."""
LIVE_CLI = "cli.live"
"""What a running ``caresync sync --live`` reports about itself (JSON)."""

# --- who is logged in on a laptop (caresync.logins)
OFFLINE_LOGIN_PREFIX = "login.offline:"
"""+ username: the argon2id hash of that account's password, for offline login."""
OFFLINE_FAILURES = "login.offline.failures"
""""COUNT:LOCKED_UNTIL_MS": offline logins failed in a row, and the lock."""
CURRENT_LOGIN = "login.current"
"""JSON {"user", "since_ms", "active_ms"}: who is logged in."""
ACCOUNT_NAMES = "accounts.names"
"""JSON {username: display name}, from the server."""
ACCOUNT_MARKS = "accounts.marks"
"""JSON {username: {"mark": hex, "ended": why}} for every account that logged in online
on this laptop: ``mark``, the password mark the server gave at their last online login
here ("" when not told: a server before protocol version 16); ``ended``, why the laptop
ended their offline logins on the server's word ("" none, "disabled", "password", or
"enabled": disabled, then enabled again). Absent until the first login on a server of
version 16 on, which takes every account holding an offline login then."""

# --- a server
SERVER_KEY = "server.key"
"""The server's Ed25519 private key (it proves itself to laptops with it)."""
PUSHED_PREFIX = "pushed:"
"""+ replica id: the highest outbox seq of that replica the server committed."""

# --- every replica
INDEX_RULEBOOK = "index.rulebook"
"""The fingerprint of the rulebook that computed the stored conflict rows."""


# --- writing without a needless commit: a sync with nothing to do commits nothing

LAST_SYNC_SAVE_MS = 60_000
"""How old the stored time of the last sync may grow before a sync rewrites it.

A laptop in step syncs often with nothing to do; rewriting the time on each
would make every such sync a commit (an fsync). The replica keeps the exact
time in memory (what ``Replica.status`` shows); after a restart the stored one
is at most this much older than the truth."""


async def write_if_changed(store: ReplicaStore | KnownMeta, key: str, value: str) -> bool:
    """Write ``key`` only if it holds something else; True when written."""
    if await store.get_meta(key) == value:
        return False
    await store.set_meta(key, value)
    return True


async def note_last_sync(store: ReplicaStore | KnownMeta, now_ms: int) -> None:
    """Store the time of the last sync if the stored one is :data:`LAST_SYNC_SAVE_MS` old."""
    stored = await store.get_meta(LAST_SYNC_MS)
    if stored is not None and stored.isdigit() and 0 <= now_ms - int(stored) < LAST_SYNC_SAVE_MS:
        return
    await store.set_meta(LAST_SYNC_MS, str(now_ms))


KNOWN_KEYS = frozenset(
    {
        CLIENT_NEWEST,
        CLIENT_MIN,
        COPY_DONE_MS,
        ENROLLING,
        HUB_MARK,
        HUB_REPORT,
        LAST_SYNC_MS,
        SERVER_PROTOCOL,
        SESSION_TOKEN,
    }
)
"""Keys only a laptop's syncs write: notes whose stale copy does no harm, the
session token (read at every sync; written only by an online login, through
:class:`KnownMeta`), and the note of an enrolment waiting for its answer (read at
every login as this laptop, written by enrolments and that login, through
:class:`KnownMeta`)."""


class KnownMeta:
    """The :data:`KNOWN_KEYS` as this process last read or wrote them, so that a sync
    with nothing to do does not read them again (each read is a trip to the store's
    thread, on the way of every sync).

    A laptop's database is locked by the replica that opened it, so nothing else
    writes these keys meanwhile; were one written behind its back (``store.set_meta``
    on the replica's own store), the replica would keep what it knew until it writes
    the key again: none of them says where the feed was read to, or what waits (a
    stale session token would be refused by the server, and a password login writes
    a new one). An absent key is read again each time.
    """

    __slots__ = ("_known", "_store")

    def __init__(self, store: ReplicaStore) -> None:
        self._store = store
        self._known: dict[str, str] = {}

    async def get_meta(self, key: str) -> str | None:
        """The key's value, read from the store only the first time it is found there."""
        if key not in KNOWN_KEYS:
            raise ValueError(f"{key!r} is not a key KnownMeta may keep")
        value = self._known.get(key)
        if value is None:
            value = await self._store.get_meta(key)
            if value is not None:
                self._known[key] = value
        return value

    async def set_meta(self, key: str, value: str) -> None:
        """Store the key's value (committed), then remember it."""
        if key not in KNOWN_KEYS:
            raise ValueError(f"{key!r} is not a key KnownMeta may keep")
        self._known.pop(key, None)  # unknown until committed: a failed write is read again
        await self._store.set_meta(key, value)
        self._known[key] = value
