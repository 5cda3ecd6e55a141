"""The doorbell: cross-process wake-ups for SQLite (``flowcraft.distributed.doorbell``), and the
kit hooks it drives (``PollingConsumer(wake=...)``, ``PullSource.poke``).

Every wait here is guarded by a timeout far longer than the wake-up needs but far shorter than
the poll the test configures (an hour), so a test passes only if the wake-up itself worked.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import pytest
from flowcraft import NodeContext, NodeResult, create_flow
from flowcraft.distributed.consumer import PollingConsumer
from flowcraft.distributed.delivery import Delivery
from flowcraft.distributed.doorbell import Doorbell
from flowcraft.distributed.results import PullSource
from flowcraft.distributed.sqlite import SqliteAdapter

HOUR = 3600.0
GUARD = 20.0  # a wake-up takes microseconds; the configured polls take an hour

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX")


async def test_a_ring_wakes_each_listener_of_its_channel_once(tmp_path: Path) -> None:
    key = str(tmp_path / "db")
    a, b, other = Doorbell(key), Doorbell(key), Doorbell(key)
    ca: list[int] = []
    cb_: list[int] = []
    co: list[int] = []
    ea, eb = asyncio.Event(), asyncio.Event()
    assert a.listen("jobs", lambda: (ca.append(1), ea.set())) is not None
    assert b.listen("jobs", lambda: (cb_.append(1), eb.set())) is not None
    assert other.listen("runs", lambda: co.append(1)) is not None
    Doorbell(key).ring("jobs")
    await asyncio.wait_for(asyncio.gather(ea.wait(), eb.wait()), GUARD)
    await asyncio.sleep(0.05)  # a second callback, or one for "runs", would have run by now
    assert (ca, cb_, co) == ([1], [1], [])
    for d in (a, b, other):
        d.close()
    assert not a.dir.exists()  # the last listener removes the directory


async def test_a_ring_from_another_process_wakes_this_one(tmp_path: Path) -> None:
    key = str(tmp_path / "db")
    bell = Doorbell(key)
    calls: list[int] = []
    ev = asyncio.Event()
    assert bell.listen("runs", lambda: (calls.append(1), ev.set())) is not None
    code = (
        "import sys; from flowcraft.distributed.doorbell import Doorbell; "
        "Doorbell(sys.argv[1]).ring('runs')"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, key)
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    await asyncio.wait_for(ev.wait(), GUARD)
    assert calls == [1]
    bell.close()


async def test_a_process_that_never_closes_its_listener_leaves_no_socket(tmp_path: Path) -> None:
    key = str(tmp_path / "db")
    code = (
        "import asyncio, sys; from flowcraft.distributed.doorbell import Doorbell\n"
        "async def main():\n"
        "    assert Doorbell(sys.argv[1]).listen('runs', lambda: None) is not None\n"
        "asyncio.run(main())"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, key)
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    assert not Doorbell(key).dir.exists()  # socket and directory removed at exit


async def test_a_dead_listeners_socket_is_removed_by_the_next_ring(tmp_path: Path) -> None:
    bell = Doorbell(str(tmp_path / "db"))
    assert bell.listen("jobs", lambda: None) is not None
    dead = bell.dir / "jobs.999999.deadbeef"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(dead))
    s.close()  # bound once, nobody listens any more: what a killed process leaves
    assert dead.exists()
    bell.ring("jobs")
    assert not dead.exists()
    assert len(list(bell.dir.iterdir())) == 1  # the live listener stays
    bell.close()


async def test_a_directory_others_can_write_disables_the_doorbell(tmp_path: Path) -> None:
    bell = Doorbell(str(tmp_path / "db"))
    bell.dir.mkdir(mode=0o700)
    os.chmod(bell.dir, 0o777)
    try:
        assert bell.listen("jobs", lambda: None) is None  # polling only
        bell.ring("jobs")  # and ringing is a no-op, not an error
    finally:
        os.chmod(bell.dir, 0o700)
        bell.dir.rmdir()


async def test_polling_consumer_idle_pause_ends_when_woken() -> None:
    received: list[int] = []
    wake = asyncio.Event()

    class Engine:
        stopping = False
        _stop = asyncio.Event()

        def stop_event(self) -> asyncio.Event:
            return self._stop

        async def process_delivery(self, d: Delivery, handler: object) -> None:
            self.stopping = True
            self._stop.set()

    engine = Engine()

    async def receive(n: int) -> list[Delivery]:
        received.append(n)
        if len(received) == 1:
            asyncio.get_running_loop().call_later(0.01, wake.set)
        return [Delivery("{}", 1, 1)] if len(received) == 2 else []

    consumer = PollingConsumer(engine, receive, concurrency=1, idle=(HOUR, HOUR), wake=wake)  # type: ignore[arg-type]
    await asyncio.wait_for(consumer.run(), GUARD)
    # empty, woken, the delivery; one more receive once its slot is free, then the stop
    assert received == [1, 1, 1]
    assert not wake.is_set()  # consumed by the pause it ended


async def test_pull_source_poke_reads_statuses_at_once() -> None:
    reads: list[list[str]] = []
    status = {"r1": "running"}
    first = asyncio.Event()

    async def statuses(ids: list[str]) -> dict[str, str | None]:
        reads.append(list(ids))
        first.set()
        return {i: status[i] for i in ids}

    src = PullSource(statuses, min_delay=HOUR, max_delay=HOUR)
    waiter = asyncio.create_task(src.wait("r1", None))
    await asyncio.wait_for(first.wait(), GUARD)  # the wait's own first check
    status["r1"] = "completed"
    await asyncio.sleep(0.01)
    src.poke()
    await asyncio.wait_for(waiter, GUARD)
    assert reads == [["r1"], ["r1"]]  # the wait's check, then one poked round


async def _inc(ctx: NodeContext) -> NodeResult:
    return NodeResult(output=(ctx.input or 0) + 1)


async def test_sqlite_worker_and_client_wake_without_polling(tmp_path: Path) -> None:
    """A worker whose idle poll is an hour picks up a job another connection enqueued, and
    runs a three-node chain; the client sees the result: only the doorbell can do that."""
    db = tmp_path / "flow.db"
    flow = create_flow("bell").node("a", _inc).node("b", _inc).node("c", _inc)
    flow.edge("a", "b").edge("b", "c")
    bp = flow.to_blueprint()
    opts = {"registry": flow.registry, "blueprints": {bp.id: bp}}
    worker = SqliteAdapter(
        db, runtime_options=opts, poll_interval=HOUR, max_poll_interval=HOUR, inline_successors=0
    )
    client = SqliteAdapter(db, runtime_options=opts)
    task = asyncio.create_task(worker.start())
    try:
        await asyncio.sleep(0.2)  # the worker's first (empty) receive, then its hour-long pause
        run_id = await client.start_run(bp.id)
        result = await asyncio.wait_for(client.result(run_id, GUARD), GUARD)
        assert result.status == "completed"
        assert result.context["_outputs.c"] == 3
    finally:
        await worker.stop()
        await asyncio.wait_for(task, GUARD)
        await worker.aclose()
        await client.aclose()
