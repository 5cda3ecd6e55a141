"""The coordination store (leases, counters, markers) on Cosmos DB: no Redis needed.

One item per key, ``{"id": "k:<key>", "pk": "k:<key>", "key": <key>, "value": <text> | "n":
<counter>, "exp": <expiry, epoch seconds>, "ttl": <seconds>}`` in the stores' container. Every
operation is one conditional request (two when a key must be re-created after its expiry):

* ``set_if_not_exist``: ``create`` (409: it exists); an existing but expired item is replaced
  conditionally on its ``_etag``;
* ``increment``: a patch ``incr /n`` (and a new expiry) with the ``filter_predicate``
  ``c.exp > now``; when the key is missing or expired, a create (or an etag replace) with 1;
* ``extend_ttl``: a patch of ``exp``/``ttl`` under the same predicate;
* ``compare_and_delete``: a delete with ``If-Match`` the etag of the item this store wrote
  last for the key, when it knows one; else (or when that etag is stale) read, then delete
  with ``If-Match`` the etag read (a lease extended in between changes the etag: read again);
* ``get``: a point read; an expired item is absent.

The expiry field is what counts (checked on every read and in every predicate): an expired key
is absent on every operation. The item's ``ttl`` (the container has ``default_ttl=-1``) only
lets Cosmos delete it some minutes after it expired.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Any, Final

from .cosmos import CosmosContainer, safe_key

__all__ = ["CosmosCoordinationStore"]

CLEANUP_SLACK: Final = 300
"""Seconds an expired key's item is kept before Cosmos's TTL deletes it."""
_MAX_TRIES: Final = 50


def _live(item: dict[str, Any] | None, now: float) -> bool:
    return item is not None and float(item.get("exp", 0)) > now


def _cleanup_ttl(ttl: float) -> int:
    return max(1, math.ceil(ttl)) + CLEANUP_SLACK


def _value(item: dict[str, Any]) -> str:
    return str(item["value"]) if "value" in item else str(int(item.get("n", 0)))


class CosmosCoordinationStore:
    """``CoordinationStore`` on a Cosmos container (see the module docstring)."""

    def __init__(self, cosmos: CosmosContainer, known: int = 1024) -> None:
        self.cosmos = cosmos
        self._known: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._known_size = known

    def _remember(self, key: str, item: dict[str, Any] | None) -> None:
        """Keep the item this store last wrote for ``key`` (its etag lets a lease release be
        one conditional delete instead of a read and a delete)."""
        if item is None or self._known_size <= 0:
            self._known.pop(key, None)
            return
        self._known[key] = item
        self._known.move_to_end(key)
        while len(self._known) > self._known_size:
            self._known.popitem(last=False)

    @staticmethod
    def pk(key: str) -> str:
        """The partition key of ``key``'s item."""
        return "k:" + safe_key(key)

    def _item(self, key: str, ttl: float, now: float, **fields: Any) -> dict[str, Any]:
        return {
            "id": self.pk(key),
            "pk": self.pk(key),
            "key": key,
            "exp": now + ttl,
            "ttl": _cleanup_ttl(ttl),
            **fields,
        }

    async def _put_absent(self, key: str, ttl: float, **fields: Any) -> bool | None:
        """Store a new item for ``key`` if it is absent or expired: True when stored, False
        when a live item exists, None when it changed meanwhile (try again)."""
        now = time.time()
        created = await self.cosmos.create(self._item(key, ttl, now, **fields))
        if created is not None:
            self._remember(key, created)
            return True
        cur = await self.cosmos.read(self.pk(key), self.pk(key))
        if cur is None:
            return None  # deleted meanwhile
        if _live(cur, time.time()):
            return False
        replaced = await self.cosmos.replace(
            self._item(key, ttl, time.time(), **fields), cur["_etag"]
        )
        if replaced is None:
            return None
        self._remember(key, replaced)
        return True

    async def set_if_not_exist(self, key: str, value: str, ttl_seconds: float) -> bool:
        """See CoordinationStore."""
        for _ in range(_MAX_TRIES):
            got = await self._put_absent(key, ttl_seconds, value=value)
            if got is not None:
                return got
        raise RuntimeError(f"set_if_not_exist({key!r}) kept conflicting")

    async def increment(self, key: str, ttl_seconds: float) -> int:
        """See CoordinationStore."""
        for _ in range(_MAX_TRIES):
            now = time.time()
            got = await self.cosmos.patch(
                self.pk(key),
                self.pk(key),
                [
                    {"op": "incr", "path": "/n", "value": 1},
                    {"op": "set", "path": "/exp", "value": now + ttl_seconds},
                    {"op": "set", "path": "/ttl", "value": _cleanup_ttl(ttl_seconds)},
                ],
                f"from c where c.exp > {now!r}",
            )
            if got is not None:
                self._remember(key, got)
                return int(got["n"])
            if await self._put_absent(key, ttl_seconds, n=1):
                return 1
        raise RuntimeError(f"increment({key!r}) kept conflicting")

    async def extend_ttl(self, key: str, ttl_seconds: float) -> bool:
        """See CoordinationStore."""
        now = time.time()
        got = await self.cosmos.patch(
            self.pk(key),
            self.pk(key),
            [
                {"op": "set", "path": "/exp", "value": now + ttl_seconds},
                {"op": "set", "path": "/ttl", "value": _cleanup_ttl(ttl_seconds)},
            ],
            f"from c where c.exp > {now!r}",
        )
        self._remember(key, got)
        return got is not None

    async def delete(self, key: str) -> None:
        """See CoordinationStore."""
        self._remember(key, None)
        await self.cosmos.delete(self.pk(key), self.pk(key))

    async def get(self, key: str) -> str | None:
        """See CoordinationStore."""
        item = await self.cosmos.read(self.pk(key), self.pk(key))
        if item is None or not _live(item, time.time()):
            return None
        return _value(item)

    async def compare_and_delete(self, key: str, value: str) -> bool:
        """See CoordinationStore. When this store wrote the item last (its etag is known, the
        value matches and it has not expired), one delete conditional on that etag; else read,
        then delete conditional on the etag read."""
        known = self._known.pop(key, None)
        if (
            known is not None
            and _value(known) == value
            and _live(known, time.time())
            and await self.cosmos.delete(self.pk(key), self.pk(key), etag=known["_etag"])
        ):
            return True
        for _ in range(_MAX_TRIES):
            item = await self.cosmos.read(self.pk(key), self.pk(key))
            if item is None or not _live(item, time.time()) or _value(item) != value:
                return False
            if await self.cosmos.delete(self.pk(key), self.pk(key), etag=item["_etag"]):
                return True
        raise RuntimeError(f"compare_and_delete({key!r}) kept conflicting")
