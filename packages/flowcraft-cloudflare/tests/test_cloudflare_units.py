"""What needs no Worker: the generated wrangler configuration, the package data, the URL
scheme, constructor checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flowcraft_cloudflare import (
    WORKER_DIR,
    CloudflareAdapter,
    from_url,
    wrangler_config,
    write_worker,
)
from flowcraft_cloudflare.deploy import main


def test_wrangler_config_binds_four_sqlite_durable_objects() -> None:
    cfg = wrangler_config("fc", coord_shards=8, account_id="acc", routes=["fc.example.com"])
    assert cfg["name"] == "fc"
    assert cfg["main"] == "index.js"
    assert cfg["vars"] == {"COORD_SHARDS": "8"}
    assert cfg["account_id"] == "acc"
    assert [b["name"] for b in cfg["durable_objects"]["bindings"]] == [
        "RUNS",
        "INDEX",
        "COORD",
        "INBOX",
    ]
    assert cfg["migrations"] == [
        {
            "tag": "v1",
            "new_sqlite_classes": ["RunObject", "IndexObject", "CoordObject", "InboxObject"],
        }
    ]
    assert cfg["routes"] == [{"pattern": "fc.example.com", "custom_domain": True}]
    assert "FLOWCRAFT_SECRET" not in json.dumps(cfg)
    with pytest.raises(ValueError, match="coord_shards"):
        wrangler_config(coord_shards=0)


def test_write_worker_and_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_worker(tmp_path / "w", name="x")
    assert json.loads(path.read_text())["name"] == "x"
    assert (tmp_path / "w" / "index.js").read_text() == (WORKER_DIR / "index.js").read_text()
    assert main([str(tmp_path / "cli"), "--name", "y", "--shards", "4"]) == 0
    assert json.loads((tmp_path / "cli" / "wrangler.jsonc").read_text())["vars"] == {
        "COORD_SHARDS": "4"
    }
    assert "wrangler deploy" in capsys.readouterr().out


def test_the_worker_ships_as_package_data() -> None:
    names = {p.name for p in WORKER_DIR.iterdir()}
    assert {"index.js", "serve.mjs", "package.json", "package-lock.json", "test"} <= names
    lock = json.loads((WORKER_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/miniflare"]["version"] == "4.20260426.0"
    assert lock["packages"]["node_modules/wrangler"]["version"] == "4.86.0"


async def test_from_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCRAFT_SECRET", "s" * 20)
    a = from_url(
        "cloudflare+http://127.0.0.1:8787?queue=jobs&concurrency=3&visibility=2.5&namespace=prod"
    )
    try:
        assert a.client.url == "http://127.0.0.1:8787"
        assert a.client.namespace == "prod"
        assert (a.queue, a.concurrency, a.visibility_timeout) == ("jobs", 3, 2.5)
    finally:
        await a.aclose()
    b = from_url("cloudflare://fc.example.workers.dev")
    try:
        assert b.client.url == "https://fc.example.workers.dev"
    finally:
        await b.aclose()
    monkeypatch.delenv("FLOWCRAFT_SECRET")
    with pytest.raises(ValueError, match="FLOWCRAFT_SECRET"):
        from_url("cloudflare://fc.example.workers.dev")
    with pytest.raises(ValueError, match="unknown option 'nope'"):
        from_url("cloudflare://h?nope=1", secret="x" * 20)


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="url is required"):
        CloudflareAdapter(secret="x" * 20)
    with pytest.raises(ValueError, match="secret is required"):
        CloudflareAdapter(url="http://127.0.0.1:1")
    with pytest.raises(ValueError, match="visibility_timeout"):
        CloudflareAdapter(url="http://127.0.0.1:1", secret="x" * 20, visibility_timeout=10**6)
