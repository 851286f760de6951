"""The admin page's pure parts: Basic credentials, where a password may be sent, the
stale rule, and rendering that escapes whatever the store holds."""

from __future__ import annotations

import base64

import pytest

from caresync.admin import AdminState, LaptopRow, parse_basic, render_page, stale_reasons
from caresync.admin.access import may_send_password
from caresync.admin.page import format_age
from caresync.exceptions import InvalidInputError
from caresync.storage import ReplicaInfo

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def _basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def test_basic_credentials_name_the_account_as_username_at_organisation() -> None:
    assert parse_basic(None) is None
    assert parse_basic("Bearer abc") is None
    found = parse_basic(_basic("awa@example.org@clinic-a:pa:ss wörd"))
    assert found is not None
    assert found == ("clinic-a", "awa@example.org", "pa:ss wörd")
    for bad, why in (
        ("Basic ***", "base64"),
        (_basic("no-colon"), "':'"),
        (_basic("boss:pw"), "username@organisation"),
        (_basic("boss@:pw"), "organisation"),
        (_basic("bo\nss@clinic:pw"), "username"),
    ):
        with pytest.raises(InvalidInputError, match=why):
            parse_basic(bad)


def test_a_password_is_asked_for_over_tls_or_from_the_same_machine_only() -> None:
    assert may_send_password(tls=True, remote_host="203.0.113.9")
    assert may_send_password(tls=False, remote_host="127.0.0.1")
    assert may_send_password(tls=False, remote_host="::1")
    assert not may_send_password(tls=False, remote_host="203.0.113.9")
    assert not may_send_password(tls=False, remote_host=None)


def _info(**changes: object) -> ReplicaInfo:
    fields: dict[str, object] = {
        "replica_id": "r1",
        "organisation": "clinic",
        "enrolled_by": "dr.a",
        "enrolled_ms": 0,
        "last_seen_ms": None,
        "revoked_ms": None,
    }
    fields.update(changes)
    return ReplicaInfo(**fields)  # type: ignore[arg-type]


def test_the_stale_rule_is_the_replicas_commands() -> None:
    now = 10 * DAY_MS
    assert stale_reasons(_info(enrolled_ms=now), now_ms=now, stale_ms=DAY_MS) == ()
    assert stale_reasons(_info(), now_ms=now, stale_ms=DAY_MS) == ("never seen",)
    seen = _info(last_seen_ms=now - DAY_MS - 1)
    assert stale_reasons(seen, now_ms=now, stale_ms=DAY_MS) == ("not seen",)
    assert stale_reasons(_info(last_seen_ms=now - DAY_MS), now_ms=now, stale_ms=DAY_MS) == ()
    waiting = _info(last_seen_ms=now, pending=3, oldest_pending_ms=now - 2 * DAY_MS)
    assert stale_reasons(waiting, now_ms=now, stale_ms=DAY_MS) == ("changes pending",)
    assert stale_reasons(_info(revoked_ms=1), now_ms=now, stale_ms=DAY_MS) == ()


def test_ages_are_short() -> None:
    assert format_age(100_000, None) == "never"
    assert format_age(100_000, 100_000) == "0 s ago"
    assert format_age(HOUR_MS - 1000, 0) == "59 min ago"
    assert format_age(HOUR_MS, 0) == "1 h ago"
    assert format_age(30 * HOUR_MS, 0) == "30 h ago"
    assert format_age(3 * DAY_MS, 0) == "3 d ago"


def test_every_stored_string_is_escaped() -> None:
    evil = "\"><img src=x onerror=alert(1)>'&"
    row = LaptopRow(
        replica_id=evil,
        device_name=evil,
        organisation=evil,
        enrolled_by=evil,
        last_seen_ms=None,
        revoked=False,
        pending=1,
        oldest_pending_ms=0,
        protocol_version=7,
        client_version=evil,
        stale=("never seen",),
    )
    state = AdminState(
        server_id=evil,
        now_ms=DAY_MS * 2,
        stale_after_ms=DAY_MS,
        healthy=False,
        health=evil,
        connections_open=0,
        feed_head=None,
        records=None,
        laptops=(row,),
        conflicts=((evil, 2),),
        hub=(("pending", 1),),
        hub_sending=False,
    )
    page = render_page(state).decode()
    assert "<img" not in page
    assert evil not in page
    assert page.count("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;&#x27;&amp;") == 9
    assert '<tr class="laptop stale"' in page
    assert "STALE: never seen" in page
