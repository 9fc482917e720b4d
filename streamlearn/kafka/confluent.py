"""The client interface on confluent-kafka (librdkafka): the default when installed, and the fast path.

librdkafka batches, retries deliveries and prefetches on its own threads; this module only maps
:class:`~streamlearn.kafka.settings.KafkaSettings` onto it and turns its messages into Records.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
    murmur2,
)
from confluent_kafka.admin import AdminClient, NewTopic

from streamlearn.codec import Kind
from streamlearn.kafka.client import (
    Delivered,
    KafkaSetupError,
    KafkaUnavailable,
    Pair,
    ReaderConfig,
    TopicInfo,
    WriterConfig,
)
from streamlearn.kafka.settings import KafkaSettings
from streamlearn.source import Record

# librdkafka's own log lines (connection failures, ...) go to Python logging, not stderr
CLIENT_LOG = logging.getLogger("streamlearn.kafka.librdkafka")

# Errors that retrying cannot fix: credentials, ACLs, bad config.
_FATAL_CODES = frozenset({
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.UNSUPPORTED_SASL_MECHANISM, KafkaError.ILLEGAL_SASL_STATE, KafkaError._AUTHENTICATION,
    KafkaError._INVALID_ARG, KafkaError._FATAL, KafkaError._SSL,
})


def partition_for(key: bytes, partitions: int) -> int:
    """:func:`streamlearn.kafka.produce.partition_for` in C: murmur2 of the key, as the Java client."""
    return int(murmur2(key, partitions))


def describe(err: KafkaError) -> str:
    return f"{err.name()}: {err.str()}"


def _fatal(err: KafkaError) -> bool:
    return bool(err.fatal()) or err.code() in _FATAL_CODES


def _error(settings: KafkaSettings, err: KafkaError, doing: str) -> Exception:
    if _fatal(err):
        return KafkaSetupError(f"cannot use Kafka at {settings.bootstrap_servers}: {describe(err)}")
    return KafkaUnavailable(f"{doing} failed: {describe(err)}")


def _raised(settings: KafkaSettings, exc: KafkaException, doing: str) -> Exception:
    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    if err is None:
        return KafkaUnavailable(f"{doing} failed: {exc}")
    return _error(settings, err, doing)


def _built(settings: KafkaSettings, make: Any, conf: dict[str, Any]) -> Any:
    """``make(conf)``; a setting librdkafka refuses (a bad TLS file, ...) is a KafkaSetupError."""
    try:
        return make(conf)
    except KafkaException as exc:
        raise KafkaSetupError(f"cannot use Kafka at {settings.bootstrap_servers}: {exc}") from exc


class ConfluentReader:
    """A librdkafka consumer on explicitly assigned pairs; it prefetches on its own thread."""

    def __init__(self, settings: KafkaSettings, config: ReaderConfig) -> None:
        self.settings = settings
        self._kinds: dict[str, Kind] = {t: k for k, t in settings.topics.items()}
        self._fatal: KafkaError | None = None  # an auth/config error the client reported on its own
        self._consumer = _built(settings, Consumer, {
            **settings.librdkafka_config(),
            "group.id": settings.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",  # only if a position falls out of retention
            "isolation.level": "read_uncommitted",  # as kafka-python: every record, as the broker stored it
            "allow.auto.create.topics": False,
            "fetch.max.bytes": config.fetch_max_bytes,
            "receive.message.max.bytes": config.fetch_max_bytes + 512,  # librdkafka's rule
            "max.partition.fetch.bytes": config.max_partition_fetch_bytes,
            "fetch.wait.max.ms": 10,  # the broker answers a fetch soon, so a poll does not sit idle
            "check.crcs": config.check_crcs,
            "reconnect.backoff.max.ms": config.reconnect_backoff_max_ms,
            "logger": CLIENT_LOG,
            "error_cb": self._on_error,
        })

    def _on_error(self, err: KafkaError) -> None:
        if _fatal(err):
            self._fatal = err
        CLIENT_LOG.debug("client error: %s", describe(err))

    def _check(self) -> None:
        if self._fatal is not None:
            raise _error(self.settings, self._fatal, "client")

    def partitions(self, topic: str, timeout_s: float) -> list[int] | None:
        try:
            meta = self._consumer.list_topics(topic, timeout=timeout_s)  # allow.auto.create.topics is off
        except KafkaException as exc:
            raise _raised(self.settings, exc, "metadata") from exc
        self._check()
        t = meta.topics.get(topic)
        if t is None:
            return None
        if t.error is not None:
            if t.error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                return None
            raise _error(self.settings, t.error, "metadata")
        return sorted(t.partitions) or None

    def assign(self, positions: Mapping[Pair, int]) -> None:
        try:  # a new assignment replaces the old one and drops what was prefetched for it
            self._consumer.assign([TopicPartition(t, p, off) for (t, p), off in positions.items()])
        except KafkaException as exc:
            raise _raised(self.settings, exc, "assign") from exc

    def read(self, max_records: int, timeout_s: float) -> list[list[Record]]:
        consume = self._consumer.consume
        try:
            msgs = consume(max_records, 0)  # what is prefetched, at once
            if not msgs and timeout_s > 0:  # nothing yet: wait for the first, then take what came with it
                msgs = consume(1, timeout_s)
                if msgs and max_records > 1:
                    msgs += consume(max_records - 1, 0)
        except KafkaException as exc:
            raise _raised(self.settings, exc, "consume") from exc
        self._check()
        return self._runs(msgs)

    def _runs(self, msgs: list[Message]) -> list[list[Record]]:
        """Records in runs of one pair (librdkafka hands out a partition's messages together)."""
        kinds = self._kinds
        runs: list[list[Record]] = []
        run: list[Record] = []
        last_topic: str | None = None
        last_part: int | None = None
        kind: Kind = "prediction"
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise _error(self.settings, err, "consume")
            topic: Any = m.topic()  # never None on a message without an error
            part: Any = m.partition()
            if part != last_part or topic != last_topic:
                run = []
                runs.append(run)
                last_topic, last_part, kind = topic, part, kinds[topic]
            run.append(Record(kind, topic, part, m.offset(), m.key(), m.value()))  # type: ignore[arg-type]
        return runs

    def watermarks(self, pairs: Sequence[Pair], timeout_s: float) -> dict[Pair, tuple[int, int]]:
        out = {}
        for t, p in pairs:
            try:
                got = self._consumer.get_watermark_offsets(TopicPartition(t, p), timeout=timeout_s)
            except KafkaException as exc:
                raise _raised(self.settings, exc, "list offsets") from exc
            if got is None:
                raise KafkaUnavailable(f"list offsets failed: no answer within {timeout_s}s")
            out[(t, p)] = (int(got[0]), int(got[1]))
        return out

    def known_ends(self, pairs: Sequence[Pair]) -> dict[Pair, int]:
        out = {}
        for t, p in pairs:
            try:
                got = self._consumer.get_watermark_offsets(TopicPartition(t, p), cached=True)
            except KafkaException:
                continue
            if got is not None and got[1] >= 0:
                out[(t, p)] = int(got[1])
        return out

    def commit(self, positions: Mapping[Pair, int], timeout_s: float) -> None:
        offsets = [TopicPartition(t, p, off) for (t, p), off in positions.items()]
        try:
            done = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            raise _raised(self.settings, exc, "commit") from exc
        for tp in done or []:
            if tp.error is not None:
                raise _error(self.settings, tp.error, "commit")

    def close(self) -> None:
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            CLIENT_LOG.debug("close: %s", exc)


def _delivered(on_delivery: Delivered, err: KafkaError | None, _msg: Message) -> None:
    on_delivery(None if err is None else KafkaException(err))


class ConfluentWriter:
    """A librdkafka producer: it batches, retries and partitions; outcomes run in :meth:`poll` / :meth:`flush`."""

    def __init__(self, settings: KafkaSettings, config: WriterConfig) -> None:
        self.settings = settings
        self._block_s = config.block_ms / 1000
        self._producer = _built(settings, Producer, {
            **settings.librdkafka_config(),
            "acks": "all",
            "enable.idempotence": False,  # the DLQ is at least once; a refused record must not stop the rest
            "partitioner": "murmur2_random",  # keys land where the Java client and kafka-python put them
            "linger.ms": config.linger_ms,
            "batch.size": config.batch_bytes,
            "message.max.bytes": config.max_request_bytes,
            "message.timeout.ms": config.delivery_timeout_ms,  # librdkafka's retries end here
            "topic.metadata.propagation.max.ms": config.block_ms,  # a missing topic fails its records this soon
            "allow.auto.create.topics": False,
            "logger": CLIENT_LOG,
            "error_cb": _log_error,
        })

    def send(self, topic: str, value: bytes, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None, on_delivery: Delivered | None = None) -> None:
        kw: dict[str, Any] = {"key": key}
        if headers:
            kw["headers"] = headers
        if on_delivery is not None:
            kw["on_delivery"] = functools.partial(_delivered, on_delivery)
        end = time.monotonic() + self._block_s
        while True:
            try:
                self._producer.produce(topic, value, **kw)
                return
            except BufferError:  # the client's queue is full: let it deliver for up to block_ms
                left = end - time.monotonic()
                if left <= 0:
                    raise
                self._producer.poll(min(left, 0.1))

    def poll(self) -> None:
        self._producer.poll(0)

    def flush(self, timeout_s: float | None) -> bool:
        return int(self._producer.flush(-1 if timeout_s is None else timeout_s)) == 0

    def close(self, timeout_s: float) -> None:
        self._producer.flush(timeout_s)


def _log_error(err: KafkaError) -> None:
    CLIENT_LOG.debug("client error: %s", describe(err))


class ConfluentAdmin:
    """Topic descriptions and creation through librdkafka's admin client."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._timeout_s = settings.connect_timeout_ms / 1000
        conf: dict[str, Any] = {**settings.librdkafka_config(), "logger": CLIENT_LOG, "error_cb": _log_error}
        self._admin = _built(settings, AdminClient, conf)

    def _unreachable(self, exc: KafkaException) -> KafkaSetupError:
        err = exc.args[0] if exc.args else exc
        text = describe(err) if isinstance(err, KafkaError) else str(err)
        return KafkaSetupError(f"cannot use Kafka at {self.settings.bootstrap_servers}: {text}")

    def describe(self, topics: Sequence[str]) -> dict[str, TopicInfo]:
        try:
            futures = self._admin.describe_topics(TopicCollection(list(topics)), request_timeout=self._timeout_s)
        except KafkaException as exc:
            raise self._unreachable(exc) from exc
        out = {}
        for name, future in futures.items():
            try:
                d = future.result()
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue
                raise self._unreachable(exc) from exc
            if d.partitions:
                out[name] = TopicInfo(len(d.partitions), min(len(p.replicas) for p in d.partitions))
        return out

    def create(self, topics: Mapping[str, tuple[int, int, dict[str, str]]]) -> dict[str, str]:
        new = [NewTopic(name, num_partitions=n, replication_factor=r, config=dict(configs))
               for name, (n, r, configs) in topics.items()]
        try:
            futures = self._admin.create_topics(new, operation_timeout=self._timeout_s,
                                                request_timeout=self._timeout_s)
        except KafkaException as exc:
            raise self._unreachable(exc) from exc
        out = {}
        for name, future in futures.items():
            try:
                future.result()
                out[name] = "created"
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    out[name] = "exists"
                elif isinstance(err, KafkaError) and err.code() in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT):
                    raise self._unreachable(exc) from exc
                else:
                    raise KafkaSetupError(f"creating topic {name} failed: "
                                          f"{describe(err) if isinstance(err, KafkaError) else exc}") from exc
        end = time.monotonic() + self._timeout_s
        while len(self.describe(list(topics))) < len(topics):  # created on the controller, not yet in metadata
            if time.monotonic() > end:
                raise KafkaSetupError(f"topics {', '.join(topics)} were created but did not appear in metadata "
                                      f"within {self._timeout_s:.0f}s")
            time.sleep(0.1)
        return out

    def close(self) -> None:
        """Nothing to release: the admin client's threads end when it is collected."""
