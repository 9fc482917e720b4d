"""The job's one configuration, declared once (:mod:`~streamlearn.config.declare`): each setting's name, type,
default and help live on a config dataclass field, and the YAML keys, the ``STREAMLEARN_*`` variables and the
CLI flags are read off them. Importing this package loads neither torch, Ray nor the Prometheus client."""

from streamlearn.config.declare import ConfigError, Section, setting
from streamlearn.config.job import CODECS, SOURCES, JobConfig
from streamlearn.config.learning import (
                                         GUARDS,
                                         MODELS,
                                         OBJECTIVES,
                                         OPTIMIZERS,
                                         DivergenceConfig,
                                         ModelConfig,
                                         ObjectiveConfig,
                                         OptimConfig,
)
from streamlearn.config.load import DIGITS_SHAPE, ENV_IGNORED, build, env_names, load, load_kafka, service_link
from streamlearn.config.runtime import (
                                         PS_MODES,
                                         RAY_RESOURCES,
                                         SASL_MECHANISMS,
                                         SECURITY_PROTOCOLS,
                                         STALE_POLICIES,
                                         CheckpointConfig,
                                         HealthConfig,
                                         JoinConfig,
                                         KafkaConfig,
                                         MetricsConfig,
                                         PSConfig,
                                         RayConfig,
                                         StopConfig,
)
from streamlearn.config.stream import DATASETS, POLICIES, DataConfig, SimConfig

__all__ = [
    "CODECS", "DATASETS", "DIGITS_SHAPE", "ENV_IGNORED", "GUARDS", "KAFKA_CLIENTS", "MODELS", "OBJECTIVES",
    "OPTIMIZERS", "POLICIES", "PS_MODES", "RAY_RESOURCES", "SASL_MECHANISMS", "SECURITY_PROTOCOLS", "SOURCES",
    "STALE_POLICIES", "CheckpointConfig", "ConfigError", "DataConfig", "DivergenceConfig", "HealthConfig",
    "JobConfig", "JoinConfig", "KafkaConfig", "MetricsConfig", "ModelConfig", "ObjectiveConfig", "OptimConfig",
    "PSConfig", "RayConfig", "Section", "SimConfig", "StopConfig", "build", "env_names", "load", "load_kafka",
    "service_link", "setting",
]
