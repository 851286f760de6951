"""caresync.protocol's public API: every module declares __all__; the package re-exports all."""

from __future__ import annotations

import importlib

import pytest

import caresync.protocol as protocol

MODULES = ["base", "client", "codec", "errors", "identity", "messages", "server", "states"]


@pytest.mark.parametrize("name", MODULES)
def test_module_all_is_unique_and_defined(name: str) -> None:
    module = importlib.import_module(f"caresync.protocol.{name}")
    names = module.__all__
    assert len(names) == len(set(names))
    for exported in names:
        assert hasattr(module, exported), exported


def test_package_reexports_every_public_name_once() -> None:
    expected = set()
    for name in MODULES:
        expected |= set(importlib.import_module(f"caresync.protocol.{name}").__all__)
    assert len(protocol.__all__) == len(set(protocol.__all__))
    assert set(protocol.__all__) == expected
    for exported in protocol.__all__:
        assert getattr(protocol, exported) is not None
