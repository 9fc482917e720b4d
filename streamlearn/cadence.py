"""How many micro-batches a worker's push carries.

A push costs about the same however many micro-batches it carries: a Ray call
per shard, a reply to read and merge. What it costs depends on the machine:
one worker on two idle cores pays ~0.2 ms, two workers with the broker on the
same two cores ~0.5-0.9 ms, mostly waiting for Ray's own threads to be
scheduled, and a second shard doubles the calls. A fixed group size keeps
pushes cheap on one machine and not on another, and cheaper compute (a faster
decoder, say) makes the same push a larger share.

:class:`PushCadence` keeps that share near a budget: it smooths the measured
cost of a push and the worker's other time per micro-batch over its steps, and
sizes the next groups so that ``push / (push + group x per-batch) <= budget``,
never fewer micro-batches than ``least`` (the configured grads_per_push) nor
more than ``most``. Larger groups mean staler replicas between pushes, so the
ceiling is a freshness bound, not a detail.
"""

from __future__ import annotations

import math

SMOOTHING = 0.2  # weight of the newest step in the moving averages


class PushCadence:
    def __init__(self, least: int, most: int, budget: float) -> None:
        if least < 1 or most < least:
            raise ValueError(f"push cadence: need 1 <= least <= most, got {least}, {most}")
        self.least, self.most, self.budget = least, most, budget
        self.group = least  # micro-batches per push for the next step
        self.push_seconds: float | None = None  # per push, smoothed
        self.batch_seconds: float | None = None  # the rest of a step per micro-batch, smoothed

    def observe(self, push_seconds: float, pushes: int, other_seconds: float, batches: int) -> None:
        """A step made ``pushes`` pushes taking ``push_seconds`` and spent ``other_seconds`` on everything else
        (polling, decoding, ``batches`` micro-batches of compute)."""
        if self.budget <= 0 or pushes <= 0 or batches <= 0:
            return
        self.push_seconds = _smoothed(self.push_seconds, push_seconds / pushes)
        self.batch_seconds = _smoothed(self.batch_seconds, max(other_seconds, 0.0) / batches)
        if self.batch_seconds <= 0:
            self.group = self.most
            return
        want = self.push_seconds * (1 - self.budget) / (self.budget * self.batch_seconds)
        self.group = min(self.most, max(self.least, math.ceil(want)))


def _smoothed(old: float | None, new: float) -> float:
    return new if old is None else old + SMOOTHING * (new - old)
