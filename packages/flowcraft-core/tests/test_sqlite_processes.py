"""SQLite backend with real worker processes killed by SIGKILL at every step of a node.

A supervisor respawns dead workers (as systemd or Kubernetes would). The run must finish with
exactly the result of an undisturbed run, and every node must be committed exactly once: each
node appends its id to a context list, so a doubled commit would show as two entries.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from flowcraft.testing.killable import WorkerPool, assert_exact, executions, sigkill_storm

sys.path.insert(0, str(Path(__file__).parent))

import sqlite_proc_app as app
from flowcraft.distributed.sqlite import SqliteAdapter


def _env(tmp: Path, **kw: str) -> dict[str, str]:
    env = {"FC_TEST_DIR": str(tmp)}
    env.update(kw)
    return env


async def _supervised_run(tmp: Path, env: dict[str, str], workers: int = 2) -> tuple[Any, int]:
    db = str(tmp / "fc.db")
    SqliteAdapter(db).backend.close()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    pool = WorkerPool(app.worker_main, (db,), workers)
    try:
        pool.start()
        client = SqliteAdapter(
            db, runtime_options={"registry": app.REGISTRY, "blueprints": [app.BLUEPRINT]}
        )
        rid = await client.start_run("killme", {})

        async def final() -> bool:
            st = await client.status(rid)
            return st.status in ("completed", "failed", "stalled", "cancelled")

        await pool.supervise(final)
        result = await client.get_result(rid)
        client.backend.close()
        await pool.stop()  # a worker that killed itself just before the run ended counts too
        return result, pool.deaths
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        pool.kill()


@pytest.mark.slow
async def test_undisturbed_run_gives_the_reference_result(tmp_path: Path) -> None:
    result, deaths = await _supervised_run(tmp_path, _env(tmp_path))
    assert_exact(result)
    assert deaths == 0
    assert sorted(executions(tmp_path)) == sorted(
        [(n, "start") for n in "abcde"] + [(n, "end") for n in "abcde"]
    )


@pytest.mark.slow
async def test_sigkill_mid_node(tmp_path: Path) -> None:
    result, deaths = await _supervised_run(tmp_path, _env(tmp_path, FC_KILL_IN_NODE="b"))
    assert_exact(result)
    assert deaths == 1
    ex = executions(tmp_path)
    assert ex.count(("b", "start")) == 2 and ex.count(("b", "end")) == 1
    for n in "acde":
        assert ex.count((n, "start")) == 1


@pytest.mark.slow
async def test_sigkill_mid_node_with_inline_successors(tmp_path: Path) -> None:
    """As shipped (inline successors): the worker dies inside a node it runs inline after a
    commit that took that node's lease; the lease expires, the delivered job comes back, and
    only the killed node runs again."""
    env = _env(tmp_path, FC_KILL_IN_NODE="b", FC_INLINE="64")
    result, deaths = await _supervised_run(tmp_path, env)
    assert_exact(result)
    assert deaths == 1
    ex = executions(tmp_path)
    assert ex.count(("b", "start")) == 2 and ex.count(("b", "end")) == 1
    for n in "acde":
        assert ex.count((n, "start")) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "node"),
    [
        ("after_receive", "d"),
        ("after_execute", "c"),
        ("before_commit", "c"),
        ("after_commit", "c"),
        ("between_enqueues", "a"),
    ],
)
async def test_sigkill_at_step_point(tmp_path: Path, point: str, node: str) -> None:
    env = _env(tmp_path, FC_KILL_AT_POINT=point, FC_KILL_POINT_NODE=node)
    result, deaths = await _supervised_run(tmp_path, env)
    assert_exact(result)
    assert deaths == 1
    ex = executions(tmp_path)
    committed_before_kill = point in ("after_commit", "between_enqueues")
    ran_before_kill = point != "after_receive"
    expected_runs = 1 if committed_before_kill or not ran_before_kill else 2
    assert ex.count((node, "end")) == expected_runs


@pytest.mark.slow
async def test_sigkill_storm(tmp_path: Path) -> None:
    """30 runs while a random worker is SIGKILLed 10 times (every 0.3-0.9 s, nodes taking
    0.2 s, so kills land mid-node): every run ends with exactly the undisturbed result, each
    node committed once; interrupted nodes ran again."""
    db = str(tmp_path / "fc.db")
    SqliteAdapter(db).backend.close()
    env = _env(tmp_path, FC_STEP_DELAY="0.2")
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    pool = WorkerPool(app.worker_main, (db,), 2)
    client = SqliteAdapter(
        db, runtime_options={"registry": app.REGISTRY, "blueprints": [app.BLUEPRINT]}
    )
    try:
        pool.start()
        results = await sigkill_storm(pool, client, runs=30, kills=10, every=(0.3, 0.9))
        await pool.stop()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        pool.kill()
        client.backend.close()
    for r in results:
        assert_exact(r)
    assert pool.deaths == 10
    assert pool.died == [-9] * 10
    ex = executions(tmp_path)
    assert ex.count(("a", "end")) >= 30
    assert len(ex) > 2 * 5 * 30, "no kill interrupted a node"  # a start without its end
