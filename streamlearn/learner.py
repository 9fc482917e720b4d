"""Gradients and predict-before-learn metrics for a micro-batch of examples.

:meth:`Learner.gradients` scores a batch with the current weights *before*
learning from it (progressive validation, as River does), then returns the
gradient. :meth:`Learner.apply` takes an optimizer step. A worker computes
gradients and a parameter server applies them; the single-process loop does
both, in :meth:`Learner.learn`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from streamlearn.events import Example
from streamlearn.model import ModelConfig, SoftmaxModel, build_model
from streamlearn.objective import Objective

OPTIMIZERS = ("sgd", "adagrad")


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adagrad"  # sgd | adagrad
    lr: float = 0.3  # step size; Adagrad divides it by the root of the summed squared gradients
    batch_size: int = 8  # examples per micro-batch (one gradient); small batches learn more per event

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer: unknown {self.name!r}, choose one of {', '.join(OPTIMIZERS)}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")


def build_optimizer(cfg: OptimConfig, params: Sequence[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr)
    return torch.optim.Adagrad(params, lr=cfg.lr)


@dataclass
class BatchStats:
    """What one batch taught and how the model did on it before learning."""

    positive: int = 0
    negative: int = 0
    positive_correct: int = 0  # argmax == label on positives
    negative_avoided: int = 0  # argmax != label on negatives
    loss_positive: float = 0.0  # sums of per-example loss
    loss_negative: float = 0.0
    kl_sum: float = 0.0  # KL(serving probs || current model), summed
    kl_count: int = 0
    grad_norm: float = 0.0
    skipped: int = 0  # batches not applied (non-finite loss or gradient)
    losses: list[tuple[bool, float]] = field(default_factory=list)  # (positive, loss) per example: histograms

    def add(self, other: BatchStats) -> None:
        for name in ("positive", "negative", "positive_correct", "negative_avoided", "loss_positive",
                     "loss_negative", "kl_sum", "kl_count", "skipped"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.grad_norm = other.grad_norm
        self.losses.extend(other.losses)

    @property
    def examples(self) -> int:
        return self.positive + self.negative

    @property
    def mean_loss(self) -> float:
        n = self.examples
        return (self.loss_positive + self.loss_negative) / n if n else float("nan")


@dataclass
class Batch:
    inputs: tuple[torch.Tensor, ...]
    labels: torch.Tensor  # (B,) long
    positive: torch.Tensor  # (B,) bool
    weights: torch.Tensor  # (B,) float
    probs: list[np.ndarray | None]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class Learner:
    def __init__(self, model_cfg: ModelConfig, objective: Objective, optim: OptimConfig) -> None:
        self.model_cfg = model_cfg
        self.objective = objective
        self.optim_cfg = optim
        self.model: SoftmaxModel = build_model(model_cfg)
        self.optimizer = build_optimizer(optim, list(self.model.parameters()))

    def batch(self, examples: Sequence[Example]) -> Batch:
        return Batch(
            inputs=self.model.inputs([e.features for e in examples]),
            labels=torch.tensor([e.label for e in examples], dtype=torch.long),
            positive=torch.tensor([e.positive for e in examples], dtype=torch.bool),
            weights=torch.tensor([e.weight for e in examples], dtype=torch.float32),
            probs=[e.probs for e in examples],
        )

    def gradients(self, batch: Batch) -> tuple[list[torch.Tensor] | None, BatchStats]:
        """Score the batch with the current weights, then return d(loss)/d(params).

        Returns None for the gradient when the loss or the gradient is not
        finite: such a batch must never be applied.
        """
        self.model.zero_grad(set_to_none=True)
        logits = self.model(*batch.inputs)  # (B, K)
        loss, per = self.objective.batch_loss(logits, batch.labels, batch.positive, batch.weights)
        stats = _stats(logits.detach(), batch, per)
        if not torch.isfinite(loss):
            stats.skipped = 1
            return None, stats
        loss.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.model.parameters()]
        norm = math.sqrt(sum(float(_sq(g)) for g in grads))
        stats.grad_norm = norm
        if not math.isfinite(norm):
            stats.skipped = 1
            return None, stats
        return grads, stats

    def apply(self, grads: Sequence[torch.Tensor], scale: float = 1.0) -> None:
        for p, g in zip(self.model.parameters(), grads, strict=True):
            p.grad = g * scale if scale != 1.0 else g
        self.optimizer.step()

    def learn(self, examples: Sequence[Example]) -> BatchStats:
        grads, stats = self.gradients(self.batch(examples))
        if grads is not None:
            self.apply(grads)
        return stats

    @torch.no_grad()
    def predict_proba(self, features: Sequence[object]) -> np.ndarray:
        logits = self.model(*self.model.inputs(features))  # type: ignore[arg-type]
        return torch.softmax(logits, dim=1).numpy()


def _sq(g: torch.Tensor) -> torch.Tensor:
    if g.is_sparse:
        g = g.coalesce().values()
    return (g.double() ** 2).sum()


def _stats(logits: torch.Tensor, batch: Batch, per: torch.Tensor) -> BatchStats:
    pos = batch.positive
    hit = logits.argmax(dim=1) == batch.labels  # (B,)
    s = BatchStats(
        positive=int(pos.sum()),
        negative=int((~pos).sum()),
        positive_correct=int((hit & pos).sum()),
        negative_avoided=int((~hit & ~pos).sum()),
        loss_positive=float(per[pos].sum()),
        loss_negative=float(per[~pos].sum()),
        losses=list(zip(pos.tolist(), per.tolist(), strict=True)),
    )
    logged = [(i, p) for i, p in enumerate(batch.probs) if p is not None]
    if logged:
        rows = [i for i, _ in logged]
        serving = torch.from_numpy(np.stack([p for _, p in logged])).to(logits.dtype)  # (R, K)
        log_model = torch.log_softmax(logits[rows], dim=1)
        log_serving = torch.log(serving.clamp_min(1e-12))
        kl = (serving * (log_serving - log_model)).sum(dim=1)
        s.kl_sum, s.kl_count = float(kl.sum()), len(rows)
    return s
