"""Gradients and predict-before-learn metrics for a micro-batch of examples.

:meth:`Learner.gradients` scores a batch with the current weights *before*
learning from it (progressive validation, as River does), then returns the
gradient; :meth:`Learner.apply` takes an optimizer step (the one SGD/Adagrad
of :class:`~streamlearn.ps.state.ModelState`).
:meth:`Learner.learn_batches` does both for micro-batches in order, each
seeing the steps before it: what a worker does to its replica for a group and
the single-process loop for each micro-batch (a dense linear model in one
compiled call, :mod:`streamlearn.linear_kernel`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from streamlearn.config.learning import ObjectiveConfig
from streamlearn.config.learning import OptimConfig as OptimConfig
from streamlearn.divergence import clip_scale
from streamlearn.events import Example
from streamlearn.model import LinearSoftmax, ModelConfig, SoftmaxModel, build_model
from streamlearn.objective import Objective
from streamlearn.ps.state import FlatState, Grad, ModelState, Rows, RowState

# micro-batches per KL(serving || current) sample: the metric is a smoothed gauge, and computing it
# on every micro-batch of 4 costs a fifth of the gradient step
KL_EVERY = 8
# a gradient norm above this is treated as not finite: a gradient entry near it squares to more than float32
# holds (3.4e38), so Adagrad's sums would turn inf and, in a worker's update (after - before), NaN
MAX_GRAD_NORM = 1e18
# the compiled loop's products are plain loops: past this many multiply-adds per micro-batch's logits
# (batch size x features x classes), numpy's BLAS products win (benchmarks/learn_speed.py)
COMPILED_MAX_MACS = 300_000


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
    inputs: tuple[np.ndarray, ...]
    labels: np.ndarray  # (B,) int64
    positive: np.ndarray  # (B,) bool
    weights: np.ndarray  # (B,) float32, the feedback's own weight
    probs: list[np.ndarray | None]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class Learner:
    """A model, its state (parameters, optimizer accumulators) and the objective: scores, then learns."""

    def __init__(self, model_cfg: ModelConfig, objective: ObjectiveConfig, optim: OptimConfig) -> None:
        self.model_cfg = model_cfg
        self.objective = Objective.of(objective)
        self.optim_cfg = optim
        self.model: SoftmaxModel = build_model(model_cfg)
        self.params = self.model.params  # the arrays the steps update in place
        self.state = ModelState(self.params, optim.name, optim.lr)
        self.scored = 0  # micro-batches scored: every KL_EVERY-th (the first included) samples the KL
        # a dense linear model learns a run of micro-batches in one compiled call, where that is faster than
        # numpy's per-call overhead plus its BLAS products (see linear_kernel)
        self.compiled = (isinstance(self.model, LinearSoftmax)
                         and optim.batch_size * model_cfg.n_features * model_cfg.n_classes <= COMPILED_MAX_MACS)

    def batch(self, examples: Sequence[Example]) -> Batch:
        return Batch(
            inputs=self.model.inputs([e.features for e in examples]),
            labels=np.array([e.label for e in examples], dtype=np.int64),
            positive=np.array([e.positive for e in examples], dtype=np.bool_),
            weights=np.array([e.weight for e in examples], dtype=np.float32),
            probs=[e.probs for e in examples],
        )

    def gradients(self, batch: Batch) -> tuple[list[Grad] | None, BatchStats]:
        """Score the batch with the current weights, then return d(loss)/d(params).

        Returns None for the gradient when the loss or the gradient is not
        finite: such a batch must never be applied. A model with a closed form
        (linear) gets its gradient from :meth:`Objective.closed_form` and one
        matrix product; the MLP through autograd.
        """
        if not self.model.closed_form:
            return self._autograd_gradients(batch)
        with np.errstate(all="ignore"):  # a non-finite batch is detected below, not warned about
            logits = self.model.logits(*batch.inputs)  # (B, K)
            per, dlogits = self.objective.closed_form(logits, batch.labels, batch.positive)
            w = self.objective.weights(batch.positive, batch.weights) / max(1, len(batch))  # (B,)
            stats = _stats(logits, batch, per, self._kl_rows(len(batch)))
            if not np.isfinite(per @ w):
                stats.skipped = 1
                return None, stats
            grads = self.model.param_grads(batch.inputs, dlogits * w[:, None])
        return _checked(grads, stats)

    def _autograd_gradients(self, batch: Batch) -> tuple[list[Grad] | None, BatchStats]:
        import torch  # the MLP's path only

        labels, positive = torch.from_numpy(batch.labels), torch.from_numpy(batch.positive)
        weights = torch.from_numpy(batch.weights)
        logits, per, loss, grads = self.model.autograd(
            batch.inputs, lambda f: self.objective.batch_loss(f, labels, positive, weights))
        stats = _stats(logits, batch, per, self._kl_rows(len(batch)))
        if not math.isfinite(loss):
            stats.skipped = 1
            return None, stats
        return _checked(grads, stats)

    def _kl_rows(self, n: int) -> range:
        """A micro-batch of ``n`` examples is scored: the rows that sample the KL (all of them, every
        KL_EVERY-th micro-batch; else none)."""
        due = self.scored % KL_EVERY == 0
        self.scored += 1
        return range(n if due else 0)

    def apply(self, grads: Sequence[Grad], scale: float = 1.0) -> None:
        self.state.step(grads, scale)

    def flat(self) -> FlatState:
        return self.state.flat()

    def row_state(self) -> RowState:
        return self.state.row_state(self.model.row_params())

    @property
    def lr(self) -> float:
        return self.state.lr

    def set_lr(self, lr: float) -> None:
        self.state.lr = lr

    def learn(self, examples: Sequence[Example]) -> BatchStats:
        return self.learn_batches([examples])[1]

    def learn_batches(self, batches: Sequence[Sequence[Example]], clip_norm: float | None = None,
                      loss_sample: int | None = None,
                      prepared: Sequence[Batch] | None = None) -> tuple[list[bool], BatchStats]:
        """Score each micro-batch, then learn from it, in order (each sees the steps before it): whether each
        was applied (its loss and gradient finite), and what they taught, summed (``grad_norm`` the last
        one's). ``clip_norm`` bounds each gradient's norm; ``loss_sample``: keep only the first so many
        per-example losses; ``prepared``: the batches already made by :meth:`batch`.

        A dense linear model runs them in one compiled call (:mod:`streamlearn.linear_kernel`); other models
        take :meth:`gradients` and :meth:`apply` per batch."""
        if self.compiled:
            return self._compiled_batches(batches, clip_norm, loss_sample)
        total, applied = BatchStats(), []
        for b in prepared if prepared is not None else [self.batch(b) for b in batches]:
            grads, stats = self.gradients(b)
            if loss_sample is not None:
                stats.losses = stats.losses[: max(0, loss_sample - len(total.losses))]
            total.add(stats)
            if grads is not None:
                self.apply(grads, clip_scale(stats.grad_norm, clip_norm))
            applied.append(grads is not None)
        return applied, total

    def warm_up(self) -> None:
        """Compile (or load from cache) the compiled path now rather than in the first step."""
        if self.compiled:
            self.learn_batches([])

    def _compiled_batches(self, batches: Sequence[Sequence[Example]], clip_norm: float | None,
                          loss_sample: int | None) -> tuple[list[bool], BatchStats]:
        from streamlearn.linear_kernel import linear_steps  # numba: imported by learning only (~0.6 s)

        examples = [e for b in batches for e in b]
        batch = self.batch(examples)  # (N, D) inputs, all micro-batches together
        starts = np.zeros(len(batches) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in batches], out=starts[1:])
        weight, bias = self.params
        state = self.state
        # SGD keeps no summed squares: empty arrays of the same rank stand in
        sums = state.sums if state.adagrad else [np.zeros((0,) * p.ndim, np.float32) for p in self.params]
        k = weight.shape[0]
        logits = np.empty((len(examples), k), dtype=np.float32)  # (N, K) before each batch's step
        per = np.empty(len(examples), dtype=np.float64)  # (N,) unweighted loss
        norms = np.empty(len(batches), dtype=np.float64)
        applied = np.empty(len(batches), dtype=np.bool_)
        linear_steps(batch.inputs[0], batch.labels, batch.positive, batch.weights, starts, weight, bias,
                     sums[0], sums[1], float(state.lr), float(state.eps), state.adagrad,
                     np.inf if clip_norm is None else float(clip_norm), MAX_GRAD_NORM,
                     self.objective.name == "negated", self.objective.neg_weight, logits, per, norms, applied)
        n_applied = int(np.count_nonzero(applied))
        state.steps += n_applied
        kl = [int(starts[j]) + r for j, b in enumerate(batches) for r in self._kl_rows(len(b))]  # group rows
        stats = _stats(logits, batch, per, kl, sample=loss_sample)
        stats.skipped = len(batches) - n_applied
        stats.grad_norm = float(norms[-1]) if len(batches) else 0.0
        return applied.tolist(), stats

    def predict_proba(self, features: Sequence[object]) -> np.ndarray:
        """(B, K) class probabilities."""
        f = self.model.logits(*self.model.inputs(features))  # type: ignore[arg-type]
        e = np.exp(f - f.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def _checked(grads: list[Grad], stats: BatchStats) -> tuple[list[Grad] | None, BatchStats]:
    norm = math.sqrt(sum(_sq(g) for g in grads))
    stats.grad_norm = norm
    if not norm <= MAX_GRAD_NORM:  # NaN and inf included
        stats.skipped = 1
        return None, stats
    return grads, stats


def _sq(g: Grad) -> float:
    a = (g.values if isinstance(g, Rows) else g).ravel().astype(np.float64)
    return float(np.dot(a, a))


def _stats(logits: np.ndarray, batch: Batch, per: np.ndarray, kl: Iterable[int],
           sample: int | None = None) -> BatchStats:
    """What the batch looked like to the model before learning: (B, K) logits, (B,) per-example loss;
    KL(serving || current) over the examples ``kl`` that carry the serving probabilities; the first
    ``sample`` per-example losses (all by default)."""
    pos = batch.positive
    hit = logits.argmax(axis=1) == batch.labels  # (B,)
    n_pos = int(np.count_nonzero(pos))
    n_pos_hit = int(np.count_nonzero(hit & pos))
    loss_pos = float(per @ pos) if n_pos else 0.0
    s = BatchStats(
        positive=n_pos,
        negative=len(pos) - n_pos,
        positive_correct=n_pos_hit,
        negative_avoided=len(pos) - n_pos - (int(np.count_nonzero(hit)) - n_pos_hit),
        loss_positive=loss_pos,
        loss_negative=float(per.sum(dtype=np.float64)) - loss_pos,
        losses=list(zip(pos[:sample].tolist(), per[:sample].tolist(), strict=True)),
    )
    rows = [i for i in kl if batch.probs[i] is not None]
    if rows:
        serving = np.stack([batch.probs[i] for i in rows])  # type: ignore[misc]  # (R, K)
        f = logits[rows]
        top = f.max(axis=1, keepdims=True)
        log_model = f - (top + np.log(np.exp(f - top).sum(axis=1, keepdims=True)))  # (R, K) log-softmax
        divergence = (serving * (np.log(np.maximum(serving, 1e-12)) - log_model)).sum()
        s.kl_sum, s.kl_count = float(divergence), len(rows)
    return s
