"""Patient summaries kept current on a regional health hub: a durable outbox.

A record marked with ``true`` at :data:`HUB_PATH` (``caresync hub enable``; a
replicated revision, so a laptop marks it offline) has its summary — an
International-Patient-Summary-shaped FHIR document Bundle
(:mod:`caresync.hub.summary`) — kept on the hub by the clinic's server
(``caresync serve --hub URL``): each push that changes it queues its new version
in the server's outbox in the push's own transaction, and the sender
(:mod:`caresync.hub.sender`) PUTs it, holding it while a conflict is open and
retrying what may pass later. :mod:`caresync.hub.status` says where each stands,
on the server or on a laptop. See docs/fhir.md and docs/operations.md.

This package's ``__init__`` loads only the pure core (:mod:`caresync.hub.model`):
the summary needs the ``fhir`` extra, the sender ``httpx`` (the ``hub`` extra).
"""

from caresync.hub.model import (
    HUB_PATH,
    RETRY_BASE_MS,
    RETRY_MAX_MS,
    HubSummary,
    hold_reason,
    hub_mark,
    is_enabled,
    retry_delay_ms,
    verdict_of,
)

__all__ = [
    "HUB_PATH",
    "RETRY_BASE_MS",
    "RETRY_MAX_MS",
    "HubSummary",
    "hold_reason",
    "hub_mark",
    "is_enabled",
    "retry_delay_ms",
    "verdict_of",
]
