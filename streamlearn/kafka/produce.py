"""What ``streamlearn produce`` (and the simulator's path to Kafka) writes: events to their two topics.

Key = prediction id; the partition is the client's murmur2 of the key, as the Java client and
kafka-python choose it, so both events of an id meet in one partition number whoever produced them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from streamlearn.codec import CODECS, encode_binary, encode_json
from streamlearn.events import Event, Prediction
from streamlearn.kafka.admin import check_copartitioned
from streamlearn.kafka.client import KafkaSetupError, KafkaUnavailable, WriterConfig, what, writer
from streamlearn.kafka.settings import KafkaSettings

_M = 0x5BD1E995


@dataclass(frozen=True)
class JsonRecord:
    """An event already in the JSON contract's form, written as it is (class names stay names): a row of a
    user's file. JSON codec only."""

    id: str
    prediction: bool  # to the predictions topic, else to the feedback topic
    value: dict[str, Any]


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of ``data`` (seed 0x9747b28c), as a signed 32-bit int like Java's."""
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    end = length - length % 4
    for i in range(0, end, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * _M) & 0xFFFFFFFF
        h = ((h * _M) & 0xFFFFFFFF) ^ k
    rest = length % 4
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * _M) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * _M) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner (and kafka-python's, and librdkafka's
    ``murmur2_random``) gives a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def produce_stream(settings: KafkaSettings, events: Iterable[Event | JsonRecord], codec: str = "json",
                   rate: float | None = None, pack: int = 64) -> dict[str, int]:
    """Send events to their topics; returns {"predictions": n, "feedback": m, "records": r}.

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
    part_of = partition_for
    if settings.client == "confluent":
        from streamlearn.kafka.confluent import partition_for as part_of  # the same hash, in C
    try:
        client = writer(settings, WriterConfig(linger_ms=10, block_ms=60_000, delivery_timeout_ms=120_000,
                                               max_request_bytes=8 << 20))
    except (KafkaUnavailable, KafkaSetupError) as exc:
        raise KafkaSetupError(f"cannot use Kafka at {settings.bootstrap_servers}: {exc}") from exc
    errors: list[BaseException] = []
    counts = {"predictions": 0, "feedback": 0, "records": 0}
    packs: dict[tuple[str, int], list[Event]] = {}
    pack_started: dict[tuple[str, int], float] = {}
    pred_topic, fb_topic = settings.predictions_topic, settings.feedback_topic

    def delivered(exc: BaseException | None) -> None:
        if exc is not None:
            errors.append(exc)

    def send(topic: str, value: bytes, key: str) -> None:
        client.send(topic, value, key.encode(), None, delivered)
        counts["records"] += 1
        if counts["records"] % 1000 == 0:
            client.poll()

    def send_pack(tp: tuple[str, int]) -> None:
        evs = packs.pop(tp)
        pack_started.pop(tp, None)
        send(tp[0], encode_binary(evs), evs[0].id)  # every id of a pack has the first one's partition

    start = time.monotonic()
    try:
        for i, ev in enumerate(events):
            is_pred = ev.prediction if isinstance(ev, JsonRecord) else isinstance(ev, Prediction)
            topic = pred_topic if is_pred else fb_topic
            counts["predictions" if is_pred else "feedback"] += 1
            if isinstance(ev, JsonRecord):
                if codec != "json":
                    raise ValueError("codec: a record in the JSON contract's form needs the json codec")
                send(topic, json.dumps(ev.value, separators=(",", ":")).encode("utf-8"), ev.id)
            elif codec == "json":
                send(topic, encode_json(ev), ev.id)
            else:
                tp = (topic, part_of(ev.id.encode(), n_parts))
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
        client.flush(None)
    except Exception as exc:  # the client could not take a record (no metadata in time, ...)
        errors.append(exc)
    finally:
        client.close(10)
    if errors:
        raise KafkaSetupError(f"producing to {settings.bootstrap_servers} failed: {what(errors[0])}")
    return counts
