"""A clinic server and two laptops: record offline, sync, see and resolve a conflict.

Run:  python examples/clinic_and_laptop.py [WORKDIR]
Everything stays on 127.0.0.1; the databases go to WORKDIR (a temporary folder by default).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from caresync.replica import Replica
from caresync.server import SyncServer

PASSWORD = "example passphrase"


async def run(workdir: Path) -> int:
    server = await SyncServer.open(workdir / "clinic.db")
    await server.add_user("clinic", "dr.ba", PASSWORD)
    await server.add_user("clinic", "nurse.sow", PASSWORD)
    await server.serve("127.0.0.1", 0)
    north = await Replica.open(workdir / "laptop-north.db")
    south = await Replica.open(workdir / "laptop-south.db")
    try:
        for laptop, user in ((north, "nurse.sow"), (south, "dr.ba")):
            await laptop.enrol(server.url, username=user, password=PASSWORD, organisation="clinic")

        # A visit recorded at the clinic, then both laptops leave with a copy.
        patient = await north.create_record()
        await north.set(patient, "name", "Amina Diallo", author="nurse.sow")
        await north.set(patient, "birthDate", "1988-04-12", author="nurse.sow")
        await north.sync()
        await south.sync()

        # Offline, both correct the date of birth, differently.
        await north.set(patient, "birthDate", "1988-04-21", author="nurse.sow")
        await south.set(patient, "birthDate", "1988-12-04", author="dr.ba")
        await north.add_entry(
            patient, "encounters", {"type": "home visit", "status": "finished"}, author="nurse.sow"
        )

        # Back at the clinic: sync, and both laptops show the same conflict.
        for laptop in (north, south, north):
            await laptop.sync()
        conflict = (await south.conflicts())[0]
        print(conflict.message)
        for i, candidate in enumerate(conflict.candidates):
            print(f"  [{i}] {candidate.value} by {candidate.author}")

        # Dr Ba checks the patient's papers and chooses the candidate they confirm.
        # (Candidates are ordered by time; pick by what the person chose, not position.)
        confirmed = next(i for i, c in enumerate(conflict.candidates) if c.value == "1988-04-21")
        await south.resolve(conflict.id, choose=confirmed, author="dr.ba")
        for laptop in (south, north):
            await laptop.sync()
        view = await north.record(patient)
        print("birthDate now", view.value("birthDate"))
        print("history:", [r.value for r in view.history("birthDate")])
        agreed = await north.conflicts() == [] == await south.conflicts()
        return 0 if agreed and view.value("birthDate") == "1988-04-21" else 1
    finally:
        await north.close()
        await south.close()
        await server.close()


def main() -> int:
    if len(sys.argv) > 1:
        return asyncio.run(run(Path(sys.argv[1])))
    with tempfile.TemporaryDirectory(prefix="caresync-example-") as tmp:
        return asyncio.run(run(Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
