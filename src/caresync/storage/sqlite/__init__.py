"""The durable replica store: SQLite, on database threads the process's stores share.

Theory of operation
-------------------
Every call runs as **one job on the store's database thread** (:mod:`.threads`:
a few threads for every SQLite store of the process, each store pinned to one):
the whole transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``) is a single function
handed to that thread, so statements of two coroutines never interleave inside
one transaction, and a durable edit costs one thread round trip plus one fsync.
No job leaves a transaction open for a later one (the thread checks), so stores
sharing a thread never wait for each other's locks. The one exception, a **brief
read** (a few rows by key: a setting, the feed's head, a replica's row, a login's
reads, a live batch's held states): while nothing of the store is on its thread,
it runs on the caller's thread instead, where it costs less than the hop there and
back; still one job at a time (``DatabaseConnection.run``; plain connections only,
an encrypted one keeps every job on its thread).

Durability: WAL with ``synchronous = FULL`` (see :mod:`caresync.storage.schema`),
so a call that returned has its commit fsynced to the write-ahead log (the one
exception, asked for by name: ``append_audit(durable=False)``, a server's login
entry, committed without the sync and made durable by the next synced commit or
``make_durable``). One
process writes a replica: the store holds a writer lock (:mod:`._lock`) while
open, so the bounded :class:`RecordCache` of merged record bytes can never go
stale behind its back. Other processes may open the same file with
``read_only=True`` while it runs (an operator reading a live server's
database); a read-only store caches nothing and refuses every write.

Opening never writes to a file before recognising it (:mod:`.migrations`).
A new database is built under a temporary name beside the target and
hard-linked into place when complete; nothing here ever renames, truncates or
deletes a file at a path the caller gave.

Errors from sqlite3 (and APSW's, raised as sqlite3's) are translated into
:class:`~caresync.exceptions.StorageError` and its subclasses at this edge.

Layout
------
One module per role, each a part of :class:`SQLiteStore` (a mixin on
:class:`~caresync.storage.sqlite.core.SQLiteCore`):

* :mod:`.core` — opening (writer lock, recognition, migration), running jobs on
  the connection's thread, one transaction per write, the cache of committed records;
  :mod:`.threads` — the database threads the process's stores share;
  :mod:`.files` — recognising, creating and backing up the file;
* :mod:`.meta` — identity and settings;
* :mod:`.writes` — what peers sent, and the planned-record machinery every write shares;
  :mod:`.reading` — records, conflict rows, persons, quarantine;
  :mod:`.persons` — the person index's tables;
* :mod:`.outbox` and :mod:`.unsynced_work` — a laptop's local edits, outbox and unsynced work;
* :mod:`.feed`, :mod:`.hub`, :mod:`.accounts`, :mod:`.sessions` — a server's feed and
  client owners, health-hub outbox, accounts and replicas, sessions;
* :mod:`.audit` — the audit chains; :mod:`.maintenance` — compaction and the check;
* :mod:`._sql` — the SQL helpers they share.
"""

from caresync.storage.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]
