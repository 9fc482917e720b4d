"""The job's whole configuration: the top-level settings and one section per concern."""

from __future__ import annotations

from dataclasses import dataclass, field

from streamlearn.config.declare import ConfigError, Section, setting
from streamlearn.config.learning import DivergenceConfig, ModelConfig, ObjectiveConfig, OptimConfig
from streamlearn.config.runtime import (
    CheckpointConfig,
    HealthConfig,
    JoinConfig,
    KafkaConfig,
    MetricsConfig,
    PSConfig,
    RayConfig,
    StopConfig,
)
from streamlearn.config.stream import DataConfig, SimConfig
from streamlearn.events import Schema

SOURCES = ("embedded", "kafka")
CODECS = ("json", "binary")


@dataclass(frozen=True)
class JobConfig(Section):
    classes: tuple[str, ...] = setting(help="class count, or comma-separated class names (index = position)",
                                       flag="--classes", factory=lambda: tuple(str(i) for i in range(10)))
    n_features: int = setting(64, "dense feature width", flag="--n-features", ge=1)
    source: str = setting("embedded", "where events come from (demo: embedded, run: kafka)", choices=SOURCES)
    workers: int = setting(1, "worker actors", flag="--workers", ge=1)
    partitions: int = setting(2, "embedded stream: co-partitioned pairs to spread events over", flag="--partitions",
                              ge=1)
    max_records: int = setting(2000, "records per poll", ge=1)
    codec: str = setting("json", "embedded stream's wire format", flag="--codec", choices=CODECS)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ps: PSConfig = field(default_factory=PSConfig)
    join: JoinConfig = field(default_factory=JoinConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sim: SimConfig = field(default_factory=SimConfig)

    def check(self) -> None:
        if self.source == "embedded" and self.workers > self.partitions:
            raise ConfigError("workers", f"{self.workers} workers need at least as many partitions "
                              f"(partitions is {self.partitions})")
        if self.data.sparse_active and self.model.kind != "hashed":
            raise ConfigError("data.sparse_active", f"named features need model hashed (model is {self.model.kind})")
        if self.model.n_classes != len(self.classes) or self.model.n_features != self.n_features:
            raise ConfigError("model", "n_classes / n_features must match classes / n_features "
                              "(build the config with config.load, which keeps them in step)")

    @property
    def schema(self) -> Schema:
        return Schema(self.classes, self.n_features, named_features=self.model.kind == "hashed")
