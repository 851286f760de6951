"""Reading a whole pycrdt map at once, in one transaction.

``Map.items()`` (and ``to_py()``, built on it) costs five Python calls and a
key check per key; a record loaded from bytes reads every revision, so that
overhead was a fifth of loading one. Here the keys and values are read from
the underlying Yrs map directly, inside one transaction. The values are the
same objects ``Map.__getitem__`` would start from: strings as they are; any
other stored type comes back unwrapped, which callers treat as malformed
anyway (a revision is always a string).
"""

from __future__ import annotations

from typing import Any

from caresync.records.crdt import Doc, Map

__all__ = ["read_items", "read_root_items", "read_root_value", "read_value"]


def read_items(doc: Doc[Any], map_: Map[Any]) -> list[tuple[str, object]]:
    """Every (key, value) of ``map_``, in the map's own key order."""
    with doc.transaction() as txn:
        raw_txn = getattr(txn, "_txn", None)
        if raw_txn is None:  # pycrdt internals changed: take the public road
            return list(map_.items())
        integrated = map_.integrated
        get = integrated.get
        return [(key, get(raw_txn, key)) for key in integrated.keys(raw_txn)]


def read_value(doc: Doc[Any], map_: Map[Any], key: str) -> object:
    """The value at ``key``, or None (unwrapped as in :func:`read_items`)."""
    with doc.transaction() as txn:
        raw_txn = getattr(txn, "_txn", None)
        if raw_txn is None:
            return map_.get(key)
        integrated = map_.integrated
        return integrated.get(raw_txn, key) if integrated.has(raw_txn, key) else None


def read_root_items(doc: Doc[Any], name: str) -> list[tuple[str, object]]:
    """Every (key, value) of the root map ``name``, as :func:`read_items` reads a map.

    With no ``Map`` wrapper made: a wrapper costs about 2 us and 1 KB of Python
    objects, and a record being loaded needs none to read its revisions.
    """
    with doc.transaction() as txn:
        raw_txn, raw_doc = getattr(txn, "_txn", None), getattr(doc, "_doc", None)
        if raw_txn is None or raw_doc is None:  # pycrdt internals changed: the public road
            return list(doc.get(name, type=Map).items())
        integrated = raw_doc.get_or_insert_map(raw_txn, name)
        get = integrated.get
        return [(key, get(raw_txn, key)) for key in integrated.keys(raw_txn)]


def read_root_value(doc: Doc[Any], name: str, key: str) -> object:
    """The value at ``key`` of the root map ``name``, or None; no wrapper made."""
    with doc.transaction() as txn:
        raw_txn, raw_doc = getattr(txn, "_txn", None), getattr(doc, "_doc", None)
        if raw_txn is None or raw_doc is None:
            return doc.get(name, type=Map).get(key)
        integrated = raw_doc.get_or_insert_map(raw_txn, name)
        return integrated.get(raw_txn, key) if integrated.has(raw_txn, key) else None
