"""Loading the job's configuration: a YAML file, then ``STREAMLEARN_*`` environment variables, then CLI flags.

Sections and keys are the fields of :class:`~streamlearn.config.job.JobConfig` (see ``k8s/base/config`` for a
full example file)::

    classes: 10                 # a count, or a list of names
    n_features: 64
    source: kafka               # kafka | embedded
    workers: 2
    kafka: {bootstrap_servers: ..., predictions_topic: ..., security_protocol: SASL_SSL, ...}
    ray: {address: auto, num_cpus: 2}
    ps: {mode: async, shards: 1, max_staleness: 2048, ...}
    checkpoint: {dir: /data/checkpoints, every_seconds: 30, keep: 3}
    ...

An environment variable names a key by its path: ``STREAMLEARN_PS_MODE=sync``,
``STREAMLEARN_KAFKA_BOOTSTRAP_SERVERS=...``, ``STREAMLEARN_WORKERS=4``. An unknown key anywhere, a value of the
wrong type, a non-finite number, a value outside its declared bounds, a section that is not a mapping, or a
metrics file that cannot be written or read fails at start with a message naming the key. Variables that
Kubernetes injects for Services (``STREAMLEARN_METRICS_SERVICE_HOST``, ``STREAMLEARN_METRICS_PORT=tcp://...``)
are not settings and are ignored. The Kafka SASL password comes only from ``STREAMLEARN_KAFKA_SASL_PASSWORD``
or ``kafka.sasl_password_file``, never a flag, and is never logged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import yaml

from streamlearn.config.declare import ConfigError, hints, is_section, plain, walk
from streamlearn.config.job import JobConfig
from streamlearn.config.runtime import KafkaConfig
from streamlearn.config.stream import DataConfig

T = TypeVar("T")
ENV_PREFIX = "STREAMLEARN_"

# variables that are read elsewhere, not config keys: the SASL password (KafkaConfig.password); the
# broker the test and benchmark harnesses use (tests/kafka/conftest.py); deploy/kafka/local.sh's settings;
# tool paths for the tests
ENV_IGNORED = frozenset({
    "STREAMLEARN_KAFKA_SASL_PASSWORD", "STREAMLEARN_KAFKA_BOOTSTRAP",
    "STREAMLEARN_KAFKA_HOME", "STREAMLEARN_KAFKA_PORT", "STREAMLEARN_KAFKA_CONTROLLER_PORT", "STREAMLEARN_KAFKA_DATA",
    "STREAMLEARN_KAFKA_HEAP_OPTS", "STREAMLEARN_KAFKA_JVM_OPTS", "STREAMLEARN_KAFKA_EXTRA_CONFIG",
    "STREAMLEARN_KAFKA_START_TIMEOUT", "STREAMLEARN_KAFKA_STOP_TIMEOUT", "STREAMLEARN_KAFKA_DOWNLOAD_TIMEOUT",
    "STREAMLEARN_CHECKOV", "STREAMLEARN_PROMETHEUS",
})
# Kubernetes' service links for a Service named streamlearn-x: STREAMLEARN_X_SERVICE_HOST, _SERVICE_PORT[_NAME],
# STREAMLEARN_X_PORT=tcp://ip:port and STREAMLEARN_X_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]
SERVICE_LINK_NAME = re.compile(r"_SERVICE_(HOST|PORT)(_\w+)?$|_PORT_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?$")
SERVICE_LINK_VALUE = re.compile(r"^(tcp|udp|sctp)://", re.IGNORECASE)
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
KINDS = {"int": "an integer", "float": "a finite number", "str": "a string", "bool": "true or false",
         "array": "a list", "object": "a mapping"}
DIGITS_SHAPE = {"n_classes": 10, "n_features": 64}  # sklearn's digits: 8x8 images of 10 digits


def env_names() -> dict[str, tuple[str, ...]]:
    """``STREAMLEARN_PS_MODE`` -> ``("ps", "mode")``, for every declared setting."""
    return {ENV_PREFIX + "_".join(path).upper(): path for path, _, _ in walk(JobConfig)}


def service_link(name: str, value: str) -> bool:
    """Whether a variable looks like one Kubernetes injects for a Service (not a setting)."""
    return bool(SERVICE_LINK_NAME.search(name)) or (name.endswith("_PORT") and bool(SERVICE_LINK_VALUE.match(value)))


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """STREAMLEARN_SECTION_KEY=value -> {section: {key: value}}, for the declared settings."""
    names = env_names()
    types = {path: hint for path, _, hint in walk(JobConfig)}
    sections = {path[0] for path in names.values() if len(path) == 2}
    out: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_IGNORED:
            continue
        path = names.get(name)
        if path is None or (name.endswith("_PORT") and SERVICE_LINK_VALUE.match(value)):
            if service_link(name, value):
                continue
            rest = name[len(ENV_PREFIX):].lower()
            section = next((s for s in sections if rest.startswith(s + "_")), None)
            if section is not None:
                raise ConfigError(name, f"unknown key {section}.{rest[len(section) + 1:]}")
            raise ConfigError(name, "not a streamlearn setting")
        if plain(types[path]) is bool and value.strip().lower() in TRUE + FALSE:
            value = value.strip().lower() in TRUE  # type: ignore[assignment]
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def _mapping(key: str, value: Any) -> Mapping[str, Any]:
    """A section's settings; an empty section (``model:`` with nothing under it) is an empty mapping."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be a mapping, got {value!r}")
    return value


def _known(cls: type, values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``values`` with every key checked against ``cls``'s fields (sections recursively, empty ones as {})."""
    types = hints(cls)
    out: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in types:
            raise ConfigError(path, f"unknown key (known: {', '.join(sorted(types))})")
        out[key] = _known(types[key], _mapping(path, value), path) if is_section(types[key]) else value
    return out


def _lookup(values: Mapping[str, Any], parts: list[str]) -> Any:
    for p in parts:
        if not isinstance(values, Mapping) or p not in values:
            return None
        values = values[p]
    return values


def build(cls: type[T], values: Mapping[str, Any], prefix: str = "") -> T:
    """Instantiate config dataclass ``cls`` from a mapping (msgspec parses strings from the environment);
    an unknown key or a bad value raises ConfigError naming its key."""
    checked = _known(cls, values, prefix)
    try:
        return msgspec.convert(checked, cls, strict=False)
    except msgspec.ValidationError as exc:
        cause = exc.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(prefix or cls.__name__, str(cause)) from None
        m = re.match(r"Expected `([^`]+)`, got `[^`]+`(?: - at `\$\.?([^`]*)`)?", str(exc))
        if m is None:
            raise ConfigError(prefix, str(exc)) from None
        parts = [p for p in (m.group(2) or "").split(".") if p]
        key = ".".join([prefix, *parts] if prefix else parts)
        kind = KINDS.get(m.group(1).split(" | ")[0], m.group(1))
        raise ConfigError(key, f"must be {kind}, got {_lookup(checked, parts)!r}") from None


def _scalar(key: str, value: Any, kind: type[T]) -> T:
    """One value parsed as ``kind`` (a string from the environment included), or ConfigError naming ``key``."""
    try:
        if isinstance(value, bool):
            raise msgspec.ValidationError
        return msgspec.convert(value, kind, strict=False)
    except msgspec.ValidationError:
        raise ConfigError(key, f"must be {KINDS[kind.__name__]}, got {value!r}") from None


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
        raise ConfigError("classes", f"must be a count or a list of names, got {value!r}")
    if len(names) < 2:
        raise ConfigError("classes", f"need at least 2 classes, got {value!r}")
    if len(set(names)) != len(names):
        raise ConfigError("classes", f"names must be unique, got {value!r}")
    return names


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _layers(file: str | None, overrides: Mapping[str, Any], env: Mapping[str, str] | None) -> dict[str, Any]:
    """The file's settings, then the environment's, then ``overrides``, merged."""
    values: dict[str, Any] = {}
    if file:
        try:
            loaded = yaml.safe_load(Path(file).read_text()) or {}
        except OSError as exc:
            raise ConfigError("--config", f"cannot read {file}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError("--config", f"{file} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError("--config", f"{file} must hold a mapping of settings")
        values = loaded
    values = _merge(values, _from_env(os.environ if env is None else env))
    return _merge(values, overrides)


def load_kafka(file: str | None, overrides: Mapping[str, Any], env: Mapping[str, str] | None = None) -> KafkaConfig:
    """The ``kafka`` section alone, layered like :func:`load` (for commands that only talk to the broker)."""
    values = _layers(file, {"kafka": overrides}, env)
    return build(KafkaConfig, _mapping("kafka", values.get("kafka")), "kafka")


def _embedded_shape(values: dict[str, Any], classes: list[str] | None, n_features: int | None) -> dict[str, Any]:
    """The embedded stream's ``data`` section, in step with ``classes`` / ``n_features`` (set here if unset)."""
    data = dict(_mapping("data", values.get("data")))
    for key in DIGITS_SHAPE:
        if key in data:
            data[key] = _scalar(f"data.{key}", data[key], int)
    dataset = data.get("dataset", DataConfig.dataset)
    if dataset == "digits":
        for key, fixed in DIGITS_SHAPE.items():
            if data.setdefault(key, fixed) != fixed:
                raise ConfigError(f"data.{key}", f"the digits dataset has {fixed}, got {data[key]}")
    have = {"n_classes": None if classes is None else len(classes), "n_features": n_features}
    top = {"n_classes": "classes", "n_features": "n_features"}
    for key in DIGITS_SHAPE:
        if key not in data:
            data[key] = getattr(DataConfig, key) if have[key] is None else have[key]
        elif have[key] is not None and have[key] != data[key]:
            raise ConfigError(top[key], f"{have[key]} does not match the embedded stream's data.{key} "
                              f"{data[key]} (dataset {dataset})")
    return data


def _check_checkpoint_dir(path: Path) -> None:
    """The checkpoint directory (made if missing) must be a writable directory: found now, not at the first save."""
    label = f"checkpoint.dir (--checkpoint-dir): {str(path)!r}"
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError("checkpoint.dir", f"{str(existing)!r} is a file, not a directory", label)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError("checkpoint.dir", f"cannot write in {str(existing)!r} (permission denied)", label)


def _check_paths(cfg: JobConfig) -> None:
    """Files the job opens long after start (behind Ray's start-up) are checked now, naming their key."""
    history = cfg.metrics.history
    if history:
        path = Path(history)
        parent = path.parent
        if not parent.is_dir():
            raise ConfigError("metrics.history", f"directory {str(parent)!r} does not exist")
        if path.is_dir():
            raise ConfigError("metrics.history", f"{history!r} is a directory, not a file")
        writable = os.access(path, os.W_OK) if path.exists() else os.access(parent, os.W_OK | os.X_OK)
        if not writable:
            raise ConfigError("metrics.history", f"cannot write {history!r} (permission denied)")
    if cfg.checkpoint.dir:
        _check_checkpoint_dir(Path(cfg.checkpoint.dir))
    for key in ("tls_certfile", "tls_keyfile"):
        name = getattr(cfg.metrics, key)
        if name and not (Path(name).is_file() and os.access(name, os.R_OK)):
            reason = "no such file" if not Path(name).exists() else "not a readable file"
            raise ConfigError(f"metrics.{key}", f"cannot read {name!r} ({reason})")


def load(file: str | None, overrides: Mapping[str, Any], env: Mapping[str, str] | None = None) -> JobConfig:
    """File, then environment (``os.environ`` unless given), then ``overrides`` (the CLI's flags, nested)."""
    values = _layers(file, overrides, env)
    classes = _class_names(values["classes"]) if "classes" in values else None
    n_features = _scalar("n_features", values["n_features"], int) if "n_features" in values else None
    model = dict(_mapping("model", values.get("model")))
    for key in ("n_classes", "n_features"):
        if key in model:
            raise ConfigError(f"model.{key}", "set by the top-level classes / n_features, not here")
    if values.get("source", "embedded") == "embedded":  # the stream's shape and the model's agree
        data = values["data"] = _embedded_shape(values, classes, n_features)
        classes = classes or [str(i) for i in range(data["n_classes"])]
        n_features = data["n_features"] if n_features is None else n_features
    values["classes"] = list(JobConfig().classes) if classes is None else classes
    values["n_features"] = JobConfig.n_features if n_features is None else n_features
    values["model"] = {**model, "n_classes": len(values["classes"]), "n_features": values["n_features"]}
    cfg = build(JobConfig, values)
    _check_paths(cfg)
    return cfg
