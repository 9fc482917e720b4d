"""Gradients and predict-before-learn metrics for a micro-batch of examples.

:meth:`Learner.gradients` scores a batch with the current weights *before*
learning from it (progressive validation, as River does), then returns the
gradient; :meth:`Learner.apply` takes an optimizer step.
:meth:`Learner.learn_batches` does both for micro-batches in order, each
seeing the steps before it: what a worker does to its replica for a group and
the single-process loop for each micro-batch (a dense linear model in one
compiled call, :mod:`streamlearn.linear_kernel`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from streamlearn.config.learning import OPTIMIZERS as OPTIMIZERS
from streamlearn.config.learning import ObjectiveConfig
from streamlearn.config.learning import OptimConfig as OptimConfig
from streamlearn.divergence import clip_scale
from streamlearn.events import Example
from streamlearn.model import LinearSoftmax, ModelConfig, SoftmaxModel, build_model, sum_rows
from streamlearn.objective import Objective

# micro-batches per KL(serving || current) sample: the metric is a smoothed gauge, and computing it
# on every micro-batch of 4 cost a fifth of the gradient step (~10 of ~55 us)
KL_EVERY = 8
# a gradient norm above this is treated as not finite: a gradient entry near it squares to more than float32
# holds (3.4e38), so Adagrad's sums would turn inf and, in a worker's update (after - before), NaN
MAX_GRAD_NORM = 1e18
# the compiled loop's products are plain loops: past this many multiply-adds per micro-batch's logits
# (batch size x features x classes), numpy's BLAS products win (measured in streamlearn/linear_kernel.py)
COMPILED_MAX_MACS = 300_000


def build_optimizer(cfg: OptimConfig, params: Sequence[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr)
    return torch.optim.Adagrad(params, lr=cfg.lr)


def step(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
         scale: float = 1.0) -> None:
    """One optimizer step with ``grads * scale``.

    Dense or sparse (row) gradients on a plain SGD or Adagrad (the options
    :func:`build_optimizer` sets) take the same arithmetic as torch's step in numpy, in place on the
    tensors' memory and on the optimizer's own state (so ``state_dict`` and
    checkpoints are unchanged): on the small tensors of a streaming step,
    torch's per-call overhead is most of the cost. Anything else goes through
    ``optimizer.step()``.
    """
    if not _numpy_step(optimizer, params, grads, scale):
        for p, g in zip(params, grads, strict=True):
            p.grad = g * scale if scale != 1.0 else g
        optimizer.step()


def plain(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer is plain SGD or Adagrad (what :func:`build_optimizer` sets), whose arithmetic
    :func:`step` and :mod:`streamlearn.linear_kernel` reproduce."""
    if len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    if isinstance(optimizer, torch.optim.SGD):
        return not (group["momentum"] or group["weight_decay"] or group["maximize"])
    return isinstance(optimizer, torch.optim.Adagrad) and not (group["weight_decay"] or group["lr_decay"]
                                                               or group["maximize"])


def _numpy_step(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                scale: float) -> bool:
    if not plain(optimizer) or any(g.dtype != torch.float32 for g in grads):
        return False
    group = optimizer.param_groups[0]
    lr = float(group["lr"])
    if isinstance(optimizer, torch.optim.SGD):
        for p, g in zip(params, grads, strict=True):
            rows, grad = _dense_rows(g)
            p.detach().numpy()[rows] -= np.float32(lr * scale) * grad
        return True
    eps = np.float32(group["eps"])
    for p, g in zip(params, grads, strict=True):
        state = optimizer.state[p]
        rows, grad = _dense_rows(g)
        if scale != 1.0:
            grad = grad * np.float32(scale)
        state["step"].numpy()[...] += 1
        total = state["sum"].numpy()
        total[rows] += grad * grad
        p.detach().numpy()[rows] -= np.float32(lr) * grad / (np.sqrt(total[rows]) + eps)
    return True


class FlatState:
    """A model's weights and its optimizer's accumulators as one (R, P) float32 array, over numpy views.

    Row 0 is every parameter flattened and concatenated (in ``params`` order);
    Adagrad adds row 1, its summed squared gradients (SGD keeps no state).
    This is the unit a dense model's replicas and servers exchange: a worker
    pushes the change its local steps made (an update, not gradients) and pulls
    the servers' state. Updates are float64: the difference of two float32
    states is exact there, and adding it to float32 rounds once, so a server
    that held the state an update started from ends on the worker's state to
    the bit (one worker stays exactly the single-process loop). Views go stale
    when the optimizer loads a state dict: build one per use.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> None:
        self.params = list(params)
        self.optimizer = optimizer
        self.rows = [[p.detach().numpy().reshape(-1) for p in self.params]]
        if isinstance(optimizer, torch.optim.Adagrad):
            self.rows.append([optimizer.state[p]["sum"].numpy().reshape(-1) for p in self.params])

    def read(self, dtype: type = np.float32) -> np.ndarray:
        return np.stack([np.concatenate(row, dtype=dtype) for row in self.rows])

    def write(self, flat: np.ndarray) -> None:
        for _, view, part in self._parts(flat):
            np.copyto(view, part)

    def add(self, delta: np.ndarray, scale: float = 1.0, steps: int = 0) -> None:
        """Add ``delta``: its weights row times ``scale``, its accumulator row times ``scale**2`` (what scaling
        each gradient by ``scale`` does to summed squares); count ``steps`` optimizer steps."""
        for r, view, part in self._parts(delta):
            view += part if scale == 1.0 else part * np.float32(scale ** (r + 1))
        if steps and len(self.rows) > 1:
            for p in self.params:
                self.optimizer.state[p]["step"] += steps

    def _parts(self, flat: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(row, view, the slice of ``flat`` that belongs in it)."""
        width = sum(v.size for v in self.rows[0])
        if flat.shape != (len(self.rows), width):
            raise ValueError(f"a flat state of shape {flat.shape} does not fit {len(self.rows)} x {width}")
        for r, row in enumerate(self.rows):
            at = 0
            for view in row:
                yield r, view, flat[r, at : at + view.size]
                at += view.size


class RowState:
    """A sparse model's weights and accumulators on some rows, as one (A, W) array (float32 unless asked).

    The row parameters (the hashed table, :meth:`SoftmaxModel.row_params`)
    give the rows asked for, the others all of themselves: row a of the array
    is ``[each row asked for, the row parameters' side by side; the other
    parameters, flattened]``, a = 0 the weights and, for Adagrad, a = 1 the
    summed squared gradients. It is the sparse counterpart of
    :class:`FlatState`: a worker pushes the change its steps made to the rows
    they touched, and a server replies with the same rows. Rows are sorted
    and unique; all row parameters have the same row count.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                 row_params: Collection[int]) -> None:
        self.params = [p for i, p in enumerate(params) if i in row_params]
        self.dense = FlatState(optimizer, [p for i, p in enumerate(params) if i not in row_params])
        self.optimizer = optimizer
        self.table = [[p.detach().numpy().reshape(p.shape[0], -1) for p in self.params]]  # [a][param] (N, C)
        if isinstance(optimizer, torch.optim.Adagrad):
            self.table.append([optimizer.state[p]["sum"].numpy().reshape(p.shape[0], -1) for p in self.params])
        self.cols = sum(v.shape[1] for v in self.table[0])  # columns of one row, all row parameters

    def width(self, rows: int) -> int:
        """Columns of the state of ``rows`` rows."""
        return rows * self.cols + sum(v.size for v in self.dense.rows[0])

    def read(self, rows: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        dense = self.dense.read(dtype)
        return np.stack([np.concatenate([np.concatenate([v[rows] for v in views], axis=1, dtype=dtype).reshape(-1),
                                         d]) for views, d in zip(self.table, dense, strict=True)])

    def write(self, rows: np.ndarray, state: np.ndarray) -> None:
        for _, view, block in self._parts(rows, state):
            view[rows] = block
        self.dense.write(state[:, len(rows) * self.cols :])

    def add(self, rows: np.ndarray, delta: np.ndarray, scale: float = 1.0, steps: int = 0) -> None:
        """As :meth:`FlatState.add`, on ``rows`` of the row parameters and all of the others."""
        for a, view, block in self._parts(rows, delta):
            view[rows] += block if scale == 1.0 else block * np.float32(scale ** (a + 1))
        self.dense.add(delta[:, len(rows) * self.cols :], scale, steps)
        if steps and len(self.table) > 1:
            for p in self.params:
                self.optimizer.state[p]["step"] += steps

    def _parts(self, rows: np.ndarray, state: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(a, view, the (R, C) block of ``state`` for its rows)."""
        if state.shape != (len(self.table), self.width(len(rows))):
            raise ValueError(f"a row state of shape {state.shape} does not fit {len(self.table)} x "
                             f"{self.width(len(rows))} ({len(rows)} rows)")
        for a, views in enumerate(self.table):
            block = state[a, : len(rows) * self.cols].reshape(len(rows), self.cols)
            at = 0
            for view in views:
                yield a, view, block[:, at : at + view.shape[1]]
                at += view.shape[1]


def _dense_rows(g: torch.Tensor) -> tuple[Any, np.ndarray]:
    """(rows, values) of a gradient: every row of a dense one (``...``), the touched rows of a sparse one
    with repeated rows summed (what ``coalesce`` does)."""
    if not g.is_sparse:
        return ..., g.numpy()
    idx, vals = g._indices()[0].numpy(), g._values().numpy()
    return (idx, vals) if g.is_coalesced() else sum_rows(idx, vals)


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
    labels: np.ndarray  # (B,) int64
    positive: np.ndarray  # (B,) bool
    weights: np.ndarray  # (B,) float32, the feedback's own weight
    probs: list[np.ndarray | None]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class Learner:
    def __init__(self, model_cfg: ModelConfig, objective: ObjectiveConfig, optim: OptimConfig) -> None:
        self.model_cfg = model_cfg
        self.objective = Objective.of(objective)
        self.optim_cfg = optim
        self.model: SoftmaxModel = build_model(model_cfg)
        self.params = list(self.model.parameters())  # fixed objects (updates are in place); listing them costs ~7 us
        self.optimizer = build_optimizer(optim, self.params)
        self.scored = 0  # micro-batches scored: every KL_EVERY-th (the first included) samples the KL
        # a dense linear model on plain SGD / Adagrad learns a run of micro-batches in one compiled call, where
        # that is faster than numpy's per-call overhead plus its BLAS products (see linear_kernel)
        self.compiled = (isinstance(self.model, LinearSoftmax) and plain(self.optimizer) and
                         optim.batch_size * model_cfg.n_features * model_cfg.n_classes <= COMPILED_MAX_MACS)

    def batch(self, examples: Sequence[Example]) -> Batch:
        return Batch(
            inputs=self.model.inputs([e.features for e in examples]),
            labels=np.array([e.label for e in examples], dtype=np.int64),
            positive=np.array([e.positive for e in examples], dtype=np.bool_),
            weights=np.array([e.weight for e in examples], dtype=np.float32),
            probs=[e.probs for e in examples],
        )

    def gradients(self, batch: Batch) -> tuple[list[torch.Tensor] | None, BatchStats]:
        """Score the batch with the current weights, then return d(loss)/d(params).

        Returns None for the gradient when the loss or the gradient is not
        finite: such a batch must never be applied. A model with a closed form
        (linear) gets its gradient from :meth:`Objective.closed_form` and one
        matrix product; the others through autograd.
        """
        if self.model.closed_form:
            return self._closed_form_gradients(batch)
        self.model.zero_grad(set_to_none=True)
        logits = self.model(*batch.inputs)  # (B, K)
        labels, positive = torch.from_numpy(batch.labels), torch.from_numpy(batch.positive)
        loss, per = self.objective.batch_loss(logits, labels, positive, torch.from_numpy(batch.weights))
        stats = _stats(logits.detach().numpy(), batch, per.numpy(), self._kl_rows(len(batch)))
        if not torch.isfinite(loss):
            stats.skipped = 1
            return None, stats
        loss.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.model.parameters()]
        return _checked(grads, stats)

    def _closed_form_gradients(self, batch: Batch) -> tuple[list[torch.Tensor] | None, BatchStats]:
        inputs = tuple(t.numpy() for t in batch.inputs)
        with np.errstate(all="ignore"):  # a non-finite batch is detected below, not warned about
            logits = self.model.logits(*inputs)  # type: ignore[operator]  # (B, K)
            per, dlogits = self.objective.closed_form(logits, batch.labels, batch.positive)
            w = self.objective.weights(batch.positive, batch.weights) / max(1, len(batch))  # (B,)
            stats = _stats(logits, batch, per, self._kl_rows(len(batch)))
            if not np.isfinite(per @ w):
                stats.skipped = 1
                return None, stats
            grads = self.model.param_grads(inputs, dlogits * w[:, None])  # type: ignore[operator]
        return _checked(grads, stats)

    def _kl_rows(self, n: int) -> range:
        """A micro-batch of ``n`` examples is scored: the rows that sample the KL (all of them, every
        KL_EVERY-th micro-batch; else none)."""
        due = self.scored % KL_EVERY == 0
        self.scored += 1
        return range(n if due else 0)

    def apply(self, grads: Sequence[torch.Tensor], scale: float = 1.0) -> None:
        step(self.optimizer, self.params, grads, scale)

    def flat(self) -> FlatState:
        return FlatState(self.optimizer, self.params)

    def row_state(self) -> RowState:
        return RowState(self.optimizer, self.params, self.model.row_params())

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def learn(self, examples: Sequence[Example]) -> BatchStats:
        return self.learn_batches([examples])[1]

    def learn_batches(self, batches: Sequence[Sequence[Example]], clip_norm: float | None = None,
                      loss_sample: int | None = None,
                      prepared: Sequence[Batch] | None = None) -> tuple[list[bool], BatchStats]:
        """Score each micro-batch, then learn from it, in order (each sees the steps before it): whether each
        was applied (its loss and gradient finite), and what they taught, summed (``grad_norm`` the last
        one's). ``clip_norm`` bounds each gradient's norm; ``loss_sample``: keep only the first so many
        per-example losses; ``prepared``: the batches already made by :meth:`batch`.

        A dense linear model on plain SGD or Adagrad runs them in one compiled call
        (:mod:`streamlearn.linear_kernel`); other models take :meth:`gradients` and :meth:`apply` per batch."""
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
        layer: torch.nn.Linear = self.model.linear  # type: ignore[assignment]
        adagrad = isinstance(self.optimizer, torch.optim.Adagrad)
        # SGD keeps no summed squares: empty arrays of the same rank stand in
        state = [self.optimizer.state[p]["sum"].numpy() if adagrad else np.zeros((0,) * p.dim(), np.float32)
                 for p in self.params]
        group = self.optimizer.param_groups[0]
        k = layer.weight.shape[0]
        logits = np.empty((len(examples), k), dtype=np.float32)  # (N, K) before each batch's step
        per = np.empty(len(examples), dtype=np.float64)  # (N,) unweighted loss
        norms = np.empty(len(batches), dtype=np.float64)
        applied = np.empty(len(batches), dtype=np.bool_)
        linear_steps(batch.inputs[0].numpy(), batch.labels, batch.positive, batch.weights, starts,
                     layer.weight.detach().numpy(), layer.bias.detach().numpy(), state[0], state[1],
                     float(group["lr"]), float(group.get("eps", 0.0)), adagrad,
                     np.inf if clip_norm is None else float(clip_norm), MAX_GRAD_NORM,
                     self.objective.name == "negated", self.objective.neg_weight, logits, per, norms, applied)
        n_applied = int(np.count_nonzero(applied))
        if adagrad and n_applied:
            for p in self.params:
                self.optimizer.state[p]["step"] += n_applied
        kl = [int(starts[j]) + r for j, b in enumerate(batches) for r in self._kl_rows(len(b))]  # group rows
        stats = _stats(logits, batch, per, kl, sample=loss_sample)
        stats.skipped = len(batches) - n_applied
        stats.grad_norm = float(norms[-1]) if len(batches) else 0.0
        return applied.tolist(), stats

    @torch.no_grad()
    def predict_proba(self, features: Sequence[object]) -> np.ndarray:
        logits = self.model(*self.model.inputs(features))  # type: ignore[arg-type]
        return torch.softmax(logits, dim=1).numpy()


def _checked(grads: list[torch.Tensor], stats: BatchStats) -> tuple[list[torch.Tensor] | None, BatchStats]:
    norm = math.sqrt(sum(float(_sq(g)) for g in grads))
    stats.grad_norm = norm
    if not norm <= MAX_GRAD_NORM:  # NaN and inf included
        stats.skipped = 1
        return None, stats
    return grads, stats


def _sq(g: torch.Tensor) -> float:
    a = _dense_rows(g.detach())[1].ravel().astype(np.float64)
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
