"""A minimal clinical application embedding a caresync replica on each laptop.

Run:  python examples/clinical_app.py [WORKDIR]

A clinic server and two laptops, everything on 127.0.0.1 with SQLite files in WORKDIR
(a temporary folder by default). A nurse registers a patient at the clinic; out on a
home visit, with no network, she records the visit and corrects the date of birth,
while the doctor, also offline, corrects it differently from an old card. Back at the
clinic both laptops sync, show the same conflict, the doctor resolves it, and the
values not chosen stay in the record's history. Exits 0 when all of that held.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from caresync import Conflict, JSONValue
from caresync.replica import Replica, ReplicaState
from caresync.server import SyncServer

PASSWORD = "example passphrase"


class VisitApp:
    """What a laptop application does with caresync; its "screens" are printed lines."""

    def __init__(self, replica: Replica, user: str, label: str) -> None:
        self.replica = replica
        self.user = user
        self.label = label
        replica.on_status(self._status_light)  # the app's online/offline indicator

    @classmethod
    async def start(cls, path: Path, user: str, label: str) -> VisitApp:
        return cls(await Replica.open(path), user, label)

    def say(self, text: str) -> None:
        print(f"[{self.label}] {text}")

    def _status_light(self, state: ReplicaState) -> None:
        if state in (ReplicaState.SYNCHRONISING, ReplicaState.LOCKED):
            self.say(f"status light: {state.value}")

    async def status_line(self) -> str:
        status = await self.replica.status()
        return (
            f"{status.pending} change(s) not yet synced, "
            f"{status.conflicts_open} conflict(s) to settle, {status.records} patient(s)"
        )

    # ------------------------------------------------------------ the screens

    async def register_patient(self, name: str, birth_date: str) -> str:
        patient = await self.replica.create_record()
        await self.replica.set(patient, "name", name, author=self.user)
        await self.replica.set(patient, "birthDate", birth_date, author=self.user)
        return patient

    async def record_visit(
        self, patient: str, *, reason: str, temperature_c: float, weight_kg: float
    ) -> str:
        """One home visit: an encounter and two observations (each saved before returning)."""
        replica, author = self.replica, self.user
        visit = await replica.add_entry(
            patient,
            "encounters",
            {"type": "home visit", "reason": reason, "status": "finished"},
            author=author,
        )
        for code, value, unit in (
            ("temperature", temperature_c, "Cel"),
            ("weight", weight_kg, "kg"),
        ):
            await replica.add_entry(
                patient,
                "observations",
                {"code": code, "value": value, "unit": unit, "encounter": visit},
                author=author,
            )
        return visit

    async def correct(self, patient: str, path: str, value: JSONValue) -> None:
        await self.replica.set(patient, path, value, author=self.user)

    async def sync(self) -> None:
        report = await self.replica.sync()
        self.say(
            f"synced: {report.uploaded} sent, {report.downloaded} received, "
            f"{report.conflicts_open} conflict(s) open"
        )

    async def show_patient(self, patient: str) -> None:
        view = await self.replica.record(patient)
        name = view.get("name")
        self.say(f"patient {name.value if not name.in_conflict else '?'}")
        birth = view.get("birthDate")
        if birth.in_conflict:  # never shows one of the values as if it were agreed
            values = " or ".join(repr(c.value) for c in birth.candidates)
            self.say(f"  date of birth: CONFLICT, {values}")
        else:
            self.say(f"  date of birth: {birth.value}")
        visits = view.entries("encounters")
        self.say(f"  visits: {[v.value('reason') for v in visits]}")

    async def conflicts_screen(self) -> list[Conflict]:
        conflicts = await self.replica.conflicts()
        for conflict in conflicts:
            self.say(f"  {conflict.severity.value}: {conflict.message}")
            for i, candidate in enumerate(conflict.candidates):
                self.say(
                    f"    [{i}] {candidate.value!r} by {candidate.author} on {candidate.replica}"
                )
        return conflicts

    async def choose(self, conflict: Conflict, value: JSONValue) -> None:
        """The person picked the candidate showing ``value`` (by what they saw, not position)."""
        index = next(i for i, c in enumerate(conflict.candidates) if c.value == value)
        await self.replica.resolve(conflict.id, choose=index, author=self.user)


async def run(workdir: Path) -> int:
    server = await SyncServer.open(workdir / "clinic.db")
    await server.add_user("clinic", "nurse.sow", PASSWORD)
    await server.add_user("clinic", "dr.ba", PASSWORD)
    await server.serve("127.0.0.1", 0)
    nurse = await VisitApp.start(workdir / "laptop-nurse.db", "nurse.sow", "nurse")
    doctor = await VisitApp.start(workdir / "laptop-doctor.db", "dr.ba", "doctor")
    try:
        print("-- enrolling both laptops to the clinic (first copy)")
        for app in (nurse, doctor):
            await app.replica.enrol(
                server.url, username=app.user, password=PASSWORD, organisation="clinic"
            )

        print("-- at the clinic")
        patient = await nurse.register_patient("Amina Diallo", "1988-04-12")
        await nurse.sync()
        await doctor.sync()

        print("-- out of the clinic, no network")
        await nurse.record_visit(patient, reason="fever", temperature_c=38.4, weight_kg=61.5)
        await nurse.correct(patient, "birthDate", "1988-04-21")  # from the patient's ID card
        await doctor.correct(patient, "birthDate", "1988-12-04")  # from an old paper card
        nurse.say(await nurse.status_line())
        doctor.say(await doctor.status_line())

        print("-- back at the clinic")
        for app in (nurse, doctor, nurse):
            await app.sync()
        await doctor.show_patient(patient)
        seen_by_doctor = await doctor.conflicts_screen()
        seen_by_nurse = await nurse.replica.conflicts()
        same_everywhere = seen_by_doctor == seen_by_nurse and len(seen_by_doctor) == 1

        print("-- the doctor checks the ID card and chooses")
        await doctor.choose(seen_by_doctor[0], "1988-04-21")
        await doctor.sync()
        await nurse.sync()
        await nurse.show_patient(patient)
        view = await nurse.replica.record(patient)
        history = [rev.value for rev in view.history("birthDate")]
        nurse.say(f"  date of birth, history: {history}")
        nurse.say(await nurse.status_line())

        ok = (
            same_everywhere
            and view.value("birthDate") == "1988-04-21"
            and {"1988-04-12", "1988-04-21", "1988-12-04"} <= set(history)  # nothing lost
            and await nurse.replica.conflicts() == [] == await doctor.replica.conflicts()
            and len((await doctor.replica.record(patient)).entries("encounters")) == 1
        )
        print("OK" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        await nurse.replica.close()
        await doctor.replica.close()
        await server.close()


def main() -> int:
    if len(sys.argv) > 1:
        return asyncio.run(run(Path(sys.argv[1])))
    with tempfile.TemporaryDirectory(prefix="caresync-example-") as tmp:
        return asyncio.run(run(Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
