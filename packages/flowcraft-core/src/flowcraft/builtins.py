"""Built-in node types handled by the engine itself (timers, waits, subflows, batches, loops)."""

from __future__ import annotations

from typing import Final

SLEEP: Final = "sleep"
WAIT: Final = "wait"
SUBFLOW: Final = "subflow"
BATCH_SCATTER: Final = "batch-scatter"
BATCH_GATHER: Final = "batch-gather"
LOOP_CONTROLLER: Final = "loop-controller"

BUILTIN_NODE_TYPES: Final = frozenset(
    {SLEEP, WAIT, SUBFLOW, BATCH_SCATTER, BATCH_GATHER, LOOP_CONTROLLER}
)
"""``uses`` keys the engine implements; they never need a registry entry."""
