"""`streamlearn topics create|describe`, co-partitioning checks, and a broker restart mid-stream."""

from __future__ import annotations

import json
import logging
import time

import pytest
from kafka.admin import KafkaAdminClient
from kafka_helpers import (
    EACH_CLIENT,
    SCHEMA,
    Broker,
    TopicFactory,
    decoded,
    drain,
    expected_examples,
    identity,
    run_cli,
    simulate,
)

from streamlearn.ingest import Ingest
from streamlearn.kafka import (
    KafkaSetupError,
    KafkaSource,
    SourceConfig,
    check_copartitioned,
    create_topics,
    describe_topics,
    produce_stream,
)

pytestmark = [pytest.mark.kafka, EACH_CLIENT]


def test_topics_create_then_describe(kafka_topics: TopicFactory) -> None:
    settings = kafka_topics(create=False)
    done = run_cli(settings, "topics", "create", "--partitions", "3", "--retention-ms", "3600000")
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout.strip().splitlines()[-1])
    done = run_cli(settings, "topics", "describe")
    assert done.returncode == 0, done.stderr
    described = json.loads(done.stdout.strip().splitlines()[-1])
    assert created == described
    assert described["copartitioned"] is True
    roles = {t["role"]: t for t in described["topics"].values()}
    assert set(roles) == {"predictions", "feedback", "dlq"}
    assert all(t["exists"] and t["partitions"] == 3 and t["replication_factor"] == 1 for t in roles.values())
    assert check_copartitioned(settings) == 3

    again = run_cli(settings, "topics", "create", "--partitions", "3")  # idempotent
    assert again.returncode == 0, again.stderr
    clash = run_cli(settings, "topics", "create", "--partitions", "5")
    assert clash.returncode == 2
    assert clash.stderr.count("\n") == 1 and "3 partitions" in clash.stderr and "5" in clash.stderr


def test_copartitioning_mismatch_names_both_counts(kafka_topics: TopicFactory) -> None:
    settings = kafka_topics(create=False)
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        admin.create_topics({settings.predictions_topic: {"num_partitions": 2, "replication_factor": 1},
                             settings.feedback_topic: {"num_partitions": 3, "replication_factor": 1}},
                            wait_for_metadata=True)
    finally:
        admin.close()
    with pytest.raises(KafkaSetupError) as err:
        check_copartitioned(settings)
    msg = str(err.value)
    assert f"{settings.predictions_topic} has 2 partitions" in msg
    assert f"{settings.feedback_topic} has 3" in msg
    assert describe_topics(settings)["copartitioned"] is False
    with pytest.raises(KafkaSetupError, match="exists with 3 partitions, not 2"):
        create_topics(settings, 2)
    with pytest.raises(KafkaSetupError, match="not co-partitioned"):
        produce_stream(settings, simulate(5))
    done = run_cli(settings, "produce", "--events", "5")
    assert done.returncode == 2 and "has 2 partitions" in done.stderr


def test_describe_reports_missing_topics(kafka_topics: TopicFactory) -> None:
    settings = kafka_topics(create=False)
    described = describe_topics(settings)
    assert described["copartitioned"] is False
    assert not any(t["exists"] for t in described["topics"].values())
    with pytest.raises(KafkaSetupError, match=f"topic {settings.predictions_topic} does not exist"):
        check_copartitioned(settings)


def test_broker_restart_mid_stream_loses_nothing(kafka_broker: Broker, kafka_topics: TopicFactory,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    if not kafka_broker.managed:
        pytest.skip("restarts only a broker this session started (STREAMLEARN_KAFKA_BOOTSTRAP is set)")
    settings = kafka_topics(partitions=2)
    events = simulate(1000, seed=7)
    half = len(events) // 2
    first = produce_stream(settings, events[:half])
    source = KafkaSource(settings, [0, 1], config=SourceConfig(idle_probe_s=0.5, probe_timeout_ms=1000,
                                                               max_backoff_s=1.0))
    ingest = Ingest(SCHEMA)
    caplog.set_level(logging.WARNING, logger="streamlearn.kafka")
    try:
        before = drain(source, ingest, first["records"] // 2, batch=50)
        kafka_broker.stop()
        try:
            # what the client had buffered, then nothing
            during = drain(source, ingest, first["records"], deadline_s=4.0, batch=50)
            held = source.positions()
            assert sum(held.values()) == len(before.records) + len(during.records)
        finally:
            kafka_broker.start()
        second = produce_stream(settings, events[half:])
        total = first["records"] + second["records"]
        after = drain(source, ingest, total - len(before.records) - len(during.records), deadline_s=90)
    finally:
        source.close()
    records = before.records + during.records + after.records
    assert len(records) == total
    assert len({(r.topic, r.partition, r.offset) for r in records}) == total
    assert identity(decoded(records)) == identity(events)
    examples = before.examples + during.examples + after.examples
    assert ingest.join_counts()["joined"] == len(examples) == expected_examples(events)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("streamlearn.kafka")]
    assert any("unavailable" in m for m in messages)
    assert any("reachable again" in m for m in messages)


def test_unreachable_broker_is_retried_not_raised(kafka_client: str, caplog: pytest.LogCaptureFixture) -> None:
    from streamlearn.kafka import KafkaSettings
    from tests.ports import free_port

    settings = KafkaSettings(f"127.0.0.1:{free_port()}", connect_timeout_ms=500, client=kafka_client)
    caplog.set_level(logging.WARNING, logger="streamlearn.kafka")
    start = time.monotonic()
    source = KafkaSource(settings, [0], config=SourceConfig(backoff_s=0.1, max_backoff_s=0.2))
    try:
        assert source.next_batch(10) == []
        assert source.positions() == {}
        assert source.lag() == {}
        assert source.commit_for_monitoring() is False
    finally:
        source.close()
    assert time.monotonic() - start < 60
    assert any("unavailable" in r.getMessage() for r in caplog.records)
