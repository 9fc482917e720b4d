"""Topic checks and creation: the predictions, feedback and DLQ topics, and their co-partitioning."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from streamlearn.kafka.client import Admin, KafkaSetupError, admin
from streamlearn.kafka.settings import KafkaSettings


@contextlib.contextmanager
def _admin(settings: KafkaSettings) -> Iterator[Admin]:
    client = admin(settings)
    try:
        yield client
    finally:
        client.close()


def create_topics(settings: KafkaSettings, partitions: int, replication: int = 1,
                  retention_ms: int | None = None) -> dict[str, str]:
    """Create the predictions, feedback and DLQ topics, each with ``partitions`` partitions.

    Idempotent: a topic that exists is fine if its partition count matches
    (the DLQ's count does not matter). ``retention_ms`` applies to the
    predictions and feedback topics. Returns topic -> "created" | "exists".
    """
    if partitions < 1:
        raise ValueError(f"partitions: must be >= 1, got {partitions}")
    if replication < 1:
        raise ValueError(f"replication: must be >= 1, got {replication}")
    if retention_ms is not None and retention_ms < -1:
        raise ValueError(f"retention_ms: must be >= -1 (-1 = forever), got {retention_ms}")
    wanted = [settings.predictions_topic, settings.feedback_topic, settings.dlq_topic]
    with _admin(settings) as client:
        have = client.describe(wanted)
        out: dict[str, str] = {}
        new: dict[str, tuple[int, int, dict[str, str]]] = {}
        for topic in wanted:
            if topic in have:
                if topic != settings.dlq_topic and have[topic].partitions != partitions:
                    raise KafkaSetupError(f"topic {topic} exists with {have[topic].partitions} partitions, "
                                          f"not {partitions}")
                out[topic] = "exists"
                continue
            data_topic = topic != settings.dlq_topic
            configs = {"retention.ms": str(retention_ms)} if retention_ms is not None and data_topic else {}
            new[topic] = (partitions, replication, configs)
        if new:
            out.update(client.create(new))  # "exists" if someone else was faster: checked below
    check_copartitioned(settings)
    return out


def describe_topics(settings: KafkaSettings) -> dict[str, Any]:
    """The three topics: role, whether they exist, partitions, replication; and co-partitioning."""
    roles = {settings.predictions_topic: "predictions", settings.feedback_topic: "feedback",
             settings.dlq_topic: "dlq"}
    with _admin(settings) as client:
        described = client.describe(list(roles))
    topics: dict[str, Any] = {}
    for name, role in roles.items():
        t = described.get(name)
        topics[name] = {
            "role": role,
            "exists": t is not None,
            "partitions": t.partitions if t else 0,
            "replication_factor": t.replication_factor if t else 0,
        }
    p, f = topics[settings.predictions_topic], topics[settings.feedback_topic]
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "topics": topics,
        "copartitioned": p["exists"] and f["exists"] and p["partitions"] == f["partitions"],
    }


def check_copartitioned(settings: KafkaSettings) -> int:
    """The shared partition count of the predictions and feedback topics, or KafkaSetupError."""
    with _admin(settings) as client:
        have = client.describe([settings.predictions_topic, settings.feedback_topic])
    for topic in (settings.predictions_topic, settings.feedback_topic):
        if topic not in have:
            raise KafkaSetupError(f"topic {topic} does not exist at {settings.bootstrap_servers} "
                                  "(streamlearn topics create makes it)")
    n_pred, n_fb = have[settings.predictions_topic].partitions, have[settings.feedback_topic].partitions
    if n_pred != n_fb:
        raise KafkaSetupError(
            f"topics are not co-partitioned: {settings.predictions_topic} has {n_pred} partitions, "
            f"{settings.feedback_topic} has {n_fb}; a prediction and its feedback must land in the "
            "same partition number, so both topics need the same count")
    return n_pred
