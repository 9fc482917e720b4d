"""Divergence detection and the guards that act on it.

Three signals, each counted by kind:

* ``non_finite``: a loss or gradient that is NaN or infinite. Such a batch is
  never applied (the learner skips it); the detector only counts it.
* ``loss_spike``: a batch loss far above its recent level. The level is an
  EWMA of the loss and the spread an EWMA of the absolute deviation, so single
  noisy batches don't trip it: spike when ``loss > mean + spike_factor * spread
  + spike_floor`` after ``warmup_updates``.
* ``norm_growth``: the weight norm keeps growing without bound while the fit
  does not improve. A converging model's norm grows slower and slower (with
  Adagrad on digits: about x1.15 each time the number of updates doubles);
  runaway growth doubles it like a power of time (negated cross-entropy: x1.4
  with Adagrad, x2 with SGD). The detector compares the norm now with the norm
  at half the updates, so it is scale free, and trips above
  ``norm_growth_ratio``; ``max_weight_norm`` is a hard ceiling besides. The
  norm alone cannot tell a healthy model that learns fast from a runaway one
  (plain SGD at lr 0.3 on digits grows x1.5-1.7 per doubling while it learns,
  Adagrad at lr 0.03 x1.2-1.4), so growth counts only when the mean
  -log p(y|x) over the positive examples since half the updates is no lower
  than over the updates before: a learning model's falls (2.3 -> 0.4 over
  SGD's first 2,000 updates), a runaway one's rises (negated: 70 -> 500).
  Without positives on either side the norm decides alone.

The model is *diverging* while a signal fired within the last
``recovery_updates`` updates. The guard then acts once per event: ``clip``
bounds the gradient norm, ``lower-lr`` multiplies the learning rate by
``lr_factor``, ``rollback`` restores the last state saved while healthy
(:class:`GuardPolicy` decides, for one process and for a job alike).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from streamlearn.config.learning import GUARDS as GUARDS
from streamlearn.config.learning import DivergenceConfig as DivergenceConfig
from streamlearn.ps.state import ModelState

KINDS = ("non_finite", "loss_spike", "norm_growth")


class DivergenceDetector:
    def __init__(self, cfg: DivergenceConfig | None = None) -> None:
        self.cfg = cfg or DivergenceConfig()
        self.updates = 0
        self.level = math.nan  # EWMA of batch loss
        self.spread = 0.0  # EWMA of |loss - level|
        self.norms: list[tuple[int, float]] = []  # (updates since start, weight norm)
        self.fits: list[tuple[float, int]] = []  # per norm sample: cumulative (-log p(y|x) sum, positives)
        self.events: Counter[str] = Counter()
        self.last_event = -(10**9)
        self.first_event: int | None = None  # update count at the first signal
        self.start = 0  # updates before the current run of history (reset on rollback)

    @property
    def diverging(self) -> bool:
        return self.updates - self.last_event < self.cfg.recovery_updates

    def observe(self, loss: float, weight_norm: float, applied: bool = True, updates: int = 1,
                positives: tuple[float, int] = (0.0, 0)) -> list[str]:
        """Record ``updates`` model updates (a batch, or a worker's step); returns the signals they show.

        ``positives``: the summed -log p(y|x) of the positive examples among them, and their count.
        """
        cfg = self.cfg
        fired: list[str] = []
        if not applied or not math.isfinite(loss) or not math.isfinite(weight_norm):
            fired.append("non_finite")
        else:
            self.updates += updates
            n = self.updates - self.start
            if n > cfg.warmup_updates and loss > self.level + cfg.spike_factor * self.spread + cfg.spike_floor:
                fired.append("loss_spike")
            if math.isnan(self.level):
                self.level = loss
            else:
                alpha = min(1.0, cfg.ewma_alpha * updates)
                self.spread += alpha * (abs(loss - self.level) - self.spread)
                self.level += alpha * (loss - self.level)
            fit = self.fits[-1] if self.fits else (0.0, 0)
            self.norms.append((n, weight_norm))
            self.fits.append((fit[0] + positives[0], fit[1] + positives[1]))
            i = self._sample_at(n / 2)
            half = self.norms[i][1] if i is not None else 0.0
            growing = n > cfg.warmup_updates and half > 0 and weight_norm / half > cfg.norm_growth_ratio
            if weight_norm > cfg.max_weight_norm or (growing and not self._fit_improving(i)):
                fired.append("norm_growth")
        for kind in fired:
            self.events[kind] += 1
        if fired:
            self.last_event = self.updates
            if self.first_event is None:
                self.first_event = self.updates
        return fired

    def _sample_at(self, n: float) -> int | None:
        """The first sample at or after ``n`` updates (None if none was taken before ``n``).

        Not an interpolation: a healthy norm grows fast early and then flattens,
        so a straight line between two samples far apart (a job samples every
        half second, thousands of updates) underestimates the norm between them
        and reads healthy growth as runaway. The first sample at or after ``n``
        can only understate the growth since ``n``; a runaway norm keeps growing
        and trips the next observations anyway.
        """
        if not self.norms or self.norms[0][0] > n:
            return None
        i = bisect.bisect_left(self.norms, (n, -math.inf))
        return min(i, len(self.norms) - 1)

    def _fit_improving(self, i: int | None) -> bool:
        """Whether the positives' mean loss after sample ``i`` is below its mean up to it (False if unknown)."""
        if i is None:
            return False
        (before, n_before), (now, n_now) = self.fits[i], self.fits[-1]
        if n_before == 0 or n_now == n_before:
            return False
        return (now - before) / (n_now - n_before) < before / n_before

    def reset_history(self) -> None:
        """Forget the loss level and norm history (after a rollback restored old weights)."""
        self.start = self.updates
        self.level, self.spread, self.norms, self.fits = math.nan, 0.0, [], []


def clip_scale(norm: float, clip_norm: float | None) -> float:
    """Factor that brings a gradient of norm ``norm`` down to ``clip_norm`` (1.0 when within it or unset)."""
    if clip_norm is None or not norm > clip_norm:
        return 1.0
    return clip_norm / norm


@dataclass(frozen=True)
class Verdict:
    """The guard policy's answer to one observation."""

    fired: list[str]  # the signals it raised
    act: str | None = None  # "rollback" or "lower-lr": apply to the model now
    mark_good: bool = False  # keep the model's state now as the last good one (guard=rollback)


class GuardPolicy:
    """When the guard acts, and how: one policy for the single-process :class:`Guard` and the job's shards.

    A signal other than ``non_finite`` (a skipped batch changed nothing), or
    weights that are no longer finite, make it act once: ``rollback`` to the
    last good state, or ``lower-lr``; ``clip`` bounds every gradient while
    :attr:`diverging`. While healthy it asks to keep a good state every
    ``good_every`` updates (guard=rollback).
    """

    def __init__(self, cfg: DivergenceConfig) -> None:
        self.cfg = cfg
        self.detector = DivergenceDetector(cfg)
        self.rollbacks = 0
        self.updates = 0  # updates applied to the model, as observed
        self._next_good = 0  # the first healthy observation keeps one

    @property
    def diverging(self) -> bool:
        return self.detector.diverging

    @property
    def clip_norm(self) -> float | None:
        """The bound on each gradient's norm now: ``clip_norm`` while diverging with guard=clip, else none."""
        return self.cfg.clip_norm if self.cfg.guard == "clip" and self.diverging else None

    def observe(self, loss: float, norm: float | None, updates: int = 1,
                positives: tuple[float, int] = (0.0, 0)) -> Verdict:
        """``updates`` model updates with mean ``loss`` left the weights at ``norm`` (None: not applied, a
        skipped batch); ``positives``: their positive examples' summed -log p(y|x) and count."""
        applied = norm is not None
        fired = self.detector.observe(loss, math.nan if norm is None else norm, applied=applied, updates=updates,
                                      positives=positives)
        if applied:
            self.updates += updates
        if any(k != "non_finite" for k in fired) or (norm is not None and not math.isfinite(norm)):
            return Verdict(fired, self.cfg.guard if self.cfg.guard in ("rollback", "lower-lr") else None)
        good = self.cfg.guard == "rollback" and not self.diverging and self.updates >= self._next_good
        if good:
            self._next_good = self.updates + self.cfg.good_every
        return Verdict(fired, mark_good=good)

    def rolled_back(self) -> None:
        """The model is back at its last good state: the history since no longer describes it."""
        self.rollbacks += 1
        self.detector.reset_history()

    def restored(self) -> None:
        """The model was restored from a checkpoint, which is its good state now."""
        self._next_good = self.updates + self.cfg.good_every


class Guard:
    """Watches one model's updates and acts on them as :class:`GuardPolicy` says.

    The model holder bounds each gradient by :attr:`clip_norm` before the step
    and calls :meth:`after_step` after it. Losses are pooled over
    ``window_examples`` examples before the policy sees them, so a spike means
    the same thing at any micro-batch size (the mean of 4 examples is twice as
    noisy as that of 16); a non-finite batch is reported at once.
    """

    def __init__(self, cfg: DivergenceConfig, state: ModelState) -> None:
        self.cfg = cfg
        self.policy = GuardPolicy(cfg)
        self.state = state
        self._good: dict[str, Any] | None = None
        self._pool = [0.0, 0, 0, 0.0, 0]  # loss x examples, examples, updates, positives' loss, positives

    @property
    def detector(self) -> DivergenceDetector:
        return self.policy.detector

    @property
    def rollbacks(self) -> int:
        return self.policy.rollbacks

    @property
    def diverging(self) -> bool:
        return self.policy.diverging

    @property
    def clip_norm(self) -> float | None:
        return self.policy.clip_norm

    def after_step(self, loss: float, applied: bool, examples: int = 1,
                   positives: tuple[float, int] = (0.0, 0)) -> list[str]:
        """Report one batch (mean ``loss`` over ``examples``; ``positives``: the positive examples' summed
        -log p(y|x) and count); returns the signals the detector raised."""
        if not applied or not math.isfinite(loss):
            return self.policy.observe(loss, None).fired
        pool = self._pool
        pool[0] += loss * examples
        pool[1] += examples
        pool[2] += 1
        pool[3] += positives[0]
        pool[4] += positives[1]
        if pool[1] < self.cfg.window_examples:
            return []
        mean, updates = pool[0] / pool[1], int(pool[2])
        self._pool = [0.0, 0, 0, 0.0, 0]
        verdict = self.policy.observe(mean, self.state.norm(), updates=updates, positives=(pool[3], int(pool[4])))
        if verdict.act == "lower-lr":
            self.state.lr *= self.cfg.lr_factor
        elif verdict.act == "rollback" and self._good is not None:
            self.state.load_state_dict(self._good)  # copied in: the saved arrays stay as they are
            self.policy.rolled_back()
        if verdict.mark_good:
            self._good = self.state.state_dict()
        return verdict.fired
