"""Authors are accounts: every entry is written as the account logged in on the laptop,
and the server refuses, storing nothing, a revision whose author never logged in on
the replica that wrote it, or that another replica wrote (unless that replica was
revoked and its unsynced work is being carried to the server by a colleague's laptop).

Real parts: a server on 127.0.0.1 and SQLite files. A hostile client is played by
writing a hand-made update straight into a laptop's outbox (what a modified client
would push).
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server

import caresync.logins as logins_module
from caresync.cli.transfer import import_file
from caresync.exceptions import (
    AuthorError,
    InvalidFhirError,
    InvalidInputError,
    NotLoggedInError,
)
from caresync.fhir import bundle_bytes, export_record, import_fhir, plan_import
from caresync.fhir.vocabulary import NAMESPACE
from caresync.logins import LOGIN_IDLE_S
from caresync.records import Record
from caresync.replica import Replica
from caresync.server import SyncServer


async def _server_field(server: SyncServer, record_id: str, path: str) -> object:
    """What the server's copy of a record holds at ``path`` (None if it has no record)."""
    stored = await server.store.load(record_id)
    if stored is None:
        return None
    return Record.from_update(record_id, stored, replica="reader").value(path)


async def test_an_entry_is_written_as_the_account_logged_in(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")  # dr.a enrolled it
    try:
        assert laptop.user == "dr.a"
        record_id = await laptop.create_record()
        written = await laptop.set(record_id, "birthDate", "1990-01-01")
        assert written.author == "dr.a"
        assert written.replica == laptop.replica_id
        pending = (await laptop.status()).pending

        with pytest.raises(AuthorError, match=r"'dr\.b' is not the account logged in"):
            await laptop.set(record_id, "birthDate", "1991-01-01", author="dr.b")
        assert (await laptop.status()).pending == pending  # nothing stored
        assert (await laptop.record(record_id)).value("birthDate") == "1990-01-01"

        # Another account logs in online on this laptop: from then on it writes.
        await laptop.sync(username="dr.b", password=PASSWORD, organisation="clinic-a")
        assert laptop.user == "dr.b"
        by_b = await laptop.set(record_id, "weightKg", 70)
        assert by_b.author == "dr.b"
        assert (await laptop.sync()).uploaded == 1  # the server takes dr.b's entry
        assert await _server_field(server, record_id, "weightKg") == 70

        await laptop.logout()
        assert laptop.user is None
        with pytest.raises(NotLoggedInError, match="nobody is logged in"):
            await laptop.set(record_id, "weightKg", 71)
        with pytest.raises(NotLoggedInError):
            await laptop.create_record()
        await laptop.login_offline("dr.a", PASSWORD)
        assert (await laptop.set(record_id, "weightKg", 72)).author == "dr.a"

        # Who is logged in survives closing the program.
        await laptop.close()
        laptop = await Replica.open(tmp_path / "laptop.db")
        assert laptop.user == "dr.a"
    finally:
        await laptop.close()
        await server.close()


async def test_a_login_expires_on_an_idle_laptop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1_800_000_000_000]
    monkeypatch.setattr(logins_module, "_wall_ms", lambda: now[0])
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    await server.close()  # offline from here on
    try:
        record_id = await laptop.create_record()
        idle_ms = int(LOGIN_IDLE_S * 1000)
        # An edit now and then keeps the login alive, longer than the idle limit in all.
        for _ in range(3):
            now[0] += idle_ms - 1_000
            await laptop.set(record_id, "weightKg", 70)
        # Reopened, the laptop still knows when it was last used.
        await laptop.close()
        laptop = await Replica.open(tmp_path / "laptop.db")
        now[0] += idle_ms + 1
        assert laptop.user is None
        with pytest.raises(NotLoggedInError, match="expired after 1800 s without an edit"):
            await laptop.set(record_id, "weightKg", 71)
        await laptop.login_offline("dr.a", PASSWORD)
        assert (await laptop.set(record_id, "weightKg", 72)).author == "dr.a"
    finally:
        await laptop.close()


async def test_the_server_refuses_an_author_who_never_logged_in_there(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        record_id = await laptop.create_record()
        await laptop.sync()
        head = await server.store.feed_head()
        # A modified client writes an entry in the name of an account that never
        # logged in on this laptop (dr.b exists, but logged in elsewhere only).
        forged = Record.create(replica=laptop.replica_id, record_id=record_id)
        forged.set("weightKg", 80, author="dr.b")
        await laptop.store.write_local(
            record_id, forged.update_since(), conflicts=(), organisation="clinic-a"
        )
        # Set aside (protocol version 16): the sync goes on, the record is named, and why.
        [held] = (await laptop.sync()).set_aside
        assert held.record_id == record_id
        assert re.search(r"names 'dr\.b' as its author", held.reason)
        assert held.reason.startswith("forbidden:")
        assert "nothing stored" in held.reason
        assert await server.store.feed_head() == head  # nothing stored
        assert (await laptop.status()).pending == 1  # the laptop keeps it
        assert await _server_field(server, record_id, "weightKg") is None
    finally:
        await laptop.close()
        await server.close()


async def test_the_server_refuses_changes_another_replica_wrote(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    other = await enrolled(tmp_path, server, "other")  # a colleague's laptop, not revoked
    try:
        record_id = await laptop.create_record()
        await laptop.sync()
        head = await server.store.feed_head()
        forged = Record.create(replica=other.replica_id, record_id=record_id)
        forged.set("birthDate", "1990-01-01", author="dr.a")
        await laptop.store.write_local(
            record_id, forged.update_since(), conflicts=(), organisation="clinic-a"
        )
        [held] = (await laptop.sync()).set_aside
        assert (held.record_id, held.entries) == (record_id, 1)
        assert f"written on replica '{other.replica_id}'" in held.reason
        assert await server.store.feed_head() == head
        assert (await laptop.status()).pending == 1
    finally:
        await other.close()
        await laptop.close()
        await server.close()


async def test_no_laptop_pushes_another_laptops_changes_even_a_revoked_ones(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    lost = await enrolled(tmp_path, server, "lost")  # dr.a's
    other = await enrolled(tmp_path, server, "other", user="dr.b")
    try:
        record_id = await lost.create_record()
        await lost.set(record_id, "birthDate", "1990-01-01")
        await lost.sync()
        await lost.set(record_id, "weightKg", 64)  # offline work, never pushed
        export = tmp_path / "unsynced.jsonl"
        await lost.store.export_unsynced(export)
        await server.revoke(lost.replica_id)

        # The import refuses it whole (pushed, the server would refuse it for good).
        pending = (await other.status()).pending
        with pytest.raises(InvalidInputError, match="written on laptop"):
            await import_file(other, str(export))
        assert (await other.status()).pending == pending

        # A modified client that writes in the revoked laptop's name is refused too:
        # a revision's replica field proves nothing.
        await other.sync()
        head = await server.store.feed_head()
        forged = Record.create(replica=lost.replica_id, record_id=record_id)
        forged.set("allergies-note", "none known", author="dr.a")
        await other.store.write_local(
            record_id, forged.update_since(), conflicts=(), organisation="clinic-a"
        )
        [held] = (await other.sync()).set_aside
        assert held.record_id == record_id
        assert "pushes only its own changes" in held.reason
        assert await server.store.feed_head() == head
        assert await _server_field(server, record_id, "allergies-note") is None
    finally:
        await lost.close()
        await other.close()
        await server.close()


async def test_laptops_learn_the_display_names_of_the_organisations_accounts(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    await server.add_user("clinic-a", "dr.c", PASSWORD, display_name="Dr Aïcha Diallo")
    await server.store.set_display_name("clinic-a", "dr.a", "Dr Ama Mensah")
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        assert laptop.shown_as("dr.a") == "Dr Ama Mensah"
        assert laptop.shown_as("dr.c") == "Dr Aïcha Diallo"  # never logged in here
        assert laptop.shown_as("dr.b") == "dr.b"  # no display name: the account name
        assert laptop.shown_as("dr.x") == "dr.x"  # another organisation's: not sent
        await server.store.set_display_name("clinic-a", "dr.c", "Dr A. Diallo")
        await laptop.sync()
        assert laptop.shown_as("dr.c") == "Dr A. Diallo"
        await laptop.close()
        laptop = await Replica.open(tmp_path / "laptop.db")  # kept in the database
        assert laptop.shown_as("dr.c") == "Dr A. Diallo"
    finally:
        await laptop.close()
        await server.close()


async def test_a_fhir_import_is_written_as_the_account_logged_in(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    source = await enrolled(tmp_path, server, "source")
    laptop = await enrolled(tmp_path, server, "laptop", user="dr.b")
    try:
        record_id = await source.create_record()
        await source.set(record_id, "name", "Awa Ba")
        bundle = bundle_bytes(await export_record(source, record_id))
        pending = (await laptop.status()).pending
        with pytest.raises(AuthorError):
            await import_fhir(laptop, bundle, author="dr.a")
        assert (await laptop.status()).pending == pending  # nothing stored
        report = await import_fhir(laptop, bundle)
        assert report.record_ids == [record_id]
        [written] = (await laptop.record(record_id)).history("name")
        assert (written.author, written.replica) == ("dr.b", laptop.replica_id)
        await laptop.sync()  # and the server takes it as dr.b's
        assert await _server_field(server, record_id, "name") == "Awa Ba"
    finally:
        await source.close()
        await laptop.close()
        await server.close()


async def test_records_committed_from_outside_are_written_as_the_account_logged_in(
    tmp_path: Path,
) -> None:
    # The bug: commit_records (the import path of the embedding API) stored whatever
    # authors and replicas the revisions named, with nobody logged in too: a revision by
    # an account that never logged in here waited in the outbox for ever, refused by the
    # server, and one by a colleague who did log in here was taken in their name.
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")  # dr.a enrolled it, logged in
    try:
        record_id = await laptop.create_record()
        await laptop.sync(username="dr.b", password=PASSWORD, organisation="clinic-a")
        await laptop.login_offline("dr.a", PASSWORD)  # dr.b logged in here once; dr.a now

        async def edited(author: str, replica: str | None = None) -> tuple[Record, bytes]:
            stored = await laptop.store.load(record_id)
            assert stored is not None
            chart = Record.from_update(record_id, stored, replica=replica or laptop.replica_id)
            seen = chart.state_vector()
            chart.set("weightKg", 70, author=author)
            return chart, chart.update_since(seen)

        pending = (await laptop.status()).pending
        for author, replica, error, match in (
            ("dr.b", None, AuthorError, r"'dr\.b' is not the account logged in"),
            ("dr.nobody", None, AuthorError, r"'dr\.nobody' is not the account logged in"),
            ("dr.a", "laptop-elsewhere", InvalidInputError, "written on replica"),
        ):
            with pytest.raises(error, match=match):
                await laptop.commit_records([await edited(author, replica)])
            assert (await laptop.status()).pending == pending  # nothing stored
        await laptop.logout()
        with pytest.raises(NotLoggedInError):
            await laptop.commit_records([await edited("dr.a")])
        assert (await laptop.status()).pending == pending

        await laptop.login_offline("dr.a", PASSWORD)
        await laptop.commit_records([await edited("dr.a")])
        assert (await laptop.status()).pending == pending + 1
        # dr.a logs in online to sync (the session kept here is dr.b's, not to resume).
        report = await laptop.sync(username="dr.a", password=PASSWORD, organisation="clinic-a")
        assert report.uploaded == 1  # the server takes it as dr.a's
        assert await _server_field(server, record_id, "weightKg") == 70
    finally:
        await laptop.close()
        await server.close()


async def test_a_refused_push_does_not_undo_a_password_login(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    laptop = await Replica.open(tmp_path / "laptop.db", username="dr.a", password=PASSWORD)
    await laptop.enrol(server.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
    try:
        assert laptop.encrypted
        record_id = await laptop.create_record()
        forged = Record.create(replica=laptop.replica_id, record_id=record_id)
        forged.set("weightKg", 80, author="dr.nobody")  # a push the server refuses
        await laptop.store.write_local(
            record_id, forged.update_since(), conflicts=(), organisation="clinic-a"
        )
        # Refused and set aside; against a server before version 16 the sync raised.
        report = await laptop.sync(username="dr.b", password=PASSWORD, organisation="clinic-a")
        assert [held.record_id for held in report.set_aside] == [record_id]
        # dr.b's password was right: dr.b is logged in, and holds a copy of the key.
        assert laptop.user == "dr.b"
        assert laptop.logins.database_key is not None
        assert laptop.logins.database_key.ring.users() == ["dr.a", "dr.b"]
    finally:
        await laptop.close()
        await server.close()


async def test_another_organisations_export_becomes_a_record_of_this_one(tmp_path: Path) -> None:
    # The bug: a Patient carrying another organisation's caresync record id was written
    # here under that id; the server refused it at every push, holding the outbox back.
    server = await start_server(tmp_path)
    elsewhere = await enrolled_in(tmp_path, server, "elsewhere", "dr.x", "clinic-b")
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        theirs = await elsewhere.create_record()
        await elsewhere.set(theirs, "name", "Awa Ba")
        await elsewhere.sync()
        bundle = bundle_bytes(await export_record(elsewhere, theirs))
        report = await import_fhir(laptop, bundle)
        [ours] = report.record_ids
        assert ours != theirs
        assert (await laptop.record(ours)).value("name") == "Awa Ba"
        assert (await import_fhir(laptop, bundle)).record_ids == [ours]  # the same again
        assert (await laptop.sync()).uploaded >= 1  # taken, not refused
        assert await _server_field(server, ours, "name") == "Awa Ba"
        organisations = await server.store.record_organisations([ours, theirs])
        assert organisations == {ours: "clinic-a", theirs: "clinic-b"}
        # Within one organisation the record id is kept (an export of its own record).
        mine = await laptop.create_record()
        await laptop.set(mine, "name", "Moussa Ba")
        again = bundle_bytes(await export_record(laptop, mine))
        assert (await import_fhir(laptop, again)).record_ids == [mine]
    finally:
        await laptop.close()
        await elsewhere.close()
        await server.close()


async def enrolled_in(
    tmp_path: Path, server: SyncServer, name: str, user: str, org: str
) -> Replica:
    """A laptop enrolled in ``org`` as ``user``."""
    laptop = await Replica.open(tmp_path / f"{name}.db")
    await laptop.enrol(server.url, username=user, password=PASSWORD, organisation=org)
    return laptop


async def test_two_organisations_importing_one_export_get_records_of_their_own(
    tmp_path: Path,
) -> None:
    # Found by review: the derived id named only the exporting organisation, so a second
    # organisation importing the same file got the first one's record id, refused at push.
    server = await start_server(tmp_path)
    await server.add_user("clinic-c", "dr.c", PASSWORD)
    source = await enrolled(tmp_path, server, "source")
    b = await enrolled_in(tmp_path, server, "b", "dr.x", "clinic-b")
    c = await enrolled_in(tmp_path, server, "c", "dr.c", "clinic-c")
    try:
        theirs = await source.create_record()
        await source.set(theirs, "name", "Awa Diop")
        await source.sync()
        bundle = bundle_bytes(await export_record(source, theirs))
        [in_b] = (await import_fhir(b, bundle)).record_ids
        [in_c] = (await import_fhir(c, bundle)).record_ids
        assert len({theirs, in_b, in_c}) == 3
        for laptop in (b, c):
            await laptop.sync()  # each taken: nothing left waiting
            assert (await laptop.status()).pending == 0
    finally:
        for laptop in (source, b, c):
            await laptop.close()
        await server.close()


async def test_a_record_id_without_its_organisation_is_imported_only_over_one_held_here(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    elsewhere = await enrolled_in(tmp_path, server, "elsewhere", "dr.x", "clinic-b")
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        theirs = await elsewhere.create_record()
        await elsewhere.set(theirs, "name", "Awa Ba")
        bundle = await export_record(elsewhere, theirs)
        for entry in bundle["entry"]:  # as an older export, or another tool, writes it
            for identifier in entry["resource"].get("identifier") or []:
                if isinstance(identifier, dict):
                    identifier.pop("assigner", None)
        pending = (await laptop.status()).pending
        with pytest.raises(InvalidFhirError, match="without the organisation it belongs to"):
            await import_fhir(laptop, json.dumps(bundle).encode())
        assert (await laptop.status()).pending == pending  # nothing stored
    finally:
        await laptop.close()
        await elsewhere.close()
        await server.close()


def _patient_1(name: str) -> bytes:
    """A file from a clinic's own system: its Patient's id is local to that system."""
    return json.dumps({"resourceType": "Patient", "id": "1", "name": [{"text": name}]}).encode()


async def test_two_organisations_importing_their_own_patient_1_keep_syncing(
    tmp_path: Path,
) -> None:
    # The bug: a Patient of no caresync record id got an id derived from its own id alone,
    # so clinic-b's Patient/1 was clinic-a's record: its creation was refused at every push
    # and every later edit of that laptop, on any patient, stayed in its outbox for good.
    server = await start_server(tmp_path)
    a = await enrolled(tmp_path, server, "a")
    b = await enrolled_in(tmp_path, server, "b", "dr.x", "clinic-b")
    try:
        [in_a] = (await import_fhir(a, _patient_1("Awa Diop"))).record_ids
        await a.sync()
        [in_b] = (await import_fhir(b, _patient_1("Jean Dupont"))).record_ids
        assert in_b != in_a
        later = await b.create_record()
        await b.set(later, "name", "Moussa Ba")
        await b.sync()  # taken, not refused
        assert (await b.status()).pending == 0
        assert await _server_field(server, in_b, "name") == "Jean Dupont"
        assert await _server_field(server, later, "name") == "Moussa Ba"
        assert await _server_field(server, in_a, "name") == "Awa Diop"
        # Importing the file again updates the same record, on each side.
        assert (await import_fhir(b, _patient_1("Jean Dupont"))).record_ids == [in_b]
        assert (await import_fhir(a, _patient_1("Awa Diop"))).record_ids == [in_a]
        # A plan made for no organisation (as `caresync fhir import` checks a file) too.
        planned = plan_import(_patient_1("Jean Dupont"))
        assert (await import_fhir(b, planned)).record_ids == [in_b]
    finally:
        await a.close()
        await b.close()
        await server.close()


async def test_a_record_an_earlier_import_made_is_updated_by_the_same_file(
    tmp_path: Path,
) -> None:
    """Imports before the organisation went into derived ids made records under the
    Patient's id alone: the same file imported again updates those, on every laptop that
    holds them, rather than making a second record of the same patient."""
    server = await start_server(tmp_path)
    a = await enrolled(tmp_path, server, "a")
    colleague = await enrolled(tmp_path, server, "colleague", "dr.b")
    try:
        earlier = str(uuid.uuid5(NAMESPACE, "import\x1fPatient\x1f1"))  # what imports derived
        await a.create_record(record_id=earlier)
        await a.set(earlier, "name", "Awa Diop")
        await a.sync()
        await colleague.sync()
        for laptop in (a, colleague):
            report = await import_fhir(laptop, _patient_1("Awa Diop"))
            assert report.record_ids == [earlier]
    finally:
        await a.close()
        await colleague.close()
        await server.close()


async def test_changes_before_enrolment_by_no_account_keep_the_laptop_from_enrolling(
    tmp_path: Path,
) -> None:
    # The bug: the laptop enrolled, then every push was refused for good (the author had
    # never logged in there, nor could), and every later change waited behind it.
    server = await start_server(tmp_path)
    laptop = await Replica.open(tmp_path / "laptop.db")
    try:
        record_id = await laptop.create_record()
        await laptop.set(record_id, "name", "Awa Diop", author="nurse joy")
        pending = (await laptop.status()).pending
        with pytest.raises(AuthorError, match=r"'nurse joy' as author.*Nothing was enrolled"):
            await laptop.enrol(
                server.url, username="dr.a", password=PASSWORD, organisation="clinic-a"
            )
        assert not laptop.enrolled
        assert await server.store.get_replica(laptop.replica_id) is None
        assert (await laptop.status()).pending == pending  # kept
    finally:
        await laptop.close()
        await server.close()


async def test_changes_before_enrolment_by_accounts_go_once_each_has_logged_in(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    laptop = await Replica.open(tmp_path / "laptop.db")
    try:
        record_id = await laptop.create_record()
        await laptop.set(record_id, "name", "Awa Diop", author="dr.a")
        await laptop.set(record_id, "birthDate", "1990-01-01", author="dr.b")
        # dr.b has not logged in here yet: enrolled, and the record waits for dr.b, set
        # aside with the server's reason.
        report = await laptop.enrol(
            server.url, username="dr.a", password=PASSWORD, organisation="clinic-a"
        )
        [held] = report.set_aside
        assert held.record_id == record_id
        assert re.search(r"names 'dr\.b' as its author", held.reason)
        assert laptop.enrolled
        await laptop.sync(username="dr.b", password=PASSWORD, organisation="clinic-a")
        assert (await laptop.status()).pending == 0
        assert await _server_field(server, record_id, "birthDate") == "1990-01-01"
    finally:
        await laptop.close()
        await server.close()
