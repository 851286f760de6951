"""The harness on the in-memory channel: the plugin's tests again, with no socket.

The ``caresync_transport`` fixture is overridden here, so the ``clinic`` fixtures make
clinics on a :class:`~caresync.transport.MemoryNetwork`; the plugin's own tests
(imported below, collected again in this module) then cut links, reconnect, run live
laptops and check convergence over memory. One is about sockets and stays
websocket-only: the link's own address. (A laptop sent to a second clinic's server runs
here too: the clinics of one test share a network, each server under its own name.)
Real parts otherwise: SyncServer and replicas on SQLite files. Nothing sleeps.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from tests.test_testing_harness_truth import (  # noqa: F401 - collected again, on memory
    test_assert_converged_compares_the_conflicts_each_laptop_shows,
    test_laptops_not_of_this_clinic_and_bad_timeouts_are_refused_saying_why,
    test_quiescent_waits_for_a_laptop_that_missed_that_the_server_went_back,
    test_quiescent_waits_for_pushes_the_server_acknowledged_and_then_lost,
)
from tests.test_testing_plugin import (  # noqa: F401 - collected again, on memory
    test_a_conflict_made_offline_is_seen_alike_by_every_laptop_and_the_server,
    test_a_laptop_refuses_another_clinics_server,
    test_a_laptop_restarted_while_offline_keeps_its_unsynced_work,
    test_a_laptop_whose_live_mode_fails_makes_quiescent_raise_why,
    test_assert_converged_lists_what_a_laptop_holds_that_the_server_lacks,
    test_bad_input_is_refused_with_a_message,
    test_laptops_of_two_organisations_settle_apart,
    test_offline_cuts_a_live_connection_and_online_brings_it_back,
    test_offline_laptop_cannot_reach_the_server_and_keeps_its_work,
    test_quiescent_times_out_naming_the_laptop_that_did_not_settle,
    test_the_example_of_docs_testing_md,
    test_the_server_stops_and_restarts_while_laptops_keep_working,
)

from caresync import ConnectionLostError, InvalidInputError
from caresync.replica import ReplicaState
from caresync.testing import Clinic, ClinicFactory
from caresync.transport import MemoryLink, MemoryNetwork

LIMIT_S = 20.0


@pytest.fixture
def caresync_transport() -> str:
    return "memory"


async def test_a_memory_clinic_has_no_socket(clinic: Clinic) -> None:
    assert clinic.transport == "memory"
    assert clinic.network is not None
    north = await clinic.laptop("north")
    assert isinstance(north.link, MemoryLink)
    assert north.connector is north.link
    assert clinic.url == north.link.url == north.identity.server_url == "memory://server"
    assert north.link.connects >= 1  # enrolment went through the link
    assert (await north.sync()).uploaded == 0


async def test_a_cut_during_live_mode_drops_the_connection_and_it_comes_back(
    clinic: Clinic,
) -> None:
    north = await clinic.laptop("north", live=True)
    south = await clinic.laptop("south")
    north.link.drop()  # a blip: the link stays up, the connection is gone
    await north.wait_for_state(ReplicaState.OFFLINE)
    await north.wait_for_state(ReplicaState.ONLINE)  # reconnected by itself
    record_id = await south.create_record()
    await south.set(record_id, "name", "Aminata Diallo", author="dr.test")
    await clinic.quiescent()
    assert (await north.record(record_id)).value("name") == "Aminata Diallo"
    await clinic.assert_converged()


async def test_a_clinic_with_a_delay_on_every_frame_still_converges(tmp_path: Path) -> None:
    async with Clinic(tmp_path / "slow", transport="memory", delay=0.002, timeout=LIMIT_S) as c:
        north = await c.laptop("north", live=True)
        south = await c.laptop("south")
        assert isinstance(north.link, MemoryLink)
        assert north.link.delay == 0.002
        record_id = await south.create_record()
        started = asyncio.get_running_loop().time()
        await south.set(record_id, "name", "Seynabou", author="dr.test")
        await c.quiescent()
        # Several frames went each way, each held 2 ms.
        assert asyncio.get_running_loop().time() - started >= 0.004
        assert (await north.record(record_id)).value("name") == "Seynabou"
        await c.assert_converged()


async def test_an_offline_memory_laptop_cannot_connect(clinic: Clinic) -> None:
    north = await clinic.laptop("north")
    north.offline()
    with pytest.raises(ConnectionLostError, match="cut"):
        await north.sync()
    north.online()
    await north.sync()


async def test_transport_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="transport"):
        Clinic(tmp_path, transport="carrier-pigeon")
    with pytest.raises(InvalidInputError, match="delay"):
        Clinic(tmp_path, delay=0.1)  # websockets: sockets take their own time
    with pytest.raises(InvalidInputError, match="delay"):
        Clinic(tmp_path, transport="memory", delay=-1)


TRANSPORT_TEST = """
async def test_the_clinic_runs_where_it_was_told(clinic):
    north = await clinic.laptop("north")
    north.offline()
    north.online()
    await clinic.quiescent()
    print("TRANSPORT", clinic.transport, clinic.url)
"""


def _pytest(directory: Path, *options: str, ini: str = "") -> subprocess.CompletedProcess[str]:
    (directory / "test_app.py").write_text(TRANSPORT_TEST)
    (directory / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n" + ini)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *options],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_plugin_option_and_ini_key_choose_the_transport(tmp_path: Path) -> None:
    done = _pytest(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TRANSPORT websocket ws://127.0.0.1:" in done.stdout
    done = _pytest(tmp_path, "--caresync-transport", "memory")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TRANSPORT memory memory://server" in done.stdout
    done = _pytest(tmp_path, ini="caresync_transport = memory\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TRANSPORT memory memory://server" in done.stdout
    done = _pytest(tmp_path, ini="caresync_transport = pigeon\n")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "caresync_transport must be websocket or memory" in done.stdout


async def test_the_clinics_of_a_test_share_a_network_each_server_under_its_own_name(
    clinic_factory: ClinicFactory, tmp_path: Path
) -> None:
    for bad in (dict(network=MemoryNetwork()), dict(transport="memory", network="memory")):
        with pytest.raises(InvalidInputError, match="network must be a MemoryNetwork"):
            Clinic(tmp_path / "bad", **bad)  # type: ignore[arg-type]
    first = await clinic_factory("first")
    second = await clinic_factory("second", organisation="other", user="dr.other")
    assert first.network is not None
    assert first.network is second.network
    assert first.url == "memory://server"  # the first keeps the name a lone clinic has
    assert second.url == "memory://second"
    # A laptop name may be used in both clinics: each reaches its own server.
    mine, theirs = await first.laptop("north"), await second.laptop("north")
    assert mine.link is not theirs.link
    assert mine.identity.server_url == first.url
    assert theirs.identity.server_url == second.url
    record_id = await theirs.create_record()
    await second.quiescent()
    assert await second.server.store.has_record(record_id)
    assert not await first.server.store.has_record(record_id)
    # The link of one clinic's laptop is cut alone.
    theirs.offline()
    assert mine.link.up
    assert (await mine.sync()).uploaded == 0
    await second.restart_server()  # back under its own name
    assert second.url == "memory://second"
    theirs.online()
    await second.quiescent()
    await second.assert_converged()
