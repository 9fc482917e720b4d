"""The client interface on kafka-python (pure Python), through its public API only.

Selected with ``client: kafka-python``; :mod:`streamlearn.kafka.confluent` is the fast path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import kafka.errors as kerr
from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from streamlearn.codec import Kind
from streamlearn.kafka.client import (
    Delivered,
    KafkaSetupError,
    KafkaUnavailable,
    Pair,
    ReaderConfig,
    TopicInfo,
    WriterConfig,
    what,
)
from streamlearn.kafka.settings import KafkaSettings
from streamlearn.source import Record

# Errors that retrying cannot fix: credentials, ACLs, a closed client, bad config.
_FATAL: tuple[type[BaseException], ...] = (
    kerr.AuthorizationError,
    kerr.SaslAuthenticationFailedError,
    kerr.UnsupportedSaslMechanismError,
    kerr.IllegalStateError,
    kerr.KafkaConfigurationError,
)


@contextlib.contextmanager
def _translated(settings: KafkaSettings, doing: str) -> Iterator[None]:
    """The client's errors as :class:`KafkaSetupError` (fatal) or :class:`KafkaUnavailable` (retry)."""
    try:
        yield
    except KafkaSetupError:
        raise
    except _FATAL as exc:
        raise KafkaSetupError(f"cannot use Kafka at {settings.bootstrap_servers}: {what(exc)}") from exc
    except Exception as exc:  # broker gone, timeouts, protocol hiccups
        raise KafkaUnavailable(f"{doing} failed: {what(exc)}") from exc


class KafkaPythonReader:
    """A kafka-python consumer on explicitly assigned pairs; it fetches inside :meth:`read`."""

    def __init__(self, settings: KafkaSettings, config: ReaderConfig) -> None:
        self.settings = settings
        self._kinds: dict[str, Kind] = {t: k for k, t in settings.topics.items()}
        with _translated(settings, "connect"):
            self._consumer = KafkaConsumer(
                **settings.kafka_python_kwargs(),
                group_id=settings.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",  # only if a position falls out of retention
                allow_auto_create_topics=False,
                fetch_max_bytes=config.fetch_max_bytes,
                max_partition_fetch_bytes=config.max_partition_fetch_bytes,
                check_crcs=config.check_crcs,
                metrics_enabled=False,  # the client's own metrics cost throughput; ours: metrics.py
                reconnect_backoff_max_ms=config.reconnect_backoff_max_ms,
            )

    def partitions(self, topic: str, timeout_s: float) -> list[int] | None:
        with _translated(self.settings, "metadata"):
            have = self._consumer.partitions_for_topic(topic)
        return sorted(have) if have else None

    def assign(self, positions: Mapping[Pair, int]) -> None:
        tps = {TopicPartition(t, p): off for (t, p), off in positions.items()}
        with _translated(self.settings, "assign"):
            if set(self._consumer.assignment()) != set(tps):
                self._consumer.assign(list(tps))
            for tp, off in tps.items():
                self._consumer.seek(tp, off)  # drops what was fetched beyond it

    def read(self, max_records: int, timeout_s: float) -> list[list[Record]]:
        with _translated(self.settings, "poll"):
            polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        kinds = self._kinds
        runs = []
        for tp, recs in polled.items():
            topic, part, kind = tp.topic, tp.partition, kinds[tp.topic]
            runs.append([Record(kind, topic, part, r.offset, r.key, r.value) for r in recs])
        return runs

    def watermarks(self, pairs: Sequence[Pair], timeout_s: float) -> dict[Pair, tuple[int, int]]:
        tps = [TopicPartition(t, p) for t, p in pairs]
        with _translated(self.settings, "list offsets"):
            low = self._consumer.beginning_offsets(tps, timeout_ms=int(timeout_s * 1000))
            high = self._consumer.end_offsets(tps, timeout_ms=int(timeout_s * 1000))
        return {(tp.topic, tp.partition): (low[tp], high[tp]) for tp in tps}

    def known_ends(self, pairs: Sequence[Pair]) -> dict[Pair, int]:
        out = {}
        for t, p in pairs:
            hw = self._consumer.highwater(TopicPartition(t, p))
            if hw is not None:
                out[(t, p)] = hw
        return out

    def commit(self, positions: Mapping[Pair, int], timeout_s: float) -> None:
        offsets = {TopicPartition(t, p): OffsetAndMetadata(off, "", -1) for (t, p), off in positions.items()}
        with _translated(self.settings, "commit"):
            self._consumer.commit(offsets, timeout_ms=int(timeout_s * 1000))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._consumer.close(autocommit=False, timeout_ms=2_000)


class KafkaPythonWriter:
    """A kafka-python producer: it batches, retries and partitions; outcomes run on its sender thread."""

    def __init__(self, settings: KafkaSettings, config: WriterConfig) -> None:
        self.settings = settings
        with _translated(settings, "connect"):
            # Not idempotent: one refused record (MessageSizeTooLarge) is fatal to an idempotent kafka-python
            # producer, which then fails every later send; the DLQ is at least once anyway.
            self._producer = KafkaProducer(
                **settings.kafka_python_kwargs(), acks="all", linger_ms=config.linger_ms,
                batch_size=config.batch_bytes, max_request_size=config.max_request_bytes,
                max_block_ms=config.block_ms, delivery_timeout_ms=config.delivery_timeout_ms,
                allow_auto_create_topics=False, metrics_enabled=False, reconnect_backoff_max_ms=5_000,
                enable_idempotence=False,  # the default partitioner: murmur2 of the key, as the Java client
            )
        self._admin: KafkaPythonAdmin | None = None
        self._existing: set[str] = set()  # topics seen to exist

    def _exists(self, topic: str) -> bool:
        """Whether ``topic`` exists, asked without creating it: this producer's own metadata requests let a
        broker with auto.create.topics.enable create any topic sent to, whatever allow_auto_create_topics says."""
        if topic not in self._existing:
            if self._admin is None:
                self._admin = KafkaPythonAdmin(self.settings)
            if self._admin.describe([topic]):
                self._existing.add(topic)
        return topic in self._existing

    def send(self, topic: str, value: bytes, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None, on_delivery: Delivered | None = None) -> None:
        if not self._exists(topic):
            raise KafkaUnavailable(f"topic {topic} does not exist at {self.settings.bootstrap_servers}")
        future = self._producer.send(topic, value=value, key=key, headers=headers)
        if on_delivery is not None:
            future.add_callback(_acked, on_delivery)
            future.add_errback(on_delivery)

    def poll(self) -> None:
        """Nothing to do: kafka-python runs delivery callbacks on its sender thread."""

    def flush(self, timeout_s: float | None) -> bool:
        try:
            self._producer.flush(timeout=timeout_s)
        except kerr.KafkaTimeoutError:
            return False
        return True

    def close(self, timeout_s: float) -> None:
        with contextlib.suppress(Exception):
            self._producer.close(timeout=timeout_s)
        if self._admin is not None:
            self._admin.close()


def _acked(on_delivery: Delivered, _metadata: Any) -> None:
    on_delivery(None)


class KafkaPythonAdmin:
    """Topic descriptions and creation through kafka-python's admin client."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        try:
            self._admin = KafkaAdminClient(**settings.kafka_python_kwargs())
        except kerr.KafkaError as exc:
            raise KafkaSetupError(f"cannot use Kafka at {settings.bootstrap_servers}: {exc}") from exc

    def describe(self, topics: Sequence[str]) -> dict[str, TopicInfo]:
        try:
            described = self._admin.describe_topics(list(topics))
        except kerr.KafkaError as exc:
            raise KafkaSetupError(f"describing topics {', '.join(topics)} failed: {exc}") from exc
        return {t["name"]: TopicInfo(len(t["partitions"]),
                                     min(len(p["replica_nodes"]) for p in t["partitions"]))
                for t in described if t["error_code"] == 0 and t["partitions"]}

    def create(self, topics: Mapping[str, tuple[int, int, dict[str, str]]]) -> dict[str, str]:
        new = [NewTopic(name, num_partitions=n, replication_factor=r, topic_configs=configs)
               for name, (n, r, configs) in topics.items()]
        timeout_ms = self.settings.connect_timeout_ms
        try:
            resp = self._admin.create_topics(new, timeout_ms=timeout_ms, raise_errors=False)
        except kerr.KafkaError as exc:
            raise KafkaSetupError(f"cannot use Kafka at {self.settings.bootstrap_servers}: {exc}") from exc
        out = {}
        for t in resp["topics"]:
            err = kerr.for_code(t["error_code"])
            if err is kerr.TopicAlreadyExistsError:
                out[t["name"]] = "exists"
            elif err is not kerr.NoError:
                raise KafkaSetupError(f"creating topic {t['name']} failed: {err.__name__}: "
                                      f"{t.get('error_message') or ''}".rstrip(": "))
            else:
                out[t["name"]] = "created"
        try:
            self._admin.wait_for_topics(list(topics), timeout_ms=timeout_ms)
        except kerr.KafkaError as exc:
            raise KafkaSetupError(f"cannot use Kafka at {self.settings.bootstrap_servers}: {exc}") from exc
        return out

    def close(self) -> None:
        self._admin.close()
