"""How a laptop resists password guessing: the lock after failures in a row, and the
failed attempts it remembers (pure: no I/O, no clock of its own).

Theory of operation
-------------------
One policy, two places that keep its count:

* a **plain** laptop counts failed offline logins in its database
  (:mod:`caresync.logins`);
* an **encrypted** laptop cannot: a wrong password opens no database to count in.
  It counts failed *unlock* attempts in its key file instead
  (:mod:`caresync.storage.keyring`, :class:`UnlockAttempts`), and
  :mod:`caresync.storage.laptop_key` applies them before every argon2id derivation.

After :data:`OFFLINE_LOGIN_ATTEMPTS` failures in a row no password is checked for
:data:`OFFLINE_LOCK_FIRST_S`, doubling with each further failure up to
:data:`OFFLINE_LOCK_MAX_S` (:func:`lock_seconds`); a right password resets the count.

An encrypted laptop also remembers *who* failed and when (:class:`FailedLogin`, at
most :data:`MAX_FAILED_KEPT`, the oldest dropped and counted), until a caller
that recorded them elsewhere (an audit trail) says so. *Who* is an account that holds a
copy of the key; any other name typed is kept as :data:`NAME_WITHOUT_KEY` (the key file
is plain text, and a password typed in the name's field must not be kept there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from caresync.exceptions import LoginLockedError

__all__ = [
    "MAX_FAILED_KEPT",
    "MAX_NAME_CHARS",
    "NAME_WITHOUT_KEY",
    "OFFLINE_LOCK_FIRST_S",
    "OFFLINE_LOCK_MAX_S",
    "OFFLINE_LOGIN_ATTEMPTS",
    "FailedLogin",
    "UnlockAttempts",
    "lock_seconds",
    "locked_error",
    "shown_name",
]

OFFLINE_LOGIN_ATTEMPTS = 5
"""Failed logins (or unlocks) in a row after which the laptop locks."""
OFFLINE_LOCK_FIRST_S = 30.0
"""The first lock; each further failure doubles it."""
OFFLINE_LOCK_MAX_S = 3600.0
"""The longest lock."""
MAX_FAILED_KEPT = 100
"""Failed attempts an encrypted laptop's key file remembers; older ones are dropped, and counted."""
MAX_NAME_CHARS = 64
"""A remembered username is cut to this many characters."""
_MAX_COUNT = 2**62  # bounds on numbers read back from an untrusted file


def lock_seconds(failures: int) -> float:
    """How long no password is checked after ``failures`` failures in a row (0: none)."""
    if failures < OFFLINE_LOGIN_ATTEMPTS:
        return 0.0
    doublings = min(failures - OFFLINE_LOGIN_ATTEMPTS, 32)
    return min(OFFLINE_LOCK_FIRST_S * float(2**doublings), OFFLINE_LOCK_MAX_S)


def locked_error(locked_until_ms: int, now_ms: int) -> LoginLockedError | None:
    """The error to raise, without checking a password, while a lock lasts; None after it."""
    if locked_until_ms <= now_ms:
        return None
    wait_s = (locked_until_ms - now_ms) / 1000
    return LoginLockedError(
        f"too many failed logins on this laptop: try again in {wait_s:.0f} s",
        retry_after_s=wait_s,
    )


NAME_WITHOUT_KEY = "(a name with no key on this laptop)"
"""What a key file keeps of a failed unlock at a name that holds no copy of the key:
not the name typed, which may be a password typed in the wrong field, kept in plain
text beside the database (a name that holds a copy is an account, and kept)."""


def shown_name(username: object) -> str:
    """A username as typed, made safe to keep and show: printable, at most
    :data:`MAX_NAME_CHARS` characters (a control character becomes its escape).
    ``""`` when no name was typed."""
    if not isinstance(username, str):
        return ""
    text = "".join(
        c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
        for c in username[: MAX_NAME_CHARS * 2]
    )
    return text[:MAX_NAME_CHARS]


class FailedLogin(NamedTuple):
    """A failed attempt to unlock an encrypted laptop (a wrong password, or a user with
    no copy of its key)."""

    username: str
    """The name as typed (see :func:`shown_name`) when it holds a copy of the key, else
    :data:`NAME_WITHOUT_KEY`; ``""`` when none was given (every user's copy was tried)."""
    at_ms: int
    """When, on the laptop's wall clock, in milliseconds since 1970."""


@dataclass(frozen=True, slots=True)
class UnlockAttempts:
    """What a key file keeps of failed unlock attempts (see the module docstring)."""

    failures: int = 0
    """Failed attempts in a row (reset by a successful unlock)."""
    locked_until_ms: int = 0
    """No password is tried before this wall time (ms)."""
    failed: tuple[FailedLogin, ...] = ()
    """Failed attempts not yet recorded elsewhere, oldest first: at most
    :data:`MAX_FAILED_KEPT`, and the attempt in progress."""
    dropped: int = 0
    """Failed attempts left out of ``failed`` (more than :data:`MAX_FAILED_KEPT`)."""

    def attempt(self, username: str | None, now_ms: int) -> tuple[UnlockAttempts, FailedLogin]:
        """This state with one more attempt counted as failed *in advance*, and the
        attempt: kept before any password is tried, so that an attempt whose outcome
        could not be written (a crash, a full disk) still counts."""
        failures = min(self.failures + 1, _MAX_COUNT)
        lock_ms = int(lock_seconds(failures) * 1000)
        one = FailedLogin(shown_name(username), now_ms)
        # The most recent MAX_FAILED_KEPT failures, and this attempt: taken back if it
        # succeeds, so a successful unlock still sees MAX_FAILED_KEPT of them.
        kept = self.failed[-MAX_FAILED_KEPT:]
        dropped = min(self.dropped + len(self.failed) - len(kept), _MAX_COUNT)
        failed = (*kept, one)
        return UnlockAttempts(failures, now_ms + lock_ms if lock_ms else 0, failed, dropped), one

    def succeeded(self, attempt: FailedLogin) -> UnlockAttempts:
        """After a right password: the count and the lock reset, and ``attempt`` (counted
        in advance) taken back; earlier failures stay until they are recorded."""
        failed = list(self.failed)
        for i in range(len(failed) - 1, -1, -1):
            if failed[i] == attempt:
                del failed[i]
                break
        return UnlockAttempts(0, 0, tuple(failed), self.dropped)

    def recorded(self, failed: tuple[FailedLogin, ...], dropped: int) -> UnlockAttempts:
        """Without the given failures (and ``dropped`` of the dropped count): a caller
        recorded them. Failures that came since are kept."""
        left = list(self.failed)
        for one in failed:
            if one in left:
                left.remove(one)
        return UnlockAttempts(
            self.failures, self.locked_until_ms, tuple(left), max(0, self.dropped - dropped)
        )

    # ------------------------------------------------------------ the file

    def to_json(self) -> dict[str, Any]:
        """The object a key file keeps under ``"attempts"``."""
        return {
            "failures": self.failures,
            "locked_until_ms": self.locked_until_ms,
            "failed": [{"username": f.username, "at_ms": f.at_ms} for f in self.failed],
            "dropped": self.dropped,
        }

    @classmethod
    def from_json(cls, obj: object) -> UnlockAttempts:
        """Read back :meth:`to_json`'s object; ValueError saying what is wrong."""
        if not isinstance(obj, dict):
            raise ValueError("attempts: not an object")
        failures, until, dropped = (
            _count(obj.get(k), k) for k in ("failures", "locked_until_ms", "dropped")
        )
        entries = obj.get("failed")
        if not isinstance(entries, list) or len(entries) > MAX_FAILED_KEPT + 1:
            raise ValueError(f"attempts: not a list of at most {MAX_FAILED_KEPT + 1} failures")
        failed = []
        for entry in entries:
            name = entry.get("username") if isinstance(entry, dict) else None
            if not isinstance(name, str) or shown_name(name) != name:
                raise ValueError("attempts: a failure's username is not printable text")
            failed.append(FailedLogin(name, _count(entry.get("at_ms"), "a failure's at_ms")))
        return cls(failures, until, tuple(failed), dropped)


def _count(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_COUNT:
        raise ValueError(f"attempts: {what} is not an integer in range")
    return value
