"""The divergence guard of a job: what the steps reported since the last look, fed to the
:class:`~streamlearn.divergence.GuardPolicy`, whose verdict the shards carry out."""

from __future__ import annotations

import math

from streamlearn.divergence import DivergenceConfig, GuardPolicy
from streamlearn.job.fleet import Fleet
from streamlearn.job.summary import Totals
from streamlearn.metrics import Metrics

_UNSET = -1.0  # no clip bound sent to the shards yet (a restarted shard has none)


class ShardGuard:
    def __init__(self, cfg: DivergenceConfig, fleet: Fleet, metrics: Metrics) -> None:
        self.policy = GuardPolicy(cfg)
        self.fleet, self.metrics = fleet, metrics
        self._updates = 0  # the totals at the last look: updates, (loss sum, examples), positives' (loss, count)
        self._loss: tuple[float, int] = (0.0, 0)
        self._positive: tuple[float, int] = (0.0, 0)
        self._clip: float | None = _UNSET

    def look(self, t: Totals) -> float:
        """Feed the policy what happened since the last look and carry out its verdict; returns the weight
        norm. Pushes settle a step after their examples' losses: with only one of them new, wait."""
        norm = math.sqrt(self.fleet.norm_sq())
        losses = (t.stats.loss_positive + t.stats.loss_negative, t.stats.examples)
        updates, n = t.updates - self._updates, losses[1] - self._loss[1]
        if updates <= 0 or n <= 0:
            return norm
        pos = (t.stats.loss_positive, t.stats.positive)
        loss, since = (losses[0] - self._loss[0]) / n, (pos[0] - self._positive[0], pos[1] - self._positive[1])
        self._updates, self._loss, self._positive = t.updates, losses, pos
        verdict = self.policy.observe(loss, norm, updates, since)
        for kind in verdict.fired:
            self.metrics.divergence.labels(kind).inc()
        if verdict.act == "rollback" and self.fleet.has_good():  # a restarted shard has none until the next mark
            self.fleet.rollback()
            self.policy.rolled_back()
            self.metrics.rollbacks.inc()
        elif verdict.act == "lower-lr":
            self.fleet.scale_lr(self.policy.cfg.lr_factor)
        if verdict.mark_good:
            self.fleet.mark_good()
        self.sync_clip()
        self.metrics.diverging.set(1 if self.policy.diverging else 0)
        return norm

    def sync_clip(self) -> None:
        """Send the policy's clip bound to the shards when it changed."""
        clip = self.policy.clip_norm
        if clip != self._clip:
            self.fleet.set_clip(clip)
            self._clip = clip

    def restored(self) -> None:
        """Every shard was loaded from a checkpoint: that state is the good one, and holds no clip bound."""
        self.fleet.mark_good()
        self.policy.restored()
        self._clip = _UNSET
