"""The heads of every path, kept up to date one revision at a time.

Reading a field or listing conflicts must cost in proportion to the field's
heads, not to the record's whole history, so the index is maintained as
revisions arrive (local writes and applied updates alike) and never rebuilt
by a scan except when a record is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from caresync.records.revision import Revision

__all__ = ["PathState", "RevisionIndex"]

_NO_IDS: list[str] = []  # shared and never changed: callers copy what they return


def _display_order(rev: Revision) -> tuple[object, ...]:
    return (rev.at, rev.replica, rev.id)


class PathState:
    """All revisions of one path, and which of them are heads.

    A plain class rather than a dataclass: a loaded record makes one per path,
    and a dataclass's default factories cost more than the state they build.
    """

    __slots__ = ("heads", "revisions", "superseded", "value_keys")

    def __init__(
        self,
        revisions: dict[str, Revision] | None = None,
        heads: set[str] | None = None,
        superseded: set[str] | None = None,
    ) -> None:
        self.revisions: dict[str, Revision] = {} if revisions is None else revisions
        self.heads: set[str] = set() if heads is None else heads
        # Ids named as a parent by some revision of this path. May name revisions
        # not received yet: a child can arrive before its parent.
        self.superseded: set[str] = set() if superseded is None else superseded
        # Canonical JSON of head values, made when heads are first compared.
        self.value_keys: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"PathState(heads={sorted(self.heads)}, revisions={len(self.revisions)})"

    def head_revisions(self) -> tuple[Revision, ...]:
        """Heads in a stable order: by time, then replica, then id."""
        heads = self.heads
        if len(heads) == 1:  # the usual case: nothing to sort
            for head in heads:
                return (self.revisions[head],)
        revisions = self.revisions
        return tuple(sorted([revisions[h] for h in heads], key=_display_order))

    def is_conflicted(self) -> bool:
        """Several heads whose values differ."""
        if len(self.heads) < 2:
            return False
        keys = self.value_keys
        if keys is None:
            keys = self.value_keys = {}
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
    # collection -> its entry ids, sorted; None until asked for, and after a new entry.
    _entry_ids: dict[str, list[str]] | None = None

    def entry_ids(self, collection: str) -> list[str]:
        """The ids of a collection's entries, sorted (the index's own list: do not change it)."""
        grouped = self._entry_ids
        if grouped is None:
            grouped = {}
            for coll, entry_id in self.entries:
                grouped.setdefault(coll, []).append(entry_id)
            for ids in grouped.values():
                ids.sort()
            self._entry_ids = grouped
        return grouped.get(collection, _NO_IDS)

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
            paths = self.entries.get(entry_key)
            if paths is None:
                paths = self.entries[entry_key] = set()
                self._entry_ids = None
            paths.add(rev.path)
        self.version += 1

    def add_all(
        self,
        revisions: Iterable[Revision],
        entry_key: Callable[[str], tuple[str, str] | None],
    ) -> None:
        """Take in many revisions, as :meth:`add` one by one would, with less work.

        The heads of a path do not depend on the order its revisions arrive in:
        they are the revisions no revision of the path names as a parent. So
        they are computed once per path at the end, and each path's entry once.
        ``entry_key`` gives a path's entry; a path without a "/" has none.
        """
        if self.by_id:  # heads already kept: take the incremental road
            for rev in revisions:
                self.add(rev, entry_key(rev.path))
            return
        by_id, paths, entries = self.by_id, self.paths, self.entries
        # Paths with more than one revision: only their heads need working out.
        several: list[tuple[str, PathState]] = []
        for rev in revisions:
            rev_id = rev.id
            if rev_id in by_id:
                continue
            by_id[rev_id] = rev
            path = rev.path
            state = paths.get(path)
            if state is None:
                parents = rev.parents
                heads = set() if rev_id in parents else {rev_id}
                paths[path] = PathState({rev_id: rev}, heads, set(parents))
                # Only a path with a "/" can be an entry's field.
                key = entry_key(path) if "/" in path else None
                if key is not None:
                    entry_paths = entries.get(key)
                    if entry_paths is None:
                        entries[key] = {path}
                        self._entry_ids = None
                    else:
                        entry_paths.add(path)
                continue
            if len(state.revisions) == 1:
                several.append((path, state))
            state.revisions[rev_id] = rev
            if rev.parents:
                state.superseded.update(rev.parents)
        conflicted = self.conflicted
        for path, state in several:
            superseded = state.superseded
            heads = state.heads = {h for h in state.revisions if h not in superseded}
            # What settle() would find, without marking every path dirty first.
            if len(heads) > 1 and state.is_conflicted():
                conflicted.add(path)
        self.version += len(by_id)

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
