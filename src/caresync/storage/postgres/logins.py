"""Failed logins, counted for every server process on the database (``login_failures``).

Theory of operation
-------------------
A failure is one ``INSERT ... ON CONFLICT DO UPDATE`` over the attempt's keys (an
account's, an address's): it computes the new count and lock in SQL from the row as
committed, under the row's lock, so two processes failing at the same instant both
count, and each sees the other's failure (the same statement on a row another
statement holds waits for its commit, then updates what it committed). The lock is
``now + lock_ms(failures - free)`` (:func:`caresync.throttle.lock_ms`), never less
than the row's lock before; a row idle for ``forget_after_ms`` starts again at one
failure. The statement locks its keys in the order given (the account's, then the
address's), and nothing here waits for a row while holding another, so processes
never deadlock on these rows.

A login claims its account's attempt before checking the password (``login_claim``):
the same statement, ``WHERE`` the row is not locked (a locked row is left as it was and
returns nothing, and the claim answers the wait), so of guesses at the same instant
through any process only those the policy allows one after another are checked.

Then one bounded ``DELETE`` takes away up to :data:`PRUNE_ROWS` rows idle past
``forget_after_ms`` (by the ``last_ms`` index) and up to as many past the newest
``max_tracked``: each failure adds at most two rows and takes away up to
:data:`PRUNE_ROWS`, so the table holds at most ``max_tracked`` rows (plus the few being
written at that moment), whatever names a guesser sprays. The rows it deletes are
locked with ``SKIP LOCKED``: a row another process is failing on right now is left
to the next failure, never waited for, and a row revived since it was read is
re-checked and kept.

Times are wall-clock milliseconds of the calling process (processes share no
monotonic clock); a clock set back (or behind another process's) holds locks longer by as
much, never shorter: a lock can then outlast ``max_lock_ms``.
"""

from __future__ import annotations

from collections.abc import Sequence

from caresync.exceptions import StorageError
from caresync.storage.postgres._sql import Conn, scalar
from caresync.storage.postgres.core import PostgresCore
from caresync.throttle import ThrottlePolicy, check_failures, check_key, check_wait

__all__ = ["PRUNE_ROWS", "LoginFailuresPart"]

PRUNE_ROWS = 64
"""Rows a failure's prune deletes at most, of each kind (idle; past ``max_tracked``)."""

_FRESH = "%(now)s - f.last_ms >= %(forget)s"
_COUNT = f"CASE WHEN {_FRESH} THEN 1 ELSE f.failures + 1 END"

_FAILED = f"""
INSERT INTO login_failures AS f (key, free, failures, last_ms, locked_until_ms)
SELECT u.key, u.free, 1, %(now)s, 0
FROM unnest(%(keys)s::text[], %(frees)s::integer[]) WITH ORDINALITY AS u(key, free, n)
ORDER BY u.n
ON CONFLICT (key) DO UPDATE SET
    free = excluded.free,
    failures = {_COUNT},
    last_ms = GREATEST(f.last_ms, %(now)s),
    locked_until_ms = GREATEST(
        CASE WHEN {_FRESH} THEN 0 ELSE f.locked_until_ms END,
        CASE WHEN {_COUNT} > excluded.free
            THEN %(now)s + LEAST(
                %(max_lock)s::numeric,
                %(first_lock)s::numeric * power(2::numeric, LEAST({_COUNT} - excluded.free - 1, 60))
            )::bigint
            ELSE 0 END)
"""

_CLAIMED = f"""{_FAILED}WHERE f.locked_until_ms <= %(now)s OR {_FRESH}
RETURNING f.key
"""
"""A failure counted only if the key is not locked (a locked row is left as it was, and
returns nothing): the claim a login makes before its password is checked."""

_PRUNE = """
WITH idle AS (
    SELECT key FROM login_failures WHERE last_ms <= %(cutoff)s
    ORDER BY last_ms LIMIT %(rows)s
), past_cap AS (
    SELECT key FROM login_failures ORDER BY last_ms DESC
    OFFSET %(max_tracked)s LIMIT %(rows)s
)
DELETE FROM login_failures WHERE key IN (
    SELECT f.key FROM login_failures AS f
    WHERE f.key IN (SELECT key FROM idle UNION ALL SELECT key FROM past_cap)
        AND (f.last_ms <= %(cutoff)s OR f.key IN (SELECT key FROM past_cap))
    FOR UPDATE OF f SKIP LOCKED)
"""


def _params(
    keys: Sequence[tuple[str, int]], now_ms: int, policy: ThrottlePolicy
) -> tuple[dict[str, object], dict[str, object]]:
    """The parameters of a failure's count (``_FAILED``, ``_CLAIMED``) and its prune."""
    counted: dict[str, object] = {
        "now": now_ms,
        "forget": policy.forget_after_ms,
        "keys": [key for key, _free in keys],
        "frees": [free for _key, free in keys],
        "first_lock": policy.first_lock_ms,
        "max_lock": policy.max_lock_ms,
    }
    pruned: dict[str, object] = {
        "cutoff": now_ms - policy.forget_after_ms,
        "rows": PRUNE_ROWS,
        "max_tracked": policy.max_tracked,
    }
    return counted, pruned


class LoginFailuresPart(PostgresCore):
    """Failed logins shared by the processes (see the module docstring)."""

    async def login_wait_ms(self, keys: Sequence[str], now_ms: int, forget_after_ms: int) -> int:
        """Milliseconds until a login counted against ``keys`` may be tried (0: now)."""
        check_wait(keys, now_ms, forget_after_ms)
        if not keys:
            return 0
        until = await self._run(
            "reading failed logins",
            lambda raw: scalar(
                raw,
                "SELECT MAX(locked_until_ms) FROM login_failures"
                " WHERE key = ANY(%s) AND %s - last_ms < %s",
                list(keys),
                now_ms,
                forget_after_ms,
            ),
        )
        return max(0, until - now_ms)

    async def login_failed(
        self, keys: Sequence[tuple[str, int]], now_ms: int, policy: ThrottlePolicy
    ) -> None:
        """Count a failed login against each ``(key, free)``: one atomic statement,
        then a bounded prune (see the module docstring)."""
        check_failures(keys, now_ms, policy)
        if not keys:
            return
        counted, pruned = _params(keys, now_ms, policy)

        def job(raw: Conn) -> None:
            self._writable()
            # Each its own statement, committed at once (autocommit): the row locks
            # of the count are held for that statement only.
            raw.execute(_FAILED, counted)
            raw.execute(_PRUNE, pruned)

        await self._run("counting a failed login", job)

    async def login_claim(self, key: str, free: int, now_ms: int, policy: ThrottlePolicy) -> int:
        """Count a failed login against ``key`` unless it is locked: 0 when counted,
        else the milliseconds to wait. One statement, under the key's row lock, so of
        claims at the same instant from any process only those the policy allows one
        after another are counted; then the bounded prune."""
        check_failures([(key, free)], now_ms, policy)
        counted, pruned = _params([(key, free)], now_ms, policy)

        def job(raw: Conn) -> int:
            self._writable()
            if raw.execute(_CLAIMED, counted).fetchone() is None:  # locked: nothing counted
                until = scalar(
                    raw, "SELECT locked_until_ms FROM login_failures WHERE key = %s", key
                )
                return max(1, until - now_ms)
            raw.execute(_PRUNE, pruned)
            return 0

        return await self._run("counting a failed login", job)

    async def login_succeeded(self, key: str) -> None:
        """Forget the failures of ``key``."""
        check_key(key)

        def job(raw: Conn) -> None:
            self._writable()
            raw.execute("DELETE FROM login_failures WHERE key = %s", (key,))

        await self._run("clearing failed logins", job)

    def _writable(self) -> None:
        if self.read_only:
            raise StorageError(f"{self.where} was opened read-only; nothing was written")
