"""The service layer itself: env URL first, then testcontainers, then a throwaway local server,
else a failure under CI and a skip outside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import services
from services import (
    SERVICES,
    LocalLaunch,
    ServiceSpec,
    ServiceUnavailable,
    find_binary,
    get_service,
    redis_ping,
    require_service,
)


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """No cached services, no env URL, no Docker: the local path is taken."""
    monkeypatch.setattr(services, "_running", {})
    monkeypatch.delenv("FLOWCRAFT_TEST_REDIS_URL", raising=False)
    monkeypatch.setenv("FLOWCRAFT_TEST_NO_DOCKER", "1")


def test_an_env_url_wins(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCRAFT_TEST_REDIS_URL", "redis://example.invalid:1/0")
    svc = get_service("redis")
    assert (svc.url, svc.source, svc.stop) == ("redis://example.invalid:1/0", "env", None)


@pytest.mark.skipif(find_binary(SERVICES["redis"]) is None, reason="no redis-server binary")
def test_a_throwaway_redis_on_a_free_loopback_port(fresh: None) -> None:
    svc = get_service("redis")
    try:
        assert svc.source == "local"
        port = svc.details["port"]
        assert svc.url == f"redis://127.0.0.1:{port}/0"
        assert redis_ping("127.0.0.1", port)
        assert get_service("redis") is svc  # shared per process
        workdir = Path(svc.details["dir"])
        assert workdir.is_dir()
    finally:
        assert svc.stop is not None
        svc.stop()
    assert not redis_ping("127.0.0.1", port)
    assert not workdir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(svc.details["pid"], 0)


def _missing_spec() -> ServiceSpec:
    return ServiceSpec(
        name="nothing",
        binaries=("flowcraft-no-such-server",),
        url=lambda h, p: f"x://{h}:{p}",
        probe=lambda h, p: False,
        launch=LocalLaunch(lambda b, p, d: [b]),
        image="nothing:latest",
        container_port=1,
        install="apt-get install nothing",
    )


def test_an_unavailable_service_names_everything_that_was_tried(
    fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(SERVICES, "nothing", _missing_spec())
    with pytest.raises(ServiceUnavailable) as err:
        get_service("nothing")
    msg = str(err.value)
    assert "$FLOWCRAFT_TEST_NOTHING_URL is not set" in msg
    assert "no Docker engine answers" in msg
    assert "no flowcraft-no-such-server binary (install: apt-get install nothing)" in msg
    assert "scripts/install-services nothing" in msg


def test_unavailable_fails_under_ci_and_skips_elsewhere(
    fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(SERVICES, "nothing", _missing_spec())
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set, so this is a failure"):
        require_service("nothing")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="skipped because CI is not set"):
        require_service("nothing")


def test_a_server_that_dies_at_start_is_reported(
    fresh: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = tmp_path / "dies"
    script.write_text("#!/bin/sh\necho broken config >&2\nexit 3\n")
    script.chmod(0o755)
    spec = _missing_spec()
    spec = ServiceSpec(**{**spec.__dict__, "binaries": (str(script),), "image": None})
    monkeypatch.setitem(SERVICES, "nothing", spec)
    with pytest.raises(ServiceUnavailable, match="exited with code 3") as err:
        get_service("nothing")
    assert "broken config" in str(err.value)


def test_every_named_service_has_a_spec() -> None:
    names = {"redis", "rabbitmq", "postgres", "moto", "azurite", "cosmos", "pubsub"}
    names |= {"firestore", "kafka", "cassandra12", "cloudflare"}
    assert names <= set(SERVICES)
    for spec in SERVICES.values():
        assert spec.env_var == f"FLOWCRAFT_TEST_{spec.name.upper()}_URL"
        assert spec.binaries and spec.install
