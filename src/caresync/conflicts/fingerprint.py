"""A rulebook's fingerprint: one string naming its rules and their versions.

Two replicas whose rulebooks have the same fingerprint compute the same
conflicts from the same record, so one may store the other's conflict rows
as they are (a first copy does, instead of loading every record and running
every rule). A false "equal" would store wrong conflicts; a false "different"
only costs time. So everything here errs towards "different":

* a rule is named by ``module:qualname`` plus its ``rule_version`` attribute,
  or by an explicit ``rule_identity`` attribute (a rule made by a factory names
  what it was made from, e.g. its substance table);
* a rule with no stable name (a lambda, a closure, a ``functools.partial``, a
  callable object, a bound method, a function of ``__main__``) makes the
  fingerprint unique to the rulebook that holds it, so nobody else trusts it;
* rules count in order and duplicates count, and :data:`DERIVATION_VERSION`
  covers how conflicts are derived from findings and fields.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import secrets
from collections.abc import Callable, Iterable
from typing import TypeVar

from caresync.exceptions import RuleError
from caresync.records.persons import PERSON_MATCH_VERSION

__all__ = [
    "DERIVATION_VERSION",
    "FINGERPRINT_FORMAT",
    "check_rule_versions",
    "rule_fingerprint",
    "rulebook_fingerprint",
    "versioned",
]

FINGERPRINT_FORMAT = "caresync-rules/1"
"""Prefix of every fingerprint; a new format of the digest gets a new prefix."""

DERIVATION_VERSION = 3
"""Bump whenever conflicts are derived differently from the same rules' findings.

That is: how the record model reads revisions (heads, signed notes, malformed
revisions skipped), how field conflicts and their ids, severities and messages
are made, how escalation and acknowledgements apply, or the fields of
``Conflict.as_dict``. The digest also holds
:data:`caresync.records.persons.PERSON_MATCH_VERSION` (how the person index
reads and pairs records). Replicas with equal fingerprints trust each other's
rows and person cards.

2: decisions with outcomes, contested fields, the person index. 3: a decision that
wrote an outcome covers its finding only while the record still holds what it wrote.
"""

_F = TypeVar("_F", bound=Callable[..., object])


def versioned(version: int | str, *, identity: str | None = None) -> Callable[[_F], _F]:
    """Decorate a rule with its ``rule_version`` (and optionally ``rule_identity``).

    Change the version whenever the rule's behaviour changes: replicas whose
    rulebooks have equal fingerprints trust each other's conflict index.
    """
    _check_version(version, "versioned()")

    def mark(rule: _F) -> _F:
        # setattr: the attributes are a convention, not part of the function's type.
        setattr(rule, "rule_version", version)  # noqa: B010
        if identity is not None:
            setattr(rule, "rule_identity", identity)  # noqa: B010
        return rule

    return mark


def rule_fingerprint(rule: object) -> tuple[str, str] | None:
    """``(identity, version)`` of a rule, or None when it has no stable name."""
    version = getattr(rule, "rule_version", None)
    name = _describe(rule)
    if version is None:
        version_text = ""
    else:
        _check_version(version, f"safety rule {name}")
        version_text = f"{type(version).__name__}:{version}"
    identity = getattr(rule, "rule_identity", None)
    if identity is not None:
        return _check_identity(identity, rule), version_text
    module = getattr(rule, "__module__", None)
    qualname = getattr(rule, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None  # a partial, or a callable object: its state is not in its name
    if module == "__main__" or "<" in qualname:
        return None  # a script's function, a lambda or a closure: not the same elsewhere
    if inspect.ismethod(rule) and not isinstance(rule.__self__, type):
        return None  # bound to an instance whose state may differ
    return f"{module}:{qualname}", version_text


def check_rule_versions(rules: Iterable[object]) -> None:
    """Raise RuleError for a bad ``rule_version`` or ``rule_identity`` (cheaper than hashing)."""
    for rule in rules:
        version = getattr(rule, "rule_version", None)
        if version is not None:
            _check_version(version, f"safety rule {_describe(rule)}")
        identity = getattr(rule, "rule_identity", None)
        if identity is not None:
            _check_identity(identity, rule)


def rulebook_fingerprint(rules: Iterable[object]) -> str:
    """The fingerprint of these rules, in this order (see the module docstring)."""
    described = [rule_fingerprint(rule) for rule in rules]  # checks every rule's version
    named = [d for d in described if d is not None]
    if len(named) != len(described):
        # Unique to this rulebook: two rulebooks with such a rule never match.
        return f"{FINGERPRINT_FORMAT}:unstable-{secrets.token_hex(16)}"
    canonical = json.dumps([DERIVATION_VERSION, named, PERSON_MATCH_VERSION], separators=(",", ":"))
    return f"{FINGERPRINT_FORMAT}:{hashlib.sha256(canonical.encode()).hexdigest()[:40]}"


def _check_version(version: object, what: str) -> None:
    if isinstance(version, bool) or not isinstance(version, (int, str)):
        raise RuleError(f"{what} has rule_version {version!r}: use an int or a string")


def _check_identity(identity: object, rule: object) -> str:
    if not isinstance(identity, str) or not identity:
        raise RuleError(
            f"safety rule {_describe(rule)} has rule_identity {identity!r}: use a non-empty string"
        )
    return identity


def _describe(rule: object) -> str:
    return str(getattr(rule, "__name__", None) or repr(rule))
