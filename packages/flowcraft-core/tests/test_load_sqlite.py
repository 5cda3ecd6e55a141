"""Acceptance load test: 1000 concurrent runs of a 10-node fan-out/fan-in on SQLite with two
worker processes, audited from the store (no lost or doubled commits)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))

import load_sqlite  # noqa: E402


@pytest.mark.slow
def test_thousand_runs_two_worker_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = load_sqlite.main(["--runs", "1000", "--workers", "2", "--db", str(tmp_path / "l.db")])
    report = json.loads(capsys.readouterr().out)
    with capsys.disabled():
        print(
            f"\nload: {report['runs']} runs in {report['total_seconds']} s, "
            f"{report['nodes_per_s']} nodes/s"
        )
    assert len(report["worker_peak_rss_mib"]) == 2  # both workers drained and reported
    assert report["audit"].pop("problem_examples") == [], report
    assert 1 <= report["audit"].pop("node_commits_per_run") <= 10
    assert report["audit"] == {
        "runs_by_status": {"completed": 1000},
        "runs_with_wrong_commit_count": 0,
        "output_keys": 10_000,
        "completed_node_records": 10_000,
        "wrong_join_results": 0,
    }
    assert code == 0
