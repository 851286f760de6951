"""The pytest fixtures: ``clinic`` and ``clinic_factory``. Cheap to import.

They are async fixtures run by **pytest-asyncio** (``pip install "caresync[testing]"``
brings it). Without it, or with it switched off (``-p no:asyncio``), a test that asks
for one fails at once with a message naming pytest-asyncio, instead of pytest's
error about an async fixture nothing ran.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import pytest

if TYPE_CHECKING:
    from caresync.conflicts import Rulebook
    from caresync.testing.harness import Clinic
    from caresync.transport import MemoryNetwork

__all__ = [
    "MISSING_ASYNCIO",
    "SUBSTANCES_OPTION",
    "TRANSPORT_OPTION",
    "ClinicFactory",
    "caresync_asyncio",
    "caresync_rulebook",
    "caresync_transport",
    "clinic",
    "clinic_factory",
    "pytest_addoption",
]

F = TypeVar("F", bound=Callable[..., Any])

MISSING_ASYNCIO = (
    "caresync's `clinic` and `clinic_factory` fixtures are async and need the pytest-asyncio "
    'plugin, which {why}: install it with `pip install "caresync[testing]"` (or '
    '`pip install pytest-asyncio`), and set `asyncio_mode = "auto"` in your pytest '
    "configuration or mark the tests with `@pytest.mark.asyncio`"
)
"""The message of a test that asks for a clinic fixture when pytest-asyncio cannot run it."""

_register: Any
try:
    import pytest_asyncio
except ImportError:
    _ASYNCIO_INSTALLED = False
    _register = pytest.fixture
else:
    _ASYNCIO_INSTALLED = True
    _register = pytest_asyncio.fixture


def _fixture(function: F) -> F:
    """Declare an async fixture (returns pytest's fixture object, typed as the function)."""
    return cast(F, _register(function))


@pytest.fixture
def caresync_asyncio(request: pytest.FixtureRequest) -> None:
    """Fail with a clear message when pytest-asyncio cannot run the clinic fixtures.

    A plain fixture the async ones depend on: it runs first, so the test fails here,
    naming the missing plugin.
    """
    if not _ASYNCIO_INSTALLED:
        pytest.fail(MISSING_ASYNCIO.format(why="is not installed"), pytrace=False)
    if not request.config.pluginmanager.hasplugin("asyncio"):
        pytest.fail(MISSING_ASYNCIO.format(why="is switched off in this run"), pytrace=False)


SUBSTANCES_OPTION = "caresync_substances"
"""The ini key (and, with dashes, the command-line option) naming a substance table."""


TRANSPORT_OPTION = "caresync_transport"
"""The ini key (and, with dashes, the command-line option) choosing the clinics' transport."""


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--caresync-substances FILE``, ``--caresync-transport websocket|memory`` and the
    ini keys ``caresync_substances`` and ``caresync_transport``."""
    help_text = (
        "the allergy check's substance table for every caresync clinic fixture "
        "(JSON in the bundled table's format; a relative ini path is read from the ini "
        "file's directory)"
    )
    parser.getgroup("caresync").addoption(
        "--caresync-substances", dest=SUBSTANCES_OPTION, metavar="FILE", help=help_text
    )
    parser.addini(SUBSTANCES_OPTION, help_text, default="")
    transport_help = (
        "what every caresync clinic fixture runs on: websocket (default; sockets on "
        "127.0.0.1) or memory (the in-memory channel: no sockets, links cut the same way)"
    )
    parser.getgroup("caresync").addoption(
        "--caresync-transport",
        dest=TRANSPORT_OPTION,
        choices=("websocket", "memory"),
        help=transport_help,
    )
    parser.addini(TRANSPORT_OPTION, transport_help, default="websocket")


@pytest.fixture
def caresync_transport(pytestconfig: pytest.Config) -> str:
    """What the clinics the fixtures make run on: ``"websocket"`` or ``"memory"``.

    ``--caresync-transport``, else the ini key ``caresync_transport``, else websocket.
    Override it (in a module or a ``conftest.py``, or parametrize it) to run tests on
    the in-memory channel.
    """
    given = pytestconfig.getoption(TRANSPORT_OPTION)
    if given:
        return str(given)
    listed = str(pytestconfig.getini(TRANSPORT_OPTION)).strip() or "websocket"
    if listed not in ("websocket", "memory"):
        pytest.fail(
            f"ini key {TRANSPORT_OPTION} must be websocket or memory, not {listed!r}",
            pytrace=False,
        )
    return listed


def _substances_path(config: pytest.Config) -> Path | None:
    given = config.getoption(SUBSTANCES_OPTION)
    if given:
        return Path(given)
    listed = str(config.getini(SUBSTANCES_OPTION)).strip()
    if not listed:
        return None
    base = config.inipath.parent if config.inipath is not None else config.rootpath
    return base / listed


@pytest.fixture(scope="session")
def caresync_rulebook(pytestconfig: pytest.Config) -> Rulebook:
    """The rulebook of every clinic the fixtures make (unless a test passes its own).

    The default rulebook, with the substance table named by ``--caresync-substances``
    or the ini key ``caresync_substances`` when one is. Override this fixture in a
    ``conftest.py`` to give every clinic an application's own rules.
    """
    from caresync.conflicts import DEFAULT_RULEBOOK, Rulebook, SubstanceTable
    from caresync.exceptions import InvalidInputError

    path = _substances_path(pytestconfig)
    if path is None:
        return DEFAULT_RULEBOOK
    try:
        return Rulebook(substances=SubstanceTable.from_json(path.read_bytes()))
    except OSError as exc:
        pytest.fail(f"cannot read the caresync substance table {path}: {exc}", pytrace=False)
    except InvalidInputError as exc:
        pytest.fail(f"{path}: {exc}", pytrace=False)


class ClinicFactory(Protocol):
    """``await clinic_factory(name="clinic", **options)``: another started :class:`Clinic`.

    Its files go to ``tmp_path/<name>``; ``options`` are :class:`Clinic`'s keyword
    arguments (``organisation``, ``user``, ``password``, ``rulebook``, ``timeout``,
    ``transport``, ``delay``); ``rulebook`` defaults to the ``caresync_rulebook`` fixture,
    ``transport`` to the ``caresync_transport`` fixture.
    """

    def __call__(self, name: str = "clinic", **options: Any) -> Awaitable[Clinic]: ...


@_fixture
async def clinic_factory(
    caresync_asyncio: None,
    caresync_rulebook: Rulebook,
    tmp_path: Path,
    caresync_transport: str,
) -> AsyncIterator[ClinicFactory]:
    """Make started clinics in ``tmp_path``; all are closed after the test."""
    from caresync.exceptions import InvalidInputError
    from caresync.testing.harness import Clinic
    from caresync.transport import MemoryNetwork

    made: dict[str, Clinic] = {}
    transport = caresync_transport
    networks: list[MemoryNetwork] = []  # one for the test's clinics on memory, made once

    async def make(name: str = "clinic", **options: Any) -> Clinic:
        if name in made:
            raise InvalidInputError(f"this test already has a clinic named {name!r}")
        options.setdefault("rulebook", caresync_rulebook)
        options.setdefault("transport", transport)
        if options["transport"] == "memory" and "network" not in options:
            # Shared: a laptop sent to another clinic's server reaches it, as on sockets.
            networks[:] = networks or [MemoryNetwork()]
            options["network"] = networks[0]
        clinic = Clinic(tmp_path / name, **options)
        await clinic.start()
        made[name] = clinic
        return clinic

    async with _closing(made):
        yield make


@_fixture
async def clinic(clinic_factory: ClinicFactory) -> Clinic:
    """A started clinic: a server (on 127.0.0.1, or in memory with ``caresync_transport``)
    with user ``dr.test`` in ``clinic``."""
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
