"""flowcraft-core's pytest plugin and the conformance suite as a product: the run-view check,
the service fixtures' marker, SIGTERM stopping started servers, the ImportError naming the
``testing`` extra, and optional hooks that fail with a message naming themselves.

Plugin behaviour is observed from the outside: each test runs an inner pytest session in a
temporary directory (no conftest.py: the plugin comes from the installed entry point).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from flowcraft.testing import services


def _pytest(tmp_path: Path, files: dict[str, str], *args: str, **env: str) -> str:
    """Run pytest in ``tmp_path`` on ``files``; returns its combined output."""
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    full_env = {k: v for k, v in os.environ.items() if k != "FLOWCRAFT_VERIFY_VIEWS"}
    full_env.update(env)
    full_env["COLUMNS"] = "1000"  # short test summary lines untruncated
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", *args],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.stdout + proc.stderr


def test_a_test_whose_run_views_diverged_fails(tmp_path: Path) -> None:
    """A mismatch recorded during a test fails that test; the next test starts clean."""
    out = _pytest(
        tmp_path,
        {
            "test_views.py": """
                import os
                from flowcraft.distributed.adapter import BaseDistributedAdapter

                def test_diverges():
                    assert os.environ["FLOWCRAFT_VERIFY_VIEWS"] == "1"
                    BaseDistributedAdapter.view_errors.append("view of r1 at 3 differs")

                def test_after():
                    assert BaseDistributedAdapter.view_errors == []
            """
        },
    )
    assert "PASSED test_views.py::test_diverges" in out
    assert "ERROR test_views.py::test_diverges - Failed: worker run views diverged" in out
    assert "view of r1 at 3 differs" in out
    assert "PASSED test_views.py::test_after" in out
    assert "2 passed, 1 error" in out


def test_verify_views_is_left_as_the_user_set_it(tmp_path: Path) -> None:
    """``FLOWCRAFT_VERIFY_VIEWS`` set by the user wins over the plugin's default."""
    files = {
        "test_env.py": """
            import os

            def test_env():
                assert os.environ["FLOWCRAFT_VERIFY_VIEWS"] == "0"
        """
    }
    assert "1 passed" in _pytest(tmp_path, files, FLOWCRAFT_VERIFY_VIEWS="0")


def test_service_fixtures_mark_their_tests(tmp_path: Path) -> None:
    """Tests using a service fixture (directly or through another fixture) are marked
    ``needs_services``; the others are not."""
    files = {
        "test_marks.py": """
            import pytest

            @pytest.fixture
            def backend(moto_url):
                return moto_url

            def test_redis(redis_url):
                pass

            def test_through_a_fixture(backend):
                pass

            def test_plain(unique_prefix):
                pass
        """
    }
    selected = _pytest(tmp_path, files, "--co", "-m", "needs_services", "--strict-markers")
    assert "test_marks.py::test_redis" in selected
    assert "test_marks.py::test_through_a_fixture" in selected
    assert "test_plain" not in selected
    rest = _pytest(tmp_path, files, "--co", "-m", "not needs_services", "--strict-markers")
    assert "test_marks.py::test_plain" in rest
    assert "test_redis" not in rest


def test_an_env_url_is_the_fixture_value(tmp_path: Path) -> None:
    """``redis_url`` is ``FLOWCRAFT_TEST_REDIS_URL`` when it is set (no server is started)."""
    files = {
        "test_url.py": """
            def test_url(redis_url):
                assert redis_url == "redis://example.invalid:1/0"
        """
    }
    out = _pytest(tmp_path, files, FLOWCRAFT_TEST_REDIS_URL="redis://example.invalid:1/0")
    assert "1 passed" in out


@pytest.mark.needs_services
@pytest.mark.skipif(
    services.find_binary(services.SERVICES["redis"]) is None, reason="no redis-server binary"
)
@pytest.mark.parametrize("signals", [1, 2], ids=["once", "twice"])
def test_sigterm_stops_the_servers_a_process_started(tmp_path: Path, signals: int) -> None:
    """A process that started a throwaway Redis and then gets SIGTERM stops it first, also
    when a second SIGTERM comes while it is stopping it (``timeout`` signals the process
    group, and ``scripts/pytest-shards`` passes the signal on to its sessions as well: the
    second one used to end the process before the server it was stopping got its signal)."""
    script = textwrap.dedent(
        """
        import sys, time
        from flowcraft.testing import services
        svc = services.get_service("redis")
        stop = svc.stop

        def slow_stop():  # a window for the second signal, as a busy machine gives one
            time.sleep(0.6)
            stop()

        svc.stop = slow_stop
        print(svc.details["pid"], svc.details["port"], svc.details["dir"], flush=True)
        time.sleep(60)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "FLOWCRAFT_TEST_REDIS_URL"}
    env["FLOWCRAFT_TEST_NO_DOCKER"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        pid, port, workdir = proc.stdout.readline().split()
        assert services.redis_ping("127.0.0.1", int(port))
        proc.send_signal(signal.SIGTERM)
        if signals == 2:
            time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 5
    while services.redis_ping("127.0.0.1", int(port)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not services.redis_ping("127.0.0.1", int(port))
    assert not Path(workdir).exists()
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)


def test_importing_the_suite_without_the_testing_extra_names_it() -> None:
    """Without pytest-asyncio (or pytest, or hypothesis) the import fails with an ImportError
    that says what to install."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["pytest_asyncio"] = None  # as if it were not installed
        try:
            import flowcraft.testing.conformance
        except ImportError as exc:
            print(type(exc).__name__, exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.startswith("ImportError flowcraft.testing.conformance needs")
    assert "'pytest_asyncio' is missing" in out
    assert 'pip install "flowcraft-core[testing]"' in out


MISSING_HOOKS = """
    import pytest
    from flowcraft.distributed.contracts import Capabilities
    from flowcraft.distributed.memory import InMemoryAdapter, MemoryBroker
    from flowcraft.testing.conformance import (
        BasicsTests, DeadLetterTests, FaultTests, ValueTests,
    )


    class Wrapped:
        def __init__(self):
            self.broker = MemoryBroker(visibility_timeout=0.3)


    def make(backend, runtime_options, **kw):
        return InMemoryAdapter(backend.broker, runtime_options=runtime_options, **kw)


    class TestNoCounters(ValueTests):
        adapter_class = InMemoryAdapter

        @pytest.fixture
        def backend(self):
            return Wrapped()

        async def make_worker(self, backend, runtime_options, **kw):
            return make(backend, runtime_options, **kw)


    class TestNoDeadLetters(DeadLetterTests):
        adapter_class = InMemoryAdapter

        @pytest.fixture
        def backend(self):
            return Wrapped()

        async def make_worker(self, backend, runtime_options, **kw):
            return make(backend, runtime_options, **kw)


    class DedupingAdapter(InMemoryAdapter):
        capabilities = Capabilities(delayed_delivery=True, deduplicates_jobs=True)


    class TestNoDedupHook(FaultTests):
        adapter_class = DedupingAdapter

        @pytest.fixture
        def backend(self):
            return Wrapped()

        async def make_worker(self, backend, runtime_options, **kw):
            return DedupingAdapter(backend.broker, runtime_options=runtime_options, **kw)


    class TestNoFactory(BasicsTests):
        adapter_class = InMemoryAdapter

        @pytest.fixture
        def backend(self):
            return Wrapped()
"""


def test_missing_optional_hooks_fail_naming_the_hook(tmp_path: Path) -> None:
    """A test needing a hook the subclass did not provide fails (or skips, when the adapter
    does not declare the capability) with a message naming the hook, never an AttributeError
    inside a worker or an endless redelivery loop."""
    out = _pytest(
        tmp_path,
        {"test_hooks.py": MISSING_HOOKS},
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        "-k",
        "commits_write_only_deltas or unknown_run or unparseable or "
        "test_duplicate_delivery or linear_chain",
    )
    assert (
        "FAILED test_hooks.py::TestNoCounters::test_commits_write_only_deltas - Failed: "
        "TestNoCounters: InMemoryAdapter declares Capabilities.extra['bytes_counter'] but "
        "write_counters(backend) failed: the backend object (Wrapped) has no 'commits'; "
        "implement the hook write_counters(backend) -> (commits, bytes written so far)"
    ) in out
    assert (
        "FAILED test_hooks.py::TestNoDeadLetters::test_job_for_unknown_run_is_dead_lettered - "
        "Failed: TestNoDeadLetters: InMemoryAdapter declares Capabilities.dead_letter but the "
        "suite cannot read its dead letters; implement the hook dead_letters(backend)"
    ) in out
    assert "TestNoDeadLetters does not implement the hook enqueue_raw(backend, body)" in out
    assert out.count("FAILED test_hooks.py::TestNoDedupHook::test_duplicate_delivery[") == 4
    assert (
        "Failed: TestNoDedupHook: DedupingAdapter declares Capabilities.deduplicates_jobs, so "
        "the injected duplicates of a job would be swallowed, not delivered; implement the hook "
        "duplicate_delivery_kwargs()"
    ) in out
    assert (
        "FAILED test_hooks.py::TestNoFactory::test_linear_chain - Failed: TestNoFactory: the "
        "suite needs a factory of worker (and client) adapters on the test's backend; "
        "implement the hook make_worker(backend, runtime_options, **adapter_kwargs)"
    ) in out
    assert "AttributeError" not in out
