"""SQLite backend benchmark: Flowcraft nodes/s on one SQLite file shared by worker processes,
next to a raw SQLite queue hop on the same kind of file. Prints one JSON document.

    uv run python benchmarks/sqlite_bench.py [--repeat 5] [--quick]

Scenarios (every node a trivial ``input + 1``; workers are separate processes, concurrency 8,
each a ``SqliteAdapter`` as ``flowcraft worker --backend sqlite:PATH`` makes it): ``chain_200``
on 1 worker and ``fan_200`` (``src -> w0..w199 -> join``) on 2 workers, each as shipped and with
every node a queued job (``inline_successors=0``). Method: one warm-up run, then ``--repeat``
runs; medians with min..max. ``result_lag_ms``: how long after the run's final commit the
client (another process's connection) saw the result, from the commit's own timestamp.

The raw peer, on a fresh file of the same schema and the same kind of worker processes: a
200-message chain (each claimed message is acked and the next one put) and 200 independent
messages, using the backend's queue table and its doorbell, without the engine.

SQLite calls per node (one call is one transaction or statement on the backend's thread) are
counted in one more run with an in-process worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import Workers, summary
from bullmq_bench import REGISTRY, blueprints

CONCURRENCY = 8


def _opts(n: int) -> dict[str, Any]:
    return {"registry": REGISTRY, "blueprints": {b.id: b for b in blueprints(n)}}


def flowcraft_worker(db: str, n: int, inline: int | None, ready: Any, stop: Any) -> None:
    """A Flowcraft SQLite worker process; runs until ``stop`` is set."""
    from flowcraft.distributed.sqlite import SqliteAdapter

    async def main() -> None:
        kw = {} if inline is None else {"inline_successors": inline}
        w = SqliteAdapter(db, concurrency=CONCURRENCY, runtime_options=_opts(n), **kw)
        task = asyncio.create_task(w.start())
        ready.set()
        await asyncio.to_thread(stop.wait)
        await w.stop()
        await task
        await w.aclose()

    asyncio.run(main())


def raw_worker(db: str, n: int, _inline: Any, ready: Any, stop: Any) -> None:
    """The raw peer: claim, ack, put the chain's next message (or count a fan message)."""
    from flowcraft.distributed.sqlite import SqliteBackend

    async def main() -> None:
        b = SqliteBackend(db)
        wake = asyncio.Event()
        unlisten = b.bell.listen("jobs", wake.set)
        ready.set()
        while not stop.is_set():
            wake.clear()  # before the claim: a ring after it is not lost
            got = await b.claim(CONCURRENCY)
            if not got:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), 0.05)
                continue
            for mid, body, _ in got:
                run, kind, i = body.split(":")
                await b.ack(mid)
                if kind == "chain" and int(i) + 1 < n:
                    await b.put(f"{run}:chain:{int(i) + 1}")
                else:
                    await b.coord("incr", f"done:{run}", ttl=3600)
                    b.bell.ring("runs")
        if unlisten:
            unlisten()
        b.close()

    asyncio.run(main())


async def _calls_per_node(db: str, scenario: str, n: int, inline: int | None) -> float:
    """SQLite calls of one run (client and an in-process worker) per node."""
    from flowcraft.distributed.sqlite import SqliteAdapter, SqliteBackend

    backend = SqliteBackend(db)
    calls = 0
    orig = backend.call

    async def counted(fn: Any) -> Any:
        nonlocal calls
        calls += 1
        return await orig(fn)

    backend.call = counted  # type: ignore[method-assign]
    kw = {} if inline is None else {"inline_successors": inline}
    w = SqliteAdapter(backend, concurrency=CONCURRENCY, runtime_options=_opts(n), **kw)
    task = asyncio.create_task(w.start())
    await asyncio.sleep(0.2)
    calls = 0
    res = await w.result(await w.start_run(scenario), 300)
    total = calls
    await w.stop()
    await task
    backend.close()
    if res.status != "completed":
        raise RuntimeError(f"{scenario}: {res.status}")
    return round(total / (n if scenario == "chain" else n + 2), 2)


async def flowcraft(
    tmp: str, scenario: str, workers: int, n: int, inline: int | None, repeat: int
) -> dict[str, Any]:
    """Nodes/s of ``scenario`` (median, min..max), result lag and SQLite calls per node."""
    from flowcraft.distributed.sqlite import SqliteAdapter

    db = os.path.join(tmp, f"{scenario}-{workers}-{inline}.db")
    nodes = n if scenario == "chain" else n + 2
    client = SqliteAdapter(db, runtime_options=_opts(n))
    rates: list[float] = []
    lags: list[float] = []
    with Workers(flowcraft_worker, workers, db, n, inline):
        for i in range(repeat + 1):
            t0 = time.perf_counter()
            run_id = await client.start_run(scenario)
            res = await client.result(run_id, 300)
            seen, dt = time.time(), time.perf_counter() - t0
            if res.status != "completed":
                raise RuntimeError(f"{scenario}: {res.status}")
            if i:
                rates.append(nodes / dt)
                with sqlite3.connect(db) as c:
                    (at,) = c.execute(
                        "SELECT updated_at FROM fc_runs WHERE run_id = ?", (run_id,)
                    ).fetchone()
                lags.append((seen - at) * 1000)
    await client.aclose()
    return {
        "nodes": nodes,
        "workers": workers,
        "inline_successors": "default" if inline is None else inline,
        "nodes_per_s": summary(rates),
        "result_lag_ms": summary(lags, 2),
        "sqlite_calls_per_node": await _calls_per_node(db, scenario, n, inline),
    }


async def raw(tmp: str, scenario: str, workers: int, n: int, repeat: int) -> dict[str, Any]:
    """Messages/s of the raw SQLite queue peer (median, min..max)."""
    from flowcraft.distributed.sqlite import SqliteBackend

    db = os.path.join(tmp, f"raw-{scenario}-{workers}.db")
    b = SqliteBackend(db)
    done = asyncio.Event()
    unlisten = b.bell.listen("runs", done.set)  # as a Flowcraft client waits for its result
    rates: list[float] = []
    with Workers(raw_worker, workers, db, n, None):
        for i in range(repeat + 1):
            run = f"r{i}"
            t0 = time.perf_counter()
            if scenario == "chain":
                await b.put(f"{run}:chain:0")
                expect = 1
            else:
                for k in range(n):
                    await b.put(f"{run}:one:{k}")
                expect = n
            while True:
                done.clear()
                if int(await b.coord("get", f"done:{run}") or 0) >= expect:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.05)
            if i:
                rates.append(n / (time.perf_counter() - t0))
    if unlisten:
        unlisten()
    b.close()
    return {"messages": n, "workers": workers, "messages_per_s": summary(rates)}


async def main() -> None:
    """Parse arguments, measure, print the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="20 nodes, 1 repetition (smoke run)")
    args = ap.parse_args()
    n, repeat = (20, 1) if args.quick else (200, args.repeat)
    doc: dict[str, Any] = {
        "benchmark": "flowcraft on SQLite (worker processes sharing one file)",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
        },
        "repeat": repeat,
        "flowcraft": {},
        "flowcraft_every_node_a_job": {},
        "raw_sqlite": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for scenario, workers in (("chain", 1), ("fan", 2)):
            key = f"{scenario}_{n}_{workers}w"
            doc["flowcraft"][key] = await flowcraft(tmp, scenario, workers, n, None, repeat)
            doc["flowcraft_every_node_a_job"][key] = await flowcraft(
                tmp, scenario, workers, n, 0, repeat
            )
            doc["raw_sqlite"][key] = await raw(tmp, scenario, workers, n, repeat)
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
