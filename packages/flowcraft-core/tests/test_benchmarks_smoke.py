"""Smoke test of ``benchmarks/engine.py``: it runs and prints one well-formed JSON document.

No timing is asserted (the numbers depend on the machine); only the document's shape, the
scenario sizes, the bookkeeping between its sections and the TypeScript skip/error paths.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import flowcraft
import pytest

REPO = Path(__file__).resolve().parents[3]
ENGINE = REPO / "benchmarks" / "engine.py"
SCENARIOS = ("chain_1000", "fan_1000", "small_runs_2000")
REFERENCE = {"chain_1000": 60.0, "fan_1000": 114.0, "small_runs_2000": 15.7}


def _run(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(ENGINE), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)  # exactly one JSON document on stdout
    return doc


def _load_engine() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flowcraft_bench_engine", ENGINE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _positive(x: Any) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick_doc() -> dict[str, Any]:
    return _run("--quick", "--no-ts")


def test_quick_run_prints_the_documented_top_level_keys(quick_doc: dict[str, Any]) -> None:
    assert set(quick_doc) == {
        "benchmark",
        "quick",
        "repeat",
        "sizes",
        "machine",
        "python",
        "ts",
        "comparison",
        "target",
    }
    assert quick_doc["quick"] is True
    assert quick_doc["repeat"] == 1
    assert quick_doc["sizes"] == {"chain": 100, "fan": 100, "small_runs": 100}
    assert quick_doc["ts"] == {"skipped": "--no-ts"}
    assert quick_doc["target"] == {
        "description": "Python per-node overhead at most half of the TypeScript Flowcraft's",
        "max_ratio": 0.5,
        "reference_ts_us_per_node": REFERENCE,
    }


def test_machine_section_records_the_interpreter(quick_doc: dict[str, Any]) -> None:
    m = quick_doc["machine"]
    assert set(m) == {
        "python",
        "implementation",
        "platform",
        "machine",
        "processor",
        "cpu_count",
        "load_avg_1min",
    }
    assert m["python"] == ".".join(str(v) for v in sys.version_info[:3])
    assert m["implementation"] == "CPython"
    assert m["cpu_count"] == os.cpu_count()


def test_python_section_has_every_scenario_with_consistent_numbers(
    quick_doc: dict[str, Any],
) -> None:
    py = quick_doc["python"]
    assert py["flowcraft_version"] == flowcraft.__version__
    assert py["concurrency"] == flowcraft.FlowRuntime().concurrency  # default settings
    assert py["method"].startswith("interleaved rounds")
    chain, fan, small = (py[name] for name in SCENARIOS)
    stats = {"seconds", "seconds_min", "seconds_max", "us_per_node"}
    stats |= {"us_per_node_min", "us_per_node_max"}
    assert set(chain) == {"nodes", *stats}
    assert set(fan) == {"nodes", *stats}
    assert set(small) == {"runs", "nodes_per_run", "runs_per_s", *stats}
    for section in (chain, fan, small):
        assert section["seconds_min"] <= section["seconds"] <= section["seconds_max"]
    assert (chain["nodes"], fan["nodes"], small["runs"], small["nodes_per_run"]) == (
        100,
        102,
        100,
        5,
    )
    for section in (chain, fan, small):
        assert _positive(section["seconds"])
        assert _positive(section["us_per_node"])
    assert chain["us_per_node"] == pytest.approx(chain["seconds"] * 1e6 / 100)
    assert fan["us_per_node"] == pytest.approx(fan["seconds"] * 1e6 / 102)
    assert small["us_per_node"] == pytest.approx(small["seconds"] * 1e6 / 500)
    assert small["runs_per_s"] == pytest.approx(100 / small["seconds"])


def test_comparison_without_ts_has_no_ratio_but_compares_with_the_reference(
    quick_doc: dict[str, Any],
) -> None:
    comp = quick_doc["comparison"]
    assert set(comp) == set(SCENARIOS)
    for name in SCENARIOS:
        p = quick_doc["python"][name]["us_per_node"]
        assert comp[name] == {
            "python_us_per_node": p,
            "ts_us_per_node": None,
            "ratio": None,
            "target_max_ratio": 0.5,
            "meets_target": None,
            "reference_ts_us_per_node": REFERENCE[name],
            "ratio_vs_reference": pytest.approx(p / REFERENCE[name]),
        }


def test_missing_node_and_npm_is_recorded_as_a_ts_error(tmp_path: Path) -> None:
    doc = _run("--quick", env={"PATH": str(tmp_path)})  # an empty directory: no node, no npm
    assert doc["ts"] == {"error": "node and npm not found on PATH"}
    assert [doc["comparison"][n]["ratio"] for n in SCENARIOS] == [None, None, None]


def test_compare_divides_python_by_ts_and_checks_the_half_target() -> None:
    engine = _load_engine()
    py = {"chain_1000": {"us_per_node": 10.0}, "fan_1000": {"us_per_node": 57.0}}
    py["small_runs_2000"] = {"us_per_node": 12.0}
    ts = {
        "chain_1000": {"us_per_node": 40.0},
        "fan_1000": {"us_per_node": 114.0},
        "small_runs_2000": {"us_per_node": 16.0},
    }
    comp = engine.compare(py, ts)
    assert comp["chain_1000"]["ratio"] == 0.25
    assert comp["chain_1000"]["meets_target"] is True
    assert comp["fan_1000"]["ratio"] == 0.5  # exactly half still meets the target
    assert comp["fan_1000"]["meets_target"] is True
    assert comp["fan_1000"]["ratio_vs_reference"] == 0.5
    assert comp["small_runs_2000"]["ratio"] == 0.75
    assert comp["small_runs_2000"]["meets_target"] is False
    assert comp["small_runs_2000"]["ts_us_per_node"] == 16.0


def test_duplicate_storm_benchmark_reports_the_enqueue_factor() -> None:
    """``benchmarks/duplicate_storm.py`` on the embedded backends: one JSON document whose
    enqueue factor (enqueues per node under duplicate-every-enqueue) is within the
    conformance suite's bound, every node executed once on the in-memory backend."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "duplicate_storm.py"),
            "--repeat",
            "1",
            "--backends",
            "memory,sqlite",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert sorted(doc["backends"]) == ["memory", "sqlite"]
    for entry in doc["backends"].values():
        assert 1.0 <= entry["enqueue_factor"]["max"] <= 5.0
    assert doc["backends"]["memory"]["executions_per_node"] == {"median": 1.0, "max": 1.0}
