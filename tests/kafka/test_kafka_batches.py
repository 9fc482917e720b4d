"""Every kind of record batch a broker hands out reads the same on both clients; seeks and the read-ahead."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from kafka import KafkaProducer
from kafka_helpers import EACH_CLIENT, SCHEMA, TopicFactory, drain

from streamlearn.ingest import Ingest
from streamlearn.kafka import KafkaSettings, KafkaSource, SourceConfig
from streamlearn.source import Record

pytestmark = pytest.mark.kafka

Row = tuple[str, str, int, int, bytes | None, bytes | None]


def _rows(records: list[Record]) -> list[Row]:
    return [(r.kind, r.topic, r.partition, r.offset, r.key, r.value) for r in records]


def _write_mixed(settings: KafkaSettings) -> int:
    """Batches of every kind a broker may hand out: plain, gzip, transactional (with their markers),
    keyed and keyless, null values, headers. Returns how many records went in."""
    n = 0
    kw = dict(bootstrap_servers=settings.bootstrap_servers, linger_ms=50, batch_size=1 << 20)
    topics = [settings.predictions_topic, settings.feedback_topic]
    for compression in (None, "gzip"):
        producer = KafkaProducer(**kw, compression_type=compression)
        try:
            for i in range(400):
                producer.send(topics[i % 2], partition=i % 3 % 2, key=None if i % 10 == 0 else f"k{i}".encode(),
                              value=None if i % 10 == 3 else b'{"n": %d}' % i + b" " * (i % 200),
                              headers=[("h", b"v")] if i % 3 == 0 else None)
                n += 1
            producer.flush()
        finally:
            producer.close()
    tx = KafkaProducer(**kw, transactional_id=f"test-{uuid.uuid4().hex[:8]}")
    try:
        tx.init_transactions()
        for commit in (True, False):  # read_uncommitted: both transactions' records are read
            tx.begin_transaction()
            for i in range(50):
                tx.send(topics[i % 2], partition=1, key=b"t", value=b"tx%d" % i)
                n += 1
            tx.flush()
            if commit:
                tx.commit_transaction()
            else:
                tx.abort_transaction()
    finally:
        tx.close()
    return n


def _read_all(settings: KafkaSettings, want: int, batch: int, client: str) -> list[Row]:
    source = KafkaSource(dataclasses.replace(settings, client=client), [0, 1])
    try:
        got = drain(source, Ingest(SCHEMA), want, batch=batch).records
        assert source.positions() == {(r.topic, r.partition): r.offset + 1 for r in got}
    finally:
        source.close()
    return _rows(got)


def test_both_clients_read_every_kind_of_batch_the_same(kafka_topics: TopicFactory) -> None:
    settings = kafka_topics(partitions=2)
    n = _write_mixed(settings)
    ours = _read_all(settings, n, 113, "confluent")
    theirs = _read_all(settings, n, 113, "kafka-python")
    assert len(ours) == n
    assert sorted(ours) == sorted(theirs)
    for tp in {(r[1], r[2]) for r in ours}:  # per partition: offset order, control markers skipped
        assert [r for r in ours if (r[1], r[2]) == tp] == [r for r in theirs if (r[1], r[2]) == tp]
        offsets = [r[3] for r in ours if (r[1], r[2]) == tp]
        assert offsets == sorted(offsets)
    for topic in (settings.predictions_topic, settings.feedback_topic):  # the commit marker left a hole
        offsets = [r[3] for r in ours if r[1] == topic and r[2] == 1]
        assert len(set(range(offsets[0], offsets[-1] + 1)) - set(offsets)) == 1
    assert any(r[5] is None for r in ours) and any(r[4] is None for r in ours)


@EACH_CLIENT
def test_a_seek_into_a_compressed_batch_starts_at_that_record(kafka_topics: TopicFactory) -> None:
    settings = kafka_topics(partitions=1)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=200, compression_type="gzip")
    try:
        for i in range(100):  # one gzip batch: the broker returns it whole from any offset inside it
            producer.send(settings.predictions_topic, partition=0, value=b"%d" % i)
        producer.flush()
    finally:
        producer.close()
    source = KafkaSource(settings, [0], positions={(settings.predictions_topic, 0): 37})
    try:
        got = drain(source, Ingest(SCHEMA), 63).records
    finally:
        source.close()
    assert [(r.offset, r.value) for r in got] == [(i, b"%d" % i) for i in range(37, 100)]


@EACH_CLIENT
def test_read_ahead_returns_and_moves_only_what_was_asked(kafka_topics: TopicFactory) -> None:
    settings = kafka_topics(partitions=2)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=20)
    try:
        for i in range(600):
            producer.send(settings.predictions_topic, partition=i % 2, value=b"%d" % i)
        producer.flush()
    finally:
        producer.close()
    source = KafkaSource(settings, [0, 1], config=SourceConfig(read_ahead=250))
    try:
        first = drain(source, Ingest(SCHEMA), 7, batch=7).records
        assert len(first) == 7
        assert sum(source.positions().values()) == 7  # the rest waits in the source, not counted as read
        assert sum(source.lag().values()) == 600 - 7
        assert 0 < source._ahead_n <= 250  # read ahead, but never more than read_ahead records parked
        source.seek({})  # back to the start: what was read ahead is dropped, not returned
        again = drain(source, Ingest(SCHEMA), 600, batch=1000).records
    finally:
        source.close()
    assert len(again) == 600
    assert set(_rows(first)) <= set(_rows(again))
    assert sorted((r.partition, r.offset) for r in again) == sorted(
        (p, o) for p in (0, 1) for o in range(300))
