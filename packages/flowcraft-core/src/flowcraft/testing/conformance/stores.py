"""Store-level contract suites a store author runs alone, without an adapter or a queue.

* :class:`CoordinationStoreSuite`: the
  :class:`~flowcraft.distributed.contracts.CoordinationStore` contract (leases, counters,
  markers): increments, TTLs, expiry that reads as absent on every operation, set-if-absent
  (with exactly one winner among concurrent callers), ``extend_ttl``, ``delete``, ``get``,
  ``compare_and_delete``.
* :class:`RunStoreSuite`: the :class:`~flowcraft.distributed.contracts.DistributedContext`
  contract (a run's versioned context): version 0 and no keys for a new run, compare-and-set
  commits (exactly one winner among concurrent commits at one version), set/delete operations,
  ``None`` values, awkward keys, ``load``/``get``/``has``/``to_dict`` agreeing, unstorable
  values refused with a :class:`~flowcraft.errors.SerializationError` naming the key.

Subclass one in a ``test_*.py`` module and override its one fixture::

    class TestMyCoordination(CoordinationStoreSuite):
        @pytest.fixture
        async def store(self):
            yield MyCoordinationStore(...)          # a fresh, isolated store

    class TestMyRunStore(RunStoreSuite):
        @pytest.fixture
        async def context_factory(self):
            store = MyRunStore(...)
            yield store.context                     # run_id -> DistributedContext (or awaitable)

A store that cannot meet one case declares it in :attr:`StoreSuiteBase.xfail_cases` (the case
then runs as a strict xfail: it must keep failing, with the reason shown), never by overriding
the test.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

from ...context import PatchOperation
from ...distributed.contracts import CoordinationStore, DistributedContext
from ...errors import SerializationError


def _set(key: str, value: Any) -> PatchOperation:
    return PatchOperation("set", key, value)


def _delete(key: str) -> PatchOperation:
    return PatchOperation("delete", key)


class StoreSuiteBase:
    """What both store suites share: asyncio marks and declared expected failures."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.asyncio]

    xfail_cases: ClassVar[Mapping[str, str]] = {}
    """Cases this store is known to fail: test name (``test_x``, or ``test_x[param]`` for one
    parametrized case) -> reason. Each runs as ``xfail(strict=True)``: it must keep failing
    (a fixed store turns it into a failure until the entry is removed)."""

    @pytest.fixture(autouse=True)
    def _declared_xfails(self, request: pytest.FixtureRequest) -> None:
        """Apply :attr:`xfail_cases` to the running test."""
        node = request.node
        reason = self.xfail_cases.get(node.name) or self.xfail_cases.get(
            getattr(node, "originalname", node.name)
        )
        if reason:
            node.add_marker(pytest.mark.xfail(strict=True, reason=reason))


class CoordinationStoreSuite(StoreSuiteBase):
    """The :class:`~flowcraft.distributed.contracts.CoordinationStore` contract. Override the
    ``store`` fixture (a fresh, isolated store per test); tune :attr:`short_ttl` and
    :attr:`expiry_margin` for a store whose clock or round trips are coarse."""

    short_ttl: ClassVar[float] = 0.5
    """TTL (seconds) of the keys the expiry tests wait out."""
    expiry_margin: ClassVar[float] = 0.3
    """How long after :attr:`short_ttl` a key must read as expired."""
    long_ttl: ClassVar[float] = 60.0
    """TTL of keys that must outlive a test."""
    contenders: ClassVar[int] = 10
    """Concurrent callers racing for one key."""

    @pytest.fixture
    async def store(self) -> Any:
        """The store under test: subclasses override this fixture."""
        pytest.fail(f"{type(self).__name__} must override the 'store' fixture", pytrace=False)

    async def _expire(self) -> None:
        await asyncio.sleep(self.short_ttl + self.expiry_margin)

    async def test_get_of_an_absent_key_is_none(self, store: CoordinationStore) -> None:
        """``get`` of a key never written is None."""
        assert await store.get("never-written") is None

    async def test_increment_counts_from_absent(self, store: CoordinationStore) -> None:
        """A missing key counts as 0: increments return 1, 2, 3 and ``get`` reads the count
        as a string; other keys are independent."""
        assert [await store.increment("count", self.long_ttl) for _ in range(3)] == [1, 2, 3]
        assert await store.get("count") == "3"
        assert await store.increment("other", self.long_ttl) == 1

    async def test_set_if_not_exist_stores_only_when_absent(self, store: CoordinationStore) -> None:
        """The first ``set_if_not_exist`` stores its value (True); later ones store nothing
        (False) and the first value stays."""
        assert await store.set_if_not_exist("lease", "first", self.long_ttl) is True
        assert await store.set_if_not_exist("lease", "second", self.long_ttl) is False
        assert await store.get("lease") == "first"

    async def test_ttl_is_applied(self, store: CoordinationStore) -> None:
        """Keys written by ``set_if_not_exist`` and ``increment`` expire after their TTL; a
        key with a long TTL does not."""
        assert await store.set_if_not_exist("ttl:set", "v", self.short_ttl)
        assert await store.increment("ttl:incr", self.short_ttl) == 1
        assert await store.set_if_not_exist("ttl:long", "v", self.long_ttl)
        assert await store.get("ttl:set") == "v"
        assert await store.get("ttl:incr") == "1"
        await self._expire()
        assert await store.get("ttl:set") is None
        assert await store.get("ttl:incr") is None
        assert await store.get("ttl:long") == "v"

    async def test_expired_key_is_absent_on_every_operation(self, store: CoordinationStore) -> None:
        """An expired key behaves as absent on every operation (also on stores that delete
        expired data lazily): ``get`` None, ``set_if_not_exist`` True, ``extend_ttl`` False,
        ``compare_and_delete`` False, ``increment`` starts again at 1."""
        for key in ("x:get", "x:set", "x:extend", "x:cad", "x:incr"):
            assert await store.set_if_not_exist(key, "old", self.short_ttl)
        await self._expire()
        assert await store.get("x:get") is None
        assert await store.set_if_not_exist("x:set", "new", self.long_ttl) is True
        assert await store.get("x:set") == "new"
        assert await store.extend_ttl("x:extend", self.long_ttl) is False
        assert await store.get("x:extend") is None
        assert await store.compare_and_delete("x:cad", "old") is False
        assert await store.increment("x:incr", self.long_ttl) == 1

    async def test_extend_ttl(self, store: CoordinationStore) -> None:
        """``extend_ttl`` is False for an absent key (and creates nothing); for a live key it
        is True and the key outlives its original TTL."""
        assert await store.extend_ttl("absent", self.long_ttl) is False
        assert await store.get("absent") is None
        assert await store.set_if_not_exist("k", "v", self.short_ttl)
        assert await store.extend_ttl("k", self.long_ttl) is True
        await self._expire()
        assert await store.get("k") == "v"

    async def test_delete(self, store: CoordinationStore) -> None:
        """``delete`` removes a key (it is absent afterwards, so it can be set again) and is a
        no-op for an absent key."""
        await store.delete("absent")
        assert await store.set_if_not_exist("k", "v", self.long_ttl)
        await store.delete("k")
        assert await store.get("k") is None
        await store.delete("k")
        assert await store.set_if_not_exist("k", "w", self.long_ttl) is True
        assert await store.get("k") == "w"

    async def test_compare_and_delete_only_when_equal(self, store: CoordinationStore) -> None:
        """``compare_and_delete`` removes the key only while it holds the given value (lease
        release never removes another worker's lease); False for an absent key."""
        assert await store.compare_and_delete("lease", "mine") is False
        assert await store.set_if_not_exist("lease", "mine", self.long_ttl)
        assert await store.compare_and_delete("lease", "theirs") is False
        assert await store.get("lease") == "mine"
        assert await store.compare_and_delete("lease", "mine") is True
        assert await store.get("lease") is None
        assert await store.compare_and_delete("lease", "mine") is False

    async def test_concurrent_set_if_not_exist_has_one_winner(
        self, store: CoordinationStore
    ) -> None:
        """Concurrent ``set_if_not_exist`` calls on one key: exactly one returns True, and the
        key holds that caller's value."""
        results = await asyncio.gather(
            *(
                store.set_if_not_exist("race", f"w{i}", self.long_ttl)
                for i in range(self.contenders)
            )
        )
        winners = [i for i, ok in enumerate(results) if ok]
        assert len(winners) == 1, results
        assert await store.get("race") == f"w{winners[0]}"

    async def test_keys_and_values_are_opaque_strings(self, store: CoordinationStore) -> None:
        """Keys and values with separators and non-ASCII text are stored as given."""
        key = "lease:run/1 'x':node.a[0]:~0:ключ"
        value = "worker-1:tok/ен 🙂"
        assert await store.set_if_not_exist(key, value, self.long_ttl)
        assert await store.get(key) == value
        assert await store.compare_and_delete(key, value) is True


AWKWARD_KEYS: dict[str, str] = {
    "dots": "a.b.c",
    "slashes": "x/y/z",
    "tilde": "~a~1",
    "unicode": "ключ-鍵-🙂",
    "quotes": 'it\'s "quoted"',
    "space": " ",
    "dot": ".",
    "empty": "",
}
"""Keys every run store must round-trip, by test id."""


class RunStoreSuite(StoreSuiteBase):
    """The :class:`~flowcraft.distributed.contracts.DistributedContext` contract. Override the
    ``context_factory`` fixture: it yields ``factory(run_id)`` returning the run's context (or
    an awaitable of it), on a fresh, isolated store; each call may open a new handle (the
    concurrency tests call it once per contender)."""

    contenders: ClassVar[int] = 8
    """Concurrent commits racing at one version."""

    @pytest.fixture
    async def context_factory(self) -> Any:
        """``run_id -> DistributedContext``: subclasses override this fixture."""
        pytest.fail(
            f"{type(self).__name__} must override the 'context_factory' fixture", pytrace=False
        )

    @staticmethod
    async def context(factory: Any, run_id: str) -> DistributedContext:
        """The context ``factory`` gives for ``run_id`` (awaited when it is awaitable)."""
        ctx = factory(run_id)
        if inspect.isawaitable(ctx):
            ctx = await ctx
        assert isinstance(ctx, DistributedContext), f"not a DistributedContext: {ctx!r}"
        return ctx

    @staticmethod
    def new_run_id() -> str:
        """A run id no other test uses."""
        return f"run-{uuid.uuid4().hex[:12]}"

    async def test_a_new_run_has_version_zero_and_no_keys(self, context_factory: Any) -> None:
        """A run never committed: version 0, no keys; ``get`` returns the default, ``has`` is
        False, ``to_dict`` is empty."""
        ctx = await self.context(context_factory, self.new_run_id())
        snap = await ctx.load()
        assert (snap.data, snap.version) == ({}, 0)
        assert await ctx.get("a", "default") == "default"
        assert await ctx.has("a") is False
        assert await ctx.to_dict() == {}

    async def test_commit_succeeds_only_at_the_expected_version(self, context_factory: Any) -> None:
        """``commit`` applies its operations only while the stored version equals the expected
        one, and then bumps it by exactly one; a stale or future version writes nothing."""
        ctx = await self.context(context_factory, self.new_run_id())
        assert await ctx.commit([_set("a", 1)], 0) is True
        snap = await ctx.load()
        assert (snap.data, snap.version) == ({"a": 1}, 1)
        assert await ctx.commit([_set("a", 2)], 0) is False
        assert await ctx.commit([_set("a", 3)], 2) is False
        snap = await ctx.load()
        assert (snap.data, snap.version) == ({"a": 1}, 1)
        assert await ctx.commit([_set("a", 4), _set("b", 5)], 1) is True
        snap = await ctx.load()
        assert (snap.data, snap.version) == ({"a": 4, "b": 5}, 2)

    async def test_concurrent_commits_at_one_version_have_one_winner(
        self, context_factory: Any
    ) -> None:
        """Commits racing at the same version (each through its own handle): exactly one
        succeeds; the run holds its write and version + 1."""
        rid = self.new_run_id()
        first = await self.context(context_factory, rid)
        assert await first.commit([_set("w", None)], 0)
        handles = [await self.context(context_factory, rid) for _ in range(self.contenders)]
        results = await asyncio.gather(
            *(h.commit([_set("w", i), _set(f"only.{i}", True)], 1) for i, h in enumerate(handles))
        )
        winners = [i for i, ok in enumerate(results) if ok]
        assert len(winners) == 1, results
        snap = await first.load()
        assert snap.version == 2
        assert snap.data == {"w": winners[0], f"only.{winners[0]}": True}

    async def test_set_and_delete_operations(self, context_factory: Any) -> None:
        """``set`` writes or replaces a key, ``delete`` removes it; deleting an absent key is
        allowed; untouched keys stay."""
        ctx = await self.context(context_factory, self.new_run_id())
        assert await ctx.commit([_set("a", 1), _set("b", {"x": [1, 2]}), _set("c", "C")], 0)
        assert await ctx.commit([_delete("a"), _set("b", "replaced"), _delete("never")], 1)
        snap = await ctx.load()
        assert (snap.data, snap.version) == ({"b": "replaced", "c": "C"}, 2)

    async def test_operations_of_one_commit_apply_in_order(self, context_factory: Any) -> None:
        """Within one commit the operations apply in order: the last one on a key wins."""
        ctx = await self.context(context_factory, self.new_run_id())
        assert await ctx.commit([_set("a", 1), _set("b", 2)], 0)
        ops = [
            _delete("a"),
            _set("c", 1),
            _delete("c"),
            _set("b", 3),
            _delete("b"),
            _set("b", 4),
            _set("a", "again"),
        ]
        assert await ctx.commit(ops, 1)
        assert (await ctx.load()).data == {"a": "again", "b": 4}

    async def test_none_values_round_trip(self, context_factory: Any) -> None:
        """``None`` is a value: stored, loaded, ``has`` True, ``get`` returns None (not the
        default); nested ``None`` survives too."""
        ctx = await self.context(context_factory, self.new_run_id())
        nested = {"k": None, "list": [None, 1, "two"], "deep": {"x": [None]}}
        assert await ctx.commit([_set("n", None), _set("nested", nested)], 0)
        snap = await ctx.load()
        assert snap.data == {"n": None, "nested": nested}
        assert await ctx.has("n") is True
        assert await ctx.get("n", "default") is None
        assert await ctx.get("nested") == nested
        assert await ctx.to_dict() == snap.data

    @pytest.mark.parametrize("key", list(AWKWARD_KEYS.values()), ids=list(AWKWARD_KEYS))
    async def test_awkward_keys_round_trip(self, context_factory: Any, key: str) -> None:
        """A key with dots, slashes, ``~``, quotes, non-ASCII text, or (nearly) empty is stored
        and read back as itself, next to an ordinary key, and can be deleted."""
        ctx = await self.context(context_factory, self.new_run_id())
        value = {"key": key, "n": [1, None]}
        assert await ctx.commit([_set("anchor", 0), _set(key, value)], 0)
        snap = await ctx.load()
        assert snap.data == {"anchor": 0, key: value}
        assert await ctx.get(key) == value
        assert await ctx.has(key) is True
        assert await ctx.to_dict() == snap.data
        assert await ctx.commit([_delete(key)], 1)
        assert (await ctx.load()).data == {"anchor": 0}
        assert await ctx.has(key) is False

    async def test_load_get_has_and_to_dict_agree(self, context_factory: Any) -> None:
        """After several commits ``load`` returns every key, and ``get``/``has``/``to_dict``
        say the same about each."""
        ctx = await self.context(context_factory, self.new_run_id())
        first = {f"k{i}": {"i": i, "s": "x" * i} for i in range(40)}
        assert await ctx.commit([_set(k, v) for k, v in first.items()], 0)
        assert await ctx.commit([_set("late", [1, 2]), _delete("k0"), _set("k1", "new")], 1)
        expected = {**first, "late": [1, 2], "k1": "new"}
        del expected["k0"]
        snap = await ctx.load()
        assert (snap.data, snap.version) == (expected, 2)
        assert await ctx.to_dict() == expected
        for k, v in expected.items():
            assert await ctx.has(k) is True
            assert await ctx.get(k) == v
        assert await ctx.has("k0") is False
        assert await ctx.get("k0", "gone") == "gone"

    async def test_unstorable_value_in_a_commit_raises_naming_the_key(
        self, context_factory: Any
    ) -> None:
        """A value the store cannot encode (a ``set``) makes ``commit`` raise a
        ``SerializationError`` naming the key, and nothing of that commit is written."""
        ctx = await self.context(context_factory, self.new_run_id())
        assert await ctx.commit([_set("ok", 1)], 0)
        with pytest.raises(SerializationError, match=r"bad\.key"):
            await ctx.commit([_set("fine", 2), _set("bad.key", {1, 2})], 1)
        snap = await ctx.load()
        assert (snap.data, snap.version) == ({"ok": 1}, 1)

    async def test_unstorable_value_in_set_raises_naming_the_key(
        self, context_factory: Any
    ) -> None:
        """``set`` of an unstorable value raises a ``SerializationError`` naming the key and
        writes nothing."""
        ctx = await self.context(context_factory, self.new_run_id())
        assert await ctx.commit([_set("ok", 1)], 0)
        with pytest.raises(SerializationError, match=r"bad\.key"):
            await ctx.set("bad.key", {1, 2})
        snap = await ctx.load()
        assert snap.data == {"ok": 1}


__all__ = ["AWKWARD_KEYS", "CoordinationStoreSuite", "RunStoreSuite", "StoreSuiteBase"]
