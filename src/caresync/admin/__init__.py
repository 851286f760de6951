"""The server's administrator page (``GET /admin`` on the sync port), read-only.

* :mod:`~caresync.admin.access` — who may see it: HTTP Basic credentials, TLS or
  loopback only (pure).
* :mod:`~caresync.admin.state` — what it shows, gathered from the store and the
  running server, and which laptops are stale.
* :mod:`~caresync.admin.page` — the HTML, its stylesheet and its JSON twin (pure).
* :mod:`~caresync.admin.handler` — the routes, answered before the websocket upgrade.
"""

from __future__ import annotations

from caresync.admin.access import BasicCredentials, parse_basic
from caresync.admin.handler import AdminPage
from caresync.admin.page import CONTENT_SECURITY_POLICY, render_page, render_state_json
from caresync.admin.state import AdminState, LaptopRow, stale_reasons

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "AdminPage",
    "AdminState",
    "BasicCredentials",
    "LaptopRow",
    "parse_basic",
    "render_page",
    "render_state_json",
    "stale_reasons",
]
