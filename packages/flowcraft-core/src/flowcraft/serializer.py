"""Serializers for run state: JSON by default, failing loudly on anything JSON cannot hold."""

from __future__ import annotations

import json
import math
from typing import Any, Protocol, runtime_checkable

from .errors import SerializationError


@runtime_checkable
class Serializer(Protocol):
    """Turns run data into text and back."""

    def serialize(self, data: Any) -> str:
        """Encode ``data``; raise :class:`SerializationError` for unsupported values."""
        ...

    def deserialize(self, text: str) -> Any:
        """Decode text produced by :meth:`serialize`."""
        ...


def _find_bad(value: Any, path: str, seen: set[int]) -> tuple[str, str] | None:
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, f"non-finite float {value!r}")
    if isinstance(value, dict | list | tuple):
        if id(value) in seen:
            return (path, "circular reference")
        seen.add(id(value))
        try:
            if isinstance(value, dict):
                for k, v in value.items():
                    if not isinstance(k, str):
                        return (path, f"non-string key {k!r}")
                    bad = _find_bad(v, f"{path}.{k}" if path else k, seen)
                    if bad:
                        return bad
            else:
                for i, v in enumerate(value):
                    bad = _find_bad(v, f"{path}[{i}]", seen)
                    if bad:
                        return bad
        finally:
            seen.discard(id(value))
        return None
    return (path, f"unsupported type {type(value).__name__}")


def find_unserializable(value: Any) -> tuple[str, str] | None:
    """``(path, reason)`` of the first value plain JSON cannot represent, or None."""
    return _find_bad(value, "", set())


class JsonSerializer:
    """Strict JSON: no silent placeholders for circular data, sets, dates or NaN.

    Upstream replaced a circular context by a placeholder object (silent data loss); here the
    error names the offending key path, e.g. ``context.user.created: unsupported type datetime``.
    """

    def serialize(self, data: Any) -> str:
        """See :meth:`Serializer.serialize`."""
        try:
            text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError) as exc:
            bad = find_unserializable(data)
            where = f"{bad[0] or '<root>'}: {bad[1]}" if bad else str(exc)
            raise SerializationError(f"cannot serialize {where}") from exc
        # json.dumps silently turns int/float/bool/None keys into strings: reject them too.
        bad = find_unserializable(data)
        if bad is not None:
            raise SerializationError(f"cannot serialize {bad[0] or '<root>'}: {bad[1]}")
        return text

    def deserialize(self, text: str) -> Any:
        """See :meth:`Serializer.deserialize`."""
        try:
            return json.loads(text)
        except ValueError as exc:
            raise SerializationError(f"cannot deserialize: {exc}") from exc
