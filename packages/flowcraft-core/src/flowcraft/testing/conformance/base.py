"""The plumbing every conformance feature module builds on: :class:`SuiteBase`, its hooks and
class attributes, capability gating, and the :class:`~.cluster.Cluster` factory.

A subclass of any feature class (or of the composed
:class:`~flowcraft.testing.conformance.AdapterConformanceSuite`) provides the ``backend``
fixture and :meth:`SuiteBase.make_worker`; everything else is optional and declared, never a
rewritten test: see ``docs/conformance.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NoReturn

import pytest

from ...distributed.adapter import BaseDistributedAdapter
from . import scenarios as sc
from .cluster import Cluster
from .faults import FaultInjector
from .helpers import REQUIRES_ATTR, missing_capabilities


class SuiteBase:
    """Base class of the conformance feature classes (pytest collects subclasses ``Test*``).

    Subclasses set :attr:`adapter_class`, override the ``backend`` fixture (yield a fresh,
    isolated backend object per test: a broker, a database path, a URL plus a unique prefix)
    and :meth:`make_worker`. Optional hooks: :meth:`enqueue_raw`, :meth:`dead_letters`,
    :meth:`write_counters` and :meth:`duplicate_delivery_kwargs`. Requires pytest-asyncio
    (``asyncio_mode = "auto"``, or decorate the ``backend`` fixture with
    ``pytest_asyncio.fixture``) and hypothesis.
    """

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.asyncio]

    adapter_class: ClassVar[type[BaseDistributedAdapter]]
    """The adapter under test; its ``capabilities`` decide which tests run and in which form."""
    workers: ClassVar[int] = 2
    """In-process workers per scenario."""
    lease_seconds: ClassVar[float] = 0.3
    """Node lease passed as ``lease_seconds`` to every worker (crash recovery waits on it)."""
    steady_lease_seconds: ClassVar[float] = 3.0
    """The node lease of the tests that inject no crash and count executions (exactly, or
    bounded): long enough that a worker stalled by a loaded machine (a slow fsync, a
    starved thread) keeps its lease. A worker that loses a lease rightly lets another
    worker run the node again (at-least-once execution), which such a count would report
    as a defect."""
    scenario_timeout: ClassVar[float] = 20.0
    """Hard timeout of each scenario (a hang fails the test)."""
    load_runs: ClassVar[int] = 50
    """Concurrent runs of the load smoke test."""
    worker_kwargs: ClassVar[Mapping[str, Any]] = {}
    """Adapter keyword arguments for every worker and client of every scenario (e.g.
    ``{"inline_successors": 8}``); a scenario's own keyword arguments win."""
    required_capabilities: ClassVar[tuple[str, ...]] = ()
    """Capabilities (as for :func:`~.helpers.requires`) every test of the class needs: the
    whole class is skipped, naming them, when the adapter does not declare them."""

    # -- what a subclass provides -----------------------------------------------------------

    @pytest.fixture
    async def backend(self) -> Any:
        """The shared backend of one test's workers: subclasses override this fixture (a
        plain or yield fixture) and give each test an isolated backend."""
        pytest.fail(f"{type(self).__name__} must override the 'backend' fixture", pytrace=False)

    async def make_worker(
        self, backend: Any, runtime_options: dict[str, Any], **adapter_kwargs: Any
    ) -> BaseDistributedAdapter:
        """A new worker adapter on ``backend`` built with ``runtime_options`` and
        ``adapter_kwargs`` (``lease_seconds``, ``worker_id``, ...). Subclasses implement this."""
        self.missing_hook(
            "make_worker",
            "the suite needs a factory of worker (and client) adapters on the test's backend",
            "make_worker(backend, runtime_options, **adapter_kwargs) -> adapter",
        )

    async def enqueue_raw(self, backend: Any, body: str) -> bool:
        """Put a raw message ``body`` on the backend's queue; False (default) when the backend
        cannot (the unparseable-message test is then skipped, naming this hook)."""
        return False

    async def dead_letters(self, backend: Any) -> list[str] | None:
        """The dead-lettered messages (bodies and/or reasons, as text) of ``backend``; None
        (default) when the backend does not expose them. Adapters declaring
        ``Capabilities.dead_letter`` must implement this."""
        return None

    def write_counters(self, backend: Any) -> tuple[int, int]:
        """``(commits, bytes written)`` so far; used when ``Capabilities.extra`` has
        ``bytes_counter``. Default: the backend's ``commits`` and ``bytes_written``."""
        try:
            return int(backend.commits), int(backend.bytes_written)
        except AttributeError as exc:
            raise NotImplementedError(
                f"the backend object ({type(backend).__name__}) has no {exc.name or 'commits'!r}"
            ) from None

    def duplicate_delivery_kwargs(self) -> Mapping[str, Any]:
        """Adapter keyword arguments for the tests that inject duplicates of the same job and
        need every copy *delivered* (duplicate and late delivery, a slow node's duplicates).
        Default ``{}``. An adapter that deduplicates enqueues by job id (declared as
        ``Capabilities.deduplicates_jobs``) returns what turns that off, e.g.
        ``{"deduplicate": False}``; its own tests check deduplication itself."""
        return {}

    # -- plumbing -----------------------------------------------------------------------------

    def missing_hook(self, hook: str, why: str, signature: str = "") -> NoReturn:
        """Fail the test with a message naming the optional ``hook`` the subclass must
        implement (instead of an AttributeError deep inside a worker)."""
        sig = signature or f"{hook}(...)"
        pytest.fail(
            f"{type(self).__name__}: {why}; implement the hook {sig} in the suite subclass "
            "(see docs/conformance.md, 'What you provide')",
            pytrace=False,
        )

    @pytest.fixture(autouse=True)
    def _conformance_capabilities(self, request: pytest.FixtureRequest) -> None:
        """Skip tests whose required capabilities the adapter does not declare."""
        cls = getattr(type(self), "adapter_class", None)
        if cls is None:
            pytest.fail(f"{type(self).__name__} must set adapter_class", pytrace=False)
        needs = (*type(self).required_capabilities, *getattr(request.function, REQUIRES_ATTR, ()))
        missing = missing_capabilities(cls, needs)
        if missing:
            pytest.skip(f"{cls.__name__} lacks capability {', '.join(missing)}")

    @property
    def native_retries(self) -> bool:
        """True when the adapter declares ``Capabilities.queue_native_retries``: a delegated
        retry redelivers the SAME job (one enqueue; the queue counts the attempts)."""
        return bool(self.adapter_class.capabilities.queue_native_retries)

    def delivered_duplicates_kwargs(self) -> dict[str, Any]:
        """:meth:`duplicate_delivery_kwargs`, checked: an adapter declaring
        ``Capabilities.deduplicates_jobs`` must say how to turn deduplication off."""
        kwargs = dict(self.duplicate_delivery_kwargs())
        if self.adapter_class.capabilities.deduplicates_jobs and not kwargs:
            self.missing_hook(
                "duplicate_delivery_kwargs",
                f"{self.adapter_class.__name__} declares Capabilities.deduplicates_jobs, so the "
                "injected duplicates of a job would be swallowed, not delivered",
                "duplicate_delivery_kwargs() -> adapter kwargs that turn deduplication off",
            )
        return kwargs

    def checked_write_counters(self, backend: Any) -> tuple[int, int]:
        """:meth:`write_counters`, or a failure naming the hook when it does not work."""
        try:
            return self.write_counters(backend)
        except (NotImplementedError, AttributeError, TypeError, ValueError) as exc:
            self.missing_hook(
                "write_counters",
                f"{self.adapter_class.__name__} declares Capabilities.extra['bytes_counter'] "
                f"but write_counters(backend) failed: {exc}",
                "write_counters(backend) -> (commits, bytes written so far)",
            )

    def cluster(
        self,
        backend: Any,
        scenario: sc.Scenario | Mapping[str, Any],
        *,
        workers: int | None = None,
        faults: FaultInjector | None = None,
        client_options: Mapping[str, Any] | None = None,
        configure: Callable[[BaseDistributedAdapter], None] | None = None,
        timeout_factor: float = 1.0,
        **adapter_kwargs: Any,
    ) -> Cluster:
        """A :class:`Cluster` of this adapter on ``backend`` running ``scenario``'s workflows
        (hard timeout: ``scenario_timeout * timeout_factor``, for the few large scenarios)."""
        kwargs = {
            "lease_seconds": self.lease_seconds,
            "version_requeue_delay": 0.02,
            **self.worker_kwargs,
            **adapter_kwargs,
        }
        opts = scenario.runtime_options if isinstance(scenario, sc.Scenario) else scenario

        async def make(runtime_options: dict[str, Any], **kw: Any) -> BaseDistributedAdapter:
            return await self.make_worker(backend, runtime_options, **kw)

        return Cluster(
            make,
            opts,
            workers=self.workers if workers is None else workers,
            faults=faults,
            timeout=self.scenario_timeout * timeout_factor,
            adapter_kwargs=kwargs,
            client_options=client_options,
            configure=configure,
        )


__all__ = ["SuiteBase"]
