"""Building blocks for crash tests with real worker processes (SIGKILL), for any adapter.

A test spawns worker processes (:class:`WorkerPool`) that import this module; they coordinate
through files in a directory named by ``FC_TEST_DIR`` and are configured through the
environment:
``FC_KILL_IN_NODE`` (that node kills its process mid-execution, once) and
``FC_KILL_AT_POINT`` / ``FC_KILL_POINT_NODE`` (the process kills itself when that node reaches
that step point of :class:`~flowcraft.distributed.adapter.BaseDistributedAdapter`, once),
``FC_STEP_DELAY`` (seconds each node sleeps, so a storm's kills land while nodes run).
:func:`sigkill_storm` drives a storm: many runs, a worker SIGKILLed at random intervals.

:data:`BLUEPRINT` is ``a -> b, c -> d -> e`` run by :func:`step`, which appends its id to a
context list: a node committed twice shows up twice (:func:`assert_exact`).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..blueprint import load_blueprint
from ..nodes import NodeContext, NodeResult

if TYPE_CHECKING:
    from ..distributed.adapter import BaseDistributedAdapter
    from ..runtime import WorkflowResult

EXPECTED_OUTPUTS = {"a": 1, "b": 2, "c": 2, "d": 5, "e": 6}
"""The outputs of an undisturbed run of :data:`BLUEPRINT`."""


def _dir() -> Path:
    return Path(os.environ["FC_TEST_DIR"])


def first_time(name: str) -> bool:
    """True once per test across all processes (a marker file created atomically)."""
    try:
        fd = os.open(_dir() / f"once-{name}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _log(ctx: NodeContext, what: str) -> None:
    with open(_dir() / "executions.log", "a", encoding="utf-8") as f:
        f.write(f"{ctx.node_id} {what} {os.getpid()}\n")


async def step(ctx: NodeContext) -> NodeResult:
    """Appends its id to a list read from the context (a doubled commit would show twice),
    logs its start and end, and returns the sum of its inputs plus one."""
    _log(ctx, "start")
    if os.environ.get("FC_KILL_IN_NODE") == ctx.node_id and first_time("node"):
        await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
    await asyncio.sleep(float(os.environ.get("FC_STEP_DELAY", "0")))
    trail = list(await ctx.context.get(f"trail.{ctx.node_id}", []))
    trail.append(ctx.node_id)
    await ctx.context.set(f"trail.{ctx.node_id}", trail)
    _log(ctx, "end")
    inp = ctx.input
    total = sum(inp.values()) if isinstance(inp, dict) else (inp or 0)
    return NodeResult(output=total + 1)


REGISTRY: dict[str, Any] = {"step": step}
"""The registry of :data:`BLUEPRINT`."""

BLUEPRINT = load_blueprint(
    {
        "id": "killme",
        "nodes": [{"id": n, "uses": "step"} for n in ("a", "b", "c", "d", "e")],
        "edges": [
            {"source": "a", "target": "b"},
            {"source": "a", "target": "c"},
            {"source": "b", "target": "d"},
            {"source": "c", "target": "d"},
            {"source": "d", "target": "e"},
        ],
    }
)
"""``a -> b, c -> d -> e``, every node :func:`step`."""


def install_kill_point() -> None:
    """In a worker process: SIGKILL the process when the node ``FC_KILL_POINT_NODE`` reaches
    the step point ``FC_KILL_AT_POINT`` (once per test); nothing when they are not set."""
    point = os.environ.get("FC_KILL_AT_POINT")
    node = os.environ.get("FC_KILL_POINT_NODE")
    if not point:
        return
    from ..distributed.adapter import BaseDistributedAdapter

    orig = BaseDistributedAdapter._fault

    async def fault(self: BaseDistributedAdapter, p: str, job: Any = None) -> None:
        if p == point and job is not None and job.node_id == node and first_time("pt"):
            os.kill(os.getpid(), signal.SIGKILL)
        await orig(self, p, job)

    BaseDistributedAdapter._fault = fault  # type: ignore[method-assign,assignment]


def executions(test_dir: Path) -> list[tuple[str, str]]:
    """``(node id, "start" | "end")`` of every node execution, in order."""
    lines = (test_dir / "executions.log").read_text().splitlines()
    return [(ln.split()[0], ln.split()[1]) for ln in lines]


def assert_exact(result: Any) -> None:
    """The run completed with the undisturbed outputs and every node committed exactly once."""
    assert result.status == "completed"
    assert result.node_statuses == dict.fromkeys("abcde", "completed")
    assert result.outputs == EXPECTED_OUTPUTS
    for n in "abcde":
        assert result.context[f"trail.{n}"] == [n]  # committed exactly once


class WorkerPool:
    """The worker processes of a crash test: ``workers`` spawned processes running
    ``target(*args)``, respawned while the run goes on when they die, stopped at the end.

    Every process that dies counts in :attr:`deaths` with its exit code in :attr:`died`,
    including one that killed itself so shortly before the run ended that the run was already
    final when the pool next looked: :meth:`stop` finds it dead (or still dying, its exit code
    ``-SIGKILL``) and counts it then. A supervisor that only counted deaths while the run was
    live would miss it and then expect a clean exit from it.
    """

    def __init__(
        self, target: Callable[..., None], args: tuple[Any, ...] = (), workers: int = 2
    ) -> None:
        self._ctx = mp.get_context("spawn")
        self._target = target
        self._args = args
        self.procs: list[BaseProcess] = [self._spawn() for _ in range(workers)]
        self.deaths = 0
        """How many worker processes died (were not stopped by :meth:`stop`)."""
        self.died: list[int | None] = []
        """The exit code of each process that died (``-9``: SIGKILL)."""

    def _spawn(self) -> BaseProcess:
        return self._ctx.Process(target=self._target, args=self._args)

    def start(self) -> None:
        """Start the workers."""
        for p in self.procs:
            p.start()

    def respawn_dead(self) -> None:
        """Count every dead worker and start a new one in its place."""
        for i, p in enumerate(self.procs):
            if not p.is_alive():
                p.join()
                self.deaths += 1
                self.died.append(p.exitcode)
                self.procs[i] = self._spawn()
                self.procs[i].start()

    async def supervise(
        self, finished: Callable[[], Awaitable[bool]], timeout: float = 60.0
    ) -> None:
        """Respawn dead workers every 50 ms until ``finished()`` (AssertionError after
        ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while not await finished():
            assert time.monotonic() < deadline, "run stuck"
            self.respawn_dead()
            await asyncio.sleep(0.05)

    async def stop(self, ready_dir: Path | None = None, timeout: float = 20.0) -> list[int | None]:
        """SIGTERM every worker still alive and wait for it to exit; returns their exit codes
        (0: a graceful stop). A worker found dead, or exiting ``-SIGKILL`` (it killed itself:
        SIGTERM never ends in SIGKILL), counts as a death instead. ``ready_dir``: first wait
        until each live worker wrote ``ready-<pid>`` there (its SIGTERM handler is
        installed)."""
        live = [p for p in self.procs if p.is_alive()]
        if ready_dir is not None:
            limit = time.monotonic() + 10
            while not all((ready_dir / f"ready-{p.pid}").exists() for p in live):
                assert time.monotonic() < limit, "a worker never became ready"
                await asyncio.sleep(0.02)
        for p in live:
            p.terminate()
        stopped: list[int | None] = []
        for p in self.procs:
            p.join(timeout)
            if p in live and p.exitcode != -signal.SIGKILL:
                stopped.append(p.exitcode)
            else:
                self.deaths += 1
                self.died.append(p.exitcode)
        return stopped

    def kill(self) -> None:
        """SIGKILL every worker still alive (cleanup after a failed test)."""
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(5)


_FINAL = ("completed", "failed", "stalled", "cancelled")


def _busy_pids() -> set[int]:
    """Worker pids with a node started and not ended (from the executions log)."""
    open_: dict[int, int] = {}
    try:
        lines = (_dir() / "executions.log").read_text().splitlines()
    except FileNotFoundError:
        return set()
    for ln in lines:
        try:
            _, what, pid = ln.split()
            n = int(pid)
        except ValueError:
            continue  # a line being written right now
        open_[n] = open_.get(n, 0) + (1 if what == "start" else -1)
    return {pid for pid, n in open_.items() if n > 0}


async def _busy_worker(pool: WorkerPool, rng: random.Random, wait: float = 2.0) -> int | None:
    """A live worker that is running a node right now (so the kill interrupts one), waiting up
    to ``wait`` s for one; else any live worker; None when none is alive."""
    until = time.monotonic() + wait
    while True:
        live = {p.pid for p in pool.procs if p.is_alive() and p.pid is not None}
        busy = sorted(live & _busy_pids())
        if busy:
            return rng.choice(busy)
        if time.monotonic() >= until:
            return rng.choice(sorted(live)) if live else None
        await asyncio.sleep(0.02)


async def sigkill_storm(
    pool: WorkerPool,
    client: BaseDistributedAdapter,
    *,
    runs: int = 20,
    kills: int = 10,
    every: tuple[float, float] = (0.15, 0.45),
    seed: int = 0,
    timeout: float = 180.0,
) -> list[WorkflowResult]:
    """A SIGKILL storm: start ``runs`` runs of :data:`BLUEPRINT` through ``client``, SIGKILL a
    random worker of the (started) ``pool`` that is running a node ``kills`` times, one every
    ``every`` seconds
    (uniform, from ``seed``), respawning the dead as a supervisor would, then wait until every
    run is final. Returns the runs' results in start order (check each with
    :func:`assert_exact`); ``pool.deaths`` counts the kills (plus any self-kill). Set
    ``FC_STEP_DELAY`` in the workers' environment so nodes are running when kills land."""
    rng = random.Random(seed)
    rids = [await client.start_run(BLUEPRINT.id, {}) for _ in range(runs)]
    deadline = time.monotonic() + timeout
    done = 0
    while done < kills:
        await asyncio.sleep(rng.uniform(*every))
        pool.respawn_dead()
        victim = await _busy_worker(pool, rng)
        if victim is not None:
            os.kill(victim, signal.SIGKILL)
            done += 1
        assert time.monotonic() < deadline, f"storm stuck after {done} kills"
    pending = list(rids)
    while pending:
        assert time.monotonic() < deadline, f"{len(pending)} of {runs} runs never ended"
        pool.respawn_dead()
        pending = [r for r in pending if (await client.status(r)).status not in _FINAL]
        await asyncio.sleep(0.05)
    return [await client.get_result(r) for r in rids]


__all__ = [
    "BLUEPRINT",
    "EXPECTED_OUTPUTS",
    "REGISTRY",
    "WorkerPool",
    "assert_exact",
    "executions",
    "first_time",
    "install_kill_point",
    "sigkill_storm",
    "step",
]
