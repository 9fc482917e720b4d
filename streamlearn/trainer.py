"""The single-process training loop: micro-batch examples, learn, guard, count.

Workers and parameter servers split this loop across actors (the steps on
the workers' replicas, the divergence guard at the driver and the servers);
this module is the reference they are tested against (the parity test).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from streamlearn.divergence import DivergenceConfig, Guard
from streamlearn.events import Example
from streamlearn.learner import BatchStats, Learner


@dataclass
class Progress:
    """Running totals of a job: what was learned and how well it was predicted beforehand."""

    stats: BatchStats = field(default_factory=BatchStats)
    updates: int = 0
    # (partition, polarity) -> examples applied to the model (lineage)
    applied: Counter[tuple[int, str]] = field(default_factory=Counter)
    divergence: Counter[str] = field(default_factory=Counter)

    def record(self, batch: list[Example], stats: BatchStats, applied: bool) -> None:
        stats.losses = []  # keep totals only
        self.stats.add(stats)
        if applied:
            self.updates += 1
            for ex in batch:
                self.applied[(ex.partition, "positive" if ex.positive else "negative")] += 1

    @property
    def progressive_accuracy(self) -> float | None:
        s = self.stats
        return s.positive_correct / s.positive if s.positive else None

    @property
    def negative_avoidance(self) -> float | None:
        s = self.stats
        return s.negative_avoided / s.negative if s.negative else None


class Trainer:
    def __init__(self, learner: Learner, divergence: DivergenceConfig | None = None) -> None:
        self.learner = learner
        self.guard = Guard(divergence or DivergenceConfig(), learner.state)
        self.batch_size = learner.optim_cfg.batch_size
        self.buffer: list[Example] = []
        self.progress = Progress()

    def feed(self, examples: Iterable[Example]) -> None:
        """Buffer examples and learn from every full micro-batch."""
        for ex in examples:
            self.buffer.append(ex)
            if len(self.buffer) >= self.batch_size:
                self._learn(self.buffer)
                self.buffer = []

    def flush(self) -> None:
        """Learn from a partial batch (at the end of a stream)."""
        if self.buffer:
            self._learn(self.buffer)
            self.buffer = []

    def _learn(self, batch: list[Example]) -> None:
        (applied,), stats = self.learner.learn_batches([batch], self.guard.clip_norm)
        fired = self.guard.after_step(stats.mean_loss, applied, len(batch), (stats.loss_positive, stats.positive))
        self.progress.divergence.update(fired)
        self.progress.record(batch, stats, applied)
