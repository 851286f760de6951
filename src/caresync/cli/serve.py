"""``caresync serve``: run the clinic's sync server until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caresync.cli.common import add_db, add_json, listen_host, path, port, run, stop_on_signals
from caresync.cli.databases import files_before, is_plain_sqlite, remove_if_new, rulebook
from caresync.cli.errors import CliError, ExitCode
from caresync.cli.output import Output
from caresync.cli.replicas import stale_hours
from caresync.exceptions import InvalidInputError
from caresync.fhir import require_models
from caresync.hub.sender import check_token_url, hub_url, read_hub_token, require_http
from caresync.observe import JsonLogFormatter
from caresync.records import AdmissionLimits
from caresync.server import FEED_POLL_S, LOGIN_SYNC_DELAY_S, SyncServer
from caresync.storage import server_database_key
from caresync.storage.keyring import SERVER_KEY_VARIABLE
from caresync.storage.servers import is_database_url, shown_database
from caresync.transport.forwarded import trusted_proxies
from caresync.versions import check_version

__all__ = ["LISTENING", "register"]

LISTENING = "caresync server listening on "
"""The first line ``serve`` prints, followed by the URL (scripts read the port from it)."""


def register(commands: Any) -> None:
    """Add ``serve``."""
    serve = commands.add_parser(
        "serve",
        help="run the sync server",
        description="Run the clinic's sync server on a server database (created if "
        "missing) until SIGINT or SIGTERM, then close it cleanly. Prints "
        f"'{LISTENING}URL' when ready (with --port 0, the port chosen); with --json, one "
        "JSON object instead (url, port, server_id, server_key, db).",
    )
    add_db(serve, "the server's database (created if missing)")
    serve.add_argument(
        "--host", default="127.0.0.1", type=listen_host, help="address to listen on (127.0.0.1)"
    )
    serve.add_argument("--port", type=port, default=8765, help="port (8765; 0: any free one)")
    serve.add_argument(
        "--tls-cert", metavar="FILE", type=path, help="certificate chain (PEM) for wss://"
    )
    serve.add_argument("--tls-key", metavar="FILE", type=path, help="its private key (PEM)")
    serve.add_argument(
        "--max-clock-ahead",
        metavar="HOURS",
        type=_hours,
        default=None,
        help="refuse revisions dated more than this far past the server's clock (24); raise "
        "it for a while to let in edits a laptop made with its clock far ahead",
    )
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="how the server's log lines on standard error read: text (default), or one "
        "JSON object per line (time, level, logger, message, event and its fields)",
    )
    serve.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="the least important log lines written (info)",
    )
    serve.add_argument(
        "--encrypt",
        action="store_true",
        help=f"the database is encrypted at rest (AEGIS-256) with the key in {SERVER_KEY_VARIABLE} "
        "or --key-file (64 hex digits); a new one is made encrypted, a plain one is refused",
    )
    serve.add_argument(
        "--key-file",
        metavar="FILE",
        type=path,
        help="the database key, in a file only its owner can read (else from "
        f"{SERVER_KEY_VARIABLE})",
    )
    serve.add_argument(
        "--client-min-version",
        metavar="VERSION",
        type=_version,
        help="refuse laptops running a caresync older than VERSION (e.g. 0.2.0); they are "
        "told to update, and keep their unsynced changes (default: every laptop that "
        "speaks a protocol version this server speaks)",
    )
    serve.add_argument(
        "--hub",
        metavar="URL",
        help="keep the summaries of the patients marked with `caresync hub enable` current on "
        "this health hub (a FHIR server's base URL: each goes to PUT URL/Bundle/ID); needs "
        'pip install "caresync[hub]"',
    )
    serve.add_argument(
        "--hub-timeout",
        metavar="SECONDS",
        type=_seconds,
        default=None,
        help="how long one request to the hub may take before it is retried (30)",
    )
    serve.add_argument(
        "--hub-token-file",
        metavar="FILE",
        type=path,
        default=None,
        help="for a hub that needs authentication: a file holding the bearer token sent "
        "with every request (read again before each, so a renewed token is used at once); "
        "only over https:// (or http:// to this machine)",
    )
    serve.add_argument(
        "--stale-hours",
        metavar="HOURS",
        type=stale_hours,
        default=24.0,
        help="the admin page (GET /admin) marks a laptop stale when it was not seen, or "
        "kept a change unsynced, for more than HOURS (24)",
    )
    serve.add_argument(
        "--feed-poll",
        metavar="SECONDS",
        type=_seconds,
        default=FEED_POLL_S,
        help="on a PostgreSQL database shared by several serve processes, read the feed for "
        "their commits at least this often even without a notification "
        f"({FEED_POLL_S:g})",
    )
    serve.add_argument(
        "--login-sync-delay",
        metavar="SECONDS",
        type=_login_sync_delay,
        default=LOGIN_SYNC_DELAY_S,
        help="a login's audit entry is committed at once and synced to disk with the other "
        "logins of up to SECONDS, and always before that laptop is sent a record or may "
        f"push: a sync with nothing to do then waits for no disk ({LOGIN_SYNC_DELAY_S:g}; "
        "0 syncs each login on its own)",
    )
    serve.add_argument(
        "--trusted-proxy",
        metavar="ADDRESS",
        action="append",
        default=[],
        help="a reverse proxy or load balancer in front of this server (an address or a "
        "network, e.g. 10.0.0.5 or 10.0.0.0/24; repeat for several): its X-Forwarded-For "
        "and X-Forwarded-Proto headers say who each client is, for the login throttle, the "
        "logs and the admin page; from any other peer they are ignored",
    )
    add_json(serve)
    serve.set_defaults(handler=_serve)


def _version(raw: str) -> str:
    try:
        return check_version(raw, "--client-min-version")
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True)
class _HubOptions:
    url: str
    timeout_s: float | None
    token: Callable[[], str] | None = None


def _configure_logging(log_format: str, level: str) -> Callable[[], None]:
    """The server's log on standard error (standard output is for the result).

    The ``caresync`` loggers at ``level``, and warnings of the ``websockets``
    library the server listens with (a failed handshake, say), in one format.
    Returns what puts both loggers back as they were (``serve`` may run inside
    another program, such as a test)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    settings = {"caresync": level.upper(), "websockets": "WARNING"}
    loggers = [logging.getLogger(name) for name in settings]
    before = [(list(lg.handlers), lg.level, lg.propagate) for lg in loggers]

    def restore() -> None:
        for lg, (handlers, old_level, propagate) in zip(loggers, before, strict=True):
            lg.handlers[:], lg.level, lg.propagate = handlers, old_level, propagate

    for lg, wanted in zip(loggers, settings.values(), strict=True):
        lg.handlers[:] = [handler]
        lg.setLevel(wanted)
        lg.propagate = False
    return restore


def _hours(text: str) -> float:
    hours = _number_of("hours", text)
    if not 0 < hours <= 24 * 365 * 10:  # up to ten years; finite, positive
        raise argparse.ArgumentTypeError("hours must be more than 0 and at most 87600")
    return hours


def _number_of(unit: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r:.40} is not a number of {unit}") from None


def _seconds(text: str) -> float:
    seconds = _number_of("seconds", text)
    if not 0 < seconds <= 3600:
        raise argparse.ArgumentTypeError("seconds must be more than 0 and at most 3600")
    return seconds


def _login_sync_delay(text: str) -> float:
    seconds = _number_of("seconds", text)
    if not 0 <= seconds <= 60:
        raise argparse.ArgumentTypeError("the login sync delay must be from 0 to 60 seconds")
    return seconds


def _tls(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise CliError("TLS needs both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"cannot load the TLS certificate {cert} and key {key}: {exc}") from None
    return context


def _log_note(message: str) -> None:
    """With ``--log-format json``, what serve says of itself is a log line too."""
    logging.getLogger("caresync.server").info(
        "%s", message, extra={"caresync": {"event": "server"}}
    )


def _serve(args: argparse.Namespace, out: Output) -> int:
    context = _tls(args.tls_cert, args.tls_key)
    try:
        proxies = trusted_proxies(args.trusted_proxy)
    except InvalidInputError as exc:
        raise CliError(f"--trusted-proxy: {exc}", ExitCode.USAGE) from None
    hub = None
    if args.hub is not None:  # before anything is opened: a bad URL or a missing extra
        require_models()
        require_http()
        token = (
            None
            if args.hub_token_file is None
            else functools.partial(read_hub_token, Path(args.hub_token_file))
        )
        if token is not None:
            try:
                token()  # readable and a token now, or refused before anything is opened
            except (OSError, InvalidInputError) as exc:
                raise CliError(f"--hub-token-file: {exc}", ExitCode.USAGE) from None
        url = hub_url(args.hub)
        if token is not None:
            try:
                check_token_url(url)
            except InvalidInputError as exc:
                raise CliError(f"--hub-token-file: {exc}", ExitCode.USAGE) from None
        hub = _HubOptions(url, args.hub_timeout, token)
    elif args.hub_timeout is not None or args.hub_token_file is not None:
        given = "--hub-timeout" if args.hub_timeout is not None else "--hub-token-file"
        raise CliError(f"{given} needs --hub URL")
    postgres = is_database_url(args.db)
    if postgres and args.encrypt:
        raise CliError(
            "--encrypt is for an SQLite file; a PostgreSQL database is encrypted at rest "
            "by its server (disk encryption) and in transit by its sslmode"
        )
    key = server_database_key(path=args.key_file)
    if args.encrypt and key is None:
        raise CliError(
            f"--encrypt needs the database key: set {SERVER_KEY_VARIABLE} or give --key-file "
            '(64 hex digits; make one with: python -c "import secrets; '
            'print(secrets.token_hex(32))")'
        )
    if postgres:
        key = None  # CARESYNC_DATABASE_KEY is an SQLite file's key
    elif key is not None and not args.encrypt and is_plain_sqlite(Path(args.db)):
        key = None  # a plain database keeps being served plain; --encrypt insists instead
    before = None if postgres else files_before(Path(args.db))
    listening = asyncio.Event()
    restore_logging = _configure_logging(args.log_format, args.log_level)
    try:
        admission = (
            None
            if args.max_clock_ahead is None
            else AdmissionLimits(max_clock_ahead_ms=int(args.max_clock_ahead * 3_600_000))
        )
        note = _log_note if args.log_format == "json" else out.note
        run(
            _run_server(
                args.db,
                args.host,
                args.port,
                context,
                out,
                listening,
                admission,
                note,
                key,
                args.client_min_version,
                hub,
                args.stale_hours,
                args.feed_poll,
                args.login_sync_delay,
                [str(network) for network in proxies],
            )
        )
    except BaseException:
        if not listening.is_set() and before is not None:
            remove_if_new(Path(args.db), before)  # it never served: a file it made holds nothing
        raise
    finally:
        restore_logging()
    return 0


async def _run_server(
    db: str,
    host: str,
    port: int,
    context: ssl.SSLContext | None,
    out: Output,
    listening: asyncio.Event,
    admission: AdmissionLimits | None = None,
    note: Callable[[str], None] | None = None,
    key: bytes | None = None,
    client_min_version: str | None = None,
    hub: _HubOptions | None = None,
    stale_hours: float = 24.0,
    feed_poll_s: float = FEED_POLL_S,
    login_sync_delay_s: float = LOGIN_SYNC_DELAY_S,
    proxies: Sequence[str] = (),
) -> None:
    note = out.note if note is None else note
    with stop_on_signals() as stop:
        opened = await SyncServer.open(
            db,
            admission=admission,
            rulebook=rulebook(),
            key=key,
            client_min_version=client_min_version,
            stale_after_s=stale_hours * 3600,
            feed_poll_s=feed_poll_s,
            login_sync_delay_s=login_sync_delay_s,
        )
        async with opened as server:
            if hub is not None:
                options: dict[str, Any] = {}
                if hub.timeout_s is not None:
                    options["timeout_s"] = hub.timeout_s
                if hub.token is not None:
                    options["token"] = hub.token
                server.start_hub(hub.url, **options)
            listener = await server.serve(host, port, ssl=context, trusted_proxies=proxies)
            listening.set()
            # Scripts wait for this line (and read the port from it): flush at once.
            if out.json:
                out.result(
                    {
                        "url": server.url,
                        "port": listener.port,
                        "server_id": server.server_id,
                        "server_key": await server.server_key_fingerprint(),
                        "db": shown_database(db),
                    }
                )
            else:
                sys.stdout.write(f"{LISTENING}{server.url}\n")
                sys.stdout.flush()
            note(
                f"server {server.server_id}, database {shown_database(db)}; "
                "Ctrl-C or SIGTERM stops it"
            )
            await stop.wait()
            note("stopping: closing connections and the database")
    note("caresync server stopped")
