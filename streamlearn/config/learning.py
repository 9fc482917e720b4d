"""Settings of what is learned and how: the model, the optimizer, the objective and the divergence guard."""

from __future__ import annotations

from dataclasses import dataclass

from streamlearn.config.declare import ConfigError, Section, setting

MODELS = ("linear", "mlp", "hashed")
OPTIMIZERS = ("sgd", "adagrad")
OBJECTIVES = ("mixed", "positive-only", "negated")
GUARDS = ("none", "clip", "lower-lr", "rollback")


@dataclass(frozen=True)
class ModelConfig(Section):
    key = "model"

    kind: str = setting("linear", "softmax model", flag="--model", choices=MODELS)
    n_features: int = setting(64, "dense input width (set from the top-level n_features)", ge=1)
    n_classes: int = setting(10, "classes (set from the top-level classes)", ge=2)
    hidden: int = setting(64, "mlp hidden units", flag="--hidden", ge=1)
    buckets: int = setting(1 << 18, "hashed: feature buckets (the hashing trick)", flag="--buckets", ge=1)
    seed: int = setting(0, "seed of the parameter initialisation (--seed also seeds the stream)", flag="--seed")


@dataclass(frozen=True)
class OptimConfig(Section):
    key = "optim"

    name: str = setting("adagrad", "optimizer", flag="--optimizer", choices=OPTIMIZERS)
    lr: float = setting(0.3, "step size; Adagrad divides it by the root of the summed squared gradients",
                        flag="--lr", gt=0)
    # small batches learn more per event (objective.py)
    batch_size: int = setting(4, "examples per micro-batch (one gradient)", flag="--batch-size", ge=1)


@dataclass(frozen=True)
class ObjectiveConfig(Section):
    """Which loss to apply to negatives, and how much they weigh (the math: :mod:`streamlearn.objective`)."""

    key = "objective"

    name: str = setting("mixed", "training objective", flag="--objective", choices=OBJECTIVES)
    negative_weight: float = setting(1.0, "weight of each negative term relative to a positive",
                                     flag="--negative-weight", ge=0)

    @property
    def neg_weight(self) -> float:
        """Weight of a negative term (0 for positive-only)."""
        return 0.0 if self.name == "positive-only" else self.negative_weight


@dataclass(frozen=True)
class DivergenceConfig(Section):
    key = "divergence"

    guard: str = setting("rollback", "divergence guard", flag="--guard", choices=GUARDS)
    warmup_updates: int = setting(100, "no loss-spike or norm-growth verdict before this many updates", ge=1)
    ewma_alpha: float = setting(0.05, "weight of the newest batch in the loss level and spread", gt=0, le=1)
    spike_factor: float = setting(10.0, "spread multiples above the level that make a spike", ge=0)
    spike_floor: float = setting(1.0, "absolute loss margin, so a near-zero spread can't trip it", ge=0)
    norm_growth_ratio: float = setting(1.3, "norm(t) / norm(t/2) above this is runaway growth", gt=1)
    max_weight_norm: float = setting(1e4, "hard ceiling on the weight norm", gt=0)
    recovery_updates: int = setting(2000, "updates without a signal before 'diverging' clears", ge=1)
    # a negative clip would climb the loss, 0 stop learning
    clip_norm: float = setting(1.0, "guard=clip: gradient norm bound while diverging", gt=0)
    lr_factor: float = setting(0.5, "guard=lower-lr: multiplier applied per divergence event", gt=0, lt=1)
    good_every: int = setting(100, "guard=rollback: updates between saves of the last good state", ge=1)
    window_examples: int = setting(32, "single process: examples whose mean loss is one observation", ge=1)


__all__ = [
    "GUARDS",
    "MODELS",
    "OBJECTIVES",
    "OPTIMIZERS",
    "ConfigError",
    "DivergenceConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimConfig",
]
