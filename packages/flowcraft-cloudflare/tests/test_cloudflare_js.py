"""Runs the companion Worker's own JavaScript tests (``worker/test/``, node's test runner
against workerd through Miniflare) from pytest, so the normal test command runs them. Needs
what the ``cloudflare`` service needs (node and the pinned npm packages): a failure under CI
when they are missing, a skip elsewhere."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest
from flowcraft.testing import services
from flowcraft_cloudflare import WORKER_DIR

pytestmark = pytest.mark.needs_services


def test_the_workers_javascript_tests_pass() -> None:
    node = shutil.which("node")
    miniflare = os.path.join(services.MINIFLARE_DIR, "node_modules", "miniflare")
    if node is None or not os.path.isdir(miniflare):
        services.require_service("cloudflare")  # fails under CI, skips elsewhere, naming why
        pytest.skip(f"node or {miniflare} missing: scripts/install-services cloudflare")
    env = {**os.environ, "FLOWCRAFT_MINIFLARE_DIR": services.MINIFLARE_DIR}
    proc = subprocess.Popen(
        [node, "--test", "test/"],
        cwd=WORKER_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # workerd children are stopped with the group on a timeout
    )
    try:
        out, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"node --test timed out:\n{out.decode(errors='replace')[-4000:]}")
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    assert "# pass 6" in text and "# fail 0" in text, text[-2000:]
