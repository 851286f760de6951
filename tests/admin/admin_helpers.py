"""A server with laptops for the admin page's tests: one that keeps syncing, one that stopped.

The server's clock is injected (``now``): a laptop goes stale because the clock
moved past the threshold, not because a test waited.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from argon2 import PasswordHasher
from tests.e2e.live_helpers import PASSWORD

from caresync.replica import Replica
from caresync.server import SyncServer

__all__ = [
    "ADMIN",
    "HOUR_MS",
    "HOSTILE_NAME",
    "PASSWORD",
    "Clinic",
    "basic",
    "http_get",
    "start_clinic",
]

HOUR_MS = 3_600_000
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ADMIN = "boss@clinic-a"
"""The administrator's Basic user-id (username@organisation)."""
HOSTILE_NAME = "<script>alert('x')</script> & \"desk\""
"""A device name that would run, or break the page, if it were not escaped."""


@dataclass
class Clinic:
    """A running server, its clock, and its laptops by device name."""

    server: SyncServer
    now: list[int]
    laptops: dict[str, Replica] = field(default_factory=dict)

    @property
    def http_url(self) -> str:
        return self.server.url.replace("ws://", "http://")

    def advance(self, ms: int) -> None:
        self.now[0] += ms

    async def close(self) -> None:
        for laptop in self.laptops.values():
            await laptop.close()
        await self.server.close()


async def start_clinic(tmp_path: Path, *, stale_hours: float = 24.0, **options: object) -> Clinic:
    """A server on 127.0.0.1 with an administrator (boss), a clinician (dr.a) and two
    laptops enrolled by dr.a: ``desk-1`` and one with :data:`HOSTILE_NAME`."""
    now = [1_800_000_000_000]
    server = await SyncServer.open(
        tmp_path / "server.db",
        now_ms=lambda: now[0],
        password_hasher=CHEAP,
        stale_after_s=stale_hours * 3600,
        **options,  # type: ignore[arg-type]
    )
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    await server.add_user("clinic-a", "boss", PASSWORD, admin=True)
    await server.serve("127.0.0.1", 0)
    clinic = Clinic(server, now)
    for name in ("desk-1", HOSTILE_NAME):
        laptop = await Replica.open(tmp_path / f"laptop-{len(clinic.laptops)}.db")
        await laptop.enrol(
            server.url,
            username="dr.a",
            password=PASSWORD,
            organisation="clinic-a",
            device_name=name,
        )
        clinic.laptops[name] = laptop
    return clinic


def basic(user_id: str, password: str = PASSWORD) -> str:
    """An ``Authorization`` header's value for HTTP Basic."""
    return "Basic " + base64.b64encode(f"{user_id}:{password}".encode()).decode()


def http_get(url: str, authorization: str | None = None) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of a plain HTTP GET (blocking: run it in a thread)."""
    request = urllib.request.Request(url)
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers.items()), answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers.items()), error.read().decode()
