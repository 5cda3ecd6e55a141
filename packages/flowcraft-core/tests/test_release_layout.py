"""Every distribution is independently releasable: one version source (``__version__``, read
by hatch), a bounded flowcraft-core range for adapters, its own README, LICENSE and
CHANGELOG; a release workflow builds one package per tag."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PACKAGES = sorted(p.parent for p in (REPO / "packages").glob("flowcraft-*/pyproject.toml"))


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: p.name)
def test_package_is_releasable_on_its_own(pkg: Path) -> None:
    meta = tomllib.loads((pkg / "pyproject.toml").read_text(encoding="utf-8"))
    project = meta["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    path = pkg / meta["tool"]["hatch"]["version"]["path"]
    assert re.search(r'^__version__ = "\d+\.\d+\.\d+"$', path.read_text(), re.M), path
    if pkg.name != "flowcraft-core":
        core = [d for d in project["dependencies"] if d.startswith("flowcraft-core")]
        assert len(core) == 1 and re.fullmatch(
            r"flowcraft-core(\[[a-z,]+\])?>=0\.\d+,<0\.\d+", core[0]
        ), core
        assert not any(
            d.startswith("flowcraft-") and not d.startswith("flowcraft-core")
            for d in project["dependencies"]
        )
    assert project["license"] == "MIT"
    assert (pkg / "LICENSE").read_text() == (REPO / "LICENSE").read_text()
    assert (pkg / "CHANGELOG.md").read_text().startswith(f"# Changelog of {pkg.name}")
    assert len((pkg / project["readme"]).read_text().split()) > 100  # a real PyPI page


def test_release_workflow_builds_one_package_per_tag() -> None:
    wf = (REPO / ".github" / "workflows" / "release.yml").read_text(encoding="utf-8")
    assert 'tags: ["flowcraft-*-v*"]' in wf
    assert 'uv build --package "${{ steps.tag.outputs.pkg }}"' in wf
    assert "pypa/gh-action-pypi-publish" in wf and "id-token: write" in wf
