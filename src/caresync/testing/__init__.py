"""Test an application that embeds caresync: a clinic server and laptops in a few lines.

Also a pytest plugin (entry point ``caresync``: :mod:`caresync.testing.plugin`), loaded
wherever caresync is installed. It only adds two fixtures, ``clinic`` and
``clinic_factory`` (they need pytest-asyncio: ``pip install "caresync[testing]"``),
and imports nothing heavy until a test asks for one::

    async def test_visit(clinic):
        north = await clinic.laptop("north")
        south = await clinic.laptop("south", live=True)
        north.offline()
        ...                                  # edits on north, with no network
        north.online()
        await clinic.quiescent()             # every online laptop holds what the server holds
        await clinic.assert_converged()

Without pytest: ``async with Clinic(directory) as clinic: ...``. See docs/testing.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from caresync.testing.channel_suite import ChannelSuite
    from caresync.testing.harness import (
        DEFAULT_PASSWORD,
        Clinic,
        Laptop,
        NotConvergedError,
        NotQuiescentError,
        quick_backoff,
    )
    from caresync.testing.link import Link

try:
    from caresync.testing.fixtures import ClinicFactory, clinic, clinic_factory
except ImportError as exc:  # the harness works without pytest; only the fixtures need it
    if exc.name != "pytest":
        raise

__all__ = [
    "DEFAULT_PASSWORD",
    "ChannelSuite",
    "Clinic",
    "ClinicFactory",
    "Laptop",
    "Link",
    "NotConvergedError",
    "NotQuiescentError",
    "clinic",
    "clinic_factory",
    "quick_backoff",
]

# The harness pulls in the server, the replica and websockets: import it on first use,
# so that every pytest run where caresync is installed stays as fast as without it.
_LAZY = {
    "DEFAULT_PASSWORD": "caresync.testing.harness",
    "Clinic": "caresync.testing.harness",
    "Laptop": "caresync.testing.harness",
    "NotConvergedError": "caresync.testing.harness",
    "NotQuiescentError": "caresync.testing.harness",
    "quick_backoff": "caresync.testing.harness",
    "Link": "caresync.testing.link",
    "ChannelSuite": "caresync.testing.channel_suite",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'caresync.testing' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # The lazily loaded names too, so that dir(), help() and completion show them.
    return sorted({*globals(), *__all__})
