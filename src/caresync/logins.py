"""Who is logged in on a laptop, and so who writes its entries.

Theory of operation
-------------------
Every revision names its author, and a clinician deciding between two entries
trusts that name; so on an enrolled laptop the author is never typed, it is
the **account logged in** there. Someone is logged in after:

* an online login (a sync, enrolment or live connection with a password): the
  server checked the password, and the laptop keeps an argon2id hash of it for
  offline logins;
* an offline login (:meth:`LaptopLogins.login_offline`), with a password that
  account already used online on this laptop.

A login lasts until :meth:`LaptopLogins.logout`, another login, or
``idle_s`` without an edit (the laptop left open on a desk): then edits raise
:class:`~caresync.exceptions.NotLoggedInError` until someone logs in again.
Activity is written down at most once a minute, so an edit costs no extra
write in the common case.

Offline logins resist guessing: after :data:`OFFLINE_LOGIN_ATTEMPTS` failures
in a row (any user) the laptop checks no password for a time that doubles with
each further failure, from :data:`OFFLINE_LOCK_FIRST_S` up to
:data:`OFFLINE_LOCK_MAX_S` (the policy is :mod:`caresync.lockout`'s); on a plain
laptop the count is kept in the database, so restarting the program does not
reset it. An encrypted laptop's database opens only with a right password, so
there a wrong one is counted in its key file instead, before the database is
opened (:mod:`caresync.storage.laptop_key`).

The server sends the organisation's accounts with their display names at each
login (protocol version 6): :meth:`LaptopLogins.shown_as` turns an author into
the name people know. The server, for its part, refuses a pushed revision
whose author never logged in on the replica that wrote it
(:class:`caresync.gate.Gatekeeper`).

Everything here is kept in the store's meta table; nothing holds a password.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from caresync.exceptions import (
    AuthenticationError,
    AuthorError,
    CorruptDatabaseError,
    InvalidInputError,
    LoginLockedError,
    NotLoggedInError,
)
from caresync.lockout import (
    OFFLINE_LOCK_FIRST_S,
    OFFLINE_LOCK_MAX_S,
    OFFLINE_LOGIN_ATTEMPTS,
    lock_seconds,
    locked_error,
)
from caresync.names import shown
from caresync.replication import meta
from caresync.storage import ReplicaStore
from caresync.storage.laptop_key import LaptopKey

__all__ = [
    "LOGIN_IDLE_S",
    "OFFLINE_LOCK_FIRST_S",
    "OFFLINE_LOCK_MAX_S",
    "OFFLINE_LOGIN_ATTEMPTS",
    "LaptopLogins",
]

LOGIN_IDLE_S = 30 * 60.0
"""A login with no edit for this long expires (a laptop left open on a desk)."""

_OFFLINE_LOGIN = meta.OFFLINE_LOGIN_PREFIX
_OFFLINE_FAILURES = meta.OFFLINE_FAILURES
_CURRENT = meta.CURRENT_LOGIN
_ACCOUNT_NAMES = meta.ACCOUNT_NAMES
_SESSION_USER = meta.SESSION_USER
_ACTIVE_EVERY_MS = 60_000  # activity is written down at most this often


def _wall_ms() -> int:
    """The wall clock, in milliseconds (what locks and idle logins are timed by)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class _Login:
    user: str
    since_ms: int
    active_ms: int

    def to_text(self) -> str:
        return json.dumps(
            {"user": self.user, "since_ms": self.since_ms, "active_ms": self.active_ms}
        )

    @classmethod
    def from_text(cls, text: str) -> _Login:
        try:
            data = json.loads(text)
            login = cls(data["user"], data["since_ms"], data["active_ms"])
        except (ValueError, TypeError, KeyError):
            login = None
        if (
            login is None
            or type(login.user) is not str
            or type(login.since_ms) is not int
            or type(login.active_ms) is not int
        ):
            raise CorruptDatabaseError("the record of who is logged in on this laptop is damaged")
        return login


class LaptopLogins:
    """Who is logged in on one laptop; see the module docstring.

    ``hasher`` makes the hashes kept for offline logins; ``idle_s`` is how long
    a login lasts without an edit (None: until logout).
    """

    def __init__(
        self,
        store: ReplicaStore,
        *,
        hasher: PasswordHasher,
        idle_s: float | None = LOGIN_IDLE_S,
        database_key: LaptopKey | None = None,
    ) -> None:
        if idle_s is not None and not idle_s > 0:
            raise InvalidInputError(f"idle_s must be None or > 0, not {idle_s!r}")
        self.store = store
        self.hasher = hasher
        self.idle_s = idle_s
        self.database_key = database_key
        """The key an encrypted database was opened with (None: a plain database)."""
        self._login: _Login | None = None
        self._set_aside: str | None = None
        """Who is logged in in the store, not this opening's (see :meth:`load`)."""
        self._names: dict[str, str] = {}
        self._session_user: str | None = None
        """The account of the server session kept here (the last online login)."""

    async def load(self, *, password: str | None = None) -> None:
        """Read who is logged in and the account names from the store.

        On an encrypted database, the login kept there is this opening's only if
        ``password`` (the one that unlocked :attr:`database_key`) opens that user's copy
        of the key too: otherwise someone else opened the laptop, and nobody is logged
        in for them until they log in (the login kept is left in the store).
        """
        text = await self.store.get_meta(_CURRENT)
        login = _Login.from_text(text) if text else None
        self._set_aside = None
        key = self.database_key
        if login is not None and key is not None and login.user != key.unlocked_by:
            # The password at the keyboard says who is there: a login survives closing
            # the program, and must not pass to a colleague who opens it next.
            theirs = password is not None and await asyncio.to_thread(
                key.opens_for, login.user, password
            )
            if not theirs:
                self._set_aside, login = login.user, None
        self._login = login
        names = await self.store.get_meta(_ACCOUNT_NAMES)
        self._names = _names_from_text(names) if names else {}
        self._session_user = await self.store.get_meta(_SESSION_USER) or None

    # ----------------------------------------------------------------- who

    @property
    def user(self) -> str | None:
        """The account logged in, or None (nobody, or the login went idle)."""
        login = self._login
        if login is None or self._idle(login, _wall_ms()):
            return None
        return login.user

    async def author(self, named: str | None) -> str:
        """The author of an edit made now: the account logged in.

        ``named`` may be left out; if given it must be that account
        (:class:`~caresync.exceptions.AuthorError` otherwise). Raises
        :class:`~caresync.exceptions.NotLoggedInError` if nobody is logged in or
        the login went idle.
        """
        login = self._login
        if login is None:
            raise NotLoggedInError(self._nobody())
        now = _wall_ms()
        if self._idle(login, now):
            raise NotLoggedInError(
                f"the login of {login.user} expired after {self.idle_s:.0f} s without an "
                "edit: log in again (`caresync login --db DB`)"
            )
        if named is not None and named != login.user:
            raise AuthorError(
                f"{shown(named)} is not the account logged in on this laptop "
                f"({login.user}): every entry is written as the account logged in; leave "
                f"the author out, or log in as {shown(named)}"
            )
        if now - login.active_ms >= _ACTIVE_EVERY_MS:
            await self._set(_Login(login.user, login.since_ms, now))
        return login.user

    async def logged_in_online(self, user: str, password: str) -> None:
        """After the server accepted ``user``'s password: log them in here, keep the
        hash that lets them log in offline later, and, on an encrypted database, wrap
        its key for them under that password (a changed password replaces the old
        copy)."""
        password_hash = await asyncio.to_thread(self.hasher.hash, password)
        await self.store.set_meta(_OFFLINE_LOGIN + user, password_hash)
        if self.database_key is not None:
            await asyncio.to_thread(self.database_key.remember, user, password)
        await self._start(user)

    async def login_offline(self, username: str, password: str) -> None:
        """Check a password offline and log ``username`` in; see the module docstring.

        Only users who logged in online on this laptop before can. Raises
        :class:`~caresync.exceptions.AuthenticationError` for a wrong password
        or an unknown name, :class:`~caresync.exceptions.LoginLockedError` while
        the laptop is locked (it says how long).
        """
        failures, locked_until_ms = await self._failures()
        now_ms = _wall_ms()
        locked = locked_error(locked_until_ms, now_ms)
        if locked is not None:
            raise locked
        stored = await self.store.get_meta(_OFFLINE_LOGIN + username)
        try:
            if stored is None:
                raise AuthenticationError(
                    f"{username} has never logged in online on this laptop; connect to log in"
                )
            try:
                self.hasher.verify(stored, password)
            except (VerificationError, InvalidHashError):
                raise AuthenticationError(f"wrong password for {username}") from None
        except AuthenticationError as exc:
            failures += 1
            lock_s = lock_seconds(failures)
            await self.store.set_meta(
                _OFFLINE_FAILURES, f"{failures}:{now_ms + int(lock_s * 1000)}"
            )
            if lock_s:
                raise LoginLockedError(
                    f"{exc}; {failures} failed logins in a row: this laptop checks no "
                    f"password for {lock_s:.0f} s",
                    retry_after_s=lock_s,
                ) from None
            raise
        if failures:
            await self.store.set_meta(_OFFLINE_FAILURES, "0:0")
        await self._start(username)

    async def logged_in_here(self, user: str) -> bool:
        """True if ``user`` has logged in online on this laptop (as the server knows too)."""
        return await self.store.get_meta(_OFFLINE_LOGIN + user) is not None

    async def session_kept(self, user: str) -> None:
        """Note that the server session about to be kept here is ``user``'s."""
        await self.store.set_meta(_SESSION_USER, user)
        self._session_user = user

    def resume_refusal(self) -> str | None:
        """Why the server session kept here (the last online login's) may not be resumed
        now, or None if it may.

        The session acts on the server as that account: only that account may resume
        it. Who is at the laptop is the login kept for this opening (idle or not), else,
        on an encrypted laptop, the user whose password opened it; on a plain laptop
        with nobody logged in, nobody is known and the session resumes as before.
        Otherwise a colleague logged in offline, or one who only opened the laptop
        (their own account perhaps disabled on the server since, or their password
        changed: both still open it offline), would sync as someone else.
        """
        here, session_user = self._here(), self._session_user
        if session_user is None or here is None or here == session_user:
            return None
        return (
            f"the server session kept on this laptop is {session_user}'s, and {here} is at "
            f"it now: a session is resumed only by its own account. Log in with your "
            f"password to sync (`caresync sync --db DB --username {here}`); nothing was sent"
        )

    async def logout(self) -> None:
        """Nobody is logged in any more (edits raise NotLoggedInError until a login)."""
        await self.store.set_meta(_CURRENT, "")  # empty: nobody
        self._login = self._set_aside = None

    # --------------------------------------------------------------- names

    def shown_as(self, author: str) -> str:
        """How people know ``author``: the account's display name, else the name itself."""
        return self._names.get(author, author)

    @property
    def names(self) -> Mapping[str, str]:
        """Every account name the server sent, with its display name."""
        return dict(self._names)

    async def remember_names(self, names: Mapping[str, str]) -> None:
        """Keep the organisation's account names the server sent at a login."""
        if names != self._names:
            await self.store.set_meta(_ACCOUNT_NAMES, json.dumps(dict(sorted(names.items()))))
            self._names = dict(names)

    # ------------------------------------------------------------- internals

    def _nobody(self) -> str:
        key = self.database_key
        if self._set_aside is not None and key is not None:
            opener = key.unlocked_by
            return (
                f"{opener}'s password opened this laptop, and the login kept here is "
                f"{self._set_aside}'s, not theirs: log in as {opener} first (`caresync login "
                f"--db DB --username {opener}`); nothing was written"
            )
        return (
            "nobody is logged in on this laptop: log in first (`caresync login --db DB`, "
            "or `caresync sync --db DB --username NAME`)"
        )

    def _here(self) -> str | None:
        """Who is at the laptop: see :meth:`resume_refusal`."""
        if self._login is not None:
            return self._login.user
        key = self.database_key
        return None if key is None else key.unlocked_by

    def _idle(self, login: _Login, now_ms: int) -> bool:
        return self.idle_s is not None and now_ms - login.active_ms > self.idle_s * 1000

    async def _start(self, user: str) -> None:
        now = _wall_ms()
        await self._set(_Login(user, now, now))

    async def _set(self, login: _Login) -> None:
        await self.store.set_meta(_CURRENT, login.to_text())
        self._login, self._set_aside = login, None

    async def _failures(self) -> tuple[int, int]:
        """Failed offline logins in a row, and until when (ms) none is checked."""
        text = await self.store.get_meta(_OFFLINE_FAILURES) or "0:0"
        count, _, until = text.partition(":")
        if not (count.isdigit() and until.isdigit()):
            raise CorruptDatabaseError("the count of failed offline logins is damaged")
        return int(count), int(until)


def _names_from_text(text: str) -> dict[str, str]:
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not all(
        type(k) is str and type(v) is str for k, v in data.items()
    ):
        raise CorruptDatabaseError("the account names kept on this laptop are damaged")
    return data
