r"""The training objectives: per-example losses over a batch of logits.

With logits f (B, K) and p = softmax(f):

positive "the label is y" (the usual cross-entropy)::

    loss = -log p(y|x) = logsumexp_k f_k - f_y
    dloss/df = p - onehot(y)

negative "the label is not l" (complementary-label / negative learning)::

    loss = -log(1 - p(l|x)) = logsumexp_k f_k - logsumexp_{k != l} f_k
    dloss/df = p - q,   q = softmax(f with f_l := -inf)

Both are computed in log space: the masked logsumexp never forms 1 - p, so the
loss and its gradient stay finite for logits up to +-1e4 and any K >= 2. The
negative term is bounded below by 0 and its gradient vanishes as p(l|x) -> 0:
once the model avoids a wrong label it stops pushing. Negating the
cross-entropy instead (:data:`NEGATED`) has no lower bound: its gradient
``onehot(l) - p`` never vanishes, the logit of l is driven to -inf and the
weights grow without bound. That is the divergence this project exists to avoid.

Weighting. Each negative term gets weight ``negative_weight`` (default 1.0,
the same as a positive). Two effects pull on it. A negative carries less
information than a positive ("not l" removes one of K classes), and when the
deployed model judges its own predictions its mistakes pile up on the classes
it confuses, so the negatives are biased; both argue for a small weight such as
1 / (K - 1). But the bounded term is self-limiting: its gradient ``p - q``
vanishes once p(l|x) is small, so most negatives of a converging model push
almost nothing, and the informative ones (l still likely) need full weight to
matter. Measured on digits (64x10 linear, Adagrad lr 0.3, micro-batch 4,
held-out accuracy, mean of seeds 0-3, correct/wrong judgements only)::

    policy          events  w=1/(K-1)  w=1.0   positive-only
    random           5,000  0.913      0.917   0.905
    random          20,000  0.943      0.953   0.939
    epsilon-greedy   5,000  0.876      0.940   0.612
    epsilon-greedy  20,000  0.957      0.963   0.933

Weight 1.0 wins for both logging policies at both horizons, so it is the
default; ``streamlearn evaluate --objective all --seed S`` reproduces a column
entry per seed. (The micro-batch of 4 is the default because it learns more per
event for every objective; at 8 the random-policy margin over positive-only
shrinks to +0.007.)

The batch loss is the weighted sum of per-example losses divided by the batch
size (a mean that keeps the step size independent of the polarity mix).

:meth:`Objective.closed_form` gives the per-example loss and d(loss)/d(logits)
from the formulas above in numpy, without autograd: the linear model's
gradient is then one matrix product (tests check it against autograd).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the torch losses serve the MLP's autograd and the tests; they import torch when called
    import torch

from streamlearn.config.learning import OBJECTIVES as OBJECTIVES
from streamlearn.config.learning import ObjectiveConfig


class Objective(ObjectiveConfig):
    """An objective's settings (:class:`~streamlearn.config.ObjectiveConfig`) with its loss math."""

    @classmethod
    def of(cls, cfg: ObjectiveConfig) -> Objective:
        """The objective ``cfg`` (a config section) names."""
        return cfg if isinstance(cfg, Objective) else cls(cfg.name, cfg.negative_weight)

    def per_example(self, logits: torch.Tensor, labels: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        """Unweighted per-example loss (B,) for this objective."""
        if self.name == "negated":
            return negated_loss(logits, labels, positive)
        return mixed_loss(logits, labels, positive)

    def batch_loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        positive: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scalar loss to differentiate, per-example loss (B,) detached)."""
        import torch

        per = self.per_example(logits, labels, positive)
        w = torch.where(positive, 1.0, self.neg_weight).to(per.dtype)
        if weights is not None:
            w = w * weights
        return (per * w).sum() / max(1, per.shape[0]), per.detach()

    def weights(self, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(B,) weight of each example's term: polarity weight times the feedback's own weight."""
        return np.where(positive, np.float32(1.0), np.float32(self.neg_weight)) * weights

    def closed_form(
        self, logits: np.ndarray, labels: np.ndarray, positive: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Unweighted per-example loss (B,) and its gradient d(loss_i)/d(logits_i) (B, K), in log space."""
        b, k = logits.shape
        if k < 2:
            raise ValueError(f"need K >= 2 classes, got K = {k}: a single class has nothing to learn")
        rows = np.arange(b)
        top = logits.max(axis=1, keepdims=True)  # (B, 1)
        e = np.exp(logits - top)  # (B, K)
        lse = top[:, 0] + np.log(e.sum(axis=1))  # (B,)
        p = np.exp(logits - lse[:, None])  # (B, K) softmax
        picked = logits[rows, labels]  # (B,) f_y or f_l
        ce = lse - picked  # (B,) -log p(label|x)
        onehot = np.zeros_like(p)
        onehot[rows, labels] = 1.0
        if self.name == "negated":
            sign = np.where(positive, 1.0, -1.0).astype(p.dtype)
            return ce * sign, (p - onehot) * sign[:, None]
        neg = ~positive
        if not neg.any():
            return ce, p - onehot
        masked = logits[neg].copy()  # (N, K) negatives only, with f_l := -inf
        masked[np.arange(len(masked)), labels[neg]] = -np.inf
        top_rest = masked.max(axis=1, keepdims=True)
        lse_rest = top_rest[:, 0] + np.log(np.exp(masked - top_rest).sum(axis=1))  # (N,)
        per = ce.copy()
        per[neg] = lse[neg] - lse_rest
        target = onehot
        target[neg] = np.exp(masked - lse_rest[:, None])  # q = softmax over the other classes
        return per, p - target


def _check(logits: torch.Tensor, labels: torch.Tensor, positive: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, K), got shape {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(f"need K >= 2 classes, got K = {logits.shape[1]}: a single class has nothing to learn")
    if labels.shape != (logits.shape[0],) or positive.shape != (logits.shape[0],):
        raise ValueError("labels and positive must be (B,) like the logits' batch")


def mixed_loss(logits: torch.Tensor, labels: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """-log p(y|x) where positive, -log(1 - p(l|x)) where not; (B,) from (B, K) logits."""
    import torch

    _check(logits, labels, positive)
    lse_all = torch.logsumexp(logits, dim=1)  # (B,)
    picked = logits.gather(1, labels[:, None]).squeeze(1)  # (B,) f_y or f_l
    if bool(positive.all()):
        return lse_all - picked
    masked = logits.scatter(1, labels[:, None], float("-inf"))  # (B, K) with f_l = -inf
    lse_rest = torch.logsumexp(masked, dim=1)  # (B,)
    return torch.where(positive, lse_all - picked, lse_all - lse_rest)


def negated_loss(logits: torch.Tensor, labels: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """The divergent baseline: cross-entropy for positives, its negation for negatives.

    For a negative this is ``log p(l|x) = f_l - logsumexp f``: unbounded below,
    so minimising it drives the weights to infinity. Kept to show why not.
    """
    import torch

    _check(logits, labels, positive)
    ce = torch.logsumexp(logits, dim=1) - logits.gather(1, labels[:, None]).squeeze(1)
    return torch.where(positive, ce, -ce)
