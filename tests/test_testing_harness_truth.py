"""The harness does not say "quiescent" or "converged" when it is not so.

Each test sets up a clinic whose laptops are NOT in step in a way a harness could miss
(a server that went back in time, a laptop showing other conflicts than the server)
and checks that :meth:`Clinic.quiescent` waits (and brings them in step) or that
:meth:`Clinic.assert_converged` fails, naming the difference. Real parts: a SyncServer
and laptops on SQLite files; collected again on the in-memory channel by
``tests/test_testing_memory.py``. Nothing sleeps.
"""

from __future__ import annotations

from typing import Any

import pytest

from caresync.exceptions import InvalidInputError
from caresync.storage.base import IncomingUpdate
from caresync.testing import Clinic, ClinicFactory, Laptop, NotConvergedError


async def value(laptop: Laptop, record_id: str, path: str) -> object:
    return (await laptop.record(record_id, audited=False)).value(path)


async def test_quiescent_waits_for_a_laptop_that_missed_that_the_server_went_back(
    clinic: Clinic,
) -> None:
    north = await clinic.laptop("north")
    south = await clinic.laptop("south")
    record_id = await north.create_record()
    await north.set(record_id, "name", "Aminata Ba")
    await clinic.quiescent()
    backup = await clinic.back_up_server()
    await north.set(record_id, "sex", "female")  # acknowledged, then lost by the restore
    await clinic.quiescent()
    await clinic.restore_server(backup)
    # The restored server gives its feed numbers out again: south's new entry takes
    # the number north read "sex" under. North has not synced since the restore.
    await south.set(record_id, "birthDate", "1990-03-04")
    await clinic.quiescent()
    assert await value(north, record_id, "birthDate") == "1990-03-04"
    assert await value(south, record_id, "sex") == "female"
    await clinic.assert_converged()


async def test_quiescent_waits_for_pushes_the_server_acknowledged_and_then_lost(
    clinic: Clinic,
) -> None:
    north = await clinic.laptop("north")
    south = await clinic.laptop("south")
    record_id = await north.create_record()
    await clinic.quiescent()
    backup = await clinic.back_up_server()
    await north.set(record_id, "name", "Fatou Sall")
    await north.sync(pull=False)  # pushed and acknowledged; north's checkpoint stays
    await clinic.restore_server(backup)
    # North's outbox is empty and its checkpoint is where the restored feed ends, but
    # the server no longer holds its push: it is not in step until it sends it again.
    await clinic.quiescent()
    assert await value(south, record_id, "name") == "Fatou Sall"
    await clinic.assert_converged()


async def test_assert_converged_compares_the_conflicts_each_laptop_shows(
    clinic: Clinic,
) -> None:
    north = await clinic.laptop("north")
    south = await clinic.laptop("south")
    record_id = await north.create_record()
    await clinic.quiescent()
    north.offline()
    await north.set(record_id, "birthDate", "1988-04-21")
    await south.set(record_id, "birthDate", "1988-12-04")
    north.online()
    await clinic.quiescent()
    [conflict] = await clinic.server.store.conflicts()
    assert [c.id for c in await north.conflicts()] == [conflict.id]
    await clinic.assert_converged()

    # A fault injected into north's conflict index: north no longer shows the conflict
    # every other replica shows, though it holds the same revisions.
    await north.store.set_conflicts(record_id, [])
    assert await north.conflicts() == []
    with pytest.raises(NotConvergedError) as caught:
        await clinic.assert_converged()
    assert list(caught.value.differences) == ["north"]
    [line] = caught.value.differences["north"]
    assert f"record {record_id}" in line
    assert conflict.id in line


async def test_laptops_not_of_this_clinic_and_bad_timeouts_are_refused_saying_why(
    clinic_factory: ClinicFactory,
) -> None:
    clinic = await clinic_factory("clinic")
    other = await clinic_factory("other")
    north = await clinic.laptop("north")
    foreign = await other.laptop("foreign")
    await foreign.set(await foreign.create_record(), "name", "Awa")
    # Another clinic's laptop is not compared with this clinic's server, nor logged in here.
    with pytest.raises(InvalidInputError, match="'foreign' is not a laptop of this clinic"):
        await clinic.assert_converged(foreign)
    with pytest.raises(InvalidInputError, match="'foreign' is not a laptop of this clinic"):
        await clinic.log_in(foreign, "dr.new")
    with pytest.raises(InvalidInputError, match="not a laptop of this clinic: 'north'"):
        await clinic.assert_converged("north")  # type: ignore[arg-type]
    # The object reopen() replaced is closed: the message names the one to use.
    again = await clinic.reopen("north")
    with pytest.raises(InvalidInputError, match=r"reopened.*clinic\.laptops\['north'\]"):
        await clinic.assert_converged(north)
    with pytest.raises(InvalidInputError, match=r"reopened.*clinic\.laptops\['north'\]"):
        await clinic.log_in(north, "dr.new")
    await clinic.assert_converged(again)
    for bad in (0, -1, "5", float("nan"), True):
        with pytest.raises(InvalidInputError, match="timeout must be a positive number"):
            await clinic.quiescent(timeout=bad)  # type: ignore[arg-type]
    await clinic.quiescent(timeout=5)


async def test_a_push_the_server_acknowledged_but_did_not_store_fails_assert_converged(
    clinic: Clinic, monkeypatch: pytest.MonkeyPatch
) -> None:
    north = await clinic.laptop("north")
    south = await clinic.laptop("south", live=True)
    record_id = await north.create_record()
    await clinic.quiescent()
    # A fault injected into the server's store: the first update of the next push is
    # acknowledged (and counted in the server's push mark) but never stored.
    store = clinic.server.store
    write_remote = store.write_remote
    dropped: list[str] = []

    async def dropping(items: list[IncomingUpdate], **options: Any) -> list[int]:
        if options.get("origin") and not dropped and len(items) > 1:
            dropped.append(items[0].record_id)
            return [0, *await write_remote(items[1:], **options)]
        return await write_remote(items, **options)

    monkeypatch.setattr(store, "write_remote", dropping)
    north.offline()
    await north.set(record_id, "name", "Mariama Diop")
    await north.set(record_id, "sex", "female")
    north.online()
    await clinic.quiescent()  # nothing is in flight: what the server lost is lost
    assert dropped == [record_id]
    assert (await north.status()).pending == 0
    await clinic.assert_converged(south)  # south holds what the server holds
    with pytest.raises(NotConvergedError) as caught:
        await clinic.assert_converged()
    assert list(caught.value.differences) == ["north"]
    assert "the server lacks" in caught.value.differences["north"][0]
