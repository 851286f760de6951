"""What a package index shows of caresync: a licence file, project URLs, README links that
work away from the repository, and classifiers for the Pythons the suite passes on."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")


def project() -> dict[str, Any]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return dict(data["project"])


def test_the_licence_declared_is_the_licence_shipped() -> None:
    meta = project()
    assert meta["license"] == "Apache-2.0"
    assert meta["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text


def test_project_urls_name_the_source_docs_and_issues() -> None:
    urls = project()["urls"]
    assert {"Homepage", "Source", "Documentation", "Issues"} <= set(urls)
    for url in urls.values():
        assert url.startswith("https://"), url
    assert urls["Documentation"].startswith(urls["Source"])
    assert urls["Issues"].startswith(urls["Source"])


def test_readme_links_work_on_a_package_index() -> None:
    """A relative link breaks on an index page: each is absolute, to a file that exists."""
    source = project()["urls"]["Source"]
    links = LINK.findall((ROOT / "README.md").read_text())
    assert links, "the README links to the docs"
    for link in links:
        assert link.startswith(f"{source}/blob/main/"), link
        path = link.removeprefix(f"{source}/blob/main/").split("#", 1)[0]
        assert (ROOT / path).is_file(), link


def test_this_python_is_one_the_classifiers_name() -> None:
    """scripts/pythons runs this on every Python 3.11+ here: each must be classified."""
    classifiers = project()["classifiers"]
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert f"Programming Language :: Python :: {version}" in classifiers
    named = [
        c.rsplit(" :: ", 1)[1]
        for c in classifiers
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    assert all(tuple(map(int, v.split("."))) >= (3, 11) for v in named), named
    assert project()["requires-python"] == ">=3.11"
