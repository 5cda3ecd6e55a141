"""Engine-overhead benchmark: Flowcraft for Python against the TypeScript Flowcraft.

Every node does almost nothing (adds one to its input), so the time measured is the engine's
own cost per node: scheduling, routing, joins, bookkeeping. Three scenarios:

* ``chain_1000``: a linear chain of 1000 nodes, each passing ``input + 1`` on;
* ``fan_1000``: one source, 1000 parallel nodes, one ``all`` join (1002 nodes);
* ``small_runs_2000``: 2000 sequential runs of a 5-node chain (per-run setup cost).

The same scenarios run on the published TypeScript package (``benchmarks/ts/bench.mjs``,
installed with npm into a scratch directory outside the repository) unless ``--no-ts`` is
given. Both sides are measured the same way (:data:`METHOD`): interleaved rounds, garbage
collection left on, medians with min..max. One JSON document is printed on stdout; see
``benchmarks/README.md`` for how to read it; ``--markdown FILE`` prints the README table of a
stored document.

    uv run python benchmarks/engine.py [--quick] [--no-ts] [--repeat N] [--profile]
    uv run python benchmarks/engine.py --markdown benchmarks/results/engine.json
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import pstats
import shutil
import statistics
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

METHOD = (
    "interleaved rounds: each round times one call of every scenario in Python, then runs the "
    "TypeScript script for one warm-up and one timed call of every scenario; garbage "
    "collection runs normally on both sides; figures are medians over the rounds, with min..max"
)
"""How both sides are measured (the same on both)."""

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


async def timed(fn: Callable[[], Awaitable[T]], verify: Callable[[T], None]) -> float:
    """Wall time in seconds of one call of ``fn`` (garbage collection left on, as on the
    TypeScript side); ``verify`` checks its value outside the timed section."""
    t0 = time.perf_counter()
    value = await fn()
    dt = time.perf_counter() - t0
    verify(value)
    return dt


def summarize(samples: list[float], nodes: int) -> dict[str, float]:
    """Median (the reported figure) and min..max of the rounds' seconds, also per node."""
    med = statistics.median(samples)
    return {
        "seconds": med,
        "seconds_min": min(samples),
        "seconds_max": max(samples),
        "us_per_node": med * 1e6 / nodes,
        "us_per_node_min": min(samples) * 1e6 / nodes,
        "us_per_node_max": max(samples) * 1e6 / nodes,
    }


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

    async def warm(self) -> None:
        """One untimed call of each scenario (imports, caches, plans)."""
        self.verify_chain(await self.run_chain())
        self.verify_fan(await self.run_fan())
        self.verify_small(await self.run_small())

    async def round(self) -> dict[str, float]:
        """One timed call of each scenario: seconds by scenario."""
        return {
            "chain_1000": await timed(self.run_chain, self.verify_chain),
            "fan_1000": await timed(self.run_fan, self.verify_fan),
            "small_runs_2000": await timed(self.run_small, self.verify_small),
        }

    def summary(self, rounds: list[dict[str, float]]) -> dict[str, Any]:
        """The JSON section ``python``: medians and min..max over the rounds."""
        s = self.sizes
        small = summarize([r["small_runs_2000"] for r in rounds], s.runs * 5)
        return {
            "engine": "flowcraft (Python)",
            "flowcraft_version": flowcraft.__version__,
            "concurrency": self.runtime.concurrency,
            "method": METHOD,
            "chain_1000": {
                "nodes": s.chain,
                **summarize([r["chain_1000"] for r in rounds], s.chain),
            },
            "fan_1000": {
                "nodes": s.fan + 2,
                **summarize([r["fan_1000"] for r in rounds], s.fan + 2),
            },
            "small_runs_2000": {
                "runs": s.runs,
                "nodes_per_run": 5,
                "runs_per_s": s.runs / small["seconds"],
                **small,
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


class TsBench:
    """The upstream package installed into a scratch directory, run one round at a time."""

    def __init__(self, sizes: Sizes) -> None:
        self.sizes = sizes
        self.workdir: Path | None = None
        self.node: str | None = None
        self.requested = TS_VERSION
        self.error: str | None = None
        self.rounds: list[dict[str, Any]] = []

    def install(self) -> bool:
        """npm-install the package and copy the script; False (and ``error``) on failure."""
        node, npm = shutil.which("node"), shutil.which("npm")
        if node is None or npm is None:
            missing = " and ".join(n for n, p in (("node", node), ("npm", npm)) if p is None)
            self.error = f"{missing} not found on PATH"
            return False
        self.node = node
        self.workdir = Path(tempfile.mkdtemp(prefix="flowcraft-ts-bench-"))
        (self.workdir / "package.json").write_text(
            json.dumps({"name": "flowcraft-ts-bench", "private": True, "type": "module"})
        )
        proc = _npm_install(self.workdir, TS_VERSION, npm)
        if proc.returncode != 0:
            self.requested = TS_FALLBACK_SPEC
            if _npm_install(self.workdir, TS_FALLBACK_SPEC, npm).returncode != 0:
                self.error = f"npm install {TS_PACKAGE}@{TS_VERSION} failed: " + _tail(
                    proc.stderr or proc.stdout
                )
                return False
        shutil.copyfile(TS_SCRIPT, self.workdir / "bench.mjs")
        return True

    def round(self) -> bool:
        """One round (one warm-up and one timed call per scenario); False (and ``error``)
        when the script fails."""
        assert self.workdir is not None and self.node is not None
        s = self.sizes
        cmd = [self.node, "bench.mjs", "--repeat", "1", "--chain", str(s.chain)]
        cmd += ["--fan", str(s.fan), "--runs", str(s.runs)]
        try:
            run = subprocess.run(
                cmd, cwd=self.workdir, capture_output=True, text=True, timeout=1800, check=False
            )
        except (OSError, subprocess.SubprocessError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return False
        if run.returncode != 0:
            self.error = f"bench.mjs failed: {_tail(run.stderr or run.stdout)}"
            return False
        try:
            self.rounds.append(json.loads(run.stdout))
        except json.JSONDecodeError as exc:
            self.error = f"bench.mjs printed no JSON: {exc}: {_tail(run.stdout)}"
            return False
        return True

    def summary(self) -> dict[str, Any]:
        """The JSON section ``ts``: medians and min..max over the rounds (or the error)."""
        if self.error is not None:
            return {"error": self.error}
        first = self.rounds[0]
        out: dict[str, Any] = {
            k: first[k] for k in ("engine", "flowcraft_version", "node_version", "concurrency")
        }
        out["requested_version"] = self.requested
        out["method"] = METHOD
        for name in SCENARIOS:
            sec = dict(first[name])
            nodes = sec["nodes"] if "nodes" in sec else sec["runs"] * sec["nodes_per_run"]
            sec.update(summarize([r[name]["seconds"] for r in self.rounds], nodes))
            if "runs_per_s" in sec:
                sec["runs_per_s"] = sec["runs"] / sec["seconds"]
            out[name] = sec
        return out

    def close(self) -> None:
        """Remove the scratch directory."""
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


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
    ap.add_argument("--repeat", type=int, default=None, help="interleaved timed rounds (default 5)")
    ap.add_argument(
        "--profile", action="store_true", help="also print a cProfile of each scenario to stderr"
    )
    ap.add_argument("--profile-top", type=int, default=25, help="functions per profile")
    ap.add_argument("--markdown", default=None, help="print the table of this stored JSON")
    args = ap.parse_args(argv)
    if args.markdown:
        import tables  # benchmarks/tables.py, beside this script

        print(tables.render("engine", args.markdown))
        return 0
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 5)
    if repeat < 1:
        ap.error("--repeat must be >= 1")
    sizes = QUICK if args.quick else FULL

    machine = machine_info()
    bench = PythonBench(sizes)
    tsb = None if args.no_ts else TsBench(sizes)
    if tsb is not None and not tsb.install():
        tsb.close()
    rounds: list[dict[str, float]] = []

    async def go() -> None:
        await bench.warm()
        for _ in range(repeat):  # interleaved: a Python round, then a TypeScript round
            rounds.append(await bench.round())
            if tsb is not None and tsb.error is None:
                tsb.round()

    try:
        asyncio.run(go())
    finally:
        if tsb is not None:
            tsb.close()
    py = bench.summary(rounds)
    if args.profile:
        bench.profile(args.profile_top)
    ts: dict[str, Any] = {"skipped": "--no-ts"} if tsb is None else tsb.summary()
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
