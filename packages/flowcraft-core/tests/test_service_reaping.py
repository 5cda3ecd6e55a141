"""Local test servers: those whose test session died (SIGKILL) are found and stopped by the
next one; readiness probes wait for a working server, not an open port."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from flowcraft.testing.services import OWNER_FILE, postgres_ready, reap_orphans


def test_orphaned_servers_are_stopped_and_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # an owner that no longer exists
    server = subprocess.Popen(["sleep", "60"], start_new_session=True)
    orphan = tmp_path / "flowcraft-redis-abc123"
    orphan.mkdir()
    (orphan / OWNER_FILE).write_text(f"{dead.pid} {server.pid}")
    live = tmp_path / "flowcraft-postgres-def456"
    live.mkdir()
    (live / OWNER_FILE).write_text(f"{os.getpid()} 999999")  # owned by this process
    try:
        assert reap_orphans(tmp_path) == [str(orphan)]
        assert server.wait(5) == -9
        assert not orphan.exists()
        assert live.exists()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


@pytest.mark.parametrize(("first", "ready"), [(b"R", True), (b"E", False), (b"", False)])
def test_postgres_probe_waits_for_a_session_not_an_open_port(first: bytes, ready: bool) -> None:
    """A PostgreSQL that is still starting up accepts TCP but answers the startup message with
    an error ("the database system is starting up"): not ready, unlike a plain port check."""
    srv = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def answer() -> None:
        conn, _ = srv.accept()
        with conn:
            got.append(conn.recv(64))
            conn.sendall(first)

    t = threading.Thread(target=answer)
    t.start()
    try:
        assert postgres_ready("127.0.0.1", srv.getsockname()[1]) is ready
    finally:
        t.join(5)
        srv.close()
    assert got[0][4:8] == b"\x00\x03\x00\x00" and b"user\x00postgres\x00" in got[0]
