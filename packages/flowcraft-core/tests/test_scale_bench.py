"""Smoke test of ``benchmarks/scale.py`` on SQLite: a few concurrent runs with two worker
processes, every run audited through the client and the store."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))

import scale  # noqa: E402


def test_scale_smoke_on_sqlite(capsys: pytest.CaptureFixture[str]) -> None:
    code = scale.main(["--runs", "40", "--backends", "sqlite"])
    report = json.loads(capsys.readouterr().out)
    (row,) = report["rows"]
    assert code == 0
    assert row["backend"] == "sqlite"
    assert row["runs"] == 40
    assert row["runs_not_completed"] == 0
    assert row["problem_examples"] == []
    assert row["runs_with_more_commits_than_nodes"] == 0
    assert len(row["worker_peak_rss_mib"]) == 2  # both workers drained and reported
    assert 0 <= row["peak_active_runs"] <= 40  # sampled every 0.25 s
    assert row["ok"] is True
