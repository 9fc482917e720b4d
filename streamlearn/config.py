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
    ps: {mode: async, shards: 1, max_staleness: 2048, ...}
    join: {ttl_seconds: 3600, max_pending: 1000000}
    divergence: {guard: rollback, ...}
    checkpoint: {dir: /data/checkpoints, every_seconds: 30, keep: 3}
    metrics: {host: 127.0.0.1, port: 9400, history: null}
    stop: {max_events: null, max_seconds: null, until_idle: null}
    data: {...}  sim: {...}    # the embedded stream

An environment variable names a key by its path: ``STREAMLEARN_PS_MODE=sync``,
``STREAMLEARN_KAFKA_BOOTSTRAP_SERVERS=...``, ``STREAMLEARN_WORKERS=4``. An
unknown key anywhere, a value of the wrong type, a non-finite number, a
section that is not a mapping, or a metrics file that cannot be written or read
fails at start with a message naming the key. The Kafka SASL password comes only from
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
RAY_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")  # Ray's own, not a placement label


class ConfigError(ValueError):
    """A bad configuration value: the message names the key."""


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # None: start Ray in this process; "auto" or host:port joins a cluster
    num_cpus: int | None = None  # local Ray only; None: Ray's own count
    dashboard: bool = False  # local Ray's dashboard (binds 127.0.0.1); never expose it
    # a cluster's custom resource that only the learner pods offer: each actor takes 0.001 of it and the actors
    # spread over those pods (a 0-CPU head does not keep 0-CPU actors off it). None: any node
    actor_resource: str | None = None

    def __post_init__(self) -> None:
        if self.actor_resource is None:
            return
        if not self.address:
            raise ConfigError("ray.actor_resource: needs ray.address (a local Ray offers no custom resource)")
        if not self.actor_resource or self.actor_resource in RAY_RESOURCES:
            raise ConfigError(f"ray.actor_resource: must name a custom resource, got {self.actor_resource!r}")


@dataclass(frozen=True)
class StopConfig:
    max_events: int | None = None  # stop after this many records consumed (all topics; a replay counts once)
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
        if self.data.sparse_active and self.model.kind != "hashed":
            raise ConfigError(f"data.sparse_active: named features need model hashed (model is {self.model.kind})")
        if self.codec not in ("json", "binary"):
            raise ConfigError(f"codec: unknown {self.codec!r}, choose json or binary")
        if self.model.n_classes != len(self.classes) or self.model.n_features != self.n_features:
            raise ConfigError("model: n_classes / n_features must match classes / n_features "
                              "(build the config with config.load, which keeps them in step)")

    @property
    def schema(self) -> Schema:
        return Schema(self.classes, self.n_features, named_features=self.model.kind == "hashed")


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
        return build(hint, _mapping(key, value), key)  # type: ignore[arg-type]
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    if hint in (int, float):
        kind = "an integer" if hint is int else "a finite number"
        if isinstance(value, str):
            try:
                number = hint(value)
            except ValueError:
                raise ConfigError(f"{key}: must be {kind}, got {value!r}") from None
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or (hint is int and
                                                                                isinstance(value, float)):
            raise ConfigError(f"{key}: must be {kind}, got {value!r}")
        else:
            number = hint(value)
        if not math.isfinite(number):  # NaN passes every "> 0" check and inf every ">= 0": refuse both here
            raise ConfigError(f"{key}: must be {kind}, got {value!r}")
        return number
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


def _mapping(key: str, value: Any) -> Mapping[str, Any]:
    """A section's settings; an empty section (``model:`` with nothing under it) is an empty mapping."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: must be a mapping, got {value!r}")
    return value


def _class_names(value: Any) -> list[str]:
    """``classes``: a count (``10``, ``"10"``), comma-separated names, or a list of names."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        names = [str(i) for i in range(value)]
    elif isinstance(value, str):
        names = [c.strip() for c in value.split(",") if c.strip()]
    elif isinstance(value, (list, tuple)) and all(isinstance(c, (str, int)) and not isinstance(c, bool)
                                                  for c in value):
        names = [str(c) for c in value]
    else:
        raise ConfigError(f"classes: must be a count or a list of names, got {value!r}")
    if len(names) < 2:
        raise ConfigError(f"classes: need at least 2 classes, got {value!r}")
    if len(set(names)) != len(names):
        raise ConfigError(f"classes: names must be unique, got {value!r}")
    return names


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


# variables that are read elsewhere, not config keys: the SASL password (KafkaConfig.password); the
# broker the test and benchmark harnesses use (tests/kafka/conftest.py; the CLI reads
# STREAMLEARN_KAFKA_BOOTSTRAP_SERVERS); deploy/kafka/local.sh's settings; tool paths for the tests
ENV_IGNORED = frozenset({
    "STREAMLEARN_KAFKA_SASL_PASSWORD", "STREAMLEARN_KAFKA_BOOTSTRAP",
    "STREAMLEARN_KAFKA_HOME", "STREAMLEARN_KAFKA_PORT", "STREAMLEARN_KAFKA_CONTROLLER_PORT", "STREAMLEARN_KAFKA_DATA",
    "STREAMLEARN_KAFKA_HEAP_OPTS", "STREAMLEARN_KAFKA_JVM_OPTS", "STREAMLEARN_KAFKA_EXTRA_CONFIG",
    "STREAMLEARN_KAFKA_START_TIMEOUT", "STREAMLEARN_KAFKA_STOP_TIMEOUT", "STREAMLEARN_KAFKA_DOWNLOAD_TIMEOUT",
    "STREAMLEARN_CHECKOV", "STREAMLEARN_PROMETHEUS",
})

DIGITS_SHAPE = {"n_classes": 10, "n_features": 64}  # sklearn's digits: 8x8 images of 10 digits


def _layers(file: str | None, overrides: Mapping[str, Any], env: Mapping[str, str] | None) -> dict[str, Any]:
    """The file's settings, then the environment's, then ``overrides``, merged."""
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
    return _merge(values, overrides)


def load_kafka(file: str | None, overrides: Mapping[str, Any], env: Mapping[str, str] | None = None) -> KafkaConfig:
    """The ``kafka`` section alone, layered like :func:`load` (for commands that only talk to the broker)."""
    values = _layers(file, {"kafka": overrides}, env)
    kafka: KafkaConfig = build(KafkaConfig, _mapping("kafka", values.get("kafka")), "kafka")
    return kafka


def _embedded_shape(values: dict[str, Any], classes: list[str] | None, n_features: int | None) -> dict[str, Any]:
    """The embedded stream's ``data`` section, in step with ``classes`` / ``n_features`` (set here if unset)."""
    data = dict(_mapping("data", values.get("data")))
    for key in DIGITS_SHAPE:
        if key in data:
            data[key] = _coerce(f"data.{key}", data[key], int)
    if data.get("dataset", DataConfig.dataset) == "digits":
        for key, fixed in DIGITS_SHAPE.items():
            if data.setdefault(key, fixed) != fixed:
                raise ConfigError(f"data.{key}: the digits dataset has {fixed}, got {data[key]}")
    have = {"n_classes": None if classes is None else len(classes), "n_features": n_features}
    top = {"n_classes": "classes", "n_features": "n_features"}
    for key in DIGITS_SHAPE:
        if key not in data:
            data[key] = getattr(DataConfig, key) if have[key] is None else have[key]
        elif have[key] is not None and have[key] != data[key]:
            raise ConfigError(f"{top[key]}: {have[key]} does not match the embedded stream's data.{key} "
                              f"{data[key]} (dataset {data.get('dataset', DataConfig.dataset)})")
    return data


def _check_checkpoint_dir(path: Path) -> None:
    """The checkpoint directory (made if missing) must be a writable directory: found now, not at the first save."""
    where = f"checkpoint.dir (--checkpoint-dir): {str(path)!r}"
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"{where}: {str(existing)!r} is a file, not a directory")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: cannot write in {str(existing)!r} (permission denied)")


def _check_paths(cfg: JobConfig) -> None:
    """Files the job opens long after start (behind Ray's start-up) are checked now, naming their key."""
    history = cfg.metrics.history
    if history:
        path = Path(history)
        parent = path.parent
        if not parent.is_dir():
            raise ConfigError(f"metrics.history: directory {str(parent)!r} does not exist")
        if path.is_dir():
            raise ConfigError(f"metrics.history: {history!r} is a directory, not a file")
        writable = os.access(path, os.W_OK) if path.exists() else os.access(parent, os.W_OK | os.X_OK)
        if not writable:
            raise ConfigError(f"metrics.history: cannot write {history!r} (permission denied)")
    directory = cfg.checkpoint.dir
    if directory:
        _check_checkpoint_dir(Path(directory))
    for key in ("tls_certfile", "tls_keyfile"):
        name = getattr(cfg.metrics, key)
        if name and not (Path(name).is_file() and os.access(name, os.R_OK)):
            reason = "no such file" if not Path(name).exists() else "not a readable file"
            raise ConfigError(f"metrics.{key}: cannot read {name!r} ({reason})")


def load(file: str | None, overrides: Mapping[str, Any], env: Mapping[str, str] | None = None) -> JobConfig:
    """File, then environment, then ``overrides`` (the CLI's flags, as a nested mapping)."""
    values = _layers(file, overrides, env)
    classes = _class_names(values["classes"]) if "classes" in values else None
    n_features = _coerce("n_features", values["n_features"], int) if "n_features" in values else None
    model = dict(_mapping("model", values.get("model")))
    for key in ("n_classes", "n_features"):
        if key in model:
            raise ConfigError(f"model.{key}: set by the top-level classes / n_features, not here")
    if values.get("source", "embedded") == "embedded":  # the stream's shape and the model's agree
        data = values["data"] = _embedded_shape(values, classes, n_features)
        classes = classes or [str(i) for i in range(data["n_classes"])]
        n_features = data["n_features"] if n_features is None else n_features
    values["classes"] = list(JobConfig.classes) if classes is None else classes
    values["n_features"] = JobConfig.n_features if n_features is None else n_features
    values["model"] = {**model, "n_classes": len(values["classes"]), "n_features": values["n_features"]}
    cfg: JobConfig = build(JobConfig, values)
    _check_paths(cfg)
    return cfg
