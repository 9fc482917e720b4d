"""The job's one configuration: a file, then ``STREAMLEARN_*`` environment variables, then CLI flags.

Sections and keys mirror the dataclasses they build (see ``k8s/base/config``
for a full example file)::

    classes: 10                 # a count, or a list of names
    n_features: 64
    source: kafka               # kafka | embedded
    workers: 2
    partitions: 2               # embedded source only (Kafka: the topics' count)
    kafka: {bootstrap_servers: ..., predictions_topic: ..., security_protocol: SASL_SSL, ...}
    ray: {address: auto, num_cpus: 2}
    model: {kind: linear, hidden: 64, buckets: 262144}
    objective: {name: mixed, negative_weight: 1.0}
    optim: {name: adagrad, lr: 0.3, batch_size: 4}
    ps: {mode: async, shards: 1, max_staleness: 256, ...}
    join: {ttl_seconds: 3600, max_pending: 1000000}
    divergence: {guard: rollback, ...}
    checkpoint: {dir: /data/checkpoints, every_seconds: 30, keep: 3}
    metrics: {host: 127.0.0.1, port: 9400, history: null}
    stop: {max_events: null, max_seconds: null, until_idle: null}
    data: {...}  sim: {...}    # the embedded stream

An environment variable names a key by its path: ``STREAMLEARN_PS_MODE=sync``,
``STREAMLEARN_KAFKA_BOOTSTRAP_SERVERS=...``, ``STREAMLEARN_WORKERS=4``. An
unknown key anywhere, or a value of the wrong type, fails at start with a
message naming the key. The Kafka SASL password comes only from
``STREAMLEARN_KAFKA_SASL_PASSWORD`` or ``kafka.sasl_password_file``, never a
flag, and is never logged.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from streamlearn.checkpoint import CheckpointConfig
from streamlearn.divergence import DivergenceConfig
from streamlearn.events import Schema
from streamlearn.join import JoinConfig
from streamlearn.learner import OptimConfig
from streamlearn.metrics import MetricsConfig
from streamlearn.model import ModelConfig
from streamlearn.objective import Objective
from streamlearn.paramserver import PSConfig
from streamlearn.simulate import DataConfig, SimConfig

SOURCES = ("embedded", "kafka")


class ConfigError(ValueError):
    """A bad configuration value: the message names the key."""


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # None: start Ray in this process; "auto" or host:port joins a cluster
    num_cpus: int | None = None  # local Ray only; None: Ray's own count
    dashboard: bool = False  # local Ray's dashboard (binds 127.0.0.1); never expose it


@dataclass(frozen=True)
class StopConfig:
    max_events: int | None = None  # stop after this many records consumed (all topics)
    max_seconds: float | None = None  # stop after this long
    until_idle: float | None = None  # stop once no new record arrived for this many seconds

    def __post_init__(self) -> None:
        for name in ("max_events", "max_seconds", "until_idle"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ConfigError(f"stop.{name}: must be a finite number > 0, got {v}")


@dataclass(frozen=True)
class KafkaConfig:
    """Kafka connection and topics; turned into kafka_source.KafkaSettings by the job."""

    bootstrap_servers: str = "127.0.0.1:9092"
    predictions_topic: str = "streamlearn.predictions"
    feedback_topic: str = "streamlearn.feedback"
    dlq_topic: str = "streamlearn.dlq"
    group_id: str = "streamlearn"
    security_protocol: str = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password_file: str | None = None

    def password(self) -> str | None:
        """The SASL password: from ``sasl_password_file`` if set, else $STREAMLEARN_KAFKA_SASL_PASSWORD."""
        if not self.security_protocol.startswith("SASL"):
            return None
        if self.sasl_password_file:
            try:
                return Path(self.sasl_password_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"kafka.sasl_password_file: cannot read {self.sasl_password_file}: "
                                  f"{exc.strerror}") from exc
        return os.environ.get("STREAMLEARN_KAFKA_SASL_PASSWORD") or None


@dataclass(frozen=True)
class JobConfig:
    classes: tuple[str, ...] = tuple(str(i) for i in range(10))  # class names (index = position)
    n_features: int = 64  # dense feature width
    source: str = "embedded"  # embedded | kafka
    workers: int = 1  # worker actors
    partitions: int = 2  # embedded source: co-partitioned pairs to spread events over
    max_records: int = 2000  # records per poll
    codec: str = "json"  # embedded source's wire format
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: Objective = field(default_factory=Objective)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ps: PSConfig = field(default_factory=PSConfig)
    join: JoinConfig = field(default_factory=JoinConfig)
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sim: SimConfig = field(default_factory=SimConfig)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"source: unknown {self.source!r}, choose embedded or kafka")
        if self.workers < 1 or self.partitions < 1 or self.max_records < 1:
            raise ConfigError("workers, partitions and max_records must be >= 1")
        if self.source == "embedded" and self.workers > self.partitions:
            raise ConfigError(f"workers: {self.workers} workers need at least as many partitions "
                              f"(partitions is {self.partitions})")
        if self.codec not in ("json", "binary"):
            raise ConfigError(f"codec: unknown {self.codec!r}, choose json or binary")
        if self.model.n_classes != len(self.classes) or self.model.n_features != self.n_features:
            raise ConfigError("model: n_classes / n_features must match classes / n_features "
                              "(build the config with config.load, which keeps them in step)")

    @property
    def schema(self) -> Schema:
        return Schema(self.classes, self.n_features)


# -- loading ------------------------------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check (and for env strings, parse) one value against its field's type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: must be a mapping of settings")
        return build(hint, value, key)  # type: ignore[arg-type]
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, str):
            try:
                return hint(value)
            except ValueError:
                kind = "an integer" if hint is int else "a number"
                raise ConfigError(f"{key}: must be {kind}, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (hint is int and
                                                                              isinstance(value, float)):
            raise ConfigError(f"{key}: must be {'an integer' if hint is int else 'a number'}, got {value!r}")
        return hint(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: must be a list")
        return tuple(str(v) for v in value)
    return value


def build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a mapping; unknown keys and bad values name their key."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"{path}: unknown key (known: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(path, value, hints[key])
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from exc


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """STREAMLEARN_SECTION_KEY=value -> {section: {key: value}}, matched against the known keys."""
    out: dict[str, Any] = {}
    top = _hints(JobConfig)
    for name, value in env.items():
        if not name.startswith("STREAMLEARN_") or name in ENV_IGNORED:
            continue
        rest = name[len("STREAMLEARN_"):].lower()
        if rest in top and not dataclasses.is_dataclass(top[rest]):
            out[rest] = value
            continue
        for section, hint in top.items():
            if dataclasses.is_dataclass(hint) and rest.startswith(section + "_"):
                key = rest[len(section) + 1:]
                if key not in {f.name for f in dataclasses.fields(hint)}:
                    raise ConfigError(f"{name}: unknown key {section}.{key}")
                out.setdefault(section, {})[key] = value
                break
        else:
            raise ConfigError(f"{name}: not a streamlearn setting")
    return out


# variables that are read elsewhere, not config keys
ENV_IGNORED = frozenset({"STREAMLEARN_KAFKA_SASL_PASSWORD", "STREAMLEARN_KAFKA_BOOTSTRAP", "STREAMLEARN_KAFKA_HOME",
                         "STREAMLEARN_KAFKA_PORT", "STREAMLEARN_KAFKA_DATA", "STREAMLEARN_KAFKA_CONTROLLER_PORT",
                         "STREAMLEARN_KAFKA_START_TIMEOUT", "STREAMLEARN_CHECKOV", "STREAMLEARN_PROMETHEUS"})


def load(file: str | None, overrides: Mapping[str, Any], env: Mapping[str, str] | None = None) -> JobConfig:
    """File, then environment, then ``overrides`` (the CLI's flags, as a nested mapping)."""
    values: dict[str, Any] = {}
    if file:
        try:
            loaded = yaml.safe_load(Path(file).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"--config: cannot read {file}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config: {file} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config: {file} must hold a mapping of settings")
        values = loaded
    values = _merge(values, _from_env(os.environ if env is None else env))
    values = _merge(values, overrides)
    classes = values.get("classes", 10)
    if isinstance(classes, int) or (isinstance(classes, str) and classes.strip().isdigit()):
        values["classes"] = [str(i) for i in range(int(classes))]
    elif isinstance(classes, str):
        values["classes"] = [c.strip() for c in classes.split(",") if c.strip()]
    n_features = values.get("n_features", 64)
    model = dict(values.get("model") or {})
    for key in ("n_classes", "n_features"):
        if key in model:
            raise ConfigError(f"model.{key}: set by the top-level classes / n_features, not here")
    values["model"] = {**model, "n_classes": len(values["classes"]), "n_features": n_features}
    if values.get("source", "embedded") == "embedded":
        data = dict(values.get("data") or {})
        values["data"] = {"n_features": n_features, "n_classes": len(values["classes"]), **data}
    return build(JobConfig, values)
