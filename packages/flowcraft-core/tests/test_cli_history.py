"""Tests for ``flowcraft run --history``, ``flowcraft inspect`` and ``flowcraft history list``."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest
from flowcraft.cli import app
from flowcraft.history import SqliteEventStore
from typer.testing import CliRunner, Result

REG = f"{Path(__file__).with_name('cli_registry.py')}:REGISTRY"

LINEAR: dict[str, Any] = {
    "id": "cli",
    "nodes": [
        {"id": "a", "uses": "double", "inputs": "n"},
        {"id": "b", "uses": "add_one"},
    ],
    "edges": [{"source": "a", "target": "b"}],
}

FAILING: dict[str, Any] = {
    "id": "cli-fail",
    "nodes": [
        {"id": "a", "uses": "double", "inputs": "n"},
        {"id": "x", "uses": "boom"},
        {"id": "b", "uses": "add_one"},
    ],
    "edges": [{"source": "a", "target": "x"}, {"source": "x", "target": "b"}],
}

WAITING: dict[str, Any] = {
    "id": "cli-wait",
    "nodes": [
        {"id": "a", "uses": "double", "inputs": "n"},
        {"id": "w", "uses": "wait"},
        {"id": "b", "uses": "add_one"},
    ],
    "edges": [{"source": "a", "target": "w"}, {"source": "w", "target": "b"}],
}

DURATION = re.compile(r"^\d+\.\d ms$|^\d+\.\d\d s$")


def invoke(*args: str) -> Result:
    """Run the CLI, keeping stderr apart from stdout whichever click is installed."""
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    else:
        runner = CliRunner()
    return runner.invoke(app, list(args))


def write(tmp_path: Path, name: str, data: Any) -> str:
    """Write JSON (or text) to ``tmp_path/name``; returns the path."""
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


def run_recorded(
    tmp_path: Path, bp: dict[str, Any], execution_id: str, initial: str = '{"n": 2}'
) -> tuple[Result, str]:
    """``flowcraft run --history`` into ``tmp_path/h.sqlite``; returns the result and db path."""
    db = str(tmp_path / "h.sqlite")
    res = invoke(
        "run",
        write(tmp_path, f"{bp['id']}.json", bp),
        "-r",
        REG,
        "-i",
        initial,
        "--execution-id",
        execution_id,
        "--history",
        db,
    )
    return res, db


def stored(db: str, execution_id: str) -> list[Any]:
    """The events the history file holds for ``execution_id``."""
    with SqliteEventStore(db) as s:
        return asyncio.run(s.retrieve(execution_id))


def test_help_lists_the_history_commands() -> None:
    res = invoke("--help")
    assert res.exit_code == 0
    assert "inspect" in res.stdout
    assert "history" in res.stdout
    sub = invoke("history", "--help")
    assert sub.exit_code == 0
    assert "list" in sub.stdout


def test_run_with_history_stores_every_event(tmp_path: Path) -> None:
    res, db = run_recorded(tmp_path, LINEAR, "r1")
    assert res.exit_code == 0, res.stderr
    events = stored(db, "r1")
    assert [e.type for e in events] == [
        "workflow:start",
        "node:start",
        "node:finish",
        "node:start",
        "context:change",
        "node:finish",
        "workflow:finish",
    ]
    assert events[0].payload == {"blueprintId": "cli", "initialContext": {"n": 2}}
    assert events[-1].payload == {"status": "completed", "errors": []}


def test_run_with_history_and_events_does_both(tmp_path: Path) -> None:
    db = str(tmp_path / "h.sqlite")
    res = invoke(
        "run", write(tmp_path, "bp.json", LINEAR), "-r", REG, "-i", '{"n": 1}', "--events",
        "--execution-id", "ev", "--history", db, "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["status"] == "completed"
    assert res.stderr.count("node:finish") == 2
    assert len(stored(db, "ev")) == 7


def test_history_cannot_be_combined_with_a_backend(tmp_path: Path) -> None:
    res = invoke(
        "run", write(tmp_path, "bp.json", LINEAR), "-r", REG, "--backend", "sqlite:x.db",
        "--history", str(tmp_path / "h.sqlite"),
    )  # fmt: skip
    assert res.exit_code == 3
    assert "cannot be combined with --backend" in res.stderr


def test_inspect_a_completed_run(tmp_path: Path) -> None:
    _, db = run_recorded(tmp_path, LINEAR, "r1")
    res = invoke("inspect", "r1", "--db", db)
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[:4] == [
        "Execution r1",
        "Blueprint: cli",
        "Status: completed",
        "Events: 7 (node:start 2, node:finish 2, node:error 0)",
    ]
    rows = {cells[0]: cells[1:] for cells in table_rows(res.stdout)}
    assert set(rows) == {"Node", "a", "b"}
    assert [rows["a"][0], rows["a"][1]] == ["completed", "1"]
    assert [rows["b"][0], rows["b"][1]] == ["completed", "1"]
    assert DURATION.match(rows["a"][2]), rows["a"]
    assert DURATION.match(rows["b"][2]), rows["b"]
    assert lines[-3:] == ["Context:", "  n = 2", "  last = 5"]


def table_rows(text: str) -> list[list[str]]:
    """Cells of every row of a rich table in ``text``."""
    return [
        [c.strip() for c in line.strip("│┃").split("│" if "│" in line else "┃")]
        for line in text.splitlines()
        if line.startswith(("│", "┃"))
    ]


def test_inspect_a_failed_run_shows_the_error_and_every_node_with_the_blueprint(
    tmp_path: Path,
) -> None:
    res, db = run_recorded(tmp_path, FAILING, "f1")
    assert res.exit_code == 1
    out = invoke("inspect", "f1", "--db", db)
    assert out.exit_code == 0, out.stderr
    assert "Status: failed, 1 error" in out.stdout
    assert out.stdout.rstrip().endswith("Errors:\n  x: FatalNodeError: kaboom")
    assert [r[:3] for r in table_rows(out.stdout)] == [
        ["Node", "Status", "Runs"],
        ["a", "completed", "1"],
        ["x", "failed", "1"],
    ]
    full = invoke("inspect", "f1", "--db", db, "--blueprint", write(tmp_path, "f.json", FAILING))
    assert full.exit_code == 0, full.stderr
    assert [r[:4] for r in table_rows(full.stdout)] == [
        ["Node", "Status", "Runs", "Duration"],
        ["a", "completed", "1", table_rows(out.stdout)[1][3]],
        ["x", "failed", "1", table_rows(out.stdout)[2][3]],
        ["b", "pending", "0", "-"],
    ]


def test_inspect_with_the_wrong_blueprint_is_a_usage_error(tmp_path: Path) -> None:
    _, db = run_recorded(tmp_path, LINEAR, "r1")
    res = invoke("inspect", "r1", "--db", db, "--blueprint", write(tmp_path, "f.json", FAILING))
    assert res.exit_code == 3
    assert "ran blueprint 'cli', not 'cli-fail'" in res.stderr


def test_inspect_an_awaiting_run(tmp_path: Path) -> None:
    res, db = run_recorded(tmp_path, WAITING, "w1")
    assert res.exit_code == 2
    out = invoke("inspect", "w1", "--db", db)
    assert out.exit_code == 0
    assert "Status: awaiting" in out.stdout
    rows = {r[0]: r[1:] for r in table_rows(out.stdout)}
    assert rows["w"] == ["awaiting", "1", "-"]
    assert "Awaiting: w (external_event)" in out.stdout


def test_inspect_shows_a_webhook_endpoint(tmp_path: Path) -> None:
    """A run waiting on a webhook: inspect names the endpoint to POST to (text and JSON)."""
    hooked = {
        "id": "cli-hook",
        "nodes": [
            {"id": "a", "uses": "double", "inputs": "n"},
            {
                "id": "h",
                "uses": "webhook",
                "params": {"path": "/in", "secret": "s", "timeout": "1h"},
            },
        ],
        "edges": [{"source": "a", "target": "h"}],
    }
    res, db = run_recorded(tmp_path, hooked, "h1")
    assert res.exit_code == 2
    data = json.loads(invoke("inspect", "h1", "--db", db, "--json").stdout)
    d = data["awaiting"]["h"]
    assert d["reason"] == "webhook" and d["url"] == f"/in/{d['endpointId']}"
    out = invoke("inspect", "h1", "--db", db).stdout
    assert f"Awaiting: h (webhook POST /in/{d['endpointId']} until {d['timeoutAt']})" in out


def test_inspect_json_summary_and_events(tmp_path: Path) -> None:
    _, db = run_recorded(tmp_path, FAILING, "f1")
    res = invoke("inspect", "f1", "--db", db, "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    events = stored(db, "f1")
    start = {e.payload["nodeId"]: e.timestamp for e in events if e.type == "node:start"}
    end = {
        e.payload["nodeId"]: e.timestamp for e in events if e.type in ("node:finish", "node:error")
    }
    assert data["executionId"] == "f1"
    assert data["blueprintId"] == "cli-fail"
    assert data["status"] == "failed"
    assert data["errorCount"] == 1
    assert [(e["nodeId"], e["message"]) for e in data["errors"]] == [("x", "kaboom")]
    assert data["nodes"] == [
        {
            "nodeId": n,
            "status": s,
            "executions": 1,
            "durationMs": round((end[n] - start[n]) * 1000, 3),
        }
        for n, s in (("a", "completed"), ("x", "failed"))
    ]
    assert data["context"] == {"n": 2}
    assert data["events"] == [e.to_wire() for e in events]


def test_inspect_shows_the_first_ten_user_context_keys(tmp_path: Path) -> None:
    initial = {"n": 2, "_hidden": 1, **{f"k{i:02d}": i for i in range(12)}}
    _, db = run_recorded(tmp_path, FAILING, "many", json.dumps(initial))
    res = invoke("inspect", "many", "--db", db)
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    i = lines.index("Context (first 10 of 13):")
    assert lines[i + 1 : i + 11] == ["  n = 2"] + [f"  k{j:02d} = {j}" for j in range(9)]
    assert lines[i + 11] == "Errors:"
    assert "_hidden" not in res.stdout


def test_inspect_an_unknown_execution_exits_1(tmp_path: Path) -> None:
    _, db = run_recorded(tmp_path, LINEAR, "r1")
    res = invoke("inspect", "nope", "--db", db)
    assert res.exit_code == 1
    assert res.stdout == ""
    assert "No events found for execution 'nope'" in res.stderr


@pytest.mark.parametrize("command", [("inspect", "r1"), ("history", "list")])
def test_a_missing_or_bad_database_is_a_usage_error(
    command: tuple[str, str], tmp_path: Path
) -> None:
    missing = invoke(*command, "--db", str(tmp_path / "absent.sqlite"))
    assert missing.exit_code == 3
    assert "no history database at" in missing.stderr
    assert not (tmp_path / "absent.sqlite").exists()
    junk = write(tmp_path, "junk.sqlite", "this is not a database at all" * 100)
    bad = invoke(*command, "--db", junk)
    assert bad.exit_code == 3
    assert "cannot use" in bad.stderr
    _, db = run_recorded(tmp_path, LINEAR, "r1")
    table = invoke(*command, "--db", db, "--table", "x; DROP TABLE flowcraft_events")
    assert table.exit_code == 3
    assert "invalid table name" in table.stderr
    assert len(stored(db, "r1")) == 7


def test_history_list_most_recent_first(tmp_path: Path) -> None:
    run_recorded(tmp_path, LINEAR, "first")
    run_recorded(tmp_path, FAILING, "second")
    _, db = run_recorded(tmp_path, WAITING, "third")
    res = invoke("history", "list", "--db", db)
    assert res.exit_code == 0, res.stderr
    rows = [line.split() for line in res.stdout.splitlines()]
    assert rows[0] == [
        "EXECUTION",
        "BLUEPRINT",
        "STATUS",
        "ERRORS",
        "EVENTS",
        "STARTED",
        "(UTC)",
        "TOOK",
    ]
    assert [r[:5] for r in rows[1:]] == [
        ["third", "cli-wait", "awaiting", "0", "7"],
        ["second", "cli-fail", "failed", "1", "6"],
        ["first", "cli", "completed", "0", "7"],
    ]
    assert all(DURATION.match(" ".join(r[7:])) for r in rows[1:])
    page = invoke("history", "list", "--db", db, "--limit", "1", "--offset", "1", "--json")
    assert page.exit_code == 0
    [only] = json.loads(page.stdout)
    assert {
        k: only[k] for k in ("executionId", "blueprintId", "status", "errorCount", "eventCount")
    } == {
        "executionId": "second",
        "blueprintId": "cli-fail",
        "status": "failed",
        "errorCount": 1,
        "eventCount": 6,
    }


def test_history_list_of_an_empty_database(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    with SqliteEventStore(path) as s:
        assert asyncio.run(s.list_executions()) == []
    res = invoke("history", "list", "--db", str(path))
    assert res.exit_code == 0
    assert res.stdout == f"No executions in {str(path)!r}.\n"
    assert json.loads(invoke("history", "list", "--db", str(path), "--json").stdout) == []
