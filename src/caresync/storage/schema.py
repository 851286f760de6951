"""The SQLite schema of a caresync replica, version by version.

A caresync database is recognised by three marks, all checked before anything
is written: SQLite's ``application_id`` is :data:`APPLICATION_ID`,
``user_version`` is a schema version this code knows, and the ``meta`` table
says ``caresync.format = caresync-replica``.

Each version's statements are frozen once released: a database at version N
is brought to :data:`SCHEMA_VERSION` by running the steps N+1..latest, in one
transaction (see :mod:`caresync.storage.migrations`).

Version 1, the core of a replica::

    meta      (key PK, value)                      settings, checkpoints, the format mark
    identity  (singleton=1 PK, replica_id, role, server_id, server_url, organisation)
    records   (record_id PK, organisation, state_vector, pending,
               log_count, log_bytes, created_ms, updated_ms)      WITHOUT ROWID
              index records_by_organisation (organisation, record_id)
    states    (record_id PK, state)       the compacted state, from the first compaction on
    log       (id PK, record_id, data, created_ms)  updates since the record's compaction
              index log_by_record (record_id, id)
    outbox    (seq PK AUTOINCREMENT, record_id, data, created_ms)   unacknowledged local updates
    feed      (seq PK AUTOINCREMENT, record_id, organisation, data) the server's change feed
              index feed_by_organisation (organisation, seq)

Version 2 added the conflict index and the server's accounts::

    conflicts (record_id, id) PK, kind, subject, severity, payload   WITHOUT ROWID
    users     (organisation, username) PK, password_hash, created_ms  WITHOUT ROWID
    replicas  (replica_id PK, organisation, enrolled_by, enrolled_ms,
               last_seen_ms, revoked_ms)                            WITHOUT ROWID
              index replicas_by_organisation (organisation, replica_id)

Version 3 added what a laptop reports of its outbox when it connects (for monitoring)::

    replicas  + pending, oldest_pending_ms

Version 4 gave records integer keys and let the server's feed double as the log::

    records   + rk (unique index records_by_key), feed_folded
    log       (id PK, rk, data, created_ms)      rebuilt keyed by rk; index log_by_record (rk)
    feed      + rk; index feed_by_record (rk); feed_by_organisation now (organisation)

Version 5 keeps who sent each update into the feed::

    feed      + origin              the sending replica's id (None: not said)

Version 6 rebuilt the feed lean (no record id, no AUTOINCREMENT)::

    feed      (seq PK, rk, organisation, origin, data)
              index feed_by_record (rk), feed_by_organisation (organisation)

Version 7 keeps who may sync, and what a laptop could not merge::

    users     + disabled_ms         when the account was disabled (None: enabled)
    replicas  + device_name, secret_hash   the enrolment label; SHA-256 of the replica's secret
    sessions  (token_hash PK, organisation, username, replica_id, created_ms, expires_ms)
              WITHOUT ROWID; indexes by expiry, replica and user
    quarantine (id PK, record_id, data, reason, received_ms)   updates a laptop could not merge
    yjs_clients (client PK, replica_id)   which replica first wrote under each Yjs client id
                                          (read, no longer written, from version 21 on)

    and deletes the ``session:<token>`` meta rows of version 6 (plain tokens, now
    kept only as hashes: their laptops log in with a password once).

Version 8 added the person index (the same person registered twice)::

    person_cards (record_id PK, organisation, card)          WITHOUT ROWID
    person_keys  (hash, rk) PK                                WITHOUT ROWID
                 index person_keys_by_record (rk)
    person_pairs (first, second) PK CHECK first < second, organisation, state, payload
                 WITHOUT ROWID; indexes by second, by state, by (organisation, state)

    A record's card, its blocking keys and the pairs it makes are written with
    the record, in one transaction. A key is kept as a 64-bit hash of its
    organisation and text, beside the record's rk: a few bytes a row, where
    the text would be sixty (two keys that hash alike only add a comparison).
    ``organisation`` is ``''`` for a record of no organisation (a primary key
    column of a WITHOUT ROWID table cannot be NULL, and an organisation is never
    empty). Existing databases get the tables empty: a replica re-indexes its
    records when it opens.

Version 9 made authors accounts::

    users            + display_name        the name people see (None: the username)
    replica_accounts (replica_id, username) PK, first_ms   WITHOUT ROWID
                     every account that logged in on a replica (a password login
                     bound to it, or its enrolment), filled from ``replicas`` and
                     ``sessions`` for the logins before version 9

Version 10 added the health-hub outbox (the server's; :mod:`caresync.hub`)::

    hub_outbox (record_id PK, organisation, version, state, reason, sent_version,
                attempts, next_attempt_ms, last_attempt_ms)   WITHOUT ROWID
               one row per patient whose summary is kept on the hub: ``version``
               is the feed seq of the record's latest change, ``sent_version``
               the latest the hub acknowledged; written in the push's transaction

Version 11 gave accounts an administrator role (the server's admin page)::

    users      + admin               1 for an administrator, 0 otherwise (NOT NULL)

Version 12 keeps counts of the conflict index and of the person pairs, so that counting
open conflicts (every sync's report) reads one row instead of every row::

    counts (name PK, n)   WITHOUT ROWID; ``conflicts``, and ``pairs:<state>`` per pair state

    Triggers on ``conflicts`` and ``person_pairs`` keep them in the transaction of
    every write of those tables, whatever statement makes it (a pair is upserted,
    never replaced: a REPLACE deletes without firing delete triggers). The step
    counts what an existing database holds.

Version 13 numbers the changes of the health-hub outbox, so that a laptop's hub report
carries only what changed since the one it holds (protocol version 13)::

    hub_outbox + change          the hub mark of the row's last change
               index hub_outbox_by_change (organisation, change)
    hub_removed (organisation, record_id) PK, version, change   WITHOUT ROWID
               a patient that left an organisation's list (row deleted, or moved to
               another organisation); index hub_removed_by_change (organisation, change)
    hub_mark   (singleton PK, n)  the last hub mark given out

    Every write of the outbox takes the next marks (in its transaction); a row that
    comes back to an organisation drops its tombstone there. Tombstones are kept (a
    laptop that held the row learns of its removal at any later sync); pruning them
    would need the server to send the whole list to a laptop older than the pruning.
    Existing rows get mark 1 (and ``hub_mark`` 1 if there are any).

Version 14 indexes the hub outbox by state, so that the sender and the counters read
what they need, not the whole outbox::

    hub_outbox index hub_outbox_due (state, next_attempt_ms, record_id)

    The sender's due rows (``pending`` ones whose retry time has come, and ``held``
    ones) are two ranges of it, merged in its order and read in pages; the earliest
    retry is its first ``pending`` entry; the counts per state scan it, not the rows.

Version 15 keeps a digest of each record's person card on its row, so that a laptop
comparing a pull's card references reads it with the state vector, not the card::

    records    + card_digest     the first 16 bytes of the SHA-256 of the record's stored
                                 card (``person_cards.card``); NULL: not known here (read
                                 the card)

    Written in the statement, or the transaction, that writes the card (the one place
    cards are written); ``check()`` compares every digest with its card. The step adds
    the column empty; the store fills it from the stored cards when it opens a database
    it has just migrated from an older version (a crash before that fill leaves NULLs,
    which only cost a card read).

Version 17 sets a first copy's blocking-key rows aside until its last batch::

    person_keys_copied (hash, rk)       rowid table, appended in rk order

    A first copy's batch whose pairs the server named (nothing looked up) appends its
    key rows here, where they cost the end of one B-tree, instead of inserting them at
    random places of ``person_keys`` batch after batch. The copy's last batch moves them
    into ``person_keys`` in one statement of its transaction, and so does any write
    that looks keys up or replaces a card's keys, first (an interrupted copy, a local
    edit in between). ``check()`` reads both tables as one index.

Version 18 keeps what a write changes of a record with the log rows it appends::

    log        (id PK, rk, state_vector, pending, created_ms, data)   rebuilt, data last
    records    + head_at            the id of the record's newest log row when its own
                                    state columns were last written (0: none)

    A log row newer than its record's ``head_at`` carries the record's state vector and
    ``pending`` as they were after the write that appended it; the newest such row is
    the record's state, and the row's own columns (``state_vector``, ``pending``,
    ``log_count``, ``log_bytes``, ``updated_ms``) count only the log rows up to
    ``head_at``. A pull that changes a thousand records then appends a thousand rows at
    the log's end and rewrites no record's row: a record's row sits on its own page of
    a table spread over the whole file, and rewriting them made up two thirds of the
    pages such a commit wrote. Writes that do rewrite the row (a record's first, the
    server's feed writes, compaction) fold the newer rows' counts in and move
    ``head_at`` to the record's newest log row. Ids are given out after the highest, so
    a record's later row always has a higher id than its newest one (only compaction
    deletes a record's rows, and it resets ``head_at``). The columns come before
    ``data`` so that reading them never walks a large update's overflow pages.

Version 19 names each stretch of the server's change feed a server process wrote::

    feed_epochs (first_seq PK, epoch)   a random id for the feed numbers from first_seq on

    A server process begins an epoch when it starts: a row at its feed head + 1 with a
    random id, so every number it gives out is labelled by an epoch no other start of
    the same database has (numbers before the first row: epoch 0). A laptop keeps the
    epoch of its checkpoint; a server restored from an older backup labels the numbers
    it gives out again with a new epoch, and so tells a laptop that read further that
    its checkpoint names entries this server no longer holds (see
    :mod:`caresync.replication.epochs`).

Version 20 gives each account a password mark (protocol version 16: laptops learn
whose password changed)::

    users      + password_mark      16 random bytes, new whenever the password is set
                                    (not when the same password is hashed again)

    The step gives every existing account a random mark; a laptop that recorded none
    takes the first one it is told (see :mod:`caresync.logins`).

Version 21 binds Yjs client ids per record, not across the whole deployment::

    record_clients (record_id, client) PK, replica_id   WITHOUT ROWID
                   which replica first wrote under each client id in each record

    A client id means something only within one document, and a laptop draws a new
    random one (53 bits) each time it opens a record: bound deployment-wide, two
    laptops' ids collide once tens of millions are drawn, and the loser's pushes were
    refused for good. ``yjs_clients`` is kept, no longer written: its rows still bind a
    client in a record whose stored state vector lists it (every write under a bound
    client was its owner's), and say nothing of a record that holds none of its ops
    (see ``ServerStore.client_owners``). No row is copied: that would decode every
    record's state vector.

Version 22 keeps a laptop's entries of a record the server refused apart from the rest
of its outbox (protocol version 16, :meth:`~caresync.storage.base.LaptopStore.set_aside`)::

    set_aside    (record_id PK, reason, since_ms)        a record refused, and why
    outbox_aside (seq PK, record_id, data, created_ms)   its entries, with their outbox seqs

    Entries move between ``outbox`` and ``outbox_aside`` in one transaction each way,
    keeping their order (a seq is never given out twice, so the two tables never share
    one); both are unsynced work (exported, counted, never acknowledged away).

A record holds its state, its log rows, and its feed rows after
``feed_folded``. An update written with ``to_feed`` (the server) is stored once,
as a feed row, instead of as a log row and a feed row; compaction folds the
feed rows by raising ``feed_folded`` (the feed itself is never rewritten).
``log_count`` and ``log_bytes`` count log rows and unfolded feed rows together.

An index entry ends with its row's rowid, so an index on (rk) is ordered by
(rk, id), and one on (organisation) by (organisation, seq): the order of the
two-column indexes, in smaller entries. Integer keys, not the records' text
ids, halve what an index costs per stored update.

A record's row is small and changes with every write; its compacted state
lives apart in ``states``, written only by compaction, so that a write never
rewrites the record's bytes (an update of a row rewrites all of it).

``pending`` is 1 while a record holds updates that arrived before one they
depend on; such a record's next write merges the whole record, any other
write costs in proportion to its updates.

``AUTOINCREMENT`` makes outbox numbers strictly increasing for the life of the
file, even after every row was acknowledged and removed. Feed rows are never
deleted, so numbering each after the highest (``MAX(seq) + 1``) never gives a
number twice either.
"""

from __future__ import annotations

__all__ = [
    "APPLICATION_ID",
    "CONNECTION_PRAGMAS",
    "FORMAT_KEY",
    "FORMAT_VALUE",
    "HEAD_JOIN",
    "HEAD_PENDING",
    "HEAD_VECTOR",
    "RESERVED_META_PREFIX",
    "SCHEMA_STEPS",
    "SCHEMA_VERSION",
    "SQLITE_MAGIC",
]

APPLICATION_ID = 0x63727379
"""``PRAGMA application_id`` of every caresync database ("crsy")."""

HEAD_JOIN = (
    " LEFT JOIN log h ON h.id ="
    " (SELECT MAX(l.id) FROM log l WHERE l.rk = r.rk AND l.id > r.head_at)"
)
"""Joined to ``FROM records r``: the record's newest log row (alias ``h``) when it is
newer than the row's own state columns, else NULLs (schema version 18). The condition
is inside the look-up, which reads only the index by key: a record with no newer row
costs no read of a log row (each on a page of its own)."""

HEAD_VECTOR = "COALESCE(h.state_vector, r.state_vector)"
"""A record's state vector as of its newest write (with :data:`HEAD_JOIN`)."""

HEAD_PENDING = "COALESCE(h.pending, r.pending)"
"""Whether a record holds waiting updates, as of its newest write (with :data:`HEAD_JOIN`)."""

SQLITE_MAGIC = b"SQLite format 3\x00"
"""The first 16 bytes of every SQLite database file."""

FORMAT_KEY = "caresync.format"
FORMAT_VALUE = "caresync-replica"
RESERVED_META_PREFIX = "caresync."
"""Meta keys under this prefix belong to the store; callers cannot set them."""

_V1 = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE identity (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        replica_id TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('laptop', 'server')),
        server_id TEXT,
        server_url TEXT,
        organisation TEXT
    )""",
    """CREATE TABLE records (
        record_id TEXT PRIMARY KEY NOT NULL,
        organisation TEXT,
        state_vector BLOB NOT NULL,
        pending INTEGER NOT NULL DEFAULT 0,
        log_count INTEGER NOT NULL DEFAULT 0,
        log_bytes INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX records_by_organisation ON records (organisation, record_id)",
    "CREATE TABLE states (record_id TEXT PRIMARY KEY NOT NULL, state BLOB NOT NULL)",
    """CREATE TABLE log (
        id INTEGER PRIMARY KEY,
        record_id TEXT NOT NULL,
        data BLOB NOT NULL,
        created_ms INTEGER NOT NULL
    )""",
    "CREATE INDEX log_by_record ON log (record_id, id)",
    """CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        record_id TEXT NOT NULL,
        data BLOB NOT NULL,
        created_ms INTEGER NOT NULL
    )""",
    """CREATE TABLE feed (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        record_id TEXT NOT NULL,
        organisation TEXT,
        data BLOB NOT NULL
    )""",
    "CREATE INDEX feed_by_organisation ON feed (organisation, seq)",
)

_V2 = (
    """CREATE TABLE conflicts (
        record_id TEXT NOT NULL,
        id TEXT NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        severity TEXT NOT NULL,
        payload BLOB NOT NULL,
        PRIMARY KEY (record_id, id)
    ) WITHOUT ROWID""",
    """CREATE TABLE users (
        organisation TEXT NOT NULL,
        username TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (organisation, username)
    ) WITHOUT ROWID""",
    """CREATE TABLE replicas (
        replica_id TEXT PRIMARY KEY NOT NULL,
        organisation TEXT NOT NULL,
        enrolled_by TEXT,
        enrolled_ms INTEGER NOT NULL,
        last_seen_ms INTEGER,
        revoked_ms INTEGER
    ) WITHOUT ROWID""",
    "CREATE INDEX replicas_by_organisation ON replicas (organisation, replica_id)",
)

_V3 = (
    "ALTER TABLE replicas ADD COLUMN pending INTEGER",
    "ALTER TABLE replicas ADD COLUMN oldest_pending_ms INTEGER",
)

_V4 = (
    # Every record gets a small integer key, so the log's index is by integer
    # (half the cost of an index by the record's text id per stored update).
    "ALTER TABLE records ADD COLUMN rk INTEGER",
    "ALTER TABLE records ADD COLUMN feed_folded INTEGER NOT NULL DEFAULT 0",
    "CREATE TEMP TABLE caresync_v4_keys (rk INTEGER PRIMARY KEY, record_id TEXT UNIQUE NOT NULL)",
    "INSERT INTO caresync_v4_keys (record_id) SELECT record_id FROM records ORDER BY record_id",
    """UPDATE records SET rk = (
        SELECT k.rk FROM caresync_v4_keys k WHERE k.record_id = records.record_id
    )""",
    "DROP TABLE caresync_v4_keys",
    "CREATE UNIQUE INDEX records_by_key ON records (rk)",
    """CREATE TABLE log_v4 (
        id INTEGER PRIMARY KEY,
        rk INTEGER NOT NULL,
        data BLOB NOT NULL,
        created_ms INTEGER NOT NULL
    )""",
    # A log row of no record (a damaged file) has no key: the NOT NULL refuses
    # the migration, which rolls back whole, rather than dropping the row.
    """INSERT INTO log_v4 (id, rk, data, created_ms)
        SELECT l.id, r.rk, l.data, l.created_ms
        FROM log l LEFT JOIN records r ON r.record_id = l.record_id""",
    "DROP TABLE log",
    "ALTER TABLE log_v4 RENAME TO log",
    # An index holds each row's rowid after its columns: (rk) is ordered by
    # (rk, id) already, in smaller entries than (rk, id) would be.
    "CREATE INDEX log_by_record ON log (rk)",
    # The feed doubles as the log of what is written into it: its rows after a
    # record's feed_folded are part of the record. Up to version 3 each feed
    # row was written to the log as well, so every existing one is folded.
    "ALTER TABLE feed ADD COLUMN rk INTEGER",
    "UPDATE feed SET rk = (SELECT r.rk FROM records r WHERE r.record_id = feed.record_id)",
    "CREATE INDEX feed_by_record ON feed (rk)",
    "DROP INDEX feed_by_organisation",
    "CREATE INDEX feed_by_organisation ON feed (organisation)",
    """UPDATE records SET feed_folded = COALESCE(
        (SELECT MAX(f.seq) FROM feed f WHERE f.rk = records.rk), 0
    )""",
)

_V5 = (
    # Who sent each update into the feed, so that a replica's pull can leave
    # out its own updates. Rows from before have none, and are sent to all.
    "ALTER TABLE feed ADD COLUMN origin TEXT",
)

_V6 = (
    # The feed rebuilt lean, for a server that stores 100,000 updates a second:
    # a row names its record by key (the id is one join away, through
    # records_by_key), and numbers follow the highest row without AUTOINCREMENT
    # (the feed is never pruned from its end, so no number comes back; the
    # sqlite_sequence write per row cost a tenth of an insert). A feed row of
    # no record (a damaged file) has no key: the NOT NULL refuses the migration.
    """CREATE TABLE feed_v6 (
        seq INTEGER PRIMARY KEY,
        rk INTEGER NOT NULL,
        organisation TEXT,
        origin TEXT,
        data BLOB NOT NULL
    )""",
    """INSERT INTO feed_v6 (seq, rk, organisation, origin, data)
        SELECT seq, rk, organisation, origin, data FROM feed ORDER BY seq""",
    "DROP TABLE feed",
    "ALTER TABLE feed_v6 RENAME TO feed",
    "CREATE INDEX feed_by_record ON feed (rk)",
    "CREATE INDEX feed_by_organisation ON feed (organisation)",
)

_V7 = (
    "ALTER TABLE users ADD COLUMN disabled_ms INTEGER",
    "ALTER TABLE replicas ADD COLUMN device_name TEXT",
    "ALTER TABLE replicas ADD COLUMN secret_hash TEXT",
    # A session token is kept only as its SHA-256: a copy of the database (a
    # backup) holds no token anyone could resume with.
    """CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY NOT NULL,
        organisation TEXT NOT NULL,
        username TEXT NOT NULL,
        replica_id TEXT,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX sessions_by_expiry ON sessions (expires_ms)",
    "CREATE INDEX sessions_by_replica ON sessions (replica_id)",
    "CREATE INDEX sessions_by_user ON sessions (organisation, username)",
    "DELETE FROM meta WHERE substr(key, 1, 8) = 'session:'",
    """CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY,
        record_id TEXT NOT NULL,
        data BLOB NOT NULL,
        reason TEXT NOT NULL,
        received_ms INTEGER NOT NULL
    )""",
    # A Yjs client id belongs to the replica that first wrote with it: another
    # writing under it could make that replica's next edit look already held.
    "CREATE TABLE yjs_clients (client INTEGER PRIMARY KEY, replica_id TEXT NOT NULL)",
)

_V8 = (
    # Each record's person card (PersonCard.to_bytes), with the record's organisation.
    """CREATE TABLE person_cards (
        record_id TEXT PRIMARY KEY NOT NULL,
        organisation TEXT NOT NULL,
        card BLOB NOT NULL
    ) WITHOUT ROWID""",
    # Blocking keys: cards are compared only when they share one, in one organisation.
    # ``hash``: the first 8 bytes of BLAKE2b of "organisation NUL key", signed; ``rk``:
    # the record's. The primary key finds a key's holders; the index a record's keys.
    """CREATE TABLE person_keys (
        hash INTEGER NOT NULL,
        rk INTEGER NOT NULL,
        PRIMARY KEY (hash, rk)
    ) WITHOUT ROWID""",
    "CREATE INDEX person_keys_by_record ON person_keys (rk)",
    # What pair_of made of two cards (PersonPair.to_bytes), each pair once.
    # An index entry ends with the primary key, so (state) is ordered by
    # (state, first, second): every listing reads in order, without a sort.
    """CREATE TABLE person_pairs (
        first TEXT NOT NULL,
        second TEXT NOT NULL,
        organisation TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('possible', 'linked', 'disputed')),
        payload BLOB NOT NULL,
        PRIMARY KEY (first, second),
        CHECK (first < second)
    ) WITHOUT ROWID""",
    "CREATE INDEX person_pairs_by_second ON person_pairs (second)",
    "CREATE INDEX person_pairs_by_state ON person_pairs (state)",
    "CREATE INDEX person_pairs_by_organisation ON person_pairs (organisation, state)",
)

_V9 = (
    "ALTER TABLE users ADD COLUMN display_name TEXT",
    # Which accounts have logged in on which replica: a revision a replica pushes
    # must name one of them as its author.
    """CREATE TABLE replica_accounts (
        replica_id TEXT NOT NULL,
        username TEXT NOT NULL,
        first_ms INTEGER NOT NULL,
        PRIMARY KEY (replica_id, username)
    ) WITHOUT ROWID""",
    # Who logged in before version 9: the account that enrolled each replica, and
    # the accounts of the sessions still bound to one.
    """INSERT OR IGNORE INTO replica_accounts (replica_id, username, first_ms)
        SELECT replica_id, enrolled_by, enrolled_ms FROM replicas WHERE enrolled_by IS NOT NULL""",
    """INSERT OR IGNORE INTO replica_accounts (replica_id, username, first_ms)
        SELECT replica_id, username, MIN(created_ms) FROM sessions
        WHERE replica_id IS NOT NULL GROUP BY replica_id, username""",
)

_V10 = (
    # The audit trail (caresync.audit): each replica's hash chain of who did what
    # to which record. A laptop holds its own chain; a server holds its own and
    # every replica's, a replica's copies restored from older ones as further lines.
    """CREATE TABLE audit_trail (
        replica_id TEXT NOT NULL,
        line INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        record_id TEXT,
        detail TEXT,
        prev_hash BLOB NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (replica_id, line, seq)
    ) WITHOUT ROWID""",
    "CREATE INDEX audit_by_seq ON audit_trail (replica_id, seq)",
    "CREATE INDEX audit_by_record ON audit_trail (record_id) WHERE record_id IS NOT NULL",
    # Append-only: no statement may change or remove an entry.
    """CREATE TRIGGER audit_trail_no_update BEFORE UPDATE ON audit_trail
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
    """CREATE TRIGGER audit_trail_no_delete BEFORE DELETE ON audit_trail
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
    # The health-hub outbox (caresync.hub).
    # A row is (re)written in the transaction of the push that changed its record,
    # so a summary to send is never lost to a crash between the two.
    """CREATE TABLE hub_outbox (
        record_id TEXT PRIMARY KEY NOT NULL,
        organisation TEXT,
        version INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'held', 'sent', 'failed')),
        reason TEXT,
        sent_version INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL DEFAULT 0,
        last_attempt_ms INTEGER
    ) WITHOUT ROWID""",
)

_V11 = (
    # The administrator role: who may open the server's admin page (GET /admin).
    "ALTER TABLE users ADD COLUMN admin INTEGER NOT NULL DEFAULT 0 CHECK (admin IN (0, 1))",
)

_PAIR_STATES = ("possible", "linked", "disputed")  # caresync.records.persons.PairState

_V12 = (
    # Counts kept by triggers, in the transaction of each write they count.
    """CREATE TABLE counts (
        name TEXT PRIMARY KEY NOT NULL,
        n INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "INSERT INTO counts (name, n) SELECT 'conflicts', COUNT(*) FROM conflicts",
    *(
        f"INSERT INTO counts (name, n) SELECT 'pairs:{state}', COUNT(*) FROM person_pairs"
        f" WHERE state = '{state}'"
        for state in _PAIR_STATES
    ),
    """CREATE TRIGGER conflicts_count_insert AFTER INSERT ON conflicts
        BEGIN UPDATE counts SET n = n + 1 WHERE name = 'conflicts'; END""",
    """CREATE TRIGGER conflicts_count_delete AFTER DELETE ON conflicts
        BEGIN UPDATE counts SET n = n - 1 WHERE name = 'conflicts'; END""",
    """CREATE TRIGGER person_pairs_count_insert AFTER INSERT ON person_pairs
        BEGIN UPDATE counts SET n = n + 1 WHERE name = 'pairs:' || NEW.state; END""",
    """CREATE TRIGGER person_pairs_count_delete AFTER DELETE ON person_pairs
        BEGIN UPDATE counts SET n = n - 1 WHERE name = 'pairs:' || OLD.state; END""",
    """CREATE TRIGGER person_pairs_count_update AFTER UPDATE OF state ON person_pairs
        WHEN NEW.state IS NOT OLD.state
        BEGIN
            UPDATE counts SET n = n - 1 WHERE name = 'pairs:' || OLD.state;
            UPDATE counts SET n = n + 1 WHERE name = 'pairs:' || NEW.state;
        END""",
)

_V13 = (
    # Hub changes numbered (protocol version 13): a report reads only what changed.
    "ALTER TABLE hub_outbox ADD COLUMN change INTEGER NOT NULL DEFAULT 0",
    "UPDATE hub_outbox SET change = 1",
    "CREATE INDEX hub_outbox_by_change ON hub_outbox (organisation, change)",
    """CREATE TABLE hub_removed (
        organisation TEXT NOT NULL,
        record_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        change INTEGER NOT NULL,
        PRIMARY KEY (organisation, record_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX hub_removed_by_change ON hub_removed (organisation, change)",
    """CREATE TABLE hub_mark (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        n INTEGER NOT NULL
    )""",
    "INSERT INTO hub_mark (singleton, n) SELECT 1, COUNT(*) > 0 FROM hub_outbox",
)

_V14 = (
    # The hub sender's due rows, the next retry and the counts per state, from an index.
    "CREATE INDEX hub_outbox_due ON hub_outbox (state, next_attempt_ms, record_id)",
)

_V15 = (
    # A digest of the record's card beside its state vector (a pull's card references).
    "ALTER TABLE records ADD COLUMN card_digest BLOB",
)

_V16: tuple[str, ...] = (
    # No statement: a card's key of its own record id is no longer a person_keys row
    # (its card is found by its id). The store deletes those rows when it opens a
    # database migrated from before (SQL cannot hash them); code of before would miss
    # them, hence the version.
)

_V17 = (
    # A first copy's key rows, set aside batch after batch in the order written (each
    # batch's records have keys above every one before): moved into person_keys in one
    # statement at the copy's last batch, or before anything looks a key up.
    # Until then they are part of the index as much as person_keys' own rows.
    """CREATE TABLE person_keys_copied (
        hash INTEGER NOT NULL,
        rk INTEGER NOT NULL
    )""",
)

_V18 = (
    # A log row carries its record's state after the write that appended it (see the
    # module's text): a pull appends rows and rewrites no record's row.
    """CREATE TABLE log_v18 (
        id INTEGER PRIMARY KEY,
        rk INTEGER NOT NULL,
        state_vector BLOB,
        pending INTEGER,
        created_ms INTEGER NOT NULL,
        data BLOB NOT NULL
    )""",
    """INSERT INTO log_v18 (id, rk, created_ms, data)
        SELECT id, rk, created_ms, data FROM log ORDER BY id""",
    "DROP TABLE log",
    "ALTER TABLE log_v18 RENAME TO log",
    "CREATE INDEX log_by_record ON log (rk)",
    "ALTER TABLE records ADD COLUMN head_at INTEGER NOT NULL DEFAULT 0",
    # Every row's counts are of its log rows so far: each record's newest row is its head.
    """UPDATE records SET head_at = (SELECT MAX(l.id) FROM log l WHERE l.rk = records.rk)
        WHERE rk IN (SELECT rk FROM log)""",
)

_V19 = ("CREATE TABLE feed_epochs (first_seq INTEGER PRIMARY KEY, epoch INTEGER NOT NULL)",)

_V20 = (
    # A password mark per account (protocol version 16): random, so it tells nothing
    # of the password; randomblob() is evaluated for each row.
    "ALTER TABLE users ADD COLUMN password_mark BLOB",
    "UPDATE users SET password_mark = randomblob(16)",
)

_V21 = (
    # A Yjs client id bound to its first writer within one record (see the module's text).
    """CREATE TABLE record_clients (
        record_id TEXT NOT NULL,
        client INTEGER NOT NULL,
        replica_id TEXT NOT NULL,
        PRIMARY KEY (record_id, client)
    ) WITHOUT ROWID""",
)

_V22 = (
    # A laptop's outbox entries of a record the server refused, set aside (protocol 16).
    """CREATE TABLE set_aside (
        record_id TEXT PRIMARY KEY NOT NULL,
        reason TEXT NOT NULL,
        since_ms INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE outbox_aside (
        seq INTEGER PRIMARY KEY,
        record_id TEXT NOT NULL,
        data BLOB NOT NULL,
        created_ms INTEGER NOT NULL
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
    9: _V9,
    10: _V10,
    11: _V11,
    12: _V12,
    13: _V13,
    14: _V14,
    15: _V15,
    16: _V16,
    17: _V17,
    18: _V18,
    19: _V19,
    20: _V20,
    21: _V21,
    22: _V22,
}
"""Statements that bring a database from version N-1 to N. Never edit a released step."""

SCHEMA_VERSION = max(SCHEMA_STEPS)
"""The version this code writes; it opens every version up to this one."""

CONNECTION_PRAGMAS = (
    # One writer per file is ensured by the store's writer lock
    # (caresync.storage._lock), not by SQLite's exclusive locking mode, so
    # that readers can read a database while its writer runs.
    # Write-ahead log: a commit appends to the log, readers are not blocked,
    # and a crash at any point leaves the last committed state.
    "PRAGMA journal_mode = WAL",
    # FULL: every commit is fsynced to the write-ahead log before it returns,
    # so an acknowledged edit survives a power cut, not just a killed process.
    # (NORMAL would be ~20x faster here but may lose the last commits when the
    # battery dies; promise 3 rules it out.)
    "PRAGMA synchronous = FULL",
    # On macOS fsync() leaves the data in the drive's cache (Apple's fsync(2)): a power
    # cut may lose a commit it "synced". These make SQLite sync with F_FULLFSYNC there,
    # at commits and checkpoints; elsewhere they change nothing.
    "PRAGMA fullfsync = ON",
    "PRAGMA checkpoint_fullfsync = ON",
    "PRAGMA foreign_keys = OFF",
    "PRAGMA temp_store = MEMORY",
    "PRAGMA cache_size = -16384",
)
"""Set on every read-write connection, after the file was recognised."""
