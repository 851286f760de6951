"""The admin page over real HTTP: a server on 127.0.0.1 with laptops, urllib as the client.

Who gets in (401 without credentials or with a wrong password, 403 for an account
that is not an administrator, 200 for one that is), what every answer carries (a
strict Content-Security-Policy), what the page shows (escaped names, stale laptops
marked), and that failures go through the throttle, the log and the audit trail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from tests.admin.admin_helpers import (
    ADMIN,
    HOSTILE_NAME,
    HOUR_MS,
    PASSWORD,
    Clinic,
    basic,
    http_get,
    start_clinic,
)

from caresync.admin import CONTENT_SECURITY_POLICY
from caresync.exceptions import InvalidInputError
from caresync.server import SyncServer
from caresync.storage import MemoryStore
from caresync.throttle import LoginThrottle
from caresync.transport import HttpAnswer, HttpRequest


@pytest.fixture
async def clinic(tmp_path: Path) -> AsyncIterator[Clinic]:
    running = await start_clinic(tmp_path)
    yield running
    await running.close()


async def get(
    clinic: Clinic, path: str, authorization: str | None = None
) -> tuple[int, dict[str, str], str]:
    return await asyncio.to_thread(http_get, clinic.http_url + path, authorization)


async def test_no_credentials_get_a_challenge_and_a_strict_policy(clinic: Clinic) -> None:
    for path in ("/admin", "/admin/state.json"):
        status, headers, body = await get(clinic, path)
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Basic realm="caresync admin", charset="UTF-8"'
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert "desk-1" not in body
    assert "script-src 'none'" in CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY


async def test_a_wrong_password_is_refused_logged_and_audited(
    clinic: Clinic, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="caresync.server")
    status, headers, body = await get(clinic, "/admin", basic(ADMIN, "not it"))
    assert status == 401
    assert "WWW-Authenticate" in headers
    assert "desk-1" not in body
    failed = [
        r for r in caplog.records if getattr(r, "caresync", {}).get("event") == "login_failed"
    ]
    assert len(failed) == 1
    assert failed[0].caresync["user"] == "boss"  # type: ignore[attr-defined]
    assert failed[0].caresync["code"] == "bad_credentials"  # type: ignore[attr-defined]
    assert "not it" not in caplog.text
    server = clinic.server
    trail = await server.store.audit_entries(replica_id=server.server_id)
    assert [(e.actor, e.action, e.detail) for e in trail if e.action == "login-failed"] == [
        ("boss", "login-failed", "admin page: refused: bad_credentials")
    ]
    # Malformed credentials are a failed login too, and an unknown user the same 401.
    assert (await get(clinic, "/admin", "Basic !!!"))[0] == 401
    assert (await get(clinic, "/admin", basic("boss-without-organisation")))[0] == 401
    assert (await get(clinic, "/admin", basic("nobody@clinic-a")))[0] == 401


async def test_an_account_that_is_not_an_administrator_gets_403(clinic: Clinic) -> None:
    status, _, body = await get(clinic, "/admin", basic("dr.a@clinic-a"))
    assert status == 403
    assert "desk-1" not in body
    # Granted, it gets in at its next request; revoked, it is refused at the next one.
    await clinic.server.set_admin("clinic-a", "dr.a", True)
    assert (await get(clinic, "/admin", basic("dr.a@clinic-a")))[0] == 200
    await clinic.server.set_admin("clinic-a", "dr.a", False)
    assert (await get(clinic, "/admin", basic("dr.a@clinic-a")))[0] == 403
    # A disabled administrator is refused as a wrong password is.
    await clinic.server.disable_user("clinic-a", "boss")
    assert (await get(clinic, "/admin", basic(ADMIN)))[0] == 401


async def test_the_administrator_sees_every_laptop_escaped(clinic: Clinic) -> None:
    status, headers, body = await get(clinic, "/admin", basic(ADMIN))
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-store"
    assert "desk-1" in body
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;desk&quot;" in body
    assert "<script" not in body
    assert 'http-equiv="refresh"' in body
    assert "<form" not in body  # read-only: nothing on the page writes
    assert "dr.a" in body
    assert "0 stale" in body
    # The stylesheet is same-origin (the policy allows no other) and needs no login.
    status, headers, css = await get(clinic, "/admin/admin.css")
    assert status == 200
    assert headers["Content-Type"].startswith("text/css")
    assert "tr.stale" in css


async def test_a_laptop_not_seen_past_the_threshold_is_marked_stale(clinic: Clinic) -> None:
    clinic.advance(11 * HOUR_MS)  # within the session's 12 h
    await clinic.laptops["desk-1"].sync()  # seen now; the other one was seen 11 h ago
    clinic.advance(14 * HOUR_MS)
    status, _, body = await get(clinic, "/admin", basic(ADMIN))
    assert status == 200
    stale_rows = [line for line in body.split("<tr") if 'class="laptop stale"' in line]
    assert len(stale_rows) == 1
    assert "&lt;script&gt;" in stale_rows[0]
    assert "STALE: not seen" in stale_rows[0]
    fresh = [line for line in body.split("<tr") if 'class="laptop"' in line]
    assert len(fresh) == 1
    assert "desk-1" in fresh[0]
    assert "1 stale" in body

    status, headers, raw = await get(clinic, "/admin/state.json", basic(ADMIN))
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    state = json.loads(raw)
    by_name = {laptop["device_name"]: laptop for laptop in state["laptops"]}
    assert by_name[HOSTILE_NAME]["stale"] is True
    assert by_name[HOSTILE_NAME]["reasons"] == ["not seen"]
    assert by_name["desk-1"]["stale"] is False
    assert by_name["desk-1"]["protocol_version"] is not None  # it logged in since the start
    assert by_name["desk-1"]["client_version"]
    assert state["healthy"] is True
    assert state["hub"] == {"pending": 0, "held": 0, "failed": 0, "sent": 0}
    assert state["stale_after_ms"] == 24 * HOUR_MS


async def test_the_threshold_is_the_servers_option(tmp_path: Path) -> None:
    clinic = await start_clinic(tmp_path, stale_hours=2)
    try:
        clinic.advance(3 * HOUR_MS)
        _, _, raw = await get(clinic, "/admin/state.json", basic(ADMIN))
        assert all(laptop["reasons"] == ["not seen"] for laptop in json.loads(raw)["laptops"])
    finally:
        await clinic.close()
    for wrong in (0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(InvalidInputError, match="stale_after_s"):
            SyncServer(MemoryStore(), "server-x", stale_after_s=wrong)


async def test_failed_logins_are_throttled(tmp_path: Path) -> None:
    throttle = LoginThrottle(account_free=1, first_lock_s=300, max_lock_s=300)
    clinic = await start_clinic(tmp_path, throttle=throttle)
    try:
        assert (await get(clinic, "/admin", basic(ADMIN, "guess 1")))[0] == 401
        assert (await get(clinic, "/admin", basic(ADMIN, "guess 2")))[0] == 401
        # Locked now: even the right password waits (429), and no password is checked.
        status, _, body = await get(clinic, "/admin", basic(ADMIN))
        assert status == 429
        assert "desk-1" not in body
        # Credentials that cannot be read count against the address too.
        # The address has failed twice; it is locked once past its allowance.
        for _ in range(throttle.address_free - 1):
            assert (await get(clinic, "/admin", "Basic !!!"))[0] == 401
        assert (await get(clinic, "/admin", "Basic !!!"))[0] == 429
        trail = await clinic.server.store.audit_entries(replica_id=clinic.server.server_id)
        failed = [e for e in trail if e.action == "login-failed"]
        assert len(failed) == 2 + throttle.address_free - 1  # the throttled are not audited
    finally:
        await clinic.close()


async def test_plain_http_from_another_machine_is_refused_before_a_password(
    clinic: Clinic,
) -> None:
    server = clinic.server
    credentials = (("Authorization", basic(ADMIN)),)
    remote = await server.answer_http("GET", "/admin", HttpRequest(credentials, "10.1.2.3", False))
    assert remote is not None
    assert remote.status == 403
    assert b"TLS" in remote.body
    assert all(name != "WWW-Authenticate" for name, _ in remote.headers)
    over_tls = await server.answer_http("GET", "/admin", HttpRequest(credentials, "10.1.2.3", True))
    assert over_tls is not None
    assert over_tls.status == 200
    # Only GET, and no other path under /admin reaches the websocket handshake.
    posted = await server.answer_http(
        "POST", "/admin", HttpRequest(credentials, "127.0.0.1", False)
    )
    assert posted is not None
    assert posted.status == 405
    assert (await get(clinic, "/admin/nothing", basic(ADMIN)))[0] == 404
    # Sent twice, the header is ambiguous: treated as absent.
    doubled = HttpRequest(credentials * 2, "127.0.0.1", False)
    twice = await server.answer_http("GET", "/admin", doubled)
    assert twice is not None
    assert twice.status == 401


async def test_a_store_that_fails_shows_an_unhealthy_page(
    clinic: Clinic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clinic.server.store, "damaged", "page 7 is corrupt", raising=False)
    status, _, body = await get(clinic, "/admin", basic(ADMIN))
    assert status == 200
    assert "unhealthy: the database is damaged: page 7 is corrupt" in body
    assert 'class="unhealthy"' in body
    monkeypatch.undo()
    assert PASSWORD not in body


async def test_over_tls_the_page_knows_the_connection_is_encrypted(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    server = await SyncServer.open(tmp_path / "server.db")
    await server.add_user("clinic-a", "boss", PASSWORD, admin=True)
    await server.serve("127.0.0.1", 0, ssl=server_ctx)
    seen: list[HttpRequest] = []
    answer = server.admin_page.answer

    async def spy(method: str, route: str, request: HttpRequest) -> HttpAnswer:
        seen.append(request)
        return await answer(method, route, request)

    server.admin_page.answer = spy  # type: ignore[method-assign]

    def fetch() -> tuple[int, str]:
        request = urllib.request.Request(server.url.replace("wss://", "https://") + "/admin")
        request.add_header("Authorization", basic(ADMIN))
        with urllib.request.urlopen(request, timeout=10, context=client_ctx) as got:
            return got.status, got.read().decode()

    try:
        status, body = await asyncio.to_thread(fetch)
        assert status == 200
        assert "No laptop is enrolled." in body
        assert [(r.tls, r.remote_host) for r in seen] == [(True, "127.0.0.1")]
    finally:
        await server.close()


async def test_concurrent_guesses_are_checked_one_at_a_time(clinic: Clinic) -> None:
    """Reproduced: the throttle counts a failure once its check is over, so 40 guesses at
    once were all checked. One check at a time now: the others are told to come back."""
    answers = await asyncio.gather(
        *(get(clinic, "/admin", basic(ADMIN, f"guess {n}")) for n in range(20))
    )
    statuses = [status for status, _headers, _body in answers]
    assert set(statuses) <= {401, 429}
    assert statuses.count(401) <= LoginThrottle().account_free + 1


async def test_a_right_password_without_the_right_is_throttled_like_a_wrong_one(
    tmp_path: Path,
) -> None:
    """A clinician's (or a disabled account's) right password opens nothing here; trying
    it again and again is throttled, so it cannot make the server check passwords and
    write audit entries without end (reproduced: 200 tries, 200 checks and entries)."""
    throttle = LoginThrottle(account_free=1, first_lock_s=300, max_lock_s=300)
    clinic = await start_clinic(tmp_path, throttle=throttle)
    try:
        tries = [(await get(clinic, "/admin", basic("dr.a@clinic-a")))[0] for _ in range(3)]
        assert tries == [403, 403, 429]
        await clinic.server.disable_user("clinic-a", "boss")
        tries = [(await get(clinic, "/admin", basic(ADMIN)))[0] for _ in range(3)]
        assert tries == [401, 401, 429]
    finally:
        await clinic.close()


async def test_a_request_another_sites_page_made_checks_no_password(
    clinic: Clinic, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reproduced: a page on any other site could make an administrator's browser, which
    keeps the Basic credentials for the window, request the page again and again (an
    ``<img>`` or ``<link>`` pointing at it): each request cost the server an argon2 check
    (and its lock: the administrator's own page got 429, the account's logins waited).
    A browser says who made a request (``Sec-Fetch-Site``, ``-Mode``, ``-Dest``): only the
    page's own origin, and the user (typed, bookmarked, a link followed into the window),
    are answered; nothing else is checked."""

    def fetch(path: str, site: str | None, *, mode: str = "no-cors", dest: str = "image") -> int:
        request = urllib.request.Request(clinic.http_url + path)
        request.add_header("Authorization", basic(ADMIN))
        if site is not None:
            request.add_header("Sec-Fetch-Site", site)
            request.add_header("Sec-Fetch-Mode", mode)
            request.add_header("Sec-Fetch-Dest", dest)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    gate = clinic.server.gate
    checks: list[str] = []
    check_password = gate.check_password

    async def counted(*args: Any, **kwargs: Any) -> Any:
        checks.append(args[1])
        return await check_password(*args, **kwargs)

    monkeypatch.setattr(gate, "check_password", counted)
    caplog.set_level(logging.INFO, logger="caresync.server")
    for path in ("/admin", "/admin/state.json"):
        for site in ("cross-site", "same-site", "Cross-Site"):
            assert await asyncio.to_thread(fetch, path, site) == 403, (path, site)
        # A frame is not the window: the page cannot be seen there (it may not be framed).
        framed = await asyncio.to_thread(fetch, path, "cross-site", mode="navigate", dest="iframe")
        assert framed == 403
    assert checks == []
    failed = [
        r for r in caplog.records if getattr(r, "caresync", {}).get("event") == "login_failed"
    ]
    assert failed == []
    # The page itself (typed, reloaded, its own refresh) and clients that say nothing.
    for site in ("none", "same-origin", None):
        opened = await asyncio.to_thread(fetch, "/admin", site, mode="navigate", dest="document")
        assert opened == 200, site
    # A link followed from another site's page (an intranet's) opens it in the window.
    followed = await asyncio.to_thread(
        fetch, "/admin", "cross-site", mode="navigate", dest="document"
    )
    assert followed == 200
    # Its stylesheet says nothing and checks nothing: any page may load it.
    assert await asyncio.to_thread(fetch, "/admin/admin.css", "cross-site") == 200
    assert checks == ["boss"] * 4


async def test_a_window_another_site_opened_is_cut_from_it(clinic: Clinic) -> None:
    """Review finding: a top-level navigation from another site is answered (a link
    followed), but a script may make those too: a page that opened a window once (one
    click) keeps a handle to it and could move it to the admin page again and again
    (``w.location = ...``), each request checked with the window's kept credentials (an
    argon2 check, and the page's one check at a time). Every admin answer now says
    ``Cross-Origin-Opener-Policy: same-origin``: a browser then cuts the window from the
    page that opened it (its handle reads closed), so that page moves it once at most."""

    def navigate(path: str, authorization: str | None) -> tuple[int, str | None]:
        request = urllib.request.Request(clinic.http_url + path)
        if authorization is not None:
            request.add_header("Authorization", authorization)
        for name, value in (("Site", "cross-site"), ("Mode", "navigate"), ("Dest", "document")):
            request.add_header(f"Sec-Fetch-{name}", value)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return int(answer.status), answer.headers["Cross-Origin-Opener-Policy"]
        except urllib.error.HTTPError as error:
            return int(error.code), error.headers["Cross-Origin-Opener-Policy"]

    for path in ("/admin", "/admin/state.json"):
        for authorization, status in ((None, 401), (basic(ADMIN), 200), ("Basic !!!", 401)):
            answered = await asyncio.to_thread(navigate, path, authorization)
            assert answered == (status, "same-origin"), (path, authorization)
    # Every admin answer, an unknown path's too.
    status, headers, _ = await get(clinic, "/admin/nothing-here")
    assert (status, headers.get("Cross-Origin-Opener-Policy")) == (404, "same-origin")
