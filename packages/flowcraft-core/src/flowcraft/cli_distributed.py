"""Distributed commands: ``flowcraft worker`` and ``flowcraft run --backend``."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .blueprint import WorkflowBlueprint
from .cli import (
    EXIT_AWAITING,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    _load_blueprint_or_exit,
    _print_summary,
    _registry_or_exit,
    _usage_error,
    app,
)

_FINAL = ("completed", "failed", "stalled", "cancelled")
NO_WORKER_AFTER = 5.0
"""Seconds after which ``run --backend`` says that no worker has started any node."""


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
    """Process jobs from a backend until SIGTERM/SIGINT: jobs in flight get 30 s to finish, a
    second signal stops at once. Exits 4 at once when the backend cannot be reached."""
    reg = _registry_or_exit(registry) or {}
    bps = [_load_blueprint_or_exit(p) for p in blueprint]
    _validate_or_exit(reg, bps)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    from .distributed.backends import BackendUnavailable, redact, run_worker

    def ready(adapter: Any) -> None:
        ids = ", ".join(bp.id for bp in bps)
        typer.echo(
            f"worker ready: backend {redact(backend)}, {type(adapter).__name__}, "
            f"concurrency {concurrency}, blueprints {ids}",
            err=True,
        )

    try:
        adapter = asyncio.run(
            run_worker(
                backend, registry=reg, blueprints=bps, concurrency=concurrency, on_ready=ready
            )
        )
    except ValueError as exc:
        _usage_error(str(exc))
    except BackendUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    processed = getattr(adapter, "processed", None)
    done = f" after {processed} jobs" if processed is not None else ""
    typer.echo(f"worker stopped{done}", err=True)


def _validate_or_exit(registry: dict[str, Any], bps: list[WorkflowBlueprint]) -> None:
    """Prepare every blueprint as a worker will (expressions, implementations, built-in
    params); a usage error listing the problems when one can never start."""
    from .errors import BlueprintValidationError
    from .runtime import FlowRuntime

    rt = FlowRuntime(registry=registry, blueprints=bps)
    for bp in bps:
        try:
            rt.prepare(bp, strict=True)
        except (BlueprintValidationError, KeyError, ValueError) as exc:
            _usage_error(f"blueprint {bp.id!r} can never start on this worker: {exc}")


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
        from .distributed.backends import check_backend, redact

        await check_backend(client, redact(backend))
        t0 = time.perf_counter()
        ids = [await client.start_run(bp.id, initial) for _ in range(runs)]
        warned = False
        deadline = time.monotonic() + timeout
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
        )
        # On a terminal a live bar; otherwise (a log, a pipe) one plain line whenever the
        # number of final runs changes, at most one per second, and the last one always.
        live = console.is_terminal
        title = f"{bp.id} on {redact(backend)}"
        shown = (-1.0, "")
        with Progress(*columns, console=console, transient=as_json, disable=not live) as progress:
            task = progress.add_task(title, total=total_nodes, detail="")
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
                detail = f"runs final {final}/{runs}" + (
                    f", awaiting {awaiting}" if awaiting else ""
                )
                progress.update(task, completed=done_nodes, detail=detail)
                end = final + awaiting == runs or time.monotonic() > deadline
                due = end or time.monotonic() - shown[0] >= 1.0
                if not live and not as_json and detail != shown[1] and due:
                    line = f"{title}: {detail}, {done_nodes}/{total_nodes} node(s) done"
                    console.print(line, soft_wrap=True)
                    shown = (time.monotonic(), detail)
                if end:
                    break
                if not warned and done_nodes == 0 and time.perf_counter() - t0 > NO_WORKER_AFTER:
                    warned = True
                    busy = any(s == "running" for st in statuses for s in st.node_statuses.values())
                    if not busy:
                        console.print(
                            f"[yellow]no worker has picked up a job after {NO_WORKER_AFTER:g} s:"
                            f" is a worker running on {redact(backend)}?[/yellow]"
                        )
                await asyncio.sleep(0.05)
        results = [await client.get_result(r) for r in ids]
        return results, time.perf_counter() - t0

    from .distributed.backends import BackendUnavailable

    try:
        results, elapsed = asyncio.run(go())
    except BackendUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_UNAVAILABLE) from None
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


@app.command()
def serve(
    backend: Annotated[
        str, typer.Option("--backend", "-b", help="Backend URL, e.g. sqlite:flowcraft.db.")
    ],
    registry: Annotated[
        str, typer.Option("--registry", "-r", help="Implementations: MODULE:ATTR or PATH.py:ATTR.")
    ],
    blueprint: Annotated[
        list[Path], typer.Option("--blueprint", help="Blueprint JSON file (repeatable).")
    ],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port).")] = 8080,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FLOWCRAFT_API_TOKEN",
            help="Bearer token of the run API (env FLOWCRAFT_API_TOKEN); without it only "
            "webhooks are served.",
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(min=0, help="Workers to run in this process too (memory: needs 1).")
    ] = 0,
) -> None:
    """Serve webhooks and the run API over HTTP (needs flowcraft-core[http]) until
    SIGTERM/SIGINT."""
    try:
        import uvicorn

        from .http import create_app
    except ImportError:
        _usage_error("flowcraft serve needs the http extra: pip install 'flowcraft-core[http]'")
    reg = _registry_or_exit(registry) or {}
    bps = [_load_blueprint_or_exit(p) for p in blueprint]
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    from .distributed.backends import open_adapter

    opts = {"registry": reg, "blueprints": bps}
    try:
        client = open_adapter(backend, runtime_options=opts)
        pool = [open_adapter(backend, runtime_options=opts) for _ in range(workers)]
    except ValueError as exc:
        _usage_error(str(exc))
    server = uvicorn.Server(
        uvicorn.Config(create_app(client, token=token), host=host, port=port, log_level="info")
    )

    async def main() -> None:
        # uvicorn handles SIGTERM/SIGINT while serving, then restores the handlers it found
        # and raises the signal again: with these no-op handlers in place the process then
        # goes on to stop its workers and exits 0 after a graceful stop.
        # The caller's handlers come back at the end (serve run inside a larger program, or
        # a test, must not leave SIGTERM and Ctrl-C ignored for the rest of the process).
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig in previous:
            signal.signal(sig, lambda signum, frame: None)
        tasks = [asyncio.create_task(w.start()) for w in pool]
        try:
            await server.serve()  # returns after SIGTERM/SIGINT
        finally:
            try:
                for w in pool:
                    await w.stop()
                await asyncio.gather(*tasks, return_exceptions=True)
                for a in (*pool, client):
                    await a.aclose()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    asyncio.run(main())
