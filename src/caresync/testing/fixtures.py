"""The pytest fixtures: ``clinic`` and ``clinic_factory``. Cheap to import.

They are async fixtures for pytest-asyncio; without it they are plain pytest fixtures,
which another async plugin (anyio's) may run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import pytest

if TYPE_CHECKING:
    from caresync.testing.harness import Clinic

__all__ = ["ClinicFactory", "clinic", "clinic_factory"]

F = TypeVar("F", bound=Callable[..., Any])

_register: Any
try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - pytest-asyncio is in caresync's test extra
    _register = pytest.fixture
else:
    _register = pytest_asyncio.fixture


def _fixture(function: F) -> F:
    """Declare an async fixture (returns pytest's fixture object, typed as the function)."""
    return cast(F, _register(function))


class ClinicFactory(Protocol):
    """``await clinic_factory(name="clinic", **options)``: another started :class:`Clinic`.

    Its files go to ``tmp_path/<name>``; ``options`` are :class:`Clinic`'s keyword
    arguments (``organisation``, ``user``, ``password``, ``rulebook``, ``timeout``).
    """

    def __call__(self, name: str = "clinic", **options: Any) -> Awaitable[Clinic]: ...


@_fixture
async def clinic_factory(tmp_path: Path) -> AsyncIterator[ClinicFactory]:
    """Make started clinics in ``tmp_path``; all are closed after the test."""
    from caresync.exceptions import InvalidInputError
    from caresync.testing.harness import Clinic

    made: dict[str, Clinic] = {}

    async def make(name: str = "clinic", **options: Any) -> Clinic:
        if name in made:
            raise InvalidInputError(f"this test already has a clinic named {name!r}")
        clinic = Clinic(tmp_path / name, **options)
        await clinic.start()
        made[name] = clinic
        return clinic

    async with _closing(made):
        yield make


@_fixture
async def clinic(clinic_factory: ClinicFactory) -> Clinic:
    """A started clinic: a server on 127.0.0.1 with user ``dr.test`` in ``clinic``."""
    return await clinic_factory()


class _closing:
    """Close every clinic made, the last first, even if closing one fails."""

    def __init__(self, made: dict[str, Clinic]) -> None:
        self.made = made

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        from contextlib import AsyncExitStack

        async with AsyncExitStack() as stack:
            for made in self.made.values():
                stack.push_async_callback(made.close)
