"""The admin page's routes on the sync port, answered before the websocket upgrade.

``GET /admin`` (the page), ``GET /admin/state.json`` (the same, for scripts) and
``GET /admin/admin.css`` (its stylesheet, which needs no login: it says nothing).
The first two need an administrator's Basic credentials (see
:mod:`caresync.admin.access`): over plain HTTP from another machine, or asked for by
another site's page (``Sec-Fetch-Site``), they are refused (403) before any password
is asked for or checked; without credentials, 401 and a
challenge; a wrong password, 401, slowed by the server's throttle, logged and
audited as a failed login (``throttled``: 429); an account that is not an
administrator, 403. Nothing here writes but those failures' audit entries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from caresync.admin.access import challenge, may_send_password, parse_basic
from caresync.admin.page import PAGE_HEADERS, STYLESHEET, render_page, render_state_json
from caresync.admin.state import AdminState, gather, unhealthy
from caresync.audit import AuditEvent, attempted_name
from caresync.exceptions import InvalidInputError, StorageError
from caresync.gate import Gatekeeper, Refused
from caresync.observe import ServerEvents
from caresync.protocol import ErrorCode
from caresync.storage import ServerStore
from caresync.transport import HttpAnswer, HttpRequest

__all__ = ["ADMIN_ROUTES", "AdminHost", "AdminPage"]

ADMIN_ROUTES = ("/admin", "/admin/state.json", "/admin/admin.css")

_TEXT = "text/plain; charset=utf-8"
_HTML = "text/html; charset=utf-8"
_JSON = "application/json"
_CSS = "text/css; charset=utf-8"


@dataclass(frozen=True, slots=True)
class AdminHost:
    """What the page needs of its server: read-only views, and the failure paths."""

    store: ServerStore
    gate: Gatekeeper
    events: ServerEvents
    server_id: str
    now_ms: Callable[[], int]
    stale_after_ms: int
    connections_open: Callable[[], int]
    versions: Mapping[str, tuple[int | None, str | None]]
    hub_sending: Callable[[], bool]
    audit: Callable[[AuditEvent], Awaitable[None]]
    timeout_s: float


class AdminPage:
    """Answers the admin routes for one server."""

    def __init__(self, host: AdminHost) -> None:
        self.host = host
        # One password check at a time: the throttle counts a failure only once its
        # check is over, so concurrent guesses would all be checked before the first
        # counted (reproduced: 40 at once, 40 checked). A second request meanwhile is
        # told to come back (429), which costs no argon2.
        self._checking = asyncio.Lock()

    def handles(self, route: str) -> bool:
        """True for a path under ``/admin`` (unknown ones get 404 here, not a handshake)."""
        return route == "/admin" or route.startswith("/admin/")

    async def answer(self, method: str, route: str, request: HttpRequest) -> HttpAnswer:
        """The answer to one request of an admin route."""
        if route not in ADMIN_ROUTES:
            return _plain(404, "not found\n")
        if method != "GET":
            return HttpAnswer(405, _TEXT, b"only GET\n", (("Allow", "GET"), *PAGE_HEADERS))
        if route == "/admin/admin.css":
            return HttpAnswer(200, _CSS, STYLESHEET, PAGE_HEADERS)
        if _made_by_another_site(request):
            return _plain(403, "the admin page is not answered to what another site's page asks\n")
        if not may_send_password(tls=request.tls, remote_host=request.remote_host):
            return _plain(
                403,
                "the admin page needs TLS (serve --tls-cert) or a connection from the "
                "server's own machine (an ssh tunnel)\n",
            )
        refused = await self._check(request)
        if refused is not None:
            return refused
        state = await self._state()
        if route == "/admin/state.json":
            return HttpAnswer(200, _JSON, render_state_json(state), PAGE_HEADERS)
        return HttpAnswer(200, _HTML, render_page(state), PAGE_HEADERS)

    async def _check(self, request: HttpRequest) -> HttpAnswer | None:
        """None for an administrator's valid credentials, else the refusal to send."""
        peer = request.remote_host or "unknown"
        try:
            credentials = parse_basic(request.header("Authorization"))
        except InvalidInputError as exc:
            refused = await self.host.gate.malformed_login(request.remote_host, str(exc))
            await self._failed(peer, None, refused.code, refused.message)
            if refused.code == ErrorCode.THROTTLED:
                return _plain(429, "too many failed logins; try again later\n")
            return _challenge(f"{exc}\n")
        if credentials is None:
            return _challenge("log in as username@organisation\n")
        organisation, username, password = credentials
        if self._checking.locked():
            self.host.events.login_failed(peer, username, ErrorCode.THROTTLED, "admin page: busy")
            return _plain(429, "another login is being checked; try again in a moment\n")
        async with self._checking:
            return await self._check_password(request, peer, organisation, username, password)

    async def _check_password(
        self, request: HttpRequest, peer: str, organisation: str, username: str, password: str
    ) -> HttpAnswer | None:
        checked = await self.host.gate.check_password(
            organisation, username, password, request.remote_host, needs_admin=True
        )
        if isinstance(checked, Refused):
            await self._failed(peer, username, checked.code, checked.message)
            if checked.code == ErrorCode.THROTTLED:
                return _plain(429, "too many failed logins; try again later\n")
            if checked.code == ErrorCode.FORBIDDEN:
                return _plain(403, "this account is not an administrator\n")
            return _challenge("unknown user or wrong password\n")
        return None

    async def _failed(self, peer: str, username: str | None, code: str, reason: str) -> None:
        """Log a failed login to the page, and audit it (a throttled one is only logged,
        as for the sync login: no password was checked)."""
        self.host.events.login_failed(peer, username, code, f"admin page: {reason}")
        if code != ErrorCode.THROTTLED:
            actor = "(malformed credentials)" if username is None else attempted_name(username)
            await self.host.audit(
                AuditEvent(actor, "login-failed", None, f"admin page: refused: {code}")
            )

    async def _state(self) -> AdminState:
        host = self.host
        now = host.now_ms()
        try:
            async with asyncio.timeout(host.timeout_s):
                damaged = getattr(host.store, "damaged", None)
                if damaged:
                    raise StorageError(f"the database is damaged: {damaged}")
                return await gather(
                    host.store,
                    server_id=host.server_id,
                    now_ms=now,
                    stale_ms=host.stale_after_ms,
                    connections_open=host.connections_open(),
                    versions=host.versions,
                    hub_sending=host.hub_sending(),
                )
        except (StorageError, TimeoutError) as exc:
            reason = str(exc) or f"the store did not answer within {host.timeout_s:g} s"
            return unhealthy(
                server_id=host.server_id,
                now_ms=now,
                stale_ms=host.stale_after_ms,
                reason=f"unhealthy: {reason}",
                connections_open=host.connections_open(),
            )


def _made_by_another_site(request: HttpRequest) -> bool:
    """True when a browser says another site's page made the request (``Sec-Fetch-Site``),
    other than by opening it in the window (a link followed: the user sees it).

    A browser keeps the administrator's Basic credentials for the window and sends them
    with requests any other page makes to this origin (an ``<img>``, a frame, a script
    pointing here): each would cost an argon2 check, and hold the page's one check at a
    time. The page itself is opened by the user (``none``), from a link (a top-level
    navigation) or reloads itself (``same-origin``); a client that says nothing (a
    script, curl) is not a browser led by another page."""
    site = (request.header("Sec-Fetch-Site") or "").strip().lower()
    if site not in ("cross-site", "same-site"):
        return False
    mode = (request.header("Sec-Fetch-Mode") or "").strip().lower()
    dest = (request.header("Sec-Fetch-Dest") or "").strip().lower()
    return not (mode == "navigate" and dest == "document")


def _plain(status: int, text: str) -> HttpAnswer:
    return HttpAnswer(status, _TEXT, text.encode("utf-8"), PAGE_HEADERS)


def _challenge(text: str) -> HttpAnswer:
    return HttpAnswer(401, _TEXT, text.encode("utf-8"), (challenge(), *PAGE_HEADERS))
