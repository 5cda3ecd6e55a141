"""Distributed commands: ``flowcraft worker`` and ``flowcraft run --backend``."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .cli import (
    EXIT_AWAITING,
    EXIT_FAILED,
    EXIT_OK,
    _load_blueprint_or_exit,
    _print_summary,
    _registry_or_exit,
    _usage_error,
    app,
)

if TYPE_CHECKING:
    from .blueprint import WorkflowBlueprint

_FINAL = ("completed", "failed", "stalled", "cancelled")


@app.command()
def worker(
    backend: Annotated[
        str, typer.Option("--backend", "-b", help="Backend URL, e.g. sqlite:flowcraft.db.")
    ],
    registry: Annotated[
        str, typer.Option("--registry", "-r", help="Implementations: MODULE:ATTR or PATH.py:ATTR.")
    ],
    blueprint: Annotated[
        list[Path], typer.Option("--blueprint", help="Blueprint JSON file (repeatable).")
    ],
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Jobs processed at once.")
    ] = 8,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every job.")] = False,
) -> None:
    """Process jobs from a backend until SIGTERM/SIGINT (jobs in progress finish first)."""
    reg = _registry_or_exit(registry) or {}
    bps = [_load_blueprint_or_exit(p) for p in blueprint]
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    from .distributed.backends import run_worker

    try:
        adapter = asyncio.run(
            run_worker(backend, registry=reg, blueprints=bps, concurrency=concurrency)
        )
    except ValueError as exc:
        _usage_error(str(exc))
    processed = getattr(adapter, "processed", None)
    if processed is not None:
        typer.echo(f"worker stopped after {processed} jobs", err=True)


def run_distributed(
    backend: str,
    bp: WorkflowBlueprint,
    registry: dict[str, Any],
    initial: dict[str, Any],
    runs: int,
    timeout: float,
    as_json: bool,
) -> int:
    """Start ``runs`` runs on ``backend``, show progress until all are final, print the first."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .distributed.backends import open_adapter

    try:
        client = open_adapter(backend, runtime_options={"registry": registry, "blueprints": [bp]})
    except ValueError as exc:
        _usage_error(str(exc))
    console = Console(stderr=as_json, highlight=False)
    total_nodes = len(bp.nodes) * runs

    async def go() -> tuple[list[Any], float]:
        t0 = time.perf_counter()
        ids = [await client.start_run(bp.id, initial) for _ in range(runs)]
        deadline = time.monotonic() + timeout
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=as_json) as progress:
            task = progress.add_task(f"{bp.id} on {backend}", total=total_nodes, detail="")
            while True:
                statuses = [await client.status(r) for r in ids]
                done_nodes = sum(
                    1
                    for st in statuses
                    for s in st.node_statuses.values()
                    if s in ("completed", "skipped", "recovered", "failed")
                )
                final = sum(1 for st in statuses if st.status in _FINAL)
                awaiting = sum(1 for st in statuses if st.status == "awaiting")
                progress.update(
                    task,
                    completed=done_nodes,
                    detail=f"runs final {final}/{runs}"
                    + (f", awaiting {awaiting}" if awaiting else ""),
                )
                if final + awaiting == runs or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
        results = [await client.get_result(r) for r in ids]
        return results, time.perf_counter() - t0

    results, elapsed = asyncio.run(go())
    first = results[0]
    if as_json:
        typer.echo(json.dumps(first.to_dict(), indent=2, ensure_ascii=False))
    else:
        _print_summary(console, bp, first)
        counts: dict[str, int] = {}
        for r in results:
            counts[r.status] = counts.get(r.status, 0) + 1
        nodes_done = sum(len(r.node_statuses) for r in results)
        console.print(
            f"{runs} run(s) in {elapsed:.2f} s: "
            + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            + f" ({nodes_done / elapsed:.0f} nodes/s)"
        )
    if all(r.status == "completed" for r in results):
        return EXIT_OK
    if all(r.status in ("completed", "awaiting") for r in results):
        return EXIT_AWAITING
    return EXIT_FAILED
