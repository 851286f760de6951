"""Slowing password guessing: failed logins lock an account or an address for a while.

Pure and synchronous (the server passes the time in). Each key — an account
``(organisation, username)`` or a network address (an IPv6 one's /64) — may fail a few times for
free; every failure after that locks it for twice as long as the last, up to a
cap. While a key is locked, a login naming it is refused at once, before any
password is checked, so a locked key costs the server nothing and an attacker
gets nothing from it. A success on an account clears that account's record
(not the address's: one right password must not reset a spray from there).

Memory is bounded: at most ``max_tracked`` keys are kept, the least recently
failed forgotten first, and a key idle for ``forget_after_s`` starts afresh.

A server keeps this bookkeeping in its store, not in a :class:`LoginThrottle`
(whose settings are then the policy, :attr:`LoginThrottle.policy`): the
store's ``login_wait_ms``, ``login_failed``, ``login_claim`` and ``login_succeeded``
(:class:`~caresync.storage.ServerStore`), in milliseconds (of the wall clock for a
store shared by processes, the monotonic one otherwise), keyed by :func:`key_text`.
A PostgreSQL store keeps it in a table every server process on the database shares,
so a guesser spreading attempts over the processes gets no more free attempts, nor
shorter locks, than against one; the SQLite store and the in-memory one (one process
each) keep a :class:`FailureTable` in memory, which does what the table does.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from caresync.exceptions import InvalidInputError

__all__ = [
    "FailureTable",
    "LoginThrottle",
    "MAX_KEY_LENGTH",
    "ThrottleKey",
    "ThrottlePolicy",
    "address_key",
    "check_failures",
    "check_key",
    "check_wait",
    "key_text",
    "lock_ms",
]

ThrottleKey = tuple[str, ...]
"""``("account", organisation, username)`` or ``("address", host)`` (an IPv6 host's /64
network: :func:`address_key`)."""


MAX_KEY_LENGTH = 512
"""Longest key (:func:`key_text`) a store is given, in characters."""


def key_text(key: ThrottleKey) -> str:
    """A key as a store keeps it: its parts as a JSON array (one string per key, and
    two keys are one only if their parts are), or, for one longer than
    :data:`MAX_KEY_LENGTH` (or not UTF-8: a lone surrogate), ``sha256:`` and that
    array's hash."""
    text = json.dumps(list(key), ensure_ascii=False, separators=(",", ":"))
    try:
        if len(text) <= MAX_KEY_LENGTH and text.encode("utf-8"):
            return text
    except UnicodeEncodeError:  # a lone surrogate: no database takes it as text
        pass
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """How a store counts failed logins, in milliseconds (see :class:`LoginThrottle`,
    whose :attr:`~LoginThrottle.policy` this is; which failures are free is given per
    key, with each failure)."""

    first_lock_ms: int
    max_lock_ms: int
    forget_after_ms: int
    max_tracked: int

    def __post_init__(self) -> None:
        for name in ("first_lock_ms", "max_lock_ms", "forget_after_ms", "max_tracked"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInputError(f"{name} must be a positive int, not {value!r}")
        if self.first_lock_ms > self.max_lock_ms:
            raise InvalidInputError("ThrottlePolicy needs first_lock_ms <= max_lock_ms")


def lock_ms(over: int, policy: ThrottlePolicy) -> int:
    """How long the ``over``-th failure past the free ones locks a key (``over`` >= 1):
    ``first_lock_ms``, doubled with each further failure, up to ``max_lock_ms``."""
    return min(policy.max_lock_ms, policy.first_lock_ms << min(max(over - 1, 0), 60))


def check_failures(keys: Sequence[tuple[str, int]], now_ms: int, policy: object) -> None:
    """Refuse a bad argument of ``login_failed``: ``(key, free)`` pairs, each key a
    non-empty string of at most :data:`MAX_KEY_LENGTH` characters, once, ``free`` a
    positive int; ``now_ms`` an int >= 0; a :class:`ThrottlePolicy` (InvalidInputError)."""
    _check_now(now_ms)
    if not isinstance(policy, ThrottlePolicy):
        raise InvalidInputError(f"policy must be a ThrottlePolicy, not {type(policy).__name__}")
    if isinstance(keys, str | bytes):
        raise InvalidInputError("keys must be a sequence of (key, free) pairs")
    seen: set[str] = set()
    for pair in keys:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise InvalidInputError(f"each failure must be a (key, free) pair, not {pair!r:.80}")
        key, free = pair
        check_key(key)
        if not isinstance(free, int) or isinstance(free, bool) or free < 1:
            raise InvalidInputError(f"free must be a positive int, not {free!r}")
        if key in seen:
            raise InvalidInputError(f"the key {key!r:.80} is given twice")
        seen.add(key)


def check_key(key: object) -> str:
    """A key a store is given: a non-empty string of at most :data:`MAX_KEY_LENGTH`."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidInputError(
            f"a login key must be a non-empty string of at most {MAX_KEY_LENGTH} "
            f"characters, not {key!r:.80}"
        )
    return key


def _check_now(now_ms: object) -> None:
    if not isinstance(now_ms, int) or isinstance(now_ms, bool) or now_ms < 0:
        raise InvalidInputError(f"now_ms must be an int >= 0, not {now_ms!r}")


def check_wait(keys: Sequence[str], now_ms: int, forget_after_ms: int) -> None:
    """Refuse a bad argument of ``login_wait_ms`` (InvalidInputError)."""
    _check_now(now_ms)
    if isinstance(keys, str | bytes):
        raise InvalidInputError("keys must be a sequence of keys, not one")
    for key in keys:
        check_key(key)
    if not isinstance(forget_after_ms, int) or isinstance(forget_after_ms, bool):
        raise InvalidInputError(f"forget_after_ms must be an int, not {forget_after_ms!r}")
    if forget_after_ms < 1:
        raise InvalidInputError(f"forget_after_ms must be positive, not {forget_after_ms!r}")


@dataclass(slots=True)
class _Row:
    failures: int
    last_ms: int
    locked_until_ms: int


class FailureTable:
    """Failed logins per key, in memory: what the SQLite and in-memory stores keep for
    ``login_wait_ms``, ``login_failed``, ``login_claim`` and ``login_succeeded`` (one process serves
    either), doing what the PostgreSQL store's ``login_failures`` table does.

    At most ``policy.max_tracked`` keys (the least recently failed go first); a key
    idle for ``forget_after_ms`` counts for nothing and goes at the next failure.
    """

    __slots__ = ("_rows",)

    def __init__(self) -> None:
        self._rows: OrderedDict[str, _Row] = OrderedDict()  # least recently failed first

    def wait_ms(self, keys: Sequence[str], now_ms: int, forget_after_ms: int) -> int:
        """Milliseconds until a login counted against ``keys`` may be tried (0: now)."""
        check_wait(keys, now_ms, forget_after_ms)
        wait = 0
        for key in keys:
            row = self._rows.get(key)
            if row is not None and now_ms - row.last_ms < forget_after_ms:
                wait = max(wait, row.locked_until_ms - now_ms)
        return wait

    def failed(self, keys: Sequence[tuple[str, int]], now_ms: int, policy: ThrottlePolicy) -> None:
        """Count a failure against each ``(key, free)``."""
        check_failures(keys, now_ms, policy)
        for key, free in keys:
            row = self._rows.pop(key, None)
            if row is None or now_ms - row.last_ms >= policy.forget_after_ms:
                row = _Row(0, now_ms, 0)
            row.failures += 1
            row.last_ms = max(row.last_ms, now_ms)
            if row.failures > free:
                until = now_ms + lock_ms(row.failures - free, policy)
                row.locked_until_ms = max(row.locked_until_ms, until)
            self._rows[key] = row
        while self._rows:  # the idle ones go, the least recently failed first
            oldest = next(iter(self._rows.values()))
            if now_ms - oldest.last_ms < policy.forget_after_ms:
                break
            self._rows.popitem(last=False)
        while len(self._rows) > policy.max_tracked:
            self._rows.popitem(last=False)

    def claim(self, key: str, free: int, now_ms: int, policy: ThrottlePolicy) -> int:
        """Count a failure against ``key`` unless it is locked: 0 when counted, else the
        milliseconds until it may be tried (nothing counted)."""
        check_failures([(key, free)], now_ms, policy)
        wait = self.wait_ms([key], now_ms, policy.forget_after_ms)
        if wait > 0:
            return wait
        self.failed([(key, free)], now_ms, policy)
        return 0

    def succeeded(self, key: str) -> None:
        """Forget ``key``'s failures."""
        self._rows.pop(check_key(key), None)

    def row(self, key: str) -> tuple[int, int, int] | None:
        """``(failures, last_ms, locked_until_ms)`` of a key, or None (for tests)."""
        row = self._rows.get(key)
        return None if row is None else (row.failures, row.last_ms, row.locked_until_ms)

    def __len__(self) -> int:
        return len(self._rows)


@dataclass
class LoginThrottle:
    """Failed-login bookkeeping; see the module docstring.

    ``account_free`` and ``address_free`` failures are allowed before the first
    lock (an address fails more: a clinic's laptops may share one).

    Given to a server (``SyncServer(throttle=...)``), only its settings are used
    (:attr:`policy`, :meth:`free`): the server counts the failures in its store.
    Its own methods keep failures in this object's memory, in a :class:`FailureTable`
    (the rules a store keeps), at the times the caller gives in seconds (a monotonic
    clock's: a server's gate uses them for a store without the login methods).
    """

    account_free: int = 5
    address_free: int = 20
    address_checks: int = 4
    """Passwords from one address a server process checks at once (its failures are
    counted after each check, so this bounds how far guesses sent together pass
    ``address_free``: by at most this many per process)."""
    first_lock_s: float = 1.0
    max_lock_s: float = 300.0
    forget_after_s: float = 3600.0
    max_tracked: int = 100_000

    def __post_init__(self) -> None:
        for name in ("account_free", "address_free", "address_checks", "max_tracked"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInputError(f"{name} must be a positive int, not {value!r}")
        if not 0 < self.first_lock_s <= self.max_lock_s or self.forget_after_s <= 0:
            raise InvalidInputError("LoginThrottle needs 0 < first_lock_s <= max_lock_s")
        self._table = FailureTable()  # not a field: its own memory, not a setting

    @property
    def policy(self) -> ThrottlePolicy:
        """These settings in milliseconds, as a store's ``login_failed`` takes them."""
        return ThrottlePolicy(
            first_lock_ms=max(1, round(self.first_lock_s * 1000)),
            max_lock_ms=max(1, round(self.max_lock_s * 1000)),
            forget_after_ms=max(1, round(self.forget_after_s * 1000)),
            max_tracked=self.max_tracked,
        )

    def free(self, key: ThrottleKey) -> int:
        """The failures ``key`` may make before its first lock."""
        return self.account_free if key[0] == "account" else self.address_free

    @staticmethod
    def keys(organisation: str, username: str, address: str | None) -> list[ThrottleKey]:
        """The keys a login attempt counts against."""
        keys: list[ThrottleKey] = [("account", organisation, username)]
        if address:
            keys.append(address_key(address))
        return keys

    # Its own memory: the same rules as a store's (a FailureTable), in milliseconds of
    # the caller's clock (``now_s``: seconds, of a clock that never goes back).

    def retry_after(self, keys: Iterable[ThrottleKey], now_s: float) -> float:
        """Seconds until these keys may try again (0: now)."""
        texts = [key_text(key) for key in keys]
        return self._table.wait_ms(texts, _ms(now_s), self.policy.forget_after_ms) / 1000

    def failed(self, keys: Iterable[ThrottleKey], now_s: float) -> None:
        """Count a failed login against every key."""
        pairs = [(key_text(key), self.free(key)) for key in keys]
        self._table.failed(pairs, _ms(now_s), self.policy)

    def claim(self, key: ThrottleKey, now_s: float) -> float:
        """Count a failed login against ``key`` unless it is locked: 0 when counted, else
        the seconds until it may be tried (nothing counted)."""
        return self._table.claim(key_text(key), self.free(key), _ms(now_s), self.policy) / 1000

    def succeeded(self, organisation: str, username: str) -> None:
        """A right password: the account starts afresh."""
        self._table.succeeded(key_text(("account", organisation, username)))

    def __len__(self) -> int:
        return len(self._table)


_IPV4_IN_LAST_32_BITS = (
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64 / SIIT's well-known prefix (RFC 6052)
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # IPv4-translated (SIIT, RFC 2765)
)
"""IPv6 networks whose addresses stand for IPv4 clients, the client's address last."""


def address_key(address: str) -> ThrottleKey:
    """The key of a client's address: an IPv4 address as it is; an IPv6 address's /64
    network, which one household, clinic or machine is given whole (its host half is
    the client's to choose, so per address a guesser would have 2**64 of them); anything
    else (a name, a Unix socket's path) as it is.

    An IPv6 address that carries an IPv4 client's address is that IPv4 address: an
    IPv4-mapped one, one a translator made (``64:ff9b::/96``, ``::ffff:0:0:0/96``: all
    IPv4 clients of an IPv6-only server behind SIIT share one /64), a 6to4 one (one IPv4
    host's /48) and a Teredo one (its client's address)."""
    try:
        parsed = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return ("address", address)
    if isinstance(parsed, ipaddress.IPv6Address):
        carried = _carried_ipv4(parsed)
        if carried is not None:
            return ("address", str(carried))
        return ("address", str(ipaddress.IPv6Network((parsed, 64), strict=False)))
    return ("address", str(parsed))


def _carried_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 client an IPv6 address stands for, or None (see :func:`address_key`)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if any(address in network for network in _IPV4_IN_LAST_32_BITS):
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def _ms(now_s: float) -> int:
    return int(now_s * 1000)
