"""A job's running totals and the JSON summary it ends with."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from streamlearn.config import JobConfig
from streamlearn.job import health
from streamlearn.learner import BatchStats
from streamlearn.worker import StepResult


@dataclass
class Totals:
    """Running totals over the job's steps (replays included: a record consumed twice counts twice)."""

    records: int = 0
    stats: BatchStats = field(default_factory=BatchStats)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    join: Counter[str] = field(default_factory=Counter)
    dead: Counter[str] = field(default_factory=Counter)
    updates: int = 0
    dropped: int = 0
    dropped_examples: int = 0
    pushes: int = 0
    push_seconds: float = 0.0
    push_wait_seconds: float = 0.0
    push_held_seconds: float = 0.0
    compute_seconds: float = 0.0
    step_seconds: float = 0.0
    waiting: dict[int, int] = field(default_factory=dict)  # worker -> events in its join, as last reported
    rewound: int = 0  # events in the joins when a recovery went back to a checkpoint (read again after it)
    restored: int = 0  # events in the joins of the checkpoints restored (at the start, at each recovery)

    def add(self, r: StepResult) -> None:
        self.records += r.records
        r.stats.losses = []
        self.stats.add(r.stats)
        self.counts.update(r.counts)
        self.join.update(r.join)
        self.dead.update(r.dead)
        self.updates += len(r.staleness) - r.dropped
        self.dropped += r.dropped
        self.dropped_examples += r.dropped_examples
        self.pushes += r.pushes
        self.push_seconds += r.push_seconds
        self.push_wait_seconds += r.push_wait_seconds
        self.push_held_seconds += r.push_held_seconds
        self.compute_seconds += sum(r.batch_seconds)
        self.step_seconds += r.step_seconds
        self.waiting[r.worker] = r.waiting

    def restart(self, waiting: int) -> None:
        """The workers restored a checkpoint whose joins hold ``waiting`` events: what their joins held as last
        reported is gone (its records are read again), and those events are back."""
        self.rewound += sum(self.waiting.values())
        self.waiting = {}
        self.restored += waiting

    def outcome(self, name: str) -> int:
        """Records of every topic with this ingest outcome (consumed, invalid)."""
        return sum(n for (_, outcome), n in self.counts.items() if outcome == name)


@dataclass
class Ending:
    """What the summary reports besides the totals: the model's lineage, where the sources stand, the job's
    own history."""

    lineage: Counter[tuple[int, str]]  # (partition, polarity) -> examples in the surviving model
    positions: dict[str, int]  # "topic:partition" -> next offset
    divergence_events: Counter[str]
    rollbacks: int
    workers: int
    recoveries: int
    replayed: int
    restored_from: str | None
    checkpoints: int
    stop_reason: str
    seconds: float


def progress_line(t: Totals, seconds: float) -> str:
    acc = t.stats.positive_correct / t.stats.positive if t.stats.positive else float("nan")
    return (f"{t.records} records, {t.stats.positive}+/{t.stats.negative}- examples, progressive accuracy "
            f"{acc:.3f}, {t.updates} updates, {t.records / max(seconds, 1e-9):.0f} records/s")


def summarize(cfg: JobConfig, t: Totals, end: Ending) -> dict[str, Any]:
    consumed, seconds = t.outcome("consumed"), end.seconds
    lineage = end.lineage
    return {
        "events_consumed": consumed,
        "examples_positive": t.stats.positive,
        "examples_negative": t.stats.negative,
        "invalid": t.outcome("invalid"),
        "duplicates": t.join["duplicate"],
        "expired": t.join["expired"] + t.join["evicted"],
        # where every consumed record went, one part each (health.records): the parts add up to events_consumed
        # plus records_from_checkpoint, the events restored into the joins (which end in one part too)
        "records": health.records(t),
        "records_from_checkpoint": t.restored,
        "dead_letters": dict(t.dead.most_common()),  # by reason, most first
        "join_hit_rate": health.join_hit_rate(t),
        "warnings": health.warnings(t, cfg, final=True),
        "progressive_accuracy": _ratio(t.stats.positive_correct, t.stats.positive),
        "negative_avoidance": _ratio(t.stats.negative_avoided, t.stats.negative),
        "model_examples_positive": sum(n for (_, pol), n in lineage.items() if pol == "positive"),
        "model_examples_negative": sum(n for (_, pol), n in lineage.items() if pol == "negative"),
        "model_examples_by_partition": {str(p): n for p, n in sorted(_by_partition(lineage).items())},
        "offsets": dict(sorted(end.positions.items())),
        "updates": t.updates,
        "stale_dropped": t.dropped,
        "stale_dropped_examples": t.dropped_examples,
        "divergence_events": dict(end.divergence_events),
        "diverged": bool(sum(end.divergence_events.values())),
        "rollbacks": end.rollbacks,
        "workers": end.workers,
        "ps_mode": cfg.ps.mode,
        "ps_shards": cfg.ps.shards,
        "recoveries": end.recoveries,
        "records_replayed": end.replayed,
        "restored_from": end.restored_from,
        "checkpoints": end.checkpoints,
        "stop_reason": end.stop_reason,
        "seconds": round(seconds, 3),
        "events_per_second": round(consumed / seconds, 1) if seconds > 0 else None,
        "pushes": t.pushes,
        "grads_per_push_mean": round((t.updates + t.dropped) / t.pushes, 1) if t.pushes else None,
        # share of the workers' step time spent in calls to the servers (pushes, pulls: Ray overhead, waiting)
        "push_fraction": _share(t.push_seconds, t.step_seconds),
        "push_to_compute": _share(t.push_seconds, t.compute_seconds),
        # the part of push_fraction spent waiting for replies (sync: for the round to close), not calling
        "push_wait_fraction": _share(t.push_wait_seconds, t.step_seconds),
        # the servers holding replies (sync: the round) is not the calls' cost; the rest is
        "call_overhead_fraction": _share(t.push_seconds - t.push_held_seconds, t.step_seconds),
    }


def positions(snapshots: list[dict[str, Any]]) -> dict[str, int]:
    """The workers' source positions, as "topic:partition" -> next offset."""
    return {f"{topic}:{part}": off for st in snapshots for (topic, part), off in st["positions"].items()}


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def _share(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def _by_partition(lineage: Counter[tuple[int, str]]) -> Counter[int]:
    out: Counter[int] = Counter()
    for (p, _), n in lineage.items():
        out[p] += n
    return out
