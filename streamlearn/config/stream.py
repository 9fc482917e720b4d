"""Settings of the simulated stream (``demo``, ``evaluate``, ``produce``): the dataset and the deployed model's
traffic and feedback."""

from __future__ import annotations

from dataclasses import dataclass

from streamlearn.config.declare import ConfigError, Section, setting

DATASETS = ("digits", "synthetic")
POLICIES = ("random", "fixed", "epsilon-greedy")


@dataclass(frozen=True)
class DataConfig(Section):
    key = "data"

    dataset: str = setting("digits", "dataset the events are drawn from", flag="--dataset", choices=DATASETS)
    n_features: int = setting(64, "synthetic: input width (digits has 64)", flag="--n-features", ge=1)
    n_classes: int = setting(10, "synthetic: number of classes (digits has 10)", flag="--classes", ge=2)
    noise: float = setting(1.0, "synthetic: within-class spread relative to class separation", flag="--noise",
                           ge=0)
    drift: float = setting(0.0, "synthetic: how far class centres move per 10,000 events", flag="--drift", ge=0)
    sparse_active: int = setting(0, "synthetic: > 0 emits that many named sparse features per event (hashed "
                                 "model)", flag="--sparse-active", ge=0)
    seed: int = setting(0, "seed of the dataset's draws (--seed also seeds the simulation and the model)",
                        flag="--seed")


@dataclass(frozen=True)
class SimConfig(Section):
    key = "sim"

    events: int = setting(20_000, "predictions the deployed model serves", flag="--events", ge=0)
    policy: str = setting("random", "logging policy of the deployed model", flag="--policy", choices=POLICIES)
    epsilon: float = setting(0.1, "epsilon-greedy exploration rate", flag="--epsilon", ge=0, le=1)
    judged_share: float = setting(1.0, "share of predictions that get any feedback", flag="--judged-share", ge=0, le=1)
    label_share: float = setting(0.0, "share of judgements that give the true label (the rest: correct/wrong)",
                                 flag="--label-share", ge=0, le=1)
    label_noise: float = setting(0.0, "share of judgements that are wrong", flag="--label-noise", ge=0, le=1)
    duplicate_share: float = setting(0.0, "share of events delivered twice", flag="--duplicate-share", ge=0, le=1)
    out_of_order_share: float = setting(0.0, "share of feedback that arrives before its prediction",
                                        flag="--out-of-order-share", ge=0, le=1)
    inline_share: float = setting(0.0, "share of feedback carrying the features itself (no join needed)", ge=0, le=1)
    rate: float = setting(100.0, "predictions per second of event time", gt=0)
    delay_mean: float = setting(30.0, "mean feedback delay, seconds of event time", flag="--delay-mean", ge=0)
    log_probs: bool = setting(True, "predictions carry the serving distribution")
    start_ts: float = setting(1_764_300_000.0, "event time of the first prediction, unix seconds")
    seed: int = setting(0, "seed of the simulated traffic and feedback", flag="--seed")


__all__ = ["DATASETS", "POLICIES", "ConfigError", "DataConfig", "SimConfig"]
