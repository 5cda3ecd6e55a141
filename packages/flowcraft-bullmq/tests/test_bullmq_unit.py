"""flowcraft-bullmq without a server: job ids, URL parsing, retry-option mapping, entry point.

The adapter against a real Redis is tested in ``integration-tests/`` (conformance suite,
adapter specifics, worker processes killed with SIGKILL).
"""

from __future__ import annotations

from typing import Any

import pytest
from flowcraft import load_blueprint
from flowcraft.distributed.backends import open_adapter
from flowcraft.distributed.contracts import JobPayload
from flowcraft.executor import retry_delay
from flowcraft_bullmq import BACKOFF_STRATEGY, BullMQAdapter, from_url, job_id_for


def payload(**kw: Any) -> JobPayload:
    base: dict[str, Any] = {"run_id": "run-1", "blueprint_id": "bp", "node_id": "n"}
    return JobPayload(**{**base, **kw})


# -- job ids -----------------------------------------------------------------------------------


def test_job_id_is_deterministic_and_names_every_component() -> None:
    assert job_id_for(payload()) == "fc|run-1|bp|n|0|1|node|0"
    assert job_id_for(payload()) == job_id_for(payload())
    assert job_id_for(payload(kind="timer"), wake_ms=1234) == "fc|run-1|bp|n|0|1|timer|0|t1234"
    assert job_id_for(payload(), generation="r9") == "fc|run-1|bp|n|0|1|node|0|r9"


@pytest.mark.parametrize(
    "change",
    [
        {"iteration": 1},
        {"attempt": 2},
        {"requeues": 1},
        {"kind": "timer"},
        {"node_id": "n[0]"},
        {"run_id": "run-2"},
        {"blueprint_id": "other"},
    ],
)
def test_anything_that_is_new_work_gets_a_new_id(change: dict[str, Any]) -> None:
    assert job_id_for(payload(**change)) != job_id_for(payload())


def test_job_ids_never_contain_colons_and_escape_separators() -> None:
    jid = job_id_for(payload(run_id="a:b|c%d", node_id="x:y"), generation="g:1")
    assert ":" not in jid
    assert jid == "fc|a%3Ab%7Cc%25d|bp|x%3Ay|0|1|node|0|g%3A1"
    # escaping keeps distinct inputs distinct
    assert job_id_for(payload(run_id="a|b", node_id="c")) != job_id_for(
        payload(run_id="a", node_id="b|c")
    )


# -- URLs and the entry point -------------------------------------------------------------------


def test_from_url_takes_adapter_options_from_the_query() -> None:
    a = from_url("bullmq://h:7000/2?queue=jobs&prefix=app&concurrency=3&shards=4&socket_timeout=5")
    assert a.url == "redis://h:7000/2?socket_timeout=5"
    assert (a.queue_name, a.prefix, a.concurrency) == ("jobs", "app", 3)
    assert a.store.layout.shards == 4
    assert a.store.layout.prefix == "app:state:"
    b = from_url("rediss://user:pw@h:6380/0", queue_name="kw", concurrency=2)
    assert (b.url, b.queue_name, b.concurrency) == ("rediss://user:pw@h:6380/0", "kw", 2)


def test_from_url_refuses_other_schemes_and_bad_options() -> None:
    with pytest.raises(ValueError, match=r"expected one of bullmq://, redis://, rediss://"):
        from_url("amqp://h:5672/")
    with pytest.raises(ValueError, match=r"option concurrency='many' is not a valid int"):
        from_url("redis://h:6379/0?concurrency=many")


def test_backend_urls_open_a_bullmq_adapter_through_the_entry_point() -> None:
    for url in ("redis://127.0.0.1:1/0", "bullmq://127.0.0.1:1/0?queue=x"):
        a = open_adapter(url, concurrency=5)
        assert isinstance(a, BullMQAdapter)
        assert a.concurrency == 5


def test_invalid_concurrency_is_refused() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        BullMQAdapter("redis://127.0.0.1:1/0", concurrency=0)


# -- retries ----------------------------------------------------------------------------------


def node(config: dict[str, Any]) -> Any:
    bp = load_blueprint({"id": "r", "nodes": [{"id": "n", "uses": "x", "config": config}]})
    return bp.nodes[0]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, {"attempts": 1}),
        ({"maxRetries": 3}, {"attempts": 3}),
        (
            {"maxRetries": 3, "retryDelay": 100, "backoff": "fixed", "jitter": 0},
            {"attempts": 3, "backoff": {"type": "fixed", "delay": 100}},
        ),
        (
            {"maxRetries": 4, "retryDelay": 100, "jitter": 0},
            {"attempts": 4, "backoff": {"type": "exponential", "delay": 100}},
        ),
        (  # the default jitter (10 %) needs Flowcraft's own strategy
            {"maxRetries": 4, "retryDelay": 100},
            {"attempts": 4, "backoff": {"type": BACKOFF_STRATEGY, "delay": 100}},
        ),
        (  # the cap binds on the 3rd retry (400 ms > 300 ms): Flowcraft's own strategy
            {"maxRetries": 4, "retryDelay": 100, "maxRetryDelay": 300, "jitter": 0},
            {"attempts": 4, "backoff": {"type": BACKOFF_STRATEGY, "delay": 100}},
        ),
        (
            {"maxRetries": 2, "retryDelay": 100, "jitter": 0.2},
            {"attempts": 2, "backoff": {"type": BACKOFF_STRATEGY, "delay": 100}},
        ),
    ],
)
def test_queue_retry_options_express_the_node_policy(
    config: dict[str, Any], expected: dict[str, Any]
) -> None:
    a = BullMQAdapter("redis://127.0.0.1:1/0")
    assert a.get_queue_retry_options(node(config)) == expected


def test_retry_mode_option() -> None:
    n = node({"maxRetries": 3})
    assert BullMQAdapter("redis://127.0.0.1:1/0").should_retry_in_process(n) is True
    queued = BullMQAdapter("redis://127.0.0.1:1/0", retry_in_process=False)
    assert queued.should_retry_in_process(n) is False


def test_flowcraft_backoff_strategy_uses_the_nodes_policy() -> None:
    cfg = {"maxRetries": 5, "retryDelay": 100, "maxRetryDelay": 300, "jitter": 0}
    bp = load_blueprint({"id": "r", "nodes": [{"id": "n", "uses": "x", "config": cfg}]})
    a = BullMQAdapter("redis://127.0.0.1:1/0", runtime_options={"blueprints": [bp]})

    class FakeJob:
        data = {"blueprintId": "r", "nodeId": "n", "runId": "x"}
        opts = {"backoff": {"type": BACKOFF_STRATEGY, "delay": 100}}

    got = [a._backoff(k, BACKOFF_STRATEGY, None, FakeJob()) for k in (1, 2, 3, 4)]
    assert got == [100, 200, 300, 300]
    assert got == [round(retry_delay(bp.nodes[0].config, k) * 1000) for k in (1, 2, 3, 4)]

    class ItemJob(FakeJob):
        data = {"blueprintId": "r", "nodeId": "n[3]", "runId": "x"}

    assert a._backoff(2, BACKOFF_STRATEGY, None, ItemJob()) == 200

    class Unknown(FakeJob):
        data = {"blueprintId": "gone", "nodeId": "n", "runId": "x"}

    assert a._backoff(2, BACKOFF_STRATEGY, None, Unknown()) == 100
