"""A network in memory: servers listen on ``memory://<name>``, laptops connect through links.

The in-memory twin of websockets over TCP, for tests, simulations and the
state machine: a :class:`~caresync.server.SyncServer` listens with
``await server.listen(network.host("server"))`` and each laptop gets its own
:class:`MemoryLink` (``Replica.open(path, connector=network.link("north"))``),
which a test can cut and restore, and which may add a delay to every frame::

    network = MemoryNetwork()
    await server.listen(network.host("server"))
    north = network.link("north")
    laptop = await Replica.open(path, connector=north)
    await laptop.enrol(north.url, ...)
    north.cut()       # open channels drop, new connections fail until restore()

A server restarted on the same name is reached again by the same URL, as a
restarted server on the same port is.
"""

from __future__ import annotations

import re
import ssl as ssl_module

from caresync.exceptions import ConnectionLostError, InvalidInputError
from caresync.transport.base import ChannelHandler
from caresync.transport.memory import MemoryChannel, MemoryListener

__all__ = ["MEMORY_SCHEME", "MemoryHost", "MemoryLink", "MemoryNetwork", "memory_url"]

MEMORY_SCHEME = "memory://"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def memory_url(url: object) -> str:
    """The host name of a ``memory://<name>`` URL; InvalidInputError otherwise."""
    if not isinstance(url, str):
        raise InvalidInputError(f"a server URL must be a string, not {type(url).__name__}")
    name = url[len(MEMORY_SCHEME) :] if url.startswith(MEMORY_SCHEME) else None
    if name is None or not _NAME.fullmatch(name):
        raise InvalidInputError(
            f"not an in-memory server URL {url!r:.200}: expected memory://<name> "
            "(1-64 letters, digits, '.', '_' or '-')"
        )
    return name


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInputError(f"a {what} name is 1-64 letters, digits, '.', '_' or '-': {name!r}")
    return name


def _check_delay(delay: object) -> float:
    if not isinstance(delay, (int, float)) or isinstance(delay, bool) or not 0 <= delay <= 60:
        raise InvalidInputError(f"delay must be a number of seconds from 0 to 60, not {delay!r}")
    return float(delay)


class MemoryNetwork:
    """Where in-memory servers listen and laptops connect. One per test or simulation."""

    def __init__(self, *, delay: float = 0.0) -> None:
        """``delay``: seconds every frame of every new link takes (a link may set its own)."""
        self.delay = _check_delay(delay)
        self._listeners: dict[str, MemoryListener] = {}
        self._links: dict[str, MemoryLink] = {}

    def host(self, name: str = "server") -> MemoryHost:
        """Where a server listens: an :class:`~caresync.transport.base.Acceptor`."""
        return MemoryHost(self, _check_name(name, "host"))

    def link(self, name: str, *, to: str = "server", delay: float | None = None) -> MemoryLink:
        """A laptop's link (its :class:`~caresync.transport.base.Connector`), made once per
        name: asking again for a name gives the same link."""
        _check_name(name, "link")
        link = self._links.get(name)
        if link is None:
            link = MemoryLink(self, name, _check_name(to, "host"))
            self._links[name] = link
        if delay is not None:
            link.delay = _check_delay(delay)
        return link

    @property
    def links(self) -> dict[str, MemoryLink]:
        """The links made so far, by name."""
        return dict(self._links)

    def listening(self, name: str) -> bool:
        """True while a server listens on ``memory://<name>``."""
        return name in self._listeners

    def _register(self, listener: MemoryListener, name: str) -> None:
        if name in self._listeners:
            raise ConnectionLostError(f"{MEMORY_SCHEME}{name} is in use by another listener")
        self._listeners[name] = listener

    def _unregister(self, name: str, listener: MemoryListener) -> None:
        if self._listeners.get(name) is listener:
            del self._listeners[name]

    async def _connect(self, host: str, client: str, delay: float) -> MemoryChannel:
        listener = self._listeners.get(host)
        if listener is None or listener.closed:
            raise ConnectionLostError(f"cannot connect to {MEMORY_SCHEME}{host}: nothing listens")
        return await listener.connect(client, delay=delay)


class MemoryHost:
    """A name on a :class:`MemoryNetwork` a server listens on (``memory://<name>``)."""

    def __init__(self, network: MemoryNetwork, name: str) -> None:
        self.network = network
        self.name = name

    @property
    def url(self) -> str:
        return MEMORY_SCHEME + self.name

    async def listen(
        self, handler: ChannelHandler, *, max_frame_bytes: int, max_queued_frames: int
    ) -> MemoryListener:
        """Start accepting on this name (ConnectionLostError if a listener holds it)."""
        listener = MemoryListener(
            handler,
            self.name,
            max_frame_bytes=max_frame_bytes,
            max_queued_frames=max_queued_frames,
            on_close=lambda closing: self.network._unregister(self.name, closing),
        )
        self.network._register(listener, self.name)
        return listener


class MemoryLink:
    """One laptop's way onto a :class:`MemoryNetwork`, which a test can cut.

    A :class:`~caresync.transport.base.Connector`: pass it to ``Replica.open`` or
    ``Replica.from_store`` as ``connector``. :meth:`cut` drops the link's open
    channels at once (both ends see ConnectionLostError, frames in flight are
    lost) and refuses new connections until :meth:`restore`.
    """

    def __init__(self, network: MemoryNetwork, name: str, target: str) -> None:
        self.network = network
        self.name = name
        self.target = target
        self.delay = network.delay
        """Seconds every frame of a new connection takes, both ways."""
        self._up = True
        self._open: set[MemoryChannel] = set()
        self.connects = 0
        """Connections opened through this link so far."""

    def __repr__(self) -> str:
        return f"<MemoryLink {self.name} -> {self.url} {'up' if self._up else 'cut'}>"

    @property
    def url(self) -> str:
        """The URL of the server this link leads to (the laptop enrols to it)."""
        return MEMORY_SCHEME + self.target

    @property
    def up(self) -> bool:
        """False while the link is cut."""
        return self._up

    @property
    def connections(self) -> int:
        """How many of this link's channels are open right now."""
        self._open = {channel for channel in self._open if not channel.closed}
        return len(self._open)

    def check_url(self, url: object, *, insecure: bool = False) -> str:
        """``url`` if it is a ``memory://<name>`` URL (nothing crosses a network: no TLS
        policy applies, so ``insecure`` changes nothing)."""
        memory_url(url)
        return str(url)

    async def connect(self, url: str, *, ssl: ssl_module.SSLContext | None = None) -> MemoryChannel:
        """A channel to the server at ``url``; ConnectionLostError while cut or if
        nothing listens there. ``ssl`` is ignored (no TLS in memory)."""
        host = memory_url(url)
        if not self._up:
            raise ConnectionLostError(f"cannot connect to {url}: the link {self.name} is cut")
        channel = await self.network._connect(host, self.name, self.delay)
        self.connects += 1
        self._open.add(channel)
        return channel

    def cut(self) -> None:
        """Drop every open channel of this link now and refuse new ones until :meth:`restore`."""
        self._up = False
        channels, self._open = self._open, set()
        for channel in channels:
            channel.cut()

    def drop(self) -> None:
        """Drop the open channels once, leaving the link up (a blip: reconnecting works)."""
        channels, self._open = self._open, set()
        for channel in channels:
            channel.cut()

    def restore(self) -> None:
        """Let connections through again (dropped ones stay dropped: the laptop reconnects)."""
        self._up = True

    async def close(self) -> None:
        """Cut the link for good (as :meth:`cut`; :meth:`restore` may still reopen it)."""
        self.cut()
