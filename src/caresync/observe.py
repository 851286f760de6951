"""What a running server tells its administrator: log lines, metrics and its health.

Every event that matters (a connection, a login and a failed one, an enrolment,
a refusal with its code, a push, a pull, a first-copy batch, a session ended, a
fault) goes through :class:`ServerEvents`, which writes one log line for it on
the ``caresync.server`` logger and counts it in the server's Prometheus
registry. Log lines carry their fields in ``record.caresync`` (a dict), which
:class:`JsonLogFormatter` writes as one JSON object per line. Nothing clinical
is ever logged: record ids, sizes, names of accounts and replicas only.

Gauges that describe the database (the feed head, open conflicts, laptops not
seen for a day, pending outboxes) are read from the store when ``/metrics`` is
asked for (:meth:`ServerMetrics.refresh`), not kept up to date on every write.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = [
    "METRICS_CONTENT_TYPE",
    "STALE_AFTER_MS",
    "JsonLogFormatter",
    "ServerEvents",
    "ServerMetrics",
    "StoreFigures",
]

logger = logging.getLogger("caresync.server")

STALE_AFTER_MS = 24 * 3_600_000
"""A laptop not seen for this long is counted as stale (``caresync_laptops_stale``)."""

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The Content-Type of ``/metrics`` (the Prometheus text format)."""


@dataclass(frozen=True, slots=True)
class StoreFigures:
    """What the gauges say about the database, read at one scrape."""

    feed_head: int
    records: int
    open_conflicts: int
    laptops: int
    laptops_stale: int
    laptops_pending: int
    pending_changes: int
    oldest_pending_age_s: float
    hub_pending: int = 0
    """Patient summaries not (yet) on the health hub: pending, held or failed."""


class ServerMetrics:
    """One server's Prometheus registry: counters of events, gauges of the database."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, doc, tuple(labels), registry=self.registry)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, registry=self.registry)

        self.connections = counter("caresync_connections", "Connections accepted")
        self.logins = counter("caresync_logins", "Login attempts, by outcome", ["outcome"])
        self.enrolments = counter("caresync_enrolments", "Laptops enrolled")
        self.refusals = counter(
            "caresync_refusals", "Errors sent to peers (refusals), by code", ["code"]
        )
        self.pushes = counter("caresync_pushes", "Push batches committed")
        self.pushed_updates = counter(
            "caresync_pushed_updates", "Updates committed by pushes (not those held already)"
        )
        self.pushed_bytes = counter("caresync_pushed_bytes", "Update bytes committed by pushes")
        self.pulls = counter("caresync_pulls", "Pull batches sent")
        self.pulled_updates = counter("caresync_pulled_updates", "Updates sent in pulls")
        self.pulled_bytes = counter("caresync_pulled_bytes", "Update bytes sent in pulls")
        self.live_updates = counter("caresync_live_updates", "Updates relayed live to laptops")
        self.live_bytes = counter("caresync_live_bytes", "Update bytes relayed live to laptops")
        self.copy_batches = counter("caresync_copy_batches", "First-copy batches sent")
        self.copied_records = counter("caresync_copied_records", "Records sent in first copies")
        self.copied_bytes = counter("caresync_copied_bytes", "Record bytes sent in first copies")
        self.faults = counter("caresync_faults", "Connections that failed by a fault of ours")
        self.live_dropped = counter(
            "caresync_live_dropped",
            "Live connections dropped for falling too far behind (they pull when they return)",
        )
        self.connections_open = gauge("caresync_connections_open", "Connections open now")
        self.feed_head = gauge("caresync_feed_head", "The change feed's highest sequence number")
        self.records = gauge("caresync_records", "Records stored")
        self.open_conflicts = gauge(
            "caresync_open_conflicts", "Open conflicts and findings, as conflicts list counts them"
        )
        self.laptops = gauge("caresync_laptops", "Enrolled laptops, not revoked")
        self.laptops_stale = gauge(
            "caresync_laptops_stale", "Enrolled laptops not seen for 24 hours (or never)"
        )
        self.laptops_pending = gauge(
            "caresync_laptops_pending", "Laptops that last reported changes waiting to sync"
        )
        self.pending_changes = gauge(
            "caresync_pending_changes", "Changes waiting on laptops, as they last reported"
        )
        self.oldest_pending_age = gauge(
            "caresync_oldest_pending_age_seconds",
            "Age of the oldest change waiting on a laptop, as last reported (0: none)",
        )
        self.hub_pending = gauge(
            "caresync_hub_summaries_pending",
            "Patient summaries marked for the health hub and not on it: pending, held or failed",
        )

    def refresh(self, figures: StoreFigures, connections_open: int) -> None:
        """Set the gauges from what the store says now."""
        self.connections_open.set(connections_open)
        self.feed_head.set(figures.feed_head)
        self.records.set(figures.records)
        self.open_conflicts.set(figures.open_conflicts)
        self.laptops.set(figures.laptops)
        self.laptops_stale.set(figures.laptops_stale)
        self.laptops_pending.set(figures.laptops_pending)
        self.pending_changes.set(figures.pending_changes)
        self.oldest_pending_age.set(figures.oldest_pending_age_s)
        self.hub_pending.set(figures.hub_pending)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class ServerEvents:
    """Log and count what happens on a server: one method per event, one line each."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def connected(self, peer: str) -> None:
        self.metrics.connections.inc()
        _log(logging.DEBUG, "connected", f"connection from {peer}", peer=peer)

    def logged_in(self, peer: str, user: str, organisation: str, replica: str | None) -> None:
        self.metrics.logins.labels("ok").inc()
        _log(
            logging.INFO,
            "login",
            f"{user} ({organisation}) logged in from {peer} on {replica or 'a new laptop'}",
            peer=peer,
            user=user,
            organisation=organisation,
            replica=replica,
        )

    def login_failed(self, peer: str, user: str | None, code: str, reason: str) -> None:
        self.metrics.logins.labels("failed").inc()
        _log(
            logging.WARNING,
            "login_failed",
            f"login failed from {peer} as {user or '(no user)'}: {code}: {reason}",
            peer=peer,
            user=user,
            code=code,
            reason=reason,
        )

    def enrolled(
        self,
        peer: str,
        replica: str,
        organisation: str,
        user: str,
        device_name: str,
        *,
        again: bool = False,
    ) -> None:
        """A replica enrolled; ``again``: an id the same account enrolled before and
        nothing used since, given a new secret (the first answer was lost on the way, or
        someone with that account's password took the id): a warning, since the secret
        the laptop held, if it got one, no longer logs it in."""
        self.metrics.enrolments.inc()
        if again:
            level = logging.WARNING
            message = (
                f"{user} enrolled {replica} again in {organisation}: a new secret in place "
                "of the one its enrolment's lost answer held (a laptop holding that one "
                "can no longer log in)"
            )
        else:
            level = logging.INFO
            message = (
                f"{user} enrolled {replica} ({device_name or 'no device name'}) in {organisation}"
            )
        _log(
            level,
            "enrolment",
            message,
            peer=peer,
            replica=replica,
            organisation=organisation,
            user=user,
            device_name=device_name,
            again=again,
        )

    def refused(
        self, peer: str, replica: str | None, code: str, fatal: bool, *, logged_in: bool
    ) -> None:
        """An Error sent to a peer. Its message is not logged: a refused push's quotes
        the value refused, which may be clinical. Before a login, at debug level only
        (anyone can send junk; the counter still counts it)."""
        self.metrics.refusals.labels(code).inc()
        # Before a login anyone can send junk; "internal" follows a fault, logged already.
        quiet = not logged_in or code == "internal"
        _log(
            logging.DEBUG if quiet else logging.WARNING,
            "refusal",
            f"refused {replica or peer}: {code}" + ("" if fatal else " (the session goes on)"),
            peer=peer,
            replica=replica,
            code=code,
            fatal=fatal,
        )

    def pushed(self, replica: str, updates: int, size: int, records: int, *, resent: int) -> None:
        """A committed push: the updates it added, and those the server held already."""
        self.metrics.pushes.inc()
        self.metrics.pushed_updates.inc(updates)
        self.metrics.pushed_bytes.inc(size)
        _log(
            logging.INFO,
            "push",
            f"{replica} pushed {updates} updates of {records} records ({size} bytes)"
            + (f"; {resent} held already" if resent else ""),
            replica=replica,
            updates=updates,
            bytes=size,
            records=records,
            resent=resent,
        )

    def relayed(self, updates: int, size: int) -> None:
        """Live updates sent to one connected laptop (counted, not logged)."""
        self.metrics.live_updates.inc(updates)
        self.metrics.live_bytes.inc(size)

    def live_dropped(self, peer: str, replica: str | None, entries: int, size: int) -> None:
        """A laptop fell too far behind the live updates: its queue was dropped."""
        self.metrics.live_dropped.inc()
        _log(
            logging.WARNING,
            "live_dropped",
            f"dropped the live connection of {replica or peer}: {entries} updates ({size} "
            "bytes) waited to be sent; it pulls from its checkpoint when it reconnects",
            replica=replica,
            entries=entries,
            bytes=size,
        )

    def feed_diverged(self, replica: str, reason: str) -> None:
        """A laptop read further into the change feed than this server holds: the
        database was restored from an older backup (its pull is refused; the laptop
        sends what it wrote again and pulls from the start). Counted as a refusal."""
        _log(
            logging.WARNING,
            "feed_diverged",
            f"{replica}: {reason}; it sends what it wrote again and pulls from the start",
            replica=replica,
        )

    def pulled(self, replica: str, updates: int, size: int, checkpoint: int) -> None:
        self.metrics.pulls.inc()
        self.metrics.pulled_updates.inc(updates)
        self.metrics.pulled_bytes.inc(size)
        _log(
            logging.INFO if updates else logging.DEBUG,
            "pull",
            f"{replica} pulled {updates} updates ({size} bytes), up to {checkpoint}",
            replica=replica,
            updates=updates,
            bytes=size,
            checkpoint=checkpoint,
        )

    def copied(self, replica: str, records: int, size: int, done: int, final: bool) -> None:
        self.metrics.copy_batches.inc()
        self.metrics.copied_records.inc(records)
        self.metrics.copied_bytes.inc(size)
        _log(
            logging.INFO if final else logging.DEBUG,
            "first_copy",
            f"{replica} copied {records} records ({size} bytes), {done} in all"
            + (": the first copy is complete" if final else ""),
            replica=replica,
            records=records,
            bytes=size,
            done=done,
            final=final,
        )

    def sessions_ended(self, connections: int) -> None:
        _log(
            logging.INFO,
            "sessions_ended",
            f"closed {connections} connections whose session ended (revoked, disabled, "
            "new password or expired)",
            connections=connections,
        )

    def fault(self, peer: str, exc: BaseException) -> None:
        self.metrics.faults.inc()
        logger.error(
            "connection from %s failed: %s",
            peer,
            exc,
            exc_info=exc,
            extra={"caresync": {"event": "fault", "peer": peer, "error": type(exc).__name__}},
        )


def _log(level: int, event: str, message: str, **fields: object) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, "%s", message, extra={"caresync": {"event": event, **fields}})


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, the event's fields (``event``, ``peer``, ``replica``, ...), and
    ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "caresync", None)
        if isinstance(fields, Mapping):
            line.update((str(k), v) for k, v in fields.items() if k not in line)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)
