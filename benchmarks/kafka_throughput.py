"""Kafka ingest throughput: how close KafkaSource (+ decode + join) gets to a raw kafka-python loop.

For each codec, the simulated stream is produced ONCE to fresh uuid-named
topics; then every row reads ALL of it from offset 0 and prints one JSON line:

    {"bench": "kafka_throughput", "codec": ..., "row": ..., "events": ..., "records": ...,
     "seconds": ..., "events_per_second": ..., "ratio_to_raw": ...}

``ratio_to_raw`` divides by the ``raw`` row: a bare kafka-python consume loop
with the same consumer settings as KafkaSource (the ceiling). Rows are plain
functions ``row_x(bench) -> Measured`` listed in ROWS, so a later stage (the
learner, Ray workers) is one more function.

    python benchmarks/kafka_throughput.py                      # starts and stops a local broker
    python benchmarks/kafka_throughput.py --bootstrap-servers 127.0.0.1:9092 --events 200000

Events are counted as predictions + feedback. The topics are deleted after.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from streamlearn.events import Schema
from streamlearn.ingest import Ingest
from streamlearn.kafka_source import KafkaSettings, KafkaSource, SourceConfig, create_topics, produce_stream
from streamlearn.simulate import DataConfig, SimConfig, Simulator
from streamlearn.source import Record

LOCAL_SH = Path(__file__).resolve().parents[1] / "deploy" / "kafka" / "local.sh"
BATCH = 5000  # records per next_batch / poll


@dataclass
class Bench:
    settings: KafkaSettings
    codec: str
    partitions: int
    events: int  # predictions + feedback in the topics
    records: int  # Kafka records in the topics (fewer than events when binary packs them)
    schema: Schema


@dataclass
class Measured:
    events: int
    records: int
    seconds: float


def _tps(b: Bench) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t in (b.settings.predictions_topic, b.settings.feedback_topic)
            for p in range(b.partitions)]


def _raw_loop(b: Bench, **config: object) -> Measured:
    consumer = KafkaConsumer(**b.settings.client_kwargs(), enable_auto_commit=False,
                             auto_offset_reset="earliest", **config)
    try:
        consumer.assign(_tps(b))
        for tp, offset in consumer.beginning_offsets(_tps(b)).items():  # as KafkaSource does, off the clock
            consumer.seek(tp, offset)
        n = 0
        start = time.perf_counter()
        while n < b.records:
            for recs in consumer.poll(timeout_ms=500, max_records=BATCH).values():
                n += len(recs)
        seconds = time.perf_counter() - start
    finally:
        consumer.close(autocommit=False)
    return Measured(b.events, n, seconds)


def row_raw(b: Bench) -> Measured:
    """The ceiling: kafka-python's poll loop, touching nothing, with KafkaSource's consumer settings."""
    cfg = SourceConfig()
    return _raw_loop(b, fetch_max_bytes=cfg.fetch_max_bytes,
                     max_partition_fetch_bytes=cfg.max_partition_fetch_bytes, check_crcs=cfg.crc_checks,
                     metrics_enabled=False)


def row_raw_defaults(b: Bench) -> Measured:
    """kafka-python out of the box (pure-Python CRC checks and client metrics on), for context."""
    return _raw_loop(b)


def _source(b: Bench) -> KafkaSource:
    return KafkaSource(b.settings, list(range(b.partitions)))  # connects and resolves offsets, off the clock


def row_source(b: Bench) -> Measured:
    """KafkaSource.next_batch: the raw loop plus building Records and tracking positions."""
    source = _source(b)
    try:
        n = 0
        start = time.perf_counter()
        while n < b.records:
            n += len(source.next_batch(BATCH))
        seconds = time.perf_counter() - start
    finally:
        source.close()
    return Measured(b.events, n, seconds)


def row_source_ingest(b: Bench) -> Measured:
    """KafkaSource + Ingest: consume, decode, join into examples (what a worker does before learning)."""
    source, ingest = _source(b), Ingest(b.schema)
    try:
        n = examples = 0
        start = time.perf_counter()
        while n < b.records:
            recs = source.next_batch(BATCH)
            n += len(recs)
            examples += len(ingest.process(recs).examples)
        seconds = time.perf_counter() - start
    finally:
        source.close()
    assert examples == b.events // 2, f"{examples} examples from {b.events} events"
    return Measured(b.events, n, seconds)


def row_ingest_in_memory(b: Bench) -> Measured:
    """Ingest alone over Records already in memory: the decode + join ceiling without any Kafka."""
    source = _source(b)
    records: list[Record] = []
    try:
        while len(records) < b.records:
            records += source.next_batch(BATCH)
    finally:
        source.close()
    ingest = Ingest(b.schema)
    start = time.perf_counter()
    for i in range(0, len(records), BATCH):
        ingest.process(records[i : i + BATCH])
    return Measured(b.events, len(records), time.perf_counter() - start)


ROWS: list[Callable[[Bench], Measured]] = [row_raw, row_raw_defaults, row_source, row_source_ingest,
                                           row_ingest_in_memory]


# ---------------------------------------------------------------------------


def _emit(line: dict[str, object]) -> None:
    print(json.dumps(line), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def local_broker() -> Iterator[str]:
    """A throwaway broker from deploy/kafka/local.sh; stopped and purged on exit."""
    port, cport = _free_port(), _free_port()
    with tempfile.TemporaryDirectory(prefix="streamlearn-bench-") as tmp:
        env = {**os.environ, "STREAMLEARN_KAFKA_DATA": f"{tmp}/data",
               "STREAMLEARN_KAFKA_CONTROLLER_PORT": str(cport)}
        try:
            out = subprocess.run([str(LOCAL_SH), "start", "--port", str(port)], env=env, check=True,
                                 capture_output=True, text=True, timeout=600)
            yield out.stdout.strip().splitlines()[-1]
        finally:
            subprocess.run([str(LOCAL_SH), "stop", "--purge", "--port", str(port)], env=env,
                           capture_output=True, timeout=120, check=False)


def run(bootstrap: str, events: int, partitions: int, codecs: list[str], repeat: int, pack: int) -> None:
    schema = Schema.from_spec(10, 64)
    for codec in codecs:
        u = uuid.uuid4().hex[:10]
        settings = KafkaSettings(bootstrap, predictions_topic=f"bench-{u}.predictions",
                                 feedback_topic=f"bench-{u}.feedback", dlq_topic=f"bench-{u}.dlq")
        create_topics(settings, partitions)
        try:
            stream = Simulator(SimConfig(events=events // 2, seed=0), DataConfig()).events()
            start = time.perf_counter()
            counts = produce_stream(settings, stream, codec=codec, pack=pack)
            seconds = time.perf_counter() - start
            n_events = counts["predictions"] + counts["feedback"]
            _emit({"bench": "kafka_throughput", "codec": codec, "row": "produce (simulate + encode + send)",
                   "events": n_events, "records": counts["records"], "seconds": round(seconds, 3),
                   "events_per_second": round(n_events / seconds)})
            bench = Bench(settings, codec, partitions, n_events, counts["records"], schema)
            ceiling = None
            for row in ROWS:
                runs = [row(bench) for _ in range(repeat)]
                m = runs[0]
                assert all(r.records == bench.records for r in runs), "a row did not read every record"
                seconds = statistics.median(r.seconds for r in runs)
                eps = m.events / seconds
                if row is row_raw:
                    ceiling = eps
                _emit({"bench": "kafka_throughput", "codec": codec, "row": row.__name__.removeprefix("row_"),
                       "events": m.events, "records": m.records, "seconds": round(seconds, 3),
                       "events_per_second": round(eps), "records_per_second": round(m.records / seconds),
                       "ratio_to_raw": round(eps / ceiling, 3) if ceiling else None,
                       "repeat": repeat, "partitions": partitions, "crc_checks": SourceConfig().crc_checks})
        finally:
            admin = KafkaAdminClient(**settings.client_kwargs())
            try:
                admin.delete_topics([settings.predictions_topic, settings.feedback_topic, settings.dlq_topic],
                                    raise_errors=False)
            finally:
                admin.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--bootstrap-servers", default=os.environ.get("STREAMLEARN_KAFKA_BOOTSTRAP"),
                   help="an existing broker (default: start a throwaway one with deploy/kafka/local.sh)")
    p.add_argument("--events", type=int, default=200_000, help="predictions + feedback per codec")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--codec", action="append", choices=("json", "binary"), help="default: both")
    p.add_argument("--pack", type=int, default=64, help="binary: events per record")
    p.add_argument("--repeat", type=int, default=3, help="runs per row; the median is reported")
    args = p.parse_args(argv)
    codecs = args.codec or ["json", "binary"]
    if args.bootstrap_servers:
        run(args.bootstrap_servers, args.events, args.partitions, codecs, args.repeat, args.pack)
    else:
        with local_broker() as bootstrap:
            run(bootstrap, args.events, args.partitions, codecs, args.repeat, args.pack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
