"""The small interface both Kafka clients implement: a reader, a writer, an admin, and their errors.

:mod:`streamlearn.kafka.confluent` (confluent-kafka, librdkafka) and :mod:`streamlearn.kafka.kafka_python`
implement it on their public APIs; the source, the dead-letter sink, admin and produce are written against
it, so they behave the same whichever client :attr:`KafkaSettings.client` picks. A pair is
``(topic, partition)``; offsets are the next one to read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from streamlearn.kafka.settings import KafkaSettings
from streamlearn.source import Record

Pair = tuple[str, int]
Delivered = Callable[[BaseException | None], None]  # a write's outcome: None when the broker acknowledged it


class KafkaSetupError(Exception):
    """Kafka is not set up as streamlearn needs (topics, partition counts, reachability, auth): retrying won't help."""

    retriable = False


class KafkaUnavailable(Exception):
    """The broker did not answer or refused for now (down, timed out, leader moving): retry later."""

    retriable = True


def what(exc: BaseException) -> str:
    """``Name: message`` once (kafka-python's errors already start with their name)."""
    text, name = str(exc), type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name


@dataclass(frozen=True)
class ReaderConfig:
    """What a reader asks of its client (from the source's :class:`~streamlearn.kafka.source.SourceConfig`)."""

    fetch_max_bytes: int = 64 << 20  # per fetch response, all partitions
    max_partition_fetch_bytes: int = 8 << 20  # per partition per fetch
    check_crcs: bool = False  # TCP and the broker (it checks CRCs on produce) already cover the path
    reconnect_backoff_max_ms: int = 5_000  # notice a restarted broker this soon


@dataclass(frozen=True)
class WriterConfig:
    """What a writer asks of its client; ``acks=all`` always, the murmur2 partitioner always."""

    linger_ms: int = 5  # wait this long to fill a batch
    block_ms: int = 1_000  # longest a send may wait for metadata or buffer room before it fails
    delivery_timeout_ms: int = 120_000  # the client's own retries end after this; the outcome is an error
    batch_bytes: int = 1 << 20
    max_request_bytes: int = 1 << 20


class Reader(Protocol):
    """Reads assigned pairs by explicit assignment (never group rebalancing)."""

    def partitions(self, topic: str, timeout_s: float) -> list[int] | None:
        """The topic's partition numbers; None if it does not exist."""
        ...

    def assign(self, positions: Mapping[Pair, int]) -> None:
        """Read exactly these pairs, each from its offset; whatever was fetched before is dropped."""
        ...

    def read(self, max_records: int, timeout_s: float) -> list[list[Record]]:
        """Up to ``max_records`` fetched records as runs of one pair each, in offset order per pair; waits up to
        ``timeout_s`` only when nothing is fetched yet."""
        ...

    def watermarks(self, pairs: Sequence[Pair], timeout_s: float) -> dict[Pair, tuple[int, int]]:
        """(earliest offset, end offset) per pair, asked of the broker."""
        ...

    def known_ends(self, pairs: Sequence[Pair]) -> dict[Pair, int]:
        """End offsets the client learned from fetch responses (no request); pairs without one left out."""
        ...

    def commit(self, positions: Mapping[Pair, int], timeout_s: float) -> None:
        """Commit offsets to the consumer group (for lag monitoring)."""
        ...

    def close(self) -> None: ...


class Writer(Protocol):
    """Writes records; the client batches, retries and partitions (murmur2 of the key, as the Java client)."""

    def send(self, topic: str, value: bytes, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None, on_delivery: Delivered | None = None) -> None:
        """Hand one record to the client; raises if it cannot even take it (no metadata in time, buffer full)."""
        ...

    def poll(self) -> None:
        """Run the delivery callbacks that are due (confluent calls them here; kafka-python on its own thread)."""
        ...

    def flush(self, timeout_s: float | None) -> bool:
        """Wait up to ``timeout_s`` for every record handed over to be delivered or failed; whether all were."""
        ...

    def close(self, timeout_s: float) -> None: ...


@dataclass(frozen=True)
class TopicInfo:
    partitions: int
    replication_factor: int


class Admin(Protocol):
    def describe(self, topics: Sequence[str]) -> dict[str, TopicInfo]:
        """Those of ``topics`` that exist."""
        ...

    def create(self, topics: Mapping[str, tuple[int, int, dict[str, str]]]) -> dict[str, str]:
        """Create ``name -> (partitions, replication, configs)``, waiting until their metadata is there;
        name -> "created" | "exists" (someone else made it meanwhile)."""
        ...

    def close(self) -> None: ...


def reader(settings: KafkaSettings, config: ReaderConfig) -> Reader:
    """A reader on ``settings.client``; KafkaUnavailable if the broker cannot be reached."""
    if settings.client == "confluent":
        from streamlearn.kafka.confluent import ConfluentReader

        return ConfluentReader(settings, config)
    from streamlearn.kafka.kafka_python import KafkaPythonReader

    return KafkaPythonReader(settings, config)


def writer(settings: KafkaSettings, config: WriterConfig) -> Writer:
    if settings.client == "confluent":
        from streamlearn.kafka.confluent import ConfluentWriter

        return ConfluentWriter(settings, config)
    from streamlearn.kafka.kafka_python import KafkaPythonWriter

    return KafkaPythonWriter(settings, config)


def admin(settings: KafkaSettings) -> Admin:
    if settings.client == "confluent":
        from streamlearn.kafka.confluent import ConfluentAdmin

        return ConfluentAdmin(settings)
    from streamlearn.kafka.kafka_python import KafkaPythonAdmin

    return KafkaPythonAdmin(settings)
