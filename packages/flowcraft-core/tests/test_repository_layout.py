"""Repository checks that keep CI honest: every package has its GitHub conformance job, and
``scripts/test`` provisions every service a package's tests ask for."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PACKAGES = sorted(
    p.name.removeprefix("flowcraft-") for p in (REPO / "packages").glob("flowcraft-*")
)


def test_every_package_has_a_job_in_the_github_conformance_matrix() -> None:
    ci = (REPO / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8")
    m = re.search(r"adapter:\s*\[([^\]]*)\]", ci)
    assert m, "no `adapter: [...]` matrix in .github/workflows/ci.yml"
    matrix = sorted(x.strip() for x in m.group(1).split(",") if x.strip())
    assert matrix == PACKAGES


def test_scripts_test_runs_the_readme_command_stages() -> None:
    """The CI entry point runs scripts/test (the README's test command), which lints, type
    checks and runs both pytest phases."""
    assert "exec ./scripts/test" in (REPO / ".ci" / "run").read_text(encoding="utf-8")
    script = (REPO / "scripts" / "test").read_text(encoding="utf-8")
    for stage in (
        "ruff check",
        "ruff format --check",
        "mypy",
        '-m "not needs_services"',
        "-m needs_services",
    ):
        assert stage in script, stage
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "./scripts/test" in readme.split("\n\n", 2)[1]


def test_the_github_workflow_runs_every_scripts_test_stage() -> None:
    """GitHub runs the stages of scripts/test (the README's test command), not copies of its
    steps: every stage is called somewhere in the workflow."""
    ci = (REPO / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8")
    for stage in ("lint", "types", "docs", "unit", "services", "outside"):
        assert f"--stage {stage}" in ci, stage
    assert "uv run pytest" not in ci
    assert "uv run ruff" not in ci


def test_shard_runner_repeats_why_a_shard_failed_at_the_end(tmp_path: Path) -> None:
    """``scripts/pytest-shards`` prints each shard's log when it ends and, after the last
    one, a failed shard's error lines and log tail again: the end of a long CI log says what
    failed, whatever finished after it."""
    import subprocess
    import sys

    (tmp_path / "bad").mkdir()
    (tmp_path / "good").mkdir()
    (tmp_path / "bad" / "test_bad.py").write_text(
        "def test_broken():\n    assert 1 + 1 == 3, 'arithmetic is off'\n", encoding="utf-8"
    )
    (tmp_path / "good" / "test_good.py").write_text(
        "import time\n\ndef test_ok():\n    time.sleep(1.5)\n", encoding="utf-8"
    )
    shards = [str(REPO / "scripts" / "pytest-shards"), "--jobs", "2", "bad", "good"]
    out = subprocess.run(
        [sys.executable, *shards, "--", "-q", "-p", "no:cacheprovider", "--rootdir", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    text = out.stdout
    ends = [ln for ln in text.splitlines() if ln.startswith("---- ") and "exit" in ln]
    assert [ln.split(":")[0] for ln in ends] == ["---- bad", "---- good"]
    recap = text[text.index("---- recap of failed bad: error lines") :]
    assert "---- good" not in recap
    assert "E       AssertionError: arithmetic is off" in recap
    assert "FAILED bad/test_bad.py::test_broken - AssertionError: arithmetic is off" in recap
    assert recap.count("---- recap of failed") == 2
