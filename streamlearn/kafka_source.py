"""Kafka at the edge: settings, the partition source, the dead-letter sink, topic admin, a producer.

The only module that imports the Kafka client (kafka-python). Everything else
sees :class:`~streamlearn.source.Record` and the
:class:`~streamlearn.source.EventSource` contract.

* :class:`KafkaSettings` -- where the broker is, the topic names, TLS/SASL;
  validated at construction, errors name the key.
* :class:`KafkaSource` -- partition p of BOTH topics by explicit assignment
  (never group rebalancing, which could split a co-partitioned pair). Offsets
  of truth live in checkpoints: ``positions()`` / ``seek()``; committing to
  the consumer group is for lag monitoring only. A broker outage is logged and
  retried with backoff; a failed poll never advances a position.
* :class:`DeadLetterSink` -- bad records to the DLQ topic with the original
  bytes and key, and the reason in headers.
* :func:`create_topics`, :func:`describe_topics`, :func:`check_copartitioned`.
* :func:`produce_stream` -- events to the two topics, key = prediction id,
  partition = :func:`~streamlearn.source.partition_of` (explicit, so both
  events of an id meet in the same partition whatever the client's hash).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import kafka.errors as kerr
from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.consumer.fetcher import Fetcher
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder

from streamlearn.codec import CODECS, Kind, encode_binary, encode_json
from streamlearn.events import Event, Prediction
from streamlearn.ingest import DeadLetter
from streamlearn.record_batch import CorruptBatch, read_records
from streamlearn.source import Record, partition_of

log = logging.getLogger(__name__)

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")

# DLQ headers (values are UTF-8 text)
H_ERROR = "streamlearn.error"  # reason code, e.g. "not_json"
H_DETAIL = "streamlearn.error.detail"
H_TOPIC = "streamlearn.source.topic"
H_PARTITION = "streamlearn.source.partition"
H_OFFSET = "streamlearn.source.offset"
H_VALUE_NULL = "streamlearn.value_null"  # "1": the source value was null; the DLQ value is b""
H_TRUNCATED_FROM = "streamlearn.truncated_from"  # key + value were cut; their original size in bytes

# Errors that retrying cannot fix: credentials, ACLs, a closed client, bad config.
_FATAL: tuple[type[BaseException], ...] = (
    kerr.AuthorizationError,
    kerr.SaslAuthenticationFailedError,
    kerr.UnsupportedSaslMechanismError,
    kerr.IllegalStateError,
    kerr.KafkaConfigurationError,
)


class KafkaSetupError(Exception):
    """Kafka is not set up as streamlearn needs (topics, partition counts, reachability, auth)."""

    retriable = False


# ---------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class KafkaSettings:
    """Where the broker is and how to talk to it. ``sasl_password`` never appears in a repr."""

    bootstrap_servers: str  # "host:port[,host:port...]"
    predictions_topic: str = "streamlearn.predictions"
    feedback_topic: str = "streamlearn.feedback"  # same partition count as predictions
    dlq_topic: str = "streamlearn.dlq"  # dead letters: original bytes + error headers
    group_id: str = "streamlearn"  # offsets committed here for lag monitoring only
    client_id: str = "streamlearn"
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    ssl_cafile: str | None = None  # CA bundle that signed the broker certificate
    ssl_certfile: str | None = None  # client certificate (mutual TLS)
    ssl_keyfile: str | None = None  # client private key (mutual TLS)
    sasl_mechanism: str | None = None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = None
    connect_timeout_ms: int = 30_000  # give up bootstrapping a client after this long

    def __post_init__(self) -> None:
        servers = [s.strip() for s in str(self.bootstrap_servers).split(",") if s.strip()]
        if not servers:
            raise ValueError("bootstrap_servers: must name at least one host:port")
        for s in servers:
            host, sep, port = s.rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"bootstrap_servers: {s!r} is not host:port")
        object.__setattr__(self, "bootstrap_servers", ",".join(servers))
        names = {"predictions_topic": self.predictions_topic, "feedback_topic": self.feedback_topic,
                 "dlq_topic": self.dlq_topic}
        for key, name in names.items():
            if not isinstance(name, str) or not _TOPIC_NAME.match(name) or name in (".", ".."):
                raise ValueError(f"{key}: {name!r} is not a valid topic name "
                                 "(1-249 of letters, digits, '.', '_', '-')")
        if len(set(names.values())) != 3:
            raise ValueError("predictions_topic, feedback_topic, dlq_topic: must be three different topics "
                             f"(got {', '.join(names.values())})")
        for key in ("group_id", "client_id"):
            if not getattr(self, key):
                raise ValueError(f"{key}: must not be empty")
        if self.connect_timeout_ms < 1:
            raise ValueError(f"connect_timeout_ms: must be >= 1, got {self.connect_timeout_ms}")
        proto = self.security_protocol
        if proto not in SECURITY_PROTOCOLS:
            raise ValueError(f"security_protocol: unknown {proto!r}, "
                             f"choose one of {', '.join(SECURITY_PROTOCOLS)}")
        self._validate_ssl(proto)
        self._validate_sasl(proto)

    def _validate_ssl(self, proto: str) -> None:
        files = {"ssl_cafile": self.ssl_cafile, "ssl_certfile": self.ssl_certfile,
                 "ssl_keyfile": self.ssl_keyfile}
        for key, path in files.items():
            if path is None:
                continue
            if "SSL" not in proto:
                raise ValueError(f"{key}: only used with security_protocol SSL or SASL_SSL (got {proto})")
            if not os.path.isfile(path):
                raise ValueError(f"{key}: no such file: {path}")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("ssl_keyfile: needs ssl_certfile too (the client certificate)")

    def _validate_sasl(self, proto: str) -> None:
        sasl = {"sasl_mechanism": self.sasl_mechanism, "sasl_username": self.sasl_username,
                "sasl_password": self.sasl_password}
        if not proto.startswith("SASL"):
            for key, value in sasl.items():
                if value is not None:
                    raise ValueError(f"{key}: only used with security_protocol SASL_PLAINTEXT or SASL_SSL "
                                     f"(got {proto})")
            return
        if self.sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(f"sasl_mechanism: {proto} needs one of {', '.join(SASL_MECHANISMS)}, "
                             f"got {self.sasl_mechanism!r}")
        for key in ("sasl_username", "sasl_password"):
            if not sasl[key]:
                raise ValueError(f"{key}: required with security_protocol {proto}")

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={'***' if f.name == 'sasl_password' and v is not None else repr(v)}"
            for f in fields(self) for v in [getattr(self, f.name)]
        )
        return f"KafkaSettings({shown})"

    __str__ = __repr__

    @property
    def topics(self) -> dict[Kind, str]:
        return {"prediction": self.predictions_topic, "feedback": self.feedback_topic}

    def client_kwargs(self) -> dict[str, Any]:
        """Connection and security keyword arguments for any kafka-python client."""
        kw: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "bootstrap_timeout_ms": self.connect_timeout_ms,
        }
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(self, key) is not None:
                kw[key] = getattr(self, key)
        if self.security_protocol.startswith("SASL"):
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = self.sasl_password
        return kw


def _what(exc: BaseException) -> str:
    """``Name: message`` once (kafka-python's errors already start with their name)."""
    text, name = str(exc), type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name


def _unreachable(settings: KafkaSettings, exc: BaseException) -> KafkaSetupError:
    return KafkaSetupError(f"cannot use Kafka at {settings.bootstrap_servers}: {exc}")


@contextlib.contextmanager
def _admin(settings: KafkaSettings) -> Iterator[KafkaAdminClient]:
    try:
        client = KafkaAdminClient(**settings.client_kwargs())
    except kerr.KafkaError as exc:
        raise _unreachable(settings, exc) from exc
    try:
        yield client
    finally:
        client.close()


# ---------------------------------------------------------------------------
# source


# ---------------------------------------------------------------------------
# reading fetched record batches


def _partition_records(kinds: Mapping[str, Kind]) -> type:
    """kafka-python's buffer of one fetched partition, its record loop replaced by :func:`read_records`.

    The client builds two objects per record and calls a function per
    varint; this reads each v2 batch in one loop straight into the Records
    the workers use. Control batches are skipped and CRCs checked as the
    client does; old message formats (v0/v1) go through the client's reader.
    The hooks are private to kafka-python, so :func:`_batch_hooks_work`
    checks them once per process and the source falls back to the client's
    own path when they are missing or read a known batch differently.
    """

    class BatchRecords(Fetcher.PartitionRecords):
        def _unpack_records(self, tp: TopicPartition, records: MemoryRecords, *_: object) -> Iterator[Record]:
            topic, part = tp.topic, tp.partition
            kind = kinds[topic]
            last = None
            batch = records.next_batch()
            while batch is not None:
                if self.check_crcs and not batch.validate_crc():
                    raise kerr.CorruptRecordError(f"record batch of {tp} at offset {batch.base_offset} "
                                                  "failed its CRC check")
                last = batch
                if batch.magic != 2:
                    recs = [Record(kind, topic, part, r.offset, r.key, r.value) for r in batch]
                elif batch.is_control_batch:  # transaction markers: not records of the stream
                    recs = []
                else:
                    self.leader_epoch = batch.leader_epoch
                    try:
                        recs = batch_records(batch, kind, topic, part)
                    except CorruptBatch as exc:
                        raise kerr.CorruptRecordError(f"{tp}: {exc}") from None
                for rec in recs:
                    self.next_fetch_offset = rec.offset + 1  # the client may stop mid-batch
                    yield rec
                batch = records.next_batch()
            if last is not None and last.magic == 2:
                self.next_fetch_offset = last.next_offset  # past records compaction removed
            self.drain()

    return BatchRecords


def batch_records(batch: DefaultRecordBatch, kind: Kind, topic: str, partition: int) -> list[Record]:
    """The records of one fetched v2 batch (``kind``, ``topic`` and ``partition`` label them)."""
    iter(batch)  # decompresses, if the producer compressed
    return read_records(bytes(batch._buffer), batch._pos, batch.records_count, batch.base_offset,
                        kind, topic, partition)


def _read_batches(consumer: KafkaConsumer, kinds: Mapping[str, Kind]) -> bool:
    """Make ``consumer`` yield Records through :func:`_partition_records`; False if it has no fetcher to hook."""
    fetcher = getattr(consumer, "_fetcher", None)
    if not isinstance(fetcher, Fetcher):
        log.warning("kafka source: this kafka-python's consumer has no fetcher to hook; using its own reader")
        return False
    fetcher.PartitionRecords = _partition_records(kinds)
    return True


@functools.cache
def _batch_hooks_work() -> bool:
    """Whether this kafka-python has the hooks :func:`_partition_records` uses, reading them right."""
    try:
        builder = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 16, offset=7)
        sent = [(b"k", b'{"a": 1}', []), (None, b"", [("h", b"v")]), (b"", None, []), (b"k2", b"x" * 300, [])]
        for key, value, headers in sent:
            builder.append(0, key, value, headers)
        builder.close()
        batch = MemoryRecords(builder.buffer()).next_batch()
        got = batch_records(batch, "prediction", "t", 0)
        ok = [(r.offset, r.key, r.value) for r in got] == [(7 + i, k, v) for i, (k, v, _) in enumerate(sent)]
        ok = ok and isinstance(batch, DefaultRecordBatch) and callable(Fetcher.PartitionRecords._unpack_records)
    except Exception as exc:  # an internal moved: the client's own reader still works
        log.warning("kafka source: reading record batches directly is off (%s); using kafka-python's reader",
                    _what(exc))
        return False
    if not ok:
        log.warning("kafka source: this kafka-python's batches read differently; using its own reader")
    return ok


@dataclass(frozen=True)
class SourceConfig:
    """Consumer tuning. Defaults favour throughput; see benchmarks/kafka_throughput.py."""

    poll_timeout_ms: int = 200  # longest a next_batch waits when nothing is buffered
    fetch_max_bytes: int = 64 << 20  # per fetch response, all partitions
    max_partition_fetch_bytes: int = 8 << 20  # per partition per fetch
    # None: check record CRCs only when the `crc32c` C extension is installed.
    # Without it kafka-python checks in pure Python, which cuts throughput ~4x;
    # TCP and the broker (it validates CRCs on produce) still cover the path,
    # and librdkafka defaults to no checks too.
    check_crcs: bool | None = None
    idle_probe_s: float = 2.0  # no records this long -> ask the broker if it is still there
    probe_timeout_ms: int = 3_000  # that question's deadline
    backoff_s: float = 0.5  # first retry wait after a failure; doubles per failure
    max_backoff_s: float = 5.0  # cap: next_batch never sleeps longer than this
    # Take every record the client has fetched at once, so its next fetch is
    # in flight while the worker learns from them (the client sends a
    # partition's next fetch only once its last one is taken); at most this
    # many records wait in the source.
    read_ahead: int = 50_000
    read_batches: bool = True  # read record batches with streamlearn.record_batch (see _partition_records)

    def __post_init__(self) -> None:
        for key in ("poll_timeout_ms", "fetch_max_bytes", "max_partition_fetch_bytes", "probe_timeout_ms",
                    "read_ahead"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if not (self.idle_probe_s > 0 and self.backoff_s > 0 and self.max_backoff_s >= self.backoff_s):
            raise ValueError("idle_probe_s, backoff_s: must be > 0 and max_backoff_s >= backoff_s")

    @property
    def crc_checks(self) -> bool:
        if self.check_crcs is None:
            return importlib.util.find_spec("crc32c") is not None
        return self.check_crcs


class KafkaSource:
    """Partitions ``partitions`` of the predictions AND feedback topics, as :class:`Record` batches.

    ``positions`` (e.g. from a checkpoint) says where to start per
    (topic, partition); a pair missing there starts at the earliest offset.
    ``positions()`` only ever moves past records that ``next_batch`` returned.
    Broker outages are retried with backoff (``next_batch`` returns ``[]``
    meanwhile, after at most ``max_backoff_s`` plus ``probe_timeout_ms``, or
    ``connect_timeout_ms`` while the broker was never reached); bad
    credentials, ACLs or missing topics raise :class:`KafkaSetupError`.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        partitions: Sequence[int],
        positions: Mapping[tuple[str, int], int] | None = None,
        config: SourceConfig | None = None,
    ) -> None:
        if not partitions:
            raise ValueError("partitions: a source needs at least one partition")
        if any(p < 0 for p in partitions) or len(set(partitions)) != len(partitions):
            raise ValueError(f"partitions: must be distinct numbers >= 0, got {list(partitions)}")
        self.settings = settings
        self.cfg = config or SourceConfig()
        self.partitions = sorted(partitions)
        self._kinds: dict[str, Kind] = {t: k for k, t in settings.topics.items()}
        self._tps = [TopicPartition(t, p) for t in settings.topics.values() for p in self.partitions]
        self._positions: dict[tuple[str, int], int] = {}  # next offset to read; the truth
        self._wanted: dict[tuple[str, int], int] = {}  # seek targets not yet applied
        self._consumer: KafkaConsumer | None = None
        self._batches = self.cfg.read_batches and _batch_hooks_work()  # the client yields Records itself
        self._ahead: list[list[Record]] = []  # polled, not yet returned: runs of one (topic, partition)
        self._ahead_n = 0
        self._failures = 0  # consecutive failures, for backoff
        self._down_since: float | None = None  # last healthy moment before the current outage
        self._last_ok = time.monotonic()  # last records or successful probe
        self.records = 0  # records returned by next_batch, over the source's life
        self._ends: dict[TopicPartition, int] = {}  # latest known end offsets, for lag()
        self._ends_asked = float("-inf")  # when lag() last asked the broker for them
        self._closed = False
        self.seek(dict(positions or {}))
        self._connected(sleep=False)  # fail fast on missing topics; an unreachable broker is retried later

    # -- the EventSource contract ------------------------------------------

    def next_batch(self, max_records: int) -> list[Record]:
        """Up to ``max_records`` records of the owned partitions, in offset order per partition."""
        if self._closed:
            raise ValueError("next_batch: source is closed")
        if max_records < 1:
            raise ValueError(f"next_batch: max_records must be >= 1, got {max_records}")
        if self._ahead_n < max_records and not self._read_ahead():
            return []
        out: list[Record] = []
        positions, ahead = self._positions, self._ahead
        while ahead and len(out) < max_records:
            run = ahead[0]
            room = max_records - len(out)
            if len(run) > room:
                ahead[0], run = run[room:], run[:room]
            else:
                del ahead[0]
            out.extend(run)
            last = run[-1]
            positions[(last.topic, last.partition)] = last.offset + 1
        self._ahead_n -= len(out)
        self.records += len(out)
        return out

    def _read_ahead(self) -> bool:
        """Move what the client has fetched into ``_ahead``; False when there is nothing to return."""
        consumer = self._connected()
        if consumer is None:
            return False
        try:
            if self._wanted:
                self._apply_seeks(consumer)
            wait = 0 if self._ahead_n else self.cfg.poll_timeout_ms
            polled = consumer.poll(timeout_ms=wait, max_records=self.cfg.read_ahead)
        except _FATAL as exc:
            raise _unreachable(self.settings, exc) from exc
        except Exception as exc:  # broker gone, timeouts, protocol hiccups: retry, never advance
            self._failed(f"poll failed: {_what(exc)}")
            return False
        if not polled:
            if not self._ahead_n:
                self._probe_if_idle(consumer)
            return self._ahead_n > 0
        self._last_ok = time.monotonic()
        self._recovered()
        kinds = self._kinds
        for tp, recs in polled.items():
            if not self._batches:
                kind = kinds[tp.topic]
                recs = [Record(kind, tp.topic, tp.partition, r.offset, r.key, r.value) for r in recs]
            self._ahead.append(recs)
            self._ahead_n += len(recs)
        return True

    def positions(self) -> dict[tuple[str, int], int]:
        """Next offset to read per (topic, partition); a pair not yet resolved is left out (= earliest)."""
        out = {tp: off for tp, off in self._wanted.items() if off >= 0}
        out.update(self._positions)
        return out

    def seek(self, positions: Mapping[tuple[str, int], int]) -> None:
        """Restart from these offsets; owned pairs missing here restart at the earliest offset.

        Pairs of partitions this source does not own are ignored, so a whole
        job's checkpoint can be passed to every worker.
        """
        self._wanted = {(tp.topic, tp.partition): -1 for tp in self._tps}  # -1: earliest
        for (topic, part), off in positions.items():
            key = (topic, int(part))
            if key in self._wanted:
                if int(off) < 0:
                    raise ValueError(f"seek: negative offset {off} for {topic}[{part}]")
                self._wanted[key] = int(off)
        self._positions = {}  # applied by the next next_batch, before it polls
        self._drop_ahead()

    def _drop_ahead(self) -> None:
        """Forget polled records not yet returned: the consumer is about to be moved back to ``_positions``."""
        self._ahead, self._ahead_n = [], 0

    def close(self) -> None:
        self._closed = True
        self._drop_ahead()
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                self._consumer.close(autocommit=False, timeout_ms=2_000)
            self._consumer = None

    # -- monitoring --------------------------------------------------------

    def commit_for_monitoring(self) -> bool:
        """Commit the current positions to the consumer group (lag dashboards only). False on failure."""
        consumer = self._consumer
        offsets = {TopicPartition(t, p): OffsetAndMetadata(off, "", -1)
                   for (t, p), off in self.positions().items()}
        if consumer is None or not offsets:
            return False
        try:
            consumer.commit(offsets, timeout_ms=self.cfg.probe_timeout_ms)
        except Exception as exc:
            log.warning("kafka source: monitoring commit to group %r failed (%s); positions unaffected",
                        self.settings.group_id, _what(exc))
            return False
        return True

    def lag(self) -> dict[tuple[str, int], int]:
        """Records behind the end of each owned (topic, partition): cheap enough to call every step.

        End offsets come from the high watermarks of fetch responses (no
        request); pairs without one yet are asked for at most once per
        ``idle_probe_s``, never while the broker is down. Pairs with no known
        end are left out ({} before the first connection).
        """
        consumer = self._consumer  # never connects: a monitoring call must not block on a dead broker
        if consumer is None:
            return {}
        ends = self._ends
        for tp in self._tps:
            hw = consumer.highwater(tp)
            if hw is not None:
                ends[tp] = hw
        unknown = [tp for tp in self._tps if tp not in ends]
        now = time.monotonic()
        if unknown and self._down_since is None and now - self._ends_asked >= self.cfg.idle_probe_s:
            self._ends_asked = now
            try:
                ends.update(consumer.end_offsets(unknown, timeout_ms=self.cfg.probe_timeout_ms))
            except Exception as exc:
                log.warning("kafka source: end offsets unavailable (%s)", _what(exc))
        pos = self.positions()
        return {(tp.topic, tp.partition): max(0, end - pos[(tp.topic, tp.partition)])
                for tp, end in ends.items() if (tp.topic, tp.partition) in pos}

    # -- connection, seeks and retries -------------------------------------

    def _connected(self, sleep: bool = True) -> KafkaConsumer | None:
        if self._consumer is not None:
            return self._consumer
        try:
            consumer = KafkaConsumer(
                **self.settings.client_kwargs(),
                group_id=self.settings.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",  # only if a position falls out of retention
                allow_auto_create_topics=False,
                fetch_max_bytes=self.cfg.fetch_max_bytes,
                max_partition_fetch_bytes=self.cfg.max_partition_fetch_bytes,
                check_crcs=self.cfg.crc_checks,
                metrics_enabled=False,  # the client's own metrics cost ~20% throughput; ours: metrics.py
                reconnect_backoff_max_ms=int(self.cfg.max_backoff_s * 1000),  # notice a restarted broker soon
            )
        except _FATAL as exc:
            raise _unreachable(self.settings, exc) from exc
        except Exception as exc:
            self._failed(f"connect failed: {_what(exc)}", sleep=sleep)
            return None
        if self._batches and not _read_batches(consumer, self._kinds):
            self._batches = False
        try:
            self._check_partitions(consumer)
            consumer.assign(self._tps)
            self._apply_seeks(consumer)  # resolves "earliest" so positions() is complete
        except KafkaSetupError:
            consumer.close(autocommit=False, timeout_ms=1_000)
            raise
        except _FATAL as exc:
            consumer.close(autocommit=False, timeout_ms=1_000)
            raise _unreachable(self.settings, exc) from exc
        except Exception as exc:
            with contextlib.suppress(Exception):
                consumer.close(autocommit=False, timeout_ms=1_000)
            self._failed(f"setup failed: {_what(exc)}", sleep=sleep)
            return None
        self._consumer = consumer
        self._last_ok = time.monotonic()
        log.info("kafka source: partitions %s of %s and %s from %s", self.partitions,
                 self.settings.predictions_topic, self.settings.feedback_topic, self.positions())
        self._recovered()
        return consumer

    def _check_partitions(self, consumer: KafkaConsumer) -> None:
        for topic in self.settings.topics.values():
            have = consumer.partitions_for_topic(topic)
            if not have:
                raise KafkaSetupError(f"topic {topic} does not exist at {self.settings.bootstrap_servers} "
                                      "(streamlearn topics create makes it)")
            missing = sorted(set(self.partitions) - set(have))
            if missing:
                raise KafkaSetupError(f"topic {topic} has {len(have)} partitions; partitions {missing} "
                                      "do not exist")

    def _apply_seeks(self, consumer: KafkaConsumer) -> None:
        """Move the consumer to the wanted offsets (earliest where none), then to the tracked ones."""
        earliest = [TopicPartition(t, p) for (t, p), off in self._wanted.items() if off < 0]
        starts = {}
        if earliest:
            starts = consumer.beginning_offsets(earliest, timeout_ms=self.cfg.probe_timeout_ms)
        for tp, off in starts.items():
            self._wanted[(tp.topic, tp.partition)] = off
        for (t, p), off in self._wanted.items():
            self._positions.setdefault((t, p), off)
        self._wanted = {}
        for (t, p), off in self._positions.items():
            consumer.seek(TopicPartition(t, p), off)

    def _failed(self, what: str, sleep: bool = True) -> None:
        """Log a failure, put the consumer back at the tracked positions, wait the backoff."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = self._last_ok
        self._failures += 1
        wait = min(self.cfg.max_backoff_s, self.cfg.backoff_s * 2 ** (self._failures - 1))
        log.warning("kafka source: broker %s unavailable for %.1fs (%s); positions kept, retry %d in %.1fs",
                    self.settings.bootstrap_servers, now - self._down_since, what, self._failures, wait)
        self._drop_ahead()
        if self._consumer is not None and self._positions:
            try:  # whatever the client fetched but we did not return is read again
                for (t, p), off in self._positions.items():
                    self._consumer.seek(TopicPartition(t, p), off)
            except Exception as exc:
                log.debug("kafka source: re-seek after failure: %s", exc)
        if sleep:
            time.sleep(wait)

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.warning("kafka source: broker %s reachable again after %.1fs; resuming at %s",
                        self.settings.bootstrap_servers, time.monotonic() - self._down_since,
                        self.positions())
        self._down_since = None
        self._failures = 0

    def _probe_if_idle(self, consumer: KafkaConsumer) -> None:
        """Nothing came for a while: idle stream, or a broker that is gone? Ask, and back off if gone."""
        if self._down_since is None and time.monotonic() - self._last_ok < self.cfg.idle_probe_s:
            return
        try:
            consumer.end_offsets(self._tps[:1], timeout_ms=self.cfg.probe_timeout_ms)
        except _FATAL as exc:
            raise _unreachable(self.settings, exc) from exc
        except Exception as exc:
            self._failed(f"no answer: {_what(exc)}")
            return
        self._last_ok = time.monotonic()  # idle but healthy: probe again after idle_probe_s
        self._recovered()


# ---------------------------------------------------------------------------
# dead letters


def _utf8_prefix(text: str, limit: int) -> bytes:
    """At most ``limit`` bytes of ``text`` as UTF-8, never cutting a character in half."""
    return text.encode("utf-8", "replace")[:limit].decode("utf-8", "ignore").encode("utf-8")


# A DLQ record (key + value + headers) must fit the producer's max_request_size and the broker's
# message.max.bytes, both ~1 MiB by default; this budget leaves room for the record and batch framing.
_DLQ_BUDGET_BYTES = 1_000_000
_RETRY_FIRST_S = 0.5  # first wait before re-sending a letter that failed; doubles per retry ...
_RETRY_MAX_S = 30.0  # ... up to this; back to _RETRY_FIRST_S after an acknowledged write


def _no_auto_create(producer: KafkaProducer) -> None:
    """Make ``allow_auto_create_topics=False`` stick: kafka-python 3.0 builds the producer's cluster
    metadata without it, so a metadata request for a missing DLQ let the broker create it. No-op where
    the client honours the setting."""
    config = getattr(getattr(producer, "_metadata", None), "config", None)
    if isinstance(config, dict) and config.get("allow_auto_create_topics") is True:
        config["allow_auto_create_topics"] = False


def _letter(dead: DeadLetter, max_detail_bytes: int,
            max_record_bytes: int) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of the DLQ record for ``dead``: original bytes, reason and source in headers.

    A null value becomes b"" with ``H_VALUE_NULL`` (Kafka clients refuse a record with neither key
    nor value). Key + value over ``max_record_bytes`` are cut (the value first) and ``H_TRUNCATED_FROM``
    gives their original size; topic/partition/offset still point at the full record.
    """
    rec = dead.record
    key = rec.key
    raw: bytes | None = rec.value  # typed bytes, but a source record's value can be null
    value = b"" if raw is None else bytes(raw)
    headers = [
        (H_ERROR, dead.reason.encode()),
        (H_DETAIL, _utf8_prefix(dead.detail, max_detail_bytes)),
        (H_TOPIC, rec.topic.encode()),
        (H_PARTITION, str(rec.partition).encode()),
        (H_OFFSET, str(rec.offset).encode()),
    ]
    if raw is None:
        headers.append((H_VALUE_NULL, b"1"))
    key_len = 0 if key is None else len(key)
    if key_len + len(value) > max_record_bytes:
        headers.append((H_TRUNCATED_FROM, str(key_len + len(value)).encode()))
        value = value[:max(0, max_record_bytes - key_len)]
        if key is not None and key_len > max_record_bytes:
            key = key[:max_record_bytes]
    return key, value, headers


class DeadLetterSink:
    """Writes :class:`~streamlearn.ingest.DeadLetter` records to the DLQ topic, losing none.

    The value and key are the original bytes, so a fixed record can be
    replayed as is; why it failed and where it came from travel in headers
    (a null value and a cut oversized record are marked there too).

    ``write`` never raises and blocks at most ``max_block_ms`` (1 s): a letter
    whose send raises or whose delivery fails (after the client's own
    retries) waits in a retry list, which :meth:`retry` re-sends with a
    backoff of 0.5 s doubling to 30 s, reset by an acknowledged write. While
    letters wait, new ones queue behind them without a send (so an outage
    costs one blocked send per retry, not one per letter). :meth:`unacked`
    is every letter not yet acknowledged, in write order: after
    :meth:`flush` it is what a checkpoint must keep and re-write after a
    restore (the DLQ is at least once: a letter whose ack was lost may
    arrive twice). ``sent`` counts letters given to ``write``, ``written``
    acknowledged ones, ``failed`` failed send attempts. Acks arrive on the
    client's sender thread, hence the lock.
    """

    def __init__(self, settings: KafkaSettings, max_detail_bytes: int = 1000,
                 max_record_bytes: int = 900_000, max_block_ms: int = 1000) -> None:
        if max_detail_bytes < 0 or max_record_bytes < 0 or max_detail_bytes + max_record_bytes > _DLQ_BUDGET_BYTES:
            raise ValueError(f"max_record_bytes + max_detail_bytes: must be >= 0 each and <= {_DLQ_BUDGET_BYTES} "
                             f"in all, got {max_record_bytes} + {max_detail_bytes}")
        if max_block_ms < 1:
            raise ValueError(f"max_block_ms: must be >= 1, got {max_block_ms}")
        self.settings = settings
        self.max_detail_bytes = max_detail_bytes
        self.max_record_bytes = max_record_bytes
        self.sent = 0
        self.written = 0
        self.failed = 0
        self._lock = threading.Lock()  # guards everything below (acks and errors come on the sender thread)
        self._seq = 0  # write order of the next letter
        self._in_flight: dict[int, DeadLetter] = {}  # seq -> letter handed to the client, not yet acked
        self._waiting: dict[int, DeadLetter] = {}  # seq -> letter whose send failed, for retry()
        self._delay_s = _RETRY_FIRST_S
        self._retry_at = 0.0  # monotonic time before which retry() does nothing
        self._down_since: float | None = None  # set while failing; the failure was logged once
        try:
            # Not idempotent: one refused record (MessageSizeTooLarge) is fatal to an idempotent
            # kafka-python producer, which then fails every later send; the DLQ is at least once anyway.
            self._producer = KafkaProducer(**settings.client_kwargs(), acks="all", linger_ms=5,
                                           allow_auto_create_topics=False, metrics_enabled=False,
                                           reconnect_backoff_max_ms=5_000, max_block_ms=max_block_ms,
                                           enable_idempotence=False)
        except kerr.KafkaError as exc:
            raise _unreachable(settings, exc) from exc
        _no_auto_create(self._producer)

    def write(self, dead: DeadLetter) -> None:
        """Send one letter (asynchronously); never raises."""
        with self._lock:
            seq = self._seq
            self._seq += 1
            self.sent += 1
            if self._waiting:  # failing now: queue behind the others, retry() sends them in order
                self._waiting[seq] = dead
                return
        self._send(seq, dead)

    def write_many(self, dead: Iterable[DeadLetter]) -> None:
        for d in dead:
            self.write(d)

    def retry(self) -> int:
        """Re-send the waiting letters if the backoff has passed; returns how many were handed to the client.

        Called on every worker step: without waiting letters it costs a dict check.
        """
        if not self._waiting:
            return 0
        now = time.monotonic()
        with self._lock:
            if now < self._retry_at or not self._waiting:
                return 0
            due = sorted(self._waiting.items())
            self._waiting.clear()
            self._delay_s = min(2 * self._delay_s, _RETRY_MAX_S)
            self._retry_at = now + self._delay_s
        for i, (seq, dead) in enumerate(due):
            if not self._send(seq, dead):  # the send raised: still down, keep the rest for the next retry
                with self._lock:
                    self._waiting.update(due[i + 1:])
                return i
        return len(due)

    def unacked(self) -> list[DeadLetter]:
        """Every letter written but not acknowledged by the broker (in flight or waiting), in write order."""
        with self._lock:
            pending = {**self._in_flight, **self._waiting}
        return [pending[seq] for seq in sorted(pending)]

    def _send(self, seq: int, dead: DeadLetter) -> bool:
        """Hand one letter to the client; False (and the letter waits for retry) if that raised."""
        key, value, headers = _letter(dead, self.max_detail_bytes, self.max_record_bytes)
        with self._lock:
            self._in_flight[seq] = dead
        try:
            future = self._producer.send(self.settings.dlq_topic, value=value, key=key, headers=headers)
        except Exception as exc:  # no metadata within max_block_ms, a closed client, ...
            self._error(seq, dead, exc)
            return False
        future.add_callback(self._ok, seq)
        future.add_errback(self._error, seq, dead)
        return True

    def _ok(self, seq: int, _metadata: object) -> None:
        with self._lock:
            self._in_flight.pop(seq, None)
            self.written += 1
            self._delay_s = _RETRY_FIRST_S
            down_since, waiting = self._down_since, len(self._waiting)
            if down_since is not None and not waiting:
                self._down_since = None
        if down_since is not None and not waiting:
            log.warning("dead letter sink: writing to %s again after %.1fs", self.settings.dlq_topic,
                        time.monotonic() - down_since)

    def _error(self, seq: int, dead: DeadLetter, exc: BaseException) -> None:  # errback(f, *args): f(*args, exc)
        now = time.monotonic()
        with self._lock:
            self._in_flight.pop(seq, None)
            if not self._waiting:
                self._retry_at = max(self._retry_at, now + self._delay_s)
            self._waiting[seq] = dead
            self.failed += 1
            first = self._down_since is None
            if first:
                self._down_since = now
            pending = len(self._in_flight) + len(self._waiting)
        rec = dead.record
        log.log(logging.ERROR if first else logging.DEBUG,
                "dead letter sink: could not write %s[%d]@%d to %s: %s; %d letter(s) pending, retrying "
                "every %.1f-%.0fs%s", rec.topic, rec.partition, rec.offset, self.settings.dlq_topic, _what(exc),
                pending, _RETRY_FIRST_S, _RETRY_MAX_S, " (logged once until a write succeeds)" if first else "")

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait up to ``timeout_s`` for in-flight letters to be acknowledged or failed; never raises.

        The client's flush can return early (a batch split after MessageSizeTooLarge leaves a future
        it waits on undone), so wait until no letter is in flight or the time is up.
        """
        end = None if timeout_s is None else time.monotonic() + timeout_s
        error: Exception | None = None
        while True:
            left = None if end is None else end - time.monotonic()
            with self._lock:
                in_flight = len(self._in_flight)
            if not in_flight or (left is not None and left <= 0):
                break
            try:
                self._producer.flush(timeout=left)
            except kerr.KafkaTimeoutError as exc:
                error = exc
                break
            except Exception as exc:
                error = exc
                time.sleep(0.01)  # no busy loop while the client settles
        if in_flight:
            log.warning("dead letter sink: flush to %s incomplete, %d letter(s) still in flight%s",
                        self.settings.dlq_topic, in_flight, f": {_what(error)}" if error else "")

    def close(self, timeout_s: float | None = 10.0) -> None:
        self.flush(timeout_s)
        with contextlib.suppress(Exception):
            self._producer.close(timeout=timeout_s)
        lost = len(self.unacked())
        if lost:
            log.error("dead letter sink: closed with %d letter(s) not written to %s (keep unacked() to re-write "
                      "them)", lost, self.settings.dlq_topic)

    def __enter__(self) -> DeadLetterSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# topic admin


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
    with _admin(settings) as admin:
        have = _partition_counts(admin, wanted)
        out: dict[str, str] = {}
        new: dict[str, dict[str, Any]] = {}
        for topic in wanted:
            if topic in have:
                if topic != settings.dlq_topic and have[topic] != partitions:
                    raise KafkaSetupError(f"topic {topic} exists with {have[topic]} partitions, "
                                          f"not {partitions}")
                out[topic] = "exists"
                continue
            data_topic = topic != settings.dlq_topic
            configs = {"retention.ms": str(retention_ms)} if retention_ms is not None and data_topic else {}
            new[topic] = {"num_partitions": partitions, "replication_factor": replication, "configs": configs}
        if new:
            try:
                resp = admin.create_topics(new, timeout_ms=settings.connect_timeout_ms, raise_errors=False)
            except kerr.KafkaError as exc:
                raise _unreachable(settings, exc) from exc
            for t in resp["topics"]:
                err = kerr.for_code(t["error_code"])
                if err is kerr.TopicAlreadyExistsError:  # someone else was faster; checked below
                    out[t["name"]] = "exists"
                elif err is not kerr.NoError:
                    raise KafkaSetupError(f"creating topic {t['name']} failed: {err.__name__}: "
                                          f"{t.get('error_message') or ''}".rstrip(": "))
                else:
                    out[t["name"]] = "created"
            try:
                admin.wait_for_topics(list(new), timeout_ms=settings.connect_timeout_ms)
            except kerr.KafkaError as exc:
                raise _unreachable(settings, exc) from exc
    check_copartitioned(settings)
    return out


def _partition_counts(admin: KafkaAdminClient, topics: Sequence[str]) -> dict[str, int]:
    """Topic -> partition count for those of ``topics`` that exist."""
    try:
        described = admin.describe_topics(list(topics))
    except kerr.KafkaError as exc:
        raise KafkaSetupError(f"describing topics {', '.join(topics)} failed: {exc}") from exc
    return {t["name"]: len(t["partitions"]) for t in described
            if t["error_code"] == 0 and t["partitions"]}


def describe_topics(settings: KafkaSettings) -> dict[str, Any]:
    """The three topics: role, whether they exist, partitions, replication; and co-partitioning."""
    roles = {settings.predictions_topic: "predictions", settings.feedback_topic: "feedback",
             settings.dlq_topic: "dlq"}
    with _admin(settings) as admin:
        try:
            described = {t["name"]: t for t in admin.describe_topics(list(roles))}
        except kerr.KafkaError as exc:
            raise _unreachable(settings, exc) from exc
    topics: dict[str, Any] = {}
    for name, role in roles.items():
        t = described.get(name)
        exists = t is not None and t["error_code"] == 0 and bool(t["partitions"])
        parts = t["partitions"] if exists and t is not None else []
        topics[name] = {
            "role": role,
            "exists": exists,
            "partitions": len(parts),
            "replication_factor": min((len(p["replica_nodes"]) for p in parts), default=0),
        }
    p, f = topics[settings.predictions_topic], topics[settings.feedback_topic]
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "topics": topics,
        "copartitioned": p["exists"] and f["exists"] and p["partitions"] == f["partitions"],
    }


def check_copartitioned(settings: KafkaSettings) -> int:
    """The shared partition count of the predictions and feedback topics, or KafkaSetupError."""
    with _admin(settings) as admin:
        have = _partition_counts(admin, [settings.predictions_topic, settings.feedback_topic])
    for topic in (settings.predictions_topic, settings.feedback_topic):
        if topic not in have:
            raise KafkaSetupError(f"topic {topic} does not exist at {settings.bootstrap_servers} "
                                  "(streamlearn topics create makes it)")
    n_pred, n_fb = have[settings.predictions_topic], have[settings.feedback_topic]
    if n_pred != n_fb:
        raise KafkaSetupError(
            f"topics are not co-partitioned: {settings.predictions_topic} has {n_pred} partitions, "
            f"{settings.feedback_topic} has {n_fb}; a prediction and its feedback must land in the "
            "same partition number, so both topics need the same count")
    return n_pred


# ---------------------------------------------------------------------------
# producing


def produce_stream(settings: KafkaSettings, events: Iterable[Event], codec: str = "json",
                   rate: float | None = None, pack: int = 64) -> dict[str, int]:
    """Send events to their topics; returns {"predictions": n, "feedback": m, "records": r}.

    Key = prediction id, partition = ``partition_of(id, n)`` for both topics.
    ``rate`` limits events per second (None: as fast as possible). With the
    binary codec, up to ``pack`` consecutive events of one topic-partition
    share a record (keyed by its first id); under a rate limit a partial pack
    waits at most 0.2 s.
    """
    if codec not in CODECS:
        raise ValueError(f"codec: unknown {codec!r}, choose one of {', '.join(CODECS)}")
    if rate is not None and not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate: must be > 0 events/s, got {rate}")
    if pack < 1:
        raise ValueError(f"pack: must be >= 1, got {pack}")
    n_parts = check_copartitioned(settings)
    try:
        producer = KafkaProducer(**settings.client_kwargs(), acks="all", linger_ms=10, batch_size=1 << 20,
                                 max_request_size=8 << 20, allow_auto_create_topics=False,
                                 metrics_enabled=False)
    except kerr.KafkaError as exc:
        raise _unreachable(settings, exc) from exc
    errors: list[BaseException] = []
    counts = {"predictions": 0, "feedback": 0, "records": 0}
    packs: dict[tuple[str, int], list[Event]] = {}
    pack_started: dict[tuple[str, int], float] = {}
    pred_topic, fb_topic = settings.predictions_topic, settings.feedback_topic

    def send(topic: str, part: int, value: bytes, key: str) -> None:
        producer.send(topic, value=value, key=key.encode(), partition=part).add_errback(errors.append)
        counts["records"] += 1

    def send_pack(tp: tuple[str, int]) -> None:
        evs = packs.pop(tp)
        pack_started.pop(tp, None)
        send(tp[0], tp[1], encode_binary(evs), evs[0].id)

    start = time.monotonic()
    try:
        for i, ev in enumerate(events):
            is_pred = isinstance(ev, Prediction)
            topic = pred_topic if is_pred else fb_topic
            counts["predictions" if is_pred else "feedback"] += 1
            part = partition_of(ev.id, n_parts)
            if codec == "json":
                send(topic, part, encode_json(ev), ev.id)
            else:
                tp = (topic, part)
                buf = packs.setdefault(tp, [])
                if not buf:
                    pack_started[tp] = time.monotonic()
                buf.append(ev)
                if len(buf) >= pack:
                    send_pack(tp)
            if rate is not None:
                ahead = start + (i + 1) / rate - time.monotonic()
                if ahead > 0.002:
                    time.sleep(ahead)
                if packs and i % 64 == 0:
                    cutoff = time.monotonic() - 0.2
                    for tp in [tp for tp, t0 in pack_started.items() if t0 < cutoff]:
                        send_pack(tp)
            if errors:
                break
        for tp in list(packs):
            send_pack(tp)
        producer.flush()
    finally:
        producer.close(timeout=10)
    if errors:
        raise KafkaSetupError(f"producing to {settings.bootstrap_servers} failed: {errors[0]}")
    return counts
