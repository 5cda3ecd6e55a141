"""``benchmarks/tables.py``: every benchmark table in the READMEs is generated from the stored
JSON in ``benchmarks/results`` and matches it (a table typed or edited by hand fails here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[3]


def _tables() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_tables", REPO / "benchmarks" / "tables.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_tables"] = mod
    spec.loader.exec_module(mod)
    return mod


tables = _tables()


def test_every_table_in_the_repository_matches_its_stored_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert tables.main(["--check"]) == 0, capsys.readouterr().out


def test_every_stored_run_has_a_renderer() -> None:
    stored = {p.stem for p in (REPO / "benchmarks" / "results").glob("*.json")}
    assert stored == set(tables.RENDERERS)


def test_a_hand_edited_table_is_rewritten_from_the_json() -> None:
    text = "intro\n<!-- bench-table: sqs -->\n| made | up |\n<!-- /bench-table -->\nafter\n"
    new, names = tables.regenerate(text)
    doc = json.loads((REPO / "benchmarks" / "results" / "sqs.json").read_text(encoding="utf-8"))
    assert names == ["sqs"]
    assert new == (
        "intro\n<!-- bench-table: sqs -->\n\n"
        + tables.render("sqs", doc)
        + "\n\n<!-- /bench-table -->\nafter\n"
    )
    assert "| made | up |" not in new
    assert tables.regenerate(new) == (new, ["sqs"])


def test_a_table_names_its_stored_run_or_fails_clearly() -> None:
    with pytest.raises(SystemExit, match="no renderer for 'nope'"):
        tables.regenerate("<!-- bench-table: nope -->\n<!-- /bench-table -->\n")


def test_bullmq_table_reports_both_modes_and_the_raw_peer() -> None:
    doc = {
        "flowcraft": {
            "chain_200_1w": {"nodes_per_s": 1000.0, "per_hop_ms": 1.0, "round_trips_per_node": 1.5}
        },
        "flowcraft_every_node_a_job": {
            "chain_200_1w": {"nodes_per_s": 500.0, "round_trips_per_node": 6.0}
        },
        "raw_bullmq": {"chain_200_1w": {"jobs_per_s": 800.0}},
    }
    assert tables.render("bullmq", doc).splitlines()[2] == (
        "| chain 200, 1 worker | 1000 (1.00) | 500 | 800 | 0.80 | 1.5 / 6.0 |"
    )
