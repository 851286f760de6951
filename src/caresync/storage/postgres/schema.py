"""The PostgreSQL schema of a caresync server, version by version.

A caresync PostgreSQL schema is recognised by its ``caresync_schema`` table:
one row holding the format mark (``caresync-server``) and the schema version.
Each version's statements are frozen once released: a schema at version N is
brought to :data:`SCHEMA_VERSION` by running the steps N+1..latest in one
transaction (see :mod:`.migrations`).

Version 1 is what the SQLite store's version 10 holds for a server, in
PostgreSQL's types (bytes as ``bytea``, times as ``bigint`` milliseconds, text
sorted by code point, ``COLLATE "C"``, as Python and SQLite sort it)::

    caresync_schema (singleton PK, format, version)     the marks, one row
    meta         (key PK, value)                         settings, checkpoints
    identity     (singleton PK, replica_id, role, server_id, server_url, organisation)
    records      (record_id PK, rk identity UNIQUE, organisation, state_vector, pending,
                  log_count, log_bytes, feed_folded, created_ms, updated_ms)
    states       (record_id PK, state)                  the compacted state
    log          (id identity PK, rk, data, created_ms) updates written outside the feed
    feed         (seq PK, rk, organisation, origin, data)  the change feed
    conflicts    (record_id, id) PK, kind, subject, severity, payload
    users, replicas, replica_accounts, sessions         accounts and who may sync
    quarantine   (id identity PK, record_id, data, reason, received_ms)
    yjs_clients  (client PK, replica_id)                 (no longer written from version 7)
    person_cards, person_keys, person_pairs             the person index
    audit_trail  (replica_id, line, seq) PK ...         append-only (triggers refuse
                                                         UPDATE and DELETE)
    hub_outbox   (record_id PK, ...)                    the health-hub outbox

Version 2 gave accounts an administrator role (the SQLite store's version 11)::

    users      + admin boolean NOT NULL DEFAULT false

Version 3 numbers the changes of the health-hub outbox (the SQLite store's version 13)::

    hub_outbox  + change bigint       the hub mark of the row's last change
                index hub_outbox_by_change (organisation, change)
    hub_removed (organisation, record_id) PK, version, change   tombstones
                index hub_removed_by_change (organisation, change)
    hub_mark    (singleton PK, n)     the last hub mark given out

    A transaction that changes the outbox first locks the ``hub_mark`` row (an
    UPDATE, or SELECT ... FOR UPDATE), and holds it until it commits: hub marks are
    given in commit order, whatever the number of processes writing, so a reader
    never passes a mark whose change commits later.

Version 4 indexes the hub outbox by state (the SQLite store's version 14)::

    hub_outbox  index hub_outbox_due (state, next_attempt_ms, record_id)
                the sender's due rows in pages, the next retry, the counts per state

Version 5 names each server process's stretch of the change feed (the SQLite store's
version 19)::

    feed_epochs (first_seq PK, epoch)   a random id for the feed numbers from first_seq on

Version 6 counts failed logins for every server process on the database (no SQLite
counterpart: one process serves an SQLite database, and keeps them in memory)::

    login_failures (key PK, free, failures, last_ms, locked_until_ms)
                index login_failures_by_last (last_ms)
    one row per throttle key (caresync.throttle.key_text: an account or an address);
    ``free`` the failures it may make before its first lock, times in wall-clock
    milliseconds. A failure is one INSERT ... ON CONFLICT DO UPDATE that computes the
    count and the lock in SQL (row-locked: two processes failing at once both count);
    idle rows are deleted a few at a time by the index, and at most max_tracked kept.

Version 7 gives each account a password mark (the SQLite store's version 20; protocol
version 16)::

    users      + password_mark bytea   16 random bytes, new whenever the password is set

    The step gives every existing account a random mark (``gen_random_uuid()``,
    built in from PostgreSQL 13: 122 random bits).

Version 8 binds Yjs client ids per record (the SQLite store's version 21)::

    record_clients (record_id, client) PK, replica_id
                   which replica first wrote under each client id in each record

    ``yjs_clients`` is kept and no longer written: its rows still bind a client in a
    record whose stored state vector lists it, and say nothing of a record that holds
    none of its ops (see ``ServerStore.client_owners``).

As in SQLite, an update written into the feed is stored once, as a feed row: a
record is its state, its log rows and its feed rows after ``feed_folded``.

Feed numbers are given by the writer, ``MAX(seq) + 1``, while it holds the
feed lock (a transaction-scoped advisory lock, :data:`FEED_LOCK`): the lock is
held until commit, so feed order is commit order, with no gaps, whatever the
number of processes writing (see docs/storage.md).
"""

from __future__ import annotations

__all__ = [
    "FEED_CHANNEL",
    "FEED_LOCK",
    "FORMAT_VALUE",
    "MIGRATION_LOCK",
    "PUSH_LOCK",
    "SCHEMA_STEPS",
    "SCHEMA_VERSION",
]

FORMAT_VALUE = "caresync-server"
"""The format mark in ``caresync_schema``."""

FEED_LOCK = 0x63727379_0001
"""The advisory lock every transaction that writes records holds until it commits."""

MIGRATION_LOCK = 0x63727379_0002
"""The advisory lock a process holds while it recognises, creates or migrates the schema."""

PUSH_LOCK = 0x63727379_0003
"""The session advisory lock a server holds from reading a push's records to its commit
(``exclusive_commits``), on a connection of its own."""

HUB_SENDING_LOCK = 0x63727379
"""The first key of the session advisory locks (two-key form: this, then ``hashtext`` of
the record id) a hub sender holds while it sends one record's summary (``hub_sending``),
on a connection of its own."""

FEED_CHANNEL = "caresync_feed"
"""The LISTEN/NOTIFY channel: a feed write notifies it with its new head seq, in its
transaction (delivered once committed)."""

_V1 = (
    """CREATE TABLE caresync_schema (
        singleton integer PRIMARY KEY CHECK (singleton = 1),
        format text COLLATE "C" NOT NULL,
        version integer NOT NULL
    )""",
    'CREATE TABLE meta (key text COLLATE "C" PRIMARY KEY, value text NOT NULL)',
    """CREATE TABLE identity (
        singleton integer PRIMARY KEY CHECK (singleton = 1),
        replica_id text COLLATE "C" NOT NULL,
        role text COLLATE "C" NOT NULL CHECK (role IN ('laptop', 'server')),
        server_id text COLLATE "C",
        server_url text COLLATE "C",
        organisation text COLLATE "C"
    )""",
    """CREATE TABLE records (
        record_id text COLLATE "C" PRIMARY KEY,
        rk bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
        organisation text COLLATE "C",
        state_vector bytea NOT NULL,
        pending boolean NOT NULL DEFAULT false,
        log_count integer NOT NULL DEFAULT 0,
        log_bytes bigint NOT NULL DEFAULT 0,
        feed_folded bigint NOT NULL DEFAULT 0,
        created_ms bigint NOT NULL,
        updated_ms bigint NOT NULL
    )""",
    "CREATE INDEX records_by_organisation ON records (organisation, record_id)",
    'CREATE TABLE states (record_id text COLLATE "C" PRIMARY KEY, state bytea NOT NULL)',
    """CREATE TABLE log (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        rk bigint NOT NULL,
        data bytea NOT NULL,
        created_ms bigint NOT NULL
    )""",
    "CREATE INDEX log_by_record ON log (rk, id)",
    """CREATE TABLE feed (
        seq bigint PRIMARY KEY,
        rk bigint NOT NULL,
        organisation text COLLATE "C",
        origin text COLLATE "C",
        data bytea NOT NULL
    )""",
    "CREATE INDEX feed_by_record ON feed (rk, seq)",
    "CREATE INDEX feed_by_organisation ON feed (organisation, seq)",
    """CREATE TABLE conflicts (
        record_id text COLLATE "C" NOT NULL,
        id text COLLATE "C" NOT NULL,
        kind text COLLATE "C" NOT NULL,
        subject text COLLATE "C" NOT NULL,
        severity text COLLATE "C" NOT NULL,
        payload bytea NOT NULL,
        PRIMARY KEY (record_id, id)
    )""",
    """CREATE TABLE users (
        organisation text COLLATE "C" NOT NULL,
        username text COLLATE "C" NOT NULL,
        password_hash text COLLATE "C" NOT NULL,
        created_ms bigint NOT NULL,
        disabled_ms bigint,
        display_name text COLLATE "C",
        PRIMARY KEY (organisation, username)
    )""",
    """CREATE TABLE replicas (
        replica_id text COLLATE "C" PRIMARY KEY,
        organisation text COLLATE "C" NOT NULL,
        enrolled_by text COLLATE "C",
        enrolled_ms bigint NOT NULL,
        last_seen_ms bigint,
        revoked_ms bigint,
        pending integer,
        oldest_pending_ms bigint,
        device_name text COLLATE "C",
        secret_hash text COLLATE "C"
    )""",
    "CREATE INDEX replicas_by_organisation ON replicas (organisation, replica_id)",
    """CREATE TABLE replica_accounts (
        replica_id text COLLATE "C" NOT NULL,
        username text COLLATE "C" NOT NULL,
        first_ms bigint NOT NULL,
        PRIMARY KEY (replica_id, username)
    )""",
    """CREATE TABLE sessions (
        token_hash text COLLATE "C" PRIMARY KEY,
        organisation text COLLATE "C" NOT NULL,
        username text COLLATE "C" NOT NULL,
        replica_id text COLLATE "C",
        created_ms bigint NOT NULL,
        expires_ms bigint NOT NULL
    )""",
    "CREATE INDEX sessions_by_expiry ON sessions (expires_ms)",
    "CREATE INDEX sessions_by_replica ON sessions (replica_id)",
    "CREATE INDEX sessions_by_user ON sessions (organisation, username)",
    """CREATE TABLE quarantine (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        record_id text COLLATE "C" NOT NULL,
        data bytea NOT NULL,
        reason text COLLATE "C" NOT NULL,
        received_ms bigint NOT NULL
    )""",
    'CREATE TABLE yjs_clients (client bigint PRIMARY KEY, replica_id text COLLATE "C" NOT NULL)',
    """CREATE TABLE person_cards (
        record_id text COLLATE "C" PRIMARY KEY,
        organisation text COLLATE "C" NOT NULL,
        card bytea NOT NULL
    )""",
    """CREATE TABLE person_keys (
        hash bigint NOT NULL,
        rk bigint NOT NULL,
        PRIMARY KEY (hash, rk)
    )""",
    "CREATE INDEX person_keys_by_record ON person_keys (rk)",
    """CREATE TABLE person_pairs (
        first text COLLATE "C" NOT NULL,
        second text COLLATE "C" NOT NULL,
        organisation text COLLATE "C" NOT NULL,
        state text COLLATE "C" NOT NULL CHECK (state IN ('possible', 'linked', 'disputed')),
        payload bytea NOT NULL,
        PRIMARY KEY (first, second),
        CHECK (first < second)
    )""",
    "CREATE INDEX person_pairs_by_second ON person_pairs (second)",
    "CREATE INDEX person_pairs_by_organisation ON person_pairs (organisation, state)",
    """CREATE TABLE audit_trail (
        replica_id text COLLATE "C" NOT NULL,
        line integer NOT NULL,
        seq bigint NOT NULL,
        at_ms bigint NOT NULL,
        actor text COLLATE "C" NOT NULL,
        action text COLLATE "C" NOT NULL,
        record_id text COLLATE "C",
        detail text COLLATE "C",
        prev_hash bytea NOT NULL,
        hash bytea NOT NULL,
        PRIMARY KEY (replica_id, line, seq)
    )""",
    "CREATE INDEX audit_by_seq ON audit_trail (replica_id, seq)",
    "CREATE INDEX audit_by_record ON audit_trail (record_id) WHERE record_id IS NOT NULL",
    # Append-only: no statement may change or remove an entry.
    """CREATE FUNCTION caresync_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$""",
    """CREATE TRIGGER audit_trail_append_only BEFORE UPDATE OR DELETE ON audit_trail
        FOR EACH ROW EXECUTE FUNCTION caresync_audit_append_only()""",
    """CREATE TRIGGER audit_trail_no_truncate BEFORE TRUNCATE ON audit_trail
        FOR EACH STATEMENT EXECUTE FUNCTION caresync_audit_append_only()""",
    """CREATE TABLE hub_outbox (
        record_id text COLLATE "C" PRIMARY KEY,
        organisation text COLLATE "C",
        version bigint NOT NULL,
        state text COLLATE "C" NOT NULL CHECK (state IN ('pending', 'held', 'sent', 'failed')),
        reason text COLLATE "C",
        sent_version bigint,
        attempts integer NOT NULL DEFAULT 0,
        next_attempt_ms bigint NOT NULL DEFAULT 0,
        last_attempt_ms bigint
    )""",
)

_V2 = (
    # The administrator role: who may open the server's admin page (GET /admin).
    "ALTER TABLE users ADD COLUMN admin boolean NOT NULL DEFAULT false",
)

_V3 = (
    # Hub changes numbered (protocol version 13): a report reads only what changed.
    "ALTER TABLE hub_outbox ADD COLUMN change bigint NOT NULL DEFAULT 0",
    "UPDATE hub_outbox SET change = 1",
    "CREATE INDEX hub_outbox_by_change ON hub_outbox (organisation, change)",
    """CREATE TABLE hub_removed (
        organisation text COLLATE "C" NOT NULL,
        record_id text COLLATE "C" NOT NULL,
        version bigint NOT NULL,
        change bigint NOT NULL,
        PRIMARY KEY (organisation, record_id)
    )""",
    "CREATE INDEX hub_removed_by_change ON hub_removed (organisation, change)",
    """CREATE TABLE hub_mark (
        singleton integer PRIMARY KEY CHECK (singleton = 1),
        n bigint NOT NULL
    )""",
    """INSERT INTO hub_mark (singleton, n)
        SELECT 1, CASE WHEN EXISTS (SELECT 1 FROM hub_outbox) THEN 1 ELSE 0 END""",
)

_V4 = (
    # The hub sender's due rows, the next retry and the counts per state, from an index.
    "CREATE INDEX hub_outbox_due ON hub_outbox (state, next_attempt_ms, record_id)",
)

_V5 = (
    # Each server process's stretch of the change feed (see the SQLite schema's version 19).
    "CREATE TABLE feed_epochs (first_seq BIGINT PRIMARY KEY, epoch BIGINT NOT NULL)",
)

_V6 = (
    # Failed logins, shared by every server process (caresync.throttle; no SQLite step).
    """CREATE TABLE login_failures (
        key text COLLATE "C" PRIMARY KEY,
        free integer NOT NULL CHECK (free >= 1),
        failures integer NOT NULL CHECK (failures >= 1),
        last_ms bigint NOT NULL,
        locked_until_ms bigint NOT NULL
    )""",
    "CREATE INDEX login_failures_by_last ON login_failures (last_ms)",
)

_V7 = (
    # A password mark per account (protocol version 16): random, so it tells nothing
    # of the password; gen_random_uuid() is evaluated for each row.
    "ALTER TABLE users ADD COLUMN password_mark bytea",
    "UPDATE users SET password_mark = decode(replace(gen_random_uuid()::text, '-', ''), 'hex')",
)

_V8 = (
    # A Yjs client id bound to its first writer within one record (the SQLite step 21).
    """CREATE TABLE record_clients (
        record_id text COLLATE "C" NOT NULL,
        client bigint NOT NULL,
        replica_id text COLLATE "C" NOT NULL,
        PRIMARY KEY (record_id, client)
    )""",
)

SCHEMA_STEPS: dict[int, tuple[str, ...]] = {
    1: _V1,
    2: _V2,
    3: _V3,
    4: _V4,
    5: _V5,
    6: _V6,
    7: _V7,
    8: _V8,
}
"""Statements that bring a schema from version N-1 to N. Never edit a released step."""

SCHEMA_VERSION = max(SCHEMA_STEPS)
"""The version this code writes; it opens every version up to this one."""
