"""The harness does not say "quiescent" or "converged" when it is not so.

Each test sets up a clinic whose laptops are NOT in step in a way a harness could miss
(a server that went back in time, a laptop showing other conflicts than the server)
and checks that :meth:`Clinic.quiescent` waits (and brings them in step) or that
:meth:`Clinic.assert_converged` fails, naming the difference. Real parts: a SyncServer
and laptops on SQLite files; collected again on the in-memory channel by
``tests/test_testing_memory.py``. Nothing sleeps.
"""

from __future__ import annotations

import pytest

from caresync.testing import Clinic, Laptop, NotConvergedError


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
