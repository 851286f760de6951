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

    A plain slotted class: a loaded record makes one per path, so it keeps no
    more than it needs. Most paths were written once, so a path holding one
    revision keeps that revision itself, and a dict by id only from its second
    (an empty or one-entry dict costs 64 or 224 bytes). ``heads`` is a tuple (a
    path has one head, or a few while in conflict: a one-element set costs four
    times a one-element tuple), and ``pending`` is None unless a revision of the
    path names a parent the path does not hold, which only a child arriving
    before its parent (or a peer naming a stranger) does.
    """

    __slots__ = ("_held", "heads", "pending", "value_keys")

    def __init__(
        self,
        first: Revision | None = None,
        heads: tuple[str, ...] = (),
        pending: set[str] | None = None,
    ) -> None:
        # None, the path's one revision, or (from the second) a dict of them by id,
        # in arrival order.
        self._held: Revision | dict[str, Revision] | None = first
        # Ids of held revisions no held revision of this path names as a parent.
        self.heads: tuple[str, ...] = heads
        # Ids named as a parent by some revision of this path that the path does
        # not hold (yet): a child can arrive before its parent.
        self.pending: set[str] | None = pending
        # Canonical JSON of head values, made when heads are first compared.
        self.value_keys: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"PathState(heads={sorted(self.heads)}, revisions={self.count()})"

    @property
    def revisions(self) -> dict[str, Revision]:
        """Every revision of the path by id, in arrival order (a new dict for a lone one:
        read it, never change it)."""
        held = self._held
        if isinstance(held, dict):
            return held
        return {} if held is None else {held.id: held}

    def count(self) -> int:
        """How many revisions the path holds."""
        held = self._held
        if isinstance(held, dict):
            return len(held)
        return 0 if held is None else 1

    def get(self, rev_id: str) -> Revision | None:
        """The path's revision with this id, or None."""
        held = self._held
        if isinstance(held, dict):
            return held.get(rev_id)
        if held is not None and held.id == rev_id:
            return held
        return None

    def hold(self, rev: Revision) -> None:
        """Keep ``rev`` among the path's revisions (heads are the caller's business)."""
        held = self._held
        if held is None:
            self._held = rev
        elif isinstance(held, dict):
            held[rev.id] = rev
        else:
            self._held = {held.id: held, rev.id: rev}

    def take(self, rev: Revision) -> None:
        """Take in a revision of this path that it does not hold yet.

        Inlined (no helper calls): a local write runs this once.
        """
        heads, held = self.heads, self._held
        for parent in rev.parents:
            if isinstance(held, dict):
                known = parent in held
            else:
                known = held is not None and held.id == parent
            if known:
                if parent in heads:
                    # The usual write supersedes the one head it saw.
                    heads = () if heads == (parent,) else tuple([h for h in heads if h != parent])
            else:
                pending = self.pending
                if pending is None:
                    pending = self.pending = set()
                pending.add(parent)
        rev_id = rev.id
        if held is None:
            self._held = rev
        elif isinstance(held, dict):
            held[rev_id] = rev
        else:
            self._held = {held.id: held, rev_id: rev}
        pending = self.pending
        if pending is not None and rev_id in pending:
            # Named as a parent already (before it arrived, or by itself): no head.
            pending.discard(rev_id)
            if not pending:
                self.pending = None
            self.heads = heads
        else:
            self.heads = (*heads, rev_id) if heads else (rev_id,)

    def head_revisions(self) -> tuple[Revision, ...]:
        """Heads in a stable order: by time, then replica, then id."""
        heads, held = self.heads, self._held
        if not isinstance(held, dict):  # the usual case: one revision, nothing to sort
            return (held,) if heads and held is not None else ()
        if len(heads) == 1:
            return (held[heads[0]],)
        return tuple(sorted([held[h] for h in heads], key=_display_order))

    def is_conflicted(self) -> bool:
        """Several heads whose values differ."""
        if len(self.heads) < 2:
            return False
        keys = self.value_keys
        if keys is None:
            keys = self.value_keys = {}
        held = self.revisions  # a dict: several heads are several revisions
        first: str | None = None
        for head in self.heads:
            key = keys.get(head)
            if key is None:
                key = keys[head] = held[head].value_key
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
            rev = self.get(current)
            if rev is not None:
                stack.extend(rev.parents)
        return False


@dataclass(slots=True)
class RevisionIndex:
    """Every valid revision of a record, by id, by path and by collection entry."""

    by_id: dict[str, Revision] = field(default_factory=dict)
    paths: dict[str, PathState] = field(default_factory=dict)
    # (collection, entry id) -> paths of that entry's fields, each once. Lists,
    # not sets: an entry has a handful of fields, and an entry's set cost 216
    # bytes however few it held.
    entries: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    # Sets of paths or ids kept as dicts (values None): usually empty, and an
    # empty dict costs 64 bytes where an empty set costs 216.
    conflicted: dict[str, None] = field(default_factory=dict)
    invalid: dict[str, None] = field(default_factory=dict)
    # Paths whose heads changed since conflicts were last settled.
    dirty: dict[str, None] = field(default_factory=dict)
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
        path = rev.path
        state = self.paths.get(path)
        new_path = state is None
        if state is None:
            state = self.paths[path] = PathState()
        state.take(rev)
        self.dirty[path] = None
        if entry_key is not None:
            entry_paths = self.entries.get(entry_key)
            if entry_paths is None:
                self.entries[entry_key] = [path]
                self._entry_ids = None
            elif new_path or path not in entry_paths:
                entry_paths.append(path)
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
                if parents:  # a path's first revision names none, unless it came first
                    pending = {p for p in parents if p != rev_id}
                    paths[path] = PathState(
                        rev, () if rev_id in parents else (rev_id,), pending or None
                    )
                else:
                    paths[path] = PathState(rev, (rev_id,))
                # Only a path with a "/" can be an entry's field.
                key = entry_key(path) if "/" in path else None
                if key is not None:
                    entry_paths = entries.get(key)
                    if entry_paths is None:
                        entries[key] = [path]
                        self._entry_ids = None
                    else:
                        entry_paths.append(path)  # a new path: not there yet
                continue
            if state.count() == 1:
                several.append((path, state))
            state.hold(rev)
        conflicted = self.conflicted
        for path, state in several:
            held = state.revisions
            named: set[str] = set()
            for rev in held.values():
                named.update(rev.parents)
            heads = state.heads = tuple([h for h in held if h not in named])
            state.pending = {p for p in named if p not in held} or None
            # What settle() would find, without marking every path dirty first.
            if len(heads) > 1 and state.is_conflicted():
                conflicted[path] = None
        self.version += len(by_id)

    def settle(self) -> None:
        """Recompute which of the changed paths are in conflict.

        Deferred to the end of a batch: revisions of an update arrive in map
        order, not causal order, so a chain briefly has many heads mid-batch.
        """
        dirty = self.dirty
        if not dirty:
            return
        conflicted, paths = self.conflicted, self.paths
        for path in dirty:
            if paths[path].is_conflicted():
                conflicted[path] = None
            else:
                conflicted.pop(path, None)
        dirty.clear()
