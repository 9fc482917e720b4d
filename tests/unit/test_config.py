"""The layered config: file, then STREAMLEARN_* environment, then flags; unknown keys fail naming the key."""

import re
from pathlib import Path

import pytest

from streamlearn import config
from streamlearn.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("workers: 2\nps: {mode: sync, shards: 2}\noptim: {lr: 0.1}\n")
    cfg = config.load(str(f), {"ps": {"shards": 3}}, env={"STREAMLEARN_PS_MODE": "bounded",
                                                          "STREAMLEARN_OPTIM_LR": "0.2"})
    assert cfg.workers == 2 and cfg.ps.mode == "bounded" and cfg.ps.shards == 3 and cfg.optim.lr == 0.2


@pytest.mark.parametrize(
    ("text", "env", "needle"),
    [
        ("wrokers: 2\n", {}, "wrokers: unknown key"),
        ("ps: {mode: fast}\n", {}, "ps mode: unknown 'fast'"),
        ("ps: {shards: two}\n", {}, "ps.shards: must be an integer"),
        ("optim: {lr: -1}\n", {}, "lr: must be > 0"),
        ("", {"STREAMLEARN_PS_MDOE": "sync"}, "STREAMLEARN_PS_MDOE"),
        ("model: {n_classes: 3}\n", {}, "model.n_classes"),
        ("- 1\n", {}, "must hold a mapping"),
        ("workers: 3\npartitions: 2\n", {}, "workers"),
        ("classes: 2.5\n", {}, "classes: must be a count or a list of names, got 2.5"),
        ("classes:\n", {}, "classes: must be a count or a list of names, got None"),
        ("classes: [a]\n", {}, "classes: need at least 2"),
        ("model: linear\n", {}, "model: must be a mapping, got 'linear'"),
        ("ps: 3\n", {}, "ps: must be a mapping, got 3"),
        ("data: digits\n", {}, "data: must be a mapping, got 'digits'"),
        ("n_features: wide\n", {}, "n_features: must be an integer, got 'wide'"),
        ("", {"STREAMLEARN_N_FEATURES": "wide"}, "n_features: must be an integer, got 'wide'"),
        ("classes: 4\n", {}, "classes: 4 does not match the embedded stream's data.n_classes 10"),
        ("data: {dataset: synthetic, n_features: 8}\nn_features: 9\n", {}, "n_features: 9 does not match"),
    ],
)
def test_bad_config_fails_naming_the_key(tmp_path: Path, text: str, env: dict, needle: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=None) as err:
        config.load(str(f), {}, env=env)
    assert needle in str(err.value)


def test_password_only_from_file_or_env_and_never_in_repr(tmp_path: Path, monkeypatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    cfg = config.load(None, {"source": "kafka", "kafka": {"security_protocol": "SASL_SSL",
                                                          "sasl_mechanism": "SCRAM-SHA-512",
                                                          "sasl_username": "u",
                                                          "sasl_password_file": str(secret)}}, env={})
    assert cfg.kafka.password() == "s3cret"
    assert "s3cret" not in repr(cfg)
    monkeypatch.setenv("STREAMLEARN_KAFKA_SASL_PASSWORD", "fromenv")
    plain = config.load(None, {"source": "kafka"}, env={})
    assert plain.kafka.password() is None  # PLAINTEXT never sends one


@pytest.mark.parametrize("path", sorted(ROOT.glob("k8s/**/config/*.yaml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_config_files_load(path: Path) -> None:
    cfg = config.load(str(path), {"source": "kafka"}, env={})
    assert cfg.source == "kafka"


def test_settings_that_defeat_themselves_fail_fast() -> None:
    """A negative clip would climb the loss and 0 stop learning; a bounded-mode push larger than half the bound
    makes every update of a second worker miss it. Each is refused with the setting's name."""
    from streamlearn.divergence import DivergenceConfig
    from streamlearn.paramserver import PSConfig

    for name, value in (("clip_norm", -1.0), ("clip_norm", 0.0), ("max_weight_norm", 0.0), ("spike_factor", -1.0),
                        ("spike_floor", float("nan"))):
        with pytest.raises(ValueError, match=name):
            DivergenceConfig(**{name: value})
    with pytest.raises(ValueError, match="grads_per_push 64 is more than half of max_staleness 100"):
        PSConfig(mode="bounded", max_staleness=100)
    assert PSConfig(mode="bounded", max_staleness=128).grads_per_push == 64  # exactly half: fine
    assert PSConfig(mode="async", max_staleness=8).max_staleness == 8  # the bound only binds bounded mode


@pytest.mark.parametrize(
    ("text", "env", "needle"),
    [
        ("optim: {lr: .inf}\n", {}, "optim.lr: must be a finite number"),
        ("objective: {negative_weight: .inf}\n", {}, "objective.negative_weight: must be a finite number"),
        ("checkpoint: {every_seconds: .nan}\n", {}, "checkpoint.every_seconds: must be a finite number"),
        ("sim: {delay_mean: .nan}\n", {}, "sim.delay_mean: must be a finite number"),
        ("data: {noise: .nan}\n", {}, "data.noise: must be a finite number"),
        ("", {"STREAMLEARN_OPTIM_LR": "inf"}, "optim.lr: must be a finite number"),
        ("", {"STREAMLEARN_PS_PUSH_BUDGET": "nan"}, "ps.push_budget: must be a finite number"),
        ("", {"STREAMLEARN_METRICS_HISTORY_EVERY_SECONDS": "-inf"}, "metrics.history_every_seconds"),
    ],
)
def test_non_finite_numbers_fail_naming_the_key(tmp_path: Path, text: str, env: dict, needle: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        config.load(str(f), {}, env=env)
    assert needle in str(err.value)


def test_every_local_sh_variable_is_ignored() -> None:
    """deploy/kafka/local.sh's own settings (exported for the broker script) must not stop `run` or `demo`."""
    script = (ROOT / "deploy" / "kafka" / "local.sh").read_text()
    names = set(re.findall(r"\$\{?(STREAMLEARN_[A-Z_]+)", script))
    assert {"STREAMLEARN_KAFKA_HEAP_OPTS", "STREAMLEARN_KAFKA_DOWNLOAD_TIMEOUT"} <= names
    assert names <= config.ENV_IGNORED
    cfg = config.load(None, {}, env=dict.fromkeys(names, "x"))
    assert cfg.kafka == config.KafkaConfig()


def test_bootstrap_servers_env_is_the_setting_and_the_harness_variable_is_not() -> None:
    """README: STREAMLEARN_KAFKA_BOOTSTRAP_SERVERS sets kafka.bootstrap_servers; STREAMLEARN_KAFKA_BOOTSTRAP only
    points the Kafka tests and benchmarks at a broker."""
    env = {"STREAMLEARN_KAFKA_BOOTSTRAP_SERVERS": "b:1", "STREAMLEARN_KAFKA_BOOTSTRAP": "t:2",
           "STREAMLEARN_KAFKA_GROUP_ID": "g"}
    cfg = config.load(None, {"source": "kafka"}, env=env)
    assert (cfg.kafka.bootstrap_servers, cfg.kafka.group_id) == ("b:1", "g")
    assert config.load_kafka(None, {}, env=env) == cfg.kafka
    assert config.load_kafka(None, {"bootstrap_servers": "f:3"}, env=env).bootstrap_servers == "f:3"
    assert config.load_kafka(None, {}, env={"STREAMLEARN_KAFKA_BOOTSTRAP": "t:2"}).bootstrap_servers == "127.0.0.1:9092"


def test_metrics_files_are_checked_at_load(tmp_path: Path) -> None:
    """The job opens these long after Ray started: a bad path must fail at load instead, naming the key."""
    with pytest.raises(ConfigError, match=r"metrics\.history: directory '/nonexistent/dir' does not exist"):
        config.load(None, {"metrics": {"history": "/nonexistent/dir/h.jsonl"}}, env={})
    with pytest.raises(ConfigError, match=r"metrics\.history: .* is a directory"):
        config.load(None, {"metrics": {"history": str(tmp_path)}}, env={})
    with pytest.raises(ConfigError, match=r"metrics\.tls_certfile: cannot read '/nonexistent\.crt'"):
        config.load(None, {"metrics": {"tls_certfile": "/nonexistent.crt", "tls_keyfile": "/nonexistent.key"}},
                    env={})
    cert, key = tmp_path / "c.crt", tmp_path / "c.key"
    cert.write_text("cert")
    with pytest.raises(ConfigError, match=r"metrics\.tls_keyfile: cannot read"):
        config.load(None, {"metrics": {"tls_certfile": str(cert), "tls_keyfile": str(key)}}, env={})
    key.write_text("key")
    cfg = config.load(None, {"metrics": {"history": str(tmp_path / "h.jsonl"), "tls_certfile": str(cert),
                                         "tls_keyfile": str(key)}}, env={})
    assert cfg.metrics.history == str(tmp_path / "h.jsonl")


def test_embedded_shape_follows_the_data_section(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("data: {dataset: synthetic, n_classes: 3, n_features: 5}\nmodel:\n")
    cfg = config.load(str(f), {}, env={})
    assert (len(cfg.classes), cfg.n_features, cfg.model.n_classes, cfg.data.n_classes) == (3, 5, 3, 3)
    assert config.load(None, {"classes": "a,b"}, env={"STREAMLEARN_SOURCE": "kafka"}).classes == ("a", "b")


def test_named_sparse_features_on_a_dense_model_fail_at_start(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("data: {dataset: synthetic, sparse_active: 20}\n")
    with pytest.raises(ConfigError, match=r"data\.sparse_active: named features need model hashed"):
        config.load(str(f), {})
    f.write_text("data: {dataset: synthetic, sparse_active: 20}\nmodel: {kind: hashed}\n")
    assert config.load(str(f), {}).schema.named_features
    f.write_text("")
    assert not config.load(str(f), {}).schema.named_features


def test_a_checkpoint_dir_that_is_a_file_fails_at_start_naming_the_flag(tmp_path: Path) -> None:
    taken = tmp_path / "ckpt"
    taken.write_text("not a directory")
    for directory in (taken, taken / "sub"):
        with pytest.raises(ConfigError, match=r"--checkpoint-dir.*is a file, not a directory"):
            config.load(None, {"checkpoint": {"dir": str(directory)}})
    assert config.load(None, {"checkpoint": {"dir": str(tmp_path / "new" / "dir")}}).checkpoint.dir
