"""Workflow context: the async key/value protocol nodes use, and its in-memory implementations."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class PatchOperation:
    """One change to a context: ``set`` a key to a value, or ``delete`` it."""

    op: Literal["set", "delete"]
    key: str
    value: Any = None

    def to_wire(self) -> dict[str, Any]:
        """Upstream's JSON shape ``{op, key, value?}``."""
        return (
            {"op": self.op, "key": self.key, "value": self.value}
            if self.op == "set"
            else {
                "op": "delete",
                "key": self.key,
            }
        )


@runtime_checkable
class AsyncContext(Protocol):
    """The async key/value store a workflow run shares between its nodes."""

    async def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default`` when absent (``None`` is a value)."""
        ...

    async def set(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key``."""
        ...

    async def has(self, key: str) -> bool:
        """Whether ``key`` is present (also when its value is ``None``)."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True when it was present."""
        ...

    async def to_dict(self) -> dict[str, Any]:
        """A snapshot copy of every key."""
        ...

    async def patch(self, ops: Iterable[PatchOperation]) -> None:
        """Apply several set/delete operations atomically."""
        ...


class InMemoryContext:
    """Dict-backed :class:`AsyncContext`; also offers sync access for the engine."""

    __slots__ = ("data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = dict(data) if data else {}

    async def get(self, key: str, default: Any = None) -> Any:
        """See :meth:`AsyncContext.get`."""
        return self.data.get(key, default)

    async def set(self, key: str, value: Any) -> None:
        """See :meth:`AsyncContext.set`."""
        self.data[key] = value

    async def has(self, key: str) -> bool:
        """See :meth:`AsyncContext.has`."""
        return key in self.data

    async def delete(self, key: str) -> bool:
        """See :meth:`AsyncContext.delete`."""
        return self.data.pop(key, _MISSING) is not _MISSING

    async def to_dict(self) -> dict[str, Any]:
        """See :meth:`AsyncContext.to_dict`."""
        return dict(self.data)

    async def patch(self, ops: Iterable[PatchOperation]) -> None:
        """See :meth:`AsyncContext.patch` (atomic: nothing else runs in between)."""
        apply_ops(self.data, ops)


def apply_ops(data: dict[str, Any], ops: Iterable[PatchOperation]) -> None:
    """Apply patch operations to a plain dict in order."""
    for op in ops:
        if op.op == "set":
            data[op.key] = op.value
        else:
            data.pop(op.key, None)


ChangeListener = Callable[[str, str, Any], None]
"""Called as ``listener(op, key, value)`` for every change a tracked context records."""


class TrackedContext:
    """Wraps a context for one node execution and records that node's changes.

    ``buffered=False`` writes through to the inner context at once (in-memory runs).
    ``buffered=True`` keeps writes in an overlay that reads see (read-your-writes) until the
    engine commits :meth:`deltas` atomically with the node's completion (distributed runs).
    Deltas are coalesced per key: the last operation on a key wins.
    """

    __slots__ = ("_buffered", "_deltas", "_inner", "_listener", "node_id")

    def __init__(
        self,
        inner: AsyncContext,
        node_id: str | None = None,
        *,
        buffered: bool = False,
        listener: ChangeListener | None = None,
    ) -> None:
        self._inner = inner
        self.node_id = node_id
        self._buffered = buffered
        self._deltas: dict[str, PatchOperation] = {}
        self._listener = listener

    @property
    def inner(self) -> AsyncContext:
        """The wrapped context."""
        return self._inner

    def deltas(self) -> list[PatchOperation]:
        """The coalesced changes recorded so far, in first-touch order."""
        return list(self._deltas.values())

    def clear_deltas(self) -> None:
        """Forget the recorded changes (after they were committed)."""
        self._deltas.clear()

    async def get(self, key: str, default: Any = None) -> Any:
        """See :meth:`AsyncContext.get`."""
        if self._buffered and key in self._deltas:
            op = self._deltas[key]
            return op.value if op.op == "set" else default
        return await self._inner.get(key, default)

    async def set(self, key: str, value: Any) -> None:
        """See :meth:`AsyncContext.set`."""
        if not isinstance(key, str):
            raise TypeError(f"context keys must be str, got {type(key).__name__}")
        self._deltas[key] = PatchOperation("set", key, value)
        if not self._buffered:
            await self._inner.set(key, value)
        if self._listener is not None:
            self._listener("set", key, value)

    async def has(self, key: str) -> bool:
        """See :meth:`AsyncContext.has`."""
        if self._buffered and key in self._deltas:
            return self._deltas[key].op == "set"
        return await self._inner.has(key)

    async def delete(self, key: str) -> bool:
        """See :meth:`AsyncContext.delete`."""
        existed = await self.has(key)
        self._deltas[key] = PatchOperation("delete", key)
        if not self._buffered:
            await self._inner.delete(key)
        if existed and self._listener is not None:
            self._listener("delete", key, None)
        return existed

    async def to_dict(self) -> dict[str, Any]:
        """See :meth:`AsyncContext.to_dict` (includes buffered changes)."""
        data = await self._inner.to_dict()
        if self._buffered:
            apply_ops(data, self._deltas.values())
        return data

    async def patch(self, ops: Iterable[PatchOperation]) -> None:
        """Record and apply several operations; the inner context applies them atomically."""
        ops = list(ops)
        for op in ops:
            self._deltas[op.key] = op
        if not self._buffered:
            await self._inner.patch(ops)
        if self._listener is not None:
            for op in ops:
                self._listener(op.op, op.key, op.value)
