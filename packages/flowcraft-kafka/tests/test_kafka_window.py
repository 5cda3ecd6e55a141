"""Unit tests of the per-partition in-flight windows (no broker)."""

from __future__ import annotations

from flowcraft_kafka.window import Windows


def _windows() -> Windows:
    w = Windows({"jobs": 3, "jobs.delay": 10})
    w.assign([("jobs", 0, 5), ("jobs", 1, 0), ("jobs.delay", 0, 0)])
    return w


def test_commit_stops_at_the_lowest_unfinished_offset() -> None:
    w = _windows()
    recs = [w.take("jobs", 0, o, None, b"", {}) for o in (3, 4, 5)]
    assert all(r is not None for r in recs)
    assert w.to_commit() == [("jobs", 0, 3)]
    w.finish(recs[1])  # type: ignore[arg-type]
    w.finish(recs[2])  # type: ignore[arg-type]
    assert w.to_commit() == []  # 3 still runs: nothing past it is committed
    w.finish(recs[0])  # type: ignore[arg-type]
    assert w.to_commit() == [("jobs", 0, 6)]


def test_suspects_are_messages_below_the_high_watermark_at_assignment() -> None:
    w = _windows()
    a = w.take("jobs", 0, 4, None, b"", {})
    b = w.take("jobs", 0, 5, None, b"", {})
    assert a is not None and a.suspect
    assert b is not None and not b.suspect


def test_a_full_window_pauses_only_its_partition_and_resumes_when_it_drains() -> None:
    w = _windows()
    recs = [w.take("jobs", 0, o, None, b"", {}) for o in range(3)]
    pause, resume = w.pause_plan(set())
    assert [(p.topic, p.partition) for p in pause] == [("jobs", 0)]
    assert resume == []
    w.finish(recs[0])  # type: ignore[arg-type]
    pause, resume = w.pause_plan(set())
    assert pause == [] and [(p.topic, p.partition) for p in resume] == [("jobs", 0)]


def test_holding_back_a_topic_pauses_all_of_its_partitions() -> None:
    w = _windows()
    pause, _ = w.pause_plan({"jobs"})
    assert sorted((p.topic, p.partition) for p in pause) == [("jobs", 0), ("jobs", 1)]


def test_revoked_partitions_report_their_position_and_take_nothing_more() -> None:
    w = _windows()
    r = w.take("jobs", 1, 7, None, b"", {})
    w.take("jobs", 1, 8, None, b"", {})
    assert r is not None
    assert w.revoke([("jobs", 1)]) == [("jobs", 1, 7)]
    assert r.window.revoked
    assert w.take("jobs", 1, 9, None, b"", {}) is None
    w.finish(r)  # a job finishing after the revocation changes nothing
    assert ("jobs", 1) not in w.windows


def test_an_offset_is_taken_once() -> None:
    w = _windows()
    assert w.take("jobs", 0, 1, None, b"", {}) is not None
    assert w.take("jobs", 0, 1, None, b"", {}) is None
    assert w.take("jobs", 0, 0, None, b"", {}) is None  # below what was taken already
