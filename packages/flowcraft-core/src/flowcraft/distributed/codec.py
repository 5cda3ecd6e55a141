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


def encode_value(key: str, value: Any, max_bytes: int | None = None) -> str:
    """JSON text of ``value``; :class:`SerializationError` naming ``key`` when impossible or too
    large for ``max_bytes``."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        bad = find_unserializable(value)
        where = f"{key}{'.' + bad[0] if bad and bad[0] else ''}: {bad[1]}" if bad else key
        raise SerializationError(f"cannot store context value {where}") from exc
    if max_bytes is not None:
        size = len(text.encode("utf-8"))
        if size > max_bytes:
            raise SerializationError(
                f"context value {key!r} is {size} bytes; this backend stores at most "
                f"{max_bytes} bytes per value"
            )
    return text


def decode_value(text: str | bytes) -> Any:
    """Inverse of :func:`encode_value`."""
    return json.loads(text)
