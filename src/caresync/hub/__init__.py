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

from typing import Any

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
    "HubSender",
    "HubSnapshot",
    "HubSummary",
    "hold_reason",
    "hub_mark",
    "is_enabled",
    "laptop_summaries",
    "retry_delay_ms",
    "server_summaries",
    "summary_bundle",
    "summary_bytes",
    "summary_id",
    "verdict_of",
]

# Loaded on first use: the FHIR mapping imports this package's core (the mark's path),
# so the modules built on the mapping cannot be imported while it loads.
_LAZY = {
    "HubSender": "caresync.hub.sender",
    "HubSnapshot": "caresync.hub.sender",
    "summary_bundle": "caresync.hub.summary",
    "summary_bytes": "caresync.hub.summary",
    "summary_id": "caresync.hub.summary",
    "laptop_summaries": "caresync.hub.status",
    "server_summaries": "caresync.hub.status",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'caresync.hub' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # The lazily loaded names too, so that dir(), help() and completion show them.
    return sorted({*globals(), *__all__})
