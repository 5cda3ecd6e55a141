"""The integration tests' own modules (``services``, ``sqs_support``, ``*_proc_app``) are
imported by name from this directory. The service fixtures (``redis_url``, ``rabbitmq_url``,
``postgres_url``, ``moto_url``, ``unique_prefix``) and the run-view check come from
flowcraft-core's pytest plugin (:mod:`flowcraft.testing.plugin`)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
