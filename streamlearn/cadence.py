"""How many micro-batches a worker's push carries.

A push costs about the same however many micro-batches it carries: a Ray call
per shard, a reply to read and merge. What it costs depends on the machine
(mostly waiting for Ray's own threads to be scheduled) and on the shards (a
call each). A fixed group size keeps
pushes cheap on one machine and not on another, and cheaper compute (a faster
decoder, say) makes the same push a larger share.

:class:`PushCadence` keeps that share near a budget: from the cost of a push
and the worker's other time per micro-batch over its recent steps (decayed
sums, so a step that polled a handful of records after a wait weighs by its
few micro-batches, not as a step), it sizes the next groups so that
``push / (push + group x per-batch) <= budget``, never fewer micro-batches
than ``least`` (the configured grads_per_push) nor more than ``most``. Larger
groups mean staler replicas between pushes, so the ceiling is a freshness
bound, not a detail; and a young model moves most, so the group stays at
``least`` for the first ``WARMUP_PUSHES`` pushes (groups that grow from the
start cost held-out accuracy on short streams).
"""

from __future__ import annotations

import math

DECAY = 0.8  # weight of the past in the sums, per step: about the last five steps count
WARMUP_PUSHES = 32  # pushes at ``least`` before the group may grow (64 x 4 examples each: ~8,000 examples)


class PushCadence:
    def __init__(self, least: int, most: int, budget: float, warmup: int = WARMUP_PUSHES) -> None:
        if least < 1 or most < least:
            raise ValueError(f"push cadence: need 1 <= least <= most, got {least}, {most}")
        self.least, self.most, self.budget, self.warmup = least, most, budget, warmup
        self.group = least  # micro-batches per push for the next step
        self.sums = [0.0, 0.0, 0.0, 0.0]  # decayed: push seconds, pushes, other seconds, micro-batches
        self.pushes = 0  # ever

    @property
    def push_seconds(self) -> float | None:
        """Seconds per push, recently."""
        return self.sums[0] / self.sums[1] if self.sums[1] else None

    def observe(self, push_seconds: float, pushes: int, other_seconds: float, batches: int) -> None:
        """A step made ``pushes`` pushes taking ``push_seconds`` and spent ``other_seconds`` on everything else
        (polling, decoding, ``batches`` micro-batches of compute)."""
        self.pushes += max(pushes, 0)
        if self.budget <= 0 or pushes <= 0 or batches <= 0:
            return
        step = (push_seconds, pushes, max(other_seconds, 0.0), batches)
        self.sums = [DECAY * old + new for old, new in zip(self.sums, step, strict=True)]
        if self.pushes < self.warmup:
            return
        push, batch = self.sums[0] / self.sums[1], self.sums[2] / self.sums[3]  # both counts > 0 now
        if batch <= 0:
            self.group = self.most
            return
        want = push * (1 - self.budget) / (self.budget * batch)
        self.group = min(self.most, max(self.least, math.ceil(want)))
