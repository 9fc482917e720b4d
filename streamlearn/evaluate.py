"""Train on the simulated stream, single process, and score the result.

This is ``streamlearn evaluate``: the same decode -> join -> learn path as a
job, on the embedded stream, so objectives can be compared side by side on
identical settings.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from streamlearn.divergence import DivergenceConfig
from streamlearn.events import Schema
from streamlearn.ingest import Ingest
from streamlearn.join import JoinConfig
from streamlearn.learner import Learner, OptimConfig
from streamlearn.model import ModelConfig
from streamlearn.objective import Objective
from streamlearn.simulate import DataConfig, Dataset, SimConfig, Simulator
from streamlearn.source import MemorySource
from streamlearn.trainer import Trainer


@dataclass(frozen=True)
class EvalConfig:
    data: DataConfig = field(default_factory=DataConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    objective: Objective = field(default_factory=Objective)
    join: JoinConfig = field(default_factory=JoinConfig)
    divergence: DivergenceConfig = field(default_factory=lambda: DivergenceConfig(guard="none"))


def schema_for(sim: Simulator) -> Schema:
    return Schema.from_spec(sim.data.n_classes, sim.data.n_features)


def model_config_for(cfg: EvalConfig, sim: Simulator) -> ModelConfig:
    return replace(cfg.model, n_features=sim.data.n_features, n_classes=sim.data.n_classes)


def heldout_scores(learner: Learner, x: np.ndarray, y: np.ndarray, features: list[Any]) -> dict[str, float]:
    probs = learner.predict_proba(features)  # (N, K)
    acc = float((probs.argmax(axis=1) == y).mean())
    nll = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())
    return {"heldout_accuracy": round(acc, 4), "heldout_log_loss": round(nll, 4)}


def evaluate(cfg: EvalConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one objective over the simulated stream; returns the JSON summary."""
    learner_box: list[Learner] = []

    def live_scorer(x: np.ndarray) -> np.ndarray:
        return learner_box[0].predict_proba(sim.data.features(x))

    sim = Simulator(cfg.sim, cfg.data, scorer=live_scorer if cfg.sim.policy == "epsilon-greedy" else None)
    learner = Learner(model_config_for(cfg, sim), cfg.objective, cfg.optim)
    learner_box.append(learner)
    trainer = Trainer(learner, cfg.divergence)
    ingest = Ingest(schema_for(sim), cfg.join)
    source = MemorySource(sim.events(block=cfg.optim.batch_size))
    start = time.perf_counter()
    last_report = start
    while not source.exhausted:
        trainer.feed(ingest.process(source.next_batch(cfg.optim.batch_size)).examples)
        if progress and time.perf_counter() - last_report > 2.0:
            last_report = time.perf_counter()
            progress(f"{cfg.objective.name}: {trainer.progress.stats.examples} examples, "
                     f"progressive accuracy {trainer.progress.progressive_accuracy}")
    trainer.flush()
    seconds = time.perf_counter() - start
    x, y = sim.data.heldout()
    p, s = trainer.progress, trainer.progress.stats
    norm = learner.state.norm()
    finite = math.isfinite(norm) and all(bool(np.isfinite(q).all()) for q in learner.params)
    diverged = not finite or sum(p.divergence.values()) > 0
    joins = ingest.join_counts()
    out: dict[str, Any] = {
        "objective": cfg.objective.name,
        "negative_weight": round(cfg.objective.neg_weight, 4),
        "dataset": cfg.data.dataset,
        "policy": cfg.sim.policy,
        "events": cfg.sim.events,
        "examples": s.examples,
        "examples_positive": s.positive,
        "examples_negative": s.negative,
        "duplicates": joins["duplicate"],
        "expired": joins["expired"] + joins["evicted"],
        **heldout_scores(learner, x, y, sim.data.features(x)),
        "progressive_accuracy": _round(p.progressive_accuracy),
        "negative_avoidance": _round(p.negative_avoidance),
        "final_loss": _round(trainer.guard.detector.level),
        "weight_norm": round(norm, 3) if math.isfinite(norm) else None,
        "divergence_events": dict(p.divergence),
        "diverged": diverged,
        "first_divergence_update": trainer.guard.detector.first_event,
        "rollbacks": trainer.guard.rollbacks,
        "updates": p.updates,
        "seconds": round(seconds, 3),
        "events_per_second": round(cfg.sim.events / seconds, 1) if seconds > 0 else None,
    }
    return out


def _round(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(v, 4)


def heldout_summary(cfg: Any, weights: Sequence[np.ndarray]) -> dict[str, float]:
    """The held-out scores of a job's final ``weights`` on its simulator's held-out set (``cfg``: the job's
    config: model, objective, optim, data)."""
    learner = Learner(cfg.model, cfg.objective, cfg.optim)
    for p, v in zip(learner.params, weights, strict=True):
        np.copyto(p, v)
    data = Dataset(cfg.data)
    x, y = data.heldout()
    return heldout_scores(learner, x, y, data.features(x))
