"""The layered config: file, then STREAMLEARN_* environment, then flags; unknown keys fail naming the key."""

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
