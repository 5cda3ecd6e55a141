"""BullMQ workers as real processes, killed with SIGKILL mid-node and at every step of a commit.

Workers are started through the ``redis://`` backend URL (flowcraft-bullmq's entry point) by
``flowcraft.distributed.backends.run_worker``, exactly as ``flowcraft worker`` does. A
supervisor (:class:`~flowcraft.testing.killable.WorkerPool`) respawns dead workers. The run
must end with exactly the result of an undisturbed run, and every node must be committed
exactly once (each node appends its id to a context list, so a doubled commit shows as two
entries). Recovery is BullMQ's: the killed worker's job
lock expires and the stalled-job check hands the job to a live worker.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from flowcraft.testing.killable import WorkerPool, assert_exact, executions, sigkill_storm

sys.path.insert(0, str(Path(__file__).parent))

import bullmq_proc_app as app
from flowcraft_bullmq import BullMQAdapter


async def _supervised_run(
    redis_url: str,
    prefix: str,
    tmp: Path,
    env: dict[str, str],
    workers: int = 2,
    inline: int | None = None,
) -> tuple[Any, int]:
    """Run ``killme`` with ``workers`` supervised worker processes; returns the result and
    how many workers died (each by its own SIGKILL). Afterwards every live worker gets SIGTERM
    and must exit cleanly (exit code 0) within 20 s: a graceful stop that drains and closes.
    ``inline`` overrides the workers' ``inline_successors``."""
    url = f"{redis_url}?queue=kill&prefix={prefix}"
    if inline is not None:
        url += f"&inline={inline}"
    env = {"FC_TEST_DIR": str(tmp), **env}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    pool = WorkerPool(app.worker_main, (url,), workers)
    client = BullMQAdapter(
        redis_url,
        queue_name="kill",
        prefix=prefix,
        runtime_options={"registry": app.REGISTRY, "blueprints": [app.BLUEPRINT]},
    )
    try:
        pool.start()
        rid = await client.start_run("killme", {})

        async def final() -> bool:
            st = await client.status(rid)
            return st.status in ("completed", "failed", "stalled", "cancelled")

        await pool.supervise(final)
        result = await client.get_result(rid)
        stopped = await pool.stop(ready_dir=tmp)
        assert stopped == [0] * len(stopped)  # every worker still alive stopped gracefully
        assert pool.died == [-signal.SIGKILL] * pool.deaths
        return result, pool.deaths
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        pool.kill()
        r = client.redis
        keys = [k async for k in r.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await r.unlink(*keys)
        await client.aclose()


@pytest.mark.slow
async def test_undisturbed_run_gives_the_reference_result(
    redis_url: str, unique_prefix: str, tmp_path: Path
) -> None:
    result, deaths = await _supervised_run(redis_url, unique_prefix, tmp_path, {})
    assert_exact(result)
    assert deaths == 0
    assert sorted(executions(tmp_path)) == sorted(
        [(n, "start") for n in "abcde"] + [(n, "end") for n in "abcde"]
    )


@pytest.mark.slow
async def test_sigkill_mid_node(redis_url: str, unique_prefix: str, tmp_path: Path) -> None:
    env = {"FC_KILL_IN_NODE": "b"}
    result, deaths = await _supervised_run(redis_url, unique_prefix, tmp_path, env)
    assert_exact(result)
    assert deaths == 1
    ex = executions(tmp_path)
    assert ex.count(("b", "start")) == 2
    assert ex.count(("b", "end")) == 1
    for n in "acde":
        assert ex.count((n, "start")) == 1


_STEP_KILLS = [
    ("after_receive", "d", 0),
    ("after_execute", "c", 0),
    ("before_commit", "c", 0),
    ("after_commit", "c", 0),
    ("between_enqueues", "a", 0),
    # Inline successors (the default): the killed node runs inside another node's job, and
    # that job's redelivery recovers it. (Receiving and enqueueing are steps of delivered
    # jobs only.)
    ("before_execute", "b", 64),
    ("after_execute", "c", 64),
    ("before_commit", "c", 64),
    ("after_commit", "d", 64),
    ("before_execute", "e", 64),
]


@pytest.mark.slow
@pytest.mark.parametrize(("point", "node", "inline"), _STEP_KILLS)
async def test_sigkill_at_step_point(
    redis_url: str, unique_prefix: str, tmp_path: Path, point: str, node: str, inline: int
) -> None:
    """A worker process SIGKILLs itself when ``node`` reaches ``point``, with every node a job
    (``inline=0``) or with inline successors (``inline=64``)."""
    env = {"FC_KILL_AT_POINT": point, "FC_KILL_POINT_NODE": node}
    result, deaths = await _supervised_run(redis_url, unique_prefix, tmp_path, env, inline=inline)
    assert_exact(result)
    assert deaths == 1
    ex = executions(tmp_path)
    committed_before_kill = point in ("after_commit", "between_enqueues")
    ran_before_kill = point not in ("after_receive", "before_execute")
    expected_runs = 1 if committed_before_kill or not ran_before_kill else 2
    assert ex.count((node, "end")) == expected_runs


@pytest.mark.slow
async def test_sigkill_storm(redis_url: str, unique_prefix: str, tmp_path: Path) -> None:
    """30 runs while a random worker is SIGKILLed 10 times (every 0.3-0.9 s, nodes taking
    0.2 s, so kills land mid-node): every run ends with exactly the undisturbed result, each
    node committed once; the surviving workers stop gracefully."""
    url = f"{redis_url}?queue=kill&prefix={unique_prefix}"
    env = {"FC_TEST_DIR": str(tmp_path), "FC_STEP_DELAY": "0.2"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    pool = WorkerPool(app.worker_main, (url,), 2)
    client = BullMQAdapter(
        redis_url,
        queue_name="kill",
        prefix=unique_prefix,
        runtime_options={"registry": app.REGISTRY, "blueprints": [app.BLUEPRINT]},
    )
    try:
        pool.start()
        results = await sigkill_storm(pool, client, runs=30, kills=10, every=(0.3, 0.9))
        stopped = await pool.stop(ready_dir=tmp_path)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        pool.kill()
        r = client.redis
        keys = [k async for k in r.scan_iter(match=f"{unique_prefix}:*", count=500)]
        if keys:
            await r.unlink(*keys)
        await client.aclose()
    for res in results:
        assert_exact(res)
    assert stopped == [0] * len(stopped)
    assert pool.died == [-signal.SIGKILL] * 10
    ex = executions(tmp_path)
    assert ex.count(("a", "end")) >= 30
    assert len(ex) > 2 * 5 * 30, "no kill interrupted a node"
