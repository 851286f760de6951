"""``caresync enrol`` and ``caresync sync``: bind a laptop to its server, and sync with it."""

from __future__ import annotations

import argparse
import asyncio
import ssl
import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console

from caresync.cli.common import (
    add_db,
    add_json,
    device_name,
    organisation,
    path,
    run,
    server_url,
    stop_on_signals,
    username,
)
from caresync.cli.databases import files_before, laptop_path, open_laptop, remove_if_new
from caresync.cli.errors import CliError, ExitCode, exit_code_for, one_line
from caresync.cli.live import mark_live
from caresync.cli.output import Output, iso_ms
from caresync.cli.password import PASSWORD_ENV, UNLOCK_PASSWORD_ENV, read_password
from caresync.cli.progress import copy_progress
from caresync.credentials import parse_fingerprint
from caresync.exceptions import AuthenticationError, CaresyncError, InvalidInputError
from caresync.replica import Replica, ReplicaState, SyncReport

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``enrol`` and ``sync``."""
    enrol = commands.add_parser(
        "enrol",
        help="bind a laptop to a server and make the first copy",
        description="Create (or open) a laptop database, bind it to the server at URL and to "
        f"one organisation, and copy the records it may see. The password comes from "
        f"{PASSWORD_ENV} or a prompt. If the copy is interrupted, `caresync sync` resumes it.",
    )
    add_db(enrol, "the laptop's database (created if missing)")
    enrol.add_argument(
        "--server", required=True, metavar="URL", type=server_url, help="ws://host:port or wss://…"
    )
    enrol.add_argument("--org", required=True, type=organisation, help="organisation")
    enrol.add_argument("--username", required=True, type=username, help="your account")
    enrol.add_argument(
        "--device-name",
        default="",
        type=device_name,
        help="a name for this laptop (shown to admins; printable, at most 256 characters)",
    )
    enrol.add_argument(
        "--server-key",
        metavar="FINGERPRINT",
        type=_fingerprint,
        help="the server key's fingerprint (SHA256:…, from `caresync server-key` on the "
        "server): checked before the password is sent, and pinned for good",
    )
    _add_cafile(enrol)
    _add_insecure(enrol)
    enrol.add_argument(
        "--no-encrypt",
        action="store_true",
        help="make a new laptop database a plain SQLite file (by default it is encrypted, "
        "its key unlocked by the password of a user who logged in on it)",
    )
    enrol.add_argument(
        "--exist-ok",
        action="store_true",
        help="a laptop already enrolled to this organisation is not an error: it syncs with "
        "the server at URL instead (which must be the server it is enrolled to)",
    )
    enrol.add_argument(
        "--again",
        action="store_true",
        help="a laptop enrolled to this organisation whose server no longer knows it "
        "(restored from a backup older than its enrolment) is enrolled again under its own "
        "id; everything it wrote is sent again",
    )
    add_json(enrol)
    enrol.set_defaults(handler=_enrol)

    sync = commands.add_parser(
        "sync",
        help="one sync round with the enrolled server",
        description="Finish the first copy if it was interrupted, push unsynced changes (they "
        "leave the outbox only when the server has committed them), pull everyone else's. "
        "Logs in with the session of the last online login, or with --username and a "
        f"password from {PASSWORD_ENV} or a prompt.",
    )
    add_db(sync, "the laptop's database")
    sync.add_argument(
        "--server",
        metavar="URL",
        type=server_url,
        help="where to reach the enrolled server (it must be the same server: another one "
        "is refused before anything moves)",
    )
    sync.add_argument("--username", type=username, help="log in with a password")
    sync.add_argument(
        "--unlock",
        action="store_true",
        help="open the laptop's encrypted database with another password than the one "
        f"--username logs in with (from {UNLOCK_PASSWORD_ENV} or asked): your previous one "
        "after a password change, or that of a user who logged in here before, for your "
        "first login; from then on your password opens it too (and a previous one of "
        "yours no longer does)",
    )
    sync.add_argument(
        "--live",
        action="store_true",
        help="stay connected and in step both ways until SIGINT or SIGTERM, printing each "
        "change of state (online, offline, synchronising, ...) with the changes waiting; "
        "with --json one object per line. Meanwhile `caresync status` shows the state",
    )
    _add_cafile(sync)
    _add_insecure(sync)
    add_json(sync)
    sync.set_defaults(handler=_sync)


def _add_cafile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cafile",
        metavar="FILE",
        type=path,
        help="PEM certificates to trust for a wss:// server (default: the system's)",
    )


def _add_insecure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain ws:// to another machine (refused otherwise: the password and "
        "every record would cross the network unencrypted); loopback is always allowed",
    )


def _fingerprint(text: str) -> str:
    try:
        return parse_fingerprint(text)
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ssl_for(url: str, cafile: str | None) -> ssl.SSLContext | None:
    if not url.startswith("wss://"):
        if cafile is not None:
            raise CliError("--cafile is for wss:// servers; this one is not")
        return None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"cannot read --cafile {cafile}: {exc}") from None


# --------------------------------------------------------------------- enrol


def _enrol(args: argparse.Namespace, out: Output) -> int:
    context = _ssl_for(args.server, args.cafile)
    password = read_password(f"Password for {args.username} ({args.org}): ")
    db = laptop_path(args.db)
    before = files_before(db)
    bound = False

    async def go() -> dict[str, Any]:
        nonlocal bound
        replica = await open_laptop(
            db,
            create=True,
            username=args.username,
            password=password,
            encrypt=not args.no_encrypt,
        )
        try:
            if replica.enrolled:
                return await _enrolled_already(replica, args, password, context, out)
            if args.again:
                raise CliError(
                    f"{db} is not enrolled yet: enrol it without --again", ExitCode.USAGE
                )
            try:
                with copy_progress(out) as progress:
                    report = await replica.enrol(
                        args.server,
                        username=args.username,
                        password=password,
                        organisation=args.org,
                        ssl=context,
                        device_name=args.device_name,
                        progress=progress,
                        server_key=args.server_key,
                        insecure=args.insecure,
                    )
            except CaresyncError as exc:
                if replica.enrolled:  # bound, but the copy stopped: keep it, say how to go on
                    raise CliError(
                        f"enrolled to server {replica.identity.server_id}, but the first copy "
                        f"stopped: {one_line(exc)}; run `caresync sync --db {db}` to resume it",
                        exit_code_for(exc),
                    ) from exc
                raise
            return {**await _result(replica, report), "already": False}
        finally:
            bound = replica.enrolled
            await replica.close()

    try:
        data = run(go())
    except BaseException:
        if not bound:  # a database this command made, never bound to a server: it goes
            remove_if_new(db, before)
        raise
    out.result(data, _render("synced with" if data["already"] else "enrolled to"))
    return 0


async def _enrolled_already(
    replica: Replica,
    args: argparse.Namespace,
    password: str,
    context: ssl.SSLContext | None,
    out: Output,
) -> dict[str, Any]:
    """``enrol`` on a laptop that is enrolled: refused, or with --exist-ok, one sync round."""
    identity = replica.identity
    where = f"server {identity.server_id} ({identity.organisation}) at {identity.server_url}"
    if not args.exist_ok and not args.again:
        raise CliError(
            f"{args.db} is already enrolled to {where}; a laptop enrols once: sync it with "
            f"`caresync sync --db {args.db}` (or give --exist-ok to sync instead)"
        )
    if identity.organisation != args.org:
        raise CliError(
            f"{args.db} is enrolled to {where}, not to {args.org}; enrol another laptop "
            "database for that organisation",
            ExitCode.REFUSED,
        )
    if args.server_key is not None and args.server_key != replica.pinned_server_key:
        raise CliError(
            f"{args.db} pinned the key {replica.pinned_server_key}, not {args.server_key}",
            ExitCode.REFUSED,
        )
    if args.again:
        report = await replica.enrol_again(
            url=args.server,
            username=args.username,
            password=password,
            ssl=context,
            insecure=args.insecure,
        )
        return {**await _result(replica, report), "already": True}
    with copy_progress(out, "finishing the first copy") as progress:
        report = await replica.sync(
            url=args.server,
            username=args.username,
            password=password,
            ssl=context,
            progress=progress,
            insecure=args.insecure,
        )
    return {**await _result(replica, report), "already": True}


# ---------------------------------------------------------------------- sync


def _sync(args: argparse.Namespace, out: Output) -> int:
    password = None
    if args.username is not None:
        password = read_password(f"Password for {args.username}: ")
    opener = _opening_password(args, password)
    if args.live:
        run(_live(args, out, password, opener))
        return 0

    async def go() -> dict[str, Any]:
        async with await open_laptop(args.db, password=opener) as replica:
            target = args.server or replica.identity.server_url or ""
            context = _ssl_for(target, args.cafile) if target else None
            try:
                with copy_progress(out, "finishing the first copy") as progress:
                    report = await replica.sync(
                        url=args.server,
                        username=args.username,
                        password=password,
                        ssl=context,
                        progress=progress,
                        insecure=args.insecure,
                    )
            except AuthenticationError as exc:
                if args.username is None:
                    raise _log_in_again(exc) from exc
                raise
            return await _result(replica, report)

    out.result(run(go()), _render("synced with"))
    return 0


def _log_in_again(exc: AuthenticationError) -> CliError:
    """A session that ended, said with what to do about it."""
    return CliError(
        f"{one_line(exc)} (log in again: --username NAME, with the password "
        f"from {PASSWORD_ENV} or a prompt)",
        ExitCode.REFUSED,
    )


async def _result(replica: Replica, report: SyncReport) -> dict[str, Any]:
    status = await replica.status()
    return {
        "replica_id": replica.replica_id,
        "server_id": replica.identity.server_id,
        "server_url": replica.identity.server_url,
        "org": replica.identity.organisation,
        "uploaded": report.uploaded,
        "downloaded": report.downloaded,
        "copied": report.copied,
        "server_went_back": report.server_went_back,
        "conflicts_open": report.conflicts_open,
        "pending": status.pending,
        "records": status.records,
        "quarantined": status.quarantined,
        # Records whose changes the server refused: held back, kept, and the server's words.
        "set_aside": [
            {"record_id": held.record_id, "reason": held.reason, "entries": held.entries}
            for held in report.set_aside
        ],
        "server_key": replica.pinned_server_key,
    }


def _render(verb: str) -> Any:
    def render(console: Console, data: Mapping[str, Any]) -> None:
        console.print(
            f"{verb} {data['server_id']} ({data['org']}) as {data['replica_id']}: "
            f"uploaded {data['uploaded']}, downloaded {data['downloaded']} "
            f"(first copy {data['copied']} records); {data['records']} records, "
            f"{data['pending']} unsynced, {data['conflicts_open']} open conflict(s)",
            markup=False,
        )
        if data.get("server_went_back"):
            console.print(
                "the server had been restored from an older backup: everything this laptop "
                "wrote was sent again, and its change feed read from the start",
                markup=False,
            )
        if data["quarantined"]:
            console.print(
                f"{data['quarantined']} update(s) from the server could not be merged and "
                "were kept aside: see `caresync status`",
                markup=False,
            )
        for held in data.get("set_aside", ()):
            console.print(
                f"record {held['record_id']}: {held['entries']} change(s) refused by the "
                f"server, kept and tried again at the next sync: {held['reason']}",
                markup=False,
            )

    return render


# ---------------------------------------------------------------------- live


def _opening_password(args: argparse.Namespace, password: str | None) -> str | None:
    """The password that opens an encrypted laptop database for this sync (None: ask
    only if it is encrypted): with --unlock another one, else the login's."""
    if not args.unlock:
        return password
    if args.username is None:
        raise CliError("--unlock opens the database for a password login: give --username too")
    return read_password(
        f"A password that opens {args.db} now (yours before a change, or a colleague's): ",
        env=UNLOCK_PASSWORD_ENV,
    )


async def _live(
    args: argparse.Namespace, out: Output, password: str | None, opener: str | None
) -> None:
    """``sync --live``: stay connected until a signal; every state change is a line."""
    with stop_on_signals() as stop:
        async with await open_laptop(args.db, password=opener) as replica:
            target = args.server or replica.identity.server_url or ""
            context = _ssl_for(target, args.cafile) if target else None
            if args.username is not None:  # log in online once; live mode resumes that session
                await replica.sync(
                    url=args.server,
                    username=args.username,
                    password=password,
                    ssl=context,
                    insecure=args.insecure,
                )
            states: asyncio.Queue[ReplicaState] = asyncio.Queue()
            unsubscribe = replica.on_status(states.put_nowait)
            reporter = asyncio.create_task(_report_states(replica, states, out))
            try:
                await replica.stay_connected(
                    stop=stop, url=args.server, ssl=context, insecure=args.insecure
                )
            except AuthenticationError as exc:
                raise _log_in_again(exc) from exc
            finally:
                unsubscribe()
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
                await mark_live(replica, None)
                out.event(
                    {"state": "stopped", "pending": await replica.store.pending_count()},
                    "stopped",
                )


async def _report_states(
    replica: Replica, states: asyncio.Queue[ReplicaState], out: Output
) -> None:
    """Print each state the replica reaches, and leave it where `caresync status` reads it."""
    state = replica.state
    while True:
        await mark_live(replica, state)
        pending = await replica.store.pending_count()
        out.event(
            {"state": state.value, "pending": pending, "at": iso_ms(time.time_ns() // 1_000_000)},
            f"{state.value} ({pending} changes waiting)",
        )
        state = await states.get()
