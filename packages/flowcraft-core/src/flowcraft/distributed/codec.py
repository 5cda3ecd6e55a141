"""The one value encoding every backend uses: strict JSON text per context value.

``None`` is a value (``null``), never "absent"; keys are stored verbatim (dots, slashes and any
other characters are safe because keys are never parsed or pasted into queries); a value that
JSON cannot represent, or that is larger than a backend's limit, is refused with an error that
names the key.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import SerializationError
from ..serializer import find_unserializable


class UnstorableValueError(SerializationError):
    """A context key or value that no backend can store; ``key`` names it. The engine fails
    the node that wrote it (its fallback applies) instead of retrying the commit."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encode_value(key: str, value: Any, max_bytes: int | None = None) -> str:
    """JSON text of ``value``; :class:`UnstorableValueError` naming ``key`` when impossible (not
    JSON: sets, bytes, NaN, infinities, objects; a lone surrogate in a string), or too large for
    ``max_bytes``."""
    if not _utf8(key):
        raise UnstorableValueError(key, f"context key {key!r} is not valid UTF-8 (lone surrogate)")
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        bad = find_unserializable(value)
        where = f"{key}{'.' + bad[0] if bad and bad[0] else ''}: {bad[1]}" if bad else key
        raise UnstorableValueError(key, f"cannot store context value {where}") from exc
    if not _utf8(text):
        raise UnstorableValueError(
            key, f"cannot store context value {key}: a string is not valid UTF-8 (lone surrogate)"
        )
    if max_bytes is not None:
        size = len(text.encode("utf-8"))
        if size > max_bytes:
            raise UnstorableValueError(
                key,
                f"context value {key!r} is {size} bytes; this backend stores at most "
                f"{max_bytes} bytes per value",
            )
    return text


def decode_value(text: str | bytes) -> Any:
    """Inverse of :func:`encode_value`."""
    return json.loads(text)
