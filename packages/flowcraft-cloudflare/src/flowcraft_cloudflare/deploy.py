"""Deploying the companion Worker: its files (package data under ``worker/``) and the wrangler
configuration, generated from options.

::

    python -m flowcraft_cloudflare.deploy ./flowcraft-worker --name flowcraft
    cd flowcraft-worker && npx wrangler@4 deploy && npx wrangler@4 secret put FLOWCRAFT_SECRET

The configuration binds the four Durable Object classes (``RUNS``, ``INDEX``, ``COORD``,
``INBOX``) and declares them SQLite-backed in the first migration (``new_sqlite_classes``).
``COORD_SHARDS`` must never change once keys exist (a key's shard is a hash modulo it).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any, Final

__all__ = ["DO_CLASSES", "WORKER_DIR", "main", "wrangler_config", "write_worker"]

WORKER_DIR: Final = Path(__file__).with_name("worker")
"""The companion Worker's files in this package (``index.js``, ``serve.mjs``, the pinned
``package.json`` / ``package-lock.json``, ``test/``)."""

DO_CLASSES: Final = {
    "RUNS": "RunObject",
    "INDEX": "IndexObject",
    "COORD": "CoordObject",
    "INBOX": "InboxObject",
}
"""Binding name -> Durable Object class of the Worker."""


def wrangler_config(
    name: str = "flowcraft",
    *,
    compatibility_date: str = "2025-04-01",
    coord_shards: int = 16,
    account_id: str | None = None,
    workers_dev: bool = True,
    routes: list[str] | None = None,
) -> dict[str, Any]:
    """The ``wrangler.jsonc`` of a Worker named ``name`` (a dict; JSON is valid JSONC).
    ``routes`` are custom-domain patterns (``flowcraft.example.com/*``); ``workers_dev`` serves
    ``<name>.<account>.workers.dev``. The secret is not in it: set it with ``wrangler secret
    put FLOWCRAFT_SECRET`` (at least 16 characters)."""
    if coord_shards < 1:
        raise ValueError("coord_shards must be >= 1")
    cfg: dict[str, Any] = {
        "$schema": "node_modules/wrangler/config-schema.json",
        "name": name,
        "main": "index.js",
        "compatibility_date": compatibility_date,
        "workers_dev": workers_dev,
        "vars": {"COORD_SHARDS": str(coord_shards)},
        "durable_objects": {
            "bindings": [{"name": b, "class_name": c} for b, c in DO_CLASSES.items()]
        },
        "migrations": [{"tag": "v1", "new_sqlite_classes": list(DO_CLASSES.values())}],
    }
    if account_id:
        cfg["account_id"] = account_id
    if routes:
        cfg["routes"] = [{"pattern": r, "custom_domain": True} for r in routes]
    return cfg


def write_worker(directory: str | Path, **options: Any) -> Path:
    """Write a deployable Worker into ``directory``: ``index.js`` and ``wrangler.jsonc``
    (:func:`wrangler_config` with ``options``). Returns the configuration file's path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(WORKER_DIR / "index.js", out / "index.js")
    path = out / "wrangler.jsonc"
    path.write_text(json.dumps(wrangler_config(**options), indent=2) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m flowcraft_cloudflare.deploy DIR [--name N] [--account-id A] [--shards S]
    [--route PATTERN ...]``: write the Worker and its configuration into DIR."""
    p = argparse.ArgumentParser(
        prog="python -m flowcraft_cloudflare.deploy", description=main.__doc__
    )
    p.add_argument("directory")
    p.add_argument("--name", default="flowcraft")
    p.add_argument("--account-id")
    p.add_argument("--shards", type=int, default=16, help="coordination shards (never change)")
    p.add_argument("--compatibility-date", default="2025-04-01")
    p.add_argument("--route", action="append", default=[], help="custom domain pattern")
    p.add_argument("--no-workers-dev", action="store_true")
    a = p.parse_args(argv)
    path = write_worker(
        a.directory,
        name=a.name,
        account_id=a.account_id,
        coord_shards=a.shards,
        compatibility_date=a.compatibility_date,
        routes=a.route,
        workers_dev=not a.no_workers_dev,
    )
    print(
        f"wrote {path}; next: cd {a.directory} && npx wrangler deploy && "
        "npx wrangler secret put FLOWCRAFT_SECRET"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
