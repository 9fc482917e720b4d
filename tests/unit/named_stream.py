"""An 8-feature stream with named classes, as a user's own producer writes it (JSON, key = id), and the two
partitioners a producer may use: murmur2 (the Java client's default, streamlearn's) and CRC32 (librdkafka's)."""

from __future__ import annotations

import json
import zlib

from streamlearn.codec import encode_json
from streamlearn.events import Event
from streamlearn.simulate import DataConfig, SimConfig, Simulator

NAMES = ("cat", "dog", "bird")


def named_stream(events: int, seed: int = 3) -> list[Event]:
    """Predictions with 8 features and 3 classes; every one judged, a fifth of the judgements with a label."""
    sim = SimConfig(events=events, seed=seed, judged_share=1.0, label_share=0.2)
    return list(Simulator(sim, DataConfig(dataset="synthetic", n_features=8, n_classes=3, seed=seed)).events())


def as_json(ev: Event) -> bytes:
    """The event as a producer with named classes writes it ("prediction": "dog", "label": "cat")."""
    obj = json.loads(encode_json(ev))
    for key in ("prediction", "label"):
        if isinstance(obj.get(key), int):
            obj[key] = NAMES[obj[key]]
    return json.dumps(obj).encode()


def crc32_partition(key: bytes, partitions: int) -> int:
    """librdkafka's default partitioner (consistent_random: CRC32 of the key), as kcat and confluent-kafka use."""
    return zlib.crc32(key) % partitions
