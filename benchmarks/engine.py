"""Engine-overhead benchmark: Flowcraft for Python against the TypeScript Flowcraft.

Every node does almost nothing (adds one to its input), so the time measured is the engine's
own cost per node: scheduling, routing, joins, bookkeeping. Three scenarios:

* ``chain_1000``: a linear chain of 1000 nodes, each passing ``input + 1`` on;
* ``fan_1000``: one source, 1000 parallel nodes, one ``all`` join (1002 nodes);
* ``small_runs_2000``: 2000 sequential runs of a 5-node chain (per-run setup cost).

The same scenarios run on the published TypeScript package (``benchmarks/ts/bench.mjs``,
installed with npm into a scratch directory outside the repository) unless ``--no-ts`` is
given. One JSON document is printed on stdout; see ``benchmarks/README.md`` for how to read it.

    uv run python benchmarks/engine.py [--quick] [--no-ts] [--repeat N] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import flowcraft
from flowcraft import Flow, FlowRuntime, NodeContext, NodeResult, WorkflowResult, create_flow

T = TypeVar("T")

TS_PACKAGE = "flowcraft"
TS_VERSION = "2.10.1"
"""The upstream release compared against; the newest 2.x is used when it cannot be installed."""
TS_FALLBACK_SPEC = "2"
TS_SCRIPT = Path(__file__).resolve().parent / "ts" / "bench.mjs"

SCENARIOS = ("chain_1000", "fan_1000", "small_runs_2000")

MAX_RATIO = 0.5
"""The target: Python's per-node overhead at most half of TypeScript's."""

REFERENCE_TS_US_PER_NODE: dict[str, float] = {
    "chain_1000": 60.0,
    "fan_1000": 114.0,
    "small_runs_2000": 15.7,
}
"""TypeScript Flowcraft per-node cost quoted in the issue (measured on this kind of machine)."""


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is (smaller with ``--quick``)."""

    chain: int
    fan: int
    runs: int


FULL = Sizes(chain=1000, fan=1000, runs=2000)
QUICK = Sizes(chain=100, fan=100, runs=100)


# -- nodes -------------------------------------------------------------------------------------


async def inc(ctx: NodeContext) -> NodeResult:
    """Add one to the input (a start node's input is None, counted as 0)."""
    x = ctx.input
    return NodeResult(output=(x if isinstance(x, int) else 0) + 1)


async def one(ctx: NodeContext) -> NodeResult:
    """The fan's source: output 1."""
    return NodeResult(output=1)


async def count(ctx: NodeContext) -> NodeResult:
    """The fan's join: how many predecessor outputs were delivered (a dict by predecessor)."""
    x = ctx.input
    return NodeResult(output=len(x) if isinstance(x, dict) else -1)


# -- flows -------------------------------------------------------------------------------------


def chain_flow(flow_id: str, n: int) -> Flow:
    """``n0 -> n1 -> ... -> n{n-1}``, every node ``inc``."""
    flow = create_flow(flow_id)
    for i in range(n):
        flow.node(f"n{i}", inc)
    for i in range(1, n):
        flow.edge(f"n{i - 1}", f"n{i}")
    return flow


def fan_flow(flow_id: str, n: int) -> Flow:
    """``src`` -> ``w0..w{n-1}`` (``inc``) -> ``join`` (``count``, join strategy ``all``)."""
    flow = create_flow(flow_id).node("src", one)
    for i in range(n):
        flow.node(f"w{i}", inc)
    flow.node("join", count, join="all")
    for i in range(n):
        flow.edge("src", f"w{i}").edge(f"w{i}", "join")
    return flow


def _check(result: WorkflowResult, node_id: str, expected: Any, what: str) -> None:
    got = result.outputs.get(node_id)
    if result.status != "completed" or got != expected:
        raise RuntimeError(f"{what}: status {result.status}, output {got!r}, expected {expected!r}")


# -- timing ------------------------------------------------------------------------------------


async def best_of(
    fn: Callable[[], Awaitable[T]], verify: Callable[[T], None], repeat: int
) -> float:
    """Minimum wall time in seconds of ``repeat`` timed calls, after one untimed warm-up.

    The cyclic garbage collector is off during each timed call (after a full collection);
    ``verify`` checks every call's value outside the timed section.
    """
    verify(await fn())
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            value = await fn()
            dt = time.perf_counter() - t0
        finally:
            gc.enable()
        verify(value)
        best = min(best, dt)
    return best


def _profile(label: str, fn: Callable[[], Awaitable[Any]], top: int) -> None:
    """Run ``fn`` once under cProfile and print the ``top`` functions by own time to stderr."""

    async def run() -> None:
        await fn()  # warm-up, so one-time compilation does not show up

        prof = cProfile.Profile()
        prof.enable()
        await fn()
        prof.disable()
        print(f"\n===== profile: {label} (sorted by tottime) =====", file=sys.stderr)
        stats = pstats.Stats(prof, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(top)

    asyncio.run(run())


# -- the Python engine -------------------------------------------------------------------------


class PythonBench:
    """The three scenarios on :class:`flowcraft.FlowRuntime` with default settings."""

    def __init__(self, sizes: Sizes) -> None:
        self.sizes = sizes
        self.chain = chain_flow("bench-chain", sizes.chain)
        self.fan = fan_flow("bench-fan", sizes.fan)
        self.small = chain_flow("bench-small", 5)
        self.chain_bp = self.chain.to_blueprint()
        self.fan_bp = self.fan.to_blueprint()
        self.small_bp = self.small.to_blueprint()
        registry = {**self.chain.registry, **self.fan.registry, **self.small.registry}
        self.runtime = FlowRuntime(registry=registry)

    async def run_chain(self) -> WorkflowResult:
        """One run of the long chain."""
        return await self.runtime.run(self.chain_bp)

    async def run_fan(self) -> WorkflowResult:
        """One run of the fan."""
        return await self.runtime.run(self.fan_bp)

    async def run_small(self) -> list[WorkflowResult]:
        """``sizes.runs`` sequential runs of the 5-node chain."""
        rt, bp = self.runtime, self.small_bp
        return [await rt.run(bp) for _ in range(self.sizes.runs)]

    def verify_chain(self, r: WorkflowResult) -> None:
        """The last node saw every increment."""
        _check(r, f"n{self.sizes.chain - 1}", self.sizes.chain, "chain")

    def verify_fan(self, r: WorkflowResult) -> None:
        """The join received every worker's output."""
        _check(r, "join", self.sizes.fan, "fan")

    def verify_small(self, rs: list[WorkflowResult]) -> None:
        """Every small run completed with the full count."""
        for r in rs:
            _check(r, "n4", 5, "small run")

    async def measure(self, repeat: int) -> dict[str, Any]:
        """Time every scenario; the JSON section ``python``."""
        s = self.sizes
        chain_s = await best_of(self.run_chain, self.verify_chain, repeat)
        fan_s = await best_of(self.run_fan, self.verify_fan, repeat)
        small_s = await best_of(self.run_small, self.verify_small, repeat)
        fan_nodes = s.fan + 2
        return {
            "engine": "flowcraft (Python)",
            "flowcraft_version": flowcraft.__version__,
            "concurrency": self.runtime.concurrency,
            "gc_disabled_while_timing": True,
            "chain_1000": {
                "nodes": s.chain,
                "seconds": chain_s,
                "us_per_node": chain_s * 1e6 / s.chain,
            },
            "fan_1000": {
                "nodes": fan_nodes,
                "seconds": fan_s,
                "us_per_node": fan_s * 1e6 / fan_nodes,
            },
            "small_runs_2000": {
                "runs": s.runs,
                "nodes_per_run": 5,
                "seconds": small_s,
                "runs_per_s": s.runs / small_s,
                "us_per_node": small_s * 1e6 / (s.runs * 5),
            },
        }

    def profile(self, top: int) -> None:
        """Print a cProfile of each scenario to stderr."""
        _profile("chain_1000", self.run_chain, top)
        _profile("fan_1000", self.run_fan, top)
        _profile("small_runs_2000", self.run_small, top)


# -- the TypeScript engine ---------------------------------------------------------------------


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _npm_install(workdir: Path, spec: str, npm: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", f"{TS_PACKAGE}@{spec}"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "npm_config_update_notifier": "false"},
        check=False,
    )


def run_ts(sizes: Sizes, repeat: int) -> dict[str, Any]:
    """Install the upstream package into a scratch directory and run ``bench.mjs`` there.

    Returns the script's JSON (plus the version asked for), or ``{"error": ...}`` when node or
    npm is missing, the install fails or the script fails.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(n for n, p in (("node", node), ("npm", npm)) if p is None)
        return {"error": f"{missing} not found on PATH"}
    workdir = Path(tempfile.mkdtemp(prefix="flowcraft-ts-bench-"))
    try:
        (workdir / "package.json").write_text(
            json.dumps({"name": "flowcraft-ts-bench", "private": True, "type": "module"})
        )
        requested = TS_VERSION
        proc = _npm_install(workdir, TS_VERSION, npm)
        if proc.returncode != 0:
            requested = TS_FALLBACK_SPEC
            retry = _npm_install(workdir, TS_FALLBACK_SPEC, npm)
            if retry.returncode != 0:
                return {
                    "error": f"npm install {TS_PACKAGE}@{TS_VERSION} failed: "
                    + _tail(proc.stderr or proc.stdout)
                }
        shutil.copyfile(TS_SCRIPT, workdir / "bench.mjs")
        cmd = [node, "--expose-gc", "bench.mjs", "--repeat", str(repeat)]
        cmd += ["--chain", str(sizes.chain), "--fan", str(sizes.fan), "--runs", str(sizes.runs)]
        run = subprocess.run(
            cmd, cwd=workdir, capture_output=True, text=True, timeout=1800, check=False
        )
        if run.returncode != 0:
            return {"error": f"bench.mjs failed: {_tail(run.stderr or run.stdout)}"}
        try:
            data: dict[str, Any] = json.loads(run.stdout)
        except json.JSONDecodeError as exc:
            return {"error": f"bench.mjs printed no JSON: {exc}: {_tail(run.stdout)}"}
        data["requested_version"] = requested
        return data
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- report ------------------------------------------------------------------------------------


def compare(py: Mapping[str, Any], ts: Mapping[str, Any] | None) -> dict[str, Any]:
    """Per scenario: both per-node costs, ``ratio`` = python / ts, and the target check.

    ``ratio`` and ``meets_target`` are None when there is no TypeScript measurement;
    ``ratio_vs_reference`` always compares with the issue's reference TypeScript numbers.
    """
    out: dict[str, Any] = {}
    for name in SCENARIOS:
        p = float(py[name]["us_per_node"])
        section = ts.get(name) if ts is not None else None
        t = float(section["us_per_node"]) if isinstance(section, Mapping) else None
        ratio = p / t if t else None
        ref = REFERENCE_TS_US_PER_NODE[name]
        out[name] = {
            "python_us_per_node": p,
            "ts_us_per_node": t,
            "ratio": ratio,
            "target_max_ratio": MAX_RATIO,
            "meets_target": None if ratio is None else ratio <= MAX_RATIO,
            "reference_ts_us_per_node": ref,
            "ratio_vs_reference": p / ref,
        }
    return out


def machine_info() -> dict[str, Any]:
    """Interpreter and host details recorded with the numbers.

    ``load_avg_1min`` (taken before the runs) tells whether other work shared the CPUs.
    """
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmarks and print the JSON document."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="small sizes and one repetition (smoke runs)"
    )
    ap.add_argument("--no-ts", action="store_true", help="skip the TypeScript comparison")
    ap.add_argument("--repeat", type=int, default=None, help="timed repetitions (default 3)")
    ap.add_argument(
        "--profile", action="store_true", help="also print a cProfile of each scenario to stderr"
    )
    ap.add_argument("--profile-top", type=int, default=25, help="functions per profile")
    args = ap.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        ap.error("--repeat must be >= 1")
    sizes = QUICK if args.quick else FULL

    machine = machine_info()
    bench = PythonBench(sizes)
    py = asyncio.run(bench.measure(repeat))
    if args.profile:
        bench.profile(args.profile_top)
    ts: dict[str, Any] = {"skipped": "--no-ts"} if args.no_ts else run_ts(sizes, repeat)
    has_ts = "error" not in ts and "skipped" not in ts
    doc = {
        "benchmark": "flowcraft engine overhead (trivial nodes; microseconds per node)",
        "quick": args.quick,
        "repeat": repeat,
        "sizes": {"chain": sizes.chain, "fan": sizes.fan, "small_runs": sizes.runs},
        "machine": machine,
        "python": py,
        "ts": ts,
        "comparison": compare(py, ts if has_ts else None),
        "target": {
            "description": "Python per-node overhead at most half of the TypeScript Flowcraft's",
            "max_ratio": MAX_RATIO,
            "reference_ts_us_per_node": REFERENCE_TS_US_PER_NODE,
        },
    }
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
