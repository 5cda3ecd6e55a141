"""RabbitMQ specifics beyond the conformance suite, on real servers (the service fixtures of
flowcraft-core's pytest plugin): the worker's broker connection dropped (TCP killed, or closed
by the server) while a node runs, and worker processes SIGKILLed mid-node and at step points
(the workflow and kill switches of :mod:`flowcraft.testing.killable`)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import rabbitmq_proc_app as app
from flowcraft import load_blueprint
from flowcraft.distributed.adapter import BaseDistributedAdapter
from flowcraft.testing.conformance import Cluster, until
from flowcraft.testing.conformance import scenarios as sc
from flowcraft.testing.killable import WorkerPool, assert_exact, executions, sigkill_storm
from flowcraft.testing.services import get_service
from flowcraft_rabbitmq import RabbitMQAdapter
from rabbitmq_support import RabbitBackend, rabbit

__all__ = ["rabbit"]  # the fixture, imported for pytest


# == broker connection drops =====================================================================


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 whose connections can be cut at once (both directions
    aborted with RST), as if the broker's side of the TCP connection had been killed."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.listen_port = 0
        self.accepted = 0
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_r, up_w = await asyncio.open_connection(self.host, self.port)
        self._pairs.append((writer, up_w))

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    def drop(self) -> int:
        """Abort every open connection; returns how many were cut."""
        pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            a.transport.abort()
            b.transport.abort()
        return len(pairs)

    async def close(self) -> None:
        self.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def _drop_scenario() -> sc.Scenario:
    """``s -> held -> (x, y) -> j (all)``: ``held`` blocks on gate ``go``; every node adds one
    to ``ran.<id>``, so a doubled commit would show as 2."""
    p = sc.Probe()
    reg: dict[str, Any] = {
        "s": p.node("S", count_key=True),
        "held": p.node("HELD", wait="go", started="held-started", count_key=True),
        "x": p.node(lambda c: f"x:{c.input}", count_key=True),
        "y": p.node(lambda c: f"y:{c.input}", count_key=True),
        "j": p.node(lambda c: dict(c.input), count_key=True),
    }
    bp = load_blueprint(
        {
            "id": "drop",
            "nodes": [{"id": n, "uses": n} for n in ("s", "held", "x", "y", "j")],
            "edges": [
                {"source": "s", "target": "held"},
                {"source": "held", "target": "x"},
                {"source": "held", "target": "y"},
                {"source": "x", "target": "j"},
                {"source": "y", "target": "j"},
            ],
        }
    )
    return sc.Scenario([bp], reg, p)


DROP_CONTEXT = {
    **{f"ran.{n}": 1 for n in ("s", "held", "x", "y", "j")},
    "_outputs.s": "S",
    "_outputs.held": "HELD",
    "_outputs.x": "x:HELD",
    "_outputs.y": "y:HELD",
    "_outputs.j": {"x": "x:HELD", "y": "y:HELD"},
}


async def _run_through_drop(
    rabbit: RabbitBackend, worker_url: str, cut: Any, **worker_kwargs: Any
) -> RabbitMQAdapter:
    """Run ``drop`` with ONE worker on ``worker_url``; ``await cut()`` drops its broker
    connection while ``held`` runs (its delivery unacked); then ``held`` finishes. Asserts the
    exact result; returns the worker."""
    s = _drop_scenario()
    worker = rabbit.adapter(
        worker_url, runtime_options=s.runtime_options, lease_seconds=1.0, **worker_kwargs
    )

    async def make(runtime_options: dict[str, Any], **kw: Any) -> BaseDistributedAdapter:
        if kw.get("worker_id") == "client":
            return rabbit.adapter(runtime_options=runtime_options, **kw)
        return worker

    async with Cluster(make, s.runtime_options, workers=1, timeout=40.0) as c:
        rid = await c.start_run("drop")
        await until(s.probe.gate("held-started").is_set, "'held' to start", timeout=15)
        await cut()
        await until(lambda: worker.reconnects >= 1, "the worker to reconnect", timeout=15)
        s.probe.gate("go").set()
        res = await c.result(rid)
        await c.hold(0.3)  # let the redelivered 'held' be handled (a no-op)
    assert res.status == "completed"
    assert res.node_statuses == dict.fromkeys(("s", "held", "x", "y", "j"), "completed")
    assert res.context == DROP_CONTEXT
    assert s.probe.counts() == {"s": 1, "held": 1, "x": 1, "y": 1, "j": 1}
    assert c.published[rid] == ["completed"]
    return worker


async def test_broker_connection_drop_tcp_killed(rabbit: RabbitBackend) -> None:
    """The worker's TCP connection to the broker is killed while a node runs: the worker
    reconnects, the node's late ack is discarded (the broker requeued the delivery), its
    redelivery changes nothing, and the run completes exactly (every node committed once)."""
    parts = urlsplit(rabbit.amqp_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await proxy.start()
    netloc = parts.netloc.rsplit("@", 1)
    creds = netloc[0] + "@" if len(netloc) == 2 else ""
    url = f"{parts.scheme}://{creds}127.0.0.1:{proxy.listen_port}{parts.path or '/'}"
    cut: list[int] = []

    async def kill() -> None:
        cut.append(proxy.drop())

    try:
        worker = await _run_through_drop(rabbit, url, kill)
    finally:
        await proxy.close()
    assert cut[0] >= 1
    assert worker.reconnects >= 1
    assert worker.stale_acks >= 1  # the ack of 'held' belonged to the dead connection
    assert proxy.accepted >= 2


def _rabbitmqctl() -> tuple[list[str], dict[str, str]] | None:
    """How to run rabbitmqctl against the test broker: the throwaway node's own environment,
    or the machine's default node for a URL on 127.0.0.1; None when neither works."""
    svc = get_service("rabbitmq")
    env = dict(os.environ)
    env_file = Path(svc.details.get("dir", "/nonexistent")) / "rabbitmq-env.json"
    real = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
    if env_file.is_file() and real.is_file():
        env.update(json.loads(env_file.read_text()))
        cmd = [str(real)]
    elif svc.source == "env" and shutil.which("rabbitmqctl"):
        cmd = ["rabbitmqctl"]
    else:
        return None
    probe = subprocess.run([*cmd, "-q", "status"], env=env, capture_output=True, timeout=60)
    return (cmd, env) if probe.returncode == 0 else None


async def test_broker_connection_closed_by_server(rabbit: RabbitBackend) -> None:
    """``rabbitmqctl close_connection`` closes the worker's connection from the broker side
    while a node runs: the worker reconnects and the run completes exactly."""
    ctl = await asyncio.to_thread(_rabbitmqctl)
    if ctl is None:
        pytest.skip("rabbitmqctl cannot reach the test broker (the TCP-kill test covers drops)")
    cmd, env = ctl

    def close_worker_connection(name: str) -> int:
        out = subprocess.run(
            [*cmd, "-q", "list_connections", "pid", "client_properties"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        pids = [ln.split("\t", 1)[0] for ln in out.splitlines() if name in ln]
        for pid in pids:
            subprocess.run(
                [*cmd, "close_connection", pid, "flowcraft test: server-side close"],
                env=env,
                capture_output=True,
                timeout=60,
                check=True,
            )
        return len(pids)

    closed: list[int] = []
    name = f"drop-{rabbit.tag}"

    async def close() -> None:
        closed.append(await asyncio.to_thread(close_worker_connection, name))

    worker = await _run_through_drop(rabbit, rabbit.amqp_url, close, connection_name=name)
    assert closed == [1]
    assert worker.reconnects >= 1


# == SIGKILL of worker processes =================================================================


async def _supervised(
    rabbit: RabbitBackend,
    tmp: Path,
    env: dict[str, str],
    storm: dict[str, Any] | None = None,
    inline: int | None = None,
) -> tuple[list[Any], int]:
    """Run ``killme`` on 2 worker processes, respawning any that dies; returns the results and
    how many workers died. ``storm``: instead of one run, :func:`sigkill_storm` with these
    arguments (many runs, random SIGKILLs). ``inline``: the workers' inline successors
    (default: the adapter's)."""
    parts = urlsplit(rabbit.amqp_url)
    query = [
        *parse_qsl(parts.query),
        ("queue", rabbit.queue),
        ("schema", rabbit.schema),
        ("postgres", rabbit.postgres_url),
        ("redis", rabbit.redis_url),
        ("redis_prefix", rabbit.prefix),
        *([("inline", str(inline))] if inline is not None else []),
    ]
    worker_url = urlunsplit(parts._replace(query=urlencode(query)))
    full_env = {**env, "FC_TEST_DIR": str(tmp), "FC_WORKER_URL": worker_url}
    old = {k: os.environ.get(k) for k in full_env}
    os.environ.update(full_env)
    pool = WorkerPool(app.worker_main)
    client = rabbit.adapter(
        runtime_options={"registry": app.REGISTRY, "blueprints": [app.BLUEPRINT]}
    )
    try:
        pool.start()
        if storm is not None:
            results = await sigkill_storm(pool, client, **storm)
        else:
            rid = await client.start_run("killme", {})

            async def final() -> bool:
                st = await client.status(rid)
                return st.status in ("completed", "failed", "stalled", "cancelled")

            await pool.supervise(final)
            results = [await client.get_result(rid)]
        await pool.stop()  # a worker that killed itself just before the run ended counts too
        return results, pool.deaths
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        pool.kill()


@pytest.mark.slow
async def test_sigkill_worker_mid_node(rabbit: RabbitBackend, tmp_path: Path) -> None:
    """A worker process is SIGKILLed while node ``b`` runs: the broker requeues its delivery
    when the connection dies, the surviving (or respawned) worker runs ``b`` again once the
    dead worker's lease expires, and every node is committed exactly once."""
    (result,), deaths = await _supervised(rabbit, tmp_path, {"FC_KILL_IN_NODE": "b"})
    assert_exact(result)
    assert deaths == 1
    ex = executions(tmp_path)
    assert ex.count(("b", "start")) == 2
    assert ex.count(("b", "end")) == 1
    for n in "acde":
        assert ex.count((n, "start")) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "node"),
    [("before_commit", "c"), ("after_commit", "c"), ("between_enqueues", "a")],
)
async def test_sigkill_worker_at_step_point(
    rabbit: RabbitBackend, tmp_path: Path, point: str, node: str
) -> None:
    """A worker process is SIGKILLed at a step point of ``node``: exact result; the node runs
    again only if it died before its commit. (Between two enqueues of one delivered job:
    every node a job, as inline the fan-out runs one successor itself and enqueues one.)"""
    env = {"FC_KILL_AT_POINT": point, "FC_KILL_POINT_NODE": node}
    inline = 0 if point == "between_enqueues" else None
    (result,), deaths = await _supervised(rabbit, tmp_path, env, inline=inline)
    assert_exact(result)
    assert deaths == 1
    ex = executions(tmp_path)
    expected_runs = 2 if point == "before_commit" else 1
    assert ex.count((node, "end")) == expected_runs


@pytest.mark.slow
async def test_sigkill_storm(rabbit: RabbitBackend, tmp_path: Path) -> None:
    """30 runs while a random worker is SIGKILLed 10 times (every 0.3-0.9 s, nodes taking
    0.2 s, so kills land mid-node): every run ends with exactly the undisturbed result, each
    node committed once."""
    storm = {"runs": 30, "kills": 10, "every": (0.3, 0.9)}
    results, deaths = await _supervised(rabbit, tmp_path, {"FC_STEP_DELAY": "0.2"}, storm)
    for res in results:
        assert_exact(res)
    assert deaths == 10
    ex = executions(tmp_path)
    assert ex.count(("a", "end")) >= 30
    assert len(ex) > 2 * 5 * 30, "no kill interrupted a node"
