"""The HTTP front door over real HTTP on loopback: a uvicorn server on a free port, requests
with httpx; backends: in-memory and SQLite (a queue backend: integration-tests/test_http_bullmq.py).
Also ``flowcraft serve`` as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from flowcraft import NodeContext, NodeResult, load_blueprint
from flowcraft.distributed.adapter import BaseDistributedAdapter
from flowcraft.distributed.memory import InMemoryAdapter, MemoryBroker
from flowcraft.distributed.sqlite import SqliteAdapter
from flowcraft.http import create_app
from flowcraft.webhooks import sign

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "s3cret"
HERE = Path(__file__).parent


async def after(ctx: NodeContext) -> NodeResult:
    """Echo what the webhook or the wait delivered."""
    return NodeResult({"got": ctx.input})


async def fb(ctx: NodeContext) -> NodeResult:
    """The webhook's fallback: the error message."""
    return NodeResult(f"fallback: {ctx.error.message if ctx.error else None}")


REGISTRY = {"after": after, "fb": fb}
HOOKED = load_blueprint(
    {
        "id": "hooked",
        "nodes": [
            {
                "id": "hook",
                "uses": "webhook",
                "params": {"path": "/hooks/pay", "secretName": "FC_TEST_HOOK_SECRET"},
                "config": {"fallback": "fb"},
            },
            {"id": "after", "uses": "after"},
            {"id": "fb", "uses": "fb"},
        ],
        "edges": [{"source": "hook", "target": "after"}],
    }
)
TIMED = load_blueprint(
    {
        **HOOKED.to_dict(),
        "id": "timed",
        "nodes": [
            {
                "id": "hook",
                "uses": "webhook",
                "params": {"secretName": "FC_TEST_HOOK_SECRET", "timeout": "200ms"},
                "config": {"fallback": "fb"},
            },
            {"id": "after", "uses": "after"},
            {"id": "fb", "uses": "fb"},
        ],
    }
)
WAITING = load_blueprint(
    {
        "id": "waiting",
        "nodes": [{"id": "w", "uses": "wait"}, {"id": "after", "uses": "after"}],
        "edges": [{"source": "w", "target": "after"}],
    }
)
OPTIONS = {"registry": REGISTRY, "blueprints": [HOOKED, TIMED, WAITING]}


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture(params=["memory", "sqlite"])
async def front(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, BaseDistributedAdapter]]:
    """A worker and the front door (on its own client) on one backend; yields the base URL
    and the client."""
    monkeypatch.setenv("FC_TEST_HOOK_SECRET", SECRET)
    if request.param == "memory":
        broker = MemoryBroker()

        def make() -> BaseDistributedAdapter:
            return InMemoryAdapter(broker, runtime_options=OPTIONS, lease_seconds=2.0)
    else:
        db = str(tmp_path / "fc.db")

        def make() -> BaseDistributedAdapter:
            return SqliteAdapter(db, runtime_options=OPTIONS, lease_seconds=2.0)

    worker, client = make(), make()
    task = asyncio.create_task(worker.start())
    try:
        async with serving(create_app(client, token=TOKEN, max_body=1000)) as url:
            yield url, client
    finally:
        await worker.stop()
        await task
        await worker.aclose()
        await client.aclose()


async def _until(http: httpx.AsyncClient, rid: str, status: str) -> dict[str, Any]:
    for _ in range(500):
        st: dict[str, Any] = (await http.get(f"/runs/{rid}", headers=AUTH)).json()
        if st["status"] == status:
            return st
        await asyncio.sleep(0.01)
    raise AssertionError(f"run {rid} never became {status}")


def _signed(body: bytes, delivery: str, secret: str = SECRET, age: int = 0) -> dict[str, str]:
    return {
        "Flowcraft-Signature": sign(secret, body, int(time.time()) - age),
        "Flowcraft-Delivery": delivery,
        "Content-Type": "application/json",
    }


async def test_run_api_start_status_resume_result(front: tuple[str, Any]) -> None:
    url, _ = front
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post(
            "/runs", json={"blueprintId": "waiting", "context": {"k": 1}}, headers=AUTH
        )
        assert r.status_code == 201
        rid = r.json()["runId"]
        st = await _until(http, rid, "awaiting")
        assert list(st["awaiting"]) == ["w"]
        pending = await http.get(f"/runs/{rid}/result", params={"wait": 0.1}, headers=AUTH)
        assert (pending.status_code, pending.json()["status"]) == (202, "awaiting")
        r = await http.post(
            f"/runs/{rid}/resume", json={"nodeId": "w", "output": "yes"}, headers=AUTH
        )
        assert (r.status_code, r.json()) == (202, {"status": "resumed"})
        again = await http.post(f"/runs/{rid}/resume", json={"nodeId": "w"}, headers=AUTH)
        assert again.status_code == 409
        res = await http.get(f"/runs/{rid}/result", params={"wait": 10}, headers=AUTH)
        assert res.status_code == 200
        doc = res.json()
        assert doc["status"] == "completed"
        assert doc["context"] == {"k": 1, "_outputs.w": "yes", "_outputs.after": {"got": "yes"}}
        assert (await http.get("/runs", headers=AUTH)).json() == {"runs": [], "cursor": None}
        assert (await http.post(f"/runs/{rid}/cancel", headers=AUTH)).json() == {"cancelled": False}
        missing = await http.get("/runs/nope", headers=AUTH)
        assert missing.status_code == 404
        bad = await http.post("/runs", content=b"[1]", headers=AUTH)
        assert (bad.status_code, bad.json()) == (
            400,
            {"error": "request body must be a JSON object"},
        )
        unknown = await http.post("/runs", json={"blueprintId": "zzz"}, headers=AUTH)
        assert unknown.status_code == 404


async def test_run_api_refuses_requests_without_the_token(front: tuple[str, Any]) -> None:
    url, client = front
    rid = await client.start_run("waiting")
    async with httpx.AsyncClient(base_url=url) as http:
        await _until(http, rid, "awaiting")  # the worker parked it before the refused calls
        calls = [
            http.post("/runs", json={"blueprintId": "waiting"}),
            http.get("/runs"),
            http.get(f"/runs/{rid}"),
            http.get(f"/runs/{rid}/result"),
            http.post(f"/runs/{rid}/resume", json={}),
            http.post(f"/runs/{rid}/cancel"),
            http.get(f"/runs/{rid}", headers={"Authorization": "Bearer wrong"}),
        ]
        answers = [await c for c in calls]
        assert [a.status_code for a in answers] == [401] * 7
        assert answers[0].json() == {"error": "missing or wrong bearer token"}
        spec = (await http.get("/openapi.json")).json()
        assert spec["openapi"] == "3.1.0" and "/runs/{runId}/resume" in spec["paths"]
        assert (await http.get("/healthz")).json() == {"status": "ok"}
    st = await client.status(rid)
    assert st.status == "awaiting"  # nothing was resumed or cancelled
    ids, _ = await client.list_active_runs()
    assert ids == [rid]  # nothing was started


async def test_webhook_deliveries_over_http(front: tuple[str, Any]) -> None:
    url, client = front
    rid = await client.start_run("hooked")
    async with httpx.AsyncClient(base_url=url) as http:
        st = await _until(http, rid, "awaiting")
        hook = st["awaiting"]["hook"]
        path = hook["url"]
        assert path.startswith("/hooks/pay/")
        body = json.dumps({"amount": 5}).encode()
        refused = [
            await http.post(path, content=body, headers=_signed(body, "d1", secret="nope")),
            await http.post(path, content=body, headers=_signed(body, "d1", age=3600)),
            await http.post(path, content=b"x" * 1001, headers=_signed(b"x" * 1001, "d1")),
            await http.post(path + "x", content=body, headers=_signed(body, "d1")),
            await http.post(
                "/hooks/other/" + hook["endpointId"], content=body, headers=_signed(body, "d1")
            ),
        ]
        assert [r.status_code for r in refused] == [401, 401, 413, 404, 404]
        assert (await _until(http, rid, "awaiting"))["awaiting"]["hook"] == hook
        ok = await http.post(path + "?source=psp", content=body, headers=_signed(body, "d1"))
        assert (ok.status_code, ok.json()) == (202, {"status": "resumed", "runId": rid})
        res = (await http.get(f"/runs/{rid}/result", params={"wait": 10}, headers=AUTH)).json()
        replay = await http.post(path, content=body, headers=_signed(body, "d1"))
        other = await http.post(path, content=body, headers=_signed(body, "d2"))
    assert (replay.status_code, replay.json()["status"]) == (200, "duplicate")
    assert other.status_code == 410
    assert res["status"] == "completed"
    out = res["context"]["_outputs.hook"]
    assert out["body"] == {"amount": 5}
    assert out["query"] == {"source": "psp"}
    assert out["deliveryId"] == "d1"
    assert out["headers"]["content-type"] == "application/json"
    assert res["context"]["_outputs.after"] == {"got": out}


async def test_webhook_timeout_runs_the_fallback(front: tuple[str, Any]) -> None:
    url, client = front
    rid = await client.start_run("timed")
    async with httpx.AsyncClient(base_url=url) as http:
        st = await _until(http, rid, "awaiting")
        path = st["awaiting"]["hook"]["url"]
        assert path.startswith("/hooks/")
        res = (await http.get(f"/runs/{rid}/result", params={"wait": 10}, headers=AUTH)).json()
        late = await http.post(path, content=b"{}", headers=_signed(b"{}", "late"))
    assert late.status_code == 404
    assert res["nodeStatuses"] == {"hook": "recovered", "after": "completed", "fb": "completed"}
    assert res["context"]["_outputs.fb"].startswith("fallback: webhook '/hooks/")


def _serve_args(tmp_path: Path, bp: Path) -> list[str]:
    """``flowcraft serve`` on SQLite in ``tmp_path`` with one worker, any free port."""
    return [
        "serve",
        "--backend",
        f"sqlite:{tmp_path / 'fc.db'}",
        "--registry",
        f"{HERE / 'test_http.py'}:REGISTRY",
        "--blueprint",
        str(bp),
        "--port",
        "0",
        "--workers",
        "1",
    ]


def test_flowcraft_serve_process(tmp_path: Path) -> None:
    """``flowcraft serve --backend sqlite:... --workers 1`` as a real process: start a run and
    resume it over HTTP; SIGTERM stops it with exit code 0."""
    bp = tmp_path / "waiting.json"
    bp.write_text(json.dumps(WAITING.to_dict()))
    env = {**os.environ, "FLOWCRAFT_API_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowcraft", *_serve_args(tmp_path, bp)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        url = None
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "Uvicorn running on" in line:
                url = line.split("Uvicorn running on ")[1].split()[0]
        assert url, "server did not start"
        with httpx.Client(base_url=url, headers=AUTH) as http:
            rid = http.post("/runs", json={"blueprintId": "waiting"}).json()["runId"]
            for _ in range(500):
                if http.get(f"/runs/{rid}").json()["status"] == "awaiting":
                    break
                time.sleep(0.01)
            assert http.post(f"/runs/{rid}/resume", json={"output": 7}).status_code == 202
            res = http.get(f"/runs/{rid}/result", params={"wait": 10}).json()
        assert res["context"] == {"_outputs.w": 7, "_outputs.after": {"got": 7}}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _marker(signum: int, frame: Any) -> None:
    """A handler standing for the caller's own (a test session's server cleanup)."""


def test_serve_in_process_gives_the_signal_handlers_back(tmp_path: Path) -> None:
    """``flowcraft serve`` run inside a larger program (here: this test) stops on SIGTERM and
    puts the program's SIGTERM and SIGINT handlers back; it used to leave no-op handlers, so
    the rest of the process ignored SIGTERM and Ctrl-C (a CI run could not be stopped)."""
    import threading

    from flowcraft import cli_distributed  # noqa: F401  (registers serve, as main() does)
    from flowcraft.cli import app
    from typer.testing import CliRunner

    bp = tmp_path / "waiting.json"
    bp.write_text(json.dumps(WAITING.to_dict()))
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in saved:
        signal.signal(s, _marker)
    done = threading.Event()

    def terminate() -> None:  # until serve has stopped (it may still be starting)
        while not done.wait(0.5):
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate, daemon=True).start()
    try:
        result = CliRunner().invoke(
            app, _serve_args(tmp_path, bp), env={"FLOWCRAFT_API_TOKEN": TOKEN}
        )
        done.set()
        assert result.exit_code == 0, result.output
        assert signal.getsignal(signal.SIGTERM) is _marker
        assert signal.getsignal(signal.SIGINT) is _marker
    finally:
        done.set()
        for s, h in saved.items():
            signal.signal(s, h)


async def test_run_worker_in_process_gives_the_signal_handlers_back(tmp_path: Path) -> None:
    """``run_worker`` handles SIGTERM/SIGINT through the event loop while it serves, then puts
    back the handlers it found (asyncio alone resets them to the defaults)."""
    from flowcraft.distributed.backends import run_worker

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in saved:
        signal.signal(s, _marker)
    try:
        stop = asyncio.Event()
        stop.set()
        await run_worker(
            f"sqlite:{tmp_path / 'fc.db'}", registry=REGISTRY, blueprints=[WAITING], stop=stop
        )
        assert signal.getsignal(signal.SIGTERM) is _marker
        assert signal.getsignal(signal.SIGINT) is _marker
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
