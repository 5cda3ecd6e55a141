"""``flowcraft worker`` / ``run`` against a Redis URL where nothing answers (needs
flowcraft-bullmq for the ``redis://`` scheme; no server): refused connections end at once
with one line and exit code 4; a server that accepts connections but never answers is given
up after 5 s, and SIGTERM stops the waiting worker within a second."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REG = f"{Path(__file__).parents[1] / 'packages/flowcraft-core/tests/cli_registry.py'}:REGISTRY"
ONE = {"id": "one", "nodes": [{"id": "a", "uses": "double", "inputs": "n"}], "edges": []}


@pytest.fixture
def bp(tmp_path: Path) -> str:
    """A one-node blueprint file."""
    path = tmp_path / "bp.json"
    path.write_text(json.dumps(ONE))
    return str(path)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


@pytest.mark.parametrize("command", ["worker", "run"])
def test_refused_connection_exits_4_with_one_line(bp: str, closed_port: int, command: str) -> None:
    url = f"redis://127.0.0.1:{closed_port}/15"
    args = ["worker", "--backend", url, "-r", REG, "--blueprint", bp]
    if command == "run":
        args = ["run", bp, "-r", REG, "--backend", url]
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "flowcraft", *args], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 4
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: backend {url} is unreachable: Error 111 connecting")
    assert time.monotonic() - t0 < 10


def test_silent_backend_is_given_up_after_5_s(bp: str, silent_port: int) -> None:
    url = f"redis://127.0.0.1:{silent_port}/15"
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowcraft",
            "worker",
            "--backend",
            url,
            "-r",
            REG,
            "--blueprint",
            bp,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 4
    assert proc.stderr.strip() == f"error: backend {url} did not answer within 5 s"
    assert 5 <= time.monotonic() - t0 < 10


def test_sigterm_stops_a_worker_waiting_on_a_silent_backend(bp: str, silent_port: int) -> None:
    url = f"redis://127.0.0.1:{silent_port}/15"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flowcraft",
            "worker",
            "--backend",
            url,
            "-r",
            REG,
            "--blueprint",
            bp,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.0)  # started, importing done, waiting on the backend
        assert proc.poll() is None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)
        assert time.monotonic() - t0 < 5
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
