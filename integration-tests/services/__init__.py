"""The service layer now lives in :mod:`flowcraft.testing.services` (shipped with
flowcraft-core, used by its pytest plugin). ``import services`` keeps working for the
integration tests and the benchmarks: it is the very same module object, so monkeypatching
``services._running`` or ``services.SERVICES`` patches the real one."""

from __future__ import annotations

import sys

from flowcraft.testing import services as _services

sys.modules[__name__] = _services
