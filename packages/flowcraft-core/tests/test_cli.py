"""Tests for the ``flowcraft`` command line (run, lint, graph, schema) and its exit codes."""

from __future__ import annotations

import asyncio
import inspect
import json
from pathlib import Path
from typing import Any

import cli_registry
import pytest
from flowcraft import FlowRuntime, blueprint_json_schema, load_blueprint
from flowcraft.cli import app, load_registry
from typer.testing import CliRunner, Result

REGISTRY_FILE = Path(__file__).with_name("cli_registry.py")
REG = f"{REGISTRY_FILE}:REGISTRY"

LINEAR: dict[str, Any] = {
    "id": "cli",
    "nodes": [
        {"id": "a", "uses": "double", "inputs": "n"},
        {"id": "b", "uses": "add_one"},
    ],
    "edges": [{"source": "a", "target": "b"}],
}

WAITING: dict[str, Any] = {
    "id": "cli-wait",
    "nodes": [
        {"id": "a", "uses": "double", "inputs": "n"},
        {"id": "w", "uses": "wait", "params": {"eventName": "approve"}},
        {"id": "b", "uses": "add_one"},
    ],
    "edges": [{"source": "a", "target": "w"}, {"source": "w", "target": "b"}],
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


def make_runner() -> CliRunner:
    """A runner keeping stderr apart from stdout, whichever typer/click is installed."""
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    return CliRunner()


def invoke(*args: str) -> Result:
    return make_runner().invoke(app, list(args))


def write(tmp_path: Path, name: str, data: Any) -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


def in_process(bp: dict[str, Any], initial: dict[str, Any], execution_id: str) -> dict[str, Any]:
    """The same run done directly with FlowRuntime, as a dict."""
    runtime = FlowRuntime(registry=cli_registry.REGISTRY)
    result = asyncio.run(runtime.run(load_blueprint(bp), initial, execution_id=execution_id))
    return result.to_dict()


# -- help, version, usage ----------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    res = invoke("--help")
    assert res.exit_code == 0
    for command in ("run", "lint", "graph", "schema"):
        assert f" {command} " in res.stdout


def test_help_shows_no_type_after_plain_flags() -> None:
    """Flags (``--json``, ``--help``) take no value, so help shows no type for them; options
    that take one keep theirs."""
    res = invoke("lint", "--help")
    assert res.exit_code == 0
    assert "<bool>" not in res.stdout
    assert "--json" in res.stdout
    res = invoke("run", "--help")
    assert res.exit_code == 0
    assert "<bool>" not in res.stdout
    assert "<int range>" in res.stdout  # --concurrency


def test_version() -> None:
    from flowcraft import __version__

    res = invoke("--version")
    assert res.exit_code == 0
    assert res.stdout == f"flowcraft {__version__}\n"


def test_missing_argument_is_a_usage_error(tmp_path: Path) -> None:
    res = invoke("run")
    assert res.exit_code == 3
    assert "Missing argument" in res.stderr
    assert res.stdout == ""


def test_unknown_option_is_a_usage_error(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", LINEAR)
    res = invoke("run", bp, "--nope")
    assert res.exit_code == 3
    assert "--nope" in res.stderr


def test_concurrency_below_one_is_a_usage_error(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", LINEAR)
    res = invoke("run", bp, "--registry", REG, "--concurrency", "0")
    assert res.exit_code == 3
    assert res.stdout == ""


# -- run ---------------------------------------------------------------------------------------


def test_run_json_prints_exactly_the_result_dict(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", LINEAR)
    res = invoke("run", bp, "--registry", REG, "--input", '{"n": 5}', "--json")
    assert res.exit_code == 0, res.stderr
    assert res.stderr == ""
    data = json.loads(res.stdout)
    exec_id = data["executionId"]
    assert data == in_process(LINEAR, {"n": 5}, exec_id)
    assert data["status"] == "completed"
    assert data["context"] == {"n": 5, "_outputs.a": 10, "last": 11, "_outputs.b": 11}
    assert data["nodeStatuses"] == {"a": "completed", "b": "completed"}
    assert data["errors"] == []
    assert data["awaiting"] == {}
    assert data["state"]["edges"] == {"a->b": True}


def test_run_execution_id_option(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", LINEAR)
    res = invoke(
        "run", bp, "-r", REG, "-i", '{"n": 1}', "--json", "--execution-id", "exec-1", "-c", "1"
    )
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert data["executionId"] == "exec-1"
    assert data["state"]["executionId"] == "exec-1"
    assert data == in_process(LINEAR, {"n": 1}, "exec-1")


def test_run_input_from_file(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", LINEAR)
    inp = write(tmp_path, "in.json", {"n": 21})
    res = invoke("run", bp, "-r", REG, "--input", f"@{inp}", "--json")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["context"] == {
        "n": 21,
        "_outputs.a": 42,
        "last": 43,
        "_outputs.b": 43,
    }


def test_run_summary_is_readable(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", LINEAR)
    res = invoke("run", bp, "-r", REG, "-i", '{"n": 5}', "--execution-id", "e-7")
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[0] == "Workflow cli  execution e-7"
    assert lines[1] == "Status: completed"
    rows = [[c.strip() for c in ln.strip("│").split("│")] for ln in lines if ln.startswith("│")]
    assert rows == [["a", "completed", "10"], ["b", "completed", "11"]]
    assert lines[-3:] == ["Context:", "  n = 5", "  last = 11"]
    assert res.stderr == ""


def test_run_awaiting_exits_2(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", WAITING)
    res = invoke("run", bp, "-r", REG, "-i", '{"n": 2}', "--json")
    assert res.exit_code == 2
    data = json.loads(res.stdout)
    assert data["status"] == "awaiting"
    assert data["nodeStatuses"] == {"a": "completed", "w": "awaiting", "b": "pending"}
    assert data["awaiting"] == {"w": {"reason": "external_event", "eventName": "approve"}}
    assert data["context"] == {"n": 2, "_outputs.a": 4}


def test_run_awaiting_summary(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", WAITING)
    res = invoke("run", bp, "-r", REG, "-i", '{"n": 2}')
    assert res.exit_code == 2
    lines = res.stdout.splitlines()
    assert lines[1] == "Status: awaiting"
    assert lines[-2:] == ["Awaiting:", "  w: external_event"]


def test_run_failed_exits_1(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", FAILING)
    res = invoke("run", bp, "-r", REG, "-i", '{"n": 2}', "--json")
    assert res.exit_code == 1
    data = json.loads(res.stdout)
    assert data["status"] == "failed"
    assert data["nodeStatuses"] == {"a": "completed", "x": "failed", "b": "pending"}
    assert [(e["nodeId"], e["name"], e["message"]) for e in data["errors"]] == [
        ("x", "FatalNodeError", "kaboom")
    ]


def test_run_failed_summary_lists_errors(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", FAILING)
    res = invoke("run", bp, "-r", REG, "-i", '{"n": 2}')
    assert res.exit_code == 1
    lines = res.stdout.splitlines()
    assert lines[1] == "Status: failed"
    assert lines[-2:] == ["Errors:", "  x: FatalNodeError: kaboom"]


def test_run_events_human(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", LINEAR)
    res = invoke("run", bp, "-r", REG, "-i", '{"n": 5}', "--events")
    assert res.exit_code == 0
    assert res.stdout.splitlines()[:7] == [
        "  1 workflow:start    blueprint=cli",
        "  2 node:start        a input=5",
        "  3 node:finish       a output=10",
        "  4 node:start        b input=10",
        "  5 context:change    b set last=11",
        "  6 node:finish       b output=11",
        "  7 workflow:finish   status=completed",
    ]
    assert res.stdout.splitlines()[8] == "Status: completed"


def test_run_events_with_json_go_to_stderr(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", LINEAR)
    res = invoke("run", bp, "-r", REG, "-i", '{"n": 5}', "--events", "--json")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["status"] == "completed"  # stdout is only the JSON
    assert [ln.split()[1] for ln in res.stderr.splitlines()] == [
        "workflow:start",
        "node:start",
        "node:finish",
        "node:start",
        "context:change",
        "node:finish",
        "workflow:finish",
    ]


def test_run_unknown_implementation_is_a_validation_error(tmp_path: Path) -> None:
    bad = {**LINEAR, "nodes": [LINEAR["nodes"][0], {"id": "b", "uses": "nope"}]}
    bp = write(tmp_path, "bp.json", bad)
    res = invoke("run", bp, "-r", REG, "-i", '{"n": 5}', "--json")
    assert res.exit_code == 3
    assert res.stdout == ""
    assert res.stderr == (
        "error: invalid blueprint 'cli':\n  - node 'b': unknown implementation uses='nope'\n"
    )


def test_run_invalid_blueprint_names_the_edge(tmp_path: Path) -> None:
    bad = {**LINEAR, "edges": [{"source": "a", "target": "ghost"}]}
    bp = write(tmp_path, "bp.json", bad)
    res = invoke("run", bp, "-r", REG)
    assert res.exit_code == 3
    assert "edges[0] (a -> ghost): unknown target 'ghost'" in res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout == ""


def test_run_bad_expression_is_a_validation_error(tmp_path: Path) -> None:
    bad = {**LINEAR, "edges": [{"source": "a", "target": "b", "condition": "output >"}]}
    bp = write(tmp_path, "bp.json", bad)
    res = invoke("run", bp, "-r", REG)
    assert res.exit_code == 3
    assert "edge 'a' -> 'b' condition" in res.stderr
    assert "Traceback" not in res.stderr


def test_run_unreadable_and_non_json_blueprints(tmp_path: Path) -> None:
    res = invoke("run", str(tmp_path / "missing.json"), "-r", REG)
    assert res.exit_code == 3
    assert res.stderr.startswith("error: invalid blueprint:\n  - cannot read ")
    bp = write(tmp_path, "bp.json", "{nope")
    res = invoke("run", bp, "-r", REG)
    assert res.exit_code == 3
    assert res.stderr.startswith("error: invalid blueprint:\n  - not valid JSON: ")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{nope", "error: --input is not valid JSON: "),
        ("[1, 2]", "error: --input must be a JSON object, got list\n"),
        ("7", "error: --input must be a JSON object, got int\n"),
        ("@/definitely/not/here.json", "error: cannot read --input file "),
    ],
)
def test_run_bad_input_is_a_usage_error(tmp_path: Path, value: str, message: str) -> None:
    bp = write(tmp_path, "bp.json", LINEAR)
    res = invoke("run", bp, "-r", REG, "--input", value)
    assert res.exit_code == 3
    assert res.stderr.startswith(message)
    assert res.stdout == ""


def test_run_input_file_must_hold_an_object(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", LINEAR)
    inp = write(tmp_path, "in.json", [1])
    res = invoke("run", bp, "-r", REG, "--input", f"@{inp}")
    assert res.exit_code == 3
    assert res.stderr == f"error: --input file {inp!r} must be a JSON object, got list\n"


def test_registry_as_module_and_as_flow(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", LINEAR)
    for spec in ("cli_registry:REGISTRY", f"{REGISTRY_FILE}:FLOW"):
        res = invoke("run", bp, "-r", spec, "-i", '{"n": 3}', "--json")
        assert res.exit_code == 0, (spec, res.stderr)
        assert json.loads(res.stdout)["context"]["_outputs.b"] == 7


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cli_registry", "expected MODULE:ATTR or PATH.py:ATTR"),
        ("cli_registry:NOPE", "'cli_registry' has no attribute 'NOPE'"),
        ("cli_registry:NOT_A_REGISTRY", "expected a mapping of uses keys"),
        ("no_such_module_xyz:R", "cannot import 'no_such_module_xyz': ModuleNotFoundError"),
        ("/no/such/file.py:R", "cannot import '/no/such/file.py': ImportError"),
    ],
)
def test_bad_registry_is_a_usage_error(tmp_path: Path, spec: str, message: str) -> None:
    bp = write(tmp_path, "bp.json", LINEAR)
    res = invoke("run", bp, "-r", spec)
    assert res.exit_code == 3
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_load_registry_from_file_reuses_the_imported_module() -> None:
    assert load_registry(f"{REGISTRY_FILE}:REGISTRY") == cli_registry.REGISTRY
    assert load_registry("cli_registry:FLOW") == {
        "double": cli_registry.double,
        "add_one": cli_registry.add_one,
    }


# -- lint --------------------------------------------------------------------------------------


def test_lint_clean_blueprint(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", LINEAR)
    res = invoke("lint", bp, "-r", REG)
    assert res.exit_code == 0
    assert res.stdout == "No issues found.\n"


def test_lint_reports_structural_errors_without_failing_to_load(tmp_path: Path) -> None:
    bad = {
        "id": "lint",
        "nodes": [{"id": "a", "uses": "double"}, {"id": "a", "uses": "double"}],
        "edges": [{"source": "a", "target": "ghost"}],
    }
    bp = write(tmp_path, "bp.json", bad)
    res = invoke("lint", bp, "--json")
    assert res.exit_code == 1
    data = json.loads(res.stdout)
    assert data["isValid"] is False
    assert [(i["code"], i["severity"], i["nodeId"]) for i in data["issues"]] == [
        ("DUPLICATE_NODE_ID", "error", "a"),
        ("INVALID_EDGE_TARGET", "error", "a"),
    ]
    res = invoke("lint", bp)
    assert res.exit_code == 1
    lines = res.stdout.splitlines()
    assert lines[0].startswith("error DUPLICATE_NODE_ID [a]: node 'a' (nodes[1]): duplicate")
    assert lines[1].startswith("error INVALID_EDGE_TARGET [a]: ")
    assert lines[2] == "2 errors, 0 warnings"


def test_lint_with_registry_reports_missing_implementations(tmp_path: Path) -> None:
    bad = {**LINEAR, "nodes": [LINEAR["nodes"][0], {"id": "b", "uses": "nope"}]}
    bp = write(tmp_path, "bp.json", bad)
    res = invoke("lint", bp, "--registry", REG, "--json")
    assert res.exit_code == 1
    issues = json.loads(res.stdout)["issues"]
    assert [(i["code"], i["nodeId"]) for i in issues] == [("MISSING_NODE_IMPLEMENTATION", "b")]
    # Without a registry implementations are not checked.
    res = invoke("lint", bp, "--json")
    assert res.exit_code == 0
    assert json.loads(res.stdout) == {"isValid": True, "issues": []}


def test_lint_warnings_only_exit_0(tmp_path: Path) -> None:
    cyclic = {
        "id": "cyc",
        "nodes": [{"id": "a", "uses": "double"}, {"id": "b", "uses": "double"}],
        "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "a"}],
        "metadata": {"cycleEntryPoints": ["a"]},
    }
    bp = write(tmp_path, "bp.json", cyclic)
    res = invoke("lint", bp, "--json")
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert data["isValid"] is True
    assert [(i["code"], i["severity"]) for i in data["issues"]] == [("CYCLE", "warning")]
    res = invoke("lint", bp)
    assert res.exit_code == 0
    assert res.stdout.splitlines()[-1] == "0 errors, 1 warning"


def test_lint_unparseable_file_is_a_usage_error(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", "[1, 2")
    res = invoke("lint", bp)
    assert res.exit_code == 3
    assert "is not valid JSON" in res.stderr
    bp = write(tmp_path, "list.json", [1, 2])
    res = invoke("lint", bp)
    assert res.exit_code == 3
    assert res.stderr == "error: a blueprint must be a JSON object, got list\n"


# -- graph -------------------------------------------------------------------------------------


def test_graph_prints_mermaid(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", LINEAR)
    res = invoke("graph", bp)
    assert res.exit_code == 0
    assert res.stdout == (
        'flowchart TD\n    n0["a<br/>double"]\n    n1["b<br/>add_one"]\n    n0 --> n1\n'
    )


def test_graph_highlights_a_saved_run(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", FAILING)
    run = invoke("run", bp, "-r", REG, "-i", '{"n": 1}', "--json")
    assert run.exit_code == 1
    saved = write(tmp_path, "result.json", run.stdout)
    res = invoke("graph", bp, "--result", saved)
    assert res.exit_code == 0
    assert res.stdout == (
        "flowchart TD\n"
        '    n0["a<br/>double"]\n'
        '    n1["x<br/>boom"]\n'
        '    n2["b<br/>add_one"]\n'
        "    n0 --> n1\n"
        "    n1 --> n2\n"
        "    classDef completed fill:#dcfce7,stroke:#16a34a,color:#14532d\n"
        "    classDef failed fill:#fee2e2,stroke:#dc2626,color:#7f1d1d\n"
        "    classDef pending fill:#ffffff,stroke:#d1d5db,color:#374151\n"
        "    class n0 completed\n"
        "    class n1 failed\n"
        "    class n2 pending\n"
        "    linkStyle 0 stroke-width:3px,stroke:#2563eb\n"
    )


def test_graph_result_only_counts_taken_edges(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", LINEAR)
    saved = write(
        tmp_path,
        "result.json",
        {
            "blueprintId": "cli",
            "nodeStatuses": {"a": "completed", "b": "skipped"},
            "state": {"edges": {"a->b": False}},
        },
    )
    res = invoke("graph", bp, "--result", saved)
    assert res.exit_code == 0
    assert "linkStyle" not in res.stdout
    assert res.stdout.splitlines()[-2:] == ["    class n0 completed", "    class n1 skipped"]


def test_graph_rejects_a_result_of_another_blueprint(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", LINEAR)
    saved = write(
        tmp_path, "r.json", {"blueprintId": "other", "nodeStatuses": {}, "state": {"edges": {}}}
    )
    res = invoke("graph", bp, "--result", saved)
    assert res.exit_code == 3
    assert "is a run of blueprint 'other', not 'cli'" in res.stderr
    junk = write(tmp_path, "junk.json", {"hello": 1})
    res = invoke("graph", bp, "--result", junk)
    assert res.exit_code == 3
    assert "is not a result saved by `flowcraft run --json`" in res.stderr


def test_graph_invalid_blueprint_is_a_usage_error(tmp_path: Path) -> None:
    bp = write(tmp_path, "bp.json", {"id": "g", "nodes": [], "edges": [{"source": "a"}]})
    res = invoke("graph", bp)
    assert res.exit_code == 3
    assert res.stderr.startswith("error: invalid blueprint 'g':\n  - edges[0]")


# -- schema ------------------------------------------------------------------------------------


def test_schema_prints_the_blueprint_json_schema() -> None:
    res = invoke("schema")
    assert res.exit_code == 0
    assert json.loads(res.stdout) == blueprint_json_schema()


def test_main_entry_point(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flowcraft.cli import main

    monkeypatch.setattr("sys.argv", ["flowcraft", "schema"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 0
    assert json.loads(capsys.readouterr().out) == blueprint_json_schema()
