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
the name people know. The server, for its part, refuses a pushed revision whose
author never logged in on the replica that wrote it (:class:`caresync.gate.Gatekeeper`).

**The server's word ends offline logins** (protocol version 16). With the names, the
server says whether each account is disabled and gives its *password mark*, a random
value it changes whenever the password is set. The laptop records each user's mark with
their offline login at their online login, and at every later login (anyone's, on a
connection whose server proved it holds the key pinned at enrolment) compares
(:meth:`LaptopLogins.learn_accounts`):

* a **disabled** account loses its offline login, its kept login ends, and on an
  encrypted laptop its copy of the key is removed;
* an account whose mark **differs** from the one recorded (its password changed since
  its last online login here) loses its offline login, and, on an encrypted laptop, its
  copy of the key under the old password (a leaked password must stop opening it);
* never removed: the last copy of the key (nobody could open the laptop), nor the copy
  of the user whose password opened it now (they are at the keyboard, and their next
  online login wraps the key under their new password). An account that logs in online
  again (enabled again, or with its new password) gets both back.

Nothing else changes: what those accounts wrote stays in the outbox and syncs (the
server takes the entries of every account that ever logged in on the laptop), and
:meth:`LaptopLogins.ended_offline` says why each cannot log in offline. A laptop that
kept offline logins from before marks takes the marks it is told first as they are: a
password changed before then goes unnoticed (``caresync keys remove-user`` still works).

Everything here is kept in the store's meta table; nothing holds a password.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from caresync.exceptions import (
    AuthenticationError,
    AuthorError,
    CorruptDatabaseError,
    InvalidInputError,
    KeyFileError,
    LoginLockedError,
    NotLoggedInError,
    UnknownKeyUserError,
)
from caresync.lockout import (
    OFFLINE_LOCK_FIRST_S,
    OFFLINE_LOCK_MAX_S,
    OFFLINE_LOGIN_ATTEMPTS,
    lock_seconds,
    locked_error,
)
from caresync.names import shown
from caresync.protocol.messages import AccountState
from caresync.replication import meta
from caresync.storage import ReplicaStore
from caresync.storage.laptop_key import LaptopKey

__all__ = [
    "ENDED_DISABLED",
    "ENDED_ENABLED",
    "ENDED_PASSWORD",
    "LOGIN_IDLE_S",
    "OFFLINE_LOCK_FIRST_S",
    "OFFLINE_LOCK_MAX_S",
    "OFFLINE_LOGIN_ATTEMPTS",
    "LaptopLogins",
    "OfflineLoginEnded",
]

logger = logging.getLogger(__name__)

LOGIN_IDLE_S = 30 * 60.0
"""A login with no edit for this long expires (a laptop left open on a desk)."""

_OFFLINE_LOGIN = meta.OFFLINE_LOGIN_PREFIX
_OFFLINE_FAILURES = meta.OFFLINE_FAILURES
_CURRENT = meta.CURRENT_LOGIN
_ACCOUNT_NAMES = meta.ACCOUNT_NAMES
_SESSION_USER = meta.SESSION_USER
_ACCOUNT_MARKS = meta.ACCOUNT_MARKS

ENDED_DISABLED = "disabled"
"""Why an offline login ended: the account is disabled on the server."""
ENDED_PASSWORD = "password"
"""Why an offline login ended: the password changed on the server since the account's
last online login on this laptop."""
ENDED_ENABLED = "enabled"
"""Why an offline login ended: the account was disabled on the server, and is enabled
again (an online login gives it back)."""

_ENDS = (ENDED_DISABLED, ENDED_PASSWORD)
"""The reasons that end an offline login and take the key copy under that password."""

_WHY = {
    ENDED_DISABLED: "disabled on the server",
    ENDED_PASSWORD: "password changed on the server: log in online",
    ENDED_ENABLED: "disabled on the server, then enabled again: log in online",
}
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


@dataclass(frozen=True, slots=True)
class OfflineLoginEnded:
    """An account whose offline login this laptop ended on its server's word."""

    user: str
    reason: str
    """:data:`ENDED_DISABLED` or :data:`ENDED_PASSWORD`."""
    key_copy: str
    """What became of their copy of an encrypted laptop's key, in words ("" on a plain
    laptop, or when they had none)."""

    def audit_detail(self) -> str:
        """The detail of the audit entry that records it (at most 256 characters)."""
        why = _WHY[self.reason].partition(":")[0]  # without the advice
        copy = f"; copy of the key {self.key_copy}" if self.key_copy else ""
        return f"offline login ended: {why}{copy}"[:256]


@dataclass(frozen=True, slots=True)
class _Known:
    """What the laptop keeps of an account that logged in online here."""

    mark: str
    """The hex password mark of its last online login here ("": not told)."""
    ended: str
    """Why its offline login ended ("": it did not)."""


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
        # What the store holds of ACCOUNT_MARKS, read at load: a sync then reads nothing.
        self._marks: dict[str, _Known] | None = None
        self._marks_read = False

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
        marks = await self.store.get_meta(_ACCOUNT_MARKS)
        self._marks = None if marks is None else _known_from_text(marks)
        self._marks_read = True

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

    async def logged_in_online(
        self, user: str, password: str, *, mark: bytes | None = None
    ) -> None:
        """After the server accepted ``user``'s password: log them in here, keep the
        hash that lets them log in offline later, and, on an encrypted database, wrap
        its key for them under that password (a changed password replaces the old
        copy). ``mark``: their password mark, as the server gave it with this login
        (None: a server that gives none); recorded with the offline login."""
        password_hash = await asyncio.to_thread(self.hasher.hash, password)
        await self.store.set_meta(_OFFLINE_LOGIN + user, password_hash)
        if self.database_key is not None:
            await asyncio.to_thread(self.database_key.remember, user, password)
        known = await self._known()
        # Absent and told no mark: the first login that tells marks takes this one in.
        if known is not None or mark is not None:
            known = dict(known or {})
            known[user] = _Known("" if mark is None else mark.hex(), "")
            await self._keep_known(known)
        await self._start(user)

    async def learn_accounts(
        self, states: Sequence[AccountState], *, logging_in: str | None = None
    ) -> list[OfflineLoginEnded]:
        """Act on what a proven server says of its accounts at a login (protocol version
        16 on): end the offline logins of disabled accounts and of accounts whose
        password changed since their last online login here (see the module's text).
        ``logging_in``: the account whose password login this is (its own login records
        everything anew). Returns the logins ended now, for the audit trail; writes
        nothing when nothing changed."""
        told = {state.username: state for state in states}
        known = await self._known()
        changed = known is None
        if known is None:
            # The first login that tells marks: every offline login kept from before.
            known = {}
            for user in told:
                if await self.store.get_meta(_OFFLINE_LOGIN + user):
                    known[user] = _Known("", "")
        ended: list[OfflineLoginEnded] = []
        for user, was in sorted(known.items()):
            state = told.get(user)
            if state is None or user == logging_in:
                continue
            now = self._judge(was, state)
            if now == was:
                # A copy kept when it ended (its user had opened the laptop then): the
                # first login while someone else opened it takes it away.
                if (
                    now.ended in _ENDS
                    and self._copy_to_drop(user)
                    and await self._drop_copy(user) == "removed"
                ):
                    ended.append(OfflineLoginEnded(user, now.ended, "removed"))
                continue
            known[user], changed = now, True
            if now.ended in _ENDS and now.ended != was.ended:
                ended.append(await self._end_offline(user, now.ended))
        if changed:
            await self._keep_known(known)
        return ended

    async def ended_offline(self) -> dict[str, str]:
        """Every account whose offline login this laptop ended on the server's word, and
        why, in words ("disabled on the server", "password changed on the server: log
        in online"); an online login of that account ends it."""
        known = await self._known() or {}
        return {user: _WHY[k.ended] for user, k in sorted(known.items()) if k.ended in _WHY}

    @staticmethod
    def _judge(was: _Known, state: AccountState) -> _Known:
        """What the laptop should keep of an account, given what the server says now."""
        mark = state.password_mark.hex()
        if state.disabled:
            return _Known(was.mark, ENDED_DISABLED)
        if was.ended == ENDED_DISABLED:
            return _Known(was.mark, ENDED_ENABLED)
        if was.ended:
            return was  # ended already: an online login gives it back
        if not was.mark:
            return _Known(mark, "")  # recorded before marks: taken as it is
        if was.mark != mark:
            return _Known(was.mark, ENDED_PASSWORD)
        return was

    async def _end_offline(self, user: str, reason: str) -> OfflineLoginEnded:
        """Remove ``user``'s offline login; a disabled account's kept login ends too;
        on an encrypted laptop, their copy of the key goes (see :meth:`_drop_copy`)."""
        await self.store.set_meta(_OFFLINE_LOGIN + user, "")  # "": none, ended
        if reason == ENDED_DISABLED:
            text = await self.store.get_meta(_CURRENT)
            if text and _Login.from_text(text).user == user:
                await self.store.set_meta(_CURRENT, "")
            if self._login is not None and self._login.user == user:
                self._login = None
            if self._set_aside == user:
                self._set_aside = None
        return OfflineLoginEnded(user, reason, await self._drop_copy(user))

    def _copy_to_drop(self, user: str) -> bool:
        """Whether ``user`` still holds a copy of an encrypted laptop's key that may go
        (as the key file was last read: :meth:`_drop_copy` checks it again)."""
        key = self.database_key
        if key is None or user == key.unlocked_by:
            return False
        users = key.ring.users()
        return user in users and len(users) > 1

    async def _drop_copy(self, user: str) -> str:
        """Remove ``user``'s copy of an encrypted laptop's key, unless it is the last one
        or the one that opened the laptop now; what became of it, in words."""
        key = self.database_key
        if key is None:
            return ""
        if user == key.unlocked_by:
            return "kept: their password opened this laptop now"
        try:
            await asyncio.to_thread(key.ring.remove_user, user)
        except UnknownKeyUserError:
            return ""  # they had none
        except InvalidInputError:
            return "kept: the last copy"
        except KeyFileError as exc:  # read-only media, a full disk: the login still ends
            logger.warning("could not remove %s's copy of the key: %s", user, exc)
            return "kept: the key file could not be written"
        return "removed"

    async def _no_offline_login(self, username: str) -> str:
        """Why ``username`` cannot log in offline, and what to do, in words."""
        known = (await self._known() or {}).get(username)
        ended = "" if known is None else known.ended
        if ended == ENDED_DISABLED:
            return (
                f"{username}'s account is disabled on the server, so {username} can no "
                "longer log in on this laptop; if that is a mistake, an administrator "
                f"enables it again (`caresync user enable`), then {username} logs in online "
                f"once (`caresync sync --db DB --username {username}`)"
            )
        if ended == ENDED_ENABLED:
            return (
                f"{username}'s account was disabled on the server, and is enabled again: "
                f"log in online once (`caresync sync --db DB --username {username}`) to log "
                "in offline on this laptop again"
            )
        if ended == ENDED_PASSWORD:
            return (
                f"{username}'s password was changed on the server since their last online "
                f"login on this laptop: log in online once with the new password (`caresync "
                f"sync --db DB --username {username}`) to log in offline here again"
            )
        return f"{username} has never logged in online on this laptop; connect to log in"

    async def _known(self) -> dict[str, _Known] | None:
        """What the laptop keeps of the accounts that logged in online here (None:
        nothing yet; see :data:`~caresync.replication.meta.ACCOUNT_MARKS`), as read at
        :meth:`load` and written since (a copy)."""
        if not self._marks_read:  # not loaded: never taken for "nothing yet"
            text = await self.store.get_meta(_ACCOUNT_MARKS)
            self._marks = None if text is None else _known_from_text(text)
            self._marks_read = True
        return None if self._marks is None else dict(self._marks)

    async def _keep_known(self, known: Mapping[str, _Known]) -> None:
        await self.store.set_meta(
            _ACCOUNT_MARKS,
            json.dumps(
                {user: {"mark": k.mark, "ended": k.ended} for user, k in sorted(known.items())}
            ),
        )
        self._marks, self._marks_read = dict(known), True

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
            if not stored:  # "": ended on the server's word
                raise AuthenticationError(await self._no_offline_login(username))
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
        """True if ``user`` has logged in online on this laptop (as the server knows too),
        even if their offline login ended since (a disabled account's work still syncs)."""
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


def _known_from_text(text: str) -> dict[str, _Known]:
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    known: dict[str, _Known] = {}
    if isinstance(data, dict):
        for user, entry in data.items():
            if not isinstance(entry, dict):
                break
            mark, ended = entry.get("mark"), entry.get("ended")
            if type(user) is not str or type(mark) is not str or type(ended) is not str:
                break
            if ended and ended not in _WHY:
                break
            known[user] = _Known(mark, ended)
        else:
            return known
    raise CorruptDatabaseError("the password marks kept on this laptop are damaged")
