"""The parameter exchange's settings: mode, shards, staleness bound and push cadence."""

from __future__ import annotations

from dataclasses import dataclass

PS_MODES = ("sync", "async", "bounded")
STALE_POLICIES = ("drop", "downweight")


@dataclass(frozen=True)
class PSConfig:
    """Modes: ``async`` applies every update on arrival; ``bounded`` drops (or down-weights by
    ``1 / (1 + excess)``) an update computed on weights more than ``max_staleness`` versions old; ``sync``
    averages one update per worker per round (:mod:`streamlearn.ps.shard`)."""

    mode: str = "async"  # sync | async | bounded
    shards: int = 1  # parameter-server actors, each holding a row range of every parameter
    # bounded: other workers' gradients a gradient may not have seen (also caps a push at a quarter of it);
    # sparse models: how old a row may be before a worker pulls it again (benchmarks/README.md has the sweeps)
    max_staleness: int = 2048
    stale_policy: str = "drop"  # bounded: drop | downweight gradients past max_staleness
    sync_timeout_seconds: float = 5.0  # sync: a round closes after this long even if a worker is silent
    # micro-batches per push (sync: per round), at least; a worker carries more per push while its pushes take
    # more than push_budget of its step time (0: never), up to max_grads_per_push (bounded: also
    # max_staleness // 4, so a foreign push or two stay within the bound); larger pushes mean staler replicas
    grads_per_push: int = 64
    push_budget: float = 0.04
    max_grads_per_push: int = 1024
    pull_every: int = 1  # pushes between weight pulls (a worker also pulls when max_staleness behind)

    def __post_init__(self) -> None:
        if self.mode not in PS_MODES:
            raise ValueError(f"ps mode: unknown {self.mode!r}, choose one of {', '.join(PS_MODES)}")
        if self.stale_policy not in STALE_POLICIES:
            raise ValueError(f"ps stale_policy: unknown {self.stale_policy!r}, choose drop or downweight")
        for name in ("shards", "max_staleness", "grads_per_push", "max_grads_per_push", "pull_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"ps {name}: must be >= 1, got {getattr(self, name)}")
        if self.mode == "bounded" and self.grads_per_push > self.max_staleness // 2:
            raise ValueError(f"ps grads_per_push {self.grads_per_push} is more than half of max_staleness "
                             f"{self.max_staleness}: with a second worker every update would miss the bound; "
                             "raise max_staleness or lower grads_per_push")
        if not 0 <= self.push_budget < 1:
            raise ValueError(f"ps push_budget: a share of step time in [0, 1), got {self.push_budget}")
        if not self.sync_timeout_seconds > 0:
            raise ValueError("ps sync_timeout_seconds: must be > 0")

    @property
    def most_grads_per_push(self) -> int:
        """The largest group a push may carry: never below grads_per_push."""
        most = self.max_grads_per_push if self.mode != "bounded" else min(self.max_grads_per_push,
                                                                          self.max_staleness // 4)
        return max(self.grads_per_push, most)
