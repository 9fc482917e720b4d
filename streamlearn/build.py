"""Building a job's parts from its config: a worker (inside its actor's process, or in a test) and the source's
partition count (at the driver). Driver and actors both import this module and neither imports the other."""

from __future__ import annotations

import logging
from typing import Any

from streamlearn.config import JobConfig
from streamlearn.ingest import Ingest
from streamlearn.learner import Learner
from streamlearn.simulate import Simulator
from streamlearn.source import EventSource, MemorySource
from streamlearn.worker import DeadLetters, ParamClient, Worker

log = logging.getLogger("streamlearn.build")


def kafka_settings(cfg: JobConfig) -> Any:
    from streamlearn.kafka import KafkaSettings

    k = cfg.kafka
    return KafkaSettings(
        bootstrap_servers=k.bootstrap_servers, predictions_topic=k.predictions_topic,
        feedback_topic=k.feedback_topic, dlq_topic=k.dlq_topic, group_id=k.group_id,
        security_protocol=k.security_protocol, ssl_cafile=k.ssl_cafile, ssl_certfile=k.ssl_certfile,
        ssl_keyfile=k.ssl_keyfile, sasl_mechanism=k.sasl_mechanism, sasl_username=k.sasl_username,
        sasl_password=k.password(), client=k.client,
    )


def build_source(cfg: JobConfig, partitions: list[int]) -> tuple[EventSource, DeadLetters | None]:
    """(source, dead-letter sink) for a worker's partitions (the embedded stream counts bad events only)."""
    if cfg.source == "embedded":
        src = MemorySource(lambda: Simulator(cfg.sim, cfg.data).events(block=64), cfg.partitions, partitions,
                           codec=cfg.codec)
        return src, None
    from streamlearn.kafka import DeadLetterSink, KafkaSource

    settings = kafka_settings(cfg)
    return KafkaSource(settings, partitions), DeadLetterSink(settings)


def build_worker(cfg: JobConfig, worker: int, partitions: list[int], ps: ParamClient) -> Worker:
    source, sink = build_source(cfg, partitions)
    return Worker(worker, Learner(cfg.model, cfg.objective, cfg.optim), Ingest(cfg.schema, cfg.join), source, ps,
                  cfg.ps, dead_letters=sink, max_records=cfg.max_records)


def partition_count(cfg: JobConfig) -> int:
    """The partitions the job reads: the embedded stream's, or the co-partitioned Kafka topics' (checked)."""
    if cfg.source == "embedded":
        return cfg.partitions
    from streamlearn.kafka import check_copartitioned

    n: int = check_copartitioned(kafka_settings(cfg))
    if n < cfg.workers:
        log.warning("%d workers but only %d partitions: %d workers will idle", cfg.workers, n, cfg.workers - n)
    return n


def assign(partitions: int, workers: int) -> list[list[int]]:
    """Worker w owns partitions w, w + W, ...: both topics' partition p go to the same worker (empty lists
    dropped: a worker without partitions is not started)."""
    return [parts for w in range(workers) if (parts := list(range(w, partitions, workers)))]
