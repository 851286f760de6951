"""Authors are accounts, through the command line: an entry is written as the account
logged in on the laptop (``--author`` may be left out; naming anyone else is refused),
``logout`` and ``login`` change who that is, ``status`` says who it is, and conflicts
show each author's display name (``user add --name``, ``user name``).

Real parts: a `caresync serve` process on 127.0.0.1 and SQLite files.
"""

from __future__ import annotations

from tests.cli.clitools import digest, inproc, sh
from tests.cli.conftest import Clinic
from tests.cli.test_cli_commands import new_record, refused, status

from caresync.cli.errors import ExitCode


def test_an_entry_is_written_as_the_account_logged_in(clinic: Clinic) -> None:
    laptop = clinic.enrol("authored")  # dr.a enrols it, and so is logged in
    assert status(laptop)["user"] == "dr.a"
    record_id = new_record(laptop)
    set_ = "record set --db {db} {r} weightKg 70 --json"
    assert inproc(set_, db=laptop, r=record_id).ok().json()["author"] == "dr.a"
    same = "record set --db {db} {r} weightKg 71 --author dr.a --json"
    assert inproc(same, db=laptop, r=record_id).ok().json()["author"] == "dr.a"

    before = digest(laptop)
    other = "record set --db {db} {r} weightKg 72 --author {who}"
    refused(
        inproc(other, db=laptop, r=record_id, who="Dr Nobody"),
        ExitCode.USAGE,
        "'Dr Nobody' is not the account logged in on this laptop (dr.a)",
    )
    assert digest(laptop) == before  # nothing stored

    gone = inproc("logout --db {db} --json", db=laptop).ok().json()
    assert gone["logged_out"] == "dr.a"
    assert status(laptop)["user"] is None
    refused(inproc(set_, db=laptop, r=record_id), ExitCode.REFUSED, "nobody is logged in")
    refused(inproc("record new --db {db}", db=laptop), ExitCode.REFUSED, "nobody is logged in")
    inproc("login --db {db} --username dr.a", db=laptop).ok()
    assert inproc(set_, db=laptop, r=record_id).ok().json()["author"] == "dr.a"


def test_conflicts_show_each_authors_display_name(clinic: Clinic) -> None:
    sh(
        "user add --db {db} --org clinic-a --username dr.n --name {name}",
        db=clinic.db,
        name="Dr Aïcha Diallo",
    ).ok()
    sh(
        "user name --db {db} --org clinic-a --username dr.b --name {name}",
        db=clinic.db,
        name="Dr B. Mensah",
    ).ok()
    refused(
        inproc("user name --db {db} --org clinic-a --username dr.nobody --name X", db=clinic.db),
        ExitCode.NOT_FOUND,
        "dr.nobody",
    )
    north = clinic.enrol("named-north", username="dr.n")
    south = clinic.enrol("named-south", username="dr.b")
    record_id = new_record(north)
    inproc("sync --db {db}", db=north).ok()
    inproc("sync --db {db}", db=south).ok()
    write = "record set --db {db} {r} birthDate {value}"
    inproc(write, db=north, r=record_id, value="1988-04-21").ok()
    inproc(write, db=south, r=record_id, value="1988-12-04").ok()
    for laptop in (north, south, north):
        inproc("sync --db {db}", db=laptop).ok()

    for db in (north, south, clinic.db):  # laptops and the server say the same
        listed = inproc("conflicts list --db {db} --record {r} --json", db=db, r=record_id)
        (conflict,) = listed.ok().json()["conflicts"]
        names = {(c["author"], c["author_name"]) for c in conflict["candidates"]}
        assert names == {("dr.n", "Dr Aïcha Diallo"), ("dr.b", "Dr B. Mensah")}, db
        shown = inproc("record show --db {db} {r} --json", db=db, r=record_id).ok().json()
        field = shown["fields"]["birthDate"]
        assert {c["author_name"] for c in field["candidates"]} == {
            "Dr Aïcha Diallo",
            "Dr B. Mensah",
        }
    human = inproc("conflicts list --db {db} --record {r}", db=north, r=record_id).ok()
    assert "Dr Aïcha Diallo (dr.n)" in human.stdout
