"""An attacker's review of the re-issue of a lost enrolment's secret
(``Gatekeeper._enrolled_again``, ``ServerStore.reissue_replica_secret``, the laptop's
meta ``replica.enrolling``).

What these keep: an operator sees a secret given again apart from a first enrolment;
the laptop's note of who asked is written only once its Enrol may have been committed
and dropped once the laptop logs in as itself, so that ``enrol_again`` never skips its
probe on a stale note (which enrolled a new, unused replica id under the account before
refusing); a laptop enrolled a moment ago is seen before its ``enrol`` returns, so no
one (not even its own account) can replace its secret afterwards.

Real parts: servers on SQLite files on 127.0.0.1, laptops on SQLite files, and a hostile
client speaking the protocol by hand over a real websocket.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from tests.e2e.hostile import Hostile
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server
from tests.e2e.test_enrolment_answer_lost import EnrolCuttingServer

from caresync import ConnectionLostError
from caresync.protocol import Enrolled
from caresync.replica import Replica
from caresync.server import SyncServer


async def _ids(server: SyncServer) -> list[str]:
    return [info.replica_id for info in await server.replicas()]


async def test_a_secret_given_again_is_logged_apart_from_an_enrolment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator reading the log sees which enrolment replaced a secret (a warning,
    ``again``: true), not two enrolments of one laptop that look the same."""
    server = await start_server(tmp_path, server_class=EnrolCuttingServer)
    assert isinstance(server, EnrolCuttingServer)
    laptop = await Replica.open(tmp_path / "laptop.db")
    caplog.set_level(logging.INFO, logger="caresync.server")
    try:
        server.cut_next_enrol = True
        with pytest.raises(ConnectionLostError):
            await laptop.enrol(
                server.url, username="dr.a", password=PASSWORD, organisation="clinic-a"
            )
        await laptop.enrol(server.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
        lines = [
            r for r in caplog.records if getattr(r, "caresync", {}).get("event") == "enrolment"
        ]
        assert [r.caresync["replica"] for r in lines] == [laptop.replica_id] * 2  # type: ignore[attr-defined]
        assert [r.caresync["again"] for r in lines] == [False, True]  # type: ignore[attr-defined]
        assert [r.levelno for r in lines] == [logging.INFO, logging.WARNING]
        assert "new secret" in lines[1].getMessage()
    finally:
        await laptop.close()
        await server.close()


async def test_a_laptop_just_enrolled_cannot_be_given_a_new_secret(tmp_path: Path) -> None:
    """The window closes before ``enrol`` returns: its first report marks the laptop
    seen. A hostile client of the very account that enrolled it, proposing its id, gets
    a new id of its own (which it may use, as any enrolment), and the laptop goes on
    syncing with its secret. An account of another organisation gets no more."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        info = await server.store.get_replica(laptop.replica_id)
        assert info is not None
        assert info.last_seen_ms is not None
        for user, organisation in (("dr.a", "clinic-a"), ("dr.x", "clinic-b")):
            hostile = await Hostile.connect(server.url)
            try:
                await hostile.login(user, PASSWORD, organisation)
                hostile.protocol.enrol("hostile", laptop.replica_id)
                answer = await hostile.expect(Enrolled)
                assert isinstance(answer, Enrolled)
                assert answer.replica_id != laptop.replica_id
            finally:
                await hostile.close()
        chart = await laptop.create_record()
        await laptop.set(chart, "name", "Awa Diop", author="dr.a")
        await laptop.sync()
        assert (await laptop.status()).pending == 0
    finally:
        await laptop.close()
        await server.close()
