"""Kafka at the edge, on public client APIs only: confluent-kafka (librdkafka, the default when installed)
or kafka-python, behind the :class:`~streamlearn.source.EventSource` contract.

The rest of streamlearn sees Records, the dead-letter sink and these functions; only
:mod:`streamlearn.kafka.confluent` and :mod:`streamlearn.kafka.kafka_python` import a client.
"""

from streamlearn.kafka.admin import check_copartitioned, create_topics, describe_topics
from streamlearn.kafka.client import KafkaSetupError, KafkaUnavailable
from streamlearn.kafka.dead_letters import (
    H_DETAIL,
    H_ERROR,
    H_OFFSET,
    H_PARTITION,
    H_TOPIC,
    H_TRUNCATED_FROM,
    H_VALUE_NULL,
    DeadLetterSink,
)
from streamlearn.kafka.produce import JsonRecord, partition_for, produce_stream
from streamlearn.kafka.settings import CLIENTS, SASL_MECHANISMS, SECURITY_PROTOCOLS, KafkaSettings, default_client
from streamlearn.kafka.source import KafkaSource, SourceConfig

__all__ = [
    "CLIENTS", "H_DETAIL", "H_ERROR", "H_OFFSET", "H_PARTITION", "H_TOPIC", "H_TRUNCATED_FROM", "H_VALUE_NULL",
    "SASL_MECHANISMS", "SECURITY_PROTOCOLS", "DeadLetterSink", "JsonRecord", "KafkaSettings", "KafkaSetupError",
    "KafkaSource", "KafkaUnavailable", "SourceConfig", "check_copartitioned", "create_topics", "default_client",
    "describe_topics", "partition_for", "produce_stream",
]
