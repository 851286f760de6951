"""Who may sync: the server's checks of Hello, server proofs, logins, sessions and enrolment.

Theory of operation
-------------------
A connection is trusted in steps, and nothing moves before its step:

1. **Hello** names a replica (or none, for a laptop about to enrol). An unknown
   or revoked replica is refused here; nothing is written (``last_seen`` moves
   only after a login).
2. **ProveServer**: the server signs the client's nonce with its key
   (:mod:`caresync.credentials`), bound to this connection (:mod:`caresync.protocol.identity`).
3. **Authenticate** (password) or **ResumeSession** (token). Either way, an
   enrolled replica must also prove its secret, so a session is bound to one
   account *and* one replica: a colleague's password cannot act as another
   laptop, and a token taken from a laptop is useless without that laptop's
   secret. Failed passwords are slowed per account and per address
   (:mod:`caresync.throttle`), counted in the store (``login_failed``): on a
   PostgreSQL database, in a table every server process shares, so spreading
   guesses over processes gains nothing; an account's attempt is counted before its
   password is checked (``login_claim``, atomic with the lock's check), so sending
   guesses at once gains nothing either. An unknown user costs as long as a wrong
   password. A store that cannot be read fails the login (never lets it through).
   Sessions expire for good at an absolute time; resuming never extends one.
   A password login reads the account and the replica again once its session is
   stored, and deletes it if a new password, a disabled account, a revocation or a
   new secret came in between (they ended every session stored before them).
4. **Enrol** needs a password login on the same connection (never a resumed
   session), and gives the new replica its secret, returned once.
5. **Authorship** of every pushed revision: a replica pushes only what it
   wrote itself, and each revision names as its author an account that has
   logged in on that replica (a password login bound to it, or its
   enrolment). The store records those logins with the sessions
   (:meth:`~caresync.storage.Store.replica_accounts`).

Refusals are values (:class:`Refused`), not exceptions: the server shell turns
them into the protocol's fatal ``Error`` and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from caresync.audit import AuditEvent
from caresync.credentials import (
    ServerKey,
    new_replica_secret,
    new_session_token,
    secret_matches,
    sha256_hex,
)
from caresync.exceptions import InvalidInputError
from caresync.names import check_device_name, shown
from caresync.protocol import (
    Authenticate,
    ErrorCode,
    Hello,
    ResumeSession,
    server_proof_payload,
)
from caresync.records import Revision
from caresync.replication import meta
from caresync.storage import AccountStanding, ServerStore, SessionRow, UserAccount
from caresync.throttle import LoginThrottle, ThrottleKey, address_key, key_text

__all__ = ["PUSHED_KEY_PREFIX", "SERVER_KEY_META", "Gatekeeper", "Login", "Refused"]

PUSHED_KEY_PREFIX = meta.PUSHED_PREFIX
"""Meta key prefix: the highest ``local_seq`` committed per replica."""
SERVER_KEY_META = meta.SERVER_KEY
"""Meta key of the server's private signing key (base64)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A refusal: the protocol error code and a message for the peer."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Login:
    """A login the gate accepted: who, where, the session, and what the replica learns."""

    user: str
    organisation: str
    token: str
    session_hash: str
    expires_ms: int
    by_password: bool
    pushed_up_to: int | None
    new_secret: bytes | None
    accounts: dict[str, str] | None = None
    """The organisation's accounts, when the login read them already (a resumed one)."""
    standings: dict[str, AccountStanding] | None = None
    """Their standings (disabled, password mark), read with them."""
    audit_tail: tuple[int, bytes] | None = None
    """The end of the replica's audit chain held here, when the login read it already."""


class Gatekeeper:
    """The server's trust decisions; see the module docstring."""

    def __init__(
        self,
        store: ServerStore,
        *,
        server_id: str,
        hasher: PasswordHasher,
        session_ttl_s: float,
        now_ms: Callable[[], int],
        throttle: LoginThrottle | None,
        server_key: ServerKey | None = None,
    ) -> None:
        self.store = store
        self.server_id = server_id
        self.hasher = hasher
        self.session_ttl_s = session_ttl_s
        self.now_ms = now_ms
        self.throttle = throttle
        """The throttle's policy (its settings); the failures themselves are counted in
        the store, shared by every process of a shared one. None: no throttle."""
        self.throttle_now_ms: Callable[[], int] = _wall_ms if store.shared else _monotonic_ms
        """The clock the throttle's times are read from: the wall clock for a store shared
        by processes (they share no other); the monotonic one for a store one process
        serves (SQLite, memory), which a wall clock set back cannot lengthen a lock by."""
        self._key = server_key
        self._dummy_hash: str | None = None
        # Password checks in flight per account (one) and per address (a few) in this
        # process (see check_password); an entry lives while a check of its key runs or
        # waits.
        self._checking: dict[ThrottleKey, tuple[asyncio.Semaphore, list[int]]] = {}

    async def server_key(self) -> ServerKey:
        """The server's signing key: from its database, or made and stored there once."""
        if self._key is None:
            self._key = await ensure_server_key(self.store)
        return self._key

    async def prove(
        self, nonce: bytes, replica_id: str | None, channel_binding: bytes | None
    ) -> tuple[bytes, bytes]:
        """The server's public key and its signature for this connection."""
        key = await self.server_key()
        payload = server_proof_payload(nonce, self.server_id, replica_id, channel_binding)
        return key.public_bytes, key.sign(payload)

    async def check_hello(self, hello: Hello) -> Refused | None:
        """Refuse an unknown or revoked replica, or one of another organisation."""
        if hello.replica_id is None:
            return None
        info = await self.store.get_replica(hello.replica_id)
        if info is None:
            return Refused(
                ErrorCode.NOT_ENROLLED,
                f"replica {hello.replica_id} is not enrolled to server {self.server_id}",
            )
        if info.revoked:
            return Refused(ErrorCode.REVOKED, f"replica {hello.replica_id} was revoked")
        if hello.organisation is not None and hello.organisation != info.organisation:
            return Refused(
                ErrorCode.WRONG_ORGANISATION,
                f"replica {hello.replica_id} belongs to {info.organisation}, "
                f"not {hello.organisation}",
            )
        return None

    # ----------------------------------------------------------------- logins

    async def password_login(
        self, login: Authenticate, hello: Hello | None, address: str | None
    ) -> Login | Refused:
        """Check a password (and, for an enrolled replica, its secret); open a session."""
        checked = await self.check_password(
            login.organisation, login.username, login.password, address
        )
        if isinstance(checked, Refused):
            return checked
        keys = LoginThrottle.keys(login.organisation, login.username, address)
        replica_id = hello.replica_id if hello is not None else None
        new_secret: bytes | None = None
        if replica_id is not None:
            proof = await self._check_replica(replica_id, login.replica_secret, login.username)
            if isinstance(proof, Refused):
                await self._failed(keys[1:])  # the address guessed; the account was right
                return proof
            new_secret = proof
        opened = await self._open_session(
            login.username, login.organisation, replica_id, new_secret
        )
        # The checks above and the session's commit are store trips apart: a password
        # changed, an account disabled or a laptop revoked in between ended the user's
        # sessions before this one was stored, and nothing would ever end it. Read
        # again now that it is stored: a change from here on deletes it, as any other.
        secret = new_secret if new_secret is not None else login.replica_secret
        ended = await self._ended_meanwhile(checked, replica_id, secret, login.password)
        if ended is not None:
            await self.store.end_sessions(token_hash=opened.session_hash)
            refusal, counted = ended
            await self._failed({"all": keys, "address": keys[1:], "none": []}[counted])
            return refusal
        return opened

    async def _ended_meanwhile(
        self, checked: UserAccount, replica_id: str | None, secret: bytes | None, password: str
    ) -> tuple[Refused, Literal["all", "address", "none"]] | None:
        """Why a session just stored for ``checked`` (on ``replica_id``, proved by
        ``secret``, logged in with ``password``) must not stand, and which of the login's
        keys count it as failed (``all``: the account's too, for a password that is no
        longer its own; a revoked laptop's, none, as at its Hello); None if it may."""
        organisation, username = checked.organisation, checked.username
        account = await self.store.get_user(organisation, username)
        if account is None or not await self._still_its_password(checked, account, password):
            return (
                Refused(
                    ErrorCode.BAD_CREDENTIALS,
                    f"the password of {username} in {organisation} changed while this "
                    "login was being checked: log in with the new one",
                ),
                "all",
            )
        if account.disabled:
            return (
                Refused(
                    ErrorCode.BAD_CREDENTIALS,
                    f"the account {username} in {organisation} is disabled; ask an administrator",
                ),
                "address",
            )
        if replica_id is None:
            return None
        info = await self.store.get_replica(replica_id)
        if info is None or info.revoked:
            return Refused(ErrorCode.REVOKED, f"replica {replica_id} was revoked"), "none"
        if not secret_matches(secret, await self.store.replica_secret_hash(replica_id)):
            return (
                Refused(
                    ErrorCode.BAD_CREDENTIALS,
                    f"replica {replica_id} was given a new secret while this login was "
                    "being checked: only the laptop holding it can log in as it",
                ),
                "address",
            )
        return None

    async def _still_its_password(
        self, checked: UserAccount, account: UserAccount, password: str
    ) -> bool:
        """Whether ``password``, checked against ``checked``'s hash, is ``account``'s
        password still. A new hash is not a new password: the same one hashed again (at
        a higher cost, ``set_password_hash(..., end_sessions=False)``), or set again,
        is checked against it (one more argon2 check, only when the hash changed)."""
        if account.password_hash == checked.password_hash:
            return True
        return await asyncio.to_thread(_verify, self.hasher, account.password_hash, password)

    async def check_password(
        self,
        organisation: str,
        username: str,
        password: str,
        address: str | None,
        *,
        needs_admin: bool = False,
    ) -> UserAccount | Refused:
        """An account's password, checked under the throttle: the enabled account, or
        a refusal (``throttled``, ``bad_credentials``; ``forbidden`` for an account that
        is not an administrator when ``needs_admin``). Opens no session: the sync login
        and the admin page (:mod:`caresync.admin`) both start here.

        A right password that opens nothing (a disabled account's; a clinician's on the
        admin page) counts as a failed login: trying it again and again must cost what
        any wrong guess costs, not a password check and an audit entry each time."""
        keys = LoginThrottle.keys(organisation, username, address)
        # One check of an account at a time here: a right password clears its claim
        # before the next is claimed, so logins of one account at the same moment
        # (several laptops, a harness's many) never add up to a lock; guesses wait
        # their turn and are counted one by one. Across processes, at most one claim
        # each is in flight at once.
        #
        # And at most a few checks from one address (its /64 for IPv6) at a time: its
        # failures are counted after each check (a right password must not count
        # against a clinic's shared address), so guesses at many accounts sent at once
        # would otherwise each be checked before the first was counted. A guess waits
        # for its slot, then reads the address's lock as the checks before it left it.
        async with contextlib.AsyncExitStack() as turns:
            await turns.enter_async_context(self._turn_of(keys[0], 1))
            if len(keys) > 1 and self.throttle is not None:
                width = self.throttle.address_checks
                await turns.enter_async_context(self._turn_of(keys[1], width))
            return await self._check_password(
                keys, organisation, username, password, needs_admin=needs_admin
            )

    @contextlib.asynccontextmanager
    async def _turn_of(self, key: ThrottleKey, width: int) -> AsyncIterator[None]:
        """This process's turn to check a password counted against ``key``, of which
        ``width`` may be checked at once. Always taken in the same order (the account's,
        then the address's), so turns never wait on each other in a circle."""
        entry = self._checking.get(key)
        if entry is None:
            entry = self._checking[key] = (asyncio.Semaphore(width), [0])
        slots, users = entry
        users[0] += 1
        try:
            async with slots:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._checking[key]

    async def _check_password(
        self,
        keys: list[ThrottleKey],
        organisation: str,
        username: str,
        password: str,
        *,
        needs_admin: bool,
    ) -> UserAccount | Refused:
        """:meth:`check_password` in the account's turn."""
        wait = await self._wait(keys)
        if wait <= 0:
            # The account's guess is counted before its password is checked, atomically
            # with its lock's check (a right password clears it): guesses at the same
            # instant, through any process, get the checks of guesses one by one.
            wait = await self._claim(keys[0])
        if wait > 0:
            return Refused(
                ErrorCode.THROTTLED,
                f"too many failed logins for {username} or from this address; "
                f"try again in {wait:.0f} s",
            )
        account = await self.store.get_user(organisation, username)
        # An unknown user is checked against a dummy hash: it costs what a wrong
        # password costs, so timing does not tell which accounts exist.
        stored = account.password_hash if account is not None else await self._dummy()
        right = await asyncio.to_thread(_verify, self.hasher, stored, password)
        if not right or account is None:
            await self._failed(keys[1:])  # the account's was counted by its claim
            return Refused(
                ErrorCode.BAD_CREDENTIALS,
                f"unknown user or wrong password for {username} in {organisation}",
            )
        if account.disabled:
            await self._failed(keys[1:])
            return Refused(
                ErrorCode.BAD_CREDENTIALS,
                f"the account {username} in {organisation} is disabled; ask an administrator",
            )
        if needs_admin and not account.admin:
            await self._failed(keys[1:])
            return Refused(ErrorCode.FORBIDDEN, f"{username} is not an administrator")
        await self._succeeded(organisation, username)
        return account

    async def malformed_login(self, address: str | None, reason: str) -> Refused:
        """A login whose credentials could not even be read (the admin page's Basic
        header): counted against the address, as a wrong password is, so that a
        flood of them is throttled too (``throttled`` once the address is locked)."""
        keys: list[ThrottleKey] = [address_key(address)] if address else []
        if await self._wait(keys) > 0:
            return Refused(ErrorCode.THROTTLED, "too many failed logins from this address")
        await self._failed(keys)
        return Refused(ErrorCode.BAD_CREDENTIALS, reason)

    async def resume(
        self, login: ResumeSession, hello: Hello | None, address: str | None
    ) -> Login | Refused:
        """Resume a session: its token, bound to this replica, which proves its secret."""
        expired = Refused(
            ErrorCode.SESSION_EXPIRED, "the session ended or expired: log in with your password"
        )
        keys: list[ThrottleKey] = [address_key(address)] if address else []
        if await self._wait(keys) > 0:
            return Refused(ErrorCode.THROTTLED, "too many failed logins from this address")
        replica_id = hello.replica_id if hello is not None else None
        if replica_id is None:
            await self._failed(keys)
            return expired
        # One trip to the store for all a resumed login reads (a login waits on each).
        mark = PUSHED_KEY_PREFIX + replica_id
        reads = await self.store.read_resume(
            sha256_hex(login.session_token), replica_id, meta_keys=(mark,)
        )
        session = reads.session
        now = self.now_ms()
        if session is None or session.expires_ms <= now or session.replica_id != replica_id:
            await self._failed(keys)
            return expired
        if not secret_matches(login.replica_secret, reads.secret_hash):
            await self._failed(keys)
            return Refused(
                ErrorCode.BAD_CREDENTIALS,
                f"replica {replica_id} did not prove its secret; log in with your password",
            )
        account = reads.account
        if account is None or account.disabled:
            return expired
        pushed = reads.meta.get(mark)
        return Login(
            session.username,
            session.organisation,
            login.session_token,
            session.token_hash,
            session.expires_ms,
            False,
            _pushed_mark(pushed),
            None,
            accounts=reads.accounts,
            audit_tail=reads.audit_tail,
            standings=reads.standings,
        )

    async def enrol(
        self, login: Login, device_name: str, proposed_id: str | None
    ) -> tuple[str, bytes, bool] | Refused:
        """Enrol a new replica for a password login; returns its id, its secret, and
        whether that id was enrolled already and given a new secret in place of one its
        laptop never received (:meth:`_enrolled_again`)."""
        if not login.by_password:
            return Refused(
                ErrorCode.FORBIDDEN,
                "enrolment needs a password login on this connection, not a resumed session",
            )
        try:
            check_device_name(device_name)
        except InvalidInputError as exc:
            return Refused(ErrorCode.BAD_MESSAGE, str(exc))
        replica_id = f"replica-{uuid.uuid4()}"
        secret = new_replica_secret()
        # Never the server's own id: its audit chain (and its name) are its own.
        if proposed_id is not None and proposed_id != self.server_id:
            if await self.store.get_replica(proposed_id) is None:
                replica_id = proposed_id
            elif await self._enrolled_again(login, proposed_id, secret):
                await self.store.bind_session(login.session_hash, proposed_id)
                return proposed_id, secret, True
        await self.store.enrol_replica(
            replica_id,
            login.organisation,
            enrolled_by=login.user,
            device_name=device_name or None,
            secret_hash=sha256_hex(secret),
            # Who enrolled which laptop, on the server's trail in the enrolment's commit.
            audit=[AuditEvent(login.user, "enrol", None, replica_id)],
            audit_as=self.server_id,
        )
        await self.store.bind_session(login.session_hash, replica_id)
        return replica_id, secret, False

    async def _enrolled_again(self, login: Login, replica_id: str, secret: bytes) -> bool:
        """True if ``replica_id`` now holds ``secret``: the same account enrolled it, in
        the same organisation, and it was never used (no sync, nothing pushed, not
        revoked). That is a laptop whose answer to its enrolment was lost on the way
        (the link cut after the commit): it holds no secret for this id, and asks again.
        Anyone else gets a new id, as for any taken one."""
        return await self.pushed_up_to(replica_id) == 0 and (
            await self.store.reissue_replica_secret(
                replica_id,
                organisation=login.organisation,
                enrolled_by=login.user,
                secret_hash=sha256_hex(secret),
                audit=[AuditEvent(login.user, "enrol", None, f"{replica_id} again: a new secret")],
                audit_as=self.server_id,
            )
        )

    async def session_valid(self, session_hash: str) -> bool:
        """True while the session exists and has not expired."""
        session = await self.store.get_session(session_hash)
        return session is not None and session.expires_ms > self.now_ms()

    async def pushed_up_to(self, replica_id: str) -> int:
        """The highest local seq of ``replica_id`` committed here (0: none)."""
        return _pushed_mark(await self.store.get_meta(PUSHED_KEY_PREFIX + replica_id))

    # -------------------------------------------------------------- authorship

    def foreign_writers(self, pusher: str, replica_ids: Collection[str]) -> str | None:
        """Why ``pusher`` may not push what ``replica_ids`` wrote, or None if it may.

        A replica pushes only what it wrote itself. (Carrying a revoked laptop's
        unsynced work from another laptop would need proof that the work is that
        laptop's, such as its secret; a revision's ``r`` field alone proves
        nothing, since any laptop can write any name there.)
        """
        others = sorted(set(replica_ids) - {pusher})
        if not others:
            return None
        return (
            f"it holds changes written on replica {shown(others[0])}, not on this one "
            f"({pusher}); a replica pushes only its own changes"
        )

    async def unknown_author(
        self, revisions: Sequence[tuple[str, Revision]]
    ) -> tuple[str, str] | None:
        """The record of a revision whose author may not have written it, and why; or
        None if every one may.

        Each ``(record_id, revision)`` must name as author an account that has
        logged in on the revision's replica.
        """
        accounts = await self.store.replica_accounts({rev.replica for _rid, rev in revisions})
        for record_id, rev in revisions:
            if rev.author not in accounts.get(rev.replica, frozenset()):
                return record_id, (
                    f"record {record_id}: revision {rev.id} names {shown(rev.author)} as its "
                    f"author, and no account of that name has logged in on replica "
                    f"{rev.replica}; caresync stamps every entry with the account logged in "
                    "on the laptop (update the client that wrote it)"
                )
        return None

    # ---------------------------------------------------------------- helpers

    async def _check_replica(
        self, replica_id: str, secret: bytes | None, username: str
    ) -> bytes | Refused | None:
        """None if ``secret`` is the replica's; a new secret for a replica enrolled
        before secrets existed, logged in by the account that enrolled it; else Refused."""
        stored = await self.store.replica_secret_hash(replica_id)
        if stored is not None:
            if secret_matches(secret, stored):
                return None
            return Refused(
                ErrorCode.BAD_CREDENTIALS,
                f"replica {replica_id} did not prove its secret: only that laptop can log in as it",
            )
        info = await self.store.get_replica(replica_id)
        if info is None or info.enrolled_by != username:
            return Refused(
                ErrorCode.BAD_CREDENTIALS,
                f"replica {replica_id} was enrolled before replica secrets; only the account "
                "that enrolled it can log it in (once), or re-enrol the laptop",
            )
        new_secret = new_replica_secret()
        await self.store.set_replica_secret_hash(replica_id, sha256_hex(new_secret))
        return new_secret

    async def _open_session(
        self, user: str, organisation: str, replica_id: str | None, new_secret: bytes | None
    ) -> Login:
        now = self.now_ms()
        await self.store.end_sessions(expired_at_ms=now)  # expired sessions go
        token = new_session_token()
        expires = now + int(self.session_ttl_s * 1000)
        token_hash = sha256_hex(token)
        await self.store.add_session(
            SessionRow(token_hash, organisation, user, replica_id, now, expires)
        )
        pushed = await self.pushed_up_to(replica_id) if replica_id is not None else None
        return Login(user, organisation, token, token_hash, expires, True, pushed, new_secret)

    # The throttle: its policy is ``self.throttle``; its state is the store's. A store
    # without the login methods (a third party's, written before them) keeps the
    # throttle's own memory, per process, as every store did before.

    async def _wait(self, keys: Sequence[ThrottleKey]) -> float:
        """Seconds until a login counted against ``keys`` may be tried; a store that
        cannot be read raises (the login fails: it never goes through unthrottled)."""
        throttle = self.throttle
        if throttle is None or not keys:
            return 0.0
        if not _counts_logins(self.store):
            return throttle.retry_after(keys, time.monotonic())
        wait_ms = await self.store.login_wait_ms(
            [key_text(key) for key in keys],
            self.throttle_now_ms(),
            throttle.policy.forget_after_ms,
        )
        return wait_ms / 1000

    async def _claim(self, key: ThrottleKey) -> float:
        """Count a failure against ``key`` unless it is locked: 0, or the seconds to
        wait (nothing counted)."""
        throttle = self.throttle
        if throttle is None:
            return 0.0
        if not _counts_logins(self.store):
            return throttle.claim(key, time.monotonic())
        wait_ms = await self.store.login_claim(
            key_text(key), throttle.free(key), self.throttle_now_ms(), throttle.policy
        )
        return wait_ms / 1000

    async def _failed(self, keys: Sequence[ThrottleKey]) -> None:
        throttle = self.throttle
        if throttle is None or not keys:
            return
        if not _counts_logins(self.store):
            throttle.failed(keys, time.monotonic())
            return
        await self.store.login_failed(
            [(key_text(key), throttle.free(key)) for key in keys],
            self.throttle_now_ms(),
            throttle.policy,
        )

    async def _succeeded(self, organisation: str, username: str) -> None:
        throttle = self.throttle
        if throttle is None:
            return
        if not _counts_logins(self.store):
            throttle.succeeded(organisation, username)
            return
        await self.store.login_succeeded(key_text(("account", organisation, username)))

    async def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = await asyncio.to_thread(self.hasher.hash, uuid.uuid4().hex)
        return self._dummy_hash


async def ensure_server_key(store: ServerStore) -> ServerKey:
    """The server key kept in ``store``, made and stored on first use."""
    stored = await store.get_meta(SERVER_KEY_META)
    if stored:
        return ServerKey.from_text(stored)
    # Insert-if-absent: of two processes starting together on one database, both
    # keep the key stored first (laptops pin one key per server).
    made = ServerKey.generate().to_text()
    return ServerKey.from_text(await store.set_meta_if_absent(SERVER_KEY_META, made))


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def _counts_logins(store: ServerStore) -> bool:
    """Whether the store counts failed logins (every caresync store does)."""
    methods = ("login_wait_ms", "login_failed", "login_claim", "login_succeeded")
    return all(callable(getattr(store, name, None)) for name in methods)


def _verify(hasher: PasswordHasher, password_hash: str, password: str) -> bool:
    try:
        return hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError, InvalidInputError):
        return False


def _pushed_mark(stored: str | None) -> int:
    """A replica's push mark as the server keeps it in meta (none yet: 0)."""
    return int(stored) if stored else 0
