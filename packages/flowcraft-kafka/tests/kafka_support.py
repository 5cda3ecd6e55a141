"""Test support for flowcraft-kafka: one test's slice of a Kafka broker and a Redis server."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from flowcraft.redis import RedisStoreStats, connect
from flowcraft_kafka import KafkaAdapter

SESSION_MS = int(os.environ.get("FLOWCRAFT_TEST_KAFKA_SESSION_MS", "1000"))
"""Consumer session timeout in tests. Tansu holds a JoinGroup for half of it, so a short one
makes a group form in ~0.5 s (the default 45 s would take ~24 s); a broker with a larger
``group.min.session.timeout.ms`` needs this raised."""


def fast_consumer_config() -> dict[str, Any]:
    """librdkafka settings for quick group formation and crash detection in tests."""
    return {
        "session.timeout.ms": SESSION_MS,
        "heartbeat.interval.ms": max(100, SESSION_MS // 5),
        "fetch.wait.max.ms": 10,
    }


@dataclass
class KafkaBackend:
    """One test's slice: its own topics and consumer group on the broker, its own Redis prefix,
    shared write counters, and every adapter made on it (closed, and the Redis keys deleted, by
    :meth:`cleanup`)."""

    bootstrap: str
    redis_url: str
    prefix: str
    partitions: int = 4
    stats: RedisStoreStats = field(default_factory=RedisStoreStats)
    run_store: Any = "redis"
    """``"redis"`` or a shared :class:`~flowcraft_kafka.cassandra.CassandraRunStore`."""
    adapters: list[KafkaAdapter] = field(default_factory=list)
    generation: int = 0
    """Bumped for every cluster (see :meth:`adapter`)."""

    @property
    def commits(self) -> int:
        """Successful commits of every adapter of the test."""
        return self.stats.commits

    @property
    def bytes_written(self) -> int:
        """Bytes those commits wrote."""
        return self.stats.bytes_written

    def adapter(self, **kwargs: Any) -> KafkaAdapter:
        """An adapter on this slice, tuned for quick recovery in tests."""
        if kwargs.get("worker_id") == "client":
            # A conformance cluster starts with its client: each cluster gets its own topics
            # and consumer group. Hypothesis examples reuse one backend for many clusters;
            # on one topic a new example's workers would inherit the last one's uncommitted
            # messages (jobs of runs of another blueprint under the same id), and on Tansu a
            # group whose members leave while new ones join can be left without an owner for
            # some partitions. The run store (Redis prefix) stays shared.
            self.generation += 1
        gen = f"-{self.generation}" if self.generation else ""
        kw: dict[str, Any] = {
            "topic": f"{self.prefix}{gen}-jobs",
            "group_id": f"{self.prefix}{gen}-workers",
            "redis_url": self.redis_url,
            "prefix": self.prefix,
            "partitions": self.partitions,
            "stats": self.stats,
            "run_store": self.run_store,
            "concurrency": 8,
            "redelivery_timeout": 0.3,
            "revoke_timeout": 2.0,
            "consumer_config": fast_consumer_config(),
            **kwargs,
        }
        a = KafkaAdapter(self.bootstrap, **kw)
        self.adapters.append(a)
        return a

    async def cleanup(self) -> None:
        """Close every adapter and delete the slice's Redis keys (topics are left: the
        broker is a throwaway one, and names never repeat)."""
        for a in self.adapters:
            await a.aclose()
        if not isinstance(self.run_store, str):
            await self.run_store.aclose()
        r = connect(self.redis_url)
        try:
            batch = []
            async for k in r.scan_iter(match=f"{self.prefix}:*", count=500):
                batch.append(k)
                if len(batch) >= 500:
                    await r.unlink(*batch)
                    batch = []
            if batch:
                await r.unlink(*batch)
        finally:
            await r.aclose()


CASSANDRA_SKIP = "needs Cassandra >= 2.0 (LWT); runs in the GitHub job kafka-cassandra"
"""Why the Cassandra tests do not run on a machine without a modern Cassandra."""
CASSANDRA_IMAGE = "cassandra:5.0"


def cassandra_contact() -> tuple[tuple[str, int], Any]:
    """``((host, port), stop)`` of a Cassandra >= 2.0: ``FLOWCRAFT_TEST_CASSANDRA_URL``
    (``host:port``), else a testcontainers ``cassandra:5.0`` when Docker answers; else the
    test is skipped with :data:`CASSANDRA_SKIP`, or failed when ``CI`` is set on a machine with
    Docker (there the container must work)."""
    import pytest
    from flowcraft.testing.services import docker_available

    url = os.environ.get("FLOWCRAFT_TEST_CASSANDRA_URL")
    if url:
        host, _, port = url.rpartition(":")
        return (host, int(port)), None
    if not docker_available():
        pytest.skip(f"{CASSANDRA_SKIP} (no FLOWCRAFT_TEST_CASSANDRA_URL, no Docker engine)")
    try:
        return _start_cassandra()
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{CASSANDRA_IMAGE} did not start under CI with Docker: {exc}")
        pytest.skip(f"{CASSANDRA_SKIP} ({CASSANDRA_IMAGE} did not start: {exc})")


def _start_cassandra() -> tuple[tuple[str, int], Any]:
    import time

    from cassandra.cluster import Cluster
    from testcontainers.core.container import DockerContainer

    c = DockerContainer(CASSANDRA_IMAGE).with_exposed_ports(9042)
    c = c.with_env("MAX_HEAP_SIZE", "512M").with_env("HEAP_NEWSIZE", "128M")
    c.start()
    host, port = c.get_container_host_ip(), int(c.get_exposed_port(9042))
    deadline = time.monotonic() + 180
    while True:
        try:
            Cluster([host], port=port).connect().shutdown()
            break
        except Exception:
            if time.monotonic() > deadline:
                c.stop()
                raise
            time.sleep(2)
    return (host, port), c.stop
