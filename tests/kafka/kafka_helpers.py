"""Shared helpers of the kafka tier (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from streamlearn.codec import MAGIC, decode
from streamlearn.events import Event, Example, Feedback, Prediction, Schema
from streamlearn.ingest import DeadLetter, Ingest
from streamlearn.kafka import CLIENTS, KafkaSettings, KafkaSource
from streamlearn.simulate import DataConfig, SimConfig, Simulator
from streamlearn.source import Record

SCHEMA = Schema.from_spec(10, 64)  # the digits stream


@dataclass
class Drained:
    records: list[Record] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)

    def keys(self) -> list[tuple[str, int, int]]:
        return [(r.topic, r.partition, r.offset) for r in self.records]


def drain(source: KafkaSource, ingest: Ingest, want: int, deadline_s: float = 60.0,
          batch: int = 1000) -> Drained:
    """Read until ``want`` records came (or the deadline passed, which the caller's asserts catch)."""
    out = Drained()
    end = time.monotonic() + deadline_s
    while len(out.records) < want and time.monotonic() < end:
        recs = source.next_batch(min(batch, want - len(out.records)))
        res = ingest.process(recs)
        out.records += recs
        out.examples += res.examples
        out.dead += res.dead
    return out


def simulate(events: int, seed: int = 0, **sim: float) -> list[Event]:
    return list(Simulator(SimConfig(events=events, seed=seed, **sim), DataConfig(seed=seed)).events())  # type: ignore[arg-type]


def identity(events: list[Event]) -> Counter[tuple[str, str, float]]:
    """Multiset of (kind, id, ts): what "every event exactly once" compares."""
    return Counter(("prediction" if isinstance(e, Prediction) else "feedback", e.id, e.ts) for e in events)


def decoded(records: list[Record]) -> list[Event]:
    return [ev for r in records for ev in decode(r.value, r.kind, SCHEMA)]


def expected_examples(events: list[Event]) -> int:
    """Ids with both a prediction and a feedback: each joins exactly once (no TTL expiry at this scale)."""
    preds = {e.id for e in events if isinstance(e, Prediction)}
    return len({e.id for e in events if isinstance(e, Feedback) and e.id in preds})


def run_cli(settings: KafkaSettings, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("STREAMLEARN_KAFKA_BOOTSTRAP", None)
    cmd = [sys.executable, "-m", "streamlearn.cli", *args, "--bootstrap-servers", settings.bootstrap_servers,
           "--predictions-topic", settings.predictions_topic, "--feedback-topic", settings.feedback_topic,
           "--dlq-topic", settings.dlq_topic, "--kafka-client", str(settings.client)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)

ROOT = Path(__file__).resolve().parents[2]
LOCAL_SH = ROOT / "deploy" / "kafka" / "local.sh"


@dataclass
class Broker:
    bootstrap: str
    managed: bool  # started by this session: tests may stop and restart it
    env: dict[str, str]
    port: int = 0

    def _run(self, *args: str) -> None:
        assert self.managed, "only a broker this session started can be stopped"
        subprocess.run([str(LOCAL_SH), *args, "--port", str(self.port)], env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=180)

    def stop(self) -> None:
        """Stop, keeping the data (a restart resumes it)."""
        self._run("stop")

    def start(self) -> None:
        self._run("start")


TopicFactory = Callable[..., KafkaSettings]  # the kafka_topics fixture: makes uuid topics

# a contract-test module's mark: each of its tests runs once per client (it overrides the kafka_client fixture)
EACH_CLIENT = pytest.mark.parametrize("kafka_client", CLIENTS)


DENSE = ", ".join(["0.5"] * 64)  # a valid 64-wide dense feature list, as JSON text
# (stream, value, DLQ reason): malformed records both Kafka DLQ tests write, each adds its own on top
MALFORMED_CORE = [
    ("prediction", b"this is not json", "not_json"),
    ("prediction", b"\xff\xfe{not utf8", "not_utf8"),
    ("prediction", f'{{"id": "m-1", "ts": 1.0, "features": [{DENSE}], "prediction": "zebra"}}'.encode(),
     "unknown_class"),
    ("prediction", f'{{"id": "m-2", "ts": 1.0, "features": [NaN, {DENSE[5:]}], "prediction": 1}}'.encode(),
     "non_finite"),
    ("prediction", b'{"id": "m-3", "ts": 1.0, "features": [0.1, 0.2], "prediction": 1}', "bad_dense_length"),
    ("prediction", MAGIC + struct.pack("<I", 1) + b"\x01\x05\x00ab", "truncated"),
    ("feedback", b'{"id": "m-4", "ts": 1.0, "correct": true, "label": 2}', "correct_xor_label"),
    ("feedback", b'{"id": "m-5", "ts": 1.0, "correct": "yes"}', "bad_correct"),
]
Sent = dict[tuple[str, int, int], tuple[bytes | None, bytes, str]]  # (topic, partition, offset) -> key, value, reason


def send_malformed(settings: KafkaSettings, batch: list[tuple[str, bytes, str]], first: int, sent: Sent) -> None:
    """Write (stream, value, reason) records with a plain producer, alternating partitions 0 and 1; record i
    (counting from ``first``) is keyed ``bad-i``, record 0 has no key. Fills ``sent`` with where each landed."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    try:
        for i, (stream, value, reason) in enumerate(batch, first):
            topic = settings.predictions_topic if stream == "prediction" else settings.feedback_topic
            key = None if i == 0 else f"bad-{i}".encode()
            meta = producer.send(topic, value=value, key=key, partition=i % 2).get(timeout=30)
            sent[(topic, meta.partition, meta.offset)] = (key, value, reason)
    finally:
        producer.close()
