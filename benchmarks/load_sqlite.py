"""Load test: many concurrent runs of a 10-node fan-out/fan-in on the SQLite backend, executed by
separate worker processes. Prints JSON with throughput and the commit audit.

    uv run python benchmarks/load_sqlite.py [--runs 1000] [--workers 2] [--concurrency 16]

``worker_peak_rss_mib``: each worker's peak resident memory (run it with ``--runs 1000`` and
``--runs 10000`` to see how it grows with the number of runs in flight).

The audit is read from the store, not from the workers: every run must be ``completed`` with
exactly 10 completed nodes and outputs, and its version (its number of commits) must lie between
2 and 11: 1 creation plus at most one commit per node (a worker commits the outcomes of one run
that finish together in one group commit, so fewer commits than nodes is normal; more would be
a doubled commit). Exactly-once commits are also checked by the SIGKILL tests, whose nodes
append to a context list.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flowcraft import NodeContext, NodeResult, load_blueprint
from flowcraft.distributed.backends import run_worker
from flowcraft.distributed.sqlite import SqliteAdapter

WIDTH = 8


async def start(ctx: NodeContext) -> NodeResult:
    """Fan-out source."""
    return NodeResult(output=1)


async def branch(ctx: NodeContext) -> NodeResult:
    """One of the parallel branches."""
    return NodeResult(output=ctx.input + 1)


async def join(ctx: NodeContext) -> NodeResult:
    """Fan-in: sums the branch outputs (a dict keyed by predecessor)."""
    return NodeResult(output=sum(ctx.input.values()))


REGISTRY = {"start": start, "branch": branch, "join": join}

BLUEPRINT = load_blueprint(
    {
        "id": "fan10",
        "nodes": [{"id": "start", "uses": "start"}]
        + [{"id": f"b{i}", "uses": "branch"} for i in range(WIDTH)]
        + [{"id": "join", "uses": "join"}],
        "edges": [{"source": "start", "target": f"b{i}"} for i in range(WIDTH)]
        + [{"source": f"b{i}", "target": "join"} for i in range(WIDTH)],
    }
)
NODES = WIDTH + 2


def _worker(db: str, concurrency: int) -> None:
    asyncio.run(
        run_worker(
            f"sqlite:{db}", registry=REGISTRY, blueprints=[BLUEPRINT], concurrency=concurrency
        )
    )
    # peak resident memory of this worker (KiB on Linux), read by main() after the drain
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(f"{db}.rss-{os.getpid()}").write_text(str(peak), encoding="utf-8")


def _peak_rss_mib(db: str) -> list[float]:
    """The peak RSS of every worker that drained and exited, in MiB."""
    files = sorted(Path(db).parent.glob(Path(db).name + ".rss-*"))
    return [round(int(f.read_text(encoding="utf-8")) / 1024, 1) for f in files]


def audit(db: str) -> dict[str, Any]:
    """Count runs by status and runs whose version is outside 2 .. 1 + NODES."""
    conn = sqlite3.connect(db)
    try:
        by_status = dict(conn.execute("SELECT status, COUNT(*) FROM fc_runs GROUP BY status"))
        bad_versions = conn.execute(
            "SELECT COUNT(*) FROM fc_runs WHERE version NOT BETWEEN 2 AND ?", (1 + NODES,)
        ).fetchone()[0]
        commits = conn.execute("SELECT AVG(version - 1) FROM fc_runs").fetchone()[0]
        outputs = conn.execute(
            "SELECT COUNT(*) FROM fc_ctx WHERE key LIKE '\\_outputs.%' ESCAPE '\\'"
        ).fetchone()[0]
        completed_nodes = conn.execute(
            "SELECT COUNT(*) FROM fc_ctx WHERE key LIKE '\\_fc.node.%' ESCAPE '\\' "
            "AND json_extract(value, '$.status') = 'completed'"
        ).fetchone()[0]
        wrong_join = conn.execute(
            "SELECT COUNT(*) FROM fc_ctx WHERE key = '_outputs.join' AND value != ?",
            (str(2 * WIDTH),),
        ).fetchone()[0]
        odd = conn.execute(
            "SELECT run_id, version, status FROM fc_runs "
            "WHERE version NOT BETWEEN 2 AND ? OR status != ? LIMIT 5",
            (1 + NODES, "completed"),
        ).fetchall()
        examples = []
        for run_id, version, status in odd:
            nodes = dict(
                conn.execute(
                    "SELECT key, json_extract(value, '$.status') FROM fc_ctx "
                    "WHERE run_id = ? AND key LIKE '\\_fc.node.%' ESCAPE '\\'",
                    (run_id,),
                ).fetchall()
            )
            examples.append({"run": run_id, "version": version, "status": status, "nodes": nodes})
    finally:
        conn.close()
    return {
        "problem_examples": examples,
        "runs_by_status": by_status,
        "runs_with_wrong_commit_count": bad_versions,
        "node_commits_per_run": round(float(commits or 0), 2),
        "output_keys": outputs,
        "completed_node_records": completed_nodes,
        "wrong_join_results": wrong_join,
    }


async def drive(db: str, runs: int, timeout: float) -> dict[str, Any]:
    """Start ``runs`` runs, wait until all are final, return timings."""
    client = SqliteAdapter(db, runtime_options={"registry": REGISTRY, "blueprints": [BLUEPRINT]})
    t0 = time.perf_counter()
    ids = [await client.start_run("fan10", {}) for _ in range(runs)]
    t_started = time.perf_counter()
    deadline = time.monotonic() + timeout
    conn = sqlite3.connect(db)
    try:
        while True:
            left = conn.execute(
                "SELECT COUNT(*) FROM fc_runs WHERE status NOT IN "
                "('completed', 'failed', 'stalled', 'cancelled')"
            ).fetchone()[0]
            if left == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    finally:
        conn.close()
    t1 = time.perf_counter()
    client.backend.close()
    return {
        "runs": len(ids),
        "start_seconds": round(t_started - t0, 3),
        "total_seconds": round(t1 - t0, 3),
        "runs_per_s": round(runs / (t1 - t0), 1),
        "nodes_per_s": round(runs * NODES / (t1 - t0), 1),
        "unfinished": left,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the load test and print its JSON report; exit 1 if the audit finds a problem."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--db", default=None)
    a = p.parse_args(argv)
    db = a.db or os.path.join(tempfile.mkdtemp(prefix="flowcraft-load-"), "load.db")
    SqliteAdapter(db).backend.close()  # create the schema before the workers race for it
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(db, a.concurrency)) for _ in range(a.workers)]
    for pr in procs:
        pr.start()
    try:
        timing = asyncio.run(drive(db, a.runs, a.timeout))
    finally:
        for pr in procs:
            pr.terminate()  # SIGTERM: graceful drain
        for pr in procs:
            pr.join(30)
    report = {"scenario": f"{a.runs} runs of a {NODES}-node fan-out/fan-in", "workers": a.workers}
    report |= timing
    report["worker_peak_rss_mib"] = _peak_rss_mib(db)
    report["audit"] = audit(db)
    ok = (
        report["audit"]["runs_by_status"] == {"completed": a.runs}
        and report["audit"]["runs_with_wrong_commit_count"] == 0
        and report["audit"]["output_keys"] == a.runs * NODES
        and report["audit"]["completed_node_records"] == a.runs * NODES
        and report["audit"]["wrong_join_results"] == 0
    )
    report["ok"] = ok
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
