"""Settings of how the job runs: parameter servers, the join, checkpoints, metrics, Kafka, Ray and when to stop."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from streamlearn.config.declare import ConfigError, Section, setting

PS_MODES = ("sync", "async", "bounded")
STALE_POLICIES = ("drop", "downweight")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
KAFKA_CLIENTS = ("confluent", "kafka-python")
RAY_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")  # Ray's own, not a placement label


@dataclass(frozen=True)
class PSConfig(Section):
    key = "ps"

    mode: str = setting("async", "parameter-server mode", flag="--ps-mode", choices=PS_MODES)
    shards: int = setting(1, "parameter-server actors, each holding a row range of every parameter",
                          flag="--ps-shards", ge=1)
    # bounded: a pipelined push starts from the reply to the push before last, so with 2 workers ~2 foreign
    # pushes is the steady state; the bound also caps a push at a quarter of it
    max_staleness: int = setting(2048, "bounded mode: versions a gradient may lag; sparse models: versions a "
                                 "row a worker reads may lag", flag="--max-staleness", ge=1)
    stale_policy: str = setting("drop", "bounded mode: what happens to a gradient past max_staleness",
                                flag="--stale-policy", choices=STALE_POLICIES)
    sync_timeout_seconds: float = setting(5.0, "sync: a round closes after this long even if a worker is silent",
                                          gt=0)
    # a push costs about the same however much it carries, so a worker carries more per push while its pushes
    # take more than push_budget of its step time, up to max_grads_per_push (bounded: also max_staleness // 4)
    grads_per_push: int = setting(64, "micro-batches per push (sync: per round), at least", flag="--grads-per-push",
                                  ge=1)
    push_budget: float = setting(0.04, "share of a worker's step time its pushes may take before a push carries "
                                 "more micro-batches (0: a fixed --grads-per-push)", flag="--push-budget", ge=0, lt=1)
    max_grads_per_push: int = setting(1024, "micro-batches per push, at most", flag="--max-grads-per-push", ge=1)
    pull_every: int = setting(1, "pushes between weight pulls (a worker also pulls when max_staleness behind)",
                              flag="--pull-every", ge=1)

    def check(self) -> None:
        if self.mode == "bounded" and self.grads_per_push > self.max_staleness // 2:
            raise ConfigError("ps.grads_per_push", f"grads_per_push {self.grads_per_push} is more than half of "
                              f"max_staleness {self.max_staleness}: with a second worker every update would miss "
                              "the bound; raise max_staleness or lower grads_per_push")

    @property
    def most_grads_per_push(self) -> int:
        """The largest group a push may carry: never below grads_per_push."""
        most = self.max_grads_per_push if self.mode != "bounded" else min(self.max_grads_per_push,
                                                                          self.max_staleness // 4)
        return max(self.grads_per_push, most)


@dataclass(frozen=True)
class JoinConfig(Section):
    key = "join"

    ttl_seconds: float = setting(3600.0, "event time a prediction waits for its feedback (and vice versa)", gt=0)
    max_pending: int = setting(1_000_000, "waiting entries before the oldest is evicted", ge=1)


@dataclass(frozen=True)
class HealthConfig(Section):
    """When a job warns that its input is going nowhere (on stderr, in the summary's warnings; alerts in
    deploy/prometheus/rules.yml use the same defaults)."""

    key = "health"

    max_dead_letter_share: float = setting(0.5, "warn when more than this share of the records went to the dead "
                                           "letters (1: never)", gt=0, le=1)
    min_join_hit_rate: float = setting(0.5, "warn when less than this share of the feedback that needs a join "
                                       "found its prediction (0: never)", ge=0, le=1)
    min_records: int = setting(1000, "records (dead letters) or feedback events (joins) a share needs before "
                               "the job warns while it runs; the join warning at the end needs a tenth of it",
                               ge=1)


@dataclass(frozen=True)
class CheckpointConfig(Section):
    key = "checkpoint"

    dir: str | None = setting(None, "checkpoints go here; the newest valid one is restored at start",
                              flag="--checkpoint-dir")
    every_seconds: float = setting(30.0, "periodic checkpoint interval (0: off)", flag="--checkpoint-every-seconds",
                                   ge=0)
    every_updates: int = setting(0, "also checkpoint every this many model updates (0: off)",
                                 flag="--checkpoint-every-updates", ge=0)
    keep: int = setting(3, "newest checkpoints kept", flag="--keep-checkpoints", ge=1)


@dataclass(frozen=True)
class MetricsConfig(Section):
    key = "metrics"

    host: str = setting("127.0.0.1", "scrape endpoint address (loopback unless configured)", flag="--metrics-host")
    port: int | None = setting(None, "scrape endpoint port (none: no endpoint)", flag="--metrics-port", ge=0,
                               le=65535)
    history: str | None = setting(None, "append metric snapshots to this JSON-lines file (for `report`)",
                                  flag="--metrics-history")
    history_every_seconds: float = setting(2.0, "longest interval between history snapshots (a young run takes "
                                           "them more often, so a short one still draws)",
                                           flag="--metrics-history-every-seconds", gt=0)
    tls_certfile: str | None = setting(None, "serve metrics over TLS with this certificate",
                                       flag="--metrics-tls-certfile")
    tls_keyfile: str | None = setting(None, "... and this key", flag="--metrics-tls-keyfile")

    def check(self) -> None:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ConfigError("metrics.tls_certfile", "give both tls_certfile and tls_keyfile, or neither")


@dataclass(frozen=True)
class KafkaConfig(Section):
    """Kafka connection and topics; turned into the Kafka client's settings by the job."""

    key = "kafka"

    bootstrap_servers: str = setting("127.0.0.1:9092", "host:port[,host:port]", flag="--bootstrap-servers")
    predictions_topic: str = setting("streamlearn.predictions", "predictions topic", flag="--predictions-topic")
    feedback_topic: str = setting("streamlearn.feedback", "feedback topic", flag="--feedback-topic")
    dlq_topic: str = setting("streamlearn.dlq", "dead-letter topic", flag="--dlq-topic")
    group_id: str = setting("streamlearn", "consumer group, lag monitoring only", flag="--group-id")
    security_protocol: str = setting("PLAINTEXT", "how to reach the brokers", flag="--security-protocol",
                                     choices=SECURITY_PROTOCOLS)
    ssl_cafile: str | None = setting(None, "CA bundle for the broker certificate", flag="--ssl-cafile")
    ssl_certfile: str | None = setting(None, "client certificate (mutual TLS)", flag="--ssl-certfile")
    ssl_keyfile: str | None = setting(None, "client private key (mutual TLS)", flag="--ssl-keyfile")
    sasl_mechanism: str | None = setting(None, "SASL mechanism", flag="--sasl-mechanism", choices=SASL_MECHANISMS)
    sasl_username: str | None = setting(None, "SASL user", flag="--sasl-username")
    sasl_password_file: str | None = setting(None, "file holding the SASL password (else "
                                             "$STREAMLEARN_KAFKA_SASL_PASSWORD)", flag="--sasl-password-file")
    client: str | None = setting(None, "Kafka client library (none: confluent when confluent-kafka is installed, "
                                 "else kafka-python)", flag="--kafka-client", choices=KAFKA_CLIENTS)

    def password(self) -> str | None:
        """The SASL password: from ``sasl_password_file`` if set, else $STREAMLEARN_KAFKA_SASL_PASSWORD."""
        if not self.security_protocol.startswith("SASL"):
            return None
        if self.sasl_password_file:
            try:
                return Path(self.sasl_password_file).read_text().strip()
            except OSError as exc:
                raise ConfigError("kafka.sasl_password_file", f"cannot read {self.sasl_password_file}: "
                                  f"{exc.strerror}") from exc
        return os.environ.get("STREAMLEARN_KAFKA_SASL_PASSWORD") or None


@dataclass(frozen=True)
class RayConfig(Section):
    key = "ray"

    address: str | None = setting(None, "join this Ray cluster ('auto': the one this machine runs); none: start "
                                  "a local Ray of this job's own", flag="--ray-address")
    num_cpus: int | None = setting(None, "CPUs of the local Ray (none: Ray's own count)", flag="--ray-num-cpus",
                                   ge=1)
    dashboard: bool = setting(False, "start the local Ray's dashboard (on 127.0.0.1)", flag="--ray-dashboard")
    # each actor takes 0.001 of it and the actors spread over those pods (a 0-CPU head does not keep 0-CPU
    # actors off it)
    actor_resource: str | None = setting(None, "with --ray-address: run the actors only on nodes offering this "
                                         "custom Ray resource, spread over them; none: any node",
                                         flag="--actor-resource")
    connect_seconds: float = setting(15.0, "with an address: give up joining the cluster after this long", gt=0)

    def check(self) -> None:
        if self.actor_resource is None:
            return
        if not self.address:
            raise ConfigError("ray.actor_resource", "needs ray.address (a local Ray offers no custom resource)")
        if not self.actor_resource or self.actor_resource in RAY_RESOURCES:
            raise ConfigError("ray.actor_resource", f"must name a custom resource, got {self.actor_resource!r}")


@dataclass(frozen=True)
class StopConfig(Section):
    key = "stop"

    max_events: int | None = setting(None, "stop after this many records consumed (all topics; a replay counts "
                                     "once)", flag="--max-events", gt=0)
    max_seconds: float | None = setting(None, "stop after this many seconds", flag="--max-seconds", gt=0)
    until_idle: float | None = setting(None, "stop once no new record arrived for this many seconds",
                                       flag="--until-idle", gt=0)


__all__ = [
    "PS_MODES",
    "SASL_MECHANISMS",
    "SECURITY_PROTOCOLS",
    "STALE_POLICIES",
    "CheckpointConfig",
    "HealthConfig",
    "JoinConfig",
    "KafkaConfig",
    "MetricsConfig",
    "PSConfig",
    "RayConfig",
    "StopConfig",
]
