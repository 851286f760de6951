"""Slowing password guessing: failed logins lock an account or an address for a while.

Pure and synchronous (the server passes the time in). Each key — an account
``(organisation, username)`` or a network address — may fail a few times for
free; every failure after that locks it for twice as long as the last, up to a
cap. While a key is locked, a login naming it is refused at once, before any
password is checked, so a locked key costs the server nothing and an attacker
gets nothing from it. A success on an account clears that account's record
(not the address's: one right password must not reset a spray from there).

Memory is bounded: at most ``max_tracked`` keys are kept, the least recently
failed forgotten first, and a key idle for ``forget_after_s`` starts afresh.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from caresync.exceptions import InvalidInputError

__all__ = ["LoginThrottle", "ThrottleKey"]

ThrottleKey = tuple[str, ...]
"""``("account", organisation, username)`` or ``("address", host)``."""


@dataclass(slots=True)
class _Failures:
    count: int
    last_s: float
    locked_until_s: float


@dataclass(slots=True)
class LoginThrottle:
    """Failed-login bookkeeping; see the module docstring.

    ``account_free`` and ``address_free`` failures are allowed before the first
    lock (an address fails more: a clinic's laptops may share one).
    """

    account_free: int = 5
    address_free: int = 20
    first_lock_s: float = 1.0
    max_lock_s: float = 300.0
    forget_after_s: float = 3600.0
    max_tracked: int = 100_000
    _keys: OrderedDict[ThrottleKey, _Failures] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        for name in ("account_free", "address_free", "max_tracked"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInputError(f"{name} must be a positive int, not {value!r}")
        if not 0 < self.first_lock_s <= self.max_lock_s or self.forget_after_s <= 0:
            raise InvalidInputError("LoginThrottle needs 0 < first_lock_s <= max_lock_s")

    @staticmethod
    def keys(organisation: str, username: str, address: str | None) -> list[ThrottleKey]:
        """The keys a login attempt counts against."""
        keys: list[ThrottleKey] = [("account", organisation, username)]
        if address:
            keys.append(("address", address))
        return keys

    def retry_after(self, keys: Iterable[ThrottleKey], now_s: float) -> float:
        """Seconds until these keys may try again (0: now)."""
        wait = 0.0
        for key in keys:
            entry = self._keys.get(key)
            if entry is not None and now_s - entry.last_s < self.forget_after_s:
                wait = max(wait, entry.locked_until_s - now_s)
        return wait

    def failed(self, keys: Iterable[ThrottleKey], now_s: float) -> None:
        """Count a failed login against every key."""
        for key in keys:
            entry = self._keys.pop(key, None)
            if entry is None or now_s - entry.last_s >= self.forget_after_s:
                entry = _Failures(0, now_s, 0.0)
            entry.count += 1
            entry.last_s = now_s
            free = self.account_free if key[0] == "account" else self.address_free
            over = entry.count - free
            if over > 0:
                lock = min(self.max_lock_s, self.first_lock_s * 2.0 ** min(over - 1, 60))
                entry.locked_until_s = now_s + lock
            self._keys[key] = entry  # most recent last
            while len(self._keys) > self.max_tracked:
                self._keys.popitem(last=False)

    def succeeded(self, organisation: str, username: str) -> None:
        """A right password: the account starts afresh."""
        self._keys.pop(("account", organisation, username), None)

    def __len__(self) -> int:
        return len(self._keys)
