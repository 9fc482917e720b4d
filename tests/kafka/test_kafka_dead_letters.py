"""Bad input goes to the DLQ with its original bytes and the reason; hand-built contract JSON is accepted."""

from __future__ import annotations

import json
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka_helpers import (
    DENSE,
    EACH_CLIENT,
    MALFORMED_CORE,
    SCHEMA,
    Sent,
    TopicFactory,
    drain,
    expected_examples,
    send_malformed,
    simulate,
)

from streamlearn.events import Schema
from streamlearn.ingest import Ingest
from streamlearn.kafka import (
    H_DETAIL,
    H_ERROR,
    H_OFFSET,
    H_PARTITION,
    H_TOPIC,
    DeadLetterSink,
    KafkaSource,
    produce_stream,
)

pytestmark = [pytest.mark.kafka, EACH_CLIENT]

# (stream, value, expected reason)
MALFORMED = [
    *MALFORMED_CORE,
    ("prediction", b"[1, 2, 3]", "not_object"),
    ("prediction", f'{{"ts": 1.0, "features": [{DENSE}], "prediction": 1}}'.encode(), "missing_id"),
    ("prediction", f'{{"id": "m-6", "ts": 1.0, "features": [{DENSE}], "prediction": "{"ü" * 1500}"}}'.encode(),
     "unknown_class"),  # a long detail: the header is cut at a character boundary
]


def _raw_producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all")


def test_malformed_records_go_to_the_dlq_with_headers(kafka_topics: TopicFactory) -> None:
    settings = kafka_topics(partitions=2)
    valid = simulate(200, seed=5)
    counts = produce_stream(settings, valid)
    sent: Sent = {}
    send_malformed(settings, MALFORMED, 0, sent)

    source = KafkaSource(settings, [0, 1])
    ingest = Ingest(SCHEMA)
    try:
        got = drain(source, ingest, counts["records"] + len(MALFORMED))
    finally:
        source.close()
    assert len(got.records) == counts["records"] + len(MALFORMED)
    assert len(got.examples) == expected_examples(valid)  # the valid stream still trains
    assert {(d.record.topic, d.record.partition, d.record.offset) for d in got.dead} == set(sent)
    invalid = ingest.counts[(settings.predictions_topic, "invalid")] + ingest.counts[(settings.feedback_topic,
                                                                                        "invalid")]
    assert invalid == len(MALFORMED)

    with DeadLetterSink(settings) as sink:
        sink.write_many(got.dead)
        sink.flush(timeout_s=30)
        assert (sink.sent, sink.written, sink.failed) == (len(MALFORMED), len(MALFORMED), 0)

    dlq = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                        auto_offset_reset="earliest")
    try:
        dlq.assign([TopicPartition(settings.dlq_topic, p) for p in range(2)])
        letters: list = []
        end = time.monotonic() + 30
        while len(letters) < len(MALFORMED) and time.monotonic() < end:
            for recs in dlq.poll(timeout_ms=500).values():
                letters.extend(recs)
    finally:
        dlq.close()
    assert len(letters) == len(MALFORMED)
    for letter in letters:
        h = {k: v.decode() for k, v in letter.headers}  # all valid UTF-8
        where = (h[H_TOPIC], int(h[H_PARTITION]), int(h[H_OFFSET]))
        key, value, reason = sent[where]
        assert letter.value == value  # the original bytes, untouched
        assert letter.key == key
        assert h[H_ERROR] == reason
        assert 0 < len(dict(letter.headers)[H_DETAIL]) <= 1000


def test_hand_built_contract_json_is_accepted(kafka_topics: TopicFactory) -> None:
    """A producer knowing only the README contract: JSON text, key = id, the client's own partitioner."""
    settings = kafka_topics(partitions=3)
    schema = Schema(classes=("cat", "dog", "bird"), n_features=3)
    predictions = [
        '{"id": "req-1", "ts": 1764300000.5, "model_version": 3, "features": [0.1, 0.0, 2.5],'
        ' "prediction": "cat", "probs": [0.7, 0.2, 0.1]}',
        '{"id": "req-2", "ts": 1764300001, "features": {"colour=red": 1.0, "length": 3},'
        ' "prediction": 1, "served_by": "eu-1"}',
        '{"id": "req-3", "ts": 1764300002.0, "features": [1, 2, 3], "prediction": "bird"}',
        '{"id": "req-6", "ts": 1764300003.0, "features": [0, 1, 0], "prediction": "dog"}',
        '{"id": "req-7", "ts": 1764300004.0, "features": [0, 1, 1], "prediction": "dog"}',
    ]
    feedback = [
        '{"id": "req-6", "ts": 1764299990.0, "label": 0}',  # written before its prediction
        '{"id": "req-1", "ts": 1764300050.0, "correct": false}',
        '{"id": "req-2", "ts": 1764300050.0, "label": "bird", "weight": 2.0}',
        '{"id": "req-3", "ts": 1764300051.0, "correct": true, "comment": "nice"}',
        '{"id": "req-5", "ts": 1764300052.0, "correct": true, "prediction": "dog", "features": [0, 0, 1]}',
    ]
    producer = _raw_producer(settings.bootstrap_servers)
    try:
        for text in feedback[:1] + predictions + feedback[1:]:
            ident = json.loads(text)["id"]
            topic = settings.feedback_topic if text in feedback else settings.predictions_topic
            producer.send(topic, value=text.encode("utf-8"), key=ident.encode("utf-8"))
        producer.flush(timeout=30)
    finally:
        producer.close()

    source = KafkaSource(settings, [0, 1, 2])
    try:
        got = drain(source, Ingest(schema), len(predictions) + len(feedback))
    finally:
        source.close()
    assert got.dead == []
    taught = {(ex.id, ex.label, ex.positive, ex.weight) for ex in got.examples}
    assert taught == {
        ("req-1", 0, False, 1.0),  # "not cat"
        ("req-2", 2, True, 2.0),  # "bird", by name, weighted
        ("req-3", 2, True, 1.0),
        ("req-5", 1, True, 1.0),  # inline: no prediction event needed
        ("req-6", 0, True, 1.0),  # feedback first, joined when the prediction came
    }
    assert len(got.examples) == 5  # req-7 is still waiting for a judgement
