"""Smoke test of ``benchmarks/bullmq_bench.py --quick`` on the test Redis: it runs and prints
one well-formed JSON document with all three measurements. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KEYS = ("chain_20_1w", "fan_20_1w", "chain_20_2w", "fan_20_2w")


@pytest.mark.slow
def test_quick_benchmark_prints_every_measurement(redis_url: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bullmq_bench.py"),
            "--quick",
            "--redis-url",
            redis_url,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        # The suite's view verification re-reads the run after every commit: not measured.
        env={**os.environ, "FLOWCRAFT_VERIFY_VIEWS": "0"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert (doc["quick"], doc["size"], doc["repeat"]) == (True, 20, 1)
    for section in ("flowcraft", "flowcraft_every_node_a_job", "raw_bullmq", "comparison"):
        assert sorted(doc[section]) == sorted(KEYS), section
    for key in KEYS:
        nodes = 20 if key.startswith("chain") else 22
        for section in ("flowcraft", "flowcraft_every_node_a_job"):
            row = doc[section][key]
            assert row["nodes"] == nodes
            assert row["nodes_per_s"] == pytest.approx(nodes / row["seconds"], rel=0.01)
            assert row["round_trips_per_node"] > 0
            assert sum(row["round_trips_by_request"].values()) == pytest.approx(
                row["round_trips_per_node"], abs=0.2
            )
        assert doc["raw_bullmq"][key]["jobs"] == 20
        cmp = doc["comparison"][key]
        assert cmp["flowcraft_nodes_per_s"] == doc["flowcraft"][key]["nodes_per_s"]
        assert cmp["within_2x_of_raw"] == (cmp["ratio_raw_over_flowcraft"] <= 2.0)
    # A chain with inline successors: one commit request per node and no load per node.
    chain = doc["flowcraft"]["chain_20_1w"]["round_trips_by_request"]
    assert chain["flowcraft commit"] == pytest.approx(1.0, abs=0.06)
    assert chain.get("flowcraft load", 0) < 0.2
    assert set(doc["round_trips_explained"]) >= {"inline successor (chain hop)", "queued node"}
