"""The server's sender: PUT each due summary to the health hub, and store what came of it.

Theory of operation
-------------------
The outbox rows are written by the push that changed a record, in its
transaction (:meth:`~caresync.storage.Store.write_remote`, ``hub=``), so a
summary to send survives a restart or a SIGKILL. The sender reads the rows:

* a ``pending`` row whose retry time has come is due. Its **snapshot** is taken
  under the server's commit lock (:meth:`HubSender` is given ``snapshot``):
  the row's version and the record as committed at that version, checked for
  open conflicts (its own, its pairs', across linked records), and, if none
  blocks, its summary's bytes. A blocking conflict makes the row ``held``
  (nothing is sent); a version the hub acknowledged already is ``sent``
  without a request (nothing acknowledged is sent again).
* it then sends ``PUT {hub}/Bundle/{id}`` (``application/fhir+json``) outside
  the lock, and stores the outcome for that version only
  (:meth:`~caresync.storage.Store.record_hub_outcome`): a newer version queued
  meanwhile keeps its place and is sent next.
* 2xx: ``sent``. A connection error, a timeout, 408, 429 or 5xx: retried after
  :func:`~caresync.hub.model.retry_delay_ms` (doubling, capped, jittered; a
  429's or 503's ``Retry-After`` in seconds is honoured up to the cap). Any
  other status: ``failed`` with the hub's message, until the record changes.
  A 401 (or a bearer token that cannot be read) is the server's credentials, not
  the summary's: the round stops and the sender pauses as a whole (doubling,
  capped), then one summary tries again; the summaries keep their attempt counts.

A ``held`` row is looked at again only when something that could release it
changed. Its conflicts are a function of its own record, the records linked to
it and the other record of each of its pairs (a link decision is a revision of
a record of its pair; a pair is a function of its two records), so when a
snapshot holds a row the sender remembers those records, in memory. The server
tells it every record committed (:meth:`wake` with the record ids, from
``SyncServer.on_feed``: this process's pushes and, with a database shared by
processes, the others', as the server follows the feed); the next round
snapshots again only the held rows waiting on one of those records, then the
due ``pending`` ones. A push elsewhere costs no snapshot and no read of a held
row. A push of the record itself rewrites its row (pending, or held by its own
conflicts, which only its own next change can release), so nothing is read for
a record no held row is known to wait on.

A new sender (a restart, perhaps with another rulebook) walks every held row
once, which also learns what each waits on: in pages of the outbox's index, at
most :data:`DUE_PAGES` a round, going on from where the last round stopped; the
due ``pending`` rows are read from the first after it in every round, so a
retry is never kept waiting behind held rows. More than :data:`MAX_CHANGED`
changes between two rounds (memory kept bounded) start the walk again.

A commit wakes the sender; otherwise it sleeps until the next retry is due.
Clock, randomness and the HTTP client are injectable: tests step through
attempts with :meth:`run_once` and never sleep. Whatever the hub answers is
bounded (64 KiB read) and shown on one printable line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random as random_module
import re
import stat
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from caresync.audit import AuditEvent
from caresync.conflicts import RecordView
from caresync.exceptions import CaresyncError, InvalidInputError, MissingExtraError, StorageError
from caresync.hub.model import (
    RETRY_BASE_MS,
    RETRY_MAX_MS,
    hold_reason,
    retry_delay_ms,
    short_reason,
    verdict_of,
)
from caresync.hub.summary import summary_bytes, summary_id
from caresync.listing import ConflictListing
from caresync.storage.base import HubOutcome, HubSummaryRow, ServerStore

__all__ = [
    "HUB_INSTALL_HINT",
    "MAX_TOKEN_CHARS",
    "HubSender",
    "HubSnapshot",
    "check_hub_token",
    "check_token_url",
    "hub_url",
    "private_channel",
    "read_hub_token",
    "require_http",
    "take_snapshot",
]

HUB_INSTALL_HINT = 'pip install "caresync[hub]"'
FHIR_JSON = "application/fhir+json"
MAX_ANSWER_BYTES = 64 * 1024
"""The most of a hub's answer read (its message is cut to a line anyway)."""
DEFAULT_TIMEOUT_S = 30.0
DUE_PAGE = 256
"""Due summaries read from the outbox at once (the store reads only those)."""
DUE_PAGES = 4096
"""Most pages one round of :meth:`HubSender.run_once` attempts (then it returns 0)."""
MAX_CHANGED = 100_000
"""Most changed records a sender keeps between rounds; past that, its next round looks
at every held row (memory stays bounded whatever a burst of pushes commits)."""
logger = logging.getLogger("caresync.server")


HUB_ACTOR = "hub-sender"
"""The actor of the server's audit entries for summaries sent to the hub."""


def require_http() -> Any:
    """The ``httpx`` module; MissingExtraError naming the extra when it is not installed."""
    try:
        import httpx
    except ImportError as exc:
        raise MissingExtraError(
            f"the health-hub sender needs httpx, which is not installed ({exc}); install it "
            f"with: {HUB_INSTALL_HINT}"
        ) from None
    return httpx


def hub_url(url: str) -> str:
    """The hub's base URL, checked: ``http://`` or ``https://``, a host, no query."""
    httpx = require_http()
    shown = _without_userinfo(url)
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        # httpx's reason may quote the URL: said only of a URL with no password in it.
        reason = f": {exc}" if shown == url else ""
        raise InvalidInputError(f"{shown!r:.100} is not a hub URL{reason}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidInputError(
            f"{shown!r:.100} is not a hub URL: give http(s)://host[:port][/base], the FHIR "
            "server's base (summaries go to {URL}/Bundle/{id})"
        )
    if parsed.query or parsed.fragment:
        raise InvalidInputError(f"{shown!r:.100}: a hub URL has no query or fragment")
    return url.rstrip("/")


def _without_userinfo(url: object) -> object:
    """``url`` as an error may show it: a ``user:password@`` in it replaced by ``***@``
    (an operator's password must not reach a log or a terminal through a refusal)."""
    if not isinstance(url, str):
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return url
    return f"{scheme}://***@{authority.rpartition('@')[2]}{slash}{path}"


@dataclass(frozen=True, slots=True)
class HubSnapshot:
    """One record's summary as of one version, taken under the server's commit lock."""

    version: int
    attempts: int
    """Failed attempts of this version so far (the retry schedule goes on from them)."""
    held: str | None
    """Why it must wait (an open blocking conflict), or None."""
    body: bytes | None
    """The summary's bytes (None when held or acknowledged already)."""
    failure: str | None = None
    """Why it can never be sent as it is (the record is not stored), or None."""
    neighbours: tuple[str, ...] = ()
    """The other records its conflicts were derived from (linked ones, the other record
    of each of its pairs): a held summary waits on a change of one of them or its own."""


async def take_snapshot(
    store: ServerStore, listing: ConflictListing, record_id: str
) -> HubSnapshot | None:
    """The snapshot of one record's outbox row (None: no row, or no such record).

    Call it where no commit can run meanwhile (the server's commit lock): the
    row's version and the record read are then of the same moment. Conflicts are
    the record's own, its pairs' and those across linked records.
    """
    row = await store.hub_summary(record_id)
    if row is None:
        return None
    if not await store.has_record(record_id):  # never written so; said rather than retried
        return HubSnapshot(row.version, row.attempts, None, None, "the record is not stored here")
    conflicts, neighbours = await listing.of_record_and_neighbours(record_id)
    held = hold_reason((c.id, c.severity.value, c.subject) for c in conflicts)
    acknowledged = row.sent_version is not None and row.sent_version >= row.version
    body = None
    if held is None and not acknowledged:
        body = summary_bytes(RecordView(await listing.pool.get(record_id)))
    return HubSnapshot(row.version, row.attempts, held, body, neighbours=tuple(neighbours))


SnapshotTaker = Callable[[str], Awaitable[HubSnapshot | None]]
"""Takes one record's snapshot (None: its row or record is gone)."""


class HubSender:
    """Sends the due summaries of a server's hub outbox to ``url`` (see the module)."""

    def __init__(
        self,
        store: ServerStore,
        url: str,
        snapshot: SnapshotTaker,
        *,
        client: Any = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        now_ms: Callable[[], int] | None = None,
        random: Callable[[], float] = random_module.random,
        base_delay_ms: int = RETRY_BASE_MS,
        max_delay_ms: int = RETRY_MAX_MS,
        audit_as: str | None = None,
        token: str | Callable[[], str] | None = None,
    ) -> None:
        """``client`` is an ``httpx.AsyncClient`` (default: one made here, closed by
        :meth:`close`); ``timeout_s`` bounds each request. ``now_ms`` and ``random``
        drive the retry schedule (tests pass their own). ``audit_as``: the server's id,
        whose audit chain records each summary before it leaves (an ``export``).
        ``token``: a hub that needs authentication gets it as a bearer token
        (``Authorization: Bearer ...``) with every request; a callable is asked before
        each request, so a token renewed outside (a file rewritten) is used at once.
        Only over ``https://``, or plain ``http://`` to this machine (loopback, never
        through an environment proxy; a ``client`` given is used as it is): a token
        sent in the clear could be replayed."""
        httpx = require_http()
        if not 0 < timeout_s <= 3600:
            raise InvalidInputError("timeout_s must be in (0, 3600]")
        if not 0 < base_delay_ms <= max_delay_ms:
            raise InvalidInputError("base_delay_ms must be positive and at most max_delay_ms")
        self.store = store
        self.url = hub_url(url)
        if token is not None:
            check_token_url(self.url)
        self._token = (lambda: token) if isinstance(token, str) else token
        if isinstance(token, str):
            check_hub_token(token)
        self._snapshot = snapshot
        self._owns_client = client is None
        # Plain http:// is allowed a token only to this machine: never through a proxy of
        # the environment (HTTP_PROXY), which would get it in the clear and reach its own
        # loopback, not ours.
        local = httpx.URL(self.url).scheme == "http" and private_channel(self.url)
        self._client = (
            client
            if client is not None
            else httpx.AsyncClient(
                timeout=httpx.Timeout(timeout_s), follow_redirects=False, trust_env=not local
            )
        )
        self._httpx = httpx
        self._now_ms = now_ms if now_ms is not None else (lambda: time.time_ns() // 1_000_000)
        self._random = random
        self._base, self._max = base_delay_ms, max_delay_ms
        self._audit_as = audit_as
        self._timeout_s = timeout_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Records committed since the last round began (see the module's theory).
        self._changed: set[str] = set()
        # The walk of every held row a new sender makes (see the module): where it stands,
        # in the outbox's (next_attempt_ms, record id) order, and whether it is under way.
        # ``_rewalk``: start it again at the next round (too many changes to keep).
        self._walking = True
        self._walked: tuple[int, str] | None = None
        self._rewalk = False
        # Each held row this sender snapshotted → the records it waits on (itself too),
        # and the inverse: record → held rows waiting on it.
        self._waits: dict[str, frozenset[str]] = {}
        self._waiting: dict[str, set[str]] = {}
        self.sent = 0
        """Summaries the hub acknowledged since this sender started."""
        self.on_outcome: list[Callable[[str, str], None]] = []
        """Called with (record id, state) after each attempt's outcome is committed."""
        # A hub that refused this server's credentials (401), or a token that could not be
        # read: every summary would meet the same, so the sender as a whole waits until
        # ``_paused_until`` (doubling with ``_refusals`` in a row), then one summary tries.
        self._paused_until: int | None = None
        self._refusals = 0
        # A due summary this round left to another sender sending it now: the next round
        # comes after a short wait, not at once (its row stays due meanwhile), and looks
        # at the rows so left (``_left``) again: a held one among them may be one this
        # sender never learned the waits of (its walk passed it), so no change would.
        self._busy = False
        self._left: set[str] = set()

    def wake(self, record_ids: Iterable[str] = ()) -> None:
        """Look at the outbox now: a commit changed it, or changed ``record_ids`` (a held
        summary of these records, or waiting on one of them, is looked at again)."""
        self._changed.update(record_ids)
        if len(self._changed) > MAX_CHANGED:
            self._changed.clear()
            self._rewalk = True
        self._wake.set()

    @property
    def waiting(self) -> int:
        """How many held summaries this sender knows what they wait on."""
        return len(self._waits)

    def start(self) -> None:
        """Run :meth:`run` in the background until :meth:`close`."""
        if self._task is None:
            self._task = asyncio.create_task(self.run())

    async def close(self) -> None:
        """Stop sending (an attempt in flight is abandoned: it is sent again after a
        restart) and close the HTTP client made here."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
            self._task = None
        if self._owns_client:
            await self._client.aclose()

    async def run(self) -> None:
        """Send due summaries, then sleep until woken or the next retry is due; forever."""
        while True:
            self._wake.clear()  # a commit from now on wakes the next round
            try:
                wait_ms = await self.run_once()
            except StorageError as exc:  # a busy or full disk: try again in a while
                logger.warning("hub outbox: %s", exc)
                wait_ms = self._max
            except Exception:
                logger.exception("hub outbox: the sender failed; trying again later")
                wait_ms = self._max
            timeout = None if wait_ms is None else wait_ms / 1000
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def run_once(self) -> int | None:
        """Attempt every summary due now, once each; returns the ms until the next is due
        (None: none waits for a retry; 0: more were due than one round attempts).

        Due: the ``pending`` ones whose retry time has come, and the ``held`` ones that
        something committed since could release (and, while a new sender's walk of every
        held one goes on, its next pages; see the module)."""
        now = self._now_ms()
        if self._paused_until is not None:
            if now < self._paused_until:
                return self._paused_until - now  # what changed meanwhile is kept for later
            self._paused_until = None
        if self._rewalk:
            self._rewalk = False
            self._walking, self._walked = True, None
        changed, self._changed = self._changed, set()
        left, self._left = self._left, set()
        self._busy = False
        try:
            await self._revisit(changed, left)
            whole = self._walking and self._walked is None
            walked = not self._walking or await self._walk_held(now)
            # Then the due pending ones, from the first: the held walk, bounded per round,
            # never stands in front of a due retry. (A walk begun and ended in this round
            # read them all already.)
            bounded = not (whole and walked) and not await self._due_pages(now)
        except BaseException:
            # Nothing is lost: what this round was to look at, the next one looks at.
            self._changed |= changed
            self._left |= left
            raise
        if self._paused_until is not None:  # credentials refused: the round stopped there
            return max(1, self._paused_until - self._now_ms())
        if bounded or not walked:
            return 0  # a bounded round: the rest are due now, the next round sends them
        earliest = await self.store.hub_next_attempt_ms()
        wait = None if earliest is None else max(0, earliest - self._now_ms())
        if self._busy:  # due, but being sent elsewhere: look again in a while, not at once
            return self._base if wait is None else max(wait, self._base)
        return wait

    async def _revisit(self, changed: set[str], left: set[str]) -> None:
        """Attempt the held rows that a change of ``changed`` could release: those this
        sender saw held waiting on one of them (their own record included), and the rows
        ``left`` to another sender last round, if held. Nothing is read for a record no
        held row waits on: a push rewrites its own record's row (pending, which the due
        pages attempt, or held by its own conflicts, which only its own next change can
        release)."""
        waiting = set(left)
        for record_id in changed:
            waiting.update(self._waiting.get(record_id, ()))
        for record_id in sorted(waiting):
            if self._paused_until is not None:
                self._left.add(record_id)  # looked at once the pause is over
                continue
            row = await self.store.hub_summary(record_id)
            if row is None:
                self._forget(record_id)
            elif row.state == "held":
                await self._attempt_row(row)
            # else: pending (the due pages attempt it), sent or failed (another process
            # attempted it): not held any more, or not by what this sender knew.
            elif row.state != "pending":
                self._forget(record_id)

    async def _walk_held(self, now: int) -> bool:
        """The next pages (at most :data:`DUE_PAGES`) of the walk of every held row, from
        where the last round left it; True once it reached the end. It reads the due rows
        (held ones and due pending ones, which it attempts too) in the outbox's index
        order: an attempted held row keeps its key at or before the walk's, so none is
        looked at twice; a row held or changed meanwhile is a change the sender is told
        of, or a held row this sender knows."""
        for _page in range(DUE_PAGES):
            due = await self.store.hub_due(now, DUE_PAGE, after=self._walked)
            for row in due:
                if self._paused_until is not None:
                    return False  # this page is read again once the pause is over
                await self._attempt_row(row)
            if len(due) < DUE_PAGE:
                self._walking, self._walked = False, None
                return True
            self._walked = (due[-1].next_attempt_ms, due[-1].record_id)
        return False

    async def _due_pages(self, now: int) -> bool:
        """Attempt the due ``pending`` rows, read in pages of the store's index in
        (next_attempt_ms, record id) order: an attempt moves its row behind the page (a
        retry time after now) or out of them, so none is attempted twice. False if the
        round stopped at its bound."""
        after: tuple[int, str] | None = None
        for _page in range(DUE_PAGES):
            due = await self.store.hub_due(now, DUE_PAGE, after=after, held=False)
            for row in due:
                if self._paused_until is not None:
                    return False  # credentials refused: the rest wait for the pause
                await self._attempt_row(row)
            if len(due) < DUE_PAGE:
                return True
            after = (due[-1].next_attempt_ms, due[-1].record_id)
        return False

    def _hold(self, record_id: str, neighbours: tuple[str, ...]) -> None:
        """Remember that ``record_id``'s summary is held, waiting on these records."""
        self._forget(record_id)
        waits = frozenset((record_id, *neighbours))
        self._waits[record_id] = waits
        for other in waits:
            self._waiting.setdefault(other, set()).add(record_id)

    def _forget(self, record_id: str) -> None:
        """``record_id``'s summary is not held (as far as this sender knows)."""
        for other in self._waits.pop(record_id, ()):
            held = self._waiting.get(other)
            if held is not None:
                held.discard(record_id)
                if not held:
                    del self._waiting[other]

    async def _attempt_row(self, row: HubSummaryRow) -> None:
        """:meth:`attempt` for a due row; an error other than the store's is that
        summary's retry (one summary never stops the others)."""
        try:
            await self.attempt(row.record_id)
        except StorageError:
            raise
        except Exception as exc:
            logger.exception("hub summary of %s: the attempt failed", row.record_id)
            delay = retry_delay_ms(
                row.attempts + 1, self._random, base_ms=self._base, max_ms=self._max
            )
            reason = short_reason(f"retrying: {type(exc).__name__}: {exc}")
            await self._store(
                row.record_id,
                row.version,
                HubOutcome("pending", reason, row.attempts + 1, self._now_ms() + delay),
            )

    async def attempt(self, record_id: str) -> str | None:
        """One attempt for one record: held, acknowledged already, or a PUT. Returns the
        state it left (None: no row, or another sender is sending it now).

        The whole attempt holds the store's claim on the record
        (:meth:`~caresync.storage.ServerStore.hub_sending`): with several processes on
        one database, each with its sender, two versions of one summary are never in
        flight at once, so an older one cannot reach the hub after a newer one. A
        record another sender is sending is left to it (it finds the newer version due
        once its own is answered); this sender looks again after a short wait."""
        async with self.store.hub_sending(record_id) as mine:
            if not mine:
                self._busy = True
                self._left.add(record_id)  # looked at again next round, held or not
                return None
            return await self._attempt_claimed(record_id)

    async def _attempt_claimed(self, record_id: str) -> str | None:
        """:meth:`attempt`, the record's claim held."""
        try:
            snap = await self._snapshot(record_id)
        except StorageError:
            raise
        except CaresyncError as exc:
            # A summary that cannot be built (the model library refused it) would fail
            # the same way at every attempt: failed, with why, until the record changes.
            row = await self.store.hub_summary(record_id)
            if row is None:
                return None
            reason = short_reason(f"the summary could not be built: {exc}")
            self._forget(record_id)
            await self._store(record_id, row.version, HubOutcome("failed", reason, 0, 0))
            return "failed"
        if snap is None:
            self._forget(record_id)
            return None
        if snap.held is None:
            self._forget(record_id)
        else:
            self._hold(record_id, snap.neighbours)
        attempts = snap.attempts
        if snap.failure is not None:
            await self._store(record_id, snap.version, HubOutcome("failed", snap.failure, 0, 0))
            return "failed"
        if snap.held is not None:
            await self._store(record_id, snap.version, HubOutcome("held", snap.held, 0, 0))
            return "held"
        if snap.body is None:  # the hub has this version: nothing is sent again
            await self._store(record_id, snap.version, HubOutcome("sent", None, 0, 0))
            return "sent"
        now = self._now_ms()
        token: str | None = None
        if self._token is not None:
            try:
                token = check_hub_token(self._token())
            except (InvalidInputError, OSError) as exc:  # a token file unreadable or broken
                # Nothing leaves (no export entry): the sender waits as a whole.
                reason = short_reason(f"no token for the hub: {exc}")
                return await self._refused(record_id, snap, reason, None)
        await self.store.record_hub_attempt(record_id, now)
        if self._audit_as is not None:  # recorded before the patient's data leaves
            await self.store.append_audit(
                [AuditEvent(HUB_ACTOR, "export", record_id, f"hub summary v{snap.version}")],
                replica_id=self._audit_as,
            )
        verdict, reason, retry_after_ms = await self._put(record_id, snap.body, token)
        if verdict == "credentials":
            return await self._refused(record_id, snap, reason, retry_after_ms)
        self._refusals = 0
        if verdict == "sent":
            self.sent += 1
            outcome = HubOutcome("sent", None, 0, 0, acknowledged=True)
        elif verdict == "failed":
            outcome = HubOutcome("failed", reason, attempts + 1, 0)
        else:
            delay = retry_delay_ms(attempts + 1, self._random, base_ms=self._base, max_ms=self._max)
            if retry_after_ms is not None:
                delay = max(delay, min(retry_after_ms, self._max))
            outcome = HubOutcome(
                "pending", short_reason(f"retrying: {reason}"), attempts + 1, now + delay
            )
        await self._store(record_id, snap.version, outcome)
        logger.info(
            "hub summary of %s (version %d): %s%s",
            record_id,
            snap.version,
            outcome.state,
            "" if outcome.reason is None else f" ({outcome.reason})",
            extra=_log_extra(record_id, snap.version, outcome.state),
        )
        return outcome.state

    async def _refused(
        self, record_id: str, snap: HubSnapshot, reason: str, retry_after_ms: int | None
    ) -> str:
        """The hub refused this server's credentials, or there is no token to give it:
        not this summary's fault, and every other would meet the same. The sender pauses
        as a whole (doubling while it lasts, capped; a ``Retry-After`` honoured up to the
        cap); this summary keeps its attempt count and is tried first after the pause."""
        self._refusals += 1
        delay = retry_delay_ms(self._refusals, self._random, base_ms=self._base, max_ms=self._max)
        if retry_after_ms is not None:
            delay = max(delay, min(retry_after_ms, self._max))
        until = self._now_ms() + delay
        self._paused_until = until
        outcome = HubOutcome("pending", short_reason(f"retrying: {reason}"), snap.attempts, until)
        await self._store(record_id, snap.version, outcome)
        logger.warning(
            "hub summary of %s (version %d): %s; the sender waits %d ms before trying again",
            record_id,
            snap.version,
            reason,
            delay,
            extra=_log_extra(record_id, snap.version, outcome.state),
        )
        return outcome.state

    async def _store(self, record_id: str, version: int, outcome: HubOutcome) -> None:
        await self.store.record_hub_outcome(record_id, version, outcome)
        for listener in list(self.on_outcome):
            listener(record_id, outcome.state)

    async def _put(
        self, record_id: str, body: bytes, token: str | None
    ) -> tuple[str, str, int | None]:
        """(verdict, reason, Retry-After in ms) of one PUT, ``token`` its bearer token;
        verdict ``credentials``: the hub refused them (401)."""
        httpx = self._httpx
        target = f"{self.url}/Bundle/{summary_id(record_id)}"
        # identity: a compressed answer could grow without bound as it is decoded.
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, "Accept-Encoding": "identity"}
        if token is not None:
            headers["Authorization"] = "Bearer " + token
        try:
            # The whole exchange is bounded, not each read: a hub that drips a byte just
            # inside the read timeout must not hold the sender for days.
            async with (
                asyncio.timeout(self._timeout_s),
                self._client.stream("PUT", target, content=body, headers=headers) as answer,
            ):
                data = bytearray()
                async for chunk in answer.aiter_raw():
                    data.extend(chunk[: MAX_ANSWER_BYTES - len(data)])
                    if len(data) >= MAX_ANSWER_BYTES:
                        break
                status = int(answer.status_code)
                retry_after = _retry_after_ms(answer.headers.get("retry-after"))
        except (httpx.TimeoutException, TimeoutError):
            return "retry", "the hub did not answer in time", None
        except httpx.HTTPError as exc:
            return "retry", f"could not reach the hub: {type(exc).__name__}: {exc}", None
        verdict = verdict_of(status)
        message = _hub_message(bytes(data))
        if token is not None:
            # A hub that echoes the token it refused: the reason is stored, logged, shown
            # by `hub status` and sent to every laptop, so the token is left out of it.
            message = message.replace(token, "(the token)")
        if status == 401:
            # Not this summary's fault: the sender's credentials (none, or a token the hub
            # no longer takes). Tried again, as a token renewed meanwhile may be taken.
            return (
                "credentials",
                short_reason(
                    f"the hub refused this server's credentials (401: {message}); "
                    "give it a token it takes (caresync serve --hub-token-file)"
                ),
                retry_after,
            )
        return verdict, short_reason(f"the hub answered {status}: {message}"), retry_after


MAX_TOKEN_CHARS = 8192
"""The longest hub token taken (an OAuth access token or a JWT is far shorter)."""

_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
"""RFC 6750's ``b64token``: what a bearer token may hold (no space, no line break)."""


def check_hub_token(token: object) -> str:
    """``token`` if it can be a bearer token; InvalidInputError saying why not."""
    if not isinstance(token, str) or not token:
        raise InvalidInputError("a hub token must be a non-empty string")
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidInputError(f"a hub token is at most {MAX_TOKEN_CHARS} characters")
    if _TOKEN.fullmatch(token) is None:
        raise InvalidInputError(
            "a hub token holds only letters, digits and -._~+/ (then = signs), as a bearer "
            "token does: no space or line break (is the file's content the token alone?)"
        )
    return token


MAX_TOKEN_FILE_BYTES = MAX_TOKEN_CHARS + 1024
"""The most of a token file read (a token, and room for blank lines around it)."""


def read_hub_token(file: str | os.PathLike[str]) -> str:
    """The bearer token ``file`` holds (its content without surrounding blank space, as an
    editor leaves a line break), checked; InvalidInputError or OSError saying why not.

    Only a regular file of UTF-8 text is read, and at most :data:`MAX_TOKEN_FILE_BYTES`
    of it: the sender reads it before each request in the server's event loop, where a
    FIFO (waiting for a writer) or a device (``/dev/zero``, endless) would stop the server.
    """
    # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below).
    fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidInputError(
                f"{file}: not a regular file (a hub token file holds the token alone)"
            )
        data = bytearray()
        while len(data) <= MAX_TOKEN_FILE_BYTES:
            chunk = os.read(fd, MAX_TOKEN_FILE_BYTES + 1 - len(data))
            if not chunk:
                break
            data.extend(chunk)
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise InvalidInputError(
            f"{file}: larger than a hub token file can be ({MAX_TOKEN_FILE_BYTES} bytes)"
        )
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(
            f"{file}: not UTF-8 text (a hub token file holds the token alone)"
        ) from None
    return check_hub_token(text.strip())


def check_token_url(url: str) -> None:
    """Refuse (InvalidInputError) a hub URL a token must not go to: not ``https://`` nor
    ``http://`` to this machine, or carrying a user name or password (``user:pass@``,
    which httpx would send as Basic credentials in place of the token)."""
    httpx = require_http()
    parsed = httpx.URL(url)
    if parsed.userinfo:
        # Not echoed: that is a password.
        raise InvalidInputError(
            f"a hub URL with a user name or password (user:pass@{parsed.host}) and a token: "
            "it would be sent in place of the token; give the URL without it"
        )
    if not private_channel(url):
        raise InvalidInputError(
            f"{url}: a hub token goes only over https:// (or plain http:// to this "
            "machine): sent in the clear, anyone on the way could use it"
        )


def private_channel(url: str) -> bool:
    """True for ``https://``, or ``http://`` to a loopback address (this machine): where
    a hub token may go."""
    httpx = require_http()
    parsed = httpx.URL(url)
    return parsed.scheme == "https" or parsed.host in ("127.0.0.1", "::1", "localhost")


def _log_extra(record_id: str, version: int, state: str) -> dict[str, object]:
    """The structured part of an outcome's log line (``--log-format json``)."""
    return {"caresync": {"event": "hub", "record": record_id, "version": version, "state": state}}


def _retry_after_ms(value: str | None) -> int | None:
    """A ``Retry-After`` of whole seconds, in ms (an HTTP date is not followed)."""
    if value is None:
        return None
    seconds = value.strip()
    # ASCII digits only: "²".isdigit() is true, and int() refuses it.
    if not seconds.isascii() or not seconds.isdigit() or len(seconds) > 9:
        return None
    return int(seconds) * 1000


def _hub_message(data: bytes) -> str:
    """What a hub's answer says: an OperationOutcome's diagnostics or text, else its text."""
    text = data.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return text.strip() or "(no message)"
    if isinstance(parsed, dict) and parsed.get("resourceType") == "OperationOutcome":
        said = []
        for issue in parsed.get("issue", [])[:3] if isinstance(parsed.get("issue"), list) else []:
            if isinstance(issue, dict):
                details = issue.get("details")
                detail_text = details.get("text") if isinstance(details, dict) else None
                for part in (issue.get("diagnostics"), detail_text):
                    if isinstance(part, str) and part:
                        said.append(part)
        if said:
            return "; ".join(said)
    return text.strip() or "(no message)"
