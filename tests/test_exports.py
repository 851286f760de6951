"""The public API: every module declares __all__, and the package re-exports it all, once."""

from __future__ import annotations

import importlib
import pkgutil

import caresync


def public_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(caresync.__path__, "caresync."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def test_every_public_module_declares_all() -> None:
    missing = [n for n in public_modules() if not hasattr(importlib.import_module(n), "__all__")]
    assert missing == []


def test_package_exports_are_unique_and_resolve() -> None:
    assert len(caresync.__all__) == len(set(caresync.__all__))
    for name in caresync.__all__:
        assert hasattr(caresync, name), name


def test_core_packages_are_reexported() -> None:
    for package in ("caresync.records", "caresync.conflicts", "caresync.exceptions"):
        module = importlib.import_module(package)
        assert set(module.__all__) <= set(caresync.__all__), package


def test_demo_runs_and_converges() -> None:
    from caresync import demo

    assert demo.main([]) == 0


def test_io_shells_are_exported_lazily() -> None:
    import subprocess
    import sys

    assert set(caresync._LAZY) <= set(caresync.__all__)
    probe = "import caresync, sys; print('caresync.replica' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"  # `import caresync` does not load the shells
    assert caresync.Replica.__module__ == "caresync.replica"
    assert caresync.SyncServer.__module__ == "caresync.server"
