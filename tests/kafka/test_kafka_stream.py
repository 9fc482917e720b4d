"""Produce with `streamlearn produce`, read back with KafkaSource + Ingest: every event exactly once."""

from __future__ import annotations

import json

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka_helpers import (
    EACH_CLIENT,
    SCHEMA,
    TopicFactory,
    decoded,
    drain,
    expected_examples,
    identity,
    run_cli,
    simulate,
)

from streamlearn.ingest import Ingest
from streamlearn.kafka import KafkaSetupError, KafkaSource, partition_for, produce_stream

pytestmark = [pytest.mark.kafka, EACH_CLIENT]

STREAM = {"judged_share": 0.8, "duplicate_share": 0.05, "out_of_order_share": 0.1}
CLI_STREAM = ["--judged-share", "0.8", "--duplicate-share", "0.05", "--out-of-order-share", "0.1"]


def _produce_cli(settings, events: int, *extra: str) -> dict:
    done = run_cli(settings, "produce", "--events", str(events), "--seed", "3", *CLI_STREAM, *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("codec", ["json", "binary"])
def test_produce_cli_then_consume_exactly_once(kafka_topics: TopicFactory, codec: str) -> None:
    settings = kafka_topics(partitions=3)
    summary = _produce_cli(settings, 1500, "--codec", codec, "--pack", "16")
    events = simulate(1500, seed=3, **STREAM)  # the same stream, in process
    n_pred = sum(1 for k, _, _ in identity(events).elements() if k == "prediction")
    assert (summary["predictions"], summary["feedback"]) == (n_pred, len(events) - n_pred)
    if codec == "binary":
        assert summary["records"] < len(events)  # packed
    else:
        assert summary["records"] == len(events)

    source = KafkaSource(settings, [0, 1, 2])
    ingest = Ingest(SCHEMA)
    try:
        got = drain(source, ingest, summary["records"])
        assert source.next_batch(100) == []  # nothing beyond what was produced
    finally:
        source.close()
    assert len(got.records) == summary["records"]
    assert len(set(got.keys())) == len(got.keys())  # no record twice
    assert identity(decoded(got.records)) == identity(events)  # every event, exactly once
    assert got.dead == []
    assert len(got.examples) == expected_examples(events)
    joins = ingest.join_counts()
    assert joins["joined"] == len(got.examples)
    assert joins["duplicate"] == len(events) - len(identity(events)) > 0  # each extra copy, once
    # both events of an id met in the partition murmur2 of the id gives (the Java client's choice too)
    for rec in got.records:
        for ev in decoded([rec]):
            assert rec.partition == partition_for(ev.id.encode(), 3)
            assert rec.kind == ("prediction" if rec.topic == settings.predictions_topic else "feedback")
    assert {ex.partition for ex in got.examples} == {0, 1, 2}


def test_seek_resumes_exactly(kafka_topics: TopicFactory) -> None:
    settings = kafka_topics(partitions=2)
    events = simulate(800, seed=1)
    counts = produce_stream(settings, events)
    total = counts["records"]

    first = KafkaSource(settings, [0, 1])
    try:
        part1 = drain(first, Ingest(SCHEMA), total // 3, batch=97)
        saved = first.positions()
    finally:
        first.close()
    assert len(part1.records) == total // 3
    assert sum(saved.values()) == total // 3  # positions = exactly what was returned

    second = KafkaSource(settings, [0, 1], positions=saved)
    try:
        assert second.positions() == saved
        part2 = drain(second, Ingest(SCHEMA), total - len(part1.records))
        # rewind one pair on an open source: exactly those records again
        tp = (settings.feedback_topic, 1)
        second.seek({**saved, tp: saved[tp]})
        again = drain(second, Ingest(SCHEMA), total - len(part1.records))
    finally:
        second.close()
    keys1, keys2 = set(part1.keys()), set(part2.keys())
    assert not keys1 & keys2
    assert len(keys1 | keys2) == total
    assert identity(decoded(part1.records + part2.records)) == identity(events)
    assert set(again.keys()) == keys2


def test_missing_positions_start_at_earliest_and_foreign_ones_are_ignored(kafka_topics: TopicFactory) -> None:
    settings = kafka_topics(partitions=2)
    counts = produce_stream(settings, simulate(300, seed=2))
    start = {(settings.predictions_topic, 0): 5, ("some.other.topic", 0): 7,
             (settings.predictions_topic, 9): 1}
    source = KafkaSource(settings, [0], positions=start)
    try:
        pos = source.positions()
        assert set(pos) == {(settings.predictions_topic, 0), (settings.feedback_topic, 0)}
        assert pos == {(settings.predictions_topic, 0): 5, (settings.feedback_topic, 0): 0}
        ends = source.lag()
        got = drain(source, Ingest(SCHEMA), sum(ends.values()))
    finally:
        source.close()
    assert {r.partition for r in got.records} == {0}
    assert min(r.offset for r in got.records if r.topic == settings.predictions_topic) == 5
    assert min(r.offset for r in got.records if r.topic == settings.feedback_topic) == 0
    assert len(got.records) == sum(ends.values()) < counts["records"]


def test_lag_and_monitoring_commit(kafka_topics: TopicFactory) -> None:
    settings = kafka_topics(partitions=2)
    counts = produce_stream(settings, simulate(200, seed=4))
    source = KafkaSource(settings, [0, 1])
    try:
        assert sum(source.lag().values()) == counts["records"]
        drain(source, Ingest(SCHEMA), counts["records"])
        assert set(source.lag().values()) == {0}
        assert source.commit_for_monitoring()
        positions = source.positions()
    finally:
        source.close()
    probe = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=settings.group_id,
                          enable_auto_commit=False)
    try:
        committed = {tp: probe.committed(TopicPartition(*tp), timeout_ms=10_000) for tp in positions}
    finally:
        probe.close()
    assert committed == positions


def test_missing_topic_is_a_setup_error(kafka_topics: TopicFactory) -> None:
    settings = kafka_topics(create=False)
    with pytest.raises(KafkaSetupError, match="does not exist"):
        KafkaSource(settings, [0])
    with pytest.raises(KafkaSetupError, match="does not exist"):
        produce_stream(settings, simulate(5))
    done = run_cli(settings, "produce", "--events", "5")
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("streamlearn: error: topic") and "does not exist" in last
