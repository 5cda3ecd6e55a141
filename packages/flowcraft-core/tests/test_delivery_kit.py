"""The adapter kit's shared pieces: backend URL parsing, delivery decisions, the delivery cap."""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from flowcraft.distributed import (
    Delivery,
    DeliveryPolicy,
    Disposition,
    InvalidJobError,
    JobPayload,
    Option,
    RetryJob,
    parse_url,
)
from flowcraft.distributed.delivery import decide, parse
from flowcraft.distributed.memory import InMemoryAdapter, MemoryBroker
from hypothesis import given
from hypothesis import strategies as st

OPTIONS = {"queue": Option("queue_name"), "concurrency": ("concurrency", int)}


def test_parse_url_takes_options_and_keeps_the_rest() -> None:
    u = parse_url(
        "bullmq://h:1/2?queue=q&concurrency=4&ssl_cert_reqs=none",
        OPTIONS,
        schemes={"bullmq": "redis", "redis": "redis"},
        kwargs={"concurrency": 1, "prefix": "p"},
    )
    assert u.scheme == "redis"
    assert u.url == "redis://h:1/2?ssl_cert_reqs=none"
    assert u.kwargs == {"concurrency": 4, "prefix": "p", "queue_name": "q"}


def test_parse_url_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"option concurrency='x' is not a valid int"):
        parse_url("redis://h?concurrency=x", OPTIONS)
    with pytest.raises(ValueError, match=r"unknown option 'nope' \(known: concurrency, queue\)"):
        parse_url("sqs://q?nope=1", OPTIONS, passthrough=False)
    with pytest.raises(ValueError, match=r"expected one of amqp://, rabbitmq://"):
        parse_url("http://x", OPTIONS, schemes={"amqp": "amqp", "rabbitmq": "amqp"})
    with pytest.raises(ValueError) as info:
        parse_url("amqp://u:secret@h?concurrency=z", OPTIONS)
    assert "secret" not in str(info.value)


def test_bool_options() -> None:
    opts = {"dedupe": Option("deduplicate", bool)}
    assert parse_url("x://h?dedupe=off", opts).kwargs == {"deduplicate": False}
    assert parse_url("x://h?dedupe=TRUE", opts).kwargs == {"deduplicate": True}
    with pytest.raises(ValueError, match="dedupe='maybe'"):
        parse_url("x://h?dedupe=maybe", opts)


text = st.text(alphabet=string.ascii_letters + string.digits + "-_.~", min_size=1, max_size=12)


@given(st.dictionaries(text, text, max_size=5), st.integers(0, 10_000), text)
def test_parse_url_round_trips_unknown_query_items(extra: dict[str, str], n: int, q: str) -> None:
    extra = {k: v for k, v in extra.items() if k not in OPTIONS}
    query = "&".join([f"concurrency={n}", f"queue={q}", *(f"{k}={v}" for k, v in extra.items())])
    u = parse_url(f"redis://host:6379/0?{query}", OPTIONS)
    assert u.kwargs == {"concurrency": n, "queue_name": q}
    assert dict(u.rest) == extra
    assert parse_url(u.url, OPTIONS).kwargs == {}


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[1, 2]",
        '{"runId": "r"}',
        b"\xff\xfe",
        "[" * 200_000 + "]" * 200_000,
        json.dumps({"runId": "r", "blueprintId": "b", "nodeId": "n", "attempt": 0}),
    ],
)
def test_malformed_bodies_are_invalid_jobs(body: Any) -> None:
    with pytest.raises(InvalidJobError):
        parse(Delivery(body))


def _job() -> str:
    return JobPayload(run_id="r", blueprint_id="b", node_id="n").to_json()


async def test_decisions() -> None:
    a = InMemoryAdapter(MemoryBroker(), delivery_policy=DeliveryPolicy(max_deliveries=3))
    seen: list[int] = []

    async def ok(job: JobPayload, d: Delivery | None) -> None:
        seen.append(job.attempt)

    async def retry(job: JobPayload, d: Delivery | None) -> None:
        raise RetryJob(job.model_copy(update={"attempt": 2}), 1.5, "again", native=True)

    async def invalid(job: JobPayload, d: Delivery | None) -> None:
        raise InvalidJobError("unknown node 'n'")

    async def broken(job: JobPayload, d: Delivery | None) -> None:
        raise ConnectionError("store down")

    d = await decide(a, Delivery(_job()), ok)
    assert (d.disposition, seen) == (Disposition.ACK, [1])
    d = await decide(a, Delivery(_job()), retry)
    assert (d.disposition, d.delay, d.native, d.reason) == (Disposition.RETRY, 1.5, True, "again")
    assert d.job is not None and d.job.attempt == 2
    d = await decide(a, Delivery(_job()), invalid)
    assert (d.disposition, d.reason) == (Disposition.DEAD_LETTER, "unknown node 'n'")
    d = await decide(a, Delivery(_job(), deliveries=2), broken)
    assert (d.disposition, d.delay) == (Disposition.REDELIVER, 0.1)
    assert d.reason == "ConnectionError: store down"
    # the last allowed delivery fails: dead-lettered with the cause, not redelivered
    d = await decide(a, Delivery(_job(), deliveries=3), broken)
    assert d.disposition is Disposition.DEAD_LETTER
    assert d.reason == "handling failed on delivery 3 (limit 3): ConnectionError: store down"
    # beyond the cap the job is not run at all (it kills its worker every time)
    seen.clear()
    d = await decide(a, Delivery(_job(), deliveries=4), ok)
    assert d.disposition is Disposition.DEAD_LETTER and seen == []
    assert d.reason.startswith("delivered 4 times (limit 3)")
    # queue-native node attempts do not count against the cap
    d = await decide(a, Delivery(_job(), deliveries=5, native_attempts=2), ok)
    assert d.disposition is Disposition.ACK and seen == [1]


def test_backoff_policy() -> None:
    p = DeliveryPolicy(backoff=0.05, max_backoff=30.0)
    assert [p.redelivery_delay(n) for n in (1, 2, 3, 4)] == [0.05, 0.1, 0.2, 0.4]
    assert p.redelivery_delay(10_000) == 30.0


def test_lease_keys_escape_every_id_component() -> None:
    from flowcraft.distributed.leases import lease_key

    assert lease_key("a:b", "c", 0) != lease_key("a", "b:c", 0)
    assert lease_key("a%3Ab", "c", 0) != lease_key("a:b", "c", 0)
    assert lease_key("r", "n[1]", 2) == "flowcraft:lease:r:n[1]:2"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ({1, 2}, "unsupported type set"),
        (complex(0, 2), "unsupported type complex"),
        (float("nan"), "k"),
        (float("inf"), "k"),
        ("bad\ud800", "lone surrogate"),
        ({"deep": ["ok", "x\udfff"]}, "lone surrogate"),
    ],
)
def test_unstorable_values_name_their_key(value: Any, why: str) -> None:
    from flowcraft.distributed.codec import UnstorableValueError, encode_value

    with pytest.raises(UnstorableValueError) as info:
        encode_value("k", value)
    assert info.value.key == "k"
    assert why in str(info.value)


def test_unstorable_keys() -> None:
    from flowcraft.distributed.codec import UnstorableValueError, encode_value

    with pytest.raises(UnstorableValueError, match="lone surrogate"):
        encode_value("k\ud800", 1)
    assert encode_value("ключ.ü/~", "ü") == '"ü"'


def test_job_node_ids_of_batch_items() -> None:
    from flowcraft.distributed.worker import _split_job_node

    nodes = {"scatter": 1, "retry[2]": 1, "retry": 1}
    assert _split_job_node("scatter[3]", nodes) == ("scatter", 3)
    assert _split_job_node("retry[2]", nodes) == ("retry[2]", -1)  # a node of that name
    assert _split_job_node("retry[3]", nodes) == ("retry", 3)
    assert _split_job_node("scatter[\u00b2]", nodes) == ("scatter[\u00b2]", -1)
    assert _split_job_node("scatter[" + "9" * 5000 + "]", nodes)[1] == -1
    assert _split_job_node("ghost[1]", nodes) == ("ghost[1]", -1)


async def test_a_safeguard_copy_is_sent_on_once_per_attempt_and_round() -> None:
    """A copy of a job that finds its node leased is requeued (in case the holder dies) once
    per attempt and requeue round. A marker left by copies of a failed attempt must not drop
    the retry's job when it meets a stale copy holding the lease for a moment: nobody would
    run the node (a CI hang)."""
    from flowcraft import load_blueprint
    from flowcraft.distributed.leases import _Lease, lease_key

    bp = load_blueprint({"id": "one", "nodes": [{"id": "n", "uses": "n"}]})

    async def n(ctx: Any) -> Any:
        return None

    broker = MemoryBroker()
    a = InMemoryAdapter(broker, runtime_options={"registry": {"n": n}, "blueprints": [bp]})
    rid = await a.start_run("one")
    ctx = await a.create_context(rid)
    job = JobPayload(run_id=rid, blueprint_id="one", node_id="n")
    key = lease_key(rid, "n", 0)
    assert await broker.coordination.set_if_not_exist(key, "holder", 30)

    async def sends_on(recovering: bool = False, deliveries: int = 1, **update: int) -> bool:
        j = job.model_copy(update=update)
        d = Delivery(j.to_json(), None, deliveries)
        return await a._sends_on_copy(ctx, j, _Lease(key, "me"), recovering, d)

    assert [await sends_on(), await sends_on()] == [True, False]  # one per round
    assert [await sends_on(requeues=1), await sends_on(requeues=1)] == [True, False]
    assert [await sends_on(attempt=2), await sends_on(attempt=2)] == [True, False]
    # recovering copies: one per round too (they once doubled every round: 26,000 jobs),
    # and a message redelivered once more still goes on
    assert [await sends_on(True, 2), await sends_on(True, 2)] == [True, False]
    assert await sends_on(True, 3) is True
