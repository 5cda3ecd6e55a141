"""Benchmark of the GCP adapter (Pub/Sub + Firestore) on the official emulators; prints one
JSON document.

    uv run python benchmarks/gcp_bench.py                 # 200-node chain and 200-wide fan
    uv run python benchmarks/gcp_bench.py --quick         # 20 nodes, one repeat
    uv run python benchmarks/gcp_bench.py --out benchmarks/results/gcp.json
    uv run python benchmarks/gcp_bench.py --markdown benchmarks/results/gcp.json

The emulators come from the test service layer (``FLOWCRAFT_TEST_PUBSUB_URL`` /
``FLOWCRAFT_TEST_FIRESTORE_URL``, else testcontainers, else throwaway local emulators). Every
measurement uses its own topics, subscriptions and collection prefix.

Measured with 1 and 2 in-process pull workers (concurrency 8, ack deadline 10 s = the
subscription's, so no per-batch deadline change; pull timeout 1 s; idle pause 5..50 ms after
an empty pull, since the emulator answers a pull with a deadline at once when it has nothing):

* ``chain``: ``n0 -> ... -> n{N-1}``, nodes per second = N / run time;
* ``fan``: ``src -> w0..w{N-1} -> join`` (``all``), nodes per second = (N + 2) / run time.

Run time is from ``start_run`` to ``result()`` returning: one warm-up run, then ``--repeat``
timed runs; the median and min..max are reported. ``api_calls_per_node`` counts the workers'
API calls during the timed runs (Pub/Sub: publish, pull (also empty ones), acknowledge,
modify_ack_deadline; Firestore: get, commit, begin_transaction, batch_get, run_query) divided
by the nodes executed, by operation; the client's own calls (start, status polls) are not in
it. ``bytes_written_per_node`` is the bytes of field names and JSON values the run-store
commits wrote, per node. ``raw_pubsub_hop_ms`` is the same Pub/Sub emulator without Flowcraft:
a chain of publish -> pull -> acknowledge hops, polled the same way (median and min..max of
``--repeat`` chains of 50 hops). The emulators are Java processes on the same 2 cores as the
workers: absolute numbers say little about Google Cloud; the call counts do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "packages" / "flowcraft-gcp" / "tests"))

from bench_common import REGISTRY, chain_bp, fan_bp, summary  # noqa: E402
from flowcraft.testing.services import get_service  # noqa: E402
from flowcraft_gcp import ApiStats, GcpAdapter  # noqa: E402
from gcp_support import GcpBackend, make_backend  # noqa: E402

WORKER = {"concurrency": 8, "ack_deadline": 10, "pull_timeout": 1.0, "idle": (0.005, 0.05)}


async def _timed_run(client: GcpAdapter, bp: str) -> float:
    t0 = time.perf_counter()
    rid = await client.start_run(bp)
    res = await client.result(rid, timeout=900)
    dt = time.perf_counter() - t0
    if res.status != "completed":
        raise RuntimeError(f"{bp} ended {res.status}: {res.errors}")
    return dt


async def measure(pubsub: str, firestore: str, n: int, workers: int, repeat: int) -> dict[str, Any]:
    """Chain and fan timings, API calls and bytes written with ``workers`` pull workers."""
    b: GcpBackend = await make_backend(pubsub, firestore)
    opts = {"registry": REGISTRY, "blueprints": [chain_bp(n), fan_bp(n)]}
    out: dict[str, Any] = {}
    try:
        ws = [b.adapter(runtime_options=opts, **WORKER) for _ in range(workers)]
        client = b.adapter(runtime_options=opts, stats=ApiStats())
        tasks = [asyncio.create_task(w.start()) for w in ws]
        try:
            for bp, nodes in (("chain", n), ("fan", n + 2)):
                await _timed_run(client, bp)  # warm-up
                b.stats.calls.clear()
                written0 = b.stats.bytes_written
                times = [await _timed_run(client, bp) for _ in range(repeat)]
                calls = dict(b.stats.calls)
                total = nodes * repeat
                out[bp] = {
                    "nodes": nodes,
                    "seconds": summary(times, 3),
                    "nodes_per_s": summary([nodes / t for t in times]),
                    "api_calls_per_node": {
                        "total": round(sum(calls.values()) / total, 2),
                        **{k: round(v / total, 2) for k, v in sorted(calls.items())},
                    },
                    "bytes_written_per_node": round((b.stats.bytes_written - written0) / total, 1),
                }
        finally:
            for w in ws:
                await w.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
        return out
    finally:
        await b.cleanup()


async def raw_pubsub_hop_ms(pubsub: str, firestore: str, hops: int, repeat: int) -> dict[str, Any]:
    """ms per publish -> pull -> acknowledge hop on the same emulator, without Flowcraft."""
    b = await make_backend(pubsub, firestore)
    try:
        assert b.res is not None and b.publisher is not None and b.subscriber is not None
        pub, sub, res = b.publisher, b.subscriber, b.res
        lo, hi = WORKER["idle"]  # type: ignore[misc]
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            await pub.publish(topic=res.topic, messages=[{"data": b"0"}])
            done, pause = 0, lo
            while done < hops:
                r = await sub.pull(subscription=res.subscription, max_messages=1, timeout=1.0)
                if not r.received_messages:
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, hi)
                    continue
                pause = lo
                for m in r.received_messages:
                    await sub.acknowledge(subscription=res.subscription, ack_ids=[m.ack_id])
                    done += 1
                    if done < hops:
                        await pub.publish(topic=res.topic, messages=[{"data": str(done).encode()}])
            samples.append((time.perf_counter() - t0) / hops * 1000)
        return summary(samples, 2)
    finally:
        await b.cleanup()


async def main() -> None:
    """Run the benchmark and print (and optionally store) the JSON document, or print the
    README table of a stored one (``--markdown``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="20 nodes, one repeat")
    ap.add_argument("--out", type=Path, help="also write the JSON to this file")
    ap.add_argument("--markdown", type=Path, help="print the table of this stored JSON")
    args = ap.parse_args()
    if args.markdown:
        import tables  # benchmarks/tables.py, beside this script

        print(tables.render("gcp", args.markdown))
        return
    n, repeat = (20, 1) if args.quick else (args.nodes, args.repeat)
    pubsub, firestore = get_service("pubsub"), get_service("firestore")
    doc: dict[str, Any] = {
        "benchmark": "flowcraft-gcp on the Pub/Sub and Firestore emulators",
        "services": {"pubsub": pubsub.source, "firestore": firestore.source},
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
        },
        "repeat": repeat,
        "worker": {k: list(v) if isinstance(v, tuple) else v for k, v in WORKER.items()},
    }
    for workers in (1, 2):
        doc[f"workers_{workers}"] = await measure(pubsub.url, firestore.url, n, workers, repeat)
    doc["raw_pubsub_hop_ms"] = await raw_pubsub_hop_ms(pubsub.url, firestore.url, 50, repeat)
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
