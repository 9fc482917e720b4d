"""DeadLetterSink never raises and loses no letter: null and oversized records, a missing DLQ, refused writes."""

from __future__ import annotations

import logging
import re
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka_helpers import EACH_CLIENT, SCHEMA, TopicFactory, drain

from streamlearn.ingest import DeadLetter, Ingest
from streamlearn.kafka import (
    H_ERROR,
    H_OFFSET,
    H_PARTITION,
    H_TOPIC,
    H_TRUNCATED_FROM,
    H_VALUE_NULL,
    DeadLetterSink,
    KafkaSettings,
    KafkaSource,
    dead_letters,
    partition_for,
)
from streamlearn.source import Record

pytestmark = [pytest.mark.kafka, EACH_CLIENT]

BIG = 2 << 20  # max.message.bytes of a source topic that accepts records over 1 MiB


@contextmanager
def _admin(settings: KafkaSettings) -> Iterator[KafkaAdminClient]:
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, bootstrap_timeout_ms=20_000)
    try:
        yield admin
    finally:
        admin.close()


def _create(settings: KafkaSettings, topics: dict[str, dict[str, str]]) -> None:
    """Create one-partition topics with the given configs (the fixture deletes them after the test)."""
    with _admin(settings) as admin:
        admin.create_topics({t: {"num_partitions": 1, "replication_factor": 1, "configs": c}
                             for t, c in topics.items()}, timeout_ms=20_000, wait_for_metadata=True)


def _read_dlq(settings: KafkaSettings, want: int, deadline_s: float = 20.0) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    letters: list[Any] = []
    try:
        consumer.assign([TopicPartition(settings.dlq_topic, 0)])
        end = time.monotonic() + deadline_s
        while len(letters) < want and time.monotonic() < end:
            for recs in consumer.poll(timeout_ms=500).values():
                letters.extend(recs)
    finally:
        consumer.close()
    return letters


def _headers(letter: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in letter.headers}


def _letter(settings: KafkaSettings, offset: int, value: bytes | None = b"{}", key: bytes | None = b"k") -> DeadLetter:
    rec = Record("prediction", settings.predictions_topic, 0, offset, key, value)  # type: ignore[arg-type]
    return DeadLetter(rec, "not_object", "test")


def _retry_until_acked(sink: DeadLetterSink, deadline_s: float = 20.0) -> None:
    """Drive retry() as the worker does, once per step, until nothing is pending."""
    end = time.monotonic() + deadline_s
    while sink.unacked() and time.monotonic() < end:
        sink.retry()
        sink.flush(timeout_s=5)
        time.sleep(0.05)


def test_letters_land_where_murmur2_of_their_key_puts_them(kafka_topics: TopicFactory) -> None:
    """The sink partitions as the Java client does whichever client it runs on (librdkafka's default would
    hash with CRC32): a letter sits in the DLQ partition its prediction id's records use."""
    settings = kafka_topics(partitions=4)
    keys = [f"req-{i}".encode() for i in range(40)]
    assert any(partition_for(k, 4) != zlib.crc32(k) % 4 for k in keys)  # the two hashes tell apart here
    with DeadLetterSink(settings) as sink:
        for i, key in enumerate(keys):
            sink.write(_letter(settings, i, key=key))
        sink.flush(timeout_s=20)
        assert sink.unacked() == []
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    letters: list[Any] = []
    try:
        consumer.assign([TopicPartition(settings.dlq_topic, p) for p in range(4)])
        end = time.monotonic() + 20
        while len(letters) < len(keys) and time.monotonic() < end:
            for recs in consumer.poll(timeout_ms=500).values():
                letters.extend(recs)
    finally:
        consumer.close()
    assert sorted(letter.key for letter in letters) == sorted(keys)
    assert all(letter.partition == partition_for(letter.key, 4) for letter in letters)


def test_null_key_and_value_reach_the_dlq_marked_null(kafka_topics: TopicFactory) -> None:
    """Kafka clients refuse to send neither key nor value; Java producers can write such a record."""
    settings = kafka_topics(partitions=1)
    dead = _letter(settings, 7, value=None, key=None)
    with DeadLetterSink(settings) as sink:
        sink.write(dead)
        sink.flush(timeout_s=20)
        assert sink.unacked() == []
        assert (sink.sent, sink.written, sink.failed) == (1, 1, 0)
    [letter] = _read_dlq(settings, 1)
    assert (letter.key, letter.value) == (None, b"")
    h = _headers(letter)
    assert h[H_VALUE_NULL] == "1"
    assert (h[H_TOPIC], h[H_PARTITION], h[H_OFFSET], h[H_ERROR]) == (settings.predictions_topic, "0", "7",
                                                                     "not_object")
    assert H_TRUNCATED_FROM not in h


def test_oversized_record_reaches_the_dlq_cut_with_its_size(kafka_topics: TopicFactory) -> None:
    settings = kafka_topics(partitions=1, create=False)
    _create(settings, {settings.predictions_topic: {"max.message.bytes": str(BIG)}, settings.feedback_topic: {},
                       settings.dlq_topic: {}})
    key, value = b"big-1", bytes(range(256)) * 6000  # 1.5 MiB: over the DLQ's ~1 MiB limit
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", max_request_size=BIG)
    try:
        meta = producer.send(settings.predictions_topic, value=value, key=key).get(timeout=20)
    finally:
        producer.close()

    source = KafkaSource(settings, [0])
    try:
        got = drain(source, Ingest(SCHEMA), 1, deadline_s=20)
    finally:
        source.close()
    [dead] = got.dead
    assert dead.reason == "oversize" and dead.record.value == value

    with DeadLetterSink(settings) as sink:  # the default limit: just under 1 MiB
        sink.write(dead)
        sink.flush(timeout_s=20)
        assert sink.unacked() == []
        assert (sink.sent, sink.written, sink.failed) == (1, 1, 0)
    with DeadLetterSink(settings, max_record_bytes=100_000) as sink:
        sink.write(dead)
        sink.flush(timeout_s=20)
        assert sink.unacked() == []

    letters = _read_dlq(settings, 2)
    assert [len(m.key) + len(m.value) for m in letters] == [900_000, 100_000]
    for letter in letters:
        h = _headers(letter)
        assert letter.key == key
        assert value.startswith(letter.value)  # a prefix of the original bytes
        assert h[H_TRUNCATED_FROM] == str(len(key) + len(value))
        # ... and the source headers point at the full record
        assert (h[H_TOPIC], int(h[H_PARTITION]), int(h[H_OFFSET])) == (settings.predictions_topic, meta.partition,
                                                                       meta.offset)
        assert h[H_ERROR] == "oversize"
        assert H_VALUE_NULL not in h


def test_missing_dlq_topic_keeps_letters_until_retry_delivers_them(kafka_topics: TopicFactory,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dead_letters, "RETRY_FIRST_S", 2.0)  # a margin for the "not yet" check below
    settings = kafka_topics(partitions=1, create=False)
    first, second = _letter(settings, 1), _letter(settings, 2)
    with DeadLetterSink(settings) as sink:
        sink.write(first)  # no DLQ topic: the send or its delivery fails within max_block_ms, never raises
        sink.flush(timeout_s=10)
        assert sink.unacked() == [first]
        assert (sink.sent, sink.written, sink.failed) == (1, 0, 1)
        sink.write(second)  # queued behind the waiting letter, no send tried
        assert sink.unacked() == [first, second]
        assert sink.failed == 1
        assert sink.retry() == 0  # the backoff has not passed
        assert sink.failed == 1

        _create(settings, {settings.dlq_topic: {}})
        _retry_until_acked(sink)
        assert sink.unacked() == []
        assert (sink.sent, sink.written) == (2, 2)
        assert sink.failed <= 4  # attempts at most every 2, 4, 8 s: not once per step
    letters = _read_dlq(settings, 2)
    assert [int(_headers(m)[H_OFFSET]) for m in letters] == [1, 2]  # in write order


def test_refused_letters_are_logged_once_and_retried(kafka_topics: TopicFactory,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The broker refuses the letters (DLQ limited to 1 KiB): the errback keeps them; retry() delivers them."""
    settings = kafka_topics(partitions=1, create=False)
    _create(settings, {settings.dlq_topic: {"max.message.bytes": "1024"}})
    letters = [_letter(settings, 40, value=b"x" * 4096), _letter(settings, 41, value=b"y" * 4096)]
    with caplog.at_level(logging.WARNING, logger="streamlearn.kafka"), DeadLetterSink(settings) as sink:
        sink.write_many(letters)
        sink.flush(timeout_s=20)
        assert sink.unacked() == letters
        assert (sink.sent, sink.written, sink.failed) == (2, 0, 2)
        errors = [r.getMessage() for r in caplog.records
                  if r.levelno == logging.ERROR and r.name == "streamlearn.kafka.dead_letters"]
        assert len(errors) == 1  # once per outage
        assert f"{settings.predictions_topic}[0]@40" in errors[0]
        assert re.search("size.?too.?large", errors[0], re.IGNORECASE) and "2 letter(s) pending" in errors[0]

        with _admin(settings) as admin:
            admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, settings.dlq_topic,
                                                {"max.message.bytes": str(1 << 20)})])
        _retry_until_acked(sink)
        assert sink.unacked() == []
        assert sink.written == 2
    assert any("again" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert sorted(int(_headers(m)[H_OFFSET]) for m in _read_dlq(settings, 2)) == [40, 41]
