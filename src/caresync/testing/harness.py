"""A clinic server and its laptops, for an application's tests: :class:`Clinic`, :class:`Laptop`.

Everything is real: a :class:`~caresync.server.SyncServer` on an SQLite file, listening
on 127.0.0.1; laptops that are :class:`~caresync.replica.Replica` objects on their own
SQLite files, each reaching the server through its own :class:`~caresync.testing.link.Link`
so that a test can take it offline (the link is cut: it cannot sync, live mode drops
and keeps retrying) and online again.

``Clinic(directory, transport="memory")`` runs the same clinic on the in-memory channel
(:class:`~caresync.transport.MemoryNetwork`): no sockets, each laptop's link a
:class:`~caresync.transport.MemoryLink` that cuts the same way, and an optional
``delay`` on every frame. Only what sockets alone show (TLS, a TCP proxy, HTTP on the
sync port) needs the default, ``transport="websocket"``.

Waiting is done on events, never on the clock: :meth:`Clinic.quiescent` re-checks the
databases only when something happened (a status change, a batch committed from the
server, an acknowledgement, a commit on the server, a laptop switched on or off), and
drives explicit sync rounds for laptops that are not in live mode. Every wait has an
upper bound, and running past it raises an error naming what did not settle.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import types
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher

from caresync.conflicts import DEFAULT_RULEBOOK, Rulebook
from caresync.exceptions import InvalidInputError
from caresync.replica import Replica, ReplicaState, SyncLimits, backoff_delays
from caresync.replication.epochs import FeedPosition
from caresync.server import SyncServer
from caresync.storage import SQLiteStore
from caresync.testing.checks import Snapshot, describe_differences, lag, snapshot
from caresync.testing.link import Link
from caresync.transport import MemoryLink, MemoryNetwork

__all__ = [
    "DEFAULT_PASSWORD",
    "DEFAULT_TIMEOUT_S",
    "MAX_ROUNDS",
    "TRANSPORTS",
    "Clinic",
    "Laptop",
    "NotConvergedError",
    "NotQuiescentError",
    "quick_backoff",
]

DEFAULT_PASSWORD = "caresync test passphrase"
DEFAULT_TIMEOUT_S = 10.0
TEST_PASSWORD_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
"""argon2id at its lowest cost (1 pass over 8 KiB): a clinic's default, since a harness
checks behaviour, not resistance to guessing; the library's own default (3 passes over
64 MiB) costs a tenth of a second or more at every login."""
"""Upper bound of one wait (quiescence, going live, stopping): a passing test is far below it."""
MAX_ROUNDS = 25
TRANSPORTS = ("websocket", "memory")
"""What a clinic's server and laptops talk over: websockets on 127.0.0.1, or in memory."""
"""Sync rounds :meth:`Clinic.quiescent` runs for laptops not in live mode before giving up."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def quick_backoff() -> Iterator[float]:
    """Reconnection delays for tests: a few milliseconds, never more than 50 ms."""
    return backoff_delays(0.005, maximum=0.05)


class NotQuiescentError(AssertionError):
    """The clinic did not settle in time. ``laggards`` maps each laptop's name to what it lacks.

    An AssertionError, so test runners report it as a failed expectation.
    """

    def __init__(self, message: str, laggards: Mapping[str, str]) -> None:
        super().__init__(message)
        self.laggards = dict(laggards)


class NotConvergedError(AssertionError):
    """Laptops hold other records, revisions or conflicts than the server.

    ``differences`` maps each laptop's name to its differences, one line each.
    """

    def __init__(self, message: str, differences: Mapping[str, list[str]]) -> None:
        super().__init__(message)
        self.differences = dict(differences)


class _Signal:
    """An event any source may set. Waiters clear it *before* checking, so nothing is missed."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def __call__(self, *args: object) -> None:
        self.event.set()


class Laptop(Replica):
    """A laptop replica made by a :class:`Clinic`: a real Replica with a network switch.

    :meth:`offline` cuts its link to the server (a sync raises ConnectionLostError;
    live mode drops and retries), :meth:`online` restores it. In live mode it is kept
    by the clinic (:meth:`start_live`, or ``clinic.laptop(name, live=True)``) or by the
    application calling :meth:`stay_connected` itself; either way it reconnects within
    milliseconds unless given another ``backoff``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = ""
        self._link: Link | MemoryLink | None = None
        self._changed: Callable[..., None] = lambda *args: None
        self._timeout = DEFAULT_TIMEOUT_S
        self._live_runs = 0
        self._live_task: asyncio.Task[None] | None = None
        self._live_stop: asyncio.Event | None = None
        self._error_seen = False
        # Feed entries up to here (under this feed epoch) are known to be held.
        self._verified = FeedPosition(0, None)

    def __repr__(self) -> str:
        switch = "online" if self.is_online else "offline"
        return f"<Laptop {self.name!r} {self.replica_id} {switch} {self.state.value}>"

    def _attach(
        self, name: str, link: Link | MemoryLink, changed: Callable[..., None], timeout: float
    ) -> None:
        self.name, self._link, self._changed, self._timeout = name, link, changed, timeout
        self.on_status(changed)
        self.on_received(changed)
        self.on_acknowledged(changed)

    @property
    def link(self) -> Link | MemoryLink:
        """The laptop's link to the server (a MemoryLink on the in-memory transport)."""
        if self._link is None:
            raise InvalidInputError("this laptop was not made by a Clinic; it has no link")
        return self._link

    @property
    def is_online(self) -> bool:
        """True unless :meth:`offline` cut the link (a laptop starts online)."""
        return self._link is not None and self._link.up

    @property
    def live(self) -> bool:
        """True while :meth:`stay_connected` runs."""
        return self._live_runs > 0

    def offline(self) -> None:
        """Cut the link now: open connections drop, new ones fail until :meth:`online`."""
        self.link.cut()
        self._changed()

    def online(self) -> None:
        """Restore the link. A live laptop reconnects by itself; otherwise sync as usual."""
        self.link.restore()
        self._changed()

    async def wait_for_state(self, state: ReplicaState, *, within: float | None = None) -> None:
        """Return once the laptop is in ``state`` (at once if it is already).

        E.g. after :meth:`offline`, a live laptop notices the cut a moment later. Raises
        TimeoutError naming the laptop and its state after ``within`` seconds (default:
        the clinic's timeout).
        """
        if not isinstance(state, ReplicaState):
            raise InvalidInputError(f"not a ReplicaState: {state!r}")
        reached = asyncio.Event()
        unsubscribe = self.on_status(lambda now: reached.set() if now is state else None)
        limit = self._timeout if within is None else within
        try:
            if self.state is not state:
                await asyncio.wait_for(reached.wait(), limit)
        except TimeoutError:
            raise TimeoutError(
                f"laptop {self.name!r} did not reach state {state.value} within {limit:g} s "
                f"(it is {self.state.value})"
            ) from None
        finally:
            unsubscribe()

    async def stay_connected(self, **kwargs: Any) -> None:
        """:meth:`Replica.stay_connected`, with reconnection delays of milliseconds by default."""
        kwargs.setdefault("backoff", quick_backoff)
        self._live_runs += 1
        self._changed()
        try:
            await super().stay_connected(**kwargs)
        finally:
            self._live_runs -= 1
            self._changed()

    async def start_live(self) -> None:
        """Run live mode in the background until :meth:`stop_live` (or the clinic closes).

        Returns once the laptop is ONLINE; at once if it is offline (it connects when
        put online). Raises what live mode raised if it ended first (e.g. a refusal).
        """
        if self._live_task is not None:
            raise InvalidInputError(f"laptop {self.name!r} is already in live mode")
        stop = asyncio.Event()
        reached = asyncio.Event()
        unsubscribe = self.on_status(
            lambda state: reached.set() if state is ReplicaState.ONLINE else None
        )
        task = asyncio.create_task(
            self.stay_connected(stop=stop), name=f"caresync laptop {self.name} live"
        )
        task.add_done_callback(lambda _: self._changed())
        self._live_task, self._live_stop, self._error_seen = task, stop, False
        if not self.is_online:
            unsubscribe()
            return
        waiter = asyncio.create_task(reached.wait())
        try:
            done, _ = await asyncio.wait(
                {task, waiter}, timeout=self._timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
            unsubscribe()
        if task in done:
            await self.stop_live()  # raises why live mode ended
        elif not done:
            last_error = (await self.status()).last_error
            await self.stop_live()
            raise TimeoutError(
                f"laptop {self.name!r} did not come online within {self._timeout:g} s "
                f"(state {self.state.value}, last error: {last_error})"
            )

    async def stop_live(self) -> None:
        """Stop the live mode :meth:`start_live` began; raise its error if none saw it yet."""
        task, stop = self._live_task, self._live_stop
        if task is None or stop is None:
            return
        stop.set()
        _, pending = await asyncio.wait({task}, timeout=self._timeout)
        self._live_task = self._live_stop = None
        if pending:  # stopping is prompt; this is a bug, not a slow machine
            task.cancel()
            await asyncio.wait({task})
            raise TimeoutError(f"laptop {self.name!r} did not leave live mode when told to")
        error = self._take_error(task)
        if error is not None:
            raise error

    async def _measure(self, server: SyncServer) -> bool:
        """True if in step with ``server``; remembers how far the feed was found held."""
        measured = await lag(self, server, verified=self._verified)
        self._verified = measured.verified
        return measured.settled

    def _live_failure(self) -> BaseException | None:
        """What ended the clinic-kept live mode, once (None while it runs or if stopped)."""
        task = self._live_task
        if task is None or not task.done():
            return None
        return self._take_error(task)

    def _take_error(self, task: asyncio.Task[None]) -> BaseException | None:
        if self._error_seen or task.cancelled():
            return None
        error = task.exception()
        if error is not None:
            self._error_seen = True
            error.add_note(f"(live mode of laptop {self.name!r})")
        return error


def _reconnecting(laptop: Laptop) -> bool:
    """A laptop in live mode that is not ONLINE (yet): reconnecting, or still in the sync
    that comes before it subscribes."""
    return laptop.live and laptop.state is not ReplicaState.ONLINE


def _put_back(backup: Path, database: Path) -> None:
    """Replace a stopped database by a backup, its side files moved away first (an old
    write-ahead log beside a restored file would be applied to it)."""
    for side in ("-wal", "-shm"):
        Path(f"{database}{side}").unlink(missing_ok=True)
    shutil.copyfile(backup, database)


class Clinic:
    """A running clinic server with laptops, for tests. Use ``async with Clinic(dir) as c``.

    The server's database is ``directory/server.db``, each laptop's ``directory/<name>.db``.
    One user (``user`` in ``organisation``, password ``password``) exists from the start;
    laptops enrol as that user unless told otherwise (other users are created on demand).
    ``rulebook`` is used by the server and every laptop; ``timeout`` bounds every wait.
    ``transport`` is ``"websocket"`` (default: sockets on 127.0.0.1, each link a TCP
    relay) or ``"memory"`` (a :class:`~caresync.transport.MemoryNetwork`, no sockets);
    ``delay`` (memory only) holds every frame that many seconds, both ways.
    ``network`` (memory only) is a network to share with other clinics, so that a laptop
    of one can be sent to another's server: each server listens there under its own
    name (the first ``server``); by default a clinic has a network of its own.
    ``password_hasher`` hashes the accounts' passwords on the server and the offline-login
    hash on each laptop: :data:`TEST_PASSWORD_HASHER` unless given (``PasswordHasher()``
    for production's cost).
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        organisation: str = "clinic",
        user: str = "dr.test",
        password: str = DEFAULT_PASSWORD,
        rulebook: Rulebook = DEFAULT_RULEBOOK,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: str = "websocket",
        delay: float = 0.0,
        password_hasher: PasswordHasher = TEST_PASSWORD_HASHER,
        network: MemoryNetwork | None = None,
    ) -> None:
        if transport not in TRANSPORTS:
            raise InvalidInputError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
        if delay and transport != "memory":
            raise InvalidInputError("a delay needs transport='memory' (sockets take their own)")
        if network is not None and (
            transport != "memory" or not isinstance(network, MemoryNetwork)
        ):
            raise InvalidInputError("network must be a MemoryNetwork, with transport='memory'")
        for label, text in (("organisation", organisation), ("user", user), ("password", password)):
            if not isinstance(text, str) or not text.strip():
                raise InvalidInputError(f"the clinic's {label} must be a non-empty string")
        timeout = _checked_timeout(timeout)
        self.directory = Path(directory)
        self.organisation = organisation
        self.user = user
        self.password = password
        self.rulebook = rulebook
        if not isinstance(password_hasher, PasswordHasher):
            raise InvalidInputError("password_hasher must be an argon2.PasswordHasher")
        self.password_hasher = password_hasher
        self.timeout = float(timeout)
        self.transport = transport
        self._link_delay: float | None = None  # a shared network's links take the clinic's
        self._host = "server"
        if network is not None:
            self._link_delay = delay or None
            self._host = _claim_host(network, self.directory.name)
        elif transport == "memory":
            network = MemoryNetwork(delay=delay)
            _claim_host(network, self.directory.name)
        self.network: MemoryNetwork | None = network
        """The in-memory network (``transport="memory"`` only)."""
        self._server: SyncServer | None = None
        self._port = 0
        self._started = False
        self._laptops: dict[str, Laptop] = {}
        self._users: set[tuple[str, str]] = set()
        self._signal = _Signal()
        self._stack = contextlib.AsyncExitStack()

    # ------------------------------------------------------------- life cycle

    async def start(self) -> Clinic:
        """Create the directory, start the server and create the clinic's user."""
        if self._started:
            raise InvalidInputError("this clinic was started already")
        self._started = True
        self.directory.mkdir(parents=True, exist_ok=True)
        self._stack.push_async_callback(self.stop_server)
        try:
            await self.start_server()
            await self.add_user(self.user)
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Stop live modes, close laptops, links and the server.

        Raises an error a live laptop ended with that no call has raised yet.
        """
        self._laptops.clear()
        await self._stack.aclose()

    async def __aenter__(self) -> Clinic:
        return self if self._started else await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start_server(self) -> None:
        """Start the server on its database (after :meth:`stop_server`); links follow its port."""
        if self._server is not None:
            raise InvalidInputError("the clinic's server is running already")
        server = await SyncServer.open(
            self.directory / "server.db",
            rulebook=self.rulebook,
            password_hasher=self.password_hasher,
        )
        try:
            if self.network is not None:  # the same name again: links find it as they were
                await server.listen(self.network.host(self._host))
            else:
                self._port = (await server.serve("127.0.0.1", 0)).port
        except BaseException:
            await server.close()
            raise
        server.on_commit.append(self._signal)
        self._server = server
        for laptop in self._laptops.values():
            link = laptop.link
            if isinstance(link, Link):
                link.retarget("127.0.0.1", self._port)
        self._signal()

    async def stop_server(self) -> None:
        """Stop the server (connections drop; laptops keep working offline)."""
        server, self._server = self._server, None
        if server is not None:
            await server.close()
            self._signal()

    async def restart_server(self) -> None:
        """Stop the server and start it again on the same database."""
        await self.stop_server()
        await self.start_server()

    async def back_up_server(self, name: str = "server-backup.db") -> Path:
        """An online backup of the running server's database, as ``caresync backup``
        makes one, in the clinic's directory; returns its path (for
        :meth:`restore_server`)."""
        if not isinstance(name, str) or not name or Path(name).name != name:
            raise InvalidInputError(f"a backup's name is a file name, not {name!r}")
        target = self.directory / name
        if target == self.directory / "server.db" or target.exists():
            raise InvalidInputError(f"{target} exists already: name another backup")
        store = self.server.store
        if not isinstance(store, SQLiteStore):  # pragma: no cover - a clinic is on SQLite
            raise InvalidInputError("the clinic's server is not on an SQLite file")
        await store.backup(target)
        return target

    async def restore_server(self, backup: str | Path) -> None:
        """The server goes back in time: it is stopped, its database (and side files)
        replaced by ``backup`` (from :meth:`back_up_server`), and started again, as
        docs/operations.md restores one. Laptops find out at their next sync."""
        source = Path(backup)
        if not await asyncio.to_thread(source.is_file):
            raise InvalidInputError(f"no backup at {source}")
        await self.stop_server()
        await asyncio.to_thread(_put_back, source, self.directory / "server.db")
        await self.start_server()

    # ------------------------------------------------------------ the pieces

    @property
    def server(self) -> SyncServer:
        """The running server."""
        if self._server is None:
            raise InvalidInputError("the clinic's server is not running (start the clinic first)")
        return self._server

    def _running_port(self) -> int:
        self.server  # noqa: B018 - raises if the server is not running
        return self._port

    @property
    def url(self) -> str:
        """The server's own address (laptops go through their links instead)."""
        return self.server.url

    @property
    def laptops(self) -> Mapping[str, Laptop]:
        """The laptops by name, in the order they were made."""
        return types.MappingProxyType(self._laptops)

    async def add_user(self, username: str, *, organisation: str | None = None) -> None:
        """Create an account with the clinic's password (in the clinic's organisation)."""
        org = organisation or self.organisation
        await self.server.add_user(org, username, self.password)
        self._users.add((org, username))

    async def laptop(
        self,
        name: str,
        *,
        user: str | None = None,
        organisation: str | None = None,
        live: bool = False,
        limits: SyncLimits | None = None,
    ) -> Laptop:
        """A new laptop database, enrolled (with its first copy made) as ``user``.

        ``live=True`` keeps it in live mode (:meth:`Laptop.start_live`); otherwise it
        syncs when told to (``await laptop.sync()``, or :meth:`quiescent`).
        """
        port = self._running_port()
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name == "server":
            raise InvalidInputError(
                f"a laptop name is 1-64 letters, digits, '.', '_' or '-' (not 'server'): {name!r}"
            )
        if name in self._laptops:
            raise InvalidInputError(f"this clinic already has a laptop named {name!r}")
        org = organisation or self.organisation
        username = user or self.user
        if (org, username) not in self._users:
            await self.add_user(username, organisation=org)
        async with contextlib.AsyncExitStack() as undo:
            link: Link | MemoryLink
            if self.network is not None:
                link = self.network.link(
                    _link_name(self.network, self._host, name),
                    to=self._host,
                    delay=self._link_delay,
                )
            else:
                link = await Link.open("127.0.0.1", port)
            undo.push_async_callback(link.close)
            laptop = await self._open_laptop(name, link, limits=limits, create=True)
            undo.push_async_callback(laptop.close)
            await laptop.enrol(
                link.url,
                username=username,
                password=self.password,
                organisation=org,
                device_name=name,
            )
            undo.pop_all()  # enrolled: from now on the clinic closes it
        self._stack.push_async_callback(link.close)
        return await self._keep(laptop, live=live)

    async def log_in(self, laptop: Laptop, username: str) -> None:
        """Log ``username`` in on ``laptop`` online (a real password login through its
        link, the account created in the laptop's organisation if new): from then on
        the laptop's entries are written as that clinician.

        The laptop must be online and not in live mode. Afterwards the clinician can
        also log in there offline (``laptop.login_offline(username, clinic.password)``).
        """
        self._own(laptop)
        org = laptop.identity.organisation or self.organisation
        if (org, username) not in self._users:
            await self.add_user(username, organisation=org)
        await laptop.login(username, self.password, organisation=org, url=laptop.link.url)

    def _own(self, laptop: object) -> Laptop:
        """``laptop`` if it is one of this clinic's laptops as they are now; else an
        InvalidInputError saying which object to pass."""
        if isinstance(laptop, Laptop):
            current = self._laptops.get(laptop.name)
            if current is laptop:
                return laptop
            if current is not None and current._link is laptop._link:
                raise InvalidInputError(
                    f"laptop {laptop.name!r} was reopened and this object closed: use the "
                    f"Laptop reopen() returned (clinic.laptops[{laptop.name!r}])"
                )
            raise InvalidInputError(
                f"laptop {laptop.name!r} is not a laptop of this clinic (another clinic "
                "made it): pass a Laptop this clinic's laptop() made"
            )
        raise InvalidInputError(
            f"not a laptop of this clinic: {laptop!r} (pass the Laptop objects "
            "clinic.laptop() returned, e.g. clinic.laptops[name])"
        )

    async def reopen(self, name: str, *, live: bool = False) -> Laptop:
        """Close a laptop's database and open it again, as when its application restarts.

        Returns the new :class:`Laptop` (the old object is closed). It keeps its link,
        online or offline as it was, and everything its database holds, outbox included.
        """
        old = self._laptops.get(name)
        if old is None:
            raise InvalidInputError(f"this clinic has no laptop named {name!r}")
        await old.stop_live()
        await old.close()
        laptop = await self._open_laptop(name, old.link, limits=old.limits, create=False)
        return await self._keep(laptop, live=live)

    async def _open_laptop(
        self, name: str, link: Link | MemoryLink, *, limits: SyncLimits | None, create: bool
    ) -> Laptop:
        opened = await Laptop.open(
            self.directory / f"{name}.db",
            create=create,
            rulebook=self.rulebook,
            limits=limits,
            connector=link if isinstance(link, MemoryLink) else None,
            password_hasher=self.password_hasher,
        )
        if not isinstance(opened, Laptop):  # pragma: no cover - Replica.open builds cls()
            await opened.close()
            raise TypeError("Replica.open did not build a Laptop")
        opened._attach(name, link, self._signal, self.timeout)
        return opened

    async def _keep(self, laptop: Laptop, *, live: bool) -> Laptop:
        """From now on the clinic closes ``laptop``; start its live mode if asked."""
        self._laptops[laptop.name] = laptop
        self._stack.push_async_callback(laptop.close)
        self._stack.push_async_callback(laptop.stop_live)
        self._signal()
        if live:
            await laptop.start_live()
        return laptop

    # -------------------------------------------------------------- settling

    def _settling(self) -> list[Laptop]:
        """The laptops quiescence is about: online, and not locked by a revocation.

        A locked laptop still in live mode counts until live mode has ended, so that
        what ended it is raised, not passed over.
        """
        return [
            lap
            for lap in self._laptops.values()
            if lap.is_online and not (lap.locked and not lap.live)
        ]

    # The bound is ours, not the caller's asyncio.timeout: running past it must say which
    # laptop did not settle, which a cancellation from outside cannot.
    async def quiescent(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until every online laptop holds what the server holds, and vice versa.

        That is: its outbox is empty (the server acknowledged every local change, and
        still holds them: a restored server may not) and it holds every entry of the
        server's change feed its organisation may see (its checkpoint trusted only if
        the server's feed still labels it so).
        Laptops in live mode are waited for, until they are ``ONLINE`` again too; the
        others are synced, one explicit round
        each, as often as needed (at most :data:`MAX_ROUNDS` rounds). Offline and
        locked laptops are left out. Raises :class:`NotQuiescentError` naming each
        laptop that did not settle within ``timeout`` (default: the clinic's), and
        raises at once what a laptop's sync or live mode raised.
        """
        server = self.server
        limit = self.timeout if timeout is None else _checked_timeout(timeout)
        try:
            async with asyncio.timeout(limit) as deadline:
                await self._settle(server)
        except TimeoutError:
            if not deadline.expired():
                raise
            laggards = await self._laggards(server)
            if laggards:
                raise NotQuiescentError(
                    f"the clinic did not settle within {limit:g} s: " + _listing(laggards),
                    laggards,
                ) from None

    def _raise_live_failure(self) -> None:
        """Raise what ended a laptop's clinic-kept live mode, if nobody saw it yet."""
        for laptop in self._laptops.values():
            failure = laptop._live_failure()
            if failure is not None:
                raise failure

    async def _settle(self, server: SyncServer) -> None:
        rounds = 0
        while True:
            self._signal.event.clear()  # before checking: whatever happens next wakes us
            self._raise_live_failure()
            lagging = [
                lap
                for lap in self._settling()
                # Locked: live mode ending. Live and not ONLINE: still reconnecting or
                # finishing its sync (it may hold everything before it says ONLINE).
                if lap.locked or _reconnecting(lap) or not await lap._measure(server)
            ]
            # Again: a live mode that ended while the laptops were measured is raised as
            # itself, not met again as a sync round's error (then raised a second time).
            self._raise_live_failure()
            if not lagging:
                return
            by_rounds = [lap for lap in lagging if not lap.live]
            if not by_rounds:
                await self._signal.event.wait()
                continue
            rounds += 1
            if rounds > MAX_ROUNDS:
                laggards = await self._laggards(server)
                raise NotQuiescentError(
                    f"the clinic did not settle after {MAX_ROUNDS} sync rounds: "
                    + _listing(laggards),
                    laggards,
                )
            for laptop in by_rounds:
                try:
                    await laptop.sync()
                except Exception as exc:
                    exc.add_note(f"(syncing laptop {laptop.name!r} to quiescence)")
                    raise

    async def _laggards(self, server: SyncServer) -> dict[str, str]:
        laggards: dict[str, str] = {}
        for laptop in self._settling():
            behind = await lag(laptop, server, count_all=True)
            if behind.settled and not laptop.locked and not _reconnecting(laptop):
                continue
            mode = "live" if laptop.live else "synced in rounds"
            if not behind.settled:
                what = behind.describe()
            elif laptop.locked:
                what = "locked, its live mode not ended"
            else:
                what = "in live mode, not online again yet"
            text = f"({mode}, state {laptop.state.value}) {what}"
            last_error = (await laptop.status()).last_error
            if last_error is not None:
                text += f"; last error: {last_error}"
            laggards[laptop.name] = text
        return laggards

    async def assert_converged(self, *laptops: Laptop) -> None:
        """Check that laptops (default: every online one) hold exactly what the server holds.

        Compares every record's revision ids, the open conflicts the replica lists (as
        its ``conflicts()`` lists them) and its conflict index rows with the server's
        records of the laptop's organisation; call it after :meth:`quiescent`. Raises
        :class:`NotConvergedError` listing the differences.
        """
        server = self.server
        checked = [self._own(laptop) for laptop in laptops] or self._settling()
        expected: dict[str | None, Snapshot] = {}
        differences: dict[str, list[str]] = {}
        for laptop in checked:
            organisation = laptop.identity.organisation
            if organisation not in expected:
                expected[organisation] = await snapshot(
                    server.store, self.rulebook, organisation=organisation
                )
            lines = describe_differences(
                expected[organisation], await snapshot(laptop.store, self.rulebook)
            )
            if lines:
                differences[laptop.name] = lines
        if differences:
            listing = {name: ", ".join(lines) for name, lines in differences.items()}
            raise NotConvergedError(
                "laptops differ from the server: " + _listing(listing), differences
            )


_HOSTS: weakref.WeakKeyDictionary[MemoryNetwork, set[str]] = weakref.WeakKeyDictionary()
"""The server names clinics took on each network (a stopped server keeps its name)."""


def _claim_host(network: MemoryNetwork, directory_name: str) -> str:
    """A name for a clinic's server on ``network`` no other clinic took: ``server`` first,
    then the clinic's directory name (``clinic_factory("second")``: ``memory://second``)."""
    taken = _HOSTS.setdefault(network, set())
    candidates = ["server", directory_name]
    candidates += [f"server-{n}" for n in range(2, len(taken) + 3)]
    for name in candidates:
        if _NAME.fullmatch(name) and name not in taken and not network.listening(name):
            taken.add(name)
            return name
    raise AssertionError("unreachable: more candidates than names taken")  # pragma: no cover


def _link_name(network: MemoryNetwork, host: str, laptop: str) -> str:
    """The laptop's name, or, where another clinic's laptop of that name shares the
    network, ``<server name>.<laptop>``: a network gives one link per name."""
    for name in (laptop, f"{host}.{laptop}"):
        if _NAME.fullmatch(name) and name not in network.links:
            return name
    raise InvalidInputError(
        f"another clinic on this network has a laptop named {laptop!r}, and "
        f"{host}.{laptop} is not a link name either: name this laptop otherwise"
    )


def _checked_timeout(timeout: object) -> float:
    """A wait's bound in seconds: a positive number (not a bool, not NaN)."""
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not timeout > 0:
        raise InvalidInputError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return float(timeout)


def _listing(by_laptop: Mapping[str, str]) -> str:
    return "; ".join(f"laptop {name!r} {text}" for name, text in by_laptop.items())
