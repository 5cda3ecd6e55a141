"""BullMQ adapter benchmark: Flowcraft nodes/s and per-hop latency on BullMQ + Redis, next to
raw BullMQ job throughput on the same Redis. Prints one JSON document.

    uv run python benchmarks/bullmq_bench.py [--redis-url URL] [--repeat 5] [--quick]

Flowcraft is measured twice: as shipped (``inline_successors=64``: the worker that commits a
node runs the node it made ready, so a chain hop costs one Redis round trip and no queue hop)
and with every node a BullMQ job (``inline_successors=0``), the like-for-like comparison with
raw BullMQ jobs.

Scenarios (every node is a trivial ``input + 1``; workers are separate processes):

* ``chain_200``: ``n0 -> n1 -> ... -> n199``; ``per_hop_ms`` = run time / 200;
* ``fan_200``: ``src -> w0..w199 -> join`` (``all``); 202 nodes.

Each with 1 and 2 worker processes (concurrency 8 each). Raw BullMQ, same Redis, same worker
processes: a 200-job chain (each job's processor adds the next) and 200 independent jobs.

Redis round trips per node are counted in one extra, untimed run under ``MONITOR``: every
request a client sent (a script call is one request; commands inside scripts are not), divided
by nodes, also broken down by request. ``INFO commandstats`` deltas of the timed runs (which
also count commands run inside scripts) are reported as ``redis_commands_incl_script_*``.
Without ``--redis-url`` (or ``FLOWCRAFT_TEST_REDIS_URL``) a throwaway ``redis-server`` is started
on a free port through ``integration-tests/services``, so nothing else is counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "integration-tests"))

from flowcraft import NodeContext, NodeResult, load_blueprint  # noqa: E402

WIDTH = 200
CONCURRENCY = 8
ROUND_TRIPS = {
    "inline successor (chain hop)": "1: the commit script checks the version, writes the "
    "node's changed keys, releases its lease and takes the successor's lease",
    "queued node": "2 Flowcraft (lease + incremental load in one script; commit + lease "
    "release in one script) plus BullMQ's own per job (move to active, move to finished; "
    "the add is shared by a fan-out's addBulk)",
    "version conflict": "+1 per conflict: the refused commit returns the changed keys, so the "
    "retry needs no reload",
    "group commit": "outcomes of one run finishing together in a worker share one commit",
}
"""Why a node costs the Redis round trips it does (printed with the results)."""


async def inc(ctx: NodeContext) -> NodeResult:
    """``input + 1`` (0 for a start node)."""
    inp = ctx.input
    return NodeResult(output=(inp if isinstance(inp, int) else 0) + 1)


async def join(ctx: NodeContext) -> NodeResult:
    """Sum of the fan's outputs."""
    return NodeResult(output=sum(ctx.input.values()))


REGISTRY: dict[str, Any] = {"inc": inc, "join": join}


def blueprints(n: int) -> list[Any]:
    """The chain and fan blueprints of size ``n``."""
    chain = load_blueprint(
        {
            "id": "chain",
            "nodes": [{"id": f"n{i}", "uses": "inc"} for i in range(n)],
            "edges": [{"source": f"n{i}", "target": f"n{i + 1}"} for i in range(n - 1)],
        }
    )
    fan = load_blueprint(
        {
            "id": "fan",
            "nodes": [{"id": "src", "uses": "inc"}]
            + [{"id": f"w{i}", "uses": "inc"} for i in range(n)]
            + [{"id": "join", "uses": "join"}],
            "edges": [{"source": "src", "target": f"w{i}"} for i in range(n)]
            + [{"source": f"w{i}", "target": "join"} for i in range(n)],
        }
    )
    return [chain, fan]


# -- worker processes ----------------------------------------------------------------------------


def flowcraft_worker(
    url: str, prefix: str, n: int, ready: Any, stop: Any, inline: int = 64
) -> None:
    """A Flowcraft BullMQ worker process (``inline_successors=inline``); runs until ``stop``
    is set."""
    from flowcraft_bullmq import BullMQAdapter

    async def main() -> None:
        w = BullMQAdapter(
            url,
            queue_name="bench",
            prefix=prefix,
            concurrency=CONCURRENCY,
            inline_successors=inline,
            runtime_options={"registry": REGISTRY, "blueprints": blueprints(n)},
        )
        task = asyncio.create_task(w.start())
        ready.set()
        await asyncio.to_thread(stop.wait)
        await w.stop()
        await task
        await w.aclose()

    asyncio.run(main())


def raw_worker(url: str, prefix: str, n: int, ready: Any, stop: Any) -> None:
    """A raw BullMQ worker process: a job ``{"chain": i}`` adds ``{"chain": i + 1}`` until
    ``n``; the last job of a run sets a Redis key the driver waits on."""
    import redis.asyncio as aioredis
    from bullmq import Queue, Worker

    async def main() -> None:
        client = aioredis.Redis.from_url(url, decode_responses=True)
        q = Queue("raw", {"connection": client, "prefix": prefix})
        done = aioredis.Redis.from_url(url)

        async def proc(job: Any, token: str) -> None:
            d = job.data
            if "chain" in d:
                if d["chain"] + 1 < n:
                    await q.add("j", {"chain": d["chain"] + 1, "run": d["run"]}, _opts())
                else:
                    await done.rpush(f"{prefix}:done:{d['run']}", 1)
            else:
                await done.rpush(f"{prefix}:done:{d['run']}", 1)

        w = Worker(
            "raw",
            proc,
            {"connection": url, "prefix": prefix, "concurrency": CONCURRENCY, "autorun": False},
        )
        task = asyncio.create_task(w.run())
        ready.set()
        await asyncio.to_thread(stop.wait)
        await w.close(force=True)
        await asyncio.gather(task, return_exceptions=True)
        await q.close()
        await done.aclose()

    asyncio.run(main())


def _opts() -> dict[str, Any]:
    return {"removeOnComplete": {"age": 3600, "count": 100_000}}


class Workers:
    """``count`` worker processes running ``target``."""

    def __init__(self, target: Any, count: int, url: str, prefix: str, n: int, *extra: Any) -> None:
        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        self.procs = []
        self.ready = []
        for _ in range(count):
            ready = ctx.Event()
            p = ctx.Process(target=target, args=(url, prefix, n, ready, self.stop, *extra))
            self.procs.append(p)
            self.ready.append(ready)

    def __enter__(self) -> Workers:
        for p in self.procs:
            p.start()
        for r in self.ready:
            if not r.wait(60):
                raise RuntimeError("worker process did not start")
        time.sleep(0.3)  # let the workers reach their blocking wait
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(30)
            if p.is_alive():
                p.kill()


# -- measuring ---------------------------------------------------------------------------------


async def commandstats(r: Any) -> dict[str, int]:
    """``{command: calls}`` from ``INFO commandstats``."""
    info = await r.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Calls per command between two snapshots (``info`` itself excluded)."""
    out = {k: after[k] - before.get(k, 0) for k in after if k != "info"}
    return {k: v for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v}


def _script_names() -> dict[str, str]:
    """SHA1 -> name of Flowcraft's Redis scripts (BullMQ's are reported as ``bullmq``)."""
    import hashlib

    from flowcraft.redis import store

    scripts = {
        "flowcraft commit": store._COMMIT_LUA,
        "flowcraft load": store._LOAD_SINCE_LUA,
        "flowcraft incr": store._INCR_LUA,
        "flowcraft lease release": store._CAD_LUA,
    }
    return {hashlib.sha1(t.encode()).hexdigest(): n for n, t in scripts.items()}


async def round_trips(url: str, action: Any, settle: float = 0.3) -> dict[str, int]:
    """Client requests (round trips) the server received while ``await action()`` ran, from
    ``MONITOR``: top-level commands only (commands run inside scripts are not requests),
    grouped by command (scripts by name)."""
    import redis.asyncio as aioredis

    names = _script_names()
    mon = aioredis.Redis.from_url(url)
    seen: dict[str, int] = {}
    async with mon.monitor() as m:
        started = asyncio.Event()

        async def collect() -> None:
            started.set()
            while True:
                c = await m.next_command()
                if c["client_type"] == "lua":
                    continue
                parts = c["command"].split(" ")
                name = parts[0].upper()
                if name in ("EVALSHA", "EVAL") and len(parts) > 1:
                    name = names.get(parts[1].strip('"'), "bullmq script")
                seen[name] = seen.get(name, 0) + 1

        task = asyncio.create_task(collect())
        await started.wait()
        await asyncio.sleep(0.05)
        await action()
        await asyncio.sleep(settle)  # the last acks
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await mon.aclose()
    seen.pop("MONITOR", None)
    return dict(sorted(seen.items(), key=lambda kv: -kv[1]))


class FlowcraftBench:
    """Flowcraft worker processes (``inline_successors=inline``) and a client, for
    measuring one scenario repeatedly."""

    def __init__(self, url: str, scenario: str, workers: int, n: int, inline: int) -> None:
        import redis.asyncio as aioredis
        from flowcraft_bullmq import BullMQAdapter

        self.url, self.scenario, self.n = url, scenario, n
        self.prefix = f"bench{uuid.uuid4().hex[:6]}"
        self.nodes = n if scenario == "chain" else n + 2
        self.stats = aioredis.Redis.from_url(url)
        self.client = BullMQAdapter(
            url,
            queue_name="bench",
            prefix=self.prefix,
            runtime_options={"registry": REGISTRY, "blueprints": blueprints(n)},
        )
        self.workers = Workers(flowcraft_worker, workers, url, self.prefix, n, inline)

    async def __aenter__(self) -> FlowcraftBench:
        self.workers.__enter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.workers.__exit__()
        await _unlink_prefix(self.stats, self.prefix)
        await self.client.aclose()
        await self.stats.aclose()

    async def once(self) -> dict[str, Any]:
        """One run: time, throughput and Redis commands (incl. those inside scripts)."""
        n, nodes = self.n, self.nodes
        await asyncio.sleep(0.2)  # let the previous run's acks settle
        before = await commandstats(self.stats)
        t0 = time.perf_counter()
        res = await self.client.result(await self.client.start_run(self.scenario), 300)
        dt = time.perf_counter() - t0
        after = await commandstats(self.stats)
        expect = n if self.scenario == "chain" else 2 * n
        last = f"n{n - 1}" if self.scenario == "chain" else "join"
        if res.status != "completed" or res.outputs.get(last) != expect:
            raise RuntimeError(f"wrong result: {res.status} {res.outputs.get(last)}")
        total = sum(delta(before, after).values())
        return {
            "seconds": round(dt, 4),
            "nodes": nodes,
            "nodes_per_s": round(nodes / dt, 1),
            "per_hop_ms": round(dt / nodes * 1000, 3),
            "redis_commands_incl_script_internals_per_node": round(total / nodes, 2),
        }

    async def round_trips(self, row: dict[str, Any]) -> None:
        """Add round trips per node, counted with ``MONITOR`` in one more (untimed) run."""

        async def one_run() -> None:
            await self.client.result(await self.client.start_run(self.scenario), 300)

        rt = await round_trips(self.url, one_run)
        row["round_trips_per_node"] = round(sum(rt.values()) / self.nodes, 2)
        row["round_trips_by_request"] = {k: round(v / self.nodes, 2) for k, v in rt.items()}


class RawBench:
    """Raw BullMQ worker processes: a chain of ``n`` jobs (each adds the next) or ``n``
    independent jobs."""

    def __init__(self, url: str, scenario: str, workers: int, n: int) -> None:
        import redis.asyncio as aioredis
        from bullmq import Queue

        self.scenario, self.n = scenario, n
        self.prefix = f"raw{uuid.uuid4().hex[:6]}"
        self.stats = aioredis.Redis.from_url(url)
        conn = aioredis.Redis.from_url(url, decode_responses=True)
        self.q = Queue("raw", {"connection": conn, "prefix": self.prefix})
        self.workers = Workers(raw_worker, workers, url, self.prefix, n)

    async def __aenter__(self) -> RawBench:
        self.workers.__enter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.workers.__exit__()
        await _unlink_prefix(self.stats, self.prefix)
        await self.q.close()
        await self.stats.aclose()

    async def once(self) -> dict[str, Any]:
        """One run: time, throughput and Redis commands (incl. those inside scripts)."""
        n, prefix, q = self.n, self.prefix, self.q
        await asyncio.sleep(0.2)
        run = uuid.uuid4().hex[:8]
        done_key = f"{prefix}:done:{run}"
        before = await commandstats(self.stats)
        t0 = time.perf_counter()
        if self.scenario == "chain":
            await q.add("j", {"chain": 0, "run": run}, _opts())
            expect = 1
        else:
            await q.addBulk(
                [{"name": "j", "data": {"i": k, "run": run}, "opts": _opts()} for k in range(n)]
            )
            expect = n
        for _ in range(expect):  # one entry per finished chain / job
            if await self.stats.blpop([done_key], 60) is None:
                raise RuntimeError("raw BullMQ run did not finish")
        dt = time.perf_counter() - t0
        calls = delta(before, await commandstats(self.stats))
        total = sum(calls.values()) - sum(v for k, v in calls.items() if k in ("blpop", "rpush"))
        return {
            "seconds": round(dt, 4),
            "jobs": n,
            "jobs_per_s": round(n / dt, 1),
            "per_hop_ms": round(dt / n * 1000, 3),
            "redis_commands_incl_script_internals_per_job": round(total / n, 2),
        }


async def _unlink_prefix(r: Any, prefix: str) -> None:
    keys = [k async for k in r.scan_iter(match=f"{prefix}:*", count=1000)]
    for i in range(0, len(keys), 1000):
        await r.unlink(*keys[i : i + 1000])


async def measure(
    url: str, scenario: str, workers: int, n: int, repeat: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Best of ``repeat`` runs (after a warm-up) of raw BullMQ, Flowcraft and Flowcraft with
    every node a job, the three interleaved run by run so they share the machine's state."""
    async with (
        RawBench(url, scenario, workers, n) as raw,
        FlowcraftBench(url, scenario, workers, n, 64) as fc,
        FlowcraftBench(url, scenario, workers, n, 0) as jobs,
    ):
        benches: list[Any] = [raw, fc, jobs]
        best: list[dict[str, Any] | None] = [None, None, None]
        for i in range(repeat + 1):
            for k, bench in enumerate(benches):
                row = await bench.once()
                if i == 0:
                    continue  # warm-up
                current = best[k]
                if current is None or row["seconds"] < current["seconds"]:
                    best[k] = row
        raw_row, fc_row, jobs_row = best
        assert raw_row is not None and fc_row is not None and jobs_row is not None
        await fc.round_trips(fc_row)
        await jobs.round_trips(jobs_row)
    return raw_row, fc_row, jobs_row


def redis_url(arg: str | None) -> tuple[str, str]:
    """The Redis to use and where it came from."""
    if arg:
        return arg, "argument"
    from services import get_service

    svc = get_service("redis")
    return svc.url, svc.source


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--redis-url")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="20 nodes, 1 repetition (smoke run)")
    args = ap.parse_args()
    n = 20 if args.quick else WIDTH
    repeat = 1 if args.quick else args.repeat
    url, source = redis_url(args.redis_url)
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    server = (await r.info("server"))["redis_version"]
    await r.aclose()
    out: dict[str, Any] = {
        "quick": args.quick,
        "repeat": repeat,
        "size": n,
        "concurrency_per_worker": CONCURRENCY,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_1m": round(os.getloadavg()[0], 2),
            "redis": server,
            "redis_source": source,
        },
        "flowcraft": {},
        "raw_bullmq": {},
    }
    out["flowcraft_every_node_a_job"] = {}
    for workers in (1, 2):
        for scenario in ("chain", "fan"):
            key = f"{scenario}_{n}_{workers}w"
            raw, fc, jobs = await measure(url, scenario, workers, n, repeat)
            out["raw_bullmq"][key] = raw
            out["flowcraft"][key] = fc
            out["flowcraft_every_node_a_job"][key] = jobs
    cmp: dict[str, Any] = {}
    for key, fc in out["flowcraft"].items():
        raw = out["raw_bullmq"][key]
        jobs = out["flowcraft_every_node_a_job"][key]
        cmp[key] = {
            "flowcraft_nodes_per_s": fc["nodes_per_s"],
            "flowcraft_every_node_a_job_nodes_per_s": jobs["nodes_per_s"],
            "raw_bullmq_jobs_per_s": raw["jobs_per_s"],
            "ratio_raw_over_flowcraft": round(raw["jobs_per_s"] / fc["nodes_per_s"], 2),
            "within_2x_of_raw": raw["jobs_per_s"] / fc["nodes_per_s"] <= 2.0,
            "ratio_raw_over_every_node_a_job": round(raw["jobs_per_s"] / jobs["nodes_per_s"], 2),
        }
    chain1 = out["flowcraft"][f"chain_{n}_1w"]
    out["comparison"] = cmp
    out["round_trips_explained"] = ROUND_TRIPS
    out["targets"] = {
        "typescript_reference": {
            "chain_200_1w_nodes_per_s": 280,
            "chain_per_hop_ms": 3.6,
            "fan_200_2w_nodes_per_s": 367,
        },
        "chain_nodes_per_s_min": 1000,
        "chain_per_hop_ms_max": 1.0,
        "chain_meets_nodes_per_s": chain1["nodes_per_s"] >= 1000,
        "chain_meets_per_hop": chain1["per_hop_ms"] <= 1.0,
        "x_typescript_chain": round(chain1["nodes_per_s"] / 280, 2),
        "x_typescript_fan_2w": round(out["flowcraft"][f"fan_{n}_2w"]["nodes_per_s"] / 367, 2),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
