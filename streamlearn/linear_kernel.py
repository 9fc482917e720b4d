"""The dense linear model's micro-batch loop, compiled: score, gradient, optimizer step, batch after batch.

A worker's group is tens of micro-batches of 4 examples. Each step depends on
the one before (the i-th gradient sees the weights after i - 1 steps), so the
group cannot be one matrix product; in numpy every micro-batch costs some 30
calls, ~40 us, for ~5,000 multiply-adds (digits: 64 features, 10 classes).
:func:`linear_steps` runs the same arithmetic for the whole group in one
compiled call (numba). Its products are plain loops, so it wins where
numpy's per-call overhead dominates and loses where BLAS does the work:
so :class:`~streamlearn.learner.Learner` uses it up to
``COMPILED_MAX_MACS`` multiply-adds per micro-batch (B x D x K), where
``benchmarks/learn_speed.py`` finds the two about even.

Per micro-batch of n examples, with logits f = W x + b (the weights before
this micro-batch's step) and p = softmax(f)::

    positive (x, y):      loss = lse(f) - f_y                 dloss/df = p - onehot(y)
    negative (x, not l):  loss = lse(f) - lse_{k != l}(f)     dloss/df = p - q,  q = softmax(f, f_l := -inf)
    negated (baseline):   the positive's loss and gradient, times -1 for a negative

    w_i   = (1 if positive else negative_weight) x feedback weight / n
    g_W   = sum_i w_i dloss_i/df (x) x_i,    g_b = sum_i w_i dloss_i/df

as :meth:`streamlearn.objective.Objective.closed_form` computes them, in log
space both (the logits and g_W summed in float32, as numpy's products are;
the softmax sums and g_b in float64). A micro-batch whose
weighted loss is not finite, or whose gradient norm is not <= ``max_norm``,
is not applied. Otherwise the gradient is scaled by ``clip / norm`` when its
norm is above ``clip``, and the step is the float32 arithmetic of
:meth:`streamlearn.ps.state.ModelState.step`::

    SGD:      W -= lr g
    Adagrad:  S += g * g;   W -= lr g / (sqrt(S) + eps)
"""

from __future__ import annotations

import numpy as np
from numba import njit


# compiled once per machine (~2 s), then loaded from numba's cache; reassociation lets the sums vectorize (no
# finite-math flags: the NaN and overflow checks need them)
@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def linear_steps(x: np.ndarray, labels: np.ndarray, positive: np.ndarray, weights: np.ndarray,
                 starts: np.ndarray, w: np.ndarray, b: np.ndarray, sw: np.ndarray, sb: np.ndarray,
                 lr: float, eps: float, adagrad: bool, clip: float, max_norm: float, negated: bool,
                 negative_weight: float, logits: np.ndarray, per: np.ndarray, norms: np.ndarray,
                 applied: np.ndarray) -> None:  # pragma: no cover - compiled; tested through Learner
    """Learn from micro-batches ``starts[j]:starts[j + 1]`` of ``x`` (N, D) in order, in place on ``w`` (K, D),
    ``b`` (K,) and, with ``adagrad``, their summed squared gradients ``sw``, ``sb``. Writes each example's
    logits before its step (N, K) and unweighted loss (N,), each micro-batch's gradient norm (0 where its
    loss was not finite) and whether it was applied."""
    k_classes, dims = w.shape
    lr32, eps32 = np.float32(lr), np.float32(eps)
    gw = np.empty((k_classes, dims), np.float32)
    gb = np.empty(k_classes, np.float32)
    longest = 0
    for j in range(len(starts) - 1):
        longest = max(longest, starts[j + 1] - starts[j])
    dl = np.empty((longest, k_classes), np.float64)  # (n, K) each example's weighted dloss/dlogits
    for j in range(len(starts) - 1):
        lo, hi = starts[j], starts[j + 1]
        total = 0.0
        for i in range(lo, hi):
            r = i - lo
            top = -np.inf
            for k in range(k_classes):
                f = b[k]
                for d in range(dims):
                    f += w[k, d] * x[i, d]
                logits[i, k] = f
                top = max(top, np.float64(f))
            y = labels[i]
            s = 0.0
            for k in range(k_classes):
                s += np.exp(np.float64(logits[i, k]) - top)
            lse = top + np.log(s)
            if positive[i] or negated:
                loss = lse - np.float64(logits[i, y])
                for k in range(k_classes):
                    dl[r, k] = np.exp(np.float64(logits[i, k]) - lse)
                dl[r, y] -= 1.0
                if negated and not positive[i]:
                    loss = -loss
                    for k in range(k_classes):
                        dl[r, k] = -dl[r, k]
            else:
                top_rest = -np.inf
                for k in range(k_classes):
                    if k != y:
                        top_rest = max(top_rest, np.float64(logits[i, k]))
                s_rest = 0.0
                for k in range(k_classes):
                    if k != y:
                        s_rest += np.exp(np.float64(logits[i, k]) - top_rest)
                lse_rest = top_rest + np.log(s_rest)
                loss = lse - lse_rest
                for k in range(k_classes):
                    q = 0.0 if k == y else np.exp(np.float64(logits[i, k]) - lse_rest)
                    dl[r, k] = np.exp(np.float64(logits[i, k]) - lse) - q
            per[i] = loss
            wi = (1.0 if positive[i] else negative_weight) * np.float64(weights[i]) / (hi - lo)
            total += loss * wi
            for k in range(k_classes):
                dl[r, k] *= wi
        norms[j] = 0.0
        applied[j] = False
        if not np.isfinite(total):
            continue
        sq = 0.0
        for k in range(k_classes):  # the gradient, a row at a time
            acc = 0.0
            gw[k, :] = 0.0
            for r in range(hi - lo):
                c = np.float32(dl[r, k])
                acc += np.float64(c)
                for d in range(dims):
                    gw[k, d] += c * x[lo + r, d]
            gb[k] = np.float32(acc)
            sq += np.float64(gb[k]) ** 2
            for d in range(dims):
                sq += np.float64(gw[k, d]) ** 2
        norm = np.sqrt(sq)
        norms[j] = norm
        if not norm <= max_norm:  # NaN and inf included
            continue
        applied[j] = True
        scale = clip / norm if norm > clip else 1.0
        if scale != 1.0 and adagrad:
            gw *= np.float32(scale)
            gb *= np.float32(scale)
        if adagrad:
            sb += gb * gb
            b -= lr32 * gb / (np.sqrt(sb) + eps32)
            for k in range(k_classes):
                for d in range(dims):
                    g32 = gw[k, d]
                    sw[k, d] = sw[k, d] + g32 * g32
                    w[k, d] = w[k, d] - lr32 * g32 / (np.sqrt(sw[k, d]) + eps32)
        else:
            step32 = np.float32(lr * scale)
            b -= step32 * gb
            w -= step32 * gw
