"""A clinic server's store on PostgreSQL, through psycopg 3 (``pip install "caresync[postgres]"``).

Theory of operation
-------------------
The SQLite store's design, on a database several server processes can share.
Every call is one job on the store's own thread, which owns one psycopg
connection in autocommit mode; a write is one explicit transaction, committed
before the call returns (PostgreSQL's ``synchronous_commit``, on by default,
makes a returned commit durable; the one exception, asked for by name, is
``append_audit(durable=False)``, made durable by ``make_durable``). Reads of many
rows run in one REPEATABLE READ
snapshot.

Ordering: every transaction that writes records (``write_remote``,
``set_conflicts``, compaction) first takes the **feed lock**, a
transaction-scoped advisory lock released by its commit. Writers of records
therefore follow one another across every process sharing the database, each
plans its batch against the records as the previous one committed them, and
numbers its feed rows after the highest (``MAX(seq) + 1``): feed order is
commit order, without gaps, and a reader never sees seq N+1 before N. Accounts,
sessions and the audit trail do not take it (an audit chain has a lock of its
own, per replica). Nothing of a record is cached in the store: another process
may have written it (a server's record pool is kept current through the feed: see
:mod:`.shared` and :mod:`caresync.replication.follow`).

The schema is recognised, created and migrated as the SQLite one is
(:mod:`.schema`, :mod:`.migrations`): numbered steps, a version row, one
transaction. Errors from psycopg are translated into
:class:`~caresync.exceptions.StorageError` at this edge.

Layout
------
* :mod:`.core` — the URL, the connection and its thread, opening, one transaction per write;
  :mod:`.schema` and :mod:`.migrations` — the tables and their versions;
* :mod:`.meta` — identity and settings; :mod:`.writes` — what peers sent, conflict rows;
  :mod:`.reading` — records, conflict rows, persons, quarantine; :mod:`.persons` — the
  person index;
* :mod:`.feed`, :mod:`.hub`, :mod:`.accounts`, :mod:`.sessions` — the feed and Yjs client
  owners, the health-hub outbox, accounts and replicas, sessions;
* :mod:`.audit` — the audit chains; :mod:`.maintenance` — compaction and the check;
* :mod:`.shared` — several server processes: the push lock, LISTEN/NOTIFY on the feed;
* :mod:`._sql` — the SQL helpers they share.
"""

from caresync.storage.postgres.core import describe_url, is_postgres_url
from caresync.storage.postgres.store import PostgresStore

__all__ = ["PostgresStore", "describe_url", "is_postgres_url"]
