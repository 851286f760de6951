"""An enrolment whose answer (``Enrolled``) was lost on the way: the server committed the
laptop's id and a secret the laptop never got. Before, the laptop was stranded: a second
``enrol`` proposing its id got another id (refused by the laptop), a second
``enrol_again`` was refused as "still known", and its old secret failed every login.

Now the account that asked first asks again and the server gives that never-used id a
new secret; anyone else is told whom to ask as, and a used id is never given away.

Real parts: servers on SQLite files on 127.0.0.1, laptops on SQLite files.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from tests.e2e.enrol_helpers import EnrolCuttingServer, Restores
from tests.e2e.hostile import Hostile
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server

from caresync import ConnectionLostError
from caresync.exceptions import RemoteProtocolError, SyncRefusedError
from caresync.protocol import ClientProtocol, Error, ErrorCode, Welcome
from caresync.replica import Replica
from caresync.server import SyncServer
from caresync.transport import connect_websocket


async def _known_ids(server: SyncServer) -> list[str]:
    return [info.replica_id for info in await server.replicas()]


async def _enrol(laptop: Replica, server: SyncServer, user: str) -> None:
    await laptop.enrol(server.url, username=user, password=PASSWORD, organisation="clinic-a")


async def test_an_enrolment_whose_answer_was_lost_is_asked_again_under_the_same_id(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path, server_class=EnrolCuttingServer)
    assert isinstance(server, EnrolCuttingServer)
    laptop = await Replica.open(tmp_path / "laptop.db")
    try:
        server.cut_next_enrol = True
        with pytest.raises(ConnectionLostError):
            await _enrol(laptop, server, "dr.a")
        assert not laptop.enrolled
        assert await _known_ids(server) == [laptop.replica_id]  # committed, answer lost
        await _enrol(laptop, server, "dr.a")
        assert laptop.enrolled
        assert await _known_ids(server) == [laptop.replica_id]  # no second id
        chart = await laptop.create_record()
        await laptop.set(chart, "name", "Awa Diop", author="dr.a")
        await laptop.sync()
        assert (await laptop.status()).pending == 0
        other = await enrolled(tmp_path, server, "other", user="dr.b")
        try:
            assert (await other.record(chart, audited=False)).value("name") == "Awa Diop"
        finally:
            await other.close()
    finally:
        await laptop.close()
        await server.close()


async def test_another_account_is_told_to_ask_as_the_first(tmp_path: Path) -> None:
    """The server gives the id again only to the account that enrolled it; the laptop
    says which account that was (it kept who asked until its secret came)."""
    server = await start_server(tmp_path, server_class=EnrolCuttingServer)
    assert isinstance(server, EnrolCuttingServer)
    laptop = await Replica.open(tmp_path / "laptop.db")
    try:
        server.cut_next_enrol = True
        with pytest.raises(ConnectionLostError):
            await _enrol(laptop, server, "dr.a")
        with pytest.raises(RemoteProtocolError, match=r"enrol again as 'dr\.a'"):
            await _enrol(laptop, server, "dr.b")
        assert not laptop.enrolled
        await _enrol(laptop, server, "dr.a")
        assert laptop.enrolled
        await laptop.sync()
    finally:
        await laptop.close()
        await server.close()


async def test_enrolling_again_whose_answer_was_lost_names_the_first_account(
    tmp_path: Path,
) -> None:
    """enrol_again after a restore, its answer lost; a second try as another account is
    told to ask as the first (the probe is skipped: the server knows the id from that
    try); the first account puts it right."""
    restores = Restores(tmp_path)
    late = await restores.start(tmp_path)
    try:
        server = await restores.put_back(restores.old)  # forgets the laptop
        server.cut_next_enrol = True
        with pytest.raises(ConnectionLostError):
            await late.enrol_again(username="dr.a", password=PASSWORD)
        with pytest.raises(SyncRefusedError, match=r"enrol again as 'dr\.a'"):
            await late.enrol_again(username="dr.b", password=PASSWORD)
        report = await late.enrol_again(username="dr.a", password=PASSWORD)
        assert report.server_went_back
        assert (await late.status()).pending == 0
        fresh = await enrolled(tmp_path, server, "fresh")
        try:
            record = await fresh.record(restores.chart, audited=False)
            assert record.value("name") == "Awa Diop"
        finally:
            await fresh.close()
    finally:
        await late.close()
        await restores.close()


async def test_an_id_in_use_is_never_given_a_new_secret(tmp_path: Path) -> None:
    """A laptop that synced once is seen: an account proposing its id (here the account
    that enrolled it, from another laptop database claiming that id) gets another id,
    and the laptop in use goes on syncing with its own secret."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    claimer = await Replica.open(tmp_path / "claimer.db")
    try:
        claimer.identity = replace(claimer.identity, replica_id=laptop.replica_id)
        with pytest.raises(RemoteProtocolError, match="the server assigned replica id"):
            await _enrol(claimer, server, "dr.a")
        assert len(await _known_ids(server)) == 2  # the claimer's try got an id of its own
        chart = await laptop.create_record()
        await laptop.set(chart, "name", "Awa Diop", author="dr.a")
        await laptop.sync()
        assert (await laptop.status()).pending == 0
    finally:
        await claimer.close()
        await laptop.close()
        await server.close()


async def test_a_client_too_old_for_secrets_is_refused_enrolment_before_anything_is_enrolled(
    tmp_path: Path,
) -> None:
    """Before, a protocol-3 client was enrolled with the hash of a secret it was never
    sent (Enrolled carries one from version 4): its every later login failed."""
    server = await start_server(tmp_path)
    channel = await connect_websocket(server.url)
    try:
        old = Hostile(ClientProtocol(protocol_versions=(1, 2, 3)), channel)
        old.protocol.send_hello()
        await old.expect(Welcome)
        await old.login("dr.a", PASSWORD, "clinic-a")
        old.protocol.enrol("old laptop")
        refusal = await old.next_event()
        assert isinstance(refusal, Error)
        assert refusal.code == ErrorCode.UNSUPPORTED_VERSION
        assert "update caresync" in refusal.message
        assert await _known_ids(server) == []
    finally:
        await channel.close()
        await server.close()
