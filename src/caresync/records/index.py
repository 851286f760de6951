"""The heads of every path, kept up to date one revision at a time.

Reading a field or listing conflicts must cost in proportion to the field's
heads, not to the record's whole history, so the index is maintained as
revisions arrive (local writes and applied updates alike) and never rebuilt
by a scan except when a record is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from caresync.records.revision import Revision

__all__ = ["PathState", "RevisionIndex"]


@dataclass(slots=True)
class PathState:
    """All revisions of one path, and which of them are heads."""

    revisions: dict[str, Revision] = field(default_factory=dict)
    heads: set[str] = field(default_factory=set)
    # Ids named as a parent by some revision of this path. May name revisions not
    # received yet: a child can arrive before its parent.
    superseded: set[str] = field(default_factory=set)
    # Canonical JSON of head values, computed once per revision when needed.
    value_keys: dict[str, str] = field(default_factory=dict)

    def head_revisions(self) -> list[Revision]:
        """Heads in a stable order: by time, then replica, then id."""
        revs = [self.revisions[h] for h in self.heads]
        revs.sort(key=lambda r: (r.at, r.replica, r.id))
        return revs

    def is_conflicted(self) -> bool:
        """Several heads whose values differ."""
        if len(self.heads) < 2:
            return False
        keys = self.value_keys
        first: str | None = None
        for head in self.heads:
            key = keys.get(head)
            if key is None:
                key = keys[head] = self.revisions[head].value_key
            if first is None:
                first = key
            elif key != first:
                return True
        return False

    def is_ancestor(self, ancestor: str, of: str) -> bool:
        """True if ``ancestor`` equals ``of`` or is reachable from it through parents."""
        stack, visited = [of], set()
        while stack:
            current = stack.pop()
            if current == ancestor:
                return True
            if current in visited:
                continue
            visited.add(current)
            rev = self.revisions.get(current)
            if rev is not None:
                stack.extend(rev.parents)
        return False


@dataclass(slots=True)
class RevisionIndex:
    """Every valid revision of a record, by id, by path and by collection entry."""

    by_id: dict[str, Revision] = field(default_factory=dict)
    paths: dict[str, PathState] = field(default_factory=dict)
    # (collection, entry id) -> paths of that entry's fields
    entries: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    conflicted: set[str] = field(default_factory=set)
    invalid: set[str] = field(default_factory=set)
    # Paths whose heads changed since conflicts were last settled.
    dirty: set[str] = field(default_factory=set)
    version: int = 0

    def add(self, rev: Revision, entry_key: tuple[str, str] | None) -> None:
        """Take in one revision (idempotent); call :meth:`settle` after a batch."""
        if rev.id in self.by_id:
            return
        self.by_id[rev.id] = rev
        state = self.paths.get(rev.path)
        if state is None:
            state = self.paths[rev.path] = PathState()
        state.revisions[rev.id] = rev
        for parent in rev.parents:
            state.superseded.add(parent)
            state.heads.discard(parent)
        if rev.id not in state.superseded:
            state.heads.add(rev.id)
        self.dirty.add(rev.path)
        if entry_key is not None:
            self.entries.setdefault(entry_key, set()).add(rev.path)
        self.version += 1

    def settle(self) -> None:
        """Recompute which of the changed paths are in conflict.

        Deferred to the end of a batch: revisions of an update arrive in map
        order, not causal order, so a chain briefly has many heads mid-batch.
        """
        for path in self.dirty:
            if self.paths[path].is_conflicted():
                self.conflicted.add(path)
            else:
                self.conflicted.discard(path)
        self.dirty.clear()
