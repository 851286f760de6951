"""The public API a developer sees: exports that agree, dir() and help(), types they can
reach, the pytest plugin's needs, and an API reference built from the docstrings.

The public modules are ``caresync`` and its documented subpackages
(``PUBLIC_MODULES`` of scripts/apidoc.py, which the reference documents). The package
re-exports its submodules' exports exactly (the shape of websockets' test_exports.py),
and every caresync type that a public signature names can be imported from one of them.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
import subprocess
import sys
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import caresync
import caresync.conflicts
import caresync.exceptions
import caresync.records
import caresync.replica
import caresync.server

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120


def _apidoc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("caresync_apidoc", ROOT / "scripts" / "apidoc.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


APIDOC = _apidoc()
PUBLIC_MODULES: tuple[str, ...] = APIDOC.PUBLIC_MODULES

combined_exports = (
    caresync.exceptions.__all__
    + caresync.records.__all__
    + caresync.conflicts.__all__
    + caresync.replica.__all__
    + caresync.server.__all__
    + ["__version__"]
)


def test_top_level_module_reexports_all_submodule_exports() -> None:
    assert set(caresync.__all__) == set(combined_exports)


def test_submodule_exports_are_globally_unique() -> None:
    assert len(set(combined_exports)) == len(combined_exports)
    assert len(set(caresync.__all__)) == len(caresync.__all__)


def test_lazy_names_are_the_replica_and_server_exports() -> None:
    lazy = caresync._LAZY
    assert {n for n, m in lazy.items() if m == "caresync.replica"} == set(caresync.replica.__all__)
    assert {n for n, m in lazy.items() if m == "caresync.server"} == set(caresync.server.__all__)
    for name, module in lazy.items():
        assert getattr(caresync, name) is getattr(importlib.import_module(module), name)


def test_names_the_first_hour_needs_are_reachable_from_the_package() -> None:
    from caresync import CopyProgress, SyncLimits, backoff_delays

    assert SyncLimits is caresync.replica.SyncLimits
    assert CopyProgress is caresync.replica.CopyProgress
    assert next(iter(backoff_delays(0.5))) > 0


def _fresh(code: str) -> str:
    """Run ``code`` in a new interpreter (nothing loaded yet); its standard output."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_dir_lists_the_lazy_names_without_loading_them() -> None:
    out = _fresh(
        "import caresync, sys\n"
        "names = dir(caresync)\n"
        "print(sorted(set(caresync.__all__) - set(names)))\n"
        "print('caresync.replica' in sys.modules, 'caresync.server' in sys.modules)\n"
    )
    assert out.splitlines() == ["[]", "False False"]


def test_help_shows_the_replica_and_the_server() -> None:
    text = _fresh(
        "import caresync, pydoc; print(pydoc.render_doc(caresync, renderer=pydoc.plaintext))"
    )
    names = ("Replica", "SyncServer", "ReplicaStatus", "SyncReport", "SyncLimits", "CopyProgress")
    for name in names:
        assert f"class {name}" in text, name
    assert "backoff_delays(" in text


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_module_exports_resolve_and_show_in_dir(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(exported) == len(set(exported)), name
    assert set(exported) <= set(dir(module))
    for export in exported:
        assert hasattr(module, export), f"{name}.{export}"


def _reachable() -> set[int]:
    found = set()
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        found.update(id(getattr(module, export)) for export in module.__all__)
    return found


def _types_in(hint: object, out: set[type]) -> None:
    if isinstance(hint, type):
        out.add(hint)
    origin = typing.get_origin(hint)
    if isinstance(origin, type):
        out.add(origin)
    for arg in typing.get_args(hint):
        _types_in(arg, out)


def _signatures(obj: object) -> list[tuple[str, Any]]:
    """The functions whose annotations make up ``obj``'s public signature."""
    if inspect.isfunction(obj):
        return [("", obj)]
    if not inspect.isclass(obj) or not obj.__module__.startswith("caresync"):
        return []
    found: list[tuple[str, Any]] = []
    if dataclasses.is_dataclass(obj):
        found.append(("<fields>", obj))
    for attr, raw in vars(obj).items():
        if attr.startswith("_") and attr != "__init__":
            continue
        if isinstance(raw, (classmethod, staticmethod)):
            raw = raw.__func__
        elif isinstance(raw, property):
            raw = raw.fget
        if inspect.isfunction(raw):
            found.append((f".{attr}", raw))
    return found


def _unreachable_types(package: str) -> dict[str, list[str]]:
    reachable = _reachable()
    module = importlib.import_module(package)
    missing: dict[str, list[str]] = {}
    for export in module.__all__:
        for where, function in _signatures(getattr(module, export)):
            types: set[type] = set()
            for hint in typing.get_type_hints(function).values():
                _types_in(hint, types)
            for kind in types:
                # Private types (a leading _) are the module's own business, not API.
                ours = kind.__module__.startswith("caresync")
                if ours and not kind.__name__.startswith("_") and id(kind) not in reachable:
                    missing.setdefault(kind.__qualname__, []).append(f"{export}{where}")
    return missing


@pytest.mark.parametrize("package", PUBLIC_MODULES)
def test_public_signatures_name_only_types_you_can_import(package: str) -> None:
    assert _unreachable_types(package) == {}


def test_sync_server_open_has_a_typed_signature() -> None:
    from caresync import SyncServer

    opened = inspect.signature(SyncServer.open)
    assert all(p.kind is not p.VAR_KEYWORD for p in opened.parameters.values())
    made = inspect.signature(SyncServer.__init__)
    wanted = {n: p.default for n, p in made.parameters.items() if p.kind is p.KEYWORD_ONLY}
    given = {n: p.default for n, p in opened.parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert given.pop("key") is None  # the database's own: it opens the store
    assert given == wanted
    hints = typing.get_type_hints(SyncServer.open)
    assert set(wanted) <= set(hints)


# ------------------------------------------------------------- the pytest plugin


PLUGIN_TEST = """
import sys

async def test_uses_the_clinic(clinic):
    assert clinic.url.startswith("ws://127.0.0.1:")

def test_nothing_heavy_was_imported():
    assert "caresync.testing.harness" not in sys.modules
    assert "caresync.server" not in sys.modules
"""


def _pytest(
    directory: Path, *options: str, test: str = PLUGIN_TEST, ini: str = ""
) -> subprocess.CompletedProcess[str]:
    (directory / "test_app.py").write_text(test)
    (directory / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n" + ini)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def test_the_plugin_without_pytest_asyncio_names_it(tmp_path: Path) -> None:
    done = _pytest(tmp_path, "-p", "no:asyncio", "-k", "clinic")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "need the pytest-asyncio plugin" in done.stdout
    assert 'pip install "caresync[testing]"' in done.stdout


def test_the_plugin_runs_with_pytest_asyncio_and_loads_nothing_heavy(tmp_path: Path) -> None:
    done = _pytest(tmp_path, "--deselect", "test_app.py::test_uses_the_clinic")
    assert done.returncode == 0, done.stdout + done.stderr
    done = _pytest(tmp_path, "-k", "clinic")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


SUBSTANCES_TEST = """
async def test_a_local_drug_is_checked(clinic):
    laptop = await clinic.laptop("north")
    record = await laptop.create_record()
    await laptop.add_entry(record, "allergies", {"substance": "zetamab"}, author="dr.test")
    await laptop.add_entry(record, "medications", {"drug": "Zetafix 20 mg"}, author="dr.test")
    assert "allergy-vs-prescription" in {c.rule for c in await laptop.conflicts()}
"""

LOCAL_TABLE = json.dumps(
    {
        "format": "caresync-substances/1",
        "classes": [{"id": "zetamabs", "members": {"zetamab": ["Zetafix"]}}],
    }
)


def test_the_plugin_gives_every_clinic_a_substance_table(tmp_path: Path) -> None:
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "local.json").write_text(LOCAL_TABLE)
    done = _pytest(tmp_path, test=SUBSTANCES_TEST)  # the bundled table: not checked
    assert done.returncode == 1, done.stdout + done.stderr
    ini = "caresync_substances = tables/local.json\n"
    done = _pytest(tmp_path, test=SUBSTANCES_TEST, ini=ini)
    assert done.returncode == 0, done.stdout + done.stderr
    table = tmp_path / "tables" / "local.json"
    done = _pytest(tmp_path, f"--caresync-substances={table}", test=SUBSTANCES_TEST)
    assert done.returncode == 0, done.stdout + done.stderr
    (tmp_path / "bad.json").write_text('{"format": "other/1"}')
    done = _pytest(tmp_path, "--caresync-substances=bad.json", test=SUBSTANCES_TEST)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "bad.json: substance table: 'format' must be" in done.stdout


def test_the_testing_extra_brings_what_the_plugin_needs() -> None:
    from importlib.metadata import entry_points, requires

    needs = [r for r in requires("caresync") or [] if 'extra == "testing"' in r]
    assert any(r.startswith("pytest-asyncio") for r in needs), needs
    assert any(r.startswith("pytest") and not r.startswith("pytest-") for r in needs), needs
    [plugin] = [e for e in entry_points(group="pytest11") if e.name == "caresync"]
    assert plugin.value == "caresync.testing.plugin"


# ------------------------------------------------------------- the API reference


def test_the_api_reference_builds_and_documents_every_export(tmp_path: Path) -> None:
    out = tmp_path / "api"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "apidoc.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "index.html").is_file()
    for name in PUBLIC_MODULES:
        page = out.joinpath(*name.split(".")).with_suffix(".html")
        html = page.read_text()
        module = importlib.import_module(name)
        for export in module.__all__:
            if export != "__version__":
                assert f'id="{export}"' in html, f"{name}.{export} is not in {page}"


def test_a_broken_docstring_or_annotation_fails_the_api_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_api.py").write_text(
        '"""A module whose docstring includes a file that is not there.\n\n'
        '.. include:: no_such_page.md\n"""\n\n'
        "from __future__ import annotations\n\n"
        "__all__ = ['f']\n\n\n"
        "def f(x: NoSuchType) -> None:  # noqa: F821\n"
        '    """A function whose annotation names nothing."""\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(APIDOC, "PUBLIC_MODULES", ("broken_api",))
    problems = APIDOC.build(tmp_path / "out")
    assert any("no_such_page.md" in p for p in problems), problems
    assert any("NoSuchType" in p for p in problems), problems
