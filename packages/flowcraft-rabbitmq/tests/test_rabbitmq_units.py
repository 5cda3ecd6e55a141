"""Unit tests of flowcraft-rabbitmq that need no server (the integration tests with real
RabbitMQ, PostgreSQL and Redis are in ``integration-tests/test_rabbitmq_*.py``)."""

from __future__ import annotations

import pytest
from flowcraft.distributed.backends import open_adapter
from flowcraft_rabbitmq import (
    MAX_DELAY_BUCKET_MS,
    RabbitMQAdapter,
    decode_key,
    delay_bucket_ms,
    encode_key,
    from_url,
)


@pytest.mark.parametrize(
    ("delay", "bucket"),
    [(1, 1), (2, 2), (3, 2), (20, 16), (1000, 512), (1024, 1024), (86_400_000, 67_108_864)],
)
def test_delay_bucket_is_largest_power_of_two_not_above(delay: int, bucket: int) -> None:
    assert delay_bucket_ms(delay) == bucket


def test_delay_bucket_caps_and_rejects() -> None:
    assert delay_bucket_ms(10 * MAX_DELAY_BUCKET_MS) == MAX_DELAY_BUCKET_MS
    with pytest.raises(ValueError):
        delay_bucket_ms(0)


@pytest.mark.parametrize(
    ("key", "stored"),
    [
        ("plain", "plain"),
        ("a.b/c", "a.b/c"),
        ("'); DROP TABLE x; --", "'); DROP TABLE x; --"),
        ("nul\x00in", '\x01"nul\\u0000in"'),
        ("\x01lead", '\x01"\\u0001lead"'),
    ],
)
def test_keys_are_stored_verbatim_unless_they_hold_nul(key: str, stored: str) -> None:
    assert encode_key(key) == stored
    assert decode_key(stored) == key


def test_from_url_splits_flowcraft_options_from_amqp_options() -> None:
    a = from_url(
        "rabbitmq://u:p@h:5673/vh?heartbeat=30&queue=jobs&schema=s1&prefetch=4"
        "&postgres=postgresql%3A%2F%2Fpg%3A5432%2Fdb&redis=redis%3A%2F%2Fr%3A6379%2F1",
        runtime_options={},
    )
    assert a.amqp_url == "amqp://u:p@h:5673/vh?heartbeat=30"
    assert a.queue_name == "jobs"
    assert a.dead_queue_name == "jobs.dead"
    assert a.prefetch == 4
    assert a.store.schema == "s1"
    assert a.store.conninfo == "postgresql://pg:5432/db"
    assert a.redis_prefix == "flowcraft:jobs:"
    assert a.delay_queue_name(64) == "jobs.delay.64"


def test_from_url_names_bad_options_and_schemes(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"option prefetch='many' is not a valid int"):
        from_url("amqp://h/?prefetch=many", runtime_options={})
    with pytest.raises(ValueError, match=r"expected one of amqp://, amqps://, rabbitmq://"):
        from_url("redis://h/", runtime_options={})
    monkeypatch.setenv("FLOWCRAFT_POSTGRES_URL", "postgresql://env:5432/db")
    a = from_url("amqps://h:5671/?queue=q", runtime_options={})
    assert a.amqp_url == "amqps://h:5671/"
    assert a.store.conninfo == "postgresql://env:5432/db"
    b = from_url("amqp://h/?postgres=postgresql%3A%2F%2Furl%2Fdb", runtime_options={})
    assert b.store.conninfo == "postgresql://url/db"


def test_backend_entry_point_and_concurrency_alias() -> None:
    a = open_adapter("amqp://127.0.0.1:5672/?queue=q", runtime_options={}, concurrency=3)
    assert isinstance(a, RabbitMQAdapter)
    assert a.prefetch == 3
    assert a.handoff_after == a.consumer_timeout / 2 == 900.0


def test_capabilities_declare_what_the_suite_checks() -> None:
    caps = RabbitMQAdapter.capabilities
    assert caps.delayed_delivery
    assert caps.redelivery_on_crash
    assert caps.dead_letter
    assert caps.multi_process
    assert caps.extra == {"bytes_counter": True}
