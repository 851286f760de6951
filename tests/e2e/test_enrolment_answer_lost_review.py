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
from tests.e2e.enrol_helpers import EnrolCuttingServer, Restores
from tests.e2e.hostile import Hostile
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server

from caresync import ConnectionLostError
from caresync.exceptions import (
    AuthenticationError,
    RemoteProtocolError,
    StorageError,
    SyncRefusedError,
)
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


async def test_a_refused_login_to_enrol_again_does_not_skip_the_next_probe(
    tmp_path: Path,
) -> None:
    """enrol_again with a wrong password never sent Enrol: nothing waits for an answer.
    Before, it left the note of who asked, and the next enrol_again skipped its probe:
    against a server that knew the laptop again (a newer backup put back), it enrolled
    a new replica id, which nothing uses, before refusing."""
    restores = Restores(tmp_path)
    late = await restores.start(tmp_path)
    try:
        await restores.put_back(restores.old)  # forgets the laptop
        with pytest.raises(AuthenticationError):
            await late.enrol_again(username="dr.a", password="not the password")
        server = await restores.put_back(restores.new)  # knows it again
        known = await _ids(server)
        with pytest.raises(SyncRefusedError, match="sync this laptop instead"):
            await late.enrol_again(username="dr.a", password=PASSWORD)
        assert await _ids(server) == known  # asked as this laptop first: nothing enrolled
        assert (await late.sync()).server_went_back is False
    finally:
        await late.close()
        await restores.close()


async def test_a_laptop_that_logged_in_as_itself_since_a_lost_answer_is_probed_again(
    tmp_path: Path,
) -> None:
    """enrol_again's answer was lost, then the newer backup was put back after all and
    the laptop synced with its own secret: no enrolment of it waits any more. A later
    enrol_again is asked as this laptop first (refused, nothing enrolled), and says
    nothing of an earlier try that the laptop's own login has shown to be moot."""
    restores = Restores(tmp_path)
    late = await restores.start(tmp_path)
    try:
        server = await restores.put_back(restores.old)
        server.cut_next_enrol = True
        with pytest.raises(ConnectionLostError):
            await late.enrol_again(username="dr.a", password=PASSWORD)
        server = await restores.put_back(restores.new)
        assert (await late.sync()).server_went_back is False
        known = await _ids(server)
        for user in ("dr.b", "dr.a"):
            with pytest.raises(SyncRefusedError) as refused:
                await late.enrol_again(username=user, password=PASSWORD)
            assert "sync this laptop instead" in str(refused.value)
            assert "answer lost" not in str(refused.value)
        assert await _ids(server) == known
    finally:
        await late.close()
        await restores.close()


async def test_a_crash_before_the_binding_is_stored_still_names_who_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The laptop kept the secret and then stopped before storing its binding (here: the
    write fails, and the laptop is opened again). The server gives the id again to the
    account that enrolled it only, so the laptop must still say which one that was."""
    server = await start_server(tmp_path)
    path = tmp_path / "laptop.db"
    laptop = await Replica.open(path)
    try:
        replica_id = laptop.replica_id

        async def crash(*_args: object) -> None:
            raise StorageError("the laptop stopped here")

        monkeypatch.setattr(laptop.store, "set_identity", crash)
        with pytest.raises(StorageError):
            await laptop.enrol(
                server.url, username="dr.a", password=PASSWORD, organisation="clinic-a"
            )
        assert not laptop.enrolled  # what it holds in memory is what it stored
        await laptop.close()
        laptop = await Replica.open(path)
        assert not laptop.enrolled
        with pytest.raises(RemoteProtocolError, match=r"enrol again as 'dr\.a'"):
            await laptop.enrol(
                server.url, username="dr.b", password=PASSWORD, organisation="clinic-a"
            )
        await laptop.enrol(server.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
        assert laptop.replica_id == replica_id
        chart = await laptop.create_record()
        await laptop.set(chart, "name", "Awa Diop", author="dr.a")
        await laptop.sync()
        assert (await laptop.status()).pending == 0
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


async def test_a_laptop_just_enrolled_again_cannot_be_given_a_new_secret(tmp_path: Path) -> None:
    """The same once enrolled again after a restore (its first try's answer lost): the
    round that enrolled it again reported its outbox, so the id is seen, and the account
    that enrolled it, proposing it from a hostile client, gets an id of its own."""
    restores = Restores(tmp_path)
    late = await restores.start(tmp_path)
    try:
        server = await restores.put_back(restores.old)
        server.cut_next_enrol = True
        with pytest.raises(ConnectionLostError):
            await late.enrol_again(username="dr.a", password=PASSWORD)
        assert (await late.enrol_again(username="dr.a", password=PASSWORD)).server_went_back
        hostile = await Hostile.connect(server.url)
        try:
            await hostile.login("dr.a", PASSWORD, "clinic-a")
            hostile.protocol.enrol("hostile", late.replica_id)
            answer = await hostile.expect(Enrolled)
            assert isinstance(answer, Enrolled)
            assert answer.replica_id != late.replica_id
        finally:
            await hostile.close()
        assert (await late.sync()).server_went_back is False
        assert (await late.status()).pending == 0
    finally:
        await late.close()
        await restores.close()


async def test_an_id_not_given_again_to_the_account_that_asked_drops_the_note(
    tmp_path: Path,
) -> None:
    """enrol_again's answer was lost, then the newer backup was put back (the server
    knows the laptop, seen) and enrol_again was run again before any sync: its probe is
    skipped and the server gives the account a new id, refused. That answer shows no try
    of this laptop waits: the next enrol_again, as any account, asks as this laptop
    first, enrols nothing and does not claim an earlier try was enrolled."""
    restores = Restores(tmp_path)
    late = await restores.start(tmp_path)
    try:
        server = await restores.put_back(restores.old)
        server.cut_next_enrol = True
        with pytest.raises(ConnectionLostError):
            await late.enrol_again(username="dr.a", password=PASSWORD)
        server = await restores.put_back(restores.new)
        with pytest.raises(SyncRefusedError, match="sync this laptop instead"):
            await late.enrol_again(username="dr.a", password=PASSWORD)
        known = await _ids(server)
        with pytest.raises(SyncRefusedError) as refused:
            await late.enrol_again(username="dr.b", password=PASSWORD)
        assert "answer lost" not in str(refused.value)
        assert await _ids(server) == known
        assert (await late.sync()).server_went_back is False
    finally:
        await late.close()
        await restores.close()
