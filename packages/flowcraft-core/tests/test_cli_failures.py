"""CLI failure modes with real processes: an unreachable backend, a blueprint that can never
start, no worker running. Each ends with one clear line and a distinct exit code within
seconds (the Redis ones, which need flowcraft-bullmq: integration-tests/test_cli_unreachable.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REG = f"{Path(__file__).with_name('cli_registry.py')}:REGISTRY"
ONE = {"id": "one", "nodes": [{"id": "a", "uses": "double", "inputs": "n"}], "edges": []}


def flowcraft(*args: str, timeout: float = 20.0) -> tuple[int, str, float]:
    """Run ``flowcraft ARGS`` in a fresh process: exit code, stderr, seconds taken."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "flowcraft", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stderr, time.monotonic() - t0


def _bp(tmp_path: Path, raw: dict[str, object] = ONE) -> str:
    path = tmp_path / "bp.json"
    path.write_text(json.dumps(raw))
    return str(path)


def test_worker_on_an_unopenable_sqlite_path_exits_4_at_once(tmp_path: Path) -> None:
    url = "sqlite:/nonexistent-dir/x.db"
    code, err, took = flowcraft("worker", "--backend", url, "-r", REG, "--blueprint", _bp(tmp_path))
    assert code == 4
    assert err.strip() == f"error: backend {url} is unreachable: unable to open database file"
    assert took < 10


def test_run_on_an_unopenable_sqlite_path_exits_4_at_once(tmp_path: Path) -> None:
    url = "sqlite:/nonexistent-dir/x.db"
    code, err, took = flowcraft("run", _bp(tmp_path), "-r", REG, "--backend", url)
    assert code == 4
    assert err.strip() == f"error: backend {url} is unreachable: unable to open database file"
    assert took < 10


def test_run_without_a_worker_says_so(tmp_path: Path) -> None:
    """No worker consumes the queue: after 5 s ``run`` says nobody picked the job up; at its
    timeout it ends with the run still ``running`` and exit code 1."""
    db = tmp_path / "fc.db"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowcraft",
            "run",
            _bp(tmp_path),
            "-r",
            REG,
            "-i",
            '{"n": 1}',
            "--backend",
            f"sqlite:{db}",
            "--timeout",
            "7",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 1
    assert f"no worker has picked up a job after 5 s: is a worker running on sqlite:{db}?" in out
    assert "Status: running" in out


def test_worker_refuses_a_blueprint_that_can_never_start(tmp_path: Path) -> None:
    bad = {"id": "bad", "nodes": [{"id": "a", "uses": "nope"}], "edges": []}
    code, err, _ = flowcraft(
        "worker",
        "--backend",
        f"sqlite:{tmp_path / 'fc.db'}",
        "-r",
        REG,
        "--blueprint",
        _bp(tmp_path, bad),
    )
    assert code == 3
    assert err.startswith("error: blueprint 'bad' can never start on this worker:")
    assert "node 'a': unknown implementation uses='nope'" in err


def test_unknown_scheme_names_the_package_that_provides_it(tmp_path: Path) -> None:
    code, err, _ = flowcraft("run", _bp(tmp_path), "-r", REG, "--backend", "nats://localhost")
    assert code == 3
    assert "unknown backend 'nats://localhost': no installed adapter provides 'nats'" in err
    from flowcraft.distributed.backends import PROVIDERS

    assert PROVIDERS["amqp"] == "flowcraft-rabbitmq"


def test_worker_prints_a_start_and_a_stop_line(tmp_path: Path) -> None:
    """A worker says what it serves once the backend answered, and that it stopped (SIGTERM:
    exit 0)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flowcraft",
            "worker",
            "--backend",
            f"sqlite:{tmp_path / 'fc.db'}",
            "-r",
            REG,
            "--blueprint",
            _bp(tmp_path),
            "-c",
            "3",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline().strip()
        assert first == (
            f"worker ready: backend sqlite:{tmp_path / 'fc.db'}, SqliteAdapter, concurrency 3, "
            "blueprints one"
        )
        proc.terminate()
        assert proc.wait(10) == 0
        assert proc.stderr.read().strip().startswith("worker stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_verbose_worker_logs_every_job(tmp_path: Path) -> None:
    """``worker -v`` logs one line per job: run, node, attempt, outcome, duration."""
    db = f"sqlite:{tmp_path / 'fc.db'}"
    bp = _bp(tmp_path)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flowcraft",
            "worker",
            "--backend",
            db,
            "-r",
            REG,
            "--blueprint",
            bp,
            "-v",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stderr is not None
        assert worker.stderr.readline().startswith("worker ready:")
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "flowcraft",
                "run",
                bp,
                "-r",
                REG,
                "-i",
                '{"n": 4}',
                "--backend",
                db,
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout)
        worker.terminate()
        assert worker.wait(10) == 0
        logged = worker.stderr.read()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    rid = result["executionId"]
    assert result["context"]["_outputs.a"] == 8
    jobs = [ln for ln in logged.splitlines() if "flowcraft.distributed INFO job run=" in ln]
    assert len(jobs) == 1
    assert f"job run={rid} node=a attempt=1: ack in " in jobs[0]


def test_run_progress_in_a_log_is_plain_lines(tmp_path: Path) -> None:
    """Not on a terminal (a pipe, a CI log), ``run --backend`` prints its progress as whole
    lines (no bar cut to the width, no control codes); the last one says every run is final."""
    db = f"sqlite:{tmp_path / 'fc.db'}"
    bp = _bp(tmp_path)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flowcraft",
            "worker",
            "--backend",
            db,
            "-r",
            REG,
            "--blueprint",
            bp,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stderr is not None
        assert worker.stderr.readline().startswith("worker ready:")
        cmd = [sys.executable, "-m", "flowcraft", "run", bp, "-r", REG, "-i", '{"n": 4}']
        run = subprocess.run(
            [*cmd, "--backend", db, "--runs", "3"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        worker.terminate()
        assert worker.wait(10) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert run.returncode == 0, run.stderr
    assert "\x1b" not in run.stdout and "\r" not in run.stdout
    progress = [ln for ln in run.stdout.splitlines() if ln.startswith(f"one on {db}: ")]
    assert progress, run.stdout
    assert progress[-1] == f"one on {db}: runs final 3/3, 3/3 node(s) done"
    assert run.stdout.rstrip().splitlines()[-1].startswith("3 run(s) in ")
