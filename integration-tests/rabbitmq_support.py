"""Lives in ``packages/flowcraft-rabbitmq/tests/rabbitmq_support.py`` (next to the RabbitMQ
conformance module); ``from rabbitmq_support import RabbitBackend, rabbit`` works here too:
this module loads that file and replaces itself with it (one module object whichever
directory comes first on ``sys.path``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_REAL = (
    Path(__file__).resolve().parents[1] / "packages/flowcraft-rabbitmq/tests/rabbitmq_support.py"
)
_spec = importlib.util.spec_from_file_location(__name__, _REAL)
assert _spec is not None and _spec.loader is not None
_module = importlib.util.module_from_spec(_spec)
sys.modules[__name__] = _module
_spec.loader.exec_module(_module)
