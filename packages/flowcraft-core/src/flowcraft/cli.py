"""The ``flowcraft`` command line: run, lint and draw blueprints, print the blueprint schema,
inspect recorded runs (``flowcraft inspect``, ``flowcraft history list``).

Exit codes of ``flowcraft run``: 0 completed, 2 awaiting, 1 failed / stalled / cancelled.
Every command exits 3 on a usage or validation error (bad arguments, unreadable or invalid
blueprint, bad ``--input``, registry that cannot be imported), with the message on stderr.
``flowcraft lint`` exits 1 when the blueprint has an error-level issue.

Heavy modules (the runtime, rich) are imported inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup, TyperOption

if TYPE_CHECKING:
    from rich.console import Console

    from .blueprint import WorkflowBlueprint
    from .runtime import WorkflowResult

__all__ = [
    "EXIT_AWAITING",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "app",
    "load_registry",
    "main",
]

EXIT_OK = 0
"""The run completed (or the blueprint has no error-level lint issue)."""
EXIT_FAILED = 1
"""The run failed, stalled or was cancelled (or ``lint`` found an error)."""
EXIT_AWAITING = 2
"""The run stopped to await (a wait, sleep or subflow node)."""
EXIT_USAGE = 3
"""Usage or validation error."""
EXIT_UNAVAILABLE = 4
"""The backend could not be reached."""

_USAGE_ERROR: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError"
)


class _Group(TyperGroup):
    """Makes click's own usage errors (missing argument, unknown option) exit with 3."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except _USAGE_ERROR as exc:
            exc.exit_code = EXIT_USAGE  # type: ignore[attr-defined]
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _USAGE_ERROR as exc:
            exc.exit_code = EXIT_USAGE  # type: ignore[attr-defined]
            raise


def _flag_type(self: TyperOption, ctx: Any) -> str | None:
    """Typer (0.2x) shows ``<bool>`` in the type column of plain flags (``--help`` included),
    which reads as if the flag took a value: flags show no type."""
    if self.is_flag and not self.count:
        return None
    return _option_type(self, ctx)  # type: ignore[no-any-return]


_option_type: Any = getattr(TyperOption, "display_type_rich", None)
if _option_type is not None:  # older typer prints no type column
    setattr(TyperOption, "display_type_rich", _flag_type)  # noqa: B010 (mypy: method assign)


app = typer.Typer(
    name="flowcraft",
    cls=_Group,
    help="Flowcraft: run, lint and draw workflow blueprints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
"""The typer application behind the ``flowcraft`` script."""


def _usage_error(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"flowcraft {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Flowcraft: run, lint and draw workflow blueprints."""


# -- helpers -----------------------------------------------------------------------------------


def _import_file(path: Path) -> Any:
    """Import a Python file as a module named after its stem (reusing an identical import)."""
    path = path.resolve()
    if not path.is_file():
        raise ImportError(f"no such file {str(path)!r}")
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None:
        f = getattr(existing, "__file__", None)
        if f is not None and Path(f).resolve() == path:
            return existing
        name = f"_flowcraft_registry_{name}"
    parent = str(path.parent)
    if parent not in sys.path:
        sys.path.insert(0, parent)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_registry(spec: str) -> dict[str, Any]:
    """Import a registry from ``module:attr`` or ``path/to/file.py:attr``.

    ``attr`` may be dotted. The object must be a mapping of ``uses`` keys to implementations or
    a :class:`~flowcraft.builder.Flow` (its ``.registry`` is used). The current directory is
    importable. Raises ``ValueError`` describing the problem.
    """
    from .builder import Flow

    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(f"--registry {spec!r}: expected MODULE:ATTR or PATH.py:ATTR")
    try:
        if target.endswith(".py") or "/" in target or os.sep in target:
            obj: Any = _import_file(Path(target))
        else:
            cwd = os.getcwd()
            if cwd not in sys.path:
                sys.path.insert(0, cwd)
            obj = importlib.import_module(target)
    except Exception as exc:
        raise ValueError(
            f"--registry {spec!r}: cannot import {target!r}: {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"--registry {spec!r}: {target!r} has no attribute {attr!r}") from None
    if isinstance(obj, Flow):
        return dict(obj.registry)
    if isinstance(obj, Mapping):
        return dict(obj)
    raise ValueError(
        f"--registry {spec!r}: expected a mapping of uses keys to implementations or a Flow, "
        f"got {type(obj).__name__}"
    )


def _registry_or_exit(spec: str | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    try:
        return load_registry(spec)
    except ValueError as exc:
        _usage_error(str(exc))


def _load_blueprint_or_exit(path: Path) -> WorkflowBlueprint:
    from .blueprint import load_blueprint
    from .errors import BlueprintValidationError

    try:
        return load_blueprint(path)
    except BlueprintValidationError as exc:
        _usage_error(str(exc))


def _parse_input(value: str | None) -> dict[str, Any]:
    if value is None:
        return {}
    text = value
    where = "--input"
    if value.startswith("@"):
        where = f"--input file {value[1:]!r}"
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            _usage_error(f"cannot read {where}: {exc.strerror or exc}")
    try:
        data = json.loads(text)
    except ValueError as exc:
        _usage_error(f"{where} is not valid JSON: {exc}")
    if not isinstance(data, dict):
        _usage_error(f"{where} must be a JSON object, got {type(data).__name__}")
    return data


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_STATUS_STYLE = {
    "completed": "green",
    "recovered": "yellow",
    "failed": "red",
    "awaiting": "yellow",
    "skipped": "dim",
    "pending": "dim",
    "stalled": "red",
    "cancelled": "red",
}


def _print_summary(console: Console, bp: WorkflowBlueprint, result: WorkflowResult) -> None:
    from rich.markup import escape
    from rich.table import Table

    def styled(status: str) -> str:
        style = _STATUS_STYLE.get(status)
        return f"[{style}]{status}[/{style}]" if style else status

    console.print(f"Workflow [bold]{escape(bp.id)}[/bold]  execution {escape(result.execution_id)}")
    console.print(f"Status: {styled(result.status)}")
    table = Table("Node", "Status", "Output")
    outputs = result.outputs
    for node_id, status in result.node_statuses.items():
        out = _short(outputs[node_id]) if node_id in outputs else ""
        table.add_row(escape(node_id), styled(status), escape(out))
    console.print(table)
    user = {k: v for k, v in result.context.items() if not k.startswith("_")}
    if user:
        console.print("Context:")
        for k, v in user.items():
            console.print(f"  {escape(k)} = {escape(_short(v))}")
    if result.awaiting:
        console.print("Awaiting:")
        for node_id, details in result.awaiting.items():
            reason = details.get("reason")
            console.print(f"  {escape(node_id)}: {escape(str(reason))}")
    if result.errors:
        console.print("Errors:")
        for err in result.errors:
            where = f"{err.node_id}: " if err.node_id else ""
            console.print(f"  [red]{escape(where)}{escape(err.name)}: {escape(err.message)}[/red]")


class _PrintBus:
    """Event bus that prints each event as one line as soon as it happens."""

    def __init__(self, err: bool) -> None:
        self.err = err

    def emit(self, event: Any) -> None:
        from .testing.recorder import format_event

        typer.echo(format_event(event), err=self.err)


# -- commands ----------------------------------------------------------------------------------


@app.command()
def run(
    blueprint: Annotated[Path, typer.Argument(help="Blueprint JSON file.", show_default=False)],
    registry: Annotated[
        str | None,
        typer.Option(
            "--registry",
            "-r",
            help="Implementations: MODULE:ATTR or PATH.py:ATTR (a mapping or a Flow).",
        ),
    ] = None,
    input_: Annotated[
        str | None,
        typer.Option(
            "--input", "-i", help="Initial context: a JSON object, or @file.json.", metavar="JSON"
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print only the result as JSON on stdout.")
    ] = False,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", "-c", min=1, help="Max nodes running at once.")
    ] = None,
    events: Annotated[
        bool,
        typer.Option("--events", help="Print every event (on stderr with --json)."),
    ] = False,
    execution_id: Annotated[
        str | None, typer.Option("--execution-id", help="Execution id (default: a new uuid).")
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            "-b",
            help="Run distributed on this backend (e.g. sqlite:flowcraft.db) instead of in "
            "memory; `flowcraft worker` processes execute the nodes.",
        ),
    ] = None,
    runs: Annotated[
        int, typer.Option("--runs", min=1, help="With --backend: start this many runs.")
    ] = 1,
    timeout: Annotated[
        float, typer.Option("--timeout", help="With --backend: seconds to wait for the result.")
    ] = 300.0,
    history: Annotated[
        Path | None,
        typer.Option(
            "--history",
            help="Store every event of the run in this SQLite file (see `flowcraft inspect`).",
            metavar="DB",
        ),
    ] = None,
) -> None:
    """Run a blueprint; exit 0 completed, 2 awaiting, 1 failed/stalled/cancelled, 3 usage."""
    reg = _registry_or_exit(registry)
    initial = _parse_input(input_)
    bp = _load_blueprint_or_exit(blueprint)
    if backend is not None and history is not None:
        _usage_error("--history records in-memory runs; it cannot be combined with --backend")
    if backend is not None:
        from .cli_distributed import run_distributed

        code = run_distributed(backend, bp, reg or {}, initial, runs, timeout, as_json)
        raise typer.Exit(code)

    from .errors import BlueprintValidationError
    from .runtime import FlowRuntime, run_sync

    bus: Any = _PrintBus(err=as_json) if events else None
    store = None
    if history is not None:
        from .history import PersistentEventBus

        store = _open_history(history, create=True)
        bus = PersistentEventBus(store, forward=bus)
    runtime = FlowRuntime(registry=reg, event_bus=bus)
    try:
        result: WorkflowResult = run_sync(
            runtime.run(bp, initial, concurrency=concurrency, execution_id=execution_id)
        )
    except BlueprintValidationError as exc:
        _usage_error(str(exc))
    finally:
        if store is not None:
            store.close()
    code = {"completed": EXIT_OK, "awaiting": EXIT_AWAITING}.get(result.status, EXIT_FAILED)
    if as_json:
        try:
            text = json.dumps(result.to_dict(), indent=2, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            typer.echo(f"error: cannot serialize the result as JSON: {exc}", err=True)
            raise typer.Exit(EXIT_FAILED) from None
        typer.echo(text)
    else:
        from rich.console import Console

        _print_summary(Console(highlight=False), bp, result)
    raise typer.Exit(code)


@app.command()
def lint(
    blueprint: Annotated[Path, typer.Argument(help="Blueprint JSON file.", show_default=False)],
    registry: Annotated[
        str | None,
        typer.Option(
            "--registry",
            "-r",
            help="Also check implementations: MODULE:ATTR or PATH.py:ATTR.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the issues as JSON.")] = False,
) -> None:
    """Report every problem of a blueprint; exit 1 when one is an error."""
    try:
        raw = json.loads(blueprint.read_text(encoding="utf-8"))
    except OSError as exc:
        _usage_error(f"cannot read {str(blueprint)!r}: {exc.strerror or exc}")
    except ValueError as exc:
        _usage_error(f"{str(blueprint)!r} is not valid JSON: {exc}")
    if not isinstance(raw, dict):
        _usage_error(f"a blueprint must be a JSON object, got {type(raw).__name__}")
    reg = _registry_or_exit(registry)

    from .lint import lint_blueprint

    result = lint_blueprint(raw, reg)
    code = EXIT_OK if result.is_valid else EXIT_FAILED
    if as_json:
        payload = {
            "isValid": result.is_valid,
            "issues": [
                {
                    "code": i.code,
                    "severity": i.severity,
                    "nodeId": i.node_id,
                    "relatedId": i.related_id,
                    "message": i.message,
                }
                for i in result.issues
            ],
        }
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        raise typer.Exit(code)

    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False, soft_wrap=True)
    for i in result.issues:
        color = "red" if i.severity == "error" else "yellow"
        node = f" [{i.node_id}]" if i.node_id is not None else ""
        console.print(
            f"[{color}]{i.severity}[/{color}] [bold]{i.code}[/bold]{escape(node)}: "
            f"{escape(i.message)}"
        )
    n_err, n_warn = len(result.errors), len(result.warnings)
    if not result.issues:
        console.print("[green]No issues found.[/green]")
    else:
        console.print(f"{_plural(n_err, 'error')}, {_plural(n_warn, 'warning')}")
    raise typer.Exit(code)


@app.command()
def graph(
    blueprint: Annotated[Path, typer.Argument(help="Blueprint JSON file.", show_default=False)],
    result: Annotated[
        Path | None,
        typer.Option(
            "--result", help="A result saved by `flowcraft run --json`: highlight that run."
        ),
    ] = None,
) -> None:
    """Print the blueprint as a Mermaid flowchart."""
    bp = _load_blueprint_or_exit(blueprint)

    from .mermaid import generate_mermaid, generate_mermaid_for_run

    if result is None:
        typer.echo(generate_mermaid(bp))
        return
    try:
        data = json.loads(result.read_text(encoding="utf-8"))
    except OSError as exc:
        _usage_error(f"cannot read {str(result)!r}: {exc.strerror or exc}")
    except ValueError as exc:
        _usage_error(f"--result {str(result)!r} is not valid JSON: {exc}")
    if not isinstance(data, dict):
        _usage_error(f"--result {str(result)!r} must be a JSON object")
    statuses = data.get("nodeStatuses")
    state = data.get("state")
    if not isinstance(statuses, dict) or not isinstance(state, dict):
        _usage_error(f"--result {str(result)!r} is not a result saved by `flowcraft run --json`")
    if data.get("blueprintId") not in (None, bp.id):
        _usage_error(
            f"--result {str(result)!r} is a run of blueprint {data.get('blueprintId')!r}, "
            f"not {bp.id!r}"
        )
    edges = state.get("edges") or {}
    taken = [k for k, v in edges.items() if v is True] if isinstance(edges, dict) else []
    typer.echo(generate_mermaid_for_run(bp, statuses, taken))


@app.command()
def schema() -> None:
    """Print the JSON Schema of the blueprint format."""
    from .blueprint import blueprint_json_schema

    typer.echo(json.dumps(blueprint_json_schema(), indent=2))


# -- history: inspect, history list ------------------------------------------------------------

history_app = typer.Typer(
    name="history",
    cls=_Group,
    help="Recorded runs (see `flowcraft run --history`).",
    no_args_is_help=True,
)
"""The ``flowcraft history`` command group."""
app.add_typer(history_app)

_DB_OPTION = typer.Option(
    "--db", "-d", help="SQLite event history (written by `flowcraft run --history`)."
)
_TABLE_OPTION = typer.Option("--table", help="History table name.")


def _open_history(path: Path, *, create: bool = False, table: str | None = None) -> Any:
    """An open SqliteEventStore on ``path``; usage error when it is missing or unusable."""
    import sqlite3

    from .history import DEFAULT_TABLE, SqliteEventStore
    from .runtime import run_sync

    if not create and not path.is_file():
        _usage_error(f"no history database at {str(path)!r}")
    try:
        store = SqliteEventStore(path, table=table or DEFAULT_TABLE)
    except ValueError as exc:
        _usage_error(str(exc))
    try:
        run_sync(store.list_executions(limit=1))  # opens the file and checks the schema
    except sqlite3.Error as exc:
        store.close()
        _usage_error(f"cannot use {str(path)!r} as a history database: {exc}")
    return store


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1.0:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def _when(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command("inspect")
def inspect_(
    execution_id: Annotated[str, typer.Argument(help="Execution id.", show_default=False)],
    db: Annotated[Path, _DB_OPTION],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary and every event as JSON.")
    ] = False,
    blueprint: Annotated[
        Path | None,
        typer.Option("--blueprint", help="The run's blueprint: list every node, in order."),
    ] = None,
    table: Annotated[str | None, _TABLE_OPTION] = None,
) -> None:
    """Summarise a recorded run from its events; exit 1 when the history has none."""
    bp = _load_blueprint_or_exit(blueprint) if blueprint is not None else None
    store = _open_history(db, table=table)
    from .replay import node_timings, replay
    from .runtime import run_sync

    try:
        events = run_sync(store.retrieve(execution_id))
    finally:
        store.close()
    if not events:
        typer.echo(f"No events found for execution {execution_id!r} in {str(db)!r}.", err=True)
        raise typer.Exit(EXIT_FAILED)
    if bp is not None and bp.id != events[0].blueprint_id:
        _usage_error(
            f"execution {execution_id!r} ran blueprint {events[0].blueprint_id!r}, not {bp.id!r}"
        )
    result = replay(bp, events, execution_id=execution_id)
    timings = node_timings(events)
    nodes: list[dict[str, Any]] = []
    for node_id, node_status in result.node_statuses.items():
        t = timings.get(node_id)
        seconds = t.duration if t is not None else None
        nodes.append(
            {
                "nodeId": node_id,
                "status": node_status,
                "executions": t.executions if t is not None else 0,
                "durationMs": round(seconds * 1000, 3) if seconds is not None else None,
            }
        )
    user_keys = [k for k in result.context if not k.startswith("_")]
    if as_json:
        payload = {
            "executionId": execution_id,
            "blueprintId": result.blueprint_id,
            "status": result.status,
            "errorCount": len(result.errors),
            "errors": [e.to_wire() for e in result.errors],
            "nodes": nodes,
            "awaiting": result.awaiting,
            "context": {k: result.context[k] for k in user_keys},
            "events": [e.to_wire() for e in events],
        }
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False, default=repr))
        raise typer.Exit(EXIT_OK)

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    status = result.status
    style = _STATUS_STYLE.get(status)
    shown = f"[{style}]{status}[/{style}]" if style else status
    n_err = len(result.errors)
    console.print(f"Execution [bold]{escape(execution_id)}[/bold]")
    console.print(f"Blueprint: {escape(result.blueprint_id)}")
    console.print(f"Status: {shown}" + (f", {_plural(n_err, 'error')}" if n_err else ""))
    types = [e.type for e in events]
    console.print(
        f"Events: {len(events)} (node:start {types.count('node:start')}, "
        f"node:finish {types.count('node:finish')}, node:error {types.count('node:error')})"
    )
    grid = Table("Node", "Status", "Runs", "Duration")
    for n in nodes:
        st = n["status"]
        s_style = _STATUS_STYLE.get(st)
        ms = n["durationMs"]
        grid.add_row(
            escape(n["nodeId"]),
            f"[{s_style}]{st}[/{s_style}]" if s_style else st,
            str(n["executions"]),
            _duration(ms / 1000 if ms is not None else None),
        )
    console.print(grid)
    for node_id, d in result.awaiting.items():
        what = str(d.get("reason"))
        if d.get("reason") == "webhook":
            what = f"webhook POST {d.get('url')}" + (
                f" until {d['timeoutAt']}" if d.get("timeoutAt") else ""
            )
        elif d.get("reason") == "timer":
            what = f"sleep until {d.get('wakeUpAt')}"
        console.print(f"Awaiting: {escape(node_id)} ({escape(what)})")
    if user_keys:
        head = user_keys[:10]
        more = f" (first 10 of {len(user_keys)})" if len(user_keys) > 10 else ""
        console.print(f"Context{more}:")
        for k in head:
            console.print(f"  {escape(k)} = {escape(_short(result.context[k]))}")
    if result.errors:
        console.print("Errors:")
        for err in result.errors:
            where = f"{err.node_id}: " if err.node_id else ""
            console.print(f"  [red]{escape(where)}{escape(err.name)}: {escape(err.message)}[/red]")
    raise typer.Exit(EXIT_OK)


@history_app.command("list")
def history_list(
    db: Annotated[Path, _DB_OPTION],
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many to show.")] = 20,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many first.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
    table: Annotated[str | None, _TABLE_OPTION] = None,
) -> None:
    """List recorded executions, most recent first."""
    store = _open_history(db, table=table)
    from .runtime import run_sync

    try:
        rows = run_sync(store.list_executions(limit=limit, offset=offset))
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2, ensure_ascii=False))
        raise typer.Exit(EXIT_OK)
    if not rows:
        typer.echo(f"No executions in {str(db)!r}.")
        raise typer.Exit(EXIT_OK)
    # Plain aligned columns: ids are long and must stay whole (copy them into `inspect`).
    lines = [("EXECUTION", "BLUEPRINT", "STATUS", "ERRORS", "EVENTS", "STARTED (UTC)", "TOOK")]
    for r in rows:
        lines.append(
            (
                r.execution_id,
                r.blueprint_id,
                r.status,
                str(r.error_count),
                str(r.event_count),
                _when(r.started_at),
                _duration(r.updated_at - r.started_at),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    raise typer.Exit(EXIT_OK)


def main() -> None:
    """Entry point of the ``flowcraft`` script."""
    from . import cli_distributed  # noqa: F401  (registers `flowcraft worker`)

    app()


if __name__ == "__main__":  # pragma: no cover
    main()
