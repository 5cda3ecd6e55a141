"""Scale: N concurrent runs of a 10-node fan-out/fan-in on SQLite and on BullMQ (Redis), two
worker processes each; every run must complete, and each worker's peak memory is reported
against the number of runs in flight, so its growth with the active runs can be read off.

    uv run python benchmarks/scale.py [--runs 1000,10000] [--backends sqlite,bullmq] [--quick]

All runs are started before any result is awaited (the client starts them as fast as the store
takes them, while the workers already run them), so ``peak_active_runs`` (sampled every 0.25 s
from the adapter's active-run index) is how many runs the workers had in flight at most.
Workers keep at most ``view_cache`` (256) runs decoded between jobs; everything else about a run
lives in the store, so a worker's memory should not grow with the number of runs in flight.

Audited from the store through the client (``result()`` of every run): status ``completed``,
all 10 nodes completed, the join's output 16. On SQLite the commit audit of ``load_sqlite`` is
added (no run with more commits than nodes). Redis comes from ``FLOWCRAFT_TEST_REDIS_URL`` or a
throwaway ``redis-server`` (flowcraft.testing.services).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "integration-tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import load_sqlite  # noqa: E402
from bench_common import Workers  # noqa: E402
from flowcraft.distributed.backends import open_adapter, run_worker  # noqa: E402
from flowcraft.distributed.sqlite import SqliteAdapter  # noqa: E402

WORKERS = 2
CONCURRENCY = 16
EXPECTED_JOIN = 2 * load_sqlite.WIDTH
WAIT_CHUNK = 50


def _worker(url: str, scratch: str, ready: Any, stop: Any) -> None:
    """One worker process on ``url`` until ``stop``; then writes its peak RSS (KiB) to
    ``scratch/rss-<pid>``."""

    async def main() -> None:
        done = asyncio.Event()

        async def watch() -> None:
            await asyncio.to_thread(stop.wait)
            done.set()

        watcher = asyncio.create_task(watch())
        await run_worker(
            url,
            registry=load_sqlite.REGISTRY,
            blueprints=[load_sqlite.BLUEPRINT],
            concurrency=CONCURRENCY,
            stop=done,
            on_ready=lambda _a: ready.set(),
        )
        await watcher

    asyncio.run(main())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(scratch, f"rss-{os.getpid()}").write_text(str(peak), "utf-8")


async def _active(client: Any) -> int:
    """How many runs are not final (paging the adapter's active-run index)."""
    n, cursor = 0, None
    while True:
        page, cursor = await client.list_active_runs(cursor, 1000)
        n += len(page)
        if cursor is None:
            return n


async def drive(url: str, runs: int, timeout: float) -> dict[str, Any]:
    """Start ``runs`` runs, wait until all are final, audit every result."""
    client = open_adapter(
        url,
        runtime_options={"registry": load_sqlite.REGISTRY, "blueprints": [load_sqlite.BLUEPRINT]},
    )
    peak = 0
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, await _active(client))
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample())
    try:
        t0 = time.perf_counter()
        ids = [await client.start_run("fan10", {}) for _ in range(runs)]
        t_started = time.perf_counter()
        # Waits in chunks: thousands of waits at once make one status request each, at
        # once, and exhaust the Redis client's connection pool (MaxConnectionsError).
        for k in range(0, len(ids), WAIT_CHUNK):
            part = ids[k : k + WAIT_CHUNK]
            await asyncio.gather(*(client.wait_for_final(i, timeout) for i in part))
        t1 = time.perf_counter()
        sampling = False
        await sampler
        bad: list[dict[str, Any]] = []
        for i in ids:
            r = await client.result(i, timeout=5)
            nodes = set(r.node_statuses.values())
            if (
                r.status != "completed"
                or nodes != {"completed"}
                or len(r.node_statuses) != load_sqlite.NODES
                or r.context.get("_outputs.join") != EXPECTED_JOIN
            ):
                bad.append({"run": i, "status": r.status, "nodes": r.node_statuses})
    finally:
        sampling = False
        if not sampler.done():
            sampler.cancel()
        await client.aclose()
    return {
        "runs": runs,
        "start_seconds": round(t_started - t0, 3),
        "total_seconds": round(t1 - t0, 3),
        "runs_per_s": round(runs / (t1 - t0), 1),
        "nodes_per_s": round(runs * load_sqlite.NODES / (t1 - t0), 1),
        "peak_active_runs": peak,
        "runs_not_completed": len(bad),
        "problem_examples": bad[:5],
    }


def measure(backend: str, runs: int, redis: str | None, timeout: float) -> dict[str, Any]:
    """One size on one backend with fresh storage and two fresh worker processes."""
    scratch = tempfile.mkdtemp(prefix="flowcraft-scale-")
    if backend == "sqlite":
        db = os.path.join(scratch, "scale.db")
        url = f"sqlite:{db}"
        SqliteAdapter(db).backend.close()  # the schema before the workers race
    else:
        url = f"{redis}?queue=scale-{uuid.uuid4().hex[:8]}"
    try:
        with Workers(_worker, WORKERS, url, scratch):
            row = {"backend": backend} | asyncio.run(drive(url, runs, timeout))
        row["worker_peak_rss_mib"] = [
            round(int(f.read_text("utf-8")) / 1024, 1) for f in sorted(Path(scratch).glob("rss-*"))
        ]
        if backend == "sqlite":
            audit = load_sqlite.audit(db)
            row["runs_with_more_commits_than_nodes"] = audit["runs_with_wrong_commit_count"]
            row["node_commits_per_run"] = audit["node_commits_per_run"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    row["ok"] = (
        row["runs_not_completed"] == 0
        and len(row["worker_peak_rss_mib"]) == WORKERS
        and row.get("runs_with_more_commits_than_nodes", 0) == 0
    )
    return row


def main(argv: list[str] | None = None) -> int:
    """Run every size on every backend, print the JSON report; exit 1 when a run failed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="1000,10000", help="comma-separated run counts")
    ap.add_argument("--backends", default="sqlite,bullmq")
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--redis-url")
    ap.add_argument("--quick", action="store_true", help="100 and 300 runs (smoke run)")
    a = ap.parse_args(argv)
    sizes = [100, 300] if a.quick else [int(x) for x in a.runs.split(",")]
    backends = a.backends.split(",")
    redis, source = None, None
    if "bullmq" in backends:
        from bullmq_bench import redis_url

        redis, source = redis_url(a.redis_url)
    rows = [measure(b, n, redis, a.timeout) for b in backends for n in sizes]
    report = {
        "benchmark": "scale",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "scenario": f"N concurrent runs of a {load_sqlite.NODES}-node fan-out/fan-in, "
        f"{WORKERS} worker processes (concurrency {CONCURRENCY} each)",
        "redis": source,
        "rows": rows,
    }
    print(json.dumps(report, indent=2))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
