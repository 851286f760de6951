"""The admin page's HTML, stylesheet and JSON, rendered from an :class:`AdminState` (pure).

Every string from the store (device names, usernames, organisations, reasons) is
untrusted and goes through :func:`html.escape` (quotes too). The page carries no
script and no inline style: it refreshes with ``<meta http-equiv="refresh">`` and
takes its one stylesheet from the same origin, so the policy
(:data:`CONTENT_SECURITY_POLICY`) can forbid every script and inline style.
"""

from __future__ import annotations

import datetime as dt
import json
from html import escape
from typing import Any

from caresync.admin.state import AdminState, LaptopRow

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "PAGE_HEADERS",
    "REFRESH_S",
    "STYLESHEET",
    "format_age",
    "render_page",
    "render_state_json",
]

REFRESH_S = 15
"""The page reloads itself this often (seconds)."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'none'; script-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Nothing but the same origin's stylesheet: no script, no inline style, no frames."""

PAGE_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    # A window another site's page opened and moved here is cut from that page (its
    # handle reads closed): it cannot move it here again and again, each time with the
    # window's kept credentials (an argon2 check each).
    ("Cross-Origin-Opener-Policy", "same-origin"),
)
"""Sent with every admin answer."""

STYLESHEET = b"""\
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f3f3f3; }
tr.stale td { background: #fde8e8; }
.stale-mark { color: #a00; font-weight: bold; }
.healthy { color: #070; }
.unhealthy { color: #a00; font-weight: bold; }
.muted { color: #777; }
"""


def _time(ms: int | None) -> str:
    if ms is None:
        return "never"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def format_age(now_ms: int, then_ms: int | None) -> str:
    """How long ago ``then_ms`` was, shortly ("5 min ago", "3 h ago", "2 d ago")."""
    if then_ms is None:
        return "never"
    seconds = max(0, now_ms - then_ms) // 1000
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 48 * 3600:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def _cell(value: object, css: str = "") -> str:
    klass = f' class="{css}"' if css else ""
    return f"<td{klass}>{escape(str(value), quote=True)}</td>"


def _laptop_row(row: LaptopRow, now_ms: int) -> str:
    if row.revoked:
        status, css = "revoked", "muted"
    elif row.stale:
        status, css = "STALE: " + ", ".join(row.stale), "stale-mark"
    else:
        status, css = "ok", ""
    pending = "not reported" if row.pending is None else str(row.pending)
    oldest = format_age(now_ms, row.oldest_pending_ms) if row.pending else ""
    version = " / ".join(
        part
        for part in (
            None if row.protocol_version is None else f"protocol {row.protocol_version}",
            row.client_version,
        )
        if part
    )
    cells = (
        _cell(row.device_name or "(unnamed)"),
        _cell(row.enrolled_by or ""),
        _cell(row.organisation),
        _cell(f"{_time(row.last_seen_ms)} ({format_age(now_ms, row.last_seen_ms)})"),
        _cell(pending),
        _cell(oldest),
        _cell(version or "not seen since the server started", "" if version else "muted"),
        _cell(status, css),
        _cell(row.replica_id, "muted"),
    )
    tr_class = "laptop stale" if row.stale else "laptop"
    return (
        f'<tr class="{tr_class}" data-replica="{escape(row.replica_id, quote=True)}">'
        + "".join(cells)
        + "</tr>"
    )


def _table(headings: tuple[str, ...], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headings)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_page(state: AdminState, *, stylesheet_url: str = "/admin/admin.css") -> bytes:
    """The whole page (UTF-8 HTML), read-only: no form, no script, no link that writes."""
    hours = state.stale_after_ms / 3_600_000
    health_css = "healthy" if state.healthy else "unhealthy"
    stale = sum(1 for row in state.laptops if row.stale)
    laptops = _table(
        (
            "Device",
            "User",
            "Organisation",
            "Last seen",
            "Pending",
            "Oldest pending",
            "Version",
            "Status",
            "Replica",
        ),
        [_laptop_row(row, state.now_ms) for row in state.laptops],
        "No laptop is enrolled.",
    )
    conflicts = _table(
        ("Organisation", "Open conflicts"),
        [f"<tr>{_cell(org)}{_cell(count)}</tr>" for org, count in state.conflicts],
        "No open conflict.",
    )
    hub = _table(
        ("State", "Summaries"),
        [f"<tr>{_cell(name)}{_cell(count)}</tr>" for name, count in state.hub],
        "The hub outbox could not be read.",
    )
    sending = "sending to a hub" if state.hub_sending else "no hub configured on this process"
    figures = [
        ("Store", state.health),
        ("Connections open", state.connections_open),
        ("Feed head", "" if state.feed_head is None else state.feed_head),
        ("Records", "" if state.records is None else state.records),
        ("Server id", state.server_id),
        ("Page read at", _time(state.now_ms)),
    ]
    health = "".join(
        f"<tr><th>{escape(name)}</th>{_cell(value, health_css if name == 'Store' else '')}</tr>"
        for name, value in figures
    )
    body = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_S}">
<meta name="referrer" content="no-referrer">
<title>caresync server</title>
<link rel="stylesheet" href="{escape(stylesheet_url, quote=True)}">
</head>
<body>
<h1>caresync server</h1>
<h2>Health</h2>
<table id="health">{health}</table>
<h2>Laptops</h2>
<p id="stale-summary">{stale} stale (not seen, or changes pending, for more than {hours:g} h)
of {len(state.laptops)} enrolled.</p>
<div id="laptops">{laptops}</div>
<h2>Open conflicts per organisation</h2>
<div id="conflicts">{conflicts}</div>
<h2>Health-hub outbox</h2>
<p class="muted">{escape(sending)}</p>
<div id="hub">{hub}</div>
<p class="muted">Read-only; refreshes every {REFRESH_S} s.</p>
</body>
</html>
"""
    return body.encode("utf-8")


def state_as_json(state: AdminState) -> dict[str, Any]:
    """The page's state as plain JSON values (``GET /admin/state.json``)."""
    return {
        "server_id": state.server_id,
        "now_ms": state.now_ms,
        "stale_after_ms": state.stale_after_ms,
        "healthy": state.healthy,
        "health": state.health,
        "connections_open": state.connections_open,
        "feed_head": state.feed_head,
        "records": state.records,
        "laptops": [
            {
                "replica_id": row.replica_id,
                "device_name": row.device_name,
                "organisation": row.organisation,
                "enrolled_by": row.enrolled_by,
                "last_seen_ms": row.last_seen_ms,
                "revoked": row.revoked,
                "pending": row.pending,
                "oldest_pending_ms": row.oldest_pending_ms,
                "protocol_version": row.protocol_version,
                "client_version": row.client_version,
                "stale": bool(row.stale),
                "reasons": list(row.stale),
            }
            for row in state.laptops
        ],
        "conflicts": dict(state.conflicts),
        "hub": dict(state.hub),
        "hub_sending": state.hub_sending,
    }


def render_state_json(state: AdminState) -> bytes:
    """:func:`state_as_json` encoded (ASCII-only JSON: safe whatever the names hold)."""
    return json.dumps(state_as_json(state), ensure_ascii=True, sort_keys=True).encode("ascii")
