"""Built-in node types handled by the engine itself (timers, waits, webhooks, subflows, batches,
loops)."""

from __future__ import annotations

from typing import Final

SLEEP: Final = "sleep"
WAIT: Final = "wait"
WEBHOOK: Final = "webhook"
SUBFLOW: Final = "subflow"
BATCH_SCATTER: Final = "batch-scatter"
BATCH_GATHER: Final = "batch-gather"
LOOP_CONTROLLER: Final = "loop-controller"

BUILTIN_NODE_TYPES: Final = frozenset(
    {SLEEP, WAIT, WEBHOOK, SUBFLOW, BATCH_SCATTER, BATCH_GATHER, LOOP_CONTROLLER}
)
"""``uses`` keys the engine implements; they never need a registry entry."""

_UNITS: Final = {"ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0, "d": 86_400_000.0}


def parse_duration(value: object) -> float:
    """Milliseconds from a number of ms or a string like ``"250ms"``, ``"10s"``, ``"5m"``,
    ``"2h"``, ``"1d"``; ValueError naming the value otherwise (negative included)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        ms = float(value)
    elif isinstance(value, str):
        text = value.strip()
        for unit in ("ms", "s", "m", "h", "d"):
            if text.endswith(unit):
                num = text[: -len(unit)]
                try:
                    ms = float(num) * _UNITS[unit]
                except ValueError:
                    continue
                break
        else:
            try:
                ms = float(text)
            except ValueError:
                raise ValueError(
                    f"invalid duration {value!r}: use ms or a number with ms/s/m/h/d"
                ) from None
    else:
        raise ValueError(f"invalid duration {value!r}")
    if ms != ms or ms < 0 or ms == float("inf"):
        raise ValueError(f"invalid duration {value!r}: must be a finite number >= 0")
    return ms
